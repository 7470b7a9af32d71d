"""Depth for the synthetic scenes: a room seen by a pinhole camera, with exact 3D truth.

The scenes (``tokenmask_ros.synthetic``) show a wall above a floor split by a tilted
horizon. Here that picture becomes geometry: the wall is a plane facing the camera at
``WALL_DISTANCE``; the floor is the plane through the wall/floor boundary whose slope
follows from the camera's height above it (a plane's inverse depth is affine in the pixel
coordinates, so ``1/z = 1/D + (v - horizon(u)) / (h * fy)``: depth falls toward the bottom
rows and meets the wall at the horizon). The rug lies on the floor. Each thing is a flat
cut-out facing the camera, standing on the floor: its whole mask has the floor depth at
its foot (the bottom centre of its box). Depth is along the optical axis, in metres.

Plain NumPy, no ROS, no torch; everything vectorised over pixels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tokenmask_ros.camera import PinholeCamera
from tokenmask_ros.defaults import LABEL_DIVISOR

#: Horizontal field of view of the synthetic camera (a typical RGB-D camera's).
HFOV_DEG = 70.0
#: Distance of the wall plane from the camera, metres.
WALL_DISTANCE = 6.0
#: Height of the camera above the floor plane, metres.
CAMERA_HEIGHT = 1.0
#: Things whose foot lies on the wall stand this far in front of it (metres).
WALL_GAP = 0.1


def synthetic_camera(width: int, height: int) -> PinholeCamera:
    """The camera every synthetic scene and sequence of this size is seen through."""
    return PinholeCamera.from_fov(width, height, HFOV_DEG)


class Room:
    """The wall and floor planes of one background, seen through ``camera``.

    ``horizon`` is the wall/floor boundary's row at the left and right image edges
    (``SyntheticScene.horizon``).
    """

    def __init__(self, camera: PinholeCamera, horizon: tuple[float, float],
                 wall_distance: float = WALL_DISTANCE, camera_height: float = CAMERA_HEIGHT):
        if wall_distance <= 0 or camera_height <= 0:
            raise ValueError('wall distance and camera height must be positive')
        self.camera = camera
        self.left, self.right = (float(v) for v in horizon)
        self.wall_distance = float(wall_distance)
        self.camera_height = float(camera_height)

    def horizon_row(self, u) -> np.ndarray:
        """Row of the wall/floor boundary at column(s) ``u`` (as the scene draws it)."""
        slope = (self.right - self.left) / max(self.camera.width - 1, 1)
        return self.left + np.asarray(u, np.float64) * slope

    def floor_depth(self, u, v) -> np.ndarray:
        """Depth of the floor plane at pixel(s) ``(u, v)``; the wall's depth above the horizon."""
        below = np.asarray(v, np.float64) - self.horizon_row(u)
        inverse = 1.0 / self.wall_distance + np.maximum(below, 0.0) / (
            self.camera_height * self.camera.fy)
        return 1.0 / inverse

    def background_depth(self) -> np.ndarray:
        """``(H, W)`` float32 depth of the empty room: wall above the horizon, floor below."""
        cam = self.camera
        u = np.arange(cam.width, dtype=np.float64)[None, :]
        v = np.arange(cam.height, dtype=np.float64)[:, None]
        return self.floor_depth(u, v).astype(np.float32)

    def standing_depth(self, u: float, v: float) -> float:
        """Depth of a thing whose foot is at pixel ``(u, v)``: the floor there, or just in
        front of the wall when the foot is above the horizon."""
        u = float(np.clip(u, 0, self.camera.width - 1))
        depth = float(self.floor_depth(u, v))
        return min(depth, self.wall_distance - WALL_GAP)


def scene_depth(scene, camera: PinholeCamera | None = None) -> np.ndarray:
    """``(H, W)`` float32 depth (metres, finite, > 0) of a ``SyntheticScene``.

    Things get the floor depth at their visible mask's foot; ``camera`` defaults to
    :func:`synthetic_camera` of the scene's size.
    """
    if scene.horizon is None:
        raise ValueError('scene has no horizon: made by an older SceneGenerator?')
    height, width = scene.panoptic.shape
    camera = camera or synthetic_camera(width, height)
    if (camera.width, camera.height) != (width, height):
        raise ValueError(f'camera is {camera.width}x{camera.height}, scene {width}x{height}')
    room = Room(camera, scene.horizon)
    depth = room.background_depth()
    for segment in scene.segments:
        if segment.is_thing:
            x, y, w, h = segment.bbox
            depth[scene.panoptic == segment.id] = room.standing_depth(x + (w - 1) / 2, y + h - 1)
    return depth


def thing_centres(panoptic: np.ndarray, depth: np.ndarray, camera: PinholeCamera,
                  segment_ids: Iterable[int] | None = None,
                  label_divisor: int = LABEL_DIVISOR) -> dict[int, np.ndarray]:
    """True 3D centre ``(x, y, z)`` of each thing: its mask's pixel centroid back-projected
    at its depth (the median depth over the mask: things are flat, so that is exact).

    ``segment_ids`` defaults to every thing id (instance part > 0) in ``panoptic``.
    """
    if segment_ids is None:
        ids = np.unique(panoptic)
        segment_ids = ids[(ids >= 0) & (ids % label_divisor > 0)]
    rows, cols = np.indices(panoptic.shape)
    centres = {}
    for segment_id in segment_ids:
        mask = panoptic == segment_id
        if not mask.any():
            continue
        z = float(np.median(depth[mask]))
        centres[int(segment_id)] = camera.back_project(cols[mask].mean(), rows[mask].mean(), z)
    return centres
