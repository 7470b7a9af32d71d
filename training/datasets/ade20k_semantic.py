"""ADE20K SceneParsing (``ADEChallengeData2016``) reader for semantic segmentation.

Layout (as the official zip unpacks)::

    ADEChallengeData2016/
      images/{training,validation}/ADE_*.jpg
      annotations/{training,validation}/ADE_*.png   # uint8: 0 = unlabeled, 1..150 = classes
      objectInfo150.txt                             # optional: class names (tab separated)

Labels are shifted to ``0..149`` and ``0`` (unlabeled) becomes ``255`` (ignored), as in
mmseg's ``reduce_zero_label``. A sample has the panoptic reader's shape (one mask per class
present, ``is_crowd`` all false) plus ``target['semantic']``, the ``[H, W]`` uint8 label map.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.datasets.common import (
    IGNORE_INDEX,
    DatasetError,
    make_sample,
    read_png_unchanged,
    read_rgb,
    require_dir,
)

NUM_CLASSES = 150
SPLITS = {'training': 'training', 'train': 'training', 'validation': 'validation',
          'val': 'validation'}

# 0 -> 255, 1..150 -> 0..149, anything else (not in the release) -> 255.
_LUT = np.full(256, IGNORE_INDEX, np.uint8)
_LUT[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES, dtype=np.uint8)


def reduce_zero_label(annotation: np.ndarray) -> np.ndarray:
    """ADE20K annotation (0 unlabeled, 1..150) -> class map (0..149, 255 ignored)."""
    return _LUT[annotation]


def read_class_names(root: Path) -> list[str]:
    """Names from ``objectInfo150.txt`` (first name of each row) or ``class_000``.. fallbacks."""
    names = [f'class_{i:03d}' for i in range(NUM_CLASSES)]
    info = root / 'objectInfo150.txt'
    if not info.is_file():
        return names
    with info.open(newline='') as handle:
        rows = list(csv.reader(handle, delimiter='\t'))
    for row in rows[1:]:
        if len(row) >= 5 and row[0].strip().isdigit():
            index = int(row[0]) - 1
            if 0 <= index < NUM_CLASSES:
                names[index] = row[4].split(';')[0].strip()
    return names


class ADE20KSemantic(Dataset):
    """Semantic samples ``(image, target)`` of one split (``training``/``validation``)."""

    def __init__(self, root: str | Path, split: str = 'training',
                 transforms: Callable | None = None):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {sorted(SPLITS)}, got {split!r}')
        self.root = require_dir(root, 'ADE20K root (ADEChallengeData2016)')
        self.split = SPLITS[split]
        images_dir = require_dir(self.root / 'images' / self.split, 'ADE20K image')
        labels_dir = require_dir(self.root / 'annotations' / self.split, 'ADE20K annotation')
        self.transforms = transforms
        self.samples = []
        for image in sorted(images_dir.glob('*.jpg')):
            annotation = labels_dir / (image.stem + '.png')
            if not annotation.is_file():
                raise DatasetError(f'image {image} has no annotation {annotation}')
            self.samples.append((image, annotation))
        if not self.samples:
            raise DatasetError(f'no *.jpg images in {images_dir}')
        self.class_names = read_class_names(self.root)
        self.thing_classes: tuple[int, ...] = ()
        self.stuff_classes = tuple(range(NUM_CLASSES))

    num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB image ``(H, W, 3)`` and class map ``(H, W)`` uint8 (255 = ignore)."""
        image_path, label_path = self.samples[index]
        image = read_rgb(image_path)
        annotation = read_png_unchanged(label_path, 'ADE20K annotation')
        if annotation.ndim != 2 or annotation.dtype != np.uint8:
            raise DatasetError(f'annotation {label_path} must be a single-channel 8-bit PNG, '
                               f'got shape {annotation.shape} dtype {annotation.dtype}')
        if annotation.shape != image.shape[:2]:
            raise DatasetError(f'annotation {label_path} is {annotation.shape[::-1]} but its '
                               f'image is {image.shape[1::-1]}')
        return image, reduce_zero_label(annotation)

    def __getitem__(self, index: int):
        image, semantic = self.load(index)
        counts = np.bincount(semantic.ravel(), minlength=256)[:NUM_CLASSES]
        labels = np.flatnonzero(counts)
        masks = semantic[None] == labels[:, None, None].astype(np.uint8)
        sample = make_sample(image, masks, labels, np.zeros(len(labels), bool),
                             semantic=torch.from_numpy(semantic), image_id=index,
                             file_name=self.samples[index][0].name)
        return self.transforms(*sample) if self.transforms is not None else sample
