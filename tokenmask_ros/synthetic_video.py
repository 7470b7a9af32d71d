"""Synthetic RGB-D video with ground-truth track ids: the tracker's and the 3D code's test bed.

A sequence is a fixed room (one ``SceneGenerator`` background: wall, floor, maybe a rug)
seen by a static camera, and ``num_things`` things that keep their class, shape and colour
for the whole sequence. Each thing stands on the floor (``synthetic_depth.Room``) and
moves with its own velocity: sideways it bounces off turning points *outside* the image,
so it leaves the frame, stays invisible for a known number of frames and comes back where
it left; it also walks toward and away from the camera (growing and shrinking with
``1 / depth``) and spins. Things are drawn far to near, so occlusion agrees with depth.

``frame(i)`` is a pure function of ``(seed, i)``, like ``SceneGenerator.scene``. Every frame
carries the panoptic ground truth (things numbered ``1..N`` within the frame, as in a
``SyntheticScene``), ``track_ids`` (panoptic id -> ground-truth track id, stable over the
sequence), a depth image in metres, the camera and each thing's true 3D centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tokenmask_ros.camera import PinholeCamera
from tokenmask_ros.defaults import LABEL_DIVISOR
from tokenmask_ros.sources import Frame, FrameSource
from tokenmask_ros.synthetic import (
    BAR,
    BOX,
    CROSS,
    RING,
    THING_CLASSES,
    SceneGenerator,
    Segment,
    ThingShape,
    paint_thing,
    rasterise_thing,
    thing_colour,
    thing_shape,
)
from tokenmask_ros.synthetic_depth import Room, scene_depth, synthetic_camera, thing_centres

# First word of every random key of a sequence: never equal to a scene's key.
_SEQUENCE_KEY = 0x5E9_0E9CE

#: Size (radius, metres) range of the things; log-uniform.
THING_SIZE_M = (0.08, 0.22)
#: Sideways speed per frame as a fraction of the thing's pixel radius at its mean depth:
#: slow enough that a thing overlaps itself from one frame to the next.
SPEED_PER_RADIUS = (0.12, 0.35)
#: Frames a thing stays fully outside the image each time it leaves.
OFF_FRAME = (4, 12)


@dataclass(frozen=True)
class SequenceFrame:
    """One frame of a sequence with its exact ground truth (see the module docstring)."""

    image: np.ndarray                  # (H, W, 3) uint8 RGB
    semantic: np.ndarray               # (H, W) uint8 class ids
    panoptic: np.ndarray               # (H, W) int32, things numbered 1..N in the frame
    segments: tuple[Segment, ...]
    track_ids: dict[int, int]          # panoptic id of a thing -> ground-truth track id
    depth: np.ndarray                  # (H, W) float32 metres, finite and > 0
    camera: PinholeCamera
    index: int
    centres: dict[int, np.ndarray] = field(default_factory=dict)  # panoptic id -> (x, y, z) m


@dataclass(frozen=True)
class Thing:
    """A thing's constant properties and its motion (pixels, frames, radians)."""

    track_id: int
    category: int
    shape: ThingShape
    colour: np.ndarray
    size_m: float       # radius in metres
    u0: float           # foot column at frame 0, on the unfolded bounce path
    speed_u: float      # px / frame, signed
    u_limits: tuple[float, float]   # sideways turning points (outside the image)
    v0: float           # foot row at frame 0, on the unfolded bounce path
    speed_v: float      # px / frame, signed
    v_limits: tuple[float, float]   # foot rows: from near the horizon to the bottom row
    angle0: float
    spin: float         # rad / frame


@dataclass(frozen=True)
class ThingState:
    """Where a thing is in one frame: its foot, centre and radius in pixels, its depth."""

    track_id: int
    category: int
    foot: tuple[float, float]
    centre: tuple[float, float]
    radius: float
    angle: float
    depth: float


def _bounce(start: float, speed: float, limits: tuple[float, float], t: int) -> float:
    """Position at frame ``t`` of a point moving at ``speed`` between two limits (reflected)."""
    low, high = limits
    span = high - low
    phase = (start - low + speed * t) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def _reach(shape: ThingShape, radius: float) -> float:
    """Farthest distance (pixels) of a thing's outline from its centre at ``radius``."""
    category, params = shape.category, shape.params
    if category == RING:
        return max(radius, 5.0) + 0.5
    if category in (BOX, CROSS):
        return radius * math.hypot(1.0, params[0]) + (1.5 if category == CROSS else 0.0)
    if category == BAR:
        return math.hypot(radius * params[0], params[1] / 2)
    return radius  # disc, triangle


class SequenceGenerator:
    """``length`` deterministic frames of ``height`` x ``width`` pixels; ``frame(i)``."""

    def __init__(self, height: int = 240, width: int = 320, seed: int = 0, length: int = 60,
                 num_things: int = 6, noise_std: float = 4.0):
        if length < 1:
            raise ValueError(f'sequence length must be >= 1, got {length}')
        if num_things < 0 or num_things >= LABEL_DIVISOR:
            raise ValueError(f'num_things must lie in 0..{LABEL_DIVISOR - 1}, got {num_things}')
        self.scenes = SceneGenerator(height=height, width=width, seed=seed, max_objects=0,
                                     noise_std=noise_std)
        self.height, self.width = self.scenes.height, self.scenes.width
        self.seed, self.length, self.num_things = self.scenes.seed, int(length), int(num_things)
        self.noise_std = float(noise_std)
        self.camera = synthetic_camera(self.width, self.height)
        rng = np.random.default_rng([_SEQUENCE_KEY, self.seed, 0])
        image, self._semantic, horizon = self.scenes.background(rng)
        self._background = image
        self.room = Room(self.camera, horizon)
        self._depth = self.room.background_depth()
        self.things = tuple(self._make_thing(rng, k + 1) for k in range(self.num_things))

    def __len__(self) -> int:
        return self.length

    def _make_thing(self, rng: np.random.Generator, track_id: int) -> Thing:
        h, w = self.height, self.width
        category = int(rng.choice(THING_CLASSES))
        shape = thing_shape(category, rng)
        colour = thing_colour(rng)
        size = float(math.exp(rng.uniform(*np.log(THING_SIZE_M))))
        # Each thing walks toward and away from the camera within a band of foot rows.
        horizon = max(self.room.left, self.room.right)
        low, centre = horizon + 0.2 * (h - horizon), float(rng.uniform(0, 1))
        centre = low + centre * (h - 1 - low)
        band = 0.08 * h
        v_limits = (max(low, centre - band), min(h - 1.0, centre + band))
        # Pixel radius at the band's middle and nearest row: speed and off-frame margin.
        mean_depth = self.room.standing_depth(w / 2, sum(v_limits) / 2)
        nearest = self.room.standing_depth(w / 2, v_limits[1])
        radius_mean = size * self.camera.fx / mean_depth
        reach = _reach(shape, size * self.camera.fx / nearest) + 1  # centre to farthest pixel
        speed = radius_mean * float(rng.uniform(*SPEED_PER_RADIUS))
        off_frames = int(rng.integers(OFF_FRAME[0], OFF_FRAME[1] + 1))
        margin = reach + speed * off_frames / 2  # out of the image for ~off_frames frames
        u_limits = (-margin, w - 1 + margin)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if track_id == 1:  # the first thing surely leaves and comes back within the sequence
            turn = float(rng.uniform(0.15, 0.45)) * self.length * speed
            u0 = u_limits[1] - turn if sign > 0 else u_limits[0] + turn
        else:
            u0 = float(rng.uniform(*u_limits))
        speed_v = float(rng.uniform(-0.3, 0.3)) * speed
        v0 = float(rng.uniform(*v_limits))
        angle0 = float(rng.uniform(0, 2 * np.pi))
        spin = float(rng.uniform(-0.06, 0.06))
        return Thing(track_id, category, shape, colour, size, u0, sign * speed, u_limits,
                     v0, speed_v, v_limits, angle0, spin)

    def states(self, index: int) -> list[ThingState]:
        """Every thing's state in frame ``index`` (visible or not), in track-id order."""
        if not 0 <= index < self.length:
            raise IndexError(f'frame {index} out of range for a sequence of {self.length}')
        states = []
        for thing in self.things:
            u = _bounce(thing.u0, thing.speed_u, thing.u_limits, index)
            v = _bounce(thing.v0, thing.speed_v, thing.v_limits, index)
            depth = self.room.standing_depth(u, v)
            radius = thing.size_m * self.camera.fx / depth
            angle = thing.angle0 + thing.spin * index
            states.append(ThingState(thing.track_id, thing.category, (u, v), (u, v - radius),
                                     radius, angle, depth))
        return states

    def thing_mask(self, state: ThingState) -> np.ndarray:
        """The full (unoccluded) ``(H, W)`` boolean mask of a thing in its state."""
        mask = np.zeros((self.height, self.width), bool)
        drawn = self._rasterise(state)
        if drawn is not None:
            window, inside = drawn
            mask[window] = inside
        return mask

    def _rasterise(self, state: ThingState):
        thing = self.things[state.track_id - 1]
        return rasterise_thing(thing.shape, *state.centre, state.radius, state.angle,
                               self.height, self.width)

    def frame(self, index: int) -> SequenceFrame:
        states = self.states(index)
        image = self._background.copy()
        semantic = self._semantic.copy()
        depth = self._depth.copy()
        instance = np.zeros((self.height, self.width), np.int32)
        # Far to near (ties: lower track id first): nearer things occlude farther ones.
        for state in sorted(states, key=lambda s: (-s.depth, s.track_id)):
            drawn = self._rasterise(state)
            if drawn is None:
                continue
            window, inside = drawn
            thing = self.things[state.track_id - 1]
            paint_thing(image, self.scenes._ys, window, inside, thing.colour, state.centre[1],
                        state.radius)
            semantic[window][inside] = thing.category
            instance[window][inside] = state.track_id
            depth[window][inside] = state.depth
        if self.noise_std > 0:
            rng = np.random.default_rng([_SEQUENCE_KEY, self.seed, 1, index])
            image += rng.standard_normal(image.shape, dtype=np.float32) * self.noise_std
        image = np.clip(image, 0, 255).astype(np.uint8)
        panoptic, segments = self.scenes.panoptic_segments(semantic, instance)
        # panoptic_segments numbers visible things 1..N in increasing instance (= track) order.
        visible = np.flatnonzero(np.bincount(instance.ravel(), minlength=self.num_things + 1))
        visible = visible[visible > 0]
        track_ids = {}
        for number, track_id in enumerate(visible.tolist(), start=1):
            category = self.things[track_id - 1].category
            track_ids[category * LABEL_DIVISOR + number] = track_id
        centres = thing_centres(panoptic, depth, self.camera, track_ids)
        return SequenceFrame(image, semantic, panoptic, segments, track_ids, depth, self.camera,
                             index, centres)


class SyntheticRGBDSource(FrameSource):
    """Synthetic frames with depth: single scenes (``synthetic``, the same images as
    ``sources.SyntheticSource``) or a sequence's frames (``synthetic_video``, looping).

    After each ``read()``, ``depth`` holds that frame's depth (metres) and ``camera`` the
    intrinsics, so a publisher can send image, depth and camera info with one header.
    """

    def __init__(self, kind: str = 'synthetic_video', width: int = 320, height: int = 240,
                 seed: int = 0, loop: bool = True, length: int = 60,
                 num_things: int = 6):
        if kind not in ('synthetic', 'synthetic_video'):
            raise ValueError(f'kind must be synthetic or synthetic_video, got {kind!r}')
        self.kind, self.loop = kind, loop
        self.camera = synthetic_camera(width, height)
        if kind == 'synthetic':
            self._scenes = SceneGenerator(height=height, width=width, seed=seed)
            self.description = f'synthetic RGB-D scenes {width}x{height} (seed {seed})'
        else:
            self._sequence = SequenceGenerator(height=height, width=width, seed=seed,
                                               length=length, num_things=num_things)
            self.description = (f'synthetic RGB-D video {width}x{height}, {length} frames '
                                f'(seed {seed})')
        self.depth: np.ndarray | None = None
        self.last: SequenceFrame | None = None
        self._index = 0

    def read(self) -> Frame | None:
        if self.kind == 'synthetic':
            scene = self._scenes.scene(self._index)
            image, self.depth = scene.image, scene_depth(scene, self.camera)
        else:
            length = len(self._sequence)
            if self._index >= length and not self.loop:
                return None
            self.last = self._sequence.frame(self._index % length)
            image, self.depth = self.last.image, self.last.depth
        frame = Frame(image, 'rgb8', self._index)
        self._index += 1
        return frame


def __getattr__(name: str):
    """``write_sequence`` / ``read_sequence`` live in ``sequence_io`` (which imports this)."""
    if name in ('write_sequence', 'read_sequence'):
        from tokenmask_ros import sequence_io

        return getattr(sequence_io, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
