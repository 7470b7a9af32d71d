"""Dataset readers and augmentations on real files: synthetic, COCO-panoptic and ADE20K."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from tokenmask_ros.synthetic import SYNTHETIC_CLASSES, SceneGenerator
from training.datasets import (
    ADE20KSemantic,
    CocoPanoptic,
    DatasetError,
    EvalTransform,
    SyntheticPanoptic,
    TrainTransform,
    collate,
    id2rgb,
    masks_to_semantic,
    open_split,
    rgb2id,
)
from training.datasets.transforms import drop_empty_masks
from training.make_synthetic import main as make_synthetic

# --- synthetic scenes written as COCO panoptic -------------------------------------------


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic')
    assert make_synthetic(['--out', str(root), '--train', '4', '--val', '2', '--size', '96x64',
                           '--seed', '7', '--quiet']) == 0
    return root


@pytest.mark.parametrize(('split', 'stream', 'count'), [('train', 0, 4), ('val', 1, 2)])
def test_synthetic_files_read_back_to_the_generator_ground_truth(synthetic_root, split, stream,
                                                                 count):
    dataset = open_split(synthetic_root, split)
    generator = SceneGenerator(height=64, width=96, seed=7, stream=stream)
    assert len(dataset) == count
    assert dataset.class_names == [c.name for c in SYNTHETIC_CLASSES]
    assert dataset.thing_classes == tuple(c.id for c in SYNTHETIC_CLASSES if c.is_thing)
    assert [c.color for c in dataset.classes] == [c.color for c in SYNTHETIC_CLASSES]
    for index in range(count):
        scene = generator.scene(index)
        image, target = dataset[index]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert isinstance(target['masks'], tv_tensors.Mask)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), scene.image)
        expected = np.stack([scene.panoptic == s.id for s in scene.segments])
        np.testing.assert_array_equal(target['masks'].numpy(), expected)
        assert target['labels'].tolist() == [s.category_id for s in scene.segments]
        assert target['labels'].dtype == torch.int64
        assert not target['is_crowd'].any()
        semantic = masks_to_semantic(target['masks'], target['labels'])
        np.testing.assert_array_equal(semantic.numpy(), scene.semantic)
        # The in-memory dataset gives the same sample.
        image2, target2 = SyntheticPanoptic(count, 96, 64, seed=7, split=split)[index]
        assert torch.equal(image, image2) and torch.equal(target['masks'], target2['masks'])
        assert torch.equal(target['segment_ids'], target2['segment_ids'])


def test_synthetic_writer_is_deterministic_and_splits_differ(synthetic_root, tmp_path):
    make_synthetic(['--out', str(tmp_path), '--train', '4', '--val', '2', '--size', '96x64',
                    '--seed', '7', '--quiet'])
    for path in sorted(synthetic_root.rglob('*.*')):
        assert (tmp_path / path.relative_to(synthetic_root)).read_bytes() == path.read_bytes()
    train = (synthetic_root / 'images/train/scene_00000.png').read_bytes()
    assert train != (synthetic_root / 'images/val/scene_00000.png').read_bytes()


def test_synthetic_jpg_images_and_bad_arguments(tmp_path, capsys):
    make_synthetic(['--out', str(tmp_path), '--train', '1', '--val', '0', '--size', '32x32',
                    '--image-format', 'jpg', '--quiet'])
    image, _ = open_split(tmp_path, 'train')[0]
    assert image.shape == (3, 32, 32)
    assert len(open_split(tmp_path, 'val')) == 0
    for bad in (['--size', '64by48'], ['--train', '-1'], []):
        with pytest.raises(SystemExit) as exit_info:
            make_synthetic([*(['--out', str(tmp_path)] if bad else []), *bad])
        assert exit_info.value.code == 2
    assert 'WIDTHxHEIGHT' in capsys.readouterr().err


# --- a hand-written COCO-panoptic fixture ------------------------------------------------

CATEGORIES = [  # deliberately unsorted, with gaps in the ids
    {'id': 20, 'name': 'grass', 'isthing': 0, 'color': [0, 200, 0]},
    {'id': 3, 'name': 'person', 'isthing': 1, 'color': [220, 20, 60]},
    {'id': 7, 'name': 'cat', 'isthing': 1, 'color': [0, 0, 142]},
]


def _write_coco(root, ids, segments, image_size=None):
    """One image whose PNG holds ``ids`` (H, W), with ``segments_info`` = segments."""
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'panoptic').mkdir(exist_ok=True)
    height, width = image_size or ids.shape
    image = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    cv2.imwrite(str(root / 'images' / 'a.png'), image[..., ::-1])
    cv2.imwrite(str(root / 'panoptic' / 'a.png'), id2rgb(ids)[..., ::-1])
    data = {'images': [{'id': 42, 'file_name': 'a.png', 'width': width, 'height': height}],
            'annotations': [{'image_id': 42, 'file_name': 'a.png', 'segments_info': segments}],
            'categories': CATEGORIES}
    (root / 'panoptic.json').write_text(json.dumps(data))
    return image


def _coco(root, **kwargs):
    return CocoPanoptic(root / 'images', root / 'panoptic', root / 'panoptic.json', **kwargs)


# Segment ids that use all three PNG channels; 0 = VOID.
GRASS, PERSON, CROWD, CAT = 5, 300, 70001, 2**24 - 1
IDS = np.array([[GRASS, GRASS, GRASS, 0, CAT, CAT],
                [GRASS, PERSON, PERSON, 0, CAT, CAT],
                [GRASS, PERSON, PERSON, CROWD, CROWD, CROWD],
                [GRASS, GRASS, GRASS, CROWD, CROWD, 0]], np.int64)
SEGMENTS = [
    {'id': GRASS, 'category_id': 20, 'iscrowd': 0, 'bbox': [0, 0, 3, 4], 'area': 8},
    {'id': PERSON, 'category_id': 3, 'iscrowd': 0, 'bbox': [1, 1, 2, 2], 'area': 4},
    {'id': CROWD, 'category_id': 3, 'iscrowd': 1, 'bbox': [3, 2, 3, 2], 'area': 5},
    {'id': CAT, 'category_id': 7, 'iscrowd': 0, 'bbox': [4, 0, 2, 2], 'area': 4},
]


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 2**24 - 1, 12345678]])
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)
    assert id2rgb(np.array([[300]]))[0, 0].tolist() == [44, 1, 0]
    with pytest.raises(ValueError, match='2\\^24'):
        id2rgb(np.array([2**24]))


def test_coco_panoptic_fixture_with_crowd_and_sparse_category_ids(tmp_path):
    image = _write_coco(tmp_path, IDS, SEGMENTS)
    dataset = _coco(tmp_path)
    # Contiguous classes in category-id order: person (3), cat (7), grass (20).
    assert dataset.class_names == ['person', 'cat', 'grass']
    assert dataset.category_to_class == {3: 0, 7: 1, 20: 2}
    assert (dataset.thing_classes, dataset.stuff_classes) == ((0, 1), (2,))
    assert dataset.classes[2].color == (0, 200, 0) and dataset.num_classes == 3
    pixels, target = dataset[0]
    np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), image)
    assert target['labels'].tolist() == [2, 0, 0, 1]
    assert target['is_crowd'].tolist() == [False, False, True, False]
    assert target['segment_ids'].tolist() == [GRASS, PERSON, CROWD, CAT]
    assert target['image_id'] == 42 and target['orig_size'] == (4, 6)
    for mask, segment in zip(target['masks'], SEGMENTS, strict=True):
        np.testing.assert_array_equal(mask.numpy(), segment['id'] == IDS)
        assert int(mask.sum()) == segment['area']
    semantic = masks_to_semantic(target['masks'], target['labels'])
    assert semantic.dtype == torch.uint8
    np.testing.assert_array_equal(semantic.numpy() == 255, IDS == 0)  # VOID is ignored


def test_train_transform_drops_crowd_segments(tmp_path):
    _write_coco(tmp_path, IDS, SEGMENTS)
    keep = TrainTransform((4, 6), scale_range=(1.0, 1.0), flip_prob=0.0)
    _, target = _coco(tmp_path, transforms=keep)[0]
    assert target['segment_ids'].tolist() == [GRASS, PERSON, CAT]
    assert not target['is_crowd'].any() and len(target['masks']) == 3
    crowd = TrainTransform((4, 6), scale_range=(1.0, 1.0), flip_prob=0.0, drop_crowd=False)
    assert _coco(tmp_path, transforms=crowd)[0][1]['is_crowd'].tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize(('change', 'error', 'match'), [
    ('no_json', FileNotFoundError, 'panoptic JSON file not found'),
    ('no_images', FileNotFoundError, 'image folder not found'),
    ('bad_json', DatasetError, 'not valid JSON'),
    ('no_categories', DatasetError, "no 'categories' entry"),
    ('unknown_category', DatasetError, 'category id 99'),
    ('unknown_image', DatasetError, 'image id 42 has no entry'),
])
def test_coco_panoptic_errors_at_construction(tmp_path, change, error, match):
    _write_coco(tmp_path, IDS, SEGMENTS)
    json_file = tmp_path / 'panoptic.json'
    data = json.loads(json_file.read_text())
    if change == 'no_json':
        json_file.unlink()
    elif change == 'no_images':
        shutil.rmtree(tmp_path / 'images')
    elif change == 'bad_json':
        json_file.write_text('{"images": [')
    elif change == 'no_categories':
        del data['categories']
    elif change == 'unknown_category':
        data['annotations'][0]['segments_info'][1]['category_id'] = 99
    elif change == 'unknown_image':
        data['images'] = []
    if change in ('no_categories', 'unknown_category', 'unknown_image'):
        json_file.write_text(json.dumps(data))
    with pytest.raises(error, match=match):
        _coco(tmp_path)


def test_coco_panoptic_errors_when_loading(tmp_path):
    _write_coco(tmp_path, IDS, [*SEGMENTS, {'id': 77, 'category_id': 7, 'iscrowd': 0}])
    with pytest.raises(DatasetError, match=r'lacks segment id\(s\) \[77\]'):
        _coco(tmp_path)[0]
    _write_coco(tmp_path, IDS, SEGMENTS, image_size=(5, 6))
    with pytest.raises(DatasetError, match='is 6x4 but its image is 6x5'):
        _coco(tmp_path)[0]
    (tmp_path / 'panoptic' / 'a.png').unlink()
    with pytest.raises(FileNotFoundError, match='panoptic PNG not found'):
        _coco(tmp_path)[0]


# --- ADE20K SceneParsing layout ----------------------------------------------------------


@pytest.fixture()
def ade_root(tmp_path):
    root = tmp_path / 'ADEChallengeData2016'
    labels = {'ADE_train_1': np.array([[0, 1, 1, 150], [0, 0, 12, 150], [5, 5, 12, 200]]),
              'ADE_val_1': np.array([[3, 3, 3, 3], [0, 3, 3, 3], [0, 0, 0, 0]])}
    for split, name in (('training', 'ADE_train_1'), ('validation', 'ADE_val_1')):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
        cv2.imwrite(str(root / 'images' / split / f'{name}.jpg'), np.full((3, 4, 3), 90, np.uint8))
        cv2.imwrite(str(root / 'annotations' / split / f'{name}.png'),
                    labels[name].astype(np.uint8))
    (root / 'objectInfo150.txt').write_text(
        'Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\twall\n2\t0.1\t1\t1\tbuilding;edifice\n')
    return root


def test_ade20k_maps_zero_to_ignore_and_shifts_classes(ade_root):
    dataset = ADE20KSemantic(ade_root, 'training')
    assert len(dataset) == 1 and dataset.num_classes == 150
    assert dataset.class_names[:3] == ['wall', 'building', 'class_002']
    image, target = dataset[0]
    assert image.shape == (3, 3, 4) and image.dtype == torch.uint8
    expected = np.array([[255, 0, 0, 149], [255, 255, 11, 149], [4, 4, 11, 255]])
    np.testing.assert_array_equal(target['semantic'].numpy(), expected)
    assert target['labels'].tolist() == [0, 4, 11, 149]
    assert not target['is_crowd'].any()
    for mask, label in zip(target['masks'], target['labels'], strict=True):
        np.testing.assert_array_equal(mask.numpy(), expected == int(label))
    np.testing.assert_array_equal(masks_to_semantic(target['masks'], target['labels']).numpy(),
                                  expected)
    _, val = ADE20KSemantic(ade_root, 'val')[0]
    assert val['labels'].tolist() == [2] and int(val['masks'].sum()) == 7


def test_ade20k_errors(ade_root):
    with pytest.raises(ValueError, match='split must be one of'):
        ADE20KSemantic(ade_root, 'test')
    with pytest.raises(FileNotFoundError, match='ADE20K root'):
        ADE20KSemantic(ade_root / 'missing')
    (ade_root / 'annotations' / 'validation' / 'ADE_val_1.png').unlink()
    with pytest.raises(DatasetError, match='has no annotation'):
        ADE20KSemantic(ade_root, 'validation')
    shutil.rmtree(ade_root / 'images' / 'training')
    with pytest.raises(FileNotFoundError, match='ADE20K image folder not found'):
        ADE20KSemantic(ade_root, 'training')


def test_ade20k_semantic_follows_the_augmentation(ade_root):
    transform = TrainTransform(8, scale_range=(1.0, 1.0), flip_prob=1.0)
    image, target = ADE20KSemantic(ade_root, transforms=transform)[0]
    assert image.shape == (3, 8, 8) and target['semantic'].shape == (8, 8)
    expected = np.full((8, 8), 255)
    expected[:6, :8] = np.kron(np.array([[255, 0, 0, 149], [255, 255, 11, 149],
                                         [4, 4, 11, 255]])[:, ::-1], np.ones((2, 2)))
    np.testing.assert_array_equal(target['semantic'].numpy(), expected)


# --- augmentations -----------------------------------------------------------------------

COLOURS = torch.tensor([[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], dtype=torch.uint8)


def _painted_sample(height=120, width=160):
    """Four segments, each painted in its own colour; segment 3 is a small corner square."""
    label_map = torch.zeros(height, width, dtype=torch.int64)
    label_map[:, width // 3:] = 1
    label_map[height // 2:, width // 2:] = 2
    label_map[:6, :6] = 3
    masks = torch.stack([label_map == i for i in range(4)])
    image = COLOURS[label_map].permute(2, 0, 1).contiguous()
    target = {'masks': tv_tensors.Mask(masks), 'labels': torch.tensor([10, 11, 12, 13]),
              'is_crowd': torch.zeros(4, dtype=torch.bool), 'orig_size': (height, width)}
    return tv_tensors.Image(image), target


def test_horizontal_flip_moves_an_asymmetric_mask_with_the_image():
    image, target = _painted_sample(40, 60)
    transform = TrainTransform((40, 60), scale_range=(1.0, 1.0), flip_prob=1.0)
    flipped, out = transform(image, target)
    assert flipped.shape == image.shape
    np.testing.assert_array_equal(out['masks'].numpy(), target['masks'].flip(-1).numpy())
    torch.testing.assert_close(flipped, image.flip(-1), rtol=0, atol=0)


def test_random_augmentation_keeps_masks_aligned_and_drops_vanished_ones():
    torch.manual_seed(0)
    transform = TrainTransform(64, color_jitter=False)
    dropped = 0
    for _ in range(25):
        image, target = transform(*_painted_sample())
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        masks, labels = target['masks'], target['labels']
        assert masks.dtype == torch.bool and masks.shape[1:] == (64, 64)
        assert len(masks) == len(labels) == len(target['is_crowd'])
        assert masks.flatten(1).any(1).all()  # no empty mask survives
        dropped += 4 - len(masks)
        assert not masks.sum(0).gt(1).any()  # still a partition (plus padding)
        for mask, label in zip(masks, labels, strict=True):
            # Colours inside a mask (away from resampled edges) are the segment's colour.
            core = cv2.erode(mask.numpy().astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            if core.sum() >= 4:
                median = image.permute(1, 2, 0).numpy()[core].astype(int)
                assert (np.abs(np.median(median, 0) - COLOURS[label - 10].numpy()) < 30).all()
        covered = masks.any(0)
        assert (image[:, ~covered] == 0).all()  # uncovered pixels are padding
    assert dropped > 0


def test_colour_jitter_changes_pixels_not_masks():
    torch.manual_seed(1)
    image, target = _painted_sample(32, 32)
    transform = TrainTransform(32, scale_range=(1.0, 1.0), flip_prob=0.0, color_jitter=True)
    outputs = [transform(image, target) for _ in range(4)]
    assert any(not torch.equal(out, image) for out, _ in outputs)
    for _, out in outputs:
        assert torch.equal(out['masks'], target['masks'])


def test_drop_empty_masks_filters_every_per_segment_entry():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = masks[2, 1, 1] = True
    target = drop_empty_masks({'masks': tv_tensors.Mask(masks), 'labels': torch.tensor([1, 2, 3]),
                               'is_crowd': torch.tensor([False, True, False]),
                               'segment_ids': torch.tensor([7, 8, 9]), 'image_id': 5})
    assert target['labels'].tolist() == [1, 3] and target['segment_ids'].tolist() == [7, 9]
    assert target['is_crowd'].tolist() == [False, False] and target['image_id'] == 5
    assert isinstance(target['masks'], tv_tensors.Mask) and target['masks'].shape == (2, 4, 4)


def test_eval_transform_resizes_the_longer_side_and_pads():
    image, target = _painted_sample(40, 60)
    resized, out = EvalTransform(90)(image, target)
    assert resized.shape == (3, 90, 90) and out['resized_size'] == (60, 90)
    assert (resized[:, 60:] == 0).all() and (resized[:, :60] > 0).any(0).all()
    assert torch.equal(out['masks'], target['masks'])  # metrics use original resolution
    again, out2 = EvalTransform(90, transform_masks=True)(image, target)
    assert torch.equal(again, resized) and out2['masks'].shape == (4, 90, 90)
    np.testing.assert_array_equal(out2['masks'][:, :60].numpy(),
                                  np.kron(target['masks'].numpy(), np.ones((1, 3, 3)))[:, ::2, ::2]
                                  .astype(bool))
    assert not out2['masks'][:, 60:].any()


def test_collate_batches_transformed_samples(synthetic_root):
    dataset = open_split(synthetic_root, 'train', transforms=TrainTransform(48))
    images, targets = collate([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 48, 48) and type(images) is torch.Tensor
    assert len(targets) == 2 and all(t['masks'].shape[1:] == (48, 48) for t in targets)
    with pytest.raises(ValueError, match='different sizes'):
        collate([open_split(synthetic_root, 'train')[0], dataset[0]])
