"""Dataset readers and augmentations for training and evaluation.

Every reader yields ``(image, target)``: a ``tv_tensors.Image`` uint8 ``[3, H, W]`` and a
dict with ``masks`` (``tv_tensors.Mask`` bool ``[N, H, W]``), ``labels`` (int64 ``[N]``,
contiguous class indices) and ``is_crowd`` (bool ``[N]``); see ``common.py``.
"""

from tokenmask_ros.coco_panoptic_io import id2rgb, rgb2id
from training.datasets.ade20k_semantic import ADE20KSemantic
from training.datasets.coco_panoptic import CocoPanoptic, DatasetClass
from training.datasets.common import IGNORE_INDEX, DatasetError, collate, masks_to_semantic
from training.datasets.synthetic import SyntheticPanoptic, open_split, write_split
from training.datasets.transforms import EvalTransform, TrainTransform

__all__ = [
    'IGNORE_INDEX',
    'ADE20KSemantic',
    'CocoPanoptic',
    'DatasetClass',
    'DatasetError',
    'EvalTransform',
    'SyntheticPanoptic',
    'TrainTransform',
    'collate',
    'id2rgb',
    'masks_to_semantic',
    'open_split',
    'rgb2id',
    'write_split',
]
