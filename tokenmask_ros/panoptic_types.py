"""Panoptic result types and their NumPy helpers, free of PyTorch and ROS.

:class:`Prediction` and :class:`Segment` are what the decoder (``model/postprocess.py``,
which re-exports them) produces and what the tracker, the 3D code and the node consume;
living here, NumPy-only modules can use them without loading PyTorch.
Conventions: ``docs/architecture.md``, "Outputs".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tokenmask_ros.defaults import LABEL_DIVISOR

VOID = -1


def semantic_void(num_classes: int) -> int:
    """The semantic map's value for "no class": 255 (uint8) up to 255 classes, else 65535."""
    return 255 if num_classes <= 255 else 65535


def semantic_dtype(num_classes: int) -> type:
    """The semantic map's dtype: uint8 up to 255 classes, else uint16."""
    return np.uint8 if num_classes <= 255 else np.uint16


@dataclass(frozen=True)
class Segment:
    """One panoptic segment. ``bbox`` is (x, y, width, height) in pixels, inclusive extents."""

    id: int
    class_id: int
    score: float
    bbox: tuple[int, int, int, int]
    area: int
    is_thing: bool


@dataclass
class Prediction:
    """Panoptic result for one image at the resolution it was decoded at.

    ``panoptic`` (H, W) int32 ids (VOID = -1); ``semantic`` (H, W) class ids, uint8 with 255
    for void (uint16 / 65535 beyond 255 classes, :func:`semantic_void`); ``segments`` in
    id order.
    """

    panoptic: np.ndarray
    semantic: np.ndarray
    segments: list[Segment] = field(default_factory=list)
    label_divisor: int = LABEL_DIVISOR


def segment_areas_and_boxes(label_map: np.ndarray, ids: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts and (x, y, w, h) boxes of each of the sorted ``ids`` in ``label_map``.

    Vectorised: one ``bincount`` each for areas, occupied rows and occupied columns. Boxes
    are inclusive pixel extents (a single pixel is 1 x 1); an absent id gets area 0 and box
    (0, 0, 0, 0).
    """
    ids = np.asarray(ids)
    height, width = label_map.shape
    index = np.searchsorted(ids, label_map.ravel()) if len(ids) else np.zeros(0, int)
    index = np.clip(index, 0, max(len(ids) - 1, 0))
    present = (ids[index] == label_map.ravel()) if len(ids) else np.zeros(0, bool)
    index = index[present]
    pixel = np.flatnonzero(present)
    rows, cols = pixel // width, pixel % width
    count = len(ids)
    areas = np.bincount(index, minlength=count)
    row_hit = np.bincount(index * height + rows, minlength=count * height).reshape(count, height)
    col_hit = np.bincount(index * width + cols, minlength=count * width).reshape(count, width)
    row_hit, col_hit = row_hit > 0, col_hit > 0
    y0 = row_hit.argmax(1)
    y1 = height - 1 - row_hit[:, ::-1].argmax(1)
    x0 = col_hit.argmax(1)
    x1 = width - 1 - col_hit[:, ::-1].argmax(1)
    boxes = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)
    boxes[areas == 0] = 0
    return areas, boxes
