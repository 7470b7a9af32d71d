"""Evaluation metrics: thin wrappers over torchmetrics for PQ, mIoU and mask AP.

All results are percentages (PQ 100 = perfect), as papers report them.

**PanopticQuality (torchmetrics 1.9)** holds the PQ states; :func:`segment_stats` fills them
per image by its exact rules (its own counting is slow on CPU, see there). It takes
``preds`` and ``target`` as int tensors ``[B, *spatial, 2]`` of ``(category_id,
instance_id)`` pairs, plus the sets ``things`` and ``stuffs`` of category ids. Instance ids
of stuff categories are zeroed; target pixels whose category is in neither set become its
internal *void* colour ``(1 + max id, 0)`` and are ignored the way panopticapi ignores VOID
(a prediction more than half on void is no false positive; void pixels leave the IoU union).
A prediction category in neither set raises unless ``allow_unknown_preds_category=True``,
which turns it into void as well. Two consequences this wrapper corrects:

* Predicted void is *not* neutral in panopticapi (a ground-truth segment the model left
  unlabelled is a false negative and its unlabelled pixels count in the union), but
  torchmetrics, given void predictions, skips such false negatives and shrinks the union:
  an all-void prediction scores NaN and a half-void one can score 100. So predicted VOID
  pixels are mapped to an extra stuff category (id ``num_classes``) that no target uses;
  its own row is dropped from every average (``count_void_predictions=False`` restores the
  plain torchmetrics behaviour).
* The averages are recomputed from the metric's summed TP / FP / FN / IoU states, over
  the categories with TP + FP + FN > 0 (panopticapi's rule), separately for things and
  stuff, instead of torchmetrics' single overall mean.

Crowd regions (``is_crowd`` segments, COCO) become target void. panopticapi instead keeps a
crowd region per class: it never counts a crowd segment as a false negative and ignores an
unmatched prediction that lies more than half on void plus crowd *of its own class*. The
void approximation differs only for predictions overlapping crowd of another class and in
the IoU union of a matched segment, which no longer contains its pixels on crowd.

**MulticlassJaccardIndex(ignore_index=255)** accumulates a confusion matrix; target pixels
equal to ``ignore_index`` are dropped. Predicted void (any value outside ``0..C-1``, e.g.
the 255 of :attr:`Prediction.semantic`) goes to an extra column so it counts as a miss of
the target class without being a class of its own. mIoU = mean IoU over classes present in
target or prediction (union > 0).

**MeanAveragePrecision(iou_type='segm', backend='pycocotools')**: ``preds`` dicts of bool
``masks [N, H, W]``, ``scores``, ``labels``; ``target`` dicts of ``masks``, ``labels`` and
``iscrowd``; COCO's AP@[.5:.95], AP50, AP75 and small / medium / large AP.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from tokenmask_ros.model.postprocess import (
    LABEL_DIVISOR,
    VOID,
    Instances,
    Prediction,
    thing_flags,
)

# torchmetrics is imported where each metric is built, not here: importing it loads its text
# metrics and with them transformers, seconds that every script importing this module (and
# its --help) would otherwise pay before doing anything.

IGNORE_INDEX = 255
# MeanAveragePrecision's result keys and the names InstanceMetrics reports them under.
AP_KEYS = (('map', 'ap'), ('map_50', 'ap50'), ('map_75', 'ap75'), ('map_small', 'ap_small'),
           ('map_medium', 'ap_medium'), ('map_large', 'ap_large'))


def _tensor(value) -> Tensor:
    if isinstance(value, Prediction):
        value = value.panoptic
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return torch.as_tensor(value)


def _batch(values) -> list:
    """A list of per-image items from one item, a list of them, or a batched tensor."""
    if isinstance(values, (list, tuple)):
        return list(values)
    if isinstance(values, (Tensor, np.ndarray)) and values.ndim == 3:
        return list(values)
    return [values]


def target_panoptic(target: dict, is_thing, label_divisor: int = LABEL_DIVISOR) -> Tensor:
    """A ``[H, W]`` int32 panoptic id map from a dataset target (``masks``, ``labels``,
    ``is_crowd``): things numbered from 1 within their class in mask order, stuff instance
    0, crowd segments and uncovered pixels VOID (-1)."""
    masks = torch.as_tensor(target['masks'], dtype=torch.bool)
    labels = torch.as_tensor(target['labels'], dtype=torch.int64)
    crowd = torch.as_tensor(target.get('is_crowd', torch.zeros_like(labels)), dtype=torch.bool)
    flags = thing_flags(is_thing)
    panoptic = torch.full(masks.shape[1:], VOID, dtype=torch.int32)
    counters: dict[int, int] = {}
    for mask, label, is_crowd in zip(masks, labels.tolist(), crowd.tolist(), strict=True):
        if is_crowd:
            panoptic[mask] = VOID
            continue
        instance = 0
        if flags[label]:
            instance = counters[label] = counters.get(label, 0) + 1
        panoptic[mask] = label * label_divisor + instance
    return panoptic


PQ_STATES = ('iou_sum', 'true_positives', 'false_positives', 'false_negatives')


def segment_stats(pred: np.ndarray, target: np.ndarray, things: Sequence[int],
                  stuffs: Sequence[int]) -> tuple[np.ndarray, ...]:
    """One image's PQ states, exactly as torchmetrics' ``PanopticQuality.update`` sums them.

    ``pred`` and ``target`` are ``[N, 2]`` int arrays of ``(category, instance)`` pixels.
    Returns ``iou_sum, tp, fp, fn`` per category in the metric's order (things, then
    stuff, each sorted). Same rules as torchmetrics 1.9: stuff instance ids ignored,
    categories outside ``things + stuffs`` become void, a same-category pair with IoU > 0.5
    (void pixels left out of the union) is a match, and an unmatched segment more than
    half on the other side's void is neither FP nor FN.

    Written here because torchmetrics finds segments and overlaps with
    ``torch.unique(dim=0)`` over every pixel row, 0.3-0.6 s per 320x240 image on a CPU
    core (hours for a COCO val pass); one ``np.unique`` over integer-coded pairs does the
    same counting in milliseconds. The test suite checks it against torchmetrics.
    """
    categories = np.asarray([*sorted(things), *sorted(stuffs)], np.int64)
    void_category = 1 + max(0, *categories)
    is_stuff = np.zeros(void_category + 1, bool)
    is_stuff[list(stuffs)] = True
    index_of = np.full(void_category + 1, -1, np.int64)
    index_of[categories] = np.arange(len(categories))

    def colors(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        category = pairs[:, 0].astype(np.int64)
        instance = pairs[:, 1].astype(np.int64)
        known = (category >= 0) & (category < void_category)
        known[known] = index_of[category[known]] >= 0
        category = np.where(known, category, void_category)
        instance = np.where(known & ~is_stuff[category], instance, 0)
        return category, instance

    (pred_cat, pred_inst), (true_cat, true_inst) = colors(pred), colors(target)
    span = 1 + int(max(pred_inst.max(initial=0), true_inst.max(initial=0)))
    pred_ids, pred_of_pixel, pred_area = np.unique(pred_cat * span + pred_inst,
                                                   return_inverse=True, return_counts=True)
    true_ids, true_of_pixel, true_area = np.unique(true_cat * span + true_inst,
                                                   return_inverse=True, return_counts=True)
    pairs, overlap = np.unique(pred_of_pixel.ravel() * len(true_ids) + true_of_pixel.ravel(),
                               return_counts=True)
    pred_seg, true_seg = np.divmod(pairs, len(true_ids))
    pred_seg_cat, true_seg_cat = pred_ids // span, true_ids // span
    pred_void, true_void = pred_seg_cat == void_category, true_seg_cat == void_category
    # Pixels of each predicted segment on target void, and of each target on predicted void.
    pred_on_void = np.bincount(pred_seg[true_void[true_seg]],
                               overlap[true_void[true_seg]], len(pred_ids))
    true_on_void = np.bincount(true_seg[pred_void[pred_seg]],
                               overlap[pred_void[pred_seg]], len(true_ids))

    candidate = ~true_void[true_seg] & (pred_seg_cat[pred_seg] == true_seg_cat[true_seg])
    p, t, inter = pred_seg[candidate], true_seg[candidate], overlap[candidate]
    union = pred_area[p] - pred_on_void[p] + true_area[t] - true_on_void[t] - inter
    iou = (inter / union).astype(np.float32)  # torchmetrics divides int tensors: float32
    match = iou > 0.5
    matched_pred = np.zeros(len(pred_ids), bool)
    matched_pred[p[match]] = True
    matched_true = np.zeros(len(true_ids), bool)
    matched_true[t[match]] = True

    count = len(categories)
    matched_index = index_of[true_seg_cat[t[match]]]
    iou_sum = np.zeros(count, np.float64)
    np.add.at(iou_sum, matched_index, iou[match].astype(np.float64))
    tp = np.bincount(matched_index, minlength=count)
    false_neg = ~matched_true & ~true_void & (true_on_void / true_area <= 0.5)
    false_pos = ~matched_pred & ~pred_void & (pred_on_void / pred_area <= 0.5)
    fn = np.bincount(index_of[true_seg_cat[false_neg]], minlength=count)
    fp = np.bincount(index_of[pred_seg_cat[false_pos]], minlength=count)
    return iou_sum, tp.astype(np.int32), fp.astype(np.int32), fn.astype(np.int32)


class PanopticMetrics:
    """PQ / SQ / RQ overall, for things, for stuff and per class (torchmetrics PanopticQuality).

    ``update`` takes predictions as :class:`Prediction` objects or panoptic id maps
    (``class * label_divisor + instance``, VOID = -1), and targets as id maps (VOID and
    any unknown class ignored) or dataset target dicts (:func:`target_panoptic`); one
    image, a list, or a ``[B, H, W]`` batch.
    """

    def __init__(self, is_thing, label_divisor: int = LABEL_DIVISOR,
                 count_void_predictions: bool = True):
        self.flags = thing_flags(is_thing)
        self.num_classes = len(self.flags)
        self.label_divisor = label_divisor
        self.count_void_predictions = count_void_predictions
        self.things = sorted(int(c) for c in np.flatnonzero(self.flags))
        self.stuffs = sorted(int(c) for c in np.flatnonzero(~self.flags))
        # Category of predicted VOID: a stuff class no target has (see the module docstring).
        self.void_category = self.num_classes
        stuffs = [*self.stuffs, self.void_category] if count_void_predictions else self.stuffs
        # The metric holds the summed states (and syncs them across processes); ``update``
        # fills them through :func:`segment_stats`, which follows its rules exactly.
        from torchmetrics.detection import PanopticQuality  # lazy: see the note at the imports

        self.metric = PanopticQuality(things=self.things, stuffs=stuffs,
                                      allow_unknown_preds_category=not count_void_predictions)
        self.metric_stuffs = stuffs
        # torchmetrics' internal order of categories: things, then stuff, each sorted.
        self.categories = [*self.things, *stuffs]

    def _pairs(self, panoptic: Tensor, void_category: int) -> Tensor:
        panoptic = panoptic.to(torch.int64)
        void = (panoptic < 0) | (panoptic >= self.num_classes * self.label_divisor)
        category = torch.where(void, void_category, panoptic // self.label_divisor)
        instance = torch.where(void, 0, panoptic % self.label_divisor)
        return torch.stack([category, instance], dim=-1)

    def update(self, preds, targets) -> None:
        preds, targets = _batch(preds), _batch(targets)
        if len(preds) != len(targets):
            raise ValueError(f'{len(preds)} predictions for {len(targets)} targets')
        # Void in the target: one past every category, i.e. torchmetrics' own void colour.
        target_void = max(self.categories) + 1
        pred_void = self.void_category if self.count_void_predictions else target_void
        for pred, target in zip(preds, targets, strict=True):
            if isinstance(target, dict):
                target = target_panoptic(target, self.flags, self.label_divisor)
            pred, target = _tensor(pred), _tensor(target)
            if pred.shape != target.shape:
                raise ValueError(f'prediction {tuple(pred.shape)} and target '
                                 f'{tuple(target.shape)} differ in size')
            stats = segment_stats(self._pairs(pred, pred_void).reshape(-1, 2).cpu().numpy(),
                                  self._pairs(target, target_void).reshape(-1, 2).cpu().numpy(),
                                  self.things, self.metric_stuffs)
            for state, value in zip(PQ_STATES, stats, strict=True):
                current = getattr(self.metric, state)
                current += torch.from_numpy(value).to(current.device, current.dtype)

    def reset(self) -> None:
        self.metric.reset()

    def compute(self) -> dict:
        """``pq sq rq`` (all), ``*_things``, ``*_stuff`` and ``n*`` (classes averaged), plus
        ``per_class``: {class_id: {pq, sq, rq, tp, fp, fn}} for every class (those with
        tp + fp + fn = 0 are in no average)."""
        with self.metric.sync_context():
            iou = self.metric.iou_sum.detach().cpu().double()
            tp = self.metric.true_positives.detach().cpu().double()
            fp = self.metric.false_positives.detach().cpu().double()
            fn = self.metric.false_negatives.detach().cpu().double()
        sq = torch.where(tp > 0, iou / tp.clamp(min=1), 0.0)
        denominator = tp + 0.5 * fp + 0.5 * fn
        rq = torch.where(denominator > 0, tp / denominator.clamp(min=1e-9), 0.0)
        pq = sq * rq
        per_class = {}
        for index, category in enumerate(self.categories):
            if category == self.void_category and self.count_void_predictions:
                continue
            per_class[category] = {'pq': 100 * float(pq[index]), 'sq': 100 * float(sq[index]),
                                   'rq': 100 * float(rq[index]), 'tp': int(tp[index]),
                                   'fp': int(fp[index]), 'fn': int(fn[index])}
        result: dict = {}
        for suffix, members in (('', self.things + self.stuffs), ('_things', self.things),
                                ('_stuff', self.stuffs)):
            seen = [per_class[c] for c in members if denominator[self.categories.index(c)] > 0]
            for key in ('pq', 'sq', 'rq'):
                result[key + suffix] = float(np.mean([s[key] for s in seen])) if seen else 0.0
            result['n' + suffix] = len(seen)
        result['per_class'] = per_class
        return result


class SemanticMetrics:
    """mIoU (and pixel accuracy) from torchmetrics' MulticlassJaccardIndex confusion matrix.

    ``update`` takes predicted class maps (or :class:`Prediction`, whose ``semantic`` is
    used; values outside ``0..C-1`` are void predictions) and target class maps with
    ``ignore_index`` (negative values are ignored too) or dataset target dicts.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        from torchmetrics.classification import MulticlassJaccardIndex  # lazy, as above

        # One extra column for void predictions: a miss for the target class, no class itself.
        self.metric = MulticlassJaccardIndex(num_classes + 1, ignore_index=ignore_index,
                                             average='none', validate_args=False)

    def update(self, preds, targets) -> None:
        preds, targets = _batch(preds), _batch(targets)
        if len(preds) != len(targets):
            raise ValueError(f'{len(preds)} predictions for {len(targets)} targets')
        for pred, target in zip(preds, targets, strict=True):
            if isinstance(pred, Prediction):
                pred = pred.semantic
            if isinstance(target, dict):
                from training.datasets.common import masks_to_semantic

                target = masks_to_semantic(target['masks'], target['labels'],
                                           ignore_index=self.ignore_index)
            pred, target = _tensor(pred).to(torch.int64), _tensor(target).to(torch.int64)
            if pred.shape != target.shape:
                raise ValueError(f'prediction {tuple(pred.shape)} and target '
                                 f'{tuple(target.shape)} differ in size')
            pred = torch.where((pred >= 0) & (pred < self.num_classes), pred, self.num_classes)
            unknown = (target < 0) | (target >= self.num_classes)
            target = torch.where(unknown, self.ignore_index, target).to(pred.device)
            self.metric.update(pred[None], target[None])

    def reset(self) -> None:
        self.metric.reset()

    def compute(self) -> dict:
        """``miou``, ``pixel_accuracy`` and ``per_class_iou`` (NaN for absent classes)."""
        with self.metric.sync_context():
            confmat = self.metric.confmat.detach().cpu().double()  # rows target, cols pred
        classes = self.num_classes
        if 0 <= self.ignore_index <= classes:
            # torchmetrics drops ignored targets itself; a column would only fill if a
            # prediction equalled ignore_index, which update() has mapped to void.
            confmat[self.ignore_index] = 0
        hits = confmat.diagonal()[:classes]
        union = confmat.sum(1)[:classes] + confmat.sum(0)[:classes] - hits
        iou = torch.where(union > 0, hits / union.clamp(min=1), float('nan'))
        present = union > 0
        total = confmat[:classes].sum()
        return {
            'miou': 100 * float(iou[present].mean()) if present.any() else 0.0,
            'pixel_accuracy': 100 * float(hits.sum() / total) if total > 0 else 0.0,
            'per_class_iou': (100 * iou).numpy(),
        }


def target_instances(target: dict, is_thing=None) -> dict:
    """A MeanAveragePrecision target from a dataset target (``is_crowd``) or one already in
    that format (``iscrowd``): thing segments only, all of them when ``is_thing`` is None."""
    masks = torch.as_tensor(target['masks'], dtype=torch.bool).cpu()
    labels = torch.as_tensor(target['labels'], dtype=torch.int64).cpu()
    crowd = target.get('is_crowd', target.get('iscrowd', torch.zeros_like(labels)))
    crowd = torch.as_tensor(crowd, dtype=torch.bool).cpu()
    keep = torch.ones_like(labels, dtype=torch.bool)
    if is_thing is not None:
        keep = torch.as_tensor(thing_flags(is_thing))[labels]
    return {'masks': masks[keep], 'labels': labels[keep], 'iscrowd': crowd[keep].to(torch.int64)}


class InstanceMetrics:
    """Mask AP (COCO, pycocotools) through torchmetrics MeanAveragePrecision(iou_type='segm').

    ``update`` takes :class:`Instances` (or dicts with ``masks``, ``scores``, ``labels``) and
    dataset target dicts; with ``is_thing`` only thing classes are evaluated.
    """

    def __init__(self, is_thing=None, class_metrics: bool = False):
        from torchmetrics.detection import MeanAveragePrecision  # lazy, as above

        self.is_thing = is_thing
        self.metric = MeanAveragePrecision(iou_type='segm', backend='pycocotools',
                                           class_metrics=class_metrics)

    def update(self, preds: Iterable[Instances | dict], targets: Sequence[dict]) -> None:
        preds = [p._asdict() if isinstance(p, Instances) else p for p in _batch(preds)]
        formatted = [{'masks': torch.as_tensor(p['masks'], dtype=torch.bool).cpu(),
                      'scores': torch.as_tensor(p['scores']).float().cpu(),
                      'labels': torch.as_tensor(p['labels']).long().cpu()} for p in preds]
        goal = [target_instances(t, self.is_thing) for t in _batch(targets)]
        self.metric.update(formatted, goal)

    def reset(self) -> None:
        self.metric.reset()

    def compute(self) -> dict:
        """``ap ap50 ap75 ap_small ap_medium ap_large`` in percent (NaN where COCO has none),
        plus ``per_class_ap`` {class: AP} with ``class_metrics=True``."""
        raw = self.metric.compute()
        result = {}
        for key, name in AP_KEYS:
            value = float(raw[key])
            result[name] = 100 * value if value >= 0 else float('nan')
        if self.metric.class_metrics:
            classes = raw['classes'].reshape(-1).tolist()
            values = raw['map_per_class'].reshape(-1).tolist()
            result['per_class_ap'] = {int(c): (100 * v if v >= 0 else float('nan'))
                                      for c, v in zip(classes, values, strict=True)}
        return result
