"""depth3d: depth decoding, per-segment 3D boxes and the labelled cloud, on exact geometry."""

from __future__ import annotations

import numpy as np
import pytest

from tokenmask_ros.camera import PinholeCamera
from tokenmask_ros.depth3d import (
    POINT_DTYPE,
    Box3D,
    depth_to_metres,
    labelled_points,
    pack_rgb,
    segment_boxes_3d,
    unpack_rgb,
)

H, W = 60, 80
CAMERA = PinholeCamera(fx=50.0, fy=40.0, cx=39.5, cy=29.5, width=W, height=H)
WALL, CARD, VOID = 1000, 2001, -1  # stuff (class 1), thing (class 2 #1), no segment


def scene():
    """A wall at 4 m behind a fronto-parallel card at 2 m covering rows 10..29, cols 20..59."""
    panoptic = np.full((H, W), WALL, np.int32)
    depth = np.full((H, W), 4.0, np.float32)
    panoptic[10:30, 20:60] = CARD
    depth[10:30, 20:60] = 2.0
    panoptic[55:, :] = VOID
    return panoptic, depth


def percentile_extent(first: int, last: int, repeats: int, scale: float) -> float:
    """5..95 percentile extent of pixel coordinates first..last, each ``repeats`` times."""
    values = np.repeat(np.arange(first, last + 1, dtype=float), repeats)
    low, high = np.percentile(values, [5, 95])
    return (high - low) * scale


def test_plane_at_known_depth_gives_its_centre_and_size():
    panoptic, depth = scene()
    boxes = segment_boxes_3d(panoptic, depth, CAMERA)
    card = boxes[CARD]
    # Centre pixel (39.5, 19.5): x = (39.5 - 39.5) * 2 / 50, y = (19.5 - 29.5) * 2 / 40.
    assert card.center == pytest.approx((0.0, -0.5, 2.0), abs=1e-6)
    assert card.size == pytest.approx((percentile_extent(20, 59, 20, 2 / 50),
                                       percentile_extent(10, 29, 40, 2 / 40), 0.0), abs=1e-6)
    assert card.num_points == 20 * 40
    # The full card is 40 px * 2 m / 50 = 1.6 m wide: the robust size keeps ~90 % of it.
    assert 0.85 * 1.6 < card.size[0] < 1.6
    wall = boxes[WALL]
    assert wall.num_points == 55 * W - 20 * 40
    assert wall.center[2] == 4.0 and wall.size[2] == 0.0
    assert set(boxes) == {WALL, CARD}
    assert isinstance(card, Box3D)


def test_invalid_and_out_of_range_depth_is_ignored():
    panoptic, depth = scene()
    clean = segment_boxes_3d(panoptic, depth, CAMERA)[CARD]
    assert clean.num_points == 800
    # Spoil card pixels with every kind of bad depth: none may move the box.
    bad = depth.copy()
    bad[10, 20:30] = np.nan
    bad[11, 20:30] = np.inf
    bad[12, 20:30] = -np.inf
    bad[13, 20:30] = 0.0
    bad[14, 20:30] = -2.0
    bad[15, 20:30] = 0.05  # nearer than min_depth
    bad[16, 20:30] = 50.0  # farther than max_depth
    spoiled = segment_boxes_3d(panoptic, bad, CAMERA)[CARD]
    assert spoiled.num_points == clean.num_points - 70
    assert np.isfinite(spoiled.center).all() and np.isfinite(spoiled.size).all()
    assert spoiled.center[2] == 2.0 and spoiled.size[2] == 0.0
    # Exactly the box of the card with those pixels removed from it.
    holed = panoptic.copy()
    holed[10:17, 20:30] = VOID
    assert spoiled == segment_boxes_3d(holed, depth, CAMERA)[CARD]
    points = labelled_points(panoptic, np.zeros((H, W, 3), np.uint8), bad, CAMERA, stride=1)
    assert np.isfinite(points['z']).all()
    assert points['z'].min() >= 0.1 and points['z'].max() <= 20.0


def test_depth_range_is_configurable():
    panoptic, depth = scene()
    boxes = segment_boxes_3d(panoptic, depth, CAMERA, min_depth=3.0, max_depth=5.0)
    assert set(boxes) == {WALL}
    boxes = segment_boxes_3d(panoptic, depth, CAMERA, min_depth=0.5, max_depth=3.0)
    assert set(boxes) == {CARD}


def test_segment_without_valid_depth_is_absent_not_nan():
    panoptic, depth = scene()
    depth[10:30, 20:60] = np.nan
    boxes = segment_boxes_3d(panoptic, depth, CAMERA)
    assert set(boxes) == {WALL}
    depth[10:30, 20:60] = 2.0
    depth[10:30, 20:59] = 0.0  # 20 valid pixels remain: fewer than min_points=21
    assert CARD not in segment_boxes_3d(panoptic, depth, CAMERA, min_points=21)
    assert segment_boxes_3d(panoptic, depth, CAMERA, min_points=20)[CARD].num_points == 20
    nothing = np.full((H, W), np.nan, np.float32)
    assert segment_boxes_3d(panoptic, nothing, CAMERA) == {}
    assert len(labelled_points(panoptic, np.zeros((H, W, 3), np.uint8), nothing, CAMERA)) == 0


def test_millimetre_and_metre_depth_agree():
    panoptic, depth = scene()
    depth[40:50, 5:15] = 1.234
    millimetres = np.round(depth * 1000).astype(np.uint16)
    millimetres[0, :10] = 0  # no return
    metres = depth.copy()
    metres[0, :10] = np.nan
    from_mm = depth_to_metres(millimetres, '16UC1')
    from_m = depth_to_metres(metres, '32FC1')
    assert from_mm.dtype == from_m.dtype == np.float32
    np.testing.assert_allclose(from_mm, from_m, rtol=1e-6)
    assert np.isnan(from_mm[0, :10]).all()
    a = segment_boxes_3d(panoptic, from_mm, CAMERA)
    b = segment_boxes_3d(panoptic, from_m, CAMERA)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].num_points == b[key].num_points
        np.testing.assert_allclose(a[key].center, b[key].center, atol=1e-6)
        np.testing.assert_allclose(a[key].size, b[key].size, atol=1e-6)


def test_depth_to_metres_marks_every_invalid_value_nan():
    raw = np.array([[0.0, np.nan, np.inf], [-np.inf, -1.0, 2.5]], np.float32)
    out = depth_to_metres(raw, '32FC1')
    assert np.isnan(out[0]).all() and np.isnan(out[1, :2]).all() and out[1, 2] == 2.5
    assert raw[1, 2] == 2.5 and raw[0, 0] == 0.0  # the input is not modified
    big_endian = np.array([[1500, 0]], '>u2')
    np.testing.assert_array_equal(depth_to_metres(big_endian, '16UC1'), [[1.5, np.nan]])


@pytest.mark.parametrize(('data', 'encoding', 'message'), [
    (np.ones((4, 4), np.uint16), 'mono8', 'depth encoding must be one of'),
    (np.ones((4, 4), np.float32), '16UC1', '16UC1 depth must be uint16'),
    (np.ones((4, 4), np.uint16), '32FC1', '32FC1 depth must be floating-point'),
    (np.ones((4, 4, 1), np.uint16), '16UC1', 'non-empty (H, W) array'),
    (np.ones((0, 4), np.float32), '32FC1', 'non-empty (H, W) array'),
])
def test_depth_to_metres_rejects_what_it_cannot_read(data, encoding, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        depth_to_metres(data, encoding)


def test_stride_keeps_every_nth_row_and_column():
    panoptic, depth = scene()
    rgb = np.zeros((H, W, 3), np.uint8)
    points = labelled_points(panoptic, rgb, depth, CAMERA, stride=4)
    # Rows 0, 4, .., 52 (row 56 is void) x columns 0, 4, .., 76.
    assert len(points) == 14 * 20
    u = points['x'] * CAMERA.fx / points['z'] + CAMERA.cx
    v = points['y'] * CAMERA.fy / points['z'] + CAMERA.cy
    np.testing.assert_allclose(u, np.round(u), atol=1e-4)
    np.testing.assert_allclose(v, np.round(v), atol=1e-4)
    assert (np.round(u) % 4 == 0).all() and (np.round(v) % 4 == 0).all()
    assert set(np.round(v).astype(int)) == set(range(0, 55, 4))
    card = segment_boxes_3d(panoptic, depth, CAMERA, stride=4)[CARD]
    assert card.num_points == 5 * 10  # rows 12..28, columns 20..56
    assert card.center == pytest.approx(((38 - 39.5) * 2 / 50, (20 - 29.5) * 2 / 40, 2.0))


def test_labelled_points_fields_and_packed_rgb_round_trip():
    panoptic, depth = scene()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 255, 255)  # all bits set: still a finite float32
    points = labelled_points(panoptic, rgb, depth, CAMERA, stride=1, label_divisor=1000)
    assert points.dtype == POINT_DTYPE
    assert len(points) == 55 * W
    # Row-major pixel order: point i is pixel (i // W, i % W) of the non-void rows.
    np.testing.assert_array_equal(unpack_rgb(points['rgb']), rgb[:55].reshape(-1, 3))
    np.testing.assert_array_equal(points['panoptic_id'], panoptic[:55].ravel())
    np.testing.assert_array_equal(points['class_id'], panoptic[:55].ravel() // 1000)
    first_card = np.flatnonzero(points['panoptic_id'] == CARD)[0]
    assert first_card == 10 * W + 20
    card_point = points[first_card]
    assert (card_point['x'], card_point['y'], card_point['z']) == pytest.approx(
        ((20 - 39.5) * 2 / 50, (10 - 29.5) * 2 / 40, 2.0), abs=1e-6)
    # PCL's packing: 0x00RRGGBB bits in the float's four bytes, little-endian.
    raw = np.array([[[0x12, 0x34, 0x56]]], np.uint8)
    assert pack_rgb(raw).view('<u4').item() == 0x123456
    assert pack_rgb(raw).tobytes() == bytes([0x56, 0x34, 0x12, 0x00])


@pytest.mark.parametrize(('call', 'message'), [
    (lambda p, d, r: segment_boxes_3d(p[:, :-1], d, CAMERA), 'depth must be'),
    (lambda p, d, r: segment_boxes_3d(p.astype(np.float32), d, CAMERA), 'integer map'),
    (lambda p, d, r: segment_boxes_3d(p, d.astype(np.uint16), CAMERA), 'float metres'),
    (lambda p, d, r: segment_boxes_3d(p, d, CAMERA.scaled(40, 30)), 'use camera.scaled'),
    (lambda p, d, r: segment_boxes_3d(p, d, CAMERA, stride=0), 'stride must be'),
    (lambda p, d, r: segment_boxes_3d(p, d, CAMERA, stride=1.5), 'stride must be'),
    (lambda p, d, r: segment_boxes_3d(p, d, CAMERA, min_points=0), 'min_points'),
    (lambda p, d, r: segment_boxes_3d(p, d, CAMERA, min_depth=5.0, max_depth=1.0),
     'min_depth < max_depth'),
    (lambda p, d, r: labelled_points(p, r[..., :2], d, CAMERA), r'\(H, W, 3\) uint8'),
    (lambda p, d, r: labelled_points(p, r.astype(np.float32), d, CAMERA), r'\(H, W, 3\) uint8'),
    (lambda p, d, r: labelled_points(p, r[:-1], d, CAMERA), 'differ in size'),
    (lambda p, d, r: labelled_points(p, r, d, CAMERA, label_divisor=0), 'label_divisor'),
])
def test_wrong_inputs_raise_a_clear_value_error(call, message):
    panoptic, depth = scene()
    with pytest.raises(ValueError, match=message):
        call(panoptic, depth, np.zeros((H, W, 3), np.uint8))


def test_box_stride_keeps_the_sampled_pixels_near_a_320x240_frame():
    from tokenmask_ros.depth3d import BOX_SAMPLE_PIXELS, box_stride

    assert [box_stride(h, w) for h, w in ((120, 160), (240, 320), (480, 640), (720, 1280),
                                          (960, 1280))] == [1, 1, 2, 4, 4]
    for h, w in ((480, 640), (1080, 1920), (241, 321)):
        stride = box_stride(h, w)
        assert (h // stride) * (w // stride) <= BOX_SAMPLE_PIXELS * 1.01
        assert (h // (stride - 1)) * (w // (stride - 1)) > BOX_SAMPLE_PIXELS
