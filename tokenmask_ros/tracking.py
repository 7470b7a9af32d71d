"""Panoptic tracking: thing numbers that persist across frames (NumPy / SciPy only).

:class:`PanopticTracker` renumbers the thing segments of each frame's
:class:`~tokenmask_ros.panoptic_types.Prediction` so that one object keeps one panoptic id
``class_id * label_divisor + track_number`` over time; stuff is untouched. Per frame:

1. **Overlap stage.** Every live track is scored against every thing segment of the *same
   class* (a track's class is the class of its last match; a segment of another class never
   matches it, so a class change starts a new track). The score is mask IoU on a
   ``downsample``-strided grid between the segment and the track's last mask moved on by
   its constant-velocity estimate (times the frames since it was seen), so fast movers
   still overlap; all pairs come from one ``np.bincount`` over paired indices. Masks too
   thin for the grid fall back to the IoU of the velocity-predicted box. Pairs need
   ``min_iou``. With an image, appearance similarity is added to the score, and a pair
   that looks clearly different is refused, which keeps crossing objects apart: the
   Bhattacharyya coefficient of (r, g) chromaticity histograms (brightness-free, so
   shading and lighting changes barely move it). One
   ``scipy.optimize.linear_sum_assignment`` (padded so a pair is never forced) picks the
   matches.
2. **Re-identification stage.** Tracks and segments left over are matched without needing
   overlap: by class plus appearance (similarity >= ``_REID_MIN_SIMILARITY``) with a loose
   distance prior, so an object that was occluded, or left the frame and came back
   elsewhere, gets its number back. Without an image (or for a segment of fewer than
   ``_MIN_PIXELS`` pixels) the segment's centre must lie inside the track's predicted box.

A track survives ``max_age`` frames unseen and expires after that, with one exception: a
track seen in a single frame is dropped at once when, in the next, the segment it could
have matched goes to an older track (it was a fragment or a sliver of that object, e.g. an
object re-entering the frame too small to recognise; kept, it would compete with the real
track for ``max_age`` frames).
Numbers count up per class from 1 and are only reused once ``label_divisor - 1`` is
reached: then the number that expired longest ago is taken, and if every number is still
held by a live track, the lost track unseen longest is dropped early and its number reused
(a frame holds at most ``label_divisor - 1`` things per class, so some held number is
always a lost one). Thus two live tracks of a class never share a number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from tokenmask_ros.defaults import LABEL_DIVISOR, TRACK_MAX_AGE, TRACK_MIN_IOU
from tokenmask_ros.panoptic_types import (
    VOID,
    Prediction,
    Segment,
    segment_areas_and_boxes,
    semantic_dtype,
    semantic_void,
)

#: Strided pixels a mask needs for mask IoU and a strided histogram (else box IoU and a
#: full-resolution histogram, which needs _MIN_PIXELS pixels).
_MIN_SAMPLES = 4
_MIN_PIXELS = 3
#: Bins per axis of the (r, g) chromaticity histogram used as appearance.
_LEVELS = 10
#: Weight of appearance similarity next to IoU in the overlap stage.
_APPEARANCE_WEIGHT = 0.5
#: Appearance similarity below which an overlapping pair is refused: another object that
#: moved where this one was predicted (they met and turned back, or one hides the other).
_APPEARANCE_VETO = 0.25
#: Least appearance similarity for a match without overlap (re-identification).
_REID_MIN_SIMILARITY = 0.5
#: Weight of the centre distance (in image diagonals) in the re-identification cost.
_DISTANCE_WEIGHT = 0.5
#: Score lost per frame unseen in the overlap stage: among equal overlaps, the recent track.
_RECENCY_WEIGHT = 0.02
#: How much of the old velocity / histogram each match keeps (exponential smoothing).
_VELOCITY_MOMENTUM = 0.5
_HISTOGRAM_MOMENTUM = 0.7
_FORBIDDEN = 1e9


@dataclass(eq=False)
class _Track:
    number: int
    class_id: int
    center: np.ndarray        # (x, y) box centre in pixels
    size: np.ndarray          # (w, h) box size in pixels
    velocity: np.ndarray      # (vx, vy) pixels per frame
    last_seen: int            # frame index of the last match
    histogram: np.ndarray | None
    pixels: tuple             # (strided shape, flat indices of the last mask on that grid)
    hits: int = 1             # frames matched


@dataclass(frozen=True)
class _Observation:
    strided: np.ndarray                # strided map of thing indices, -1 elsewhere
    counts: np.ndarray                 # strided pixels per thing
    pixels: list[tuple]                # per thing: (strided shape, flat indices)
    histograms: np.ndarray | None      # per thing, NaN rows where too small


class PanopticTracker:
    """Stable thing ids across frames; see the module docstring for the method.

    ``is_thing``: per-class flags (or objects with an ``is_thing`` attribute). ``max_age``
    and ``min_iou`` may be changed between frames (the node's run-time parameters).
    """

    def __init__(self, is_thing: Sequence[bool], *, label_divisor: int = LABEL_DIVISOR,
                 max_age: int = TRACK_MAX_AGE, min_iou: float = TRACK_MIN_IOU,
                 downsample: int = 4):
        self._flags = np.array([bool(getattr(c, 'is_thing', c)) for c in is_thing], bool)
        if int(label_divisor) < 2:
            raise ValueError(f'label_divisor must be >= 2, got {label_divisor}')
        if int(downsample) < 1:
            raise ValueError(f'downsample must be >= 1, got {downsample}')
        self.label_divisor = int(label_divisor)
        self.downsample = int(downsample)
        self.max_age = max_age
        self.min_iou = min_iou
        self.reset()

    @property
    def max_age(self) -> int:
        return self._max_age

    @max_age.setter
    def max_age(self, value: int) -> None:
        if int(value) != value or value < 0:
            raise ValueError(f'max_age must be an integer >= 0, got {value}')
        self._max_age = int(value)

    @property
    def min_iou(self) -> float:
        return self._min_iou

    @min_iou.setter
    def min_iou(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f'min_iou must be in [0, 1], got {value}')
        self._min_iou = float(value)

    @property
    def num_tracks(self) -> int:
        """Live tracks (seen, or unseen for at most ``max_age`` frames)."""
        return len(self._tracks)

    def reset(self) -> None:
        """Forget every track and start numbering from 1 again (e.g. a new video)."""
        self._tracks: list[_Track] = []
        self._frame = 0
        self._next_number: dict[int, int] = {}
        self._expired: dict[int, dict[int, None]] = {}  # class -> numbers, oldest expiry first

    # ------------------------------------------------------------------ update

    def update(self, prediction: Prediction, image: np.ndarray | None = None) -> Prediction:
        """A new Prediction with tracked thing ids (the input is not modified)."""
        panoptic = np.asarray(prediction.panoptic)
        if panoptic.ndim != 2:
            raise ValueError(f'panoptic map must be 2-D, got shape {panoptic.shape}')
        if prediction.label_divisor != self.label_divisor:
            raise ValueError(f'prediction label_divisor {prediction.label_divisor} != '
                             f'tracker label_divisor {self.label_divisor}')
        if image is not None:
            image = np.asarray(image)
            if image.shape != (*panoptic.shape, 3) or image.dtype != np.uint8:
                raise ValueError(f'image must be uint8 {panoptic.shape[0]}x'
                                 f'{panoptic.shape[1]}x3, got {image.dtype} {image.shape}')
        for seg in prediction.segments:
            if not 0 <= seg.class_id < len(self._flags):
                raise ValueError(f'segment class {seg.class_id} has no is_thing flag')
        self._frame += 1
        frame = self._frame
        # Tracks unseen for more than max_age frames (max_age may just have been lowered).
        for track in [t for t in self._tracks if frame - t.last_seen - 1 > self._max_age]:
            self._expire(track)

        things = sorted((s for s in prediction.segments if self._flags[s.class_id]),
                        key=lambda s: s.id)
        seen = self._observe(panoptic, image, things)
        matches, absorbed = self._associate(things, seen, panoptic.shape)

        # Update matched tracks, start new ones, expire the unseen.
        seg_track: list[_Track] = []
        for index, seg in enumerate(things):
            center, size = _center_size(seg.bbox)
            hist = seen.histograms[index] if seen.histograms is not None else None
            if hist is not None and np.isnan(hist[0]):  # too small for a histogram
                hist = None
            track, reidentified = matches.get(index, (None, False))
            if track is None:
                track = _Track(self._allocate(seg.class_id), seg.class_id, center, size,
                               np.zeros(2), frame, hist, seen.pixels[index])
                self._tracks.append(track)
            else:
                if reidentified:  # found again elsewhere (re-entry): the jump is no velocity
                    track.velocity = np.zeros(2)
                else:
                    step = (center - track.center) / (frame - track.last_seen)
                    track.velocity = (_VELOCITY_MOMENTUM * track.velocity
                                      + (1 - _VELOCITY_MOMENTUM) * step)
                track.center, track.size, track.last_seen = center, size, frame
                track.pixels = seen.pixels[index]
                track.hits += 1
                if hist is not None:
                    track.histogram = hist if track.histogram is None else (
                        _HISTOGRAM_MOMENTUM * track.histogram + (1 - _HISTOGRAM_MOMENTUM) * hist)
            seg_track.append(track)
        # Expired: unseen for more than max_age frames, or a one-frame track whose object
        # an older track took (module docstring).
        for track in [t for t in self._tracks if frame - t.last_seen > self._max_age
                      or id(t) in absorbed]:
            self._expire(track)
        return self._renumber(prediction, panoptic, things, seg_track)

    # ------------------------------------------------------------------ steps

    def _observe(self, panoptic: np.ndarray, image: np.ndarray | None, things: list[Segment]
                 ) -> _Observation:
        """The thing segments on the strided grid, and their colour histograms."""
        step = self.downsample
        small = panoptic[::step, ::step]
        ids = np.array([s.id for s in things], dtype=np.int64)
        if len(ids):
            index = np.clip(np.searchsorted(ids, small), 0, len(ids) - 1)
            strided = np.where(ids[index] == small, index, -1)
        else:
            strided = np.full(small.shape, -1, dtype=np.int64)
        flat = np.flatnonzero(strided >= 0)
        owner = strided.ravel()[flat]
        counts = np.bincount(owner, minlength=len(ids))
        order = np.argsort(owner, kind='stable')
        pixels = [(small.shape, part) for part in np.split(flat[order], np.cumsum(counts)[:-1])]
        histograms = None
        if image is not None:
            histograms = _histograms(image[::step, ::step].reshape(-1, 3)[flat], owner,
                                     len(ids))
            histograms[counts < _MIN_SAMPLES] = np.nan
            # Segments too small for the grid (entering, mostly hidden, thin): full resolution.
            for k in np.flatnonzero(counts < _MIN_SAMPLES).tolist():
                x, y, w, h = things[k].bbox
                window = (slice(y, y + h), slice(x, x + w))
                inside = panoptic[window] == things[k].id
                if np.count_nonzero(inside) >= _MIN_PIXELS:
                    histograms[k] = _histograms(image[window][inside],
                                                np.zeros(np.count_nonzero(inside), int), 1)[0]
        return _Observation(strided, counts, pixels, histograms)

    def _associate(self, things: list[Segment], seen: _Observation,
                   full_shape: tuple[int, int]) -> tuple[dict[int, tuple[_Track, bool]], set]:
        """Segment index -> (matched track, found by re-identification rather than overlap),
        and the ids of one-frame tracks left unmatched while a segment they could have
        matched went to another track."""
        tracks, frame = self._tracks, self._frame
        if not tracks or not things:
            return {}, set()
        gap = np.array([frame - t.last_seen for t in tracks], dtype=np.float64)
        predicted = (np.array([t.center for t in tracks])
                     + np.array([t.velocity for t in tracks]) * gap[:, None])
        sizes = np.array([t.size for t in tracks])
        seg_center, seg_size = (np.array(v) for v in zip(*(_center_size(s.bbox) for s in things),
                                                           strict=True))
        same_class = (np.array([t.class_id for t in tracks])[:, None]
                      == np.array([s.class_id for s in things])[None, :])

        overlap = _box_iou(predicted, sizes, seg_center, seg_size)
        mask_iou, mask_ok = self._mask_iou(tracks, gap, seen)
        overlap = np.where(mask_ok, mask_iou, overlap)

        similarity = np.full(overlap.shape, np.nan)
        if seen.histograms is not None:
            known = [i for i, t in enumerate(tracks) if t.histogram is not None]
            if known:
                track_hist = np.sqrt(np.array([tracks[i].histogram for i in known]))
                similarity[known] = track_hist @ np.sqrt(seen.histograms).T
        has_appearance = ~np.isnan(similarity)
        appearance = np.where(has_appearance, similarity, 0.5)

        # Stage 1: overlap (motion-compensated), appearance as a tie-breaker, and among
        # equals the track seen most recently.
        allowed = (same_class & (overlap >= self._min_iou) & (overlap > 0)
                   & ~(similarity < _APPEARANCE_VETO))  # NaN (unknown) never vetoes
        score = overlap + _APPEARANCE_WEIGHT * appearance - _RECENCY_WEIGHT * gap[:, None]
        matches = _assign(np.where(allowed, -score, _FORBIDDEN), allowed)
        candidate = allowed.copy()
        # Stage 2: re-identification of what is left, without overlap. No appearance: the
        # segment's centre must lie in the track's predicted box (plus a margin).
        margin = 2.0 * self.downsample
        near = (np.abs(predicted[:, None] - seg_center[None]) <= sizes[:, None] / 2 + margin
                ).all(-1)
        allowed = same_class & np.where(has_appearance, similarity >= _REID_MIN_SIMILARITY,
                                        near)
        candidate |= allowed
        allowed[[t for t, _ in matches]] = False
        allowed[:, [s for _, s in matches]] = False
        distance = np.linalg.norm(predicted[:, None] - seg_center[None], axis=-1)
        diagonal = float(np.hypot(*full_shape))
        # Offset: every allowed pair beats leaving both unmatched.
        cost = (1.0 - appearance) + _DISTANCE_WEIGHT * distance / diagonal - 10.0
        found = {s: (tracks[t], False) for t, s in matches}
        found.update((s, (tracks[t], True))
                     for t, s in _assign(np.where(allowed, cost, _FORBIDDEN), allowed))
        matched = {id(track) for track, _ in found.values()}
        taken = list(found)
        absorbed = {id(t) for i, t in enumerate(tracks) if t.hits == 1 and id(t) not in matched
                    and candidate[i, taken].any()}
        return found, absorbed

    def _mask_iou(self, tracks: list[_Track], gap: np.ndarray, seen: _Observation
                  ) -> tuple[np.ndarray, np.ndarray]:
        """IoU of each track's last mask, moved on by its velocity, with each segment's mask.

        On the strided grid, all pairs from one ``bincount``; ``ok`` marks pairs where both
        masks have enough strided pixels for the IoU to mean something.
        """
        strided, counts = seen.strided, seen.counts
        num_tracks, num_segs, shape = len(tracks), len(counts), strided.shape
        usable = [i for i, t in enumerate(tracks) if t.pixels[0] == shape]
        iou = np.zeros((num_tracks, num_segs))
        ok = np.zeros((num_tracks, num_segs), dtype=bool)
        if not usable or not num_segs:
            return iou, ok
        flat = np.concatenate([tracks[i].pixels[1] for i in usable])
        track_row = np.repeat(usable, [len(tracks[i].pixels[1]) for i in usable])
        velocity = np.array([t.velocity for t in tracks]) * gap[:, None]
        shift = np.rint(velocity / self.downsample).astype(np.int64)
        rows = flat // shape[1] + shift[track_row, 1]
        cols = flat % shape[1] + shift[track_row, 0]
        inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        track_row, rows, cols = track_row[inside], rows[inside], cols[inside]
        area = np.bincount(track_row, minlength=num_tracks)
        seg = strided[rows, cols]
        hit = seg >= 0
        inter = np.bincount(track_row[hit] * num_segs + seg[hit],
                            minlength=num_tracks * num_segs).reshape(num_tracks, num_segs)
        union = area[:, None] + counts[None, :] - inter
        iou = inter / np.maximum(union, 1)
        ok = (area >= _MIN_SAMPLES)[:, None] & (counts >= _MIN_SAMPLES)[None, :]
        return iou, ok

    def _allocate(self, class_id: int) -> int:
        """A number no live track of ``class_id`` holds (see the module docstring)."""
        number = self._next_number.get(class_id, 1)
        if number < self.label_divisor:
            self._next_number[class_id] = number + 1
            return number
        expired = self._expired.get(class_id, {})
        if expired:
            number = next(iter(expired))
            del expired[number]
            return number
        lost = [t for t in self._tracks if t.class_id == class_id and t.last_seen < self._frame]
        oldest = min(lost, key=lambda t: t.last_seen)
        self._tracks.remove(oldest)
        return oldest.number

    def _expire(self, track: _Track) -> None:
        """Drop a track; its number joins the reusable ones (used once the count runs out)."""
        self._tracks.remove(track)
        self._expired.setdefault(track.class_id, {})[track.number] = None

    def _renumber(self, prediction: Prediction, panoptic: np.ndarray, things: list[Segment],
                  seg_track: list[_Track]) -> Prediction:
        """Copy of ``prediction`` with every thing id replaced by its track's id."""
        new_id = {s.id: t.class_id * self.label_divisor + t.number
                  for s, t in zip(things, seg_track, strict=True)}
        segments = sorted((replace(s, id=new_id.get(s.id, s.id)) for s in prediction.segments),
                          key=lambda s: s.id)
        low, high = (int(panoptic.min()), int(panoptic.max())) if panoptic.size else (0, 0)
        if low < VOID:
            raise ValueError(f'panoptic map holds {low}, below void ({VOID})')
        # Lookup table indexed by id; the last entry answers id -1 (void).
        table = np.arange(max(high, 0) + 2, dtype=np.int32)
        table[-1] = VOID
        for old, new in new_id.items():
            table[old] = new
        return Prediction(np.take(table, panoptic), np.array(prediction.semantic, copy=True),
                          segments, self.label_divisor)


def prediction_from_panoptic(panoptic: np.ndarray, is_thing,
                             label_divisor: int = LABEL_DIVISOR,
                             scores: Mapping[int, float] | None = None) -> Prediction:
    """A :class:`Prediction` from a panoptic id map (ground truth, or a recorded result).

    ``panoptic`` holds ``class_id * label_divisor + instance`` (VOID = -1); ``is_thing``
    per-class flags; ``scores`` optional per-id scores (default 1.0). Segments are in id
    order with areas and boxes from :func:`segment_areas_and_boxes`.
    """
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
        raise ValueError(f'panoptic map must be a 2-D integer array, got {panoptic.dtype} '
                         f'{panoptic.shape}')
    flags = np.array([bool(getattr(c, 'is_thing', c)) for c in is_thing], bool)
    panoptic = panoptic.astype(np.int32)
    ids = np.unique(panoptic)
    if len(ids) and ids[0] < VOID:
        raise ValueError(f'panoptic map holds {ids[0]}, below void ({VOID})')
    ids = ids[ids >= 0]
    classes = ids // label_divisor
    if len(ids) and classes.max() >= len(flags):
        raise ValueError(f'class {classes.max()} has no is_thing flag')
    scores = scores or {}
    areas, boxes = segment_areas_and_boxes(panoptic, ids)
    segments = [Segment(int(i), int(c), float(scores.get(int(i), 1.0)),
                        tuple(int(v) for v in b), int(a), bool(flags[c]))
                for i, c, b, a in zip(ids, classes, boxes, areas, strict=True)]
    void = semantic_void(len(flags))
    semantic = np.where(panoptic >= 0, panoptic // label_divisor, void)
    return Prediction(panoptic, semantic.astype(semantic_dtype(len(flags))), segments,
                      int(label_divisor))


# ---------------------------------------------------------------------- helpers


def _center_size(bbox: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x + w / 2, y + h / 2]), np.array([w, h])


def _histograms(rgb: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    """Normalised chromaticity histograms of ``count`` pixel groups (``owner`` per pixel).

    Chromaticity ``(r, g) / (r + g + b)`` ignores brightness, so shading across an object
    and its changing lighting as it moves leave it nearly unchanged; ``_LEVELS`` bins a side.
    """
    rgb = rgb.astype(np.float32) + 1.0
    total = rgb.sum(1)
    r = np.minimum((rgb[:, 0] / total * _LEVELS).astype(np.int64), _LEVELS - 1)
    g = np.minimum((rgb[:, 1] / total * _LEVELS).astype(np.int64), _LEVELS - 1)
    bins = _LEVELS * _LEVELS
    histograms = np.bincount(owner * bins + r * _LEVELS + g, minlength=count * bins
                             ).reshape(count, bins).astype(np.float64)
    return histograms / np.maximum(histograms.sum(1, keepdims=True), 1)


def _box_iou(center_a: np.ndarray, size_a: np.ndarray, center_b: np.ndarray,
             size_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes given as centres and sizes, shape (len(a), len(b))."""
    low_a, high_a = center_a - size_a / 2, center_a + size_a / 2
    low_b, high_b = center_b - size_b / 2, center_b + size_b / 2
    extent = np.clip(np.minimum(high_a[:, None], high_b[None]) -
                     np.maximum(low_a[:, None], low_b[None]), 0, None)
    inter = extent[..., 0] * extent[..., 1]
    union = size_a.prod(1)[:, None] + size_b.prod(1)[None] - inter
    return inter / np.maximum(union, 1e-9)


def _assign(cost: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-total-cost (row, column) pairs among the allowed ones; unmatched costs 0.

    So only negative-cost pairs are worth taking, and a good pair is never traded for two
    mediocre ones just to match more. Padded with "unmatched" rows and columns: a plain
    square solve would have to take a forbidden pair instead of leaving a row unmatched.
    """
    if not allowed.any():
        return []
    num_rows, num_cols = cost.shape
    padded = np.full((num_rows + num_cols, num_cols + num_rows), _FORBIDDEN)
    padded[:num_rows, :num_cols] = np.where(allowed, cost, _FORBIDDEN)
    padded[np.arange(num_rows), num_cols + np.arange(num_rows)] = 0.0
    padded[num_rows + np.arange(num_cols), np.arange(num_cols)] = 0.0
    padded[num_rows:, num_cols:] = 0.0
    rows, cols = linear_sum_assignment(padded)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)
            if r < num_rows and c < num_cols and allowed[r, c]]
