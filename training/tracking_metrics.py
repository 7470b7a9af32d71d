"""HOTA / DetA / AssA / IDF1 / ID switches of tracked panoptic masks, scored by TrackEval.

A sequence is a list of :class:`FrameInstances` (the thing masks of a frame as pycocotools
RLE, each with a track id and a class) for the ground truth and for the prediction. The
similarity of a ground-truth and a predicted mask is their mask IoU (pycocotools, as
TrackEval's MOTS datasets compute it), and the scores come from TrackEval's own metric
classes (``HOTA``, ``Identity``, ``CLEAR``) fed the per-frame data dict they expect, so the
numbers mean exactly what they mean in published tables.

Class-aware the way TrackEval scores KITTI MOTS and BDD: each class is evaluated on its own
(ground truth and predictions of that class only), and the (sequence, class) results are
combined detection-averaged (TrackEval's ``combine_sequences``, what it reports as
``cls_comb_det_av``). A thing predicted with the wrong class is a miss plus a false positive.

MOTS text files (``frame track_id class_id height width rle``, one line per mask, the
format of KITTI MOTS / MOTSChallenge that TrackEval reads) go both ways with
:func:`read_mots` / :func:`write_mots`, so outside data and outside evaluators meet ours.
Ignore regions (KITTI's class 10) get no special treatment here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from tokenmask_ros.sequence_io import read_mots as parse_mots

#: Mask IoU a match needs for IDF1 and the CLEAR counts (ID switches); HOTA sweeps 0.05..0.95.
MATCH_THRESHOLD = 0.5

__all__ = ['MATCH_THRESHOLD', 'FrameInstances', 'TrackingScores', 'class_data',
           'frame_from_panoptic', 'frame_from_prediction', 'read_mots', 'score_sequences',
           'sequence_results', 'summarise', 'write_mots']


@dataclass(frozen=True)
class FrameInstances:
    """The thing masks of one frame: ``ids`` (track ids, unique per class), ``classes``,
    ``masks`` (pycocotools RLE dicts, one per id) and the frame ``size`` (height, width)."""

    ids: np.ndarray
    classes: np.ndarray
    masks: tuple[dict, ...]
    size: tuple[int, int]

    def __post_init__(self):
        if not (len(self.ids) == len(self.classes) == len(self.masks)):
            raise ValueError(f'{len(self.ids)} ids, {len(self.classes)} classes and '
                             f'{len(self.masks)} masks: expected one of each per instance')
        pairs = np.stack([self.ids, self.classes], 1) if len(self.ids) else np.zeros((0, 2))
        if len(np.unique(pairs, axis=0)) != len(pairs):
            raise ValueError('a track id repeats within one class in one frame: ids '
                             f'{self.ids.tolist()}, classes {self.classes.tolist()}')

    @classmethod
    def empty(cls, size: tuple[int, int]) -> FrameInstances:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), (), tuple(size))


def frame_from_panoptic(panoptic: np.ndarray, instances: Mapping[int, tuple[int, int]]
                        ) -> FrameInstances:
    """The instances of a panoptic id map: ``instances`` maps a panoptic id to its
    ``(track id, class id)``; ids not in it (stuff, void) are not instances."""
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2:
        raise ValueError(f'expected an (H, W) panoptic map, got shape {panoptic.shape}')
    size = (int(panoptic.shape[0]), int(panoptic.shape[1]))
    present = np.intersect1d(np.unique(panoptic), np.fromiter(instances, np.int64))
    if present.size == 0:
        return FrameInstances.empty(size)
    # One (H, W, N) Fortran-ordered stack, encoded by pycocotools in one call.
    stack = np.asfortranarray((panoptic[..., None] == present).astype(np.uint8))
    masks = tuple(mask_utils.encode(stack))
    pairs = np.array([instances[int(p)] for p in present], np.int64).reshape(-1, 2)
    return FrameInstances(pairs[:, 0], pairs[:, 1], masks, size)


def frame_from_prediction(prediction) -> FrameInstances:
    """The thing segments of a ``Prediction`` (tokenmask_ros.model.postprocess): the panoptic
    id is the instance id (class * label_divisor + instance, unique across classes)."""
    things = {int(s.id): (int(s.id), int(s.class_id)) for s in prediction.segments
              if s.is_thing}
    return frame_from_panoptic(prediction.panoptic, things)


def _iou(gt: FrameInstances, pred: FrameInstances) -> np.ndarray:
    """(num gt, num pred) mask IoU."""
    if len(gt.masks) == 0 or len(pred.masks) == 0:
        return np.zeros((len(gt.masks), len(pred.masks)))
    if gt.size != pred.size:
        raise ValueError(f'ground truth is {gt.size[1]}x{gt.size[0]} but the prediction is '
                         f'{pred.size[1]}x{pred.size[0]} (width x height)')
    ious = mask_utils.iou(list(pred.masks), list(gt.masks), [0] * len(gt.masks))
    return np.asarray(ious, np.float64).reshape(len(pred.masks), len(gt.masks)).T


def _contiguous(ids_per_frame: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Ids renumbered 0..K-1 over the sequence (TrackEval indexes arrays with them)."""
    everything = np.unique(np.concatenate(ids_per_frame)) if ids_per_frame else np.zeros(0)
    return [np.searchsorted(everything, ids).astype(int) for ids in ids_per_frame], len(everything)


def class_data(gt: Sequence[FrameInstances], pred: Sequence[FrameInstances],
               class_id: int) -> dict:
    """TrackEval's per-sequence data dict for one class (``eval_sequence`` of its metrics)."""
    if len(gt) != len(pred):
        raise ValueError(f'{len(gt)} ground-truth frames but {len(pred)} predicted frames')
    gt_ids, pred_ids, similarity = [], [], []
    for g, p in zip(gt, pred, strict=True):
        gk, pk = g.classes == class_id, p.classes == class_id
        gt_ids.append(g.ids[gk])
        pred_ids.append(p.ids[pk])
        similarity.append(_iou(g, p)[np.ix_(gk, pk)])
    gt_ids, num_gt_ids = _contiguous(gt_ids)
    pred_ids, num_pred_ids = _contiguous(pred_ids)
    return {
        'gt_ids': gt_ids, 'tracker_ids': pred_ids, 'similarity_scores': similarity,
        'num_gt_ids': num_gt_ids, 'num_tracker_ids': num_pred_ids,
        'num_gt_dets': int(sum(len(i) for i in gt_ids)),
        'num_tracker_dets': int(sum(len(i) for i in pred_ids)),
        'num_timesteps': len(gt), 'seq': f'class {class_id}',
    }


def _metrics():
    # Imported here: trackeval's package import is slow-ish and --help must not wait for it.
    from trackeval.metrics import CLEAR, HOTA, Identity

    config = {'THRESHOLD': MATCH_THRESHOLD, 'PRINT_CONFIG': False}
    return {'HOTA': HOTA(), 'Identity': Identity(config), 'CLEAR': CLEAR(config)}


def sequence_results(gt: Sequence[FrameInstances], pred: Sequence[FrameInstances]
                     ) -> list[dict[str, dict]]:
    """TrackEval's raw results, one ``{metric name: result}`` per class present in either."""
    classes = np.unique(np.concatenate([f.classes for f in (*gt, *pred)] or [np.zeros(0)]))
    metrics = _metrics()
    out = []
    for class_id in classes.astype(int):
        data = class_data(gt, pred, int(class_id))
        out.append({name: metric.eval_sequence(data) for name, metric in metrics.items()})
    return out


@dataclass(frozen=True)
class TrackingScores:
    """Combined scores, in percent (HOTA, DetA, AssA, LocA averaged over TrackEval's 19
    IoU thresholds 0.05..0.95; IDF1 and MOTA at IoU 0.5) and counts."""

    hota: float
    deta: float
    assa: float
    loca: float
    idf1: float
    mota: float
    id_switches: int
    gt_dets: int
    pred_dets: int

    def as_dict(self) -> dict[str, float | int]:
        return {'HOTA': self.hota, 'DetA': self.deta, 'AssA': self.assa, 'LocA': self.loca,
                'IDF1': self.idf1, 'MOTA': self.mota, 'ID switches': self.id_switches,
                'GT masks': self.gt_dets, 'predicted masks': self.pred_dets}


def summarise(results: Iterable[dict[str, dict]]) -> TrackingScores:
    """Detection-averaged combination of (sequence, class) results from
    :func:`sequence_results` (TrackEval's ``combine_sequences``)."""
    results = list(results)
    metrics = _metrics()
    if not results:
        return TrackingScores(*(math.nan,) * 6, 0, 0, 0)
    combined = {name: metric.combine_sequences({i: r[name] for i, r in enumerate(results)})
                for name, metric in metrics.items()}
    hota, identity, clear = combined['HOTA'], combined['Identity'], combined['CLEAR']
    tp, fn, fp = (int(hota[k][0]) for k in ('HOTA_TP', 'HOTA_FN', 'HOTA_FP'))
    gt_dets, pred_dets = tp + fn, tp + fp  # at alpha 0.05: every det is TP, FN or FP

    def pct(value) -> float:
        return 100.0 * float(np.mean(value))

    return TrackingScores(pct(hota['HOTA']), pct(hota['DetA']), pct(hota['AssA']),
                          pct(hota['LocA']), pct(identity['IDF1']), pct(clear['MOTA']),
                          int(clear['IDSW']), gt_dets, pred_dets)


def score_sequences(pairs: Iterable[tuple[Sequence[FrameInstances], Sequence[FrameInstances]]]
                    ) -> TrackingScores:
    """Scores of (ground truth, prediction) sequences taken together."""
    return summarise(r for gt, pred in pairs for r in sequence_results(gt, pred))


# --- MOTS text files ----------------------------------------------------------------------

def write_mots(path: str | Path, frames: Sequence[FrameInstances], first_frame: int = 0
               ) -> None:
    """``frame track_id class_id height width rle`` per mask, frames numbered from
    ``first_frame`` (0 for KITTI MOTS, 1 for MOTSChallenge)."""
    lines = []
    for t, frame in enumerate(frames):
        height, width = frame.size
        for track, cls, rle in zip(frame.ids, frame.classes, frame.masks, strict=True):
            counts = rle['counts']
            counts = counts.decode('ascii') if isinstance(counts, bytes) else counts
            lines.append(f'{t + first_frame} {int(track)} {int(cls)} {height} {width} {counts}')
    Path(path).write_text(''.join(line + '\n' for line in lines))


def read_mots(path: str | Path, num_frames: int | None = None, first_frame: int = 0,
              size: tuple[int, int] | None = None) -> list[FrameInstances]:
    """The frames of a MOTS text file; ``num_frames`` (default: the last frame named + 1)
    adds frames without masks at the end, ``size`` (height, width) is needed only when no
    line gives it. One-line ``ValueError`` naming the file and line for malformed input."""
    path = Path(path)
    by_frame: dict[int, list[tuple[int, int, dict]]] = {}
    for t, entries in sorted(parse_mots(path).items()):
        where = f'{path}: frame {t}'
        if t < first_frame or (num_frames is not None and t >= first_frame + num_frames):
            raise ValueError(f'{where} outside {first_frame}..'
                             f'{first_frame + (num_frames or 0) - 1 if num_frames else "..."}')
        for *_, rle in entries:
            height, width = rle['size']
            if size is None:
                size = (height, width)
            elif (height, width) != tuple(size):
                raise ValueError(f'{where}: mask is {width}x{height} but the sequence is '
                                 f'{size[1]}x{size[0]}')
            if int(mask_utils.area(rle)) > height * width:
                raise ValueError(f'{where}: RLE covers more than {width}x{height} pixels')
        by_frame[t - first_frame] = entries
    if num_frames is None:
        num_frames = max(by_frame, default=-1) + 1
    if size is None:
        if num_frames:
            raise ValueError(f'{path}: no masks, so the frame size must be given')
        size = (0, 0)
    frames = []
    for t in range(num_frames):
        entries = by_frame.get(t, [])
        if not entries:
            frames.append(FrameInstances.empty(size))
            continue
        ids = np.array([e[0] for e in entries], np.int64)
        classes = np.array([e[1] for e in entries], np.int64)
        if len(np.unique(np.stack([ids, classes], 1), axis=0)) != len(ids):
            raise ValueError(f'{path}: a track id repeats in frame {t + first_frame}')
        rles = [e[2] for e in entries]
        union = int(mask_utils.area(mask_utils.merge(rles, intersect=False)))
        if union != sum(int(mask_utils.area(r)) for r in rles):
            raise ValueError(f'{path}: masks overlap in frame {t + first_frame} (MOTS masks '
                             'must be disjoint)')
        frames.append(FrameInstances(ids, classes, tuple(rles), tuple(size)))
    return frames
