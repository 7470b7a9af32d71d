"""The synthetic scene generator: determinism and exact, self-consistent ground truth."""

import hashlib

import cv2
import numpy as np
import pytest

from tokenmask_ros.synthetic import (
    BAR,
    DISC,
    FLOOR,
    LABEL_DIVISOR,
    RING,
    RUG,
    STUFF_CLASSES,
    SYNTHETIC_CLASSES,
    THING_CLASSES,
    WALL,
    SceneGenerator,
)
from tokenmask_ros.synthetic_depth import (
    WALL_DISTANCE,
    Room,
    scene_depth,
    synthetic_camera,
    thing_centres,
)


@pytest.fixture(scope='module')
def generator():
    return SceneGenerator(height=96, width=128, seed=3)


def test_class_table_is_consistent():
    assert [c.id for c in SYNTHETIC_CLASSES] == list(range(len(SYNTHETIC_CLASSES)))
    assert len({c.name for c in SYNTHETIC_CLASSES}) == len(SYNTHETIC_CLASSES)
    assert {c.id for c in SYNTHETIC_CLASSES if c.is_thing} == set(THING_CLASSES)
    assert {c.id for c in SYNTHETIC_CLASSES if not c.is_thing} == set(STUFF_CLASSES)
    assert len(THING_CLASSES) >= 6 and len(STUFF_CLASSES) >= 3


def test_same_seed_and_index_give_identical_scenes(generator):
    again = SceneGenerator(height=96, width=128, seed=3)
    for index in (0, 5):
        a, b = generator.scene(index), again.scene(index)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.panoptic, b.panoptic)
        assert a.segments == b.segments


def test_different_seeds_streams_or_indices_give_different_scenes(generator):
    other = SceneGenerator(height=96, width=128, seed=4)
    val = SceneGenerator(height=96, width=128, seed=3, stream=1)
    assert not np.array_equal(generator.scene(0).image, generator.scene(1).image)
    assert not np.array_equal(generator.scene(0).image, other.scene(0).image)
    assert not np.array_equal(generator.scene(0).image, val.scene(0).image)
    np.testing.assert_array_equal(val.scene(2).image,
                                  SceneGenerator(96, 128, seed=3, stream=1).scene(2).image)


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


def test_every_class_appears_over_a_few_scenes(generator):
    seen = {s.category_id for i in range(30) for s in generator.scene(i).segments}
    assert seen == set(range(len(SYNTHETIC_CLASSES)))


def test_scenes_are_crowded_with_small_and_overlapping_things(generator):
    things = [[s for s in generator.scene(i).segments if s.is_thing] for i in range(30)]
    assert np.mean([len(t) for t in things]) >= 3
    assert any(max(s.bbox[2:]) <= 14 for t in things for s in t)  # small objects
    assert any(max(s.bbox[2:]) >= 30 for t in things for s in t)  # and large ones

    def touching(a, b):
        ax, ay, aw, ah = a.bbox
        bx, by, bw, bh = b.bbox
        return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah

    overlapping = sum(touching(a, b) for t in things for i, a in enumerate(t) for b in t[i + 1:])
    assert overlapping >= 10


def test_rug_lies_on_the_floor_below_the_wall(generator):
    found = 0
    for index in range(20):
        scene = generator.scene(index)
        if not (scene.semantic == RUG).any():
            continue
        found += 1
        # Every column: no wall pixel below a rug pixel (the wall is above the horizon).
        rows = np.arange(scene.semantic.shape[0])[:, None]
        lowest_wall = np.where(scene.semantic == WALL, rows, -1).max(0)
        highest_rug = np.where(scene.semantic == RUG, rows, 10**6).min(0)
        assert (highest_rug > lowest_wall).all()
    assert found >= 5


def _lone_things(category, count=40, min_area=40):
    """Masks of single, unoccluded things of ``category`` that lie fully inside the image."""
    generator = SceneGenerator(height=160, width=160, seed=11, max_objects=1, noise_std=0)
    for index in range(400):
        scene = generator.scene(index)
        for segment in scene.segments:
            x, y, w, h = segment.bbox
            if (segment.category_id == category and x > 0 and y > 0
                    and x + w < 160 and y + h < 160 and segment.area >= min_area):
                yield (scene.panoptic == segment.id).astype(np.uint8)
                count -= 1
                if not count:
                    return


def test_class_is_given_by_shape():
    rings = list(_lone_things(RING, 8))
    assert len(rings) >= 4
    for mask in rings:  # an annulus: exactly one hole
        _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        assert (hierarchy[0, :, 3] >= 0).sum() == 1
    discs = list(_lone_things(DISC, 8, min_area=300))
    assert len(discs) >= 4
    for mask in discs:  # filled: no hole, fills ~pi/4 of its box
        _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        assert (hierarchy[0, :, 3] >= 0).sum() == 0
        _, _, w, h = cv2.boundingRect(mask)
        assert mask.sum() / (w * h) == pytest.approx(np.pi / 4, abs=0.12)
    bars = list(_lone_things(BAR, 8))
    assert len(bars) >= 4
    for mask in bars:  # thin rods, 3-6 px wide: no pixel is farther than ~3.5 px from the edge
        inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5).max()
        assert 1.0 <= inside <= 4.0
        assert max(cv2.minAreaRect(cv2.findNonZero(mask))[1]) >= 12


def test_thing_class_is_not_given_away_by_colour(generator):
    """Colours are random per instance: the same class must show very different colours."""
    for category in THING_CLASSES:
        colours = []
        for index in range(40):
            scene = generator.scene(index)
            for segment in scene.segments:
                if segment.category_id == category and segment.area > 30:
                    colours.append(scene.image[scene.panoptic == segment.id].mean(0))
        assert len(colours) >= 3, SYNTHETIC_CLASSES[category].name
        assert np.ptp(np.array(colours), axis=0).max() > 80, SYNTHETIC_CLASSES[category].name


def test_too_small_scene_is_refused():
    with pytest.raises(ValueError, match='at least 16x16'):
        SceneGenerator(height=8, width=64)
    with pytest.raises(ValueError, match='>= 0'):
        SceneGenerator(seed=-1)


def test_scene_layout_is_unchanged():
    """The bundled model and many tests were made with these scenes: the class maps, panoptic
    maps and segments must stay bit-identical (digest computed before the drawing helpers
    were shared with synthetic_video; pixel colours are left out, as float maths such as
    np.sin may differ in the last bit between CPUs)."""
    digest = hashlib.sha256()
    generator = SceneGenerator(height=96, width=128, seed=3)
    for index in range(6):
        scene = generator.scene(index)
        digest.update(scene.semantic.tobytes())
        digest.update(scene.panoptic.tobytes())
        digest.update(repr(scene.segments).encode())
    assert digest.hexdigest() == \
        'c4ddf8480adc43f7d950b251b0196b4ed8fa682cd61aeab1cd8df75570ceba7c'


def test_horizon_is_where_the_wall_meets_the_floor(generator):
    for index in range(6):
        scene = generator.scene(index)
        left, right = scene.horizon
        rows, cols = np.indices(scene.semantic.shape)
        horizon = left + cols * (right - left) / (scene.semantic.shape[1] - 1)
        assert (rows[scene.semantic == WALL] < horizon[scene.semantic == WALL]).all()
        floor = np.isin(scene.semantic, (FLOOR, RUG))
        assert (rows[floor] >= horizon[floor]).all()


def test_scene_depth_wall_floor_and_standing_things(generator):
    for index in range(8):
        scene = generator.scene(index)
        camera = synthetic_camera(128, 96)
        depth = scene_depth(scene, camera)
        assert depth.shape == (96, 128) and depth.dtype == np.float32
        assert np.isfinite(depth).all() and (depth > 0).all()
        np.testing.assert_array_equal(depth[scene.semantic == WALL], WALL_DISTANCE)
        floor = np.isin(scene.semantic, (FLOOR, RUG))
        below = floor[1:] & floor[:-1]
        assert (np.diff(depth, axis=0)[below] < 0).all()  # nearer toward the bottom rows
        room = Room(camera, scene.horizon)
        centres = thing_centres(scene.panoptic, depth, camera)
        for segment in scene.segments:
            if not segment.is_thing:
                continue
            mask = scene.panoptic == segment.id
            x, y, w, h = segment.bbox
            z = room.standing_depth(x + (w - 1) / 2, y + h - 1)  # floor depth at its foot
            assert 0 < z < WALL_DISTANCE
            np.testing.assert_allclose(depth[mask], z, rtol=1e-6)
            rows, cols = np.nonzero(mask)
            expected = camera.back_project(cols.mean(), rows.mean(), z)
            np.testing.assert_allclose(centres[segment.id], expected, rtol=1e-5)
    with pytest.raises(ValueError, match='camera is'):
        scene_depth(generator.scene(0), synthetic_camera(64, 48))
