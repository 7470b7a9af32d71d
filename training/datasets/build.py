"""The raw training dataset a :class:`~training.train_config.DataConfig` names, and the
views that adapt a panoptic reader to instance (things only) or semantic training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
from training.datasets.ade20k_semantic import ADE20KSemantic
from training.datasets.coco_panoptic import CocoPanoptic
from training.datasets.common import masks_to_semantic
from training.datasets.synthetic import SyntheticPanoptic, open_split
from training.datasets.transforms import select_segments
from training.train_config import DataConfig


class ThingsOnly(Dataset):
    """Instance samples from a panoptic dataset: thing segments only, classes renumbered.

    Why: COCO instance segmentation is trained on COCO panoptic's thing segments (80
    classes) here, as no COCO instances-JSON reader exists; unlike instances_*.json, those
    masks never overlap (panoptic annotation resolved the overlaps).
    """

    def __init__(self, dataset):
        self.dataset = dataset
        things = [c for c in dataset.classes if c.is_thing]
        if not things:
            raise ValueError('data.things_only: the dataset has no thing classes')
        self.classes = [dataclasses.replace(c, index=i) for i, c in enumerate(things)]
        self.lookup = torch.full((len(dataset.classes),), -1, dtype=torch.int64)
        self.lookup[[c.index for c in things]] = torch.arange(len(things))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        target = select_segments(target, self.lookup[target['labels']] >= 0)
        target['labels'] = self.lookup[target['labels']]
        return image, target


class SemanticTargets(Dataset):
    """Semantic samples from a panoptic dataset: one mask per class present (instances and
    crowd regions merged), ``is_crowd`` all false, ``target['semantic']`` (255 = void)."""

    def __init__(self, dataset):
        self.dataset, self.classes = dataset, dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        labels = target['labels'].unique()
        masks = torch.stack([target['masks'][target['labels'] == label].any(0)
                             for label in labels]) if len(labels) else \
            torch.zeros((0, *target['masks'].shape[1:]), dtype=torch.bool)
        target = {k: v for k, v in target.items()
                  if k not in ('masks', 'labels', 'is_crowd', 'segment_ids')}
        target.update(masks=tv_tensors.Mask(masks), labels=labels,
                      is_crowd=torch.zeros(len(labels), dtype=torch.bool),
                      semantic=masks_to_semantic(masks, labels))
        return image, target


def build_dataset(data: DataConfig):
    """The raw training dataset and its classes as TokenMaskConfig ``classes`` dicts."""
    if data.type == 'synthetic':
        if data.root:
            if not Path(data.root).is_dir():
                raise FileNotFoundError(f'synthetic dataset folder not found: {data.root} '
                                        '(write one with training/make_synthetic.py or unset '
                                        'data.root to generate scenes in memory)')
            dataset = open_split(data.root, data.split)
        else:
            dataset = SyntheticPanoptic(data.count, data.width, data.height, data.seed,
                                        data.split)
            return dataset, [{'name': c.name, 'is_thing': c.is_thing, 'color': tuple(c.color)}
                             for c in SYNTHETIC_CLASSES]
    elif data.type in ('coco_panoptic', 'cityscapes_semantic'):
        paths = {k: getattr(data, k) for k in ('images_dir', 'panoptic_dir', 'json_file')}
        missing = [k for k, v in paths.items() if not v]
        if missing:
            raise ValueError(f'data.type {data.type} needs data.{", data.".join(missing)}')
        dataset = CocoPanoptic(**paths)
        if data.type == 'cityscapes_semantic':
            # No Cityscapes reader: cityscapesscripts' createPanopticImgs writes COCO-panoptic
            # JSON/PNGs (19 categories, ids in trainId order) whose image_id is
            # <city>_<seq>_<frame>; the images stay in leftImg8bit/<split>/<city>/.
            for record in dataset.records:
                image_id = str(record['image_id'])
                record['image_file'] = f'{image_id.split("_")[0]}/{image_id}_leftImg8bit.png'
            dataset = SemanticTargets(dataset)
        elif data.things_only:
            dataset = ThingsOnly(dataset)
    elif data.type == 'ade20k_semantic':
        if not data.root:
            raise ValueError('data.type ade20k_semantic needs data.root (ADEChallengeData2016)')
        dataset = ADE20KSemantic(data.root, data.split)
        return dataset, [{'name': name, 'is_thing': False} for name in dataset.class_names]
    else:
        raise ValueError('data.type must be synthetic, coco_panoptic, ade20k_semantic or '
                         f'cityscapes_semantic, got {data.type!r}')
    return dataset, [{'name': c.name, 'is_thing': c.is_thing, 'color': tuple(c.color)}
                     for c in dataset.classes]

