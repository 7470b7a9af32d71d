"""PanopticTracker: exact ids through motion, occlusion, re-entry, crossing, class change."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from tokenmask_ros.panoptic_types import Prediction, segment_areas_and_boxes
from tokenmask_ros.tracking import PanopticTracker, prediction_from_panoptic

H, W = 64, 128
FLOOR, DISC, BOX, WALL = 0, 1, 2, 3
IS_THING = [False, True, True, False]
RED, BLUE, GREEN, YELLOW = (230, 30, 30), (30, 40, 230), (40, 200, 60), (240, 220, 30)
_YY, _XX = np.mgrid[:H, :W]


def frame(*objects, divisor=1000, instances=None) -> tuple[Prediction, np.ndarray]:
    """A floor and a wall strip with discs ``(class, cx, cy, radius, colour)``, later on top.

    Thing instances are numbered 1.. per class in the order given (or as ``instances``
    says), as a per-frame segmenter would: the tracker must not rely on them.
    """
    panoptic = np.full((H, W), FLOOR * divisor, np.int32)
    image = np.full((H, W, 3), 100, np.uint8)
    panoptic[:8] = WALL * divisor
    image[:8] = 160
    counter = {}
    for index, (class_id, cx, cy, radius, colour) in enumerate(objects):
        counter[class_id] = counter.get(class_id, 0) + 1
        number = counter[class_id] if instances is None else instances[index]
        inside = (_YY - cy) ** 2 + (_XX - cx) ** 2 <= radius * radius
        panoptic[inside] = class_id * divisor + number
        image[inside] = colour
    return prediction_from_panoptic(panoptic, IS_THING, divisor), image


def ids_at(out: Prediction, *points) -> list[int]:
    """Output ids at pixel (x, y) points (object centres)."""
    return [int(out.panoptic[int(y), int(x)]) for x, y in points]


def assert_consistent(out: Prediction) -> None:
    """Segments match the map: same ids, in id order, with the map's areas and boxes."""
    present = np.unique(out.panoptic)
    present = present[present >= 0]
    ids = [s.id for s in out.segments]
    assert ids == sorted(ids) == present.tolist()
    areas, boxes = segment_areas_and_boxes(out.panoptic, present)
    assert [s.area for s in out.segments] == areas.tolist()
    assert [s.bbox for s in out.segments] == [tuple(b) for b in boxes.tolist()]
    assert all(s.class_id == s.id // out.label_divisor for s in out.segments)
    semantic = np.where(out.panoptic >= 0, out.panoptic // out.label_divisor, 255)
    np.testing.assert_array_equal(out.semantic, semantic)


def test_prediction_from_panoptic_builds_segments_and_semantic():
    panoptic = np.full((4, 6), -1, np.int32)
    panoptic[:2] = 0
    panoptic[2:, 1:3] = 1001
    panoptic[3, 5] = 2001
    pred = prediction_from_panoptic(panoptic, IS_THING, scores={1001: 0.5})
    assert [(s.id, s.class_id, s.is_thing, s.area, s.bbox, s.score) for s in pred.segments] == [
        (0, 0, False, 12, (0, 0, 6, 2), 1.0),
        (1001, 1, True, 4, (1, 2, 2, 2), 0.5),
        (2001, 2, True, 1, (5, 3, 1, 1), 1.0)]
    assert pred.semantic.dtype == np.uint8
    assert pred.semantic[3, 0] == 255 and pred.semantic[3, 5] == 2
    with pytest.raises(ValueError, match='no is_thing flag'):
        prediction_from_panoptic(np.full((2, 2), 9000), IS_THING)
    with pytest.raises(ValueError, match='2-D integer'):
        prediction_from_panoptic(np.zeros((2, 2), np.float32), IS_THING)


def test_tracking_module_imports_neither_torch_nor_ros():
    code = ('import sys, tokenmask_ros.tracking; '
            'bad = [m for m in ("torch", "rclpy") if m in sys.modules]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_steady_motion_keeps_ids_whatever_the_per_frame_numbering():
    tracker = PanopticTracker(IS_THING)
    for t in range(12):
        a, b = (20 + 3 * t, 40), (100 - 2 * t, 30)
        # Per-frame numbering follows x order, so it swaps half way: ids must not.
        objects = sorted([(DISC, *a, 6, RED), (DISC, *b, 7, BLUE)], key=lambda o: o[1])
        out = tracker.update(*frame(*objects))
        assert ids_at(out, a, b) == [1001, 1002], t
        assert_consistent(out)


def test_fast_mover_without_image_keeps_id_by_its_velocity():
    tracker = PanopticTracker(IS_THING)
    x = 10
    for speed in (0, 4, 8, 12, 16, 20, 24):
        # The last steps are longer than the disc (17 px across) plus the no-appearance
        # reach: only the velocity estimate brings the track's mask onto the new one.
        x += speed
        out = tracker.update(frame((DISC, x, 36, 8, RED))[0])
        assert ids_at(out, (x, 36)) == [1001], speed


def test_occlusion_shorter_than_max_age_keeps_id_without_image():
    tracker = PanopticTracker(IS_THING, max_age=5)
    other = (100, 40)
    for t in range(14):
        centre = (15 + 4 * t, 30)
        hidden = 5 <= t < 9  # missed for 4 frames while it keeps moving
        objects = [(DISC, *other, 6, BLUE)] + ([] if hidden else [(DISC, *centre, 6, RED)])
        out = tracker.update(frame(*objects)[0])
        expected = [1001] if hidden else [1001, 1002]
        assert ids_at(out, other, *([] if hidden else [centre])) == expected, t
    assert tracker.num_tracks == 2


@pytest.mark.parametrize('gap, expected', [(3, 1002), (5, 1002), (6, 1003)])
def test_reentry_elsewhere_keeps_id_up_to_max_age_unseen_frames(gap, expected):
    """Leaves at the right, comes back at the left: appearance, not overlap, matches it."""
    tracker = PanopticTracker(IS_THING, max_age=5)
    still = (20, 50)
    for t in range(4):
        out = tracker.update(*frame((DISC, *still, 6, BLUE), (DISC, 80 + 10 * t, 30, 7, RED)))
        assert ids_at(out, still, (80 + 10 * t, 30)) == [1001, 1002]
    for _ in range(gap):  # out of view
        out = tracker.update(*frame((DISC, *still, 6, BLUE)))
        assert ids_at(out, still) == [1001]
    darker = tuple(int(0.7 * c) for c in RED)  # other lighting: chromaticity is unchanged
    for t in range(3):
        back = (12 + 6 * t, 40)
        out = tracker.update(*frame((DISC, *still, 6, BLUE), (DISC, *back, 7, darker)))
        assert ids_at(out, still, back) == [1001, expected]
        assert_consistent(out)


def test_a_one_frame_fragment_is_dropped_once_its_object_is_whole_again():
    tracker = PanopticTracker(IS_THING, max_age=10)
    a, lone = (DISC, 30, 30, 9, RED), (DISC, 100, 45, 5, BLUE)

    def split(*objects):  # the segmenter cuts a corner off the red disc
        pred, image = frame(*objects)
        panoptic = pred.panoptic.copy()
        panoptic[30:36, 33:39] = DISC * 1000 + 9
        return prediction_from_panoptic(panoptic, IS_THING), image

    tracker.update(*frame(a))
    out = tracker.update(*split(a, lone))  # a corner fragment and a far, one-frame object
    assert ids_at(out, (28, 28), (35, 32), (100, 45)) == [1001, 1003, 1002]
    out = tracker.update(*frame(a))
    assert tracker.num_tracks == 2  # the fragment's track is gone, the lone one waits
    out = tracker.update(*split(a, lone))
    assert ids_at(out, (28, 28), (35, 32), (100, 45)) == [1001, 1004, 1002]


@pytest.mark.parametrize('bounce', [False, True])
def test_two_objects_crossing_keep_their_ids_with_appearance(bounce):
    """They pass through each other, or meet and turn back (motion alone would swap them)."""
    tracker = PanopticTracker(IS_THING, max_age=10)
    hidden_frames = 0
    for t in range(24):
        step = 11 - abs(11 - t) if bounce else t
        a, b = (10 + 5 * step, 34), (120 - 5 * step, 34)
        # Same class, same size, same row: one passes right in front of the other, which is
        # fully hidden when they meet.
        # Blue drawn first, red in front; per-frame numbers follow x order (they swap).
        pred, image = frame((DISC, *b, 8, BLUE), (DISC, *a, 8, RED),
                            instances=(2, 1) if a[0] <= b[0] else (1, 2))
        out = tracker.update(pred, image)
        visible_b = int(np.count_nonzero((image == BLUE).all(-1)))
        hidden_frames += visible_b == 0
        assert ids_at(out, a) == [1001], t
        if visible_b:
            assert np.unique(out.panoptic[(image == BLUE).all(-1)]).tolist() == [1002], t
        assert_consistent(out)
    assert hidden_frames >= 1  # the test really covers a full occlusion


def test_class_change_starts_a_new_track():
    tracker = PanopticTracker(IS_THING)
    for t in range(3):
        out = tracker.update(*frame((DISC, 30 + 2 * t, 30, 8, RED), (DISC, 90, 40, 6, BLUE)))
        assert ids_at(out, (30 + 2 * t, 30), (90, 40)) == [1001, 1002]
    # Same place, same colour, now classified as a box: a box track, number 1 of its class.
    out = tracker.update(*frame((BOX, 36, 30, 8, RED), (DISC, 90, 40, 6, BLUE)))
    assert ids_at(out, (36, 30), (90, 40)) == [2001, 1002]
    out = tracker.update(*frame((BOX, 38, 30, 8, RED), (DISC, 90, 40, 6, BLUE)))
    assert ids_at(out, (38, 30), (90, 40)) == [2001, 1002]


def test_numbers_are_not_reused_while_live_and_reused_after_expiry():
    tracker = PanopticTracker(IS_THING, label_divisor=6, max_age=2)  # numbers 1..5
    a, b, c = (DISC, 15, 30, 5, RED), (DISC, 45, 30, 5, BLUE), (DISC, 75, 30, 5, GREEN)
    far = [(DISC, 20, 52, 5, YELLOW), (DISC, 60, 52, 5, (200, 0, 200))]
    out = tracker.update(*frame(a, b, c, divisor=6))
    assert ids_at(out, (15, 30), (45, 30), (75, 30)) == [7, 8, 9]  # disc: 1 * 6 + number
    # c vanishes (lost, still live); new objects must not take number 3.
    out = tracker.update(*frame(a, b, far[0], divisor=6))
    assert ids_at(out, (15, 30), (45, 30), (20, 52)) == [7, 8, 10]
    out = tracker.update(*frame(a, b, *far, divisor=6))
    assert ids_at(out, (15, 30), (45, 30), (20, 52), (60, 52)) == [7, 8, 10, 11]
    out = tracker.update(*frame(a, b, *far, divisor=6))  # c unseen for 3 > max_age frames: expired
    newcomer = (DISC, 100, 52, 5, (0, 200, 200))
    out = tracker.update(*frame(a, b, *far, newcomer, divisor=6))
    assert ids_at(out, (100, 52)) == [9]  # numbers exhausted: the expired one comes back
    assert_consistent(out)


def test_when_every_number_is_live_the_longest_lost_track_gives_its_number_up():
    tracker = PanopticTracker(IS_THING, label_divisor=3, max_age=100)  # numbers 1..2
    out = tracker.update(*frame((DISC, 20, 30, 5, RED), (DISC, 60, 30, 5, BLUE), divisor=3))
    assert ids_at(out, (20, 30), (60, 30)) == [4, 5]  # disc: 1 * 3 + number
    out = tracker.update(*frame((DISC, 60, 30, 5, BLUE), divisor=3))
    out = tracker.update(*frame((DISC, 60, 30, 5, BLUE), (DISC, 100, 50, 5, GREEN), divisor=3))
    assert ids_at(out, (60, 30), (100, 50)) == [5, 4]
    assert tracker.num_tracks == 2


def test_max_age_and_min_iou_change_at_run_time():
    tracker = PanopticTracker(IS_THING, max_age=5)
    tracker.update(frame((DISC, 30, 30, 6, RED))[0])
    tracker.max_age = 0
    tracker.update(frame()[0])  # unseen one frame: more than 0, expired
    out = tracker.update(frame((DISC, 30, 30, 6, RED))[0])
    assert ids_at(out, (30, 30)) == [1002]
    tracker.min_iou = 1.0  # only a perfect overlap matches by overlap; no image: by distance
    out = tracker.update(frame((DISC, 31, 30, 6, RED))[0])
    assert ids_at(out, (31, 30)) == [1002]
    with pytest.raises(ValueError, match='max_age'):
        tracker.max_age = -1
    with pytest.raises(ValueError, match='min_iou'):
        tracker.min_iou = 1.5


def test_stuff_untouched_and_input_not_mutated():
    tracker = PanopticTracker(IS_THING)
    tracker.update(*frame((DISC, 20, 30, 6, RED), (DISC, 60, 30, 6, BLUE)))
    pred, image = frame((DISC, 62, 30, 6, BLUE), (DISC, 22, 30, 6, RED))  # numbering swapped
    before = (pred.panoptic.copy(), pred.semantic.copy(), copy.deepcopy(pred.segments),
              image.copy())
    out = tracker.update(pred, image)
    np.testing.assert_array_equal(pred.panoptic, before[0])
    np.testing.assert_array_equal(pred.semantic, before[1])
    assert pred.segments == before[2]
    np.testing.assert_array_equal(image, before[3])
    assert out.panoptic is not pred.panoptic and out.semantic is not pred.semantic
    stuff_in = [s for s in pred.segments if not s.is_thing]
    assert [s for s in out.segments if not s.is_thing] == stuff_in
    stuff = np.isin(pred.panoptic, [0, 3000])
    np.testing.assert_array_equal(out.panoptic[stuff], pred.panoptic[stuff])
    np.testing.assert_array_equal(out.semantic, pred.semantic)
    assert ids_at(out, (22, 30), (62, 30)) == [1001, 1002]
    assert_consistent(out)


def test_void_pixels_stay_void_and_reset_restarts_numbering():
    tracker = PanopticTracker(IS_THING)
    pred, image = frame((DISC, 20, 30, 6, RED), (DISC, 60, 30, 6, BLUE))
    pred.panoptic[40:, :] = -1
    pred = prediction_from_panoptic(pred.panoptic, IS_THING)
    out = tracker.update(pred, image)
    assert (out.panoptic[40:] == -1).all() and (out.semantic[40:] == 255).all()
    tracker.update(frame((DISC, 100, 50, 6, GREEN))[0])
    tracker.reset()
    out = tracker.update(frame((DISC, 100, 50, 6, GREEN))[0])
    assert ids_at(out, (100, 50)) == [1001] and tracker.num_tracks == 1


def test_bad_inputs_are_refused_with_one_line_errors():
    tracker = PanopticTracker(IS_THING)
    pred, image = frame((DISC, 20, 30, 6, RED))
    with pytest.raises(ValueError, match='image must be uint8'):
        tracker.update(pred, image[:10])
    with pytest.raises(ValueError, match='label_divisor'):
        tracker.update(prediction_from_panoptic(pred.panoptic, IS_THING, label_divisor=2000))
    with pytest.raises(ValueError, match='no is_thing flag'):
        PanopticTracker(IS_THING[:2]).update(pred)
    with pytest.raises(ValueError, match='downsample'):
        PanopticTracker(IS_THING, downsample=0)


def test_assignment_never_trades_a_good_pair_for_two_weaker_ones():
    from tokenmask_ros.tracking import _assign

    # Track 0 fits segment 0 best; track 1 could only take segment 0. Matching both would
    # give track 0 its weak segment 1: the better total keeps the good pair alone.
    cost = np.array([[-1.0, -0.3], [-0.5, 0.0]])
    allowed = np.array([[True, True], [True, False]])
    assert _assign(cost, allowed) == [(0, 0)]
    assert _assign(cost, np.zeros_like(allowed)) == []
    assert sorted(_assign(np.array([[-1.0, -0.2], [-0.2, -1.0]]), np.ones((2, 2), bool))) == [
        (0, 0), (1, 1)]
