"""What every dataset reader shares: image decoding, the sample format, batching.

A sample is ``(image, target)`` as torchvision's ``transforms.v2`` expects:

* ``image``: ``tv_tensors.Image`` uint8 ``[3, H, W]`` (RGB);
* ``target['masks']``: ``tv_tensors.Mask`` bool ``[N, H, W]``, one per segment;
* ``target['labels']``: int64 ``[N]`` contiguous class indices (``0..num_classes-1``);
* ``target['is_crowd']``: bool ``[N]``;
* plus bookkeeping (``image_id``, ``file_name``, ``orig_size``) that transforms pass through.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision import tv_tensors

IGNORE_INDEX = 255


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete or inconsistent (the message says which file)."""


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f'{what} folder not found: {path}')
    return path


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} not found: {path}')
    return path


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as an ``(H, W, 3)`` uint8 RGB array (grey and alpha images converted)."""
    path = require_file(path, 'image file')
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f'cannot decode image {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_png_unchanged(path: str | Path, what: str) -> np.ndarray:
    path = require_file(path, what)
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DatasetError(f'cannot decode {what} {path}')
    return data


def make_sample(image: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                is_crowd: np.ndarray, **extra) -> tuple[tv_tensors.Image, dict]:
    """Wrap NumPy arrays (``image`` HWC RGB uint8, ``masks`` NHW bool) as a sample."""
    height, width = image.shape[:2]
    target = {
        'masks': tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))),
        'labels': torch.as_tensor(labels, dtype=torch.int64),
        'is_crowd': torch.as_tensor(is_crowd, dtype=torch.bool),
        'orig_size': (height, width),
        **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
           for k, v in extra.items()},
    }
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return tv_tensors.Image(pixels), target


def masks_to_semantic(masks: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """A ``[H, W]`` class map from ``[N, H, W]`` masks; uncovered pixels get ``ignore_index``.

    Where masks overlap the later one wins (panoptic masks do not overlap). The map is
    uint8 when every label and ``ignore_index`` fit, int64 otherwise.
    """
    masks = torch.as_tensor(masks, dtype=torch.bool)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if masks.ndim != 3 or labels.shape != masks.shape[:1]:
        raise ValueError(f'expected masks [N, H, W] and labels [N], got {tuple(masks.shape)} '
                         f'and {tuple(labels.shape)}')
    small = ignore_index <= 255 and (labels.numel() == 0 or int(labels.max()) <= 255)
    dtype = torch.uint8 if small else torch.int64
    semantic = torch.full(masks.shape[1:], ignore_index, dtype=dtype)
    if len(labels):
        covered = masks.any(0)
        # Index of the last mask covering each pixel: argmax over the reversed stack.
        last = masks.shape[0] - 1 - masks.flip(0).to(torch.uint8).argmax(0)
        semantic[covered] = labels.to(dtype)[last[covered]]
    return semantic


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack same-sized images into ``[B, 3, H, W]``; targets stay a list (N varies)."""
    images = [image for image, _ in batch]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(f'cannot batch images of different sizes {sorted(shapes)}: '
                         'use a transform that crops or pads to one size')
    return torch.stack([image.as_subclass(torch.Tensor) for image in images]), \
        [target for _, target in batch]
