"""Pairing depth and camera_info with colour frames by stamp, and validating them.

The node-level behaviour (2D never blocked, one warning per kind) is tested over DDS in
test_segment_node_3d.py; here the pieces the node relies on, with real messages.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg')
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from tokenmask_ros.camera import PinholeCamera
from tokenmask_ros.ros.conversions import numpy_to_image
from tokenmask_ros.ros.depth_pairing import (
    DEPTH_FAULT_KINDS,
    DepthError,
    DepthPairing,
    StampBuffer,
    camera_from_info,
    depth_frame,
    resize_nearest,
    stamp_ns,
)

CAMERA = PinholeCamera(100.0, 110.0, 31.5, 23.5, 64, 48)
SIZE = (48, 64)
LIMIT = 1 << 24


def header(sec: int, nanosec: int = 0) -> Header:
    h = Header(frame_id='camera')
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


def info(camera: PinholeCamera = CAMERA, at: Header | None = None) -> CameraInfo:
    return CameraInfo(header=at or header(0), width=camera.width, height=camera.height,
                      k=camera.k, p=camera.p)


def depth_image(pixels: np.ndarray, encoding: str, at: Header | None = None) -> Image:
    return numpy_to_image(pixels, encoding, at or header(0))


# --- pairing by stamp ----------------------------------------------------------------

def test_nearest_stamp_within_the_delay_wins_and_nothing_outside_it():
    pairing = DepthPairing(max_delay=0.05)
    for ms in (0, 100, 200):
        at = header(10, ms * 1_000_000)
        pairing.add_depth(depth_image(np.full(SIZE, ms, np.uint16), '16UC1', at))
        pairing.add_camera_info(info(at=at))
    depth, camera_info = pairing.match(header(10, 110_000_000))
    assert stamp_ns(depth.header) == stamp_ns(camera_info.header) == 10_100_000_000
    assert pairing.match(header(10, 260_000_000)) is None  # 60 ms from the newest: too far
    assert pairing.match(header(9, 960_000_000)) is not None  # 40 ms before the oldest
    pairing.max_delay = 0.1  # a run-time change applies to the next lookup
    assert pairing.match(header(10, 260_000_000)) is not None


def test_depth_without_camera_info_or_the_reverse_pairs_nothing():
    pairing = DepthPairing(max_delay=0.05)
    pairing.add_depth(depth_image(np.ones(SIZE, np.uint16), '16UC1', header(5)))
    assert pairing.match(header(5)) is None
    pairing.add_camera_info(info(at=header(6)))  # a second later: outside the delay
    assert pairing.match(header(5)) is None and pairing.match(header(6)) is None
    pairing.add_camera_info(info(at=header(5)))
    assert pairing.match(header(5)) is not None


def test_late_depth_is_not_there_when_the_frame_is_looked_up():
    pairing = DepthPairing(max_delay=0.05)
    assert pairing.match(header(3)) is None  # the frame is processed: no depth yet
    pairing.add_depth(depth_image(np.ones(SIZE, np.uint16), '16UC1', header(3)))
    pairing.add_camera_info(info(at=header(3)))
    assert pairing.match(header(3)) is not None  # only a later lookup would see it


def test_buffer_is_bounded_and_forgets_the_oldest():
    buffer = StampBuffer(capacity=3)
    for sec in range(10):
        buffer.add(info(at=header(sec)))
    assert len(buffer) == 3
    assert buffer.nearest(stamp_ns(header(0)), 0) is None
    assert buffer.nearest(stamp_ns(header(9)), 0) is not None


# --- camera_info ---------------------------------------------------------------------

def test_camera_info_gives_the_camera_and_is_scaled_to_the_colour_size():
    assert camera_from_info(info(), SIZE) == CAMERA
    half = CAMERA.scaled(32, 24)
    assert camera_from_info(info(half), SIZE) == half.scaled(64, 48)


@pytest.mark.parametrize(('change', 'kind', 'text'), [
    ({'k': [0.0, 0, 31.5, 0, 110, 23.5, 0, 0, 1]}, 'camera_info focal length',
     'fx=0, fy=110 must be positive'),
    ({'k': [100.0, 0, 31.5, 0, -1, 23.5, 0, 0, 1]}, 'camera_info focal length', 'fy=-1'),
    ({'k': [float('nan'), 0, 31.5, 0, 110, 23.5, 0, 0, 1]}, 'camera_info malformed', 'finite'),
    ({'k': [100.0, 0, float('inf'), 0, 110, 23.5, 0, 0, 1]}, 'camera_info malformed', 'finite'),
    ({'width': 0}, 'camera_info size', 'zero size \\(0x48\\)'),
    ({'height': 0}, 'camera_info size', 'zero size'),
])
def test_unusable_camera_info_is_refused_with_its_kind(change, kind, text):
    msg = info()
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(DepthError, match=text) as caught:
        camera_from_info(msg, SIZE)
    assert caught.value.kind == kind and kind in DEPTH_FAULT_KINDS


# --- depth images --------------------------------------------------------------------

def test_16uc1_millimetres_and_32fc1_metres_give_the_same_depth():
    mm = np.full(SIZE, 1500, np.uint16)
    mm[0, 0] = 0
    metres = np.full(SIZE, 1.5, np.float32)
    metres[0, 0] = np.nan
    a = depth_frame(depth_image(mm, '16UC1'), info(), SIZE, LIMIT)
    b = depth_frame(depth_image(metres, '32FC1'), info(), SIZE, LIMIT)
    for frame in (a, b):
        assert frame.depth_m.shape == SIZE and frame.depth_m.dtype == np.float32
        assert np.isnan(frame.depth_m[0, 0]) and np.all(frame.depth_m.ravel()[1:] == 1.5)
        assert frame.camera == CAMERA and not frame.resized


def test_depth_of_another_size_is_resized_nearest():
    small = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) + 1000
    frame = depth_frame(depth_image(small, '16UC1'), info(), SIZE, LIMIT)
    assert frame.resized and frame.depth_m.shape == SIZE
    # Every output pixel is one input depth (no blending), each 2x2 block the same one.
    expected = np.repeat(np.repeat(small, 2, 0), 2, 1).astype(np.float32) / np.float32(1000)
    np.testing.assert_array_equal(frame.depth_m, expected)
    np.testing.assert_array_equal(resize_nearest(np.arange(3.0)[None], (1, 2)), [[0.0, 2.0]])


@pytest.mark.parametrize('values', [np.nan, np.inf, -np.inf, 0.0])
def test_invalid_depth_values_become_nan_not_errors(values):
    frame = depth_frame(depth_image(np.full(SIZE, values, np.float32), '32FC1'), info(), SIZE,
                        LIMIT)
    assert np.isnan(frame.depth_m).all()
    zero = depth_frame(depth_image(np.zeros(SIZE, np.uint16), '16UC1'), info(), SIZE, LIMIT)
    assert np.isnan(zero.depth_m).all()


def test_unsupported_or_malformed_depth_images_are_refused():
    with pytest.raises(DepthError, match="depth encoding 'mono8'") as caught:
        depth_frame(depth_image(np.zeros(SIZE, np.uint8), 'mono8'), info(), SIZE, LIMIT)
    assert caught.value.kind == 'depth encoding'
    short = depth_image(np.zeros(SIZE, np.uint16), '16UC1')
    short.data = bytes(10)
    with pytest.raises(ValueError, match='step \\* height') as caught:
        depth_frame(short, info(), SIZE, LIMIT)
    assert caught.value.kind == 'short data'
    with pytest.raises(DepthError, match='exceeds max_image_pixels'):
        depth_frame(depth_image(np.zeros(SIZE, np.uint16), '16UC1'), info(), SIZE, 100)
    empty = Image(encoding='32FC1', width=0, height=0)
    with pytest.raises(ValueError, match='zero size'):
        depth_frame(empty, info(), SIZE, LIMIT)
