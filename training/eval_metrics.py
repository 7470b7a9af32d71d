"""Accumulates PQ / SQ / RQ, mIoU and mask AP over evaluated images (:class:`EvalMetrics`).

It takes any object with ``panoptic`` and ``semantic`` maps, so tests can feed it ground
truth ("oracle", PQ 100).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tokenmask_ros.defaults import LABEL_DIVISOR
from training.datasets.common import masks_to_semantic
from training.eval_data import EvalClass
from training.metrics import (
    AP_KEYS,
    InstanceMetrics,
    PanopticMetrics,
    SemanticMetrics,
    target_panoptic,
)

AP_NAMES = tuple(name for _, name in AP_KEYS)  # ap, ap50, ap75, ap_small, ...

def _ap(value: float) -> float:
    """AP as reported: pycocotools' -1 where there is nothing to average (NaN upstream)."""
    return -1.0 if math.isnan(value) else float(value)


class EvalMetrics:
    """PQ / SQ / RQ (PanopticMetrics), mIoU (SemanticMetrics) and mask AP (InstanceMetrics).

    ``update(prediction, target)``: ``prediction`` is anything with ``panoptic`` (int ids,
    ``class * label_divisor + instance``, VOID = -1) and ``semantic`` maps; a
    ``semantic_argmax`` attribute, when present, is used for mIoU instead of ``semantic``;
    with ``instance=True`` it needs ``instances`` (:class:`Instances`). With
    ``panoptic=False`` (semantic datasets) it may be just the class map. ``target`` is a
    dataset target dict (``masks``, ``labels``, ``is_crowd``; ``semantic`` used if present).
    """

    def __init__(self, classes: list[EvalClass], label_divisor: int = LABEL_DIVISOR,
                 panoptic: bool = True, instance: bool = False):
        self.classes = classes
        self.flags = [c.is_thing for c in classes]
        self.label_divisor = label_divisor
        self.panoptic = PanopticMetrics(self.flags, label_divisor=label_divisor) \
            if panoptic else None
        self.semantic = SemanticMetrics(len(classes))
        self.instance = InstanceMetrics(self.flags, class_metrics=True) if instance else None
        self.images = 0

    def update(self, prediction, target: dict) -> None:
        if 'semantic' in target:
            gt_semantic = torch.as_tensor(target['semantic'])
        else:
            masks, labels = target['masks'], target['labels']
            crowd = torch.as_tensor(target.get('is_crowd', torch.zeros_like(labels)),
                                    dtype=bool)
            gt_semantic = masks_to_semantic(masks[~crowd], labels[~crowd])
        if isinstance(prediction, (np.ndarray, torch.Tensor)):
            semantic = prediction
        else:
            semantic = getattr(prediction, 'semantic_argmax', None)
            if semantic is None:
                semantic = prediction.semantic
        if self.panoptic is not None:
            gt_panoptic = target_panoptic(target, self.flags, self.label_divisor)
            self.panoptic.update([np.asarray(prediction.panoptic)], [gt_panoptic])
        self.semantic.update([torch.as_tensor(np.asarray(semantic))], [gt_semantic])
        if self.instance is not None:
            instances = getattr(prediction, 'instances', None)
            if instances is None:
                raise ValueError('instance evaluation needs predictions with instances')
            self.instance.update([instances], [target])
        self.images += 1

    def compute(self) -> dict:
        """A JSON-ready dict: overall, things / stuff and per-class numbers, in percent."""
        semantic = self.semantic.compute()
        result: dict = {}
        if self.panoptic is not None:
            panoptic = self.panoptic.compute()
            result.update({key: panoptic[key] for key in
                           ('pq', 'sq', 'rq', 'pq_things', 'sq_things', 'rq_things',
                            'pq_stuff', 'sq_stuff', 'rq_stuff')})
        result.update(miou=semantic['miou'], pixel_accuracy=semantic['pixel_accuracy'])
        per_class_ap = {}
        if self.instance is not None:
            instance = self.instance.compute()
            result.update({name: _ap(instance[name]) for name in AP_NAMES})
            per_class_ap = instance.get('per_class_ap', {})
        result['num_images'] = self.images
        if self.panoptic is not None:
            result.update(num_classes_seen=panoptic['n'], num_things_seen=panoptic['n_things'],
                          num_stuff_seen=panoptic['n_stuff'])
        per_class = {}
        for c in self.classes:
            entry = dict(panoptic['per_class'][c.index]) if self.panoptic is not None else {}
            iou = float(semantic['per_class_iou'][c.index])
            entry.update(iou=None if math.isnan(iou) else iou, category_id=c.category_id,
                         is_thing=c.is_thing)
            if self.instance is not None and c.is_thing:
                entry['ap'] = _ap(per_class_ap.get(c.index, float('nan')))
            per_class[c.name] = entry
        result['per_class'] = per_class
        return result

