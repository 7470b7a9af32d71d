"""The synthetic scene generator: determinism and exact, self-consistent ground truth."""

import numpy as np
import pytest

from tokenmask_ros.synthetic import (
    LABEL_DIVISOR,
    SYNTHETIC_CLASSES,
    THING_CLASSES,
    SceneGenerator,
)


@pytest.fixture(scope='module')
def generator():
    return SceneGenerator(height=96, width=128, seed=3)


def test_same_seed_and_index_give_identical_scenes(generator):
    again = SceneGenerator(height=96, width=128, seed=3)
    for index in (0, 5):
        a, b = generator.scene(index), again.scene(index)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.panoptic, b.panoptic)
        assert a.segments == b.segments


def test_different_seeds_or_indices_give_different_scenes(generator):
    other = SceneGenerator(height=96, width=128, seed=4)
    assert not np.array_equal(generator.scene(0).image, generator.scene(1).image)
    assert not np.array_equal(generator.scene(0).image, other.scene(0).image)


def test_shapes_and_dtypes(generator):
    scene = generator.scene(2)
    assert scene.image.shape == (96, 128, 3) and scene.image.dtype == np.uint8
    assert scene.semantic.shape == (96, 128) and scene.semantic.dtype == np.uint8
    assert scene.panoptic.dtype == np.int32


@pytest.mark.parametrize('index', range(8))
def test_segments_describe_the_panoptic_map_exactly(generator, index):
    scene = generator.scene(index)
    ids = {s.id for s in scene.segments}
    assert ids == set(np.unique(scene.panoptic).tolist())
    np.testing.assert_array_equal(scene.panoptic // LABEL_DIVISOR, scene.semantic)
    for segment in scene.segments:
        mask = scene.panoptic == segment.id
        assert segment.area == mask.sum() > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = segment.bbox
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert segment.category_id == segment.id // LABEL_DIVISOR
        assert segment.is_thing == SYNTHETIC_CLASSES[segment.category_id].is_thing
        if not segment.is_thing:
            assert segment.id % LABEL_DIVISOR == 0


def test_things_are_numbered_from_one_without_gaps(generator):
    for index in range(10):
        scene = generator.scene(index)
        thing_ids = sorted(s.id % LABEL_DIVISOR for s in scene.segments if s.is_thing)
        assert thing_ids == list(range(1, len(thing_ids) + 1))


def test_every_thing_class_appears_over_a_few_scenes(generator):
    seen = {s.category_id for i in range(30) for s in generator.scene(i).segments}
    assert set(THING_CLASSES) <= seen


def test_thing_class_is_not_given_away_by_colour(generator):
    """Colours are random per instance: the same class must show very different colours."""
    colours = []
    for index in range(30):
        scene = generator.scene(index)
        for segment in scene.segments:
            if segment.category_id == THING_CLASSES[0] and segment.area > 200:
                colours.append(scene.image[scene.panoptic == segment.id].mean(0))
    assert len(colours) >= 3
    assert np.ptp(np.array(colours), axis=0).max() > 80


def test_too_small_scene_is_refused():
    with pytest.raises(ValueError, match='at least 16x16'):
        SceneGenerator(height=8, width=64)
