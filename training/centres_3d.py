"""3D centre error of segment boxes on synthetic RGB-D sequences (library of evaluate_3d.py).

For every ground-truth thing of every frame, the error is the distance between its true
centre (``SequenceFrame.centres``) and the centre of a 3D box from
:func:`tokenmask_ros.depth3d.segment_boxes_3d`, divided by the thing's distance to the
camera. Boxes come either from the ground-truth masks (what the depth maths alone gets
right) or from a model's predicted segments matched to the truth by mask IoU >= 0.5 (the
standard panoptic match, so each thing has at most one predicted partner).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tokenmask_ros.depth3d import box_stride, segment_boxes_3d

MATCH_IOU = 0.5


@dataclass(frozen=True)
class CentreError:
    """One ground-truth thing's centre error: absolute (m) and relative to its distance."""

    source: str          # 'ground truth' or 'model'
    distance: float      # metres from the camera to the true centre
    error: float         # metres

    @property
    def relative(self) -> float:
        return self.error / self.distance


def truth_errors(frame) -> list[CentreError]:
    """Centre errors of the boxes computed from the ground-truth masks of one frame."""
    boxes = segment_boxes_3d(frame.panoptic, frame.depth, frame.camera,
                             stride=box_stride(*frame.panoptic.shape))
    return _errors('ground truth', frame, {pid: pid for pid in frame.centres}, boxes)


def model_errors(frame, panoptic: np.ndarray) -> list[CentreError]:
    """Centre errors of the boxes of predicted segments matched to the truth (IoU >= 0.5)."""
    boxes = segment_boxes_3d(panoptic, frame.depth, frame.camera,
                             stride=box_stride(*panoptic.shape))
    return _errors('model', frame, match_segments(frame.panoptic, panoptic, frame.centres),
                   boxes)


def match_segments(truth: np.ndarray, predicted: np.ndarray, truth_ids: Iterable[int]
                   ) -> dict[int, int]:
    """Truth id -> predicted id with mask IoU >= 0.5 (unique by construction), class-agnostic.

    All intersections come from one np.unique over the paired ids (no per-pixel loop).
    """
    pairs, counts = np.unique(np.stack([truth.ravel(), predicted.ravel()]), axis=1,
                              return_counts=True)
    truth_area = dict(zip(*np.unique(truth, return_counts=True), strict=True))
    pred_area = dict(zip(*np.unique(predicted, return_counts=True), strict=True))
    wanted = {int(t) for t in truth_ids}
    matches = {}
    for (t, p), inter in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        if t in wanted and p >= 0 and inter / (truth_area[t] + pred_area[p] - inter) >= MATCH_IOU:
            matches[t] = p
    return matches


def _errors(source, frame, matches, boxes) -> list[CentreError]:
    out = []
    for truth_id, pred_id in matches.items():
        box = boxes.get(pred_id)
        if box is None or truth_id not in frame.centres:
            continue
        centre = np.asarray(frame.centres[truth_id], np.float64)
        error = float(np.linalg.norm(np.asarray(box.center) - centre))
        out.append(CentreError(source, float(np.linalg.norm(centre)), error))
    return out


def summarise(errors: list[CentreError]) -> dict[str, float]:
    """Median / p90 relative error (%), median absolute error (cm), share within 2 and 5 %."""
    if not errors:
        return {'things': 0}
    relative = np.array([e.relative for e in errors]) * 100
    absolute = np.array([e.error for e in errors]) * 100
    return {'things': len(errors), 'median %': float(np.median(relative)),
            'p90 %': float(np.percentile(relative, 90)),
            'median cm': float(np.median(absolute)),
            'within 2 %': float(np.mean(relative <= 2) * 100),
            'within 5 %': float(np.mean(relative <= 5) * 100)}
