"""PQ, mIoU and mask AP wrappers on hand-built cases whose values are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenmask_ros.model.postprocess import Instances, Prediction
from training.metrics import (
    InstanceMetrics,
    PanopticMetrics,
    SemanticMetrics,
    segment_stats,
    target_panoptic,
)

# Classes: 0 road (stuff), 1 person (thing), 2 car (thing).
IS_THING = [False, True, True]
V = -1
# Ground truth, 4 x 8 pixels: person 1001 (4 px), person 1002 (4 px), car 2001 (4 px),
# an unlabelled (void) 2 x 2 block, road (16 px).
GT = np.array([
    [1001, 1001, 1002, 1002, 2001, 2001, V, V],
    [1001, 1001, 1002, 1002, 2001, 2001, V, V],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.int32)


def pq_of(pred, target=GT, **kwargs) -> dict:
    metric = PanopticMetrics(IS_THING, **kwargs)
    metric.update(pred, target)
    return metric.compute()


def test_perfect_prediction_is_pq_100():
    # The void block is void in the prediction too: that void segment lies wholly on
    # target void, so it is no false positive.
    result = pq_of(GT.copy())
    assert (result['pq'], result['sq'], result['rq']) == (100.0, 100.0, 100.0)
    assert (result['pq_things'], result['pq_stuff']) == (100.0, 100.0)
    assert (result['n'], result['n_things'], result['n_stuff']) == (3, 2, 1)
    assert result['per_class'][1] == {'pq': 100.0, 'sq': 100.0, 'rq': 100.0,
                                      'tp': 2, 'fp': 0, 'fn': 0}


def test_empty_prediction_is_pq_0():
    # Nothing predicted: every ground-truth segment is a false negative (road 1, person 2,
    # car 1), so all three classes count and each has PQ 0.
    result = pq_of(np.full_like(GT, V))
    assert result['pq'] == 0.0 and result['n'] == 3
    assert result['per_class'][1]['fn'] == 2
    # Plain torchmetrics treats predicted void like target void and counts nothing at all
    # (its own mean would be NaN): no class is evaluated.
    assert pq_of(np.full_like(GT, V), count_void_predictions=False)['n'] == 0


def test_one_missed_instance():
    pred = GT.copy()
    pred[pred == 1002] = V
    # person: TP 1 (IoU 1), FN 1 -> SQ 1, RQ = 1 / (1 + 0.5 * 1) = 2/3, PQ 66.67.
    # road 100, car 100 -> PQ = (100 + 66.67 + 100) / 3 = 88.89; things (66.67 + 100) / 2.
    result = pq_of(pred)
    assert result['per_class'][1]['pq'] == pytest.approx(200 / 3)
    assert result['per_class'][1]['fn'] == 1
    assert result['pq'] == pytest.approx((100 + 200 / 3 + 100) / 3)
    assert result['pq_things'] == pytest.approx((200 / 3 + 100) / 2)
    assert result['sq'] == 100.0
    assert result['rq'] == pytest.approx((100 + 200 / 3 + 100) / 3)
    # torchmetrics alone would excuse the miss (its pixels are predicted void): PQ 100.
    assert pq_of(pred, count_void_predictions=False)['pq'] == 100.0


def test_one_false_positive():
    pred = GT.copy()
    pred[3, 0:2] = 2002  # a second car, 2 px cut out of the road
    # car: TP 1 (IoU 1) + FP 1 (the new car lies on road, not on void) -> RQ 2/3, PQ 66.67.
    # road: predicted 14 px, target 16 px, all 14 shared -> IoU 14/16 = 0.875, TP -> 87.5.
    # person 100. PQ = (87.5 + 100 + 66.67) / 3 = 84.72; things 83.33; stuff 87.5.
    result = pq_of(pred)
    assert result['per_class'][2]['fp'] == 1
    assert result['per_class'][0]['sq'] == pytest.approx(87.5)
    assert result['pq'] == pytest.approx((87.5 + 100 + 200 / 3) / 3)
    assert result['pq_things'] == pytest.approx((100 + 200 / 3) / 2)
    assert result['pq_stuff'] == pytest.approx(87.5)


def dataset_target_with_crowd() -> dict:
    """GT as a dataset sample would give it, with the void block now a crowd of persons."""
    masks, labels = [], []
    for segment_id, label in ((1001, 1), (1002, 1), (2001, 2), (0, 0)):
        masks.append(np.equal(GT, segment_id))
        labels.append(label)
    crowd = np.zeros_like(GT, dtype=bool)
    crowd[0:2, 6:8] = True
    masks.append(crowd)
    labels.append(1)
    return {'masks': torch.from_numpy(np.stack(masks)), 'labels': torch.tensor(labels),
            'is_crowd': torch.tensor([False, False, False, False, True])}


def test_dataset_target_becomes_panoptic_ids_with_crowd_void():
    np.testing.assert_array_equal(target_panoptic(dataset_target_with_crowd(), IS_THING).numpy(),
                                  GT)


def test_crowd_and_void_regions_are_ignored():
    pred = GT.copy()
    pred[0:2, 6] = 2001   # the car spills 2 px onto the crowd: they leave the union, IoU 1
    pred[0:2, 7] = 1003   # a person predicted on the crowd only: not a false positive
    # The crowd is never a false negative either: everything scores 100.
    result = pq_of(Prediction(pred, np.zeros_like(pred)), [dataset_target_with_crowd()])
    assert result['pq'] == 100.0
    assert result['per_class'][1] == {'pq': 100.0, 'sq': 100.0, 'rq': 100.0,
                                      'tp': 2, 'fp': 0, 'fn': 0}


def test_panoptic_metric_accumulates_a_batch():
    missed = GT.copy()
    missed[missed == 1002] = V
    # Person over both images: TP 3, FN 1 -> RQ 3 / 3.5; SQ 1 -> PQ 85.71.
    result = pq_of(torch.from_numpy(np.stack([GT, missed])), torch.from_numpy(np.stack([GT, GT])))
    assert result['per_class'][1]['pq'] == pytest.approx(100 * 3 / 3.5)


def _perturbed_prediction(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A prediction that differs from ``target`` in the ways real ones do."""
    pred = target.copy()
    segments = np.unique(target)
    for segment in rng.choice(segments, size=min(4, len(segments)), replace=False):
        region = target == segment
        action = rng.integers(5)
        if action == 0:      # wrong class, same instance id
            pred[region] = (segment % 1000) + 1000 * int(rng.integers(0, 5))
        elif action == 1:    # left unlabelled
            pred[region] = -1
        elif action == 2:    # shifted by a few pixels (partial overlap, IoU around 0.5)
            pred[np.roll(region, int(rng.integers(1, 9)), axis=1)] = segment
        elif action == 3:    # split into two instances
            pred[region & (np.arange(target.shape[1]) % 2 == 0)[None]] = segment + 7
        else:                # a class the metric does not know
            pred[region] = 9000 + segment % 1000
    blob = rng.integers(0, 40, size=2)
    pred[blob[0]:blob[0] + 12, blob[1]:blob[1] + 12] = 2000 + int(rng.integers(1, 50))
    return pred


@pytest.mark.parametrize('count_void', [True, False])
def test_segment_stats_equal_torchmetrics_panoptic_quality(count_void):
    """The fast per-image counting sums the same states as torchmetrics' own update."""
    from torchmetrics.detection import PanopticQuality

    from tokenmask_ros.synthetic import SceneGenerator

    scenes = SceneGenerator(height=48, width=64, seed=5)
    rng = np.random.default_rng(0)
    # Four classes: 0, 3 stuff; 1, 2 thing; ground truth also has unknown class 4 (void).
    flags = [False, True, True, False]
    metric = PanopticMetrics(flags, count_void_predictions=count_void)
    reference = PanopticQuality(things=metric.things, stuffs=metric.metric_stuffs,
                                allow_unknown_preds_category=True)
    for index in range(25):
        scene = scenes.scene(index)
        target = np.full(scene.panoptic.shape, -1, np.int64)
        for number, segment in enumerate(np.unique(scene.panoptic)):
            category = int(rng.integers(0, 5))
            target[scene.panoptic == segment] = category * 1000 + number
        pred = _perturbed_prediction(target, rng)
        pairs = [metric._pairs(torch.as_tensor(x), void) for x, void in
                 ((pred, metric.void_category if count_void else 99), (target, 99))]
        ours = segment_stats(pairs[0].reshape(-1, 2).numpy(), pairs[1].reshape(-1, 2).numpy(),
                             metric.things, metric.metric_stuffs)
        reference.reset()
        reference.update(pairs[0][None], pairs[1][None])
        np.testing.assert_allclose(ours[0], reference.iou_sum.numpy(), rtol=0, atol=1e-12)
        for value, state in zip(ours[1:], ('true_positives', 'false_positives',
                                           'false_negatives'), strict=True):
            np.testing.assert_array_equal(value, getattr(reference, state).numpy())
        metric.update(pred, target)
    assert int(metric.metric.true_positives.sum()) > 0
    assert int(metric.metric.false_positives.sum()) > 0
    assert int(metric.metric.false_negatives.sum()) > 0


def test_miou_with_void_predictions_and_ignored_targets():
    target = np.array([[0, 0, 1, 1],
                       [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 255, 0, 1]])   # 255: void prediction; the last two pixels are ignored
    # class 0: TP 1, FP 0, FN 1 ((0,1) -> 1)            IoU 1/2 = 50
    # class 1: TP 2, FP 1 ((0,1)), FN 0                 IoU 2/3 = 66.67
    # class 2: TP 1, FN 1 ((1,1) predicted void)        IoU 1/2 = 50
    # class 3: absent from target and prediction: NaN, not averaged.
    metric = SemanticMetrics(num_classes=4)
    metric.update(pred, target)
    result = metric.compute()
    assert result['miou'] == pytest.approx((50 + 200 / 3 + 50) / 3)
    assert result['pixel_accuracy'] == pytest.approx(100 * 4 / 6)
    assert result['per_class_iou'][:3] == pytest.approx([50, 200 / 3, 50])
    assert math.isnan(result['per_class_iou'][3])


def test_miou_perfect_and_from_predictions_and_dataset_targets():
    target = dataset_target_with_crowd()
    # Semantic ground truth from the masks (crowd keeps its class), the void block included.
    semantic = np.where(GT >= 0, GT // 1000, 1).astype(np.uint8)
    metric = SemanticMetrics(num_classes=3)
    metric.update([Prediction(GT, semantic)], [target])
    assert metric.compute()['miou'] == 100.0


def instance_target() -> dict:
    masks = np.stack([GT == 1001, GT == 1002, GT == 2001])
    return {'masks': torch.from_numpy(masks), 'labels': torch.tensor([1, 1, 2]),
            'is_crowd': torch.zeros(3, dtype=torch.bool)}


def test_mask_ap_perfect_and_one_missed_instance():
    target = instance_target()
    perfect = Instances(target['masks'], torch.tensor([0.9, 0.8, 0.7]), target['labels'],
                        torch.arange(3))
    metric = InstanceMetrics(is_thing=IS_THING)
    metric.update([perfect], [target])
    result = metric.compute()
    assert result['ap'] == pytest.approx(100.0)
    assert result['ap50'] == pytest.approx(100.0)
    # Person 1002 missed: person recall tops out at 0.5, so COCO's 101-point precision is
    # 1 at recalls 0.00..0.50 (51 points) and 0 above: AP 51/101 = 50.50. Car stays 100.
    # mAP = (50.50 + 100) / 2 = 75.25 at every IoU threshold.
    missed = Instances(target['masks'][[0, 2]], torch.tensor([0.9, 0.7]), torch.tensor([1, 2]),
                       torch.tensor([0, 2]))
    metric = InstanceMetrics(is_thing=IS_THING, class_metrics=True)
    metric.update([missed], [target])
    result = metric.compute()
    assert result['ap'] == pytest.approx((100 * 51 / 101 + 100) / 2)
    assert result['per_class_ap'] == pytest.approx({1: 100 * 51 / 101, 2: 100.0})
    assert math.isnan(result['ap_large'])  # no large objects in a 4 x 8 image
