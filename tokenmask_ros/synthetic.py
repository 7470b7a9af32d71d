"""Synthetic panoptic scenes: coloured shapes on textured backgrounds.

One generator serves three users: the ``image_source`` node (a camera-free demo stream),
the training code (a dataset a model can learn in minutes on a CPU), and the tests (images
with exact ground truth). A scene is a function of ``(seed, index)`` only, so dataset
item ``i`` is the same on every machine and in every worker process.

The class of a thing is carried by its *shape*, never by its colour (colours are drawn at
random per instance), so a model has to learn geometry, as on real data. Drawing is done by
OpenCV's rasteriser and textures by whole-array NumPy maths: no per-pixel Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

LABEL_DIVISOR = 1000
VOID = -1


@dataclass(frozen=True)
class SceneClass:
    """A category of the synthetic dataset (COCO-panoptic style ``isthing`` flag)."""

    id: int
    name: str
    is_thing: bool
    color: tuple[int, int, int]


SYNTHETIC_CLASSES: tuple[SceneClass, ...] = (
    SceneClass(0, 'floor', False, (128, 64, 128)),
    SceneClass(1, 'wall', False, (70, 70, 70)),
    SceneClass(2, 'disc', True, (220, 20, 60)),
    SceneClass(3, 'box', True, (0, 0, 142)),
    SceneClass(4, 'triangle', True, (250, 170, 30)),
)
FLOOR, WALL, DISC, BOX, TRIANGLE = range(5)
THING_CLASSES = (DISC, BOX, TRIANGLE)


@dataclass(frozen=True)
class Segment:
    """One panoptic segment: ``bbox`` is ``(x, y, w, h)`` in pixels, COCO style."""

    id: int
    category_id: int
    is_thing: bool
    area: int
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class SyntheticScene:
    """An RGB image with its exact panoptic ground truth.

    ``panoptic`` holds ``category_id * LABEL_DIVISOR + instance_id`` (stuff instance 0,
    things numbered from 1 within the image); every pixel belongs to a segment.
    """

    image: np.ndarray      # (H, W, 3) uint8, RGB
    semantic: np.ndarray   # (H, W) uint8 class ids
    panoptic: np.ndarray   # (H, W) int32 panoptic ids
    segments: tuple[Segment, ...]


class SceneGenerator:
    """Deterministic scenes of ``height`` x ``width`` pixels; ``scene(i)`` is reproducible."""

    def __init__(self, height: int = 480, width: int = 640, seed: int = 0,
                 max_objects: int = 6, noise_std: float = 4.0):
        if height < 16 or width < 16:
            raise ValueError(f'scene size must be at least 16x16, got {width}x{height}')
        if max_objects < 0:
            raise ValueError(f'max_objects must be >= 0, got {max_objects}')
        self.height, self.width = int(height), int(width)
        self.seed = int(seed)
        self.max_objects = int(max_objects)
        self.noise_std = float(noise_std)
        ys, xs = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        self._xs, self._ys = xs, ys

    def scene(self, index: int) -> SyntheticScene:
        rng = np.random.default_rng([self.seed, int(index)])
        image, semantic = self._background(rng)
        instance = np.zeros((self.height, self.width), np.int32)
        for _ in range(rng.integers(1, self.max_objects + 1) if self.max_objects else 0):
            self._draw_thing(rng, image, semantic, instance)
        if self.noise_std > 0:
            image += rng.standard_normal(image.shape, dtype=np.float32) * self.noise_std
        image = np.clip(image, 0, 255).astype(np.uint8)
        panoptic, segments = self._panoptic(semantic, instance)
        return SyntheticScene(image, semantic, panoptic, segments)

    # --- background ("stuff") ------------------------------------------------------

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A wall above a floor, split by a tilted horizon, each with its own texture."""
        h, w = self.height, self.width
        left, right = (float(v) for v in rng.uniform(0.3, 0.7, size=2) * h)
        horizon = left + self._xs * ((right - left) / max(w - 1, 1))
        is_wall = self._ys < horizon
        semantic = np.where(is_wall, WALL, FLOOR).astype(np.uint8)
        wall = self._texture(rng)
        floor = self._texture(rng)
        image = np.where(is_wall[..., None], wall, floor)
        return image, semantic

    def _texture(self, rng: np.random.Generator) -> np.ndarray:
        """A (H, W, 3) float image: a random base colour modulated by a random pattern."""
        # Python floats (not NumPy scalars) keep the float32 grids in float32 (NEP 50).
        base = rng.uniform(40, 215, size=3).astype(np.float32)
        kind = rng.integers(4)
        if kind == 0:  # stripes at a random angle
            angle, period = float(rng.uniform(0, np.pi)), float(rng.uniform(8, 48))
            scale = 2 * np.pi / period
            kx, ky = scale * math.cos(angle), scale * math.sin(angle)
            pattern = np.sin(self._xs * kx + self._ys * ky)
        elif kind == 1:  # checkerboard
            cell = float(rng.uniform(8, 40))
            pattern = ((self._xs // cell + self._ys // cell) % 2) * 2.0 - 1.0
        elif kind == 2:  # smooth blotches: coarse noise, bicubically enlarged
            coarse = rng.uniform(-1, 1, size=(rng.integers(3, 9), rng.integers(3, 9)))
            pattern = cv2.resize(coarse.astype(np.float32), (self.width, self.height),
                                 interpolation=cv2.INTER_CUBIC)
        else:  # linear gradient
            angle = float(rng.uniform(0, 2 * np.pi))
            ramp = self._xs * math.cos(angle) + self._ys * math.sin(angle)
            pattern = (ramp - ramp.mean()) / (float(np.abs(ramp).max()) + 1e-6)
        amplitude = float(rng.uniform(10, 35))
        return base + (amplitude * pattern)[..., None]

    # --- objects ("things") --------------------------------------------------------

    def _draw_thing(self, rng: np.random.Generator, image: np.ndarray,
                    semantic: np.ndarray, instance: np.ndarray) -> None:
        """Paint one shape over everything drawn so far (later shapes occlude earlier)."""
        h, w = self.height, self.width
        category = int(rng.choice(THING_CLASSES))
        radius = rng.uniform(0.06, 0.2) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        mask = np.zeros((h, w), np.uint8)
        if category == DISC:
            cv2.circle(mask, (round(cx), round(cy)), max(2, round(radius)), 1, -1)
        else:
            corners = 4 if category == BOX else 3
            angles = rng.uniform(0, 2 * np.pi) + np.arange(corners) * 2 * np.pi / corners
            aspect = rng.uniform(0.6, 1.0) if category == BOX else 1.0
            pts = np.stack([cx + radius * np.cos(angles), cy + aspect * radius * np.sin(angles)], 1)
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        inside = mask.astype(bool)
        if not inside.any():
            return
        color = cv2.cvtColor(
            np.array([[[rng.uniform(0, 180), rng.uniform(120, 255), rng.uniform(120, 255)]]],
                     np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        shade = 1.0 + 0.15 * (self._ys[inside] - cy) / max(radius, 1.0)
        image[inside] = color * shade[:, None]
        semantic[inside] = category
        instance[inside] = instance.max() + 1

    # --- ground truth --------------------------------------------------------------

    def _panoptic(self, semantic: np.ndarray, instance: np.ndarray
                  ) -> tuple[np.ndarray, tuple[Segment, ...]]:
        """Panoptic ids and segment records; fully occluded instances disappear."""
        # Renumber surviving things 1..N so that ids do not skip occluded instances.
        visible = np.bincount(instance.ravel()) > 0
        visible[0] = False
        renumber = np.cumsum(visible).astype(np.int32)
        renumber[0] = 0
        dense = renumber[instance]
        panoptic = semantic.astype(np.int32) * LABEL_DIVISOR + dense
        # A dense (class, instance) index lets bincount replace a sort-based np.unique.
        num_instances = int(renumber[-1]) + 1
        areas = np.bincount((semantic.astype(np.int64) * num_instances + dense).ravel(),
                            minlength=len(SYNTHETIC_CLASSES) * num_instances)
        segments = []
        for index in np.flatnonzero(areas).tolist():
            category, instance_id = divmod(index, num_instances)
            seg_id, area = category * LABEL_DIVISOR + instance_id, int(areas[index])
            x, y, bw, bh = cv2.boundingRect((panoptic == seg_id).view(np.uint8))
            segments.append(Segment(seg_id, category, SYNTHETIC_CLASSES[category].is_thing,
                                    area, (x, y, bw, bh)))
        return panoptic, tuple(segments)
