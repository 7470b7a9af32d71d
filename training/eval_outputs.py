"""Files ``evaluate.py`` writes besides metrics.json: COCO-panoptic PNGs and annotations,
ADE20K-style semantic PNGs and the image | ground truth | prediction grid."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from tokenmask_ros.coco_panoptic_io import encode_panoptic, write_png
from tokenmask_ros.defaults import LABEL_DIVISOR
from tokenmask_ros.image_io import write_bgr, write_rgb
from tokenmask_ros.model.postprocess import VOID
from tokenmask_ros.viz import colorize_panoptic, overlay
from training.datasets.common import IGNORE_INDEX
from training.eval_data import EvalClass


def coco_annotation(prediction, classes: list[EvalClass], image_id, file_name: str,
                    panoptic_dir: Path, label_divisor: int = LABEL_DIVISOR) -> dict:
    """Write ``prediction`` as a COCO-panoptic PNG; return its ``annotations[]`` entry.

    The encoding is :mod:`tokenmask_ros.coco_panoptic_io`'s (also ``tokenmask predict``'s):
    file segment ids ``1..N`` per image (0 = VOID) with the dataset's category ids, our
    panoptic id kept as ``panoptic_id``, and the segment score where the prediction has one.
    """
    file_ids, segments = encode_panoptic(prediction.panoptic,
                                         [c.category_id for c in classes], label_divisor,
                                         getattr(prediction, 'segments', ()))
    png_name = Path(file_name).with_suffix('.png').name
    write_png(panoptic_dir / png_name, file_ids)
    image_id = image_id.item() if isinstance(image_id, torch.Tensor) else image_id
    return {'image_id': image_id, 'file_name': png_name, 'segments_info': segments}


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((22, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def save_grid(path: Path, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
              colors: np.ndarray, label_divisor: int = LABEL_DIVISOR,
              panel_width: int = 320) -> Path:
    """``rows`` of (RGB image, ground-truth ids, predicted ids) as image | GT | prediction."""
    lines = []
    for image, gt, pred in rows:
        panels = [image, overlay(image, colorize_panoptic(gt, colors, label_divisor)),
                  overlay(image, colorize_panoptic(pred, colors, label_divisor))]
        height = max(1, round(image.shape[0] * panel_width / image.shape[1]))
        panels = [cv2.resize(p, (panel_width, height), interpolation=cv2.INTER_NEAREST)
                  for p in panels]
        gap = np.full((height, 4, 3), 255, np.uint8)
        lines.append(np.hstack([panels[0], gap, panels[1], gap, panels[2]]))
        lines.append(np.full((4, lines[-1].shape[1], 3), 255, np.uint8))
    header = [_label(np.zeros((0, panel_width, 3), np.uint8), t)
              for t in ('image', 'ground truth', 'prediction')]
    gap = np.full((header[0].shape[0], 4, 3), 255, np.uint8)
    grid = np.vstack([np.hstack([header[0], gap, header[1], gap, header[2]]), *lines[:-1]])
    return write_rgb(path, grid)


def write_semantic_png(path: Path, semantic: np.ndarray) -> Path:
    """A class map as an ADE20K-style PNG: class + 1 (0 = none); uint8, uint16 past 254."""
    values = np.asarray(semantic).astype(np.int64) + 1
    values = values.astype(np.uint8 if values.max(initial=0) <= 255 else np.uint16)
    return write_bgr(path, values)  # one channel: no colour order to convert


def semantic_as_panoptic(semantic, label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    """A class map (``IGNORE_INDEX`` = none) as panoptic ids (stuff, instance 0) to plot."""
    semantic = np.asarray(semantic).astype(np.int64)
    return np.where(semantic == IGNORE_INDEX, VOID, semantic * label_divisor).astype(np.int32)

