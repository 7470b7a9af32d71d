"""COCO-panoptic format reader (COCO, ADE20K panoptic, Cityscapes panoptic, synthetic).

The format (panopticapi): a folder of images, a folder of PNGs whose pixels encode a
segment id as ``R + 256 * G + 256**2 * B`` (0 = VOID), and a JSON file with

* ``images[]``: ``id``, ``file_name``, ``width``, ``height``;
* ``annotations[]``: ``image_id``, ``file_name`` (the PNG), ``segments_info[]`` with ``id``,
  ``category_id``, ``iscrowd``, ``bbox``, ``area``;
* ``categories[]``: ``id``, ``name``, ``isthing``, ``color``.

Category ids may be arbitrary (COCO's run 1..200 with gaps): the reader maps them to
contiguous class indices ``0..C-1`` in increasing id order and keeps the table
(``classes``, ``thing_classes``, ``stuff_classes``, ``category_to_class``). Cityscapes
panoptic as written by cityscapesscripts' ``createPanopticImgs`` is this format too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from tokenmask_ros.coco_panoptic_io import rgb2id
from training.datasets.common import (
    DatasetError,
    make_sample,
    read_png_unchanged,
    read_rgb,
    require_dir,
    require_file,
)


@dataclass(frozen=True)
class DatasetClass:
    """One class of a dataset: contiguous ``index``, the file's ``category_id``, and its looks."""

    index: int
    category_id: int
    name: str
    is_thing: bool
    color: tuple[int, int, int]


def _need(mapping: dict, key: str, where: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise DatasetError(f'{where} has no {key!r} entry')
    return mapping[key]


def parse_categories(categories: list[dict], where: str = 'categories') -> list[DatasetClass]:
    """Contiguous classes from a COCO ``categories`` list, ordered by category id."""
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f'{where} must be a non-empty list')
    classes, seen = [], set()
    for entry in sorted(categories, key=lambda c: _need(c, 'id', where + '[]')):
        category_id = int(entry['id'])
        if category_id in seen:
            raise DatasetError(f'{where}: category id {category_id} appears twice')
        seen.add(category_id)
        name = str(_need(entry, 'name', f'{where} id {category_id}'))
        is_thing = bool(_need(entry, 'isthing', f'{where} id {category_id}'))
        color = tuple(int(v) for v in entry.get('color', (0, 0, 0)))[:3]
        classes.append(DatasetClass(len(classes), category_id, name, is_thing, color))
    return classes


class CocoPanoptic(Dataset):
    """Panoptic samples ``(image, target)`` from a COCO-panoptic folder triple.

    ``image`` is a ``tv_tensors.Image`` uint8 ``[3, H, W]``; ``target`` holds ``masks``
    (``tv_tensors.Mask`` bool ``[N, H, W]``), ``labels`` (int64 contiguous class indices),
    ``is_crowd`` (bool), ``segment_ids`` (the PNG ids), ``image_id``, ``file_name`` and
    ``orig_size``. VOID pixels (id 0, and ids that segments_info does not list) belong to no
    mask. ``transforms(image, target)`` runs last.
    """

    def __init__(self, images_dir: str | Path, panoptic_dir: str | Path, json_file: str | Path,
                 transforms: Callable | None = None):
        self.images_dir = require_dir(images_dir, 'image')
        self.panoptic_dir = require_dir(panoptic_dir, 'panoptic PNG')
        self.json_file = require_file(json_file, 'panoptic JSON file')
        self.transforms = transforms
        try:
            data = json.loads(self.json_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetError(f'{self.json_file} is not valid JSON: {error}') from None
        where = str(self.json_file)
        self.classes = parse_categories(_need(data, 'categories', where), f'{where} categories')
        self.category_to_class = {c.category_id: c.index for c in self.classes}
        self.thing_classes = tuple(c.index for c in self.classes if c.is_thing)
        self.stuff_classes = tuple(c.index for c in self.classes if not c.is_thing)
        images = {}
        for entry in _need(data, 'images', where):
            image_id = _need(entry, 'id', f'{where} images[]')
            images[image_id] = _need(entry, 'file_name', f'{where} image {image_id}')
        self.records = []
        for entry in _need(data, 'annotations', where):
            image_id = _need(entry, 'image_id', f'{where} annotations[]')
            if image_id not in images:
                raise DatasetError(f'{where}: annotation for image id {image_id} has no '
                                   'entry in images[]')
            segments = _need(entry, 'segments_info', f'{where} annotation of image {image_id}')
            ids, labels, crowd = [], [], []
            for segment in segments:
                category_id = _need(segment, 'category_id', f'{where} image {image_id} segment')
                if category_id not in self.category_to_class:
                    raise DatasetError(f'{where}: image {image_id} uses category id '
                                       f'{category_id}, which is not in categories[]')
                ids.append(int(_need(segment, 'id', f'{where} image {image_id} segment')))
                labels.append(self.category_to_class[category_id])
                crowd.append(bool(segment.get('iscrowd', 0)))
            self.records.append({
                'image_id': image_id,
                'image_file': images[image_id],
                'png_file': _need(entry, 'file_name', f'{where} annotation of image {image_id}'),
                'segment_ids': np.array(ids, np.int64),
                'labels': np.array(labels, np.int64),
                'is_crowd': np.array(crowd, bool),
            })

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """The raw arrays: RGB image ``(H, W, 3)``, masks ``(N, H, W)`` and the record."""
        record = self.records[index]
        image = read_rgb(self.images_dir / record['image_file'])
        png_path = self.panoptic_dir / record['png_file']
        png = read_png_unchanged(png_path, 'panoptic PNG')
        if png.ndim != 3 or png.shape[2] < 3:
            raise DatasetError(f'panoptic PNG {png_path} is not an RGB image '
                               f'(shape {png.shape})')
        ids = rgb2id(png[..., 2::-1])  # OpenCV gives BGR(A)
        if ids.shape != image.shape[:2]:
            raise DatasetError(f'panoptic PNG {png_path} is {ids.shape[1]}x{ids.shape[0]} but '
                               f'its image is {image.shape[1]}x{image.shape[0]}')
        segment_ids = record['segment_ids']
        masks = ids[None] == segment_ids[:, None, None]
        present = masks.any((1, 2))
        if not present.all():
            missing = segment_ids[~present].tolist()
            raise DatasetError(f'panoptic PNG {png_path} lacks segment id(s) {missing} listed '
                               'in segments_info')
        return image, masks, record

    def __getitem__(self, index: int):
        image, masks, record = self.load(index)
        sample = make_sample(image, masks, record['labels'], record['is_crowd'],
                             segment_ids=record['segment_ids'].copy(),
                             image_id=record['image_id'], file_name=record['image_file'])
        return self.transforms(*sample) if self.transforms is not None else sample
