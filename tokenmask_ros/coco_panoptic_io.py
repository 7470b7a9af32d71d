"""Panoptic predictions as COCO-panoptic files (the format panopticapi and the datasets use).

Shared by ``tokenmask predict`` and ``training/evaluate.py``; plain NumPy + OpenCV, no
torch, no ROS. The format:

* one PNG per image whose pixels encode a segment id as ``R + 256 G + 256^2 B``
  (:func:`id2rgb` / :func:`rgb2id`), 0 = VOID (no segment);
* a JSON file with ``images[]`` (``id``, ``file_name``, ``width``, ``height``),
  ``annotations[]`` (``image_id``, ``file_name`` of the PNG, ``segments_info[]``) and
  ``categories[]`` (``id``, ``name``, ``isthing``, ``color``).

Our panoptic ids (``class * label_divisor + instance``, ``docs/architecture.md``) may be 0 (class
0, stuff), which COCO reserves for VOID, so the segments of each image are renumbered
``1..N`` in increasing panoptic-id order; each ``segments_info`` entry keeps the original
id as the extra field ``panoptic_id`` (extra fields are ignored by COCO tools).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tokenmask_ros.defaults import LABEL_DIVISOR
from tokenmask_ros.image_io import write_rgb
from tokenmask_ros.panoptic_types import segment_areas_and_boxes

VOID_ID = 0

__all__ = ['VOID_ID', 'PanopticWriter', 'categories_json', 'encode_panoptic', 'id2rgb',
           'rgb2id', 'write_png']


def rgb2id(png: np.ndarray) -> np.ndarray:
    """Segment ids ``R + 256 G + 256^2 B`` of an ``(H, W, 3)`` RGB array, as int32."""
    if png.ndim != 3 or png.shape[2] < 3:
        raise ValueError(f'expected an (H, W, 3) RGB array, got shape {png.shape}')
    png = png[..., :3].astype(np.int32)
    return png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb2id`: ``(H, W)`` ids (0 .. 2^24-1) to ``(H, W, 3)`` uint8 RGB."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError('segment ids must lie in 0 .. 2^24 - 1 to fit an RGB PNG')
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)


def encode_panoptic(panoptic: np.ndarray, category_ids: Sequence[int],
                    label_divisor: int = LABEL_DIVISOR, segments=()
                    ) -> tuple[np.ndarray, list[dict]]:
    """``(file ids (H, W) int32, segments_info)`` of one panoptic map.

    ``panoptic``: our ids (VOID = -1); ``category_ids[c]``: the file's category id of class
    index ``c`` (pixels of classes without one become VOID). Areas and boxes are counted on
    the map itself (boxes inclusive, ``[x, y, width, height]``); ``segments`` (objects with
    ``id`` and ``score``, e.g. :attr:`Prediction.segments`) add a ``score`` to the matching
    entries.
    """
    panoptic = np.asarray(panoptic).astype(np.int64)
    category_ids = np.asarray(category_ids, np.int64)
    valid = (panoptic >= 0) & (panoptic < len(category_ids) * label_divisor)
    ids = np.unique(panoptic[valid])
    file_ids = np.zeros(panoptic.shape, np.int32)
    if len(ids):
        file_ids[valid] = np.searchsorted(ids, panoptic[valid]) + 1
    areas, boxes = segment_areas_and_boxes(panoptic, ids)
    scores = {int(s.id): float(s.score) for s in segments}
    info = []
    for index, (panoptic_id, area, box) in enumerate(zip(ids, areas, boxes, strict=True)):
        entry = {'id': index + 1, 'category_id': int(category_ids[panoptic_id // label_divisor]),
                 'area': int(area), 'bbox': [int(v) for v in box], 'iscrowd': 0,
                 'panoptic_id': int(panoptic_id)}
        if int(panoptic_id) in scores:
            entry['score'] = round(scores[int(panoptic_id)], 5)
        info.append(entry)
    return file_ids, info


def write_png(path: str | Path, file_ids: np.ndarray) -> Path:
    """Write file segment ids as a COCO-panoptic RGB PNG (OSError when it cannot)."""
    return write_rgb(path, id2rgb(file_ids))


def categories_json(names: Sequence[str], is_thing: Sequence[bool],
                    colors: Sequence[Sequence[int]],
                    category_ids: Sequence[int] | None = None) -> list[dict]:
    """The ``categories`` list; ``category_ids`` default to the class indices ``0..C-1``."""
    if category_ids is None:
        category_ids = range(len(names))
    return [{'id': int(i), 'name': str(n), 'isthing': int(bool(t)),
             'color': [int(v) for v in c]}
            for i, n, t, c in zip(category_ids, names, is_thing, colors, strict=True)]


class PanopticWriter:
    """Collects predictions into ``<folder>/<panoptic_subdir>/*.png`` + one JSON file.

    >>> writer = PanopticWriter('out', categories)
    >>> writer.add(prediction, 'frame_000001', image_id=1)
    >>> writer.write_json('out/predictions.json')
    """

    def __init__(self, folder: str | Path, categories: list[dict],
                 label_divisor: int = LABEL_DIVISOR, panoptic_subdir: str = 'panoptic'):
        self.panoptic_dir = Path(folder) / panoptic_subdir
        self.categories = categories
        self.category_ids = [c['id'] for c in categories]
        self.label_divisor = label_divisor
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, prediction, name: str, image_id, **image_fields) -> dict:
        """Write the PNG ``<name>.png`` of ``prediction``; return its annotation entry.

        ``image_fields`` go into the ``images`` entry (``file_name``, the image's own name,
        defaults to the PNG's; extra keys such as the source path are kept).
        """
        panoptic = np.asarray(prediction.panoptic)
        file_ids, info = encode_panoptic(panoptic, self.category_ids, self.label_divisor,
                                         getattr(prediction, 'segments', ()))
        png_name = f'{name}.png'
        write_png(self.panoptic_dir / png_name, file_ids)
        annotation = {'image_id': image_id, 'file_name': png_name, 'segments_info': info}
        self.annotations.append(annotation)
        self.images.append({'id': image_id, 'file_name': png_name,
                            'height': int(panoptic.shape[0]), 'width': int(panoptic.shape[1]),
                            **image_fields})
        return annotation

    def to_json(self, **extra) -> dict:
        return {**extra, 'images': self.images, 'annotations': self.annotations,
                'categories': self.categories}

    def write_json(self, path: str | Path, **extra) -> Path:
        """Write the JSON file (``extra`` top-level keys first, e.g. ``info``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(**extra)))
        return path
