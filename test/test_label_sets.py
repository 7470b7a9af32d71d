"""Published label sets give thing/stuff flags and colours; other sets load from JSON."""

import json
import logging

import pytest

from tokenmask_ros.model.config import ClassInfo
from tokenmask_ros.model.label_sets import (
    LABEL_SETS,
    LabelSetError,
    classes_for,
    load_label_set_file,
    match_label_set,
    published_classes,
)

# (classes, things) of each published set.
SIZES = {'coco_panoptic': (133, 80), 'ade20k_panoptic': (150, 100), 'cityscapes': (19, 8)}


def _names(label_set):
    return [c.name for c in published_classes(label_set)]


def test_published_sets_have_their_sizes_flags_and_colours():
    assert set(LABEL_SETS) == set(SIZES)
    for name, (count, things) in SIZES.items():
        classes = published_classes(name)
        assert len(classes) == count and sum(c.is_thing for c in classes) == things
        assert all(c.color is not None for c in classes)
    coco = {c.name: c for c in published_classes('coco_panoptic')}
    assert coco['person'] == ClassInfo('person', True, (220, 20, 60))
    assert coco['road'] == ClassInfo('road', False, (128, 64, 128))
    assert not coco['sky-other-merged'].is_thing and not coco['wall-other-merged'].is_thing
    assert _names('coco_panoptic')[79:81] == ['toothbrush', 'banner']  # things, then stuff
    city = published_classes('cityscapes')
    assert [c.name for c in city if c.is_thing] == [
        'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle']
    assert city[0] == ClassInfo('road', False, (128, 64, 128))
    ade = {c.name: c for c in published_classes('ade20k_panoptic')}
    assert ade['person'].is_thing and not ade['sky'].is_thing and ade['car'].is_thing


@pytest.mark.parametrize('label_set', sorted(SIZES))
def test_each_published_name_list_is_recognised(label_set):
    assert match_label_set(_names(label_set)) == label_set


def test_differently_spelled_names_are_recognised():
    """Configs may write case, underscores or plain names where panopticapi has suffixes."""
    coco = [n.upper().replace(' ', '_').removesuffix('-MERGED') for n in _names('coco_panoptic')]
    coco[coco.index('DOOR-STUFF')] = 'door'
    assert match_label_set(coco) == 'coco_panoptic'
    # ADE20K names list synonyms; a config may keep only the first one.
    ade = [n.split(',')[0] for n in _names('ade20k_panoptic')]
    assert match_label_set(ade) == 'ade20k_panoptic'
    assert match_label_set([n.title() for n in _names('cityscapes')]) == 'cityscapes'


def test_other_lists_are_not_recognised():
    city = _names('cityscapes')
    assert match_label_set(city[::-1]) is None  # same names, other order
    assert match_label_set(city[:-1]) is None
    assert match_label_set([*city[:-1], 'tram']) is None
    assert match_label_set([]) is None


def test_auto_takes_the_recognised_set_and_keeps_the_models_names(caplog):
    names = [n.replace('-merged', '') for n in _names('coco_panoptic')]
    with caplog.at_level(logging.WARNING):
        classes = classes_for(names)
    assert not caplog.records
    assert [c.name for c in classes] == names
    assert [(c.is_thing, c.color) for c in classes] == [
        (c.is_thing, c.color) for c in published_classes('coco_panoptic')]


def test_unknown_names_become_things_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        classes = classes_for(['robot', 'floor', 'box'])
    assert classes == (ClassInfo('robot'), ClassInfo('floor'), ClassInfo('box'))
    assert len(caplog.records) == 1 and 'match no known label set' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # an explicit choice needs no warning
        assert classes_for(['robot', 'floor'], 'things') == (ClassInfo('robot'),
                                                             ClassInfo('floor'))
    assert not caplog.records
    assert classes_for([]) == ()


def test_a_forced_set_applies_its_flags_and_needs_the_same_count():
    names = [f'class {i}' for i in range(19)]
    classes = classes_for(names, 'cityscapes')
    assert [c.name for c in classes] == names
    assert [c.is_thing for c in classes] == [c.is_thing for c in published_classes('cityscapes')]
    # Without names (a config with no id2label) the set supplies them.
    assert classes_for([], 'cityscapes', num_classes=19) == published_classes('cityscapes')
    with pytest.raises(LabelSetError, match='label set cityscapes has 19 classes but the model '
                       'has 133'):
        classes_for(_names('coco_panoptic'), 'cityscapes')
    with pytest.raises(LabelSetError, match='label set coco_panoptic has 133 classes but the '
                       'model has 19'):
        classes_for(names, 'coco_panoptic')
    with pytest.raises(ValueError, match="unknown label set 'mapillary'"):
        classes_for(names, 'mapillary')


def test_a_label_set_file_is_applied(tmp_path):
    path = tmp_path / 'warehouse.json'
    path.write_text(json.dumps([
        {'name': 'floor', 'isthing': False, 'color': [90, 90, 90]},
        {'name': 'pallet', 'isthing': True, 'color': [200, 120, 0]},
        {'name': 'shelf', 'isthing': False},
    ]))
    expected = (ClassInfo('floor', False, (90, 90, 90)), ClassInfo('pallet', True, (200, 120, 0)),
                ClassInfo('shelf', False, None))
    assert load_label_set_file(path) == expected
    assert classes_for(['a', 'b', 'c'], str(path)) == expected  # the file's names
    assert classes_for([], path, num_classes=3) == expected
    with pytest.raises(LabelSetError, match=r'warehouse\.json has 3 classes but the model has 2'):
        classes_for(['a', 'b'], str(path))


def test_panopticapi_categories_files_load(tmp_path):
    path = tmp_path / 'categories.json'
    path.write_text(json.dumps([
        {'supercategory': 'person', 'color': [220, 20, 60], 'isthing': 1, 'id': 1,
         'name': 'person'},
        {'supercategory': 'sky', 'color': [70, 130, 180], 'isthing': 0, 'id': 187,
         'name': 'sky-other-merged'}]))
    assert load_label_set_file(path) == (ClassInfo('person', True, (220, 20, 60)),
                                         ClassInfo('sky-other-merged', False, (70, 130, 180)))


@pytest.mark.parametrize(('content', 'message'), [
    ('{"name": "a"}', 'expected a non-empty JSON list'),
    ('[]', 'expected a non-empty JSON list'),
    ('[{"name": "a"}, {"name": "a"}]', r"duplicate class names \['a'\]"),
    ('[{"name": ""}]', '"name" must be a non-empty string'),
    ('[{"name": "a", "isthing": "yes"}]', '"isthing" must be'),
    ('[{"name": "a", "color": [0, 0, 256]}]', r'"color" must be \[r, g, b\]'),
    ('[{"name": "a", "colour": [0, 0, 0]}]', r"unknown key\(s\) \['colour'\]"),
    ('[{"name": "a",', 'not a readable JSON label set'),
])
def test_bad_label_set_files_fail_with_one_line(tmp_path, content, message):
    path = tmp_path / 'set.json'
    path.write_text(content)
    with pytest.raises(LabelSetError, match=message) as error:
        load_label_set_file(path)
    assert str(path) in str(error.value) and '\n' not in str(error.value)
    with pytest.raises(LabelSetError, match='not a readable JSON'):
        load_label_set_file(tmp_path / 'absent.json')
