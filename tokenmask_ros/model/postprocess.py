"""Turning per-query class and mask logits into panoptic, semantic and instance outputs.

The decoding follows EoMT / Mask2Former inference, split in two so the dense half can live
in the exported graph (``docs/architecture.md``, "The deploy graph"):

- :func:`dense_panoptic_scores` is the work that is dense over pixels (class softmax, mask
  sigmoid, bilinear upsampling, the score-weighted argmax over kept queries, per-query
  areas). It is plain tensor code with no data-dependent Python control flow, so it can sit
  at the end of an exported ONNX / TensorRT graph, which then returns compact tensors
  (:class:`PanopticScores`) instead of K full-resolution masks.
- :func:`decode_panoptic` is the small, data-dependent bookkeeping on the host (which
  queries survive, stuff merging, ids, bounding boxes, areas), vectorised NumPy.

:func:`decode_semantic` and :func:`decode_instances` are the semantic and instance decodings
used for evaluation. Everything here is pure PyTorch / NumPy; nothing imports ROS.

Conventions (``docs/architecture.md``, "Outputs"): panoptic id
``class_id * label_divisor + instance_id`` in int32, stuff instance id 0, thing instances
numbered from 1 within their class, VOID = -1.
The semantic map of a :class:`Prediction` uses :func:`semantic_void` (255 for up to 255
classes, stored as uint8 = the ``mono8`` ROS encoding; 65535 and uint16 above that) for
pixels no segment covers, the same 255 that ground truth uses as ``ignore_index``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenmask_ros.defaults import LABEL_DIVISOR, OVERLAP_THRESHOLD, SCORE_THRESHOLD

# Torch-free data types, re-exported here (their home lets NumPy-only modules use them).
from tokenmask_ros.panoptic_types import (
    VOID,
    Prediction,
    Segment,
    segment_areas_and_boxes,
    semantic_dtype,
    semantic_void,
)

# --------------------------------------------------------------------------- resizing


@dataclass(frozen=True)
class Letterbox:
    """Where the image sits inside the padded network input (EoMT's preprocessing).

    The image of ``image_size`` (H, W) was resized to ``content_size`` and placed at the
    top-left corner of an ``input_size`` canvas, the rest being padding.
    """

    input_size: tuple[int, int]
    content_size: tuple[int, int]
    image_size: tuple[int, int]

    @classmethod
    def fit(cls, image_size: Sequence[int], input_size: Sequence[int]) -> Letterbox:
        """Resize so the image just fits ``input_size`` (longer side fills it), pad the rest."""
        height, width = (int(s) for s in image_size)
        in_h, in_w = (int(s) for s in input_size)
        scale = min(in_h / height, in_w / width)
        content = (min(in_h, max(1, round(height * scale))),
                   min(in_w, max(1, round(width * scale))))
        return cls((in_h, in_w), content, (height, width))


def resize_logits(logits: Tensor, size: Sequence[int] | Letterbox | None) -> Tensor:
    """Bilinearly resize ``[B, N, h, w]`` logits to ``size``.

    ``size`` is ``None`` (unchanged), an ``(H, W)`` pair, or a :class:`Letterbox`: then, as in
    EoMT's inference, the logits are upsampled to the padded input size, the padding is
    cropped and the remainder resized to the original image size. The sizes are Python
    ints, so an exported graph bakes them in (one camera resolution per graph).
    """
    if size is None:
        return logits
    if isinstance(size, Letterbox):
        logits = _interpolate(logits, size.input_size)
        content_h, content_w = size.content_size
        logits = logits[..., :content_h, :content_w]
        return _interpolate(logits, size.image_size)
    return _interpolate(logits, (int(size[0]), int(size[1])))


def _interpolate(logits: Tensor, size: tuple[int, int]) -> Tensor:
    # (Skipped while tracing for ONNX export: the comparison would be frozen into the graph.)
    if not torch.jit.is_tracing() and tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode='bilinear', align_corners=False)


# --------------------------------------------------------------------------- panoptic


class PanopticScores(NamedTuple):
    """The compact result of :func:`dense_panoptic_scores` (tensors or arrays, batch first).

    ``segment_map`` [B, H, W]: index of the kept query that wins the pixel (argmax of
    score * sigmoid(mask) over kept queries) where that query's own mask covers it
    (sigmoid >= 0.5), else -1. ``query_class`` [B, K]: argmax class, C = no object.
    ``query_score`` [B, K]: its probability. ``keep`` [B, K]: not no-object and score above
    the threshold. ``mask_area`` [B, K]: pixels with sigmoid >= 0.5 (the original mask).
    ``won_area`` [B, K]: pixels the (kept) query wins in the argmax, Mask2Former's
    ``mask_area``; their ratio is the overlap test.
    """

    segment_map: Tensor
    query_class: Tensor
    query_score: Tensor
    keep: Tensor
    mask_area: Tensor
    won_area: Tensor


def query_scores(class_logits: Tensor, score_threshold: float | Tensor = SCORE_THRESHOLD
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(score, class, keep) [B, K] of each query: its best class (C = no object), that
    class's probability, and whether it is a real class scoring above the threshold."""
    scores, classes = class_logits.softmax(-1).max(-1)
    keep = (classes != class_logits.shape[-1] - 1) & (scores > score_threshold)
    return scores, classes, keep


def dense_panoptic_scores(class_logits: Tensor, mask_logits: Tensor,
                          out_size: Sequence[int] | Letterbox | None = None,
                          score_threshold: float | Tensor = SCORE_THRESHOLD,
                          valid: Tensor | None = None, scatter_counts: bool = False
                          ) -> PanopticScores:
    """The pixel-dense half of panoptic decoding, export-friendly (see :class:`PanopticScores`).

    ``class_logits`` [B, K, C+1] (last = no object), ``mask_logits`` [B, K, h, w] upsampled
    to ``out_size`` first (:func:`resize_logits`). ``valid`` ([B or 1, H, W] bool, optional)
    marks the pixels that hold image content: padding is never won (segment map -1) and not
    counted in the areas, as if the logits had been cropped. ``score_threshold`` may be a
    tensor, so an exported graph takes it as an input. Memory: one [B, K, H, W] float and
    bool tensor at the output size, like the masks themselves. ``scatter_counts``: count each
    query's won pixels with one scatter-add over [B, H*W] (ONNX ScatterElements with
    reduction) instead of a one-hot [B, K, H, W] pass; the same integers, cheaper, but
    TensorRT builds such scatters only through a plugin, so its graphs keep the one-hot.
    """
    mask_logits = resize_logits(mask_logits, out_size)
    num_queries = class_logits.shape[1]
    scores, classes, keep = query_scores(class_logits, score_threshold)
    # Kept queries weigh in with score * sigmoid >= 0; the others with -1, so they never win
    # and a pixel's best value is >= 0 exactly when some query is kept. Padding is masked on
    # the [B, H, W] results, not on [B, K, H, W] inputs: every pass over K full-resolution
    # maps is most of the decoding's cost. A scalar fill value: a full_like tensor would be
    # constant-folded into a [B, K, H, W] initializer of the ONNX export.
    # score * sigmoid for kept queries, exactly -1 (0 * sigmoid - 1) for the others: one
    # multiply-add the runtimes fuse with the sigmoid, instead of a select over [B, K, H, W].
    scale = torch.where(keep, scores, 0.0)[:, :, None, None]
    offset = torch.where(keep, 0.0, -1.0)[:, :, None, None]
    weighted = scale * mask_logits.sigmoid() + offset
    winner = weighted.argmax(1, keepdim=True)  # ties: the first query, as before selection
    best = torch.gather(weighted, 1, winner).squeeze(1)
    own_logit = torch.gather(mask_logits, 1, winner).squeeze(1)
    winner = winner.squeeze(1)
    won_pixel = best >= 0
    covered = mask_logits >= 0
    if valid is not None:  # padding: never won, not counted
        won_pixel = won_pixel & valid
        covered = covered & valid[:, None]
    segment_map = torch.where(won_pixel & (own_logit >= 0), winner, -1)
    if scatter_counts:
        won_area = torch.zeros_like(scores, dtype=torch.int32).scatter_add(
            1, winner.flatten(1), won_pixel.flatten(1).to(torch.int32))
    else:
        query_ids = torch.arange(num_queries, device=mask_logits.device)[None, :, None, None]
        won = (winner[:, None] == query_ids) & won_pixel[:, None]
        won_area = won.sum((2, 3), dtype=torch.int32)
    return PanopticScores(
        segment_map=segment_map.to(torch.int32),
        query_class=classes.to(torch.int32),
        query_score=scores,
        keep=keep,
        mask_area=covered.sum((2, 3), dtype=torch.int32),
        won_area=won_area,
    )


class DensePanoptic(nn.Module):
    """:func:`dense_panoptic_scores` as a module, to append to a model before ONNX export."""

    def __init__(self, out_size: Sequence[int] | Letterbox | None = None,
                 score_threshold: float = SCORE_THRESHOLD):
        super().__init__()
        self.out_size = out_size
        self.score_threshold = float(score_threshold)

    def forward(self, class_logits: Tensor, mask_logits: Tensor) -> PanopticScores:
        return dense_panoptic_scores(class_logits, mask_logits, self.out_size,
                                     self.score_threshold)


def _numpy(value) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def thing_flags(classes_or_flags, num_classes: int | None = None) -> np.ndarray:
    """A bool array, one per class: ``ClassInfo`` objects, bools, or ``None`` (all things)."""
    if classes_or_flags is None:
        if num_classes is None:
            raise ValueError('num_classes is needed when no class information is given')
        return np.ones(num_classes, dtype=bool)
    return np.array([getattr(c, 'is_thing', c) for c in classes_or_flags], dtype=bool)


def decode_panoptic(scores: PanopticScores, is_thing, *, batch_index: int = 0,
                    overlap_threshold: float = OVERLAP_THRESHOLD,
                    label_divisor: int = LABEL_DIVISOR) -> Prediction:
    """Host-side panoptic bookkeeping for image ``batch_index`` of ``scores``.

    Keeps the queries ``scores.keep`` marks, drops those whose kept area (pixels won in the
    argmax) is below ``overlap_threshold`` of their original mask area or that end up with
    no pixels, merges all stuff queries of one class into one segment (instance 0, score =
    the best of its queries) and numbers thing instances of each class from 1 in order of
    decreasing score. ``is_thing``: per-class flags or ``ClassInfo`` objects
    (:func:`thing_flags`); ``None`` treats every class as a thing.
    """
    segment_map = _numpy(scores.segment_map[batch_index]).astype(np.int64)
    classes = _numpy(scores.query_class[batch_index]).astype(np.int64)
    query_score = _numpy(scores.query_score[batch_index]).astype(np.float64)
    keep = _numpy(scores.keep[batch_index]).astype(bool)
    mask_area = _numpy(scores.mask_area[batch_index]).astype(np.int64)
    won_area = _numpy(scores.won_area[batch_index]).astype(np.int64)
    num_queries = classes.shape[0]
    flags = thing_flags(is_thing, num_classes=int(classes.max(initial=0)) + 1)
    num_classes = len(flags)
    if num_queries >= label_divisor:
        raise ValueError(f'{num_queries} queries do not fit label_divisor {label_divisor}')

    final_area = np.bincount(segment_map[segment_map >= 0], minlength=num_queries)
    survives = (keep & (mask_area > 0) & (won_area > 0) & (final_area > 0)
                & (won_area >= overlap_threshold * np.maximum(mask_area, 1)))
    query_ids = np.full(num_queries + 1, VOID, dtype=np.int64)  # slot 0: pixels already void
    survivors = np.flatnonzero(survives)
    if len(survivors):
        if classes[survivors].max() >= num_classes:
            raise ValueError(f'class {classes[survivors].max()} has no is_thing flag')
        # Things: rank within class by decreasing score (stable, so ties keep query order).
        order = survivors[np.lexsort((-query_score[survivors], classes[survivors]))]
        order_thing = flags[classes[order]]
        first_of_class = np.r_[True, classes[order][1:] != classes[order][:-1]]
        run_start = np.maximum.accumulate(np.where(first_of_class, np.arange(len(order)), 0))
        instance = np.where(order_thing, np.arange(len(order)) - run_start + 1, 0)
        query_ids[order + 1] = classes[order] * label_divisor + instance
    panoptic = query_ids[segment_map + 1].astype(np.int32)
    semantic = np.where(panoptic >= 0, panoptic // label_divisor, semantic_void(num_classes))
    semantic = semantic.astype(semantic_dtype(num_classes))
    ids = query_ids[survivors + 1]
    segments = _segments(panoptic, ids, classes[survivors], query_score[survivors], flags)
    return Prediction(panoptic, semantic, segments, label_divisor)


def _segments(panoptic: np.ndarray, query_ids: np.ndarray, query_classes: np.ndarray,
              query_scores: np.ndarray, flags: np.ndarray) -> list[Segment]:
    """Segments with areas and boxes, one per distinct id (merged stuff takes its best score)."""
    if not len(query_ids):
        return []
    ids, first, inverse = np.unique(query_ids, return_index=True, return_inverse=True)
    best = np.full(len(ids), -np.inf)
    np.maximum.at(best, inverse, query_scores)
    areas, boxes = segment_areas_and_boxes(panoptic, ids)
    return [Segment(int(i), int(c), float(s), tuple(int(v) for v in b), int(a), bool(flags[c]))
            for i, c, s, b, a in zip(ids, query_classes[first], best, boxes, areas, strict=True)]


def panoptic_predictions(class_logits: Tensor, mask_logits: Tensor, is_thing,
                         out_size: Sequence[int] | Letterbox | None = None,
                         score_threshold: float = SCORE_THRESHOLD,
                         overlap_threshold: float = OVERLAP_THRESHOLD,
                         label_divisor: int = LABEL_DIVISOR) -> list[Prediction]:
    """Dense scores plus host decoding for every image of a batch (the PyTorch path)."""
    scores = dense_panoptic_scores(class_logits, mask_logits, out_size, score_threshold)
    return [decode_panoptic(scores, is_thing, batch_index=i, overlap_threshold=overlap_threshold,
                            label_divisor=label_divisor)
            for i in range(class_logits.shape[0])]


# --------------------------------------------------------------------------- semantic


def semantic_scores(class_logits: Tensor, mask_logits: Tensor,
                    out_size: Sequence[int] | Letterbox | None = None) -> Tensor:
    """Per-class pixel scores [B, C, H, W]: sigmoid masks weighted by class probabilities.

    The no-object column is dropped after the softmax (EoMT). Average these over sliding
    windows before :func:`torch.argmax` for EoMT's windowed semantic evaluation.
    """
    masks = resize_logits(mask_logits, out_size).sigmoid()
    probs = class_logits.softmax(-1)[..., :-1]
    return torch.einsum('bqhw,bqc->bchw', masks, probs)


def decode_semantic(class_logits: Tensor, mask_logits: Tensor,
                    out_size: Sequence[int] | Letterbox | None = None) -> Tensor:
    """Semantic class map [B, H, W] (int64, every pixel gets a class)."""
    return semantic_scores(class_logits, mask_logits, out_size).argmax(1)


# --------------------------------------------------------------------------- instance


class Instances(NamedTuple):
    """Instance predictions of one image: ``masks`` [N, H, W] bool, ``scores`` [N],
    ``labels`` [N] (class ids), ``queries`` [N] (the query each came from)."""

    masks: Tensor
    scores: Tensor
    labels: Tensor
    queries: Tensor


def decode_instances(class_logits: Tensor, mask_logits: Tensor,
                     out_size: Sequence[int] | Letterbox | None = None, top_k: int = 100,
                     is_thing=None) -> list[Instances]:
    """Top-``top_k`` (query, class) pairs per image, no-object excluded (EoMT / Mask2Former).

    Mask = logit > 0; score = class probability * mean sigmoid inside the mask (0 for an
    empty mask). With ``is_thing`` given, pairs of stuff classes are dropped after the
    top-k, as Mask2Former does for panoptic datasets. A query may appear with several
    classes. Results are ordered by decreasing class probability.
    """
    mask_logits = resize_logits(mask_logits, out_size)
    batch, num_queries, num_outputs = class_logits.shape
    num_classes = num_outputs - 1
    probs = class_logits.softmax(-1)[..., :-1].flatten(1)
    k = min(top_k, num_queries * num_classes)
    top_probs, top_index = probs.topk(k, dim=1)
    flags = None if is_thing is None else torch.as_tensor(
        thing_flags(is_thing), device=class_logits.device)
    results = []
    for b in range(batch):
        labels = top_index[b] % num_classes
        queries = top_index[b] // num_classes
        if flags is not None:
            thing = flags[labels]
            labels, queries, top = labels[thing], queries[thing], top_probs[b][thing]
        else:
            top = top_probs[b]
        # Once per distinct query, not per (query, class) pair: with fewer queries than
        # top_k, one query holds several of the pairs.
        distinct, pair_query = queries.unique(return_inverse=True)
        logits = mask_logits[b, distinct]
        masks = logits > 0
        inside = (logits.sigmoid() * masks).flatten(1).sum(1)
        mask_score = inside / masks.flatten(1).sum(1).clamp(min=1)
        results.append(Instances(masks[pair_query], top * mask_score[pair_query], labels,
                                 queries))
    return results
