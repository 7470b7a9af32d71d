"""Synthetic panoptic scenes: coloured shapes on textured backgrounds.

Classes: stuff ``floor``, ``wall``, ``rug``; things ``disc``, ``box``, ``triangle``, ``ring``
(annulus), ``bar`` (3-6 px wide rod) and ``cross``, in sizes from ~12 px across, overlapping.

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

from tokenmask_ros.defaults import LABEL_DIVISOR

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
    SceneClass(5, 'ring', True, (119, 11, 32)),
    SceneClass(6, 'bar', True, (0, 80, 100)),
    SceneClass(7, 'cross', True, (0, 0, 230)),
    SceneClass(8, 'rug', False, (152, 251, 152)),
)
FLOOR, WALL, DISC, BOX, TRIANGLE, RING, BAR, CROSS, RUG = range(9)
THING_CLASSES = (DISC, BOX, TRIANGLE, RING, BAR, CROSS)
STUFF_CLASSES = (FLOOR, WALL, RUG)


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
    ``horizon`` is the wall/floor boundary (its row at the left and right image edges),
    which ``tokenmask_ros.synthetic_depth`` needs to give the scene a depth image.
    """

    image: np.ndarray      # (H, W, 3) uint8, RGB
    semantic: np.ndarray   # (H, W) uint8 class ids
    panoptic: np.ndarray   # (H, W) int32 panoptic ids
    segments: tuple[Segment, ...]
    horizon: tuple[float, float] | None = None


class SceneGenerator:
    """Deterministic scenes of ``height`` x ``width`` pixels; ``scene(i)`` is reproducible.

    A scene is a wall above a floor (split by a tilted horizon), often a rug on the floor,
    and ``max_objects // 3`` to ``max_objects`` things drawn one over the other: discs,
    boxes, triangles, rings, thin bars (3-6 px wide) and crosses, from ~12 px across up to
    ~40 % of the shorter side, a third of them placed next to an earlier one so that they
    overlap. ``stream``
    selects an independent sequence for the same seed (e.g. 0 = train, 1 = validation).
    """

    def __init__(self, height: int = 480, width: int = 640, seed: int = 0,
                 max_objects: int = 10, noise_std: float = 4.0, stream: int = 0):
        if height < 16 or width < 16:
            raise ValueError(f'scene size must be at least 16x16, got {width}x{height}')
        if max_objects < 0:
            raise ValueError(f'max_objects must be >= 0, got {max_objects}')
        if seed < 0 or stream < 0:
            raise ValueError(f'seed and stream must be >= 0, got {seed} and {stream}')
        self.height, self.width = int(height), int(width)
        self.seed = int(seed)
        self.stream = int(stream)
        self.max_objects = int(max_objects)
        self.noise_std = float(noise_std)
        ys, xs = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        self._xs, self._ys = xs, ys

    def rng(self, index: int) -> np.random.Generator:
        """The random generator that draws scene ``index`` (a function of seed, stream, index)."""
        if index < 0:
            raise ValueError(f'scene index must be >= 0, got {index}')
        key = [self.seed, int(index)] if self.stream == 0 else [self.seed, int(index), self.stream]
        return np.random.default_rng(key)

    def scene(self, index: int) -> SyntheticScene:
        rng = self.rng(index)
        image, semantic, horizon = self.background(rng)
        instance = np.zeros((self.height, self.width), np.int32)
        low = max(1, self.max_objects // 3)
        count = int(rng.integers(low, self.max_objects + 1)) if self.max_objects else 0
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            self._draw_thing(rng, image, semantic, instance, placed)
        if self.noise_std > 0:
            image += rng.standard_normal(image.shape, dtype=np.float32) * self.noise_std
        image = np.clip(image, 0, 255).astype(np.uint8)
        panoptic, segments = self.panoptic_segments(semantic, instance)
        return SyntheticScene(image, semantic, panoptic, segments, horizon)

    # --- background ("stuff") ------------------------------------------------------

    def background(self, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """A wall above a floor, split by a tilted horizon, maybe a rug; each textured.

        Returns the float RGB image, the class map and the horizon's rows at the left and
        right edges.
        """
        h, w = self.height, self.width
        left, right = (float(v) for v in rng.uniform(0.3, 0.7, size=2) * h)
        horizon = left + self._xs * ((right - left) / max(w - 1, 1))
        is_wall = self._ys < horizon
        semantic = np.where(is_wall, WALL, FLOOR).astype(np.uint8)
        wall = self.texture(rng)
        floor = self.texture(rng)
        image = np.where(is_wall[..., None], wall, floor)
        if rng.random() < 0.6:
            self._draw_rug(rng, image, semantic, max(left, right))
        return image, semantic, (left, right)

    def _draw_rug(self, rng: np.random.Generator, image: np.ndarray, semantic: np.ndarray,
                  horizon: float) -> None:
        """A textured quadrilateral lying on the floor (narrower at the far edge)."""
        h, w = self.height, self.width
        cx = float(rng.uniform(0.2, 0.8)) * w
        cy = float(rng.uniform(horizon, h))
        half_w = float(rng.uniform(0.1, 0.3)) * w
        half_h = float(rng.uniform(0.05, 0.15)) * h
        taper = float(rng.uniform(0.6, 1.0))  # far (upper) edge shorter: a floor in perspective
        local = np.array([[-half_w * taper, -half_h], [half_w * taper, -half_h],
                          [half_w, half_h], [-half_w, half_h]], np.float64)
        angle = float(rng.uniform(-0.3, 0.3))
        pts = _rotate(local, angle) + np.array([cx, cy])
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        texture = self.texture(rng)
        on_floor = mask.astype(bool) & (semantic == FLOOR)
        image[on_floor] = texture[on_floor]
        semantic[on_floor] = RUG

    def texture(self, rng: np.random.Generator) -> np.ndarray:
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

    def _draw_thing(self, rng: np.random.Generator, image: np.ndarray, semantic: np.ndarray,
                    instance: np.ndarray, placed: list[tuple[float, float, float]]) -> None:
        """Paint one shape over everything drawn so far (later shapes occlude earlier)."""
        h, w = self.height, self.width
        category = int(rng.choice(THING_CLASSES))
        # Log-uniform size: as many small objects (~12 px across) as large ones.
        upper = 0.2 * min(h, w)
        lower = min(6.0, upper)
        radius = float(math.exp(rng.uniform(math.log(lower), math.log(upper))))
        if placed and rng.random() < 0.35:  # next to an earlier object: overlaps
            px, py, pr = placed[int(rng.integers(len(placed)))]
            cx, cy = (float(v) for v in rng.normal((px, py), 0.8 * pr + 0.3 * radius))
        else:
            cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        placed.append((cx, cy, radius))
        angle = float(rng.uniform(0, 2 * np.pi))
        shape = thing_shape(category, rng)
        drawn = rasterise_thing(shape, cx, cy, radius, angle, h, w)
        if drawn is None:
            return
        window, inside = drawn
        color = thing_colour(rng)
        paint_thing(image, self._ys, window, inside, color, cy, radius)
        semantic[window][inside] = category
        instance[window][inside] = len(placed)

    # --- ground truth --------------------------------------------------------------

    def panoptic_segments(self, semantic: np.ndarray, instance: np.ndarray
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


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (N, 2) points about the origin by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


# --- thing drawing helpers (shared with ``synthetic_video``) -------------------------

@dataclass(frozen=True)
class ThingShape:
    """The random proportions of one thing; with a size and an angle they give its outline.

    Drawn once per thing, so a moving thing keeps its shape from frame to frame.
    """

    category: int
    params: tuple[float, ...]


def thing_shape(category: int, rng: np.random.Generator) -> ThingShape:
    """Draw the proportions of a thing of ``category`` (ring hole, box aspect, ...)."""
    if category == DISC:
        return ThingShape(category, ())
    if category == RING:  # inner radius 35-65 % of the outer one
        return ThingShape(category, (float(rng.uniform(0.35, 0.65)),))
    if category == BOX:  # half height / half width
        return ThingShape(category, (float(rng.uniform(0.45, 1.0)),))
    if category == TRIANGLE:  # corner jitter, up to 15 degrees each
        return ThingShape(category, tuple(float(v) for v in rng.uniform(-0.26, 0.26, size=3)))
    if category == BAR:  # half length in radii, width in pixels (3-6)
        half_len = float(rng.uniform(1.2, 2.0))
        return ThingShape(category, (half_len, float(rng.integers(3, 7))))
    if category == CROSS:  # arm half width in radii
        return ThingShape(category, (float(rng.uniform(0.18, 0.3)),))
    raise ValueError(f'not a thing class: {category}')


def thing_outline(shape: ThingShape, radius: float, angle: float
                  ) -> tuple[list[np.ndarray], tuple[float, int] | None]:
    """Polygons (centred on the origin) and/or a circle ``(radius, thickness)`` of a thing.

    Thickness 0 means a filled circle. Every class has its own geometry; none is a colour.
    """
    category, params = shape.category, shape.params
    if category == DISC:
        return [], (radius, 0)
    if category == RING:  # annulus: hole >= 2 px
        outer = max(radius, 5.0)
        inner = max(2.0, outer * params[0])
        return [], ((outer + inner) / 2, max(2, round(outer - inner)))
    if category == BOX:  # rotated rectangle
        half_h = radius * params[0]
        local = np.array([[-radius, -half_h], [radius, -half_h], [radius, half_h],
                          [-radius, half_h]])
        return [_rotate(local, angle)], None
    if category == TRIANGLE:  # roughly equilateral
        corners = angle + np.arange(3) * 2 * np.pi / 3 + np.array(params)
        return [radius * np.stack([np.cos(corners), np.sin(corners)], 1)], None
    if category == BAR:  # thin rod: 3-6 px wide, 2.4-4 radii long
        half_len = radius * params[0]
        half_wid = params[1] / 2
        local = np.array([[-half_len, -half_wid], [half_len, -half_wid], [half_len, half_wid],
                          [-half_len, half_wid]])
        return [_rotate(local, angle)], None
    if category == CROSS:  # plus sign: two perpendicular arms
        half_wid = max(1.5, radius * params[0])
        arm = np.array([[-radius, -half_wid], [radius, -half_wid], [radius, half_wid],
                        [-radius, half_wid]])
        return [_rotate(arm, angle), _rotate(arm, angle + np.pi / 2)], None
    raise ValueError(f'not a thing class: {category}')


def rasterise_thing(shape: ThingShape, cx: float, cy: float, radius: float, angle: float,
                    height: int, width: int
                    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """``(window, inside)``: the thing's pixels inside an image, or None when none are.

    Drawing happens in the shape's bounding window only, so small objects cost little;
    ``inside`` is a boolean mask of the window ``(rows, cols)``.
    """
    polygons, circle = thing_outline(shape, radius, angle)
    extent = radius * 2.0 + 8  # bars reach 2 radii from their centre
    x0, y0 = max(0, math.floor(cx - extent)), max(0, math.floor(cy - extent))
    x1, y1 = min(width, math.ceil(cx + extent) + 1), min(height, math.ceil(cy + extent) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    origin = np.array([cx - x0, cy - y0])
    if circle is not None:
        center = (round(origin[0]), round(origin[1]))
        mid, thickness = circle
        cv2.circle(mask, center, max(1, round(mid)), 1, -1 if thickness <= 0 else thickness)
    for polygon in polygons:  # one fillPoly each: overlapping parts stay filled
        cv2.fillPoly(mask, [np.round(polygon + origin).astype(np.int32)], 1)
    inside = mask.astype(bool)
    if not inside.any():
        return None
    return (slice(y0, y1), slice(x0, x1)), inside


def thing_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated random RGB colour (float32): colour never gives the class away."""
    return cv2.cvtColor(
        np.array([[[rng.uniform(0, 180), rng.uniform(120, 255), rng.uniform(120, 255)]]],
                 np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def paint_thing(image: np.ndarray, ys: np.ndarray, window: tuple[slice, slice],
                inside: np.ndarray, color: np.ndarray, cy: float, radius: float) -> None:
    """Fill a thing's pixels with its colour, shaded from top to bottom (float image)."""
    shade = 1.0 + 0.15 * (ys[window][inside] - cy) / max(radius, 1.0)
    image[window][inside] = color * shade[:, None]
