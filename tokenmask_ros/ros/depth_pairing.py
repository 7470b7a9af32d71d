"""Pairing colour frames with the depth image and camera_info nearest in time.

``message_filters`` has no pip wheel here. Where it is importable, its
ApproximateTimeSynchronizer could pair the three topics, but it delivers only complete
sets: a camera without depth would then stop the 2D outputs. The node needs less: "the
depth (and camera_info) nearest in time to this colour frame, if any within
``depth_max_delay``". A small bounded buffer of recent messages, looked up when a frame's
segmentation is done, answers that and never delays a frame: depth that arrives before the
colour frame (early) or while it is segmented is found; depth arriving after the frame was
published (late) or not at all leaves that frame without 3D, its 2D outputs unaffected.

:func:`depth_frame` validates the pair before any pixel is read: encodings ``16UC1``
(millimetres) and ``32FC1`` (metres) only, camera_info K finite with fx, fy > 0 and a
positive size. Faults raise :class:`DepthError` whose ``kind`` is from a fixed set, so the
node rate-limits its warnings per kind.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from tokenmask_ros.camera import PinholeCamera
from tokenmask_ros.depth3d import depth_to_metres
from tokenmask_ros.ros.conversions import ImageConversionError, _check_size, image_to_numpy

DEPTH_ENCODINGS = ('16UC1', '32FC1')
PAIRING_CAPACITY = 16  # messages kept per topic: ~0.5 s of a 30 Hz camera
#: The kinds of depth and camera_info fault (:attr:`DepthError.kind`).
DEPTH_FAULT_KINDS = ('depth encoding', 'camera_info malformed', 'camera_info focal length',
                     'camera_info size')


class DepthError(ImageConversionError):
    """A depth image or camera_info cannot be used; ``kind`` is one of
    :data:`DEPTH_FAULT_KINDS` or :data:`~tokenmask_ros.ros.conversions.ERROR_KINDS`."""


def stamp_ns(header) -> int:
    """A header's stamp in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class StampBuffer:
    """The last ``capacity`` messages of one topic, looked up by header stamp."""

    def __init__(self, capacity: int = PAIRING_CAPACITY):
        self._items: deque = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, msg) -> None:
        with self._lock:
            self._items.append((stamp_ns(msg.header), msg))

    def nearest(self, stamp: int, max_delay_ns: int):
        """The message whose stamp is nearest ``stamp``, within ``max_delay_ns``; else None."""
        with self._lock:
            items = list(self._items)
        best = min(items, key=lambda item: abs(item[0] - stamp), default=None)
        return best[1] if best is not None and abs(best[0] - stamp) <= max_delay_ns else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class DepthPairing:
    """Recent depth images and camera_info messages, matched to colour frames by stamp.

    ``add_depth`` / ``add_camera_info`` run in subscription callbacks (cheap: a deque
    append); :meth:`match` runs in the worker. ``max_delay`` (seconds) may change any time.
    """

    def __init__(self, max_delay: float, capacity: int = PAIRING_CAPACITY):
        self.max_delay = float(max_delay)
        self.depth = StampBuffer(capacity)
        self.camera_info = StampBuffer(capacity)

    def add_depth(self, msg) -> None:
        self.depth.add(msg)

    def add_camera_info(self, msg) -> None:
        self.camera_info.add(msg)

    def match(self, header):
        """``(depth, camera_info)`` messages each within ``max_delay`` of ``header``'s stamp,
        or None when either is missing."""
        stamp, delay = stamp_ns(header), round(self.max_delay * 1e9)
        depth = self.depth.nearest(stamp, delay)
        info = self.camera_info.nearest(stamp, delay) if depth is not None else None
        return None if info is None else (depth, info)


@dataclass(frozen=True)
class DepthFrame:
    """Depth in metres at the colour image's size (NaN invalid) and the camera for it."""

    depth_m: np.ndarray
    camera: PinholeCamera
    resized: bool  # the depth image had another size and was resized (nearest)


def camera_from_info(info, size: tuple[int, int]) -> PinholeCamera:
    """The pinhole camera of a sensor_msgs/CameraInfo, scaled to ``size`` (H, W) when its
    own size differs. Distortion is not applied: depth is expected rectified and registered.
    """
    width, height = int(info.width), int(info.height)
    if width <= 0 or height <= 0:
        raise DepthError(f'camera_info has zero size ({width}x{height})', 'camera_info size')
    k = np.asarray(info.k, np.float64)
    if k.shape != (9,) or not np.isfinite(k).all():
        raise DepthError('camera_info K must be 9 finite numbers', 'camera_info malformed')
    if k[0] <= 0 or k[4] <= 0:
        raise DepthError(f'camera_info focal length fx={k[0]:g}, fy={k[4]:g} must be positive',
                         'camera_info focal length')
    camera = PinholeCamera.from_camera_info(k.tolist(), width, height)
    return camera if (height, width) == tuple(size) else camera.scaled(size[1], size[0])


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (H, W) by nearest neighbour (pixel centres), no blending
    of depths across object edges."""
    height, width = image.shape[:2]
    rows = ((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.intp)
    cols = ((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.intp)
    return image[np.minimum(rows, height - 1)[:, None], np.minimum(cols, width - 1)]


def depth_frame(depth, info, size: tuple[int, int], max_pixels: int) -> DepthFrame:
    """Validate a depth image and camera_info and bring them to the colour ``size`` (H, W).

    NaN, inf and zero depths become NaN (no points), never an error.
    """
    camera = camera_from_info(info, size)
    if depth.encoding not in DEPTH_ENCODINGS:
        raise DepthError(f'depth encoding {depth.encoding[:32]!r} is not one of '
                         f'{", ".join(DEPTH_ENCODINGS)}', 'depth encoding')
    _check_size(depth.width, depth.height, 'depth image')
    if depth.width * depth.height > max_pixels:
        raise DepthError(f'depth image of {depth.width}x{depth.height} pixels exceeds '
                         f'max_image_pixels ({max_pixels})', 'too large')
    metres = depth_to_metres(image_to_numpy(depth), depth.encoding)
    resized = metres.shape != tuple(size)
    if resized:
        metres = resize_nearest(metres, size)
    return DepthFrame(metres, camera, resized)
