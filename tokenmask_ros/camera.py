"""Pinhole camera intrinsics: the one place pixels and metres are converted.

Plain NumPy (no ROS, no torch), shared by the synthetic RGB-D generator, the 3D maths and
the node. Coordinates follow ROS's optical frame (x right, y down, z forward) and its
pixel convention: integer pixel coordinates are pixel centres, as in ``CameraInfo.K``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    """Focal lengths and principal point in pixels of a ``width`` x ``height`` image."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(float(v)) for v in values):
            raise ValueError(f'camera intrinsics must be finite, got fx, fy, cx, cy = {values}')
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f'focal lengths must be positive, got fx={self.fx}, fy={self.fy}')
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f'image size must be positive, got {self.width}x{self.height}')

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float = 70.0) -> PinholeCamera:
        """Square pixels, principal point at the image centre, ``hfov_deg`` across the width."""
        if not 0 < hfov_deg < 180:
            raise ValueError(f'horizontal field of view must lie in (0, 180) deg, got {hfov_deg}')
        f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
        return cls(f, f, (width - 1) / 2, (height - 1) / 2, int(width), int(height))

    @classmethod
    def from_camera_info(cls, k: Sequence[float], width: int, height: int) -> PinholeCamera:
        """From a row-major 3x3 ``K`` (``sensor_msgs/CameraInfo.k``); ValueError when unusable."""
        try:
            values = [float(v) for v in k]
        except (TypeError, ValueError):
            raise ValueError('camera_info K must hold 9 numbers') from None
        if len(values) != 9:
            raise ValueError(f'camera_info K must hold 9 numbers, got {len(values)}')
        if not all(math.isfinite(v) for v in values):
            raise ValueError('camera_info K holds NaN or infinite values')
        if values[0] <= 0 or values[4] <= 0:
            raise ValueError(f'camera_info K has non-positive focal lengths '
                             f'fx={values[0]}, fy={values[4]}')
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f'camera_info size must be positive, got {width}x{height}')
        return cls(values[0], values[4], values[2], values[5], int(width), int(height))

    @property
    def k(self) -> list[float]:
        """Row-major 3x3 intrinsic matrix, as ``CameraInfo.k`` holds it."""
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]

    @property
    def p(self) -> list[float]:
        """Row-major 3x4 projection matrix of a monocular camera (``CameraInfo.p``)."""
        return [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0]

    def scaled(self, width: int, height: int) -> PinholeCamera:
        """The same camera for an image resized to ``width`` x ``height`` (pixel centres kept)."""
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f'image size must be positive, got {width}x{height}')
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                             (self.cy + 0.5) * sy - 0.5, int(width), int(height))

    def back_project(self, u, v, z) -> np.ndarray:
        """Pixels ``(u, v)`` at depths ``z`` (metres, along the optical axis) -> ``(..., 3)``."""
        u, v, z = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (u, v, z)))
        return np.stack([(u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy, z], -1)

    def project(self, points) -> np.ndarray:
        """``(..., 3)`` points in the optical frame -> ``(..., 2)`` pixel coordinates ``(u, v)``."""
        points = np.asarray(points, np.float64)
        z = points[..., 2]
        return np.stack([points[..., 0] * self.fx / z + self.cx,
                         points[..., 1] * self.fy / z + self.cy], -1)
