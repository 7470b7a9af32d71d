"""Panoptic, semantic and instance decoding on hand-built logits with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenmask_ros.model.config import ClassInfo
from tokenmask_ros.model.postprocess import (
    VOID,
    DensePanoptic,
    Letterbox,
    PanopticScores,
    decode_instances,
    decode_panoptic,
    decode_semantic,
    dense_panoptic_scores,
    panoptic_predictions,
    resize_logits,
    segment_areas_and_boxes,
    semantic_scores,
)

# Classes: 0 road (stuff), 1 person (thing), 2 car (thing); index 3 of a logit row = no object.
CLASSES = (ClassInfo('road', is_thing=False), ClassInfo('person'), ClassInfo('car'))
H, W = 4, 6
ON, OFF = 10.0, -10.0


def class_row(logits: dict[int, float]) -> list[float]:
    row = [0.0] * 4
    for index, value in logits.items():
        row[index] = value
    return row


def softmax_max(row: list[float]) -> float:
    exps = [math.exp(v) for v in row]
    return max(exps) / sum(exps)


def mask(*cells: tuple[slice, slice]) -> torch.Tensor:
    logits = torch.full((H, W), OFF)
    for rows, cols in cells:
        logits[rows, cols] = ON
    return logits


# Query -> (class logits, mask). Expected outcome in the comments.
QUERIES = [
    (class_row({1: 10.0}), mask((slice(0, 2), slice(0, 2)))),  # q0 person, 2nd best -> 1002
    (class_row({1: 12.0}), mask((slice(0, 2), slice(3, 5)))),  # q1 person, best -> 1001
    (class_row({0: 8.0}), mask((slice(3, 4), slice(0, 6)))),   # q2 road row 3 -> merged id 0
    (class_row({0: 9.0}), mask((slice(2, 3), slice(4, 6)))),   # q3 road row 2 right -> id 0
    # q4 car with score e^2 / (e^2 + e^1.5 + 2) = 0.533 < 0.8: dropped, its pixels void.
    (class_row({2: 2.0, 1: 1.5}), mask((slice(2, 3), slice(0, 2)))),
    # q5 car, score 27 / (27 + 3) = 0.9: its 10-pixel mask loses 6 pixels to q0 / q1 (higher
    # score x same sigmoid) and keeps 4: 4 / 10 = 0.4 < 0.8 -> dropped, those 4 pixels void.
    (class_row({2: math.log(27.0)}), mask((slice(0, 2), slice(1, 6)))),
    (class_row({3: 10.0}), mask((slice(2, 3), slice(2, 4)))),  # q6 no object -> void
]


def logits() -> tuple[torch.Tensor, torch.Tensor]:
    class_logits = torch.tensor([row for row, _ in QUERIES])[None]
    mask_logits = torch.stack([m for _, m in QUERIES])[None]
    return class_logits, mask_logits


EXPECTED = np.array([
    [1002, 1002, VOID, 1001, 1001, VOID],
    [1002, 1002, VOID, 1001, 1001, VOID],
    [VOID, VOID, VOID, VOID, 0, 0],
    [0, 0, 0, 0, 0, 0],
], dtype=np.int32)


def test_panoptic_ids_merge_stuff_and_drop_low_score_and_overlap():
    prediction = panoptic_predictions(*logits(), CLASSES)[0]
    assert prediction.panoptic.dtype == np.int32
    np.testing.assert_array_equal(prediction.panoptic, EXPECTED)
    semantic = np.where(EXPECTED >= 0, EXPECTED // 1000, 255)
    assert prediction.semantic.dtype == np.uint8
    np.testing.assert_array_equal(prediction.semantic, semantic)

    segments = {s.id: s for s in prediction.segments}
    assert sorted(segments) == [0, 1001, 1002]
    road, first, second = segments[0], segments[1001], segments[1002]
    # Road: row 3 (6 px) + row 2 cols 4-5 (2 px), box x 0..5, y 2..3; best score of q2, q3.
    assert (road.class_id, road.area, road.bbox, road.is_thing) == (0, 8, (0, 2, 6, 2), False)
    assert road.score == pytest.approx(softmax_max(QUERIES[3][0]), rel=1e-6)
    assert (first.class_id, first.area, first.bbox, first.is_thing) == (1, 4, (3, 0, 2, 2), True)
    assert first.score == pytest.approx(softmax_max(QUERIES[1][0]), rel=1e-6)
    assert (second.area, second.bbox) == (4, (0, 0, 2, 2))
    assert second.score == pytest.approx(softmax_max(QUERIES[0][0]), rel=1e-6)


def test_lower_thresholds_keep_the_dropped_queries():
    scores = dense_panoptic_scores(*logits(), score_threshold=0.5)
    prediction = decode_panoptic(scores, CLASSES, overlap_threshold=0.3)
    expected = EXPECTED.copy()
    # q5 (score 0.9) keeps 4 / 10 >= 0.3 of its mask: cols 2 and 5 of rows 0-1; q4 (0.533) is
    # kept too. Cars by decreasing score: q5 -> 2001, q4 -> 2002.
    expected[0:2, [2, 5]] = 2001
    expected[2, 0:2] = 2002
    np.testing.assert_array_equal(prediction.panoptic, expected)
    car = {s.id: s for s in prediction.segments}[2001]
    # A segment in two pieces: box spans both (x 2..5), area counts only its pixels.
    assert (car.area, car.bbox) == (4, (2, 0, 4, 2))


def test_dense_scores_are_the_compact_panoptic_tensors():
    scores = dense_panoptic_scores(*logits())
    assert scores.segment_map.shape == (1, H, W)
    assert scores.query_class[0].tolist() == [1, 1, 0, 0, 2, 2, 3]
    assert scores.keep[0].tolist() == [True, True, True, True, False, True, False]
    assert scores.mask_area[0].tolist() == [4, 4, 6, 2, 2, 10, 2]
    # q5 wins cols 2 and 5 of rows 0-1; q1 (best score) also wins every pixel where all
    # masks are off (row 2 cols 0-3), which Mask2Former counts in the won area.
    assert scores.won_area[0, 5] == 4
    assert scores.won_area[0, 1] == 4 + 4
    assert scores.segment_map[0, 2, 0] == -1


def test_void_where_nothing_is_kept():
    class_logits, mask_logits = logits()
    class_logits = torch.zeros_like(class_logits)
    class_logits[..., 3] = 10.0  # every query says "no object"
    prediction = panoptic_predictions(class_logits, mask_logits, CLASSES)[0]
    assert (prediction.panoptic == VOID).all()
    assert (prediction.semantic == 255).all()
    assert prediction.segments == []


def test_batch_decodes_each_image_separately():
    class_logits, mask_logits = logits()
    empty = torch.zeros_like(class_logits)
    empty[..., 3] = 10.0
    predictions = panoptic_predictions(torch.cat([empty, class_logits]),
                                       torch.cat([mask_logits, mask_logits]), CLASSES)
    assert (predictions[0].panoptic == VOID).all()
    np.testing.assert_array_equal(predictions[1].panoptic, EXPECTED)


def reference_panoptic(class_logits, mask_logits, is_thing, score_threshold, overlap_threshold):
    """Mask2Former's per-query loop, written plainly, for one image."""
    scores, labels = class_logits.softmax(-1).max(-1)
    keep = (labels != class_logits.shape[-1] - 1) & (scores > score_threshold)
    masks = mask_logits.sigmoid()[keep]
    labels, scores = labels[keep], scores[keep]
    result = np.full(mask_logits.shape[-2:], -1, dtype=np.int64)
    if not keep.any():
        return result, {}
    winner = (scores[:, None, None] * masks).argmax(0)
    classes, stuff_segment, next_id = {}, {}, 0
    for k in range(len(labels)):
        label = int(labels[k])
        won = int((winner == k).sum())
        original = int((masks[k] >= 0.5).sum())
        final = (winner == k) & (masks[k] >= 0.5)
        if won == 0 or original == 0 or final.sum() == 0 or won / original < overlap_threshold:
            continue
        if not is_thing[label] and label in stuff_segment:
            result[final.numpy()] = stuff_segment[label]
            continue
        next_id += 1
        if not is_thing[label]:
            stuff_segment[label] = next_id
        result[final.numpy()] = next_id
        classes[next_id] = label
    return result, classes


@pytest.mark.parametrize('seed', range(5))
def test_matches_a_plain_mask2former_loop_on_random_logits(seed):
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(1, 12, 5, generator=generator) * 6
    mask_logits = torch.randn(1, 12, 6, 7, generator=generator) * 4
    is_thing = [True, False, True, False]
    prediction = panoptic_predictions(class_logits, mask_logits, is_thing, out_size=(12, 14),
                                      score_threshold=0.5, overlap_threshold=0.25)[0]
    upsampled = resize_logits(mask_logits, (12, 14))
    reference, classes = reference_panoptic(class_logits[0], upsampled[0], is_thing, 0.5, 0.25)
    np.testing.assert_array_equal(prediction.panoptic < 0, reference < 0)
    # Same partition of the pixels, same class per segment (ids differ by design).
    pairs = {(int(a), int(b)) for a, b in zip(prediction.panoptic.ravel(), reference.ravel(),
                                                strict=True) if b >= 0}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    for ours, theirs in pairs:
        assert ours // 1000 == classes[theirs]
    assert len(pairs) >= 2  # the random case is not trivially empty


@pytest.mark.parametrize('seed', range(3))
def test_scatter_counts_equal_the_one_hot_counts(seed):
    """Won areas counted by a scatter-add over [B, H*W] equal the one-hot [B, K, H, W] sums:
    batches, padding, queries not kept, and pixels where nothing is kept included."""
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(2, 9, 4, generator=generator) * 5
    mask_logits = torch.randn(2, 9, 10, 12, generator=generator) * 3
    valid = torch.ones(2, 10, 12, dtype=torch.bool)
    valid[0, 7:] = False
    valid[1, :, 9:] = False
    one_hot = dense_panoptic_scores(class_logits, mask_logits, None, 0.4, valid)
    scatter = dense_panoptic_scores(class_logits, mask_logits, None, 0.4, valid,
                                    scatter_counts=True)
    for name in PanopticScores._fields:
        assert torch.equal(getattr(one_hot, name), getattr(scatter, name)), name
    assert one_hot.won_area.sum() > 0 and (~one_hot.keep).any()


def test_segment_areas_and_boxes_on_a_known_map():
    label_map = np.array([[5, 5, -1],
                          [7, 5, 7]])
    areas, boxes = segment_areas_and_boxes(label_map, np.array([5, 7, 9]))
    assert areas.tolist() == [3, 2, 0]
    assert boxes.tolist() == [[0, 0, 2, 2], [0, 1, 3, 1], [0, 0, 0, 0]]


def test_semantic_argmax_of_class_weighted_masks():
    # q0 class 0 with p = 0.8 (logits log .8, log .1, log .1), mask on the left half;
    # q1 class 1 with p = 0.6 (log .2, log .6, log .2), mask everywhere (logit 0: 0.5).
    class_logits = torch.tensor([[[0.8, 0.1, 0.1], [0.2, 0.6, 0.2]]]).log()
    mask_logits = torch.zeros(1, 2, 2, 4)
    mask_logits[0, 0, :, :2] = ON
    mask_logits[0, 0, :, 2:] = OFF
    # Left: class 0 = 0.8 * 1 + 0.2 * 0.5 = 0.9, class 1 = 0.1 * 1 + 0.6 * 0.5 = 0.4.
    # Right: class 0 = 0.8 * 0 + 0.2 * 0.5 = 0.1, class 1 = 0.1 * 0 + 0.6 * 0.5 = 0.3.
    scores = semantic_scores(class_logits, mask_logits)
    assert scores[0, :, 0, 0].tolist() == pytest.approx([0.9, 0.4], abs=1e-4)
    assert scores[0, :, 0, 3].tolist() == pytest.approx([0.1, 0.3], abs=1e-4)
    assert decode_semantic(class_logits, mask_logits)[0].tolist() == [[0, 0, 1, 1]] * 2


def test_instances_top_k_over_query_class_pairs():
    # q0: class probs 0.7 / 0.2 (no object 0.1); q1: 0.1 / 0.6 (no object 0.3).
    class_logits = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]]).log()
    mask_logits = torch.full((1, 2, 2, 2), OFF)
    mask_logits[0, 0, 0, :] = 2.0   # q0: two pixels at logit 2 -> mean sigmoid(2)
    mask_logits[0, 1, :, :] = 0.5   # q1: all four pixels at logit 0.5
    instances = decode_instances(class_logits, mask_logits, top_k=3)[0]
    # Pairs by probability: (q0, c0) 0.7, (q1, c1) 0.6, (q0, c1) 0.2.
    assert instances.queries.tolist() == [0, 1, 0]
    assert instances.labels.tolist() == [0, 1, 1]
    sig2, sig05 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-0.5))
    assert instances.scores.tolist() == pytest.approx([0.7 * sig2, 0.6 * sig05, 0.2 * sig2])
    assert instances.masks[0].tolist() == [[True, True], [False, False]]
    assert instances.masks[1].all()
    # Stuff pairs go when is_thing is given (class 1 is stuff here).
    things_only = decode_instances(class_logits, mask_logits, top_k=3,
                                   is_thing=[True, False])[0]
    assert things_only.labels.tolist() == [0]


def test_letterbox_crops_the_padding_before_resizing():
    letterbox = Letterbox.fit((16, 8), (8, 8))     # portrait image: scale 0.5, content 8 x 4
    assert letterbox.content_size == (8, 4)
    # Mask logits on the 4 x 4 output grid of the padded 8 x 8 input: +10 over the image
    # (grid cols 0-1), -10 over the padding (cols 2-3).
    grid = torch.full((1, 1, 4, 4), ON)
    grid[..., 2:] = OFF
    image_logits = resize_logits(grid, letterbox)
    assert image_logits.shape == (1, 1, 16, 8)
    assert (image_logits > 0).all()                # the padding never reaches the image
    assert (resize_logits(grid, (16, 8)) < 0).any()  # a plain resize would smear it in


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_dense_scores_export_to_onnx_and_match_onnxruntime(tmp_path):
    pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    module = DensePanoptic(out_size=(8, 12), score_threshold=0.5)
    class_logits, mask_logits = torch.randn(1, 6, 4) * 3, torch.randn(1, 6, 4, 6) * 3
    path = tmp_path / 'dense.onnx'
    torch.onnx.export(module, (class_logits, mask_logits), str(path), opset_version=18,
                      dynamo=False, input_names=['class_logits', 'mask_logits'],
                      output_names=list(PanopticScores._fields))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    outputs = session.run(None, {'class_logits': class_logits.numpy(),
                                 'mask_logits': mask_logits.numpy()})
    for name, ours, theirs in zip(PanopticScores._fields, module(class_logits, mask_logits),
                                  outputs, strict=True):
        np.testing.assert_allclose(theirs, ours.numpy(), rtol=1e-5, err_msg=name)
