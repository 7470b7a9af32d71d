"""EoMT's augmentations on ``(image, target)`` samples, built on ``torchvision.transforms.v2``.

Training (EoMT order): drop crowd segments -> optional colour jitter -> horizontal flip ->
large-scale jitter (resize by ``min(size / H, size / W) * U(0.1, 2.0)``) -> pad bottom/right
to the crop size -> random crop. Image and masks go through the same v2 transforms in one
call (``tv_tensors.Image`` bilinear, ``tv_tensors.Mask`` nearest), so they stay aligned;
masks that no pixel of the crop keeps are dropped with their labels.

Evaluation (EoMT's inference preprocessing): resize so the longer side equals ``size``,
then pad bottom/right to ``size x size``. The masks stay at the original resolution (the
metrics compare there) unless ``transform_masks=True``; ``target['resized_size']`` says
which top-left part of the padded image holds the picture.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from training.datasets.common import IGNORE_INDEX, masks_to_semantic

# Target entries with one value per segment: filtered together with the masks.
PER_SEGMENT_KEYS = ('labels', 'is_crowd', 'segment_ids')


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f'size must be positive, got {size}')
    return height, width


class PadBottomRight(v2.Transform):
    """Zero-pad images and masks at the bottom and right to at least ``size`` (H, W)."""

    def __init__(self, size: int | tuple[int, int]):
        super().__init__()
        self.size = _pair(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {'padding': [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params['padding']):
            return inpt
        return self._call_kernel(F.pad, inpt, padding=params['padding'], fill=0)


def select_segments(target: dict, keep: torch.Tensor) -> dict:
    """A copy of ``target`` with only the segments where ``keep`` (bool ``[N]``) is true."""
    target = dict(target)
    target['masks'] = tv_tensors.wrap(target['masks'][keep], like=target['masks'])
    for key in PER_SEGMENT_KEYS:
        if key in target:
            target[key] = target[key][keep]
    return target


def drop_empty_masks(target: dict) -> dict:
    masks = target['masks']
    keep = masks.flatten(1).any(1) if masks.numel() else torch.zeros(len(masks), dtype=bool)
    return target if bool(keep.all()) else select_segments(target, keep)


def _refresh_semantic(target: dict) -> dict:
    if 'semantic' in target:
        semantic = masks_to_semantic(target['masks'], target['labels'], IGNORE_INDEX)
        target['semantic'] = semantic.to(target['semantic'].dtype)
    return target


class TrainTransform:
    """EoMT training augmentation to a fixed ``size`` (int or ``(H, W)``) crop.

    ``scale_range`` is (0.1, 2.0) for panoptic/instance and (0.5, 2.0) for semantic
    training in EoMT; ``color_jitter`` is on for ADE20K and Cityscapes there.
    """

    def __init__(self, size: int | tuple[int, int], scale_range: tuple[float, float] = (0.1, 2.0),
                 flip_prob: float = 0.5, color_jitter: bool = False, drop_crowd: bool = True):
        self.size = _pair(size)
        self.drop_crowd = drop_crowd
        self.color = v2.RandomApply([v2.ColorJitter(brightness=0.125, contrast=0.5,
                                                    saturation=0.5, hue=0.05)], p=0.8) \
            if color_jitter else None
        self.geometry = v2.Compose([
            v2.RandomHorizontalFlip(flip_prob),
            # ScaleJitter's target_size is (width, height), unlike the rest of v2.
            v2.ScaleJitter(target_size=self.size[::-1], scale_range=scale_range,
                           antialias=True),
            PadBottomRight(self.size),
            v2.RandomCrop(self.size),
        ])

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if self.drop_crowd and 'is_crowd' in target and bool(target['is_crowd'].any()):
            target = select_segments(target, ~target['is_crowd'])
        if self.color is not None:
            image = self.color(image)
        # Bool masks go through the resize as uint8 (interpolation kernels need numbers).
        target = dict(target, masks=tv_tensors.wrap(target['masks'].to(torch.uint8),
                                                    like=target['masks']))
        image, target = self.geometry(image, target)
        target['masks'] = tv_tensors.wrap(target['masks'].bool(), like=target['masks'])
        return image, _refresh_semantic(drop_empty_masks(target))


class EvalTransform:
    """Resize the longer side to ``size`` and pad bottom/right to ``size x size``."""

    def __init__(self, size: int, transform_masks: bool = False):
        self.size = int(size)
        self.transform_masks = transform_masks
        self.resize = v2.Resize(size=None, max_size=self.size, antialias=True)
        self.pad = PadBottomRight(self.size)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        target = dict(target)
        if self.transform_masks:
            target['masks'] = tv_tensors.wrap(target['masks'].to(torch.uint8),
                                              like=target['masks'])
            image, target = self.resize(image, target)
            resized_size = tuple(image.shape[-2:])
            image, target = self.pad(image, target)
            target['masks'] = tv_tensors.wrap(target['masks'].bool(), like=target['masks'])
            target = _refresh_semantic(drop_empty_masks(target))
        else:
            image = self.resize(image)
            resized_size = tuple(image.shape[-2:])
            image = self.pad(image)
        target['resized_size'] = resized_size
        return image, target
