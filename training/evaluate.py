#!/usr/bin/env python3
"""Panoptic (PQ / SQ / RQ), instance (mask AP) and semantic (mIoU) evaluation of a checkpoint.

Inference follows EoMT's evaluation (``docs/architecture.md``, "Evaluation"):

* panoptic and instance: **padded inference**. Each image is resized so the longer side fits
  the model's ``img_size`` and padded bottom/right (:class:`Letterbox`); the logits are
  upsampled, the padding cropped, and the rest resized to the ORIGINAL resolution, where
  :func:`panoptic_predictions` (score / overlap thresholds) and :func:`decode_instances`
  (top-100 (query, class) pairs, mask = logit > 0, score = class probability x mean mask
  sigmoid, thing classes only) decode it;
* semantic: ``--semantic-mode sliding`` (default for ADE20K) is EoMT's **sliding window**
  (:func:`sliding_window_semantic`): the image is resized so it just covers the input
  (the shorter side equals a square input's size), windows of the input size slide along
  the longer side, their :func:`semantic_scores` are averaged and argmaxed.
  ``--semantic-mode padded`` (default for panoptic datasets) takes :func:`decode_semantic`
  of the padded forward pass. Either way every pixel gets a class.

    python training/evaluate.py --checkpoint model.safetensors --synthetic 100 --seed 0
    python training/evaluate.py --checkpoint model.safetensors \\
        --coco-panoptic val2017 panoptic_val2017 panoptic_val2017.json --plot 4
    python training/evaluate.py --checkpoint ade.safetensors \\
        --ade20k-semantic ADEChallengeData2016

Metrics (torchmetrics, wrapped by :mod:`training.metrics`): PQ / SQ / RQ overall, for things
and for stuff, per class (PanopticQuality's rules and states, its per-image counting done
with NumPy by :func:`training.metrics.segment_stats`, which is much faster); mIoU
(MulticlassJaccardIndex, 255 ignored); mask AP, AP50, AP75, AP small / medium / large and
per-class AP (MeanAveragePrecision(iou_type='segm'), pycocotools backend) on thing classes,
``-1`` where COCO has nothing to average (as pycocotools reports it). ADE20K SceneParsing is
a semantic benchmark: mIoU only.

Writes into ``--out`` (default ``eval_results/``): ``metrics.json``; for panoptic datasets
the predictions in COCO-panoptic format (``panoptic/<image>.png``, segment id = R + 256 G +
256^2 B, and ``predictions.json`` whose ``segments_info`` use the dataset's category ids;
written by :mod:`tokenmask_ros.coco_panoptic_io`, as ``tokenmask predict`` writes them); for
ADE20K ``semantic/<image>.png`` in the benchmark's format (class + 1, uint8); with
``--plot K`` ``predictions_grid.png`` (K rows: image | ground truth | prediction).

The metric accumulation (:class:`EvalMetrics`) takes any object with ``panoptic`` and
``semantic`` maps, so tests can feed it ground truth ("oracle", PQ 100).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python training/evaluate.py` from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tokenmask_ros.bundled import not_found_message  # noqa: E402
from tokenmask_ros.cli import parse_size  # noqa: E402
from tokenmask_ros.coco_panoptic_io import categories_json, encode_panoptic, write_png  # noqa: E402
from tokenmask_ros.image_io import write_bgr, write_rgb  # noqa: E402
from tokenmask_ros.model import CheckpointError, load_checkpoint, load_config  # noqa: E402
from tokenmask_ros.model.postprocess import (  # noqa: E402
    LABEL_DIVISOR,
    OVERLAP_THRESHOLD,
    SCORE_THRESHOLD,
    VOID,
    Letterbox,
    Prediction,
    decode_instances,
    decode_semantic,
    panoptic_predictions,
    resize_logits,
    semantic_scores,
)
from tokenmask_ros.viz import colorize_panoptic, overlay, palette  # noqa: E402
from training.datasets.common import IGNORE_INDEX, DatasetError, masks_to_semantic  # noqa: E402
from training.metrics import (  # noqa: E402
    AP_KEYS,
    InstanceMetrics,
    PanopticMetrics,
    SemanticMetrics,
    target_panoptic,
)

SEMANTIC_MODES = ('padded', 'sliding')
INSTANCE_TOP_K = 100  # EoMT / Mask2Former: top-100 (query, class) pairs per image
AP_NAMES = tuple(name for _, name in AP_KEYS)  # ap, ap50, ap75, ap_small, ...
# Mask AP is on by default: it adds about 6 % of CPU time to a synthetic evaluation
# (top-k decoding, RLE encoding, COCOeval), far less than --semantic-mode sliding.
INSTANCE_DEFAULT = True


class EvaluationError(ValueError):
    """Evaluation cannot run: missing files, class mismatch, bad options (one-line message)."""


@dataclass(frozen=True)
class EvalClass:
    """One evaluated class: contiguous ``index``, the dataset's ``category_id``, its looks."""

    index: int
    category_id: int
    name: str
    is_thing: bool
    color: tuple[int, int, int]


# --------------------------------------------------------------------------- datasets


def synthetic_dataset(count: int, seed: int, size: tuple[int, int]):
    """``count`` validation scenes (generator stream 1) of ``size`` (H, W) and their classes."""
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
    from training.datasets.synthetic import SyntheticPanoptic

    if count < 1:
        raise EvaluationError(f'--synthetic needs at least 1 image, got {count}')
    if seed < 0:
        raise EvaluationError(f'--seed must be >= 0, got {seed}')
    try:
        dataset = SyntheticPanoptic(count, width=size[1], height=size[0], seed=seed,
                                    split='val')
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    classes = [EvalClass(c.id, c.id + 1, c.name, c.is_thing, tuple(c.color))
               for c in SYNTHETIC_CLASSES]
    return dataset, classes


def coco_dataset(images_dir: str, panoptic_dir: str, json_file: str):
    """The COCO-panoptic reader on the given folders and its classes."""
    from training.datasets.coco_panoptic import CocoPanoptic

    try:
        dataset = CocoPanoptic(images_dir, panoptic_dir, json_file)
    except (FileNotFoundError, DatasetError) as error:
        raise EvaluationError(str(error)) from None
    if len(dataset) == 0:
        raise EvaluationError(f'{json_file} lists no annotated images')
    colors = palette(len(dataset.classes))
    classes = [EvalClass(c.index, c.category_id, c.name, c.is_thing,
                         tuple(c.color) if any(c.color) else tuple(int(v) for v in colors[i]))
               for i, c in enumerate(dataset.classes)]
    return dataset, classes


def ade20k_dataset(root: str):
    """The ADE20K SceneParsing validation split under ``root`` (``ADEChallengeData2016``)
    and its 150 classes (all stuff; ``category_id`` = the annotation value, class + 1)."""
    from training.datasets.ade20k_semantic import ADE20KSemantic

    try:
        dataset = ADE20KSemantic(root, 'validation')
    except (FileNotFoundError, DatasetError) as error:
        raise EvaluationError(str(error)) from None
    colors = palette(dataset.num_classes)
    classes = [EvalClass(i, i + 1, name, False, tuple(int(v) for v in colors[i]))
               for i, name in enumerate(dataset.class_names)]
    return dataset, classes


def check_classes(config, classes: list[EvalClass], source: str) -> None:
    """Refuse a checkpoint whose classes are not the dataset's (names, in order)."""
    names = [c.name for c in classes]
    if config.classes:
        model_names = [c.name for c in config.classes]
        if model_names != names:
            raise EvaluationError(
                f'class mismatch: the checkpoint predicts {model_names} but the {source} '
                f'classes are {names}')
    elif config.num_classes != len(classes):
        raise EvaluationError(
            f'class mismatch: the checkpoint has {config.num_classes} classes (no names) but '
            f'the {source} dataset has {len(classes)}')



# --------------------------------------------------------------------------- inference


def _plain(image) -> torch.Tensor:
    """A plain tensor view of an image (tv_tensors.Image or array-like)."""
    return image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else \
        torch.as_tensor(image)


def preprocess(image: torch.Tensor, input_size: tuple[int, int]
               ) -> tuple[torch.Tensor, Letterbox]:
    """A uint8 ``[3, H, W]`` image as a float ``[3, *input_size]`` network input in [0, 1].

    EoMT's inference preprocessing: resize (bilinear, antialiased) so the image just fits
    ``input_size``, then zero-pad bottom/right; the :class:`Letterbox` says where it sits.
    """
    image = _plain(image)
    letterbox = Letterbox.fit(image.shape[-2:], input_size)
    if tuple(image.shape[-2:]) != letterbox.content_size:
        image = TF.resize(image, list(letterbox.content_size), antialias=True)
    pad_h = input_size[0] - letterbox.content_size[0]
    pad_w = input_size[1] - letterbox.content_size[1]
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0)
    return image.float() / 255.0, letterbox


def semantic_windows(image_size, input_size) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """EoMT's sliding-window layout: the resized image size and each window's (top, left).

    The image is scaled by ``max(in_h / H, in_w / W)``, so it covers the ``input_size``
    window with one side equal to it (for a square input: the shorter side becomes the
    input size). Along the other side, of length ``L`` and window size ``S``, EoMT's
    ``window_imgs_semantic`` places ``n = ceil(L / S)`` windows spreading the overlap
    ``n S - L`` evenly: window ``j`` starts at ``int(j (S - (n S - L) / (n - 1)))``. That
    floor is computed in integers here, so the last window ends exactly at ``L`` and every
    pixel is covered.
    """
    height, width = (int(s) for s in image_size)
    in_h, in_w = (int(s) for s in input_size)
    scale = max(in_h / height, in_w / width)
    resized = (max(in_h, round(height * scale)), max(in_w, round(width * scale)))
    axis = 0 if resized[0] > in_h else 1
    length, window = resized[axis], (in_h, in_w)[axis]
    count = math.ceil(length / window)
    overlap = count * window - length
    starts = [0] if count == 1 else \
        [j * (window * (count - 1) - overlap) // (count - 1) for j in range(count)]
    return resized, [(start, 0) if axis == 0 else (0, start) for start in starts]


@torch.inference_mode()
def sliding_window_semantic(model, image: torch.Tensor,
                            device: str | torch.device = 'cpu') -> torch.Tensor:
    """Per-class semantic scores ``[C, H, W]`` of one uint8 ``[3, H, W]`` image, EoMT's
    sliding-window evaluation (argmax over dim 0 gives the class map).

    The image is resized (bilinear, antialiased) to the :func:`semantic_windows` size; all
    its windows go through the model as one batch; each window's :func:`semantic_scores`
    (mask logits upsampled to the window first) are summed into the resized image and
    divided by the number of windows covering each pixel; the average is bilinearly
    resized to the original image size.
    """
    image = _plain(image)
    image_size = tuple(image.shape[-2:])
    input_size = tuple(model.config.img_size)
    resized, corners = semantic_windows(image_size, input_size)
    if image_size != resized:
        image = TF.resize(image, list(resized), antialias=True)
    in_h, in_w = input_size
    crops = torch.stack([image[:, top:top + in_h, left:left + in_w] for top, left in corners])
    output = model((crops.float() / 255.0).to(device))
    scores = semantic_scores(output.class_logits, output.mask_logits, input_size)
    sums = scores.new_zeros((scores.shape[1], *resized))
    counts = scores.new_zeros((1, *resized))
    for (top, left), window_scores in zip(corners, scores, strict=True):
        sums[:, top:top + in_h, left:left + in_w] += window_scores
        counts[:, top:top + in_h, left:left + in_w] += 1
    return resize_logits((sums / counts)[None], image_size)[0]


def _forward_padded(model, images, device):
    input_size = tuple(model.config.img_size)
    inputs, boxes = zip(*(preprocess(image, input_size) for image in images), strict=True)
    return model(torch.stack(inputs).to(device)), boxes


@torch.inference_mode()
def predict(model, images: list[torch.Tensor], is_thing, device: str | torch.device = 'cpu',
            score_threshold: float = SCORE_THRESHOLD,
            overlap_threshold: float = OVERLAP_THRESHOLD, *, semantic_mode: str = 'padded',
            instance_top_k: int = 0) -> list[Prediction]:
    """Panoptic predictions at each image's original size, with ``semantic_argmax`` set.

    ``images``: uint8 ``[3, H, W]`` tensors (sizes may differ). The returned
    :class:`Prediction` objects carry an extra ``semantic_argmax`` attribute: the dense
    semantic map (int64 class ids, no void) of :func:`decode_semantic` on the padded forward
    pass (``semantic_mode='padded'``) or of :func:`sliding_window_semantic` (``'sliding'``,
    one more forward pass per image). With ``instance_top_k > 0`` they also carry
    ``instances``: :func:`decode_instances` (that many (query, class) pairs, thing classes
    kept), masks at the original size, on the CPU.
    """
    if semantic_mode not in SEMANTIC_MODES:
        raise ValueError(f'semantic_mode must be one of {SEMANTIC_MODES}, got {semantic_mode!r}')
    output, boxes = _forward_padded(model, images, device)
    results = []
    for index, letterbox in enumerate(boxes):
        class_logits = output.class_logits[index:index + 1]
        mask_logits = output.mask_logits[index:index + 1]
        prediction = panoptic_predictions(class_logits, mask_logits, is_thing, letterbox,
                                          score_threshold, overlap_threshold)[0]
        if semantic_mode == 'padded':
            semantic = decode_semantic(class_logits, mask_logits, letterbox)[0]
        else:
            semantic = sliding_window_semantic(model, images[index], device).argmax(0)
        prediction.semantic_argmax = semantic.cpu().numpy()
        if instance_top_k > 0:
            instances = decode_instances(class_logits, mask_logits, letterbox, instance_top_k,
                                         is_thing)[0]
            prediction.instances = type(instances)(*(t.cpu() for t in instances))
        results.append(prediction)
    return results


@torch.inference_mode()
def predict_semantic(model, images: list[torch.Tensor], device: str | torch.device = 'cpu',
                     semantic_mode: str = 'sliding') -> list[np.ndarray]:
    """Semantic class maps (int64 ``[H, W]``, original sizes) alone, for semantic datasets."""
    if semantic_mode == 'sliding':
        return [sliding_window_semantic(model, image, device).argmax(0).cpu().numpy()
                for image in images]
    if semantic_mode != 'padded':
        raise ValueError(f'semantic_mode must be one of {SEMANTIC_MODES}, got {semantic_mode!r}')
    output, boxes = _forward_padded(model, images, device)
    return [decode_semantic(output.class_logits[i:i + 1], output.mask_logits[i:i + 1],
                            letterbox)[0].cpu().numpy() for i, letterbox in enumerate(boxes)]


# --------------------------------------------------------------------------- metrics


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


def _number(value, width: int = 7) -> str:
    """A table cell: the value with 2 decimals, ``-`` for None and the -1 of "no AP"."""
    if value is None or value == -1.0:
        return f'{"-":>{width}}'
    return f'{value:{width}.2f}'


@torch.no_grad()
def evaluate_model(model, samples, classes: list[EvalClass],
                   device: str | torch.device = 'cpu') -> dict:
    """PQ / mIoU of ``model`` over ``samples`` (a dataset or a list of ``(image, target)``),
    one image at a time with this script's padded inference; for the callers that evaluate
    a model in code (periodic evaluation, ablation, training curves). The model is put in
    eval mode for the call and its mode restored."""
    was_training = model.training
    model.eval()
    metrics = EvalMetrics(classes)
    is_thing = [c.is_thing for c in classes]
    for index in range(len(samples)):
        image, target = samples[index]
        metrics.update(predict(model, [image], is_thing, device)[0], target)
    model.train(was_training)
    return metrics.compute()


def format_table(metrics: dict) -> str:
    """A compact text table: the headline numbers, then per class PQ / SQ / RQ, IoU and AP
    (only the families ``metrics`` holds)."""
    panoptic, instance = 'pq' in metrics, 'ap' in metrics
    headline = [('mIoU', 'miou')]
    if panoptic:
        headline = [('PQ', 'pq'), ('PQ_th', 'pq_things'), ('PQ_st', 'pq_stuff'), ('SQ', 'sq'),
                    ('RQ', 'rq'), *headline]
    if instance:
        headline += [('AP', 'ap'), ('AP50', 'ap50'), ('AP75', 'ap75'), ('APs', 'ap_small'),
                     ('APm', 'ap_medium'), ('APl', 'ap_large')]
    lines = ['  '.join(f'{n:>7}' for n, _ in headline),
             '  '.join(_number(metrics[k]) for _, k in headline), '']
    width = max([5, *(len(n) for n in metrics['per_class'])])
    header = f'{"class":<{width}}  {"kind":<5}'
    header += f'  {"PQ":>6}  {"SQ":>6}  {"RQ":>6}' if panoptic else ''
    header += f'  {"IoU":>6}' + (f'  {"AP":>6}' if instance else '')
    header += f'  {"TP":>5}  {"FP":>5}  {"FN":>5}' if panoptic else ''
    lines.append(header)
    for name, c in metrics['per_class'].items():
        line = f'{name:<{width}}  {"thing" if c["is_thing"] else "stuff":<5}'
        if panoptic:
            line += f'  {c["pq"]:6.2f}  {c["sq"]:6.2f}  {c["rq"]:6.2f}'
        line += f'  {_number(c["iou"], 6)}'
        if instance:
            line += f'  {_number(c.get("ap"), 6)}'
        if panoptic:
            line += f'  {c["tp"]:5d}  {c["fp"]:5d}  {c["fn"]:5d}'
        lines.append(line)
    return '\n'.join(lines)


# --------------------------------------------------------------------------- outputs


def coco_annotation(prediction, classes: list[EvalClass], image_id, file_name: str,
                    panoptic_dir: Path, label_divisor: int = LABEL_DIVISOR) -> dict:
    """Write ``prediction`` as a COCO-panoptic PNG; return its ``annotations[]`` entry.

    The encoding is :mod:`tokenmask_ros.coco_panoptic_io`'s (also ``tokenmask predict``'s):
    file segment ids ``1..N`` per image (0 = VOID) with the dataset's category ids, our
    panoptic id kept as ``panoptic_id``, and the segment score where the prediction has one.
    """
    file_ids, segments = encode_panoptic(prediction.panoptic,
                                         [c.category_id for c in classes], label_divisor,
                                         getattr(prediction, 'segments', ()))
    png_name = Path(file_name).with_suffix('.png').name
    write_png(panoptic_dir / png_name, file_ids)
    image_id = image_id.item() if isinstance(image_id, torch.Tensor) else image_id
    return {'image_id': image_id, 'file_name': png_name, 'segments_info': segments}


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((22, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def save_grid(path: Path, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
              colors: np.ndarray, label_divisor: int = LABEL_DIVISOR,
              panel_width: int = 320) -> Path:
    """``rows`` of (RGB image, ground-truth ids, predicted ids) as image | GT | prediction."""
    lines = []
    for image, gt, pred in rows:
        panels = [image, overlay(image, colorize_panoptic(gt, colors, label_divisor)),
                  overlay(image, colorize_panoptic(pred, colors, label_divisor))]
        height = max(1, round(image.shape[0] * panel_width / image.shape[1]))
        panels = [cv2.resize(p, (panel_width, height), interpolation=cv2.INTER_NEAREST)
                  for p in panels]
        gap = np.full((height, 4, 3), 255, np.uint8)
        lines.append(np.hstack([panels[0], gap, panels[1], gap, panels[2]]))
        lines.append(np.full((4, lines[-1].shape[1], 3), 255, np.uint8))
    header = [_label(np.zeros((0, panel_width, 3), np.uint8), t)
              for t in ('image', 'ground truth', 'prediction')]
    gap = np.full((header[0].shape[0], 4, 3), 255, np.uint8)
    grid = np.vstack([np.hstack([header[0], gap, header[1], gap, header[2]]), *lines[:-1]])
    return write_rgb(path, grid)


def write_semantic_png(path: Path, semantic: np.ndarray) -> Path:
    """A class map as an ADE20K-style PNG: class + 1 (0 = none); uint8, uint16 past 254."""
    values = np.asarray(semantic).astype(np.int64) + 1
    values = values.astype(np.uint8 if values.max(initial=0) <= 255 else np.uint16)
    return write_bgr(path, values)  # one channel: no colour order to convert


def semantic_as_panoptic(semantic, label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    """A class map (``IGNORE_INDEX`` = none) as panoptic ids (stuff, instance 0) to plot."""
    semantic = np.asarray(semantic).astype(np.int64)
    return np.where(semantic == IGNORE_INDEX, VOID, semantic * label_divisor).astype(np.int32)


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Evaluate a TokenMask checkpoint: PQ / SQ / RQ (all, things, stuff, per '
                    'class), mask AP and mIoU, with COCO-panoptic prediction files; or mIoU '
                    'on ADE20K SceneParsing with EoMT\'s sliding-window inference.')
    parser.add_argument('--checkpoint', required=True, type=Path,
                        help='model checkpoint (.safetensors written by save_checkpoint)')
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument('--synthetic', type=int, metavar='N',
                      help='evaluate on N freshly generated synthetic validation scenes '
                           '(generator val stream); the checkpoint must predict the '
                           'synthetic classes')
    data.add_argument('--coco-panoptic', nargs=3, metavar=('IMAGES_DIR', 'PANOPTIC_DIR', 'JSON'),
                      help='evaluate on a COCO-panoptic dataset: image folder, panoptic PNG '
                           'folder and panoptic JSON file')
    data.add_argument('--ade20k-semantic', metavar='ROOT',
                      help='evaluate mIoU on the validation split of ADE20K SceneParsing '
                           '(ROOT = ADEChallengeData2016 with images/validation/*.jpg and '
                           'annotations/validation/*.png); the checkpoint must have its 150 '
                           'classes')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the synthetic scene generator (default: 0)')
    parser.add_argument('--size', type=parse_size, metavar='WxH',
                        help="synthetic image size (default: the model's img_size)")
    parser.add_argument('--out', type=Path, default=Path('eval_results'),
                        help='output folder for metrics.json, predictions.json and panoptic/ '
                             'PNGs (semantic/ PNGs for ADE20K) and the grid plot '
                             '(default: eval_results/)')
    parser.add_argument('--plot', type=int, default=0, metavar='K',
                        help='save predictions_grid.png with the first K images '
                             '(image | ground truth | prediction); 0 = no plot (default)')
    parser.add_argument('--semantic-mode', choices=SEMANTIC_MODES,
                        help='inference for mIoU: "sliding" = EoMT\'s sliding window of '
                             'input-sized crops along the longer side, scores averaged (one '
                             'extra forward pass per window on panoptic datasets); "padded" = '
                             'the padded panoptic forward pass (default: sliding for '
                             '--ade20k-semantic, padded otherwise)')
    parser.add_argument('--instance', action=argparse.BooleanOptionalAction, default=None,
                        help=f'mask AP (AP, AP50, AP75, APs/m/l, per class; pycocotools) on '
                             f'the thing classes of panoptic datasets, from EoMT\'s top-'
                             f'{INSTANCE_TOP_K} instance decoding. On by default (it adds '
                             f'about 6%% to the CPU time of --synthetic 200); --no-instance '
                             f'skips it. '
                             f'Never for --ade20k-semantic, which has no things')
    parser.add_argument('--score-threshold', type=float, default=SCORE_THRESHOLD,
                        help=f'minimum class probability of a kept query (default: '
                             f'{SCORE_THRESHOLD})')
    parser.add_argument('--overlap-threshold', type=float, default=OVERLAP_THRESHOLD,
                        help='minimum fraction of its mask a query must keep after the '
                             f'argmax (default: {OVERLAP_THRESHOLD})')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per padded forward pass (default: 1); sliding windows '
                             'are batched per image')
    parser.add_argument('--workers', type=int, default=0,
                        help='data loading worker processes (default: 0, in the main process)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='device to run the model on (default: cpu)')
    return parser.parse_args(argv)


def _load_dataset(args: argparse.Namespace, config):
    """The dataset, its classes and a name for messages and metrics.json."""
    if args.synthetic is not None:
        size = args.size[::-1] if args.size else tuple(config.img_size)  # (H, W)
        return (*synthetic_dataset(args.synthetic, args.seed, size), 'synthetic')
    if args.coco_panoptic is not None:
        return (*coco_dataset(*args.coco_panoptic), 'COCO-panoptic')
    return (*ade20k_dataset(args.ade20k_semantic), 'ADE20K')


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation ``args`` describe; returns the metrics (also written to disk)."""
    if args.batch_size < 1:
        raise EvaluationError(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.plot < 0:
        raise EvaluationError(f'--plot must be >= 0, got {args.plot}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise EvaluationError('--device cuda was given but CUDA is not available')
    semantic_only = args.ade20k_semantic is not None
    if semantic_only and args.instance:
        raise EvaluationError('--instance needs a panoptic dataset: ADE20K SceneParsing has '
                              'no thing classes')
    if not args.checkpoint.is_file():
        raise EvaluationError(not_found_message('checkpoint', args.checkpoint))
    try:
        config = load_config(args.checkpoint)
    except CheckpointError as error:
        raise EvaluationError(str(error)) from None
    dataset, classes, source = _load_dataset(args, config)
    check_classes(config, classes, source)
    try:
        model = load_checkpoint(args.checkpoint, device=args.device)
    except CheckpointError as error:
        raise EvaluationError(str(error)) from None
    model.eval()
    is_thing = [c.is_thing for c in config.classes] if config.classes else \
        [c.is_thing for c in classes]
    colors = np.array([c.color for c in classes], np.uint8)
    semantic_mode = args.semantic_mode or ('sliding' if semantic_only else 'padded')
    instance = (not semantic_only and any(is_thing)
                and (INSTANCE_DEFAULT if args.instance is None else args.instance))
    top_k = INSTANCE_TOP_K if instance else 0

    out = args.out
    panoptic_dir, semantic_dir = out / 'panoptic', out / 'semantic'
    out.mkdir(parents=True, exist_ok=True)
    metrics = EvalMetrics(classes, panoptic=not semantic_only, instance=instance)
    annotations, images_info, grid_rows = [], [], []
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=list)
    with tqdm(total=len(dataset), desc='evaluating', unit='img') as progress:
        for batch in loader:
            images = [image for image, _ in batch]
            if semantic_only:
                predictions = predict_semantic(model, images, args.device, semantic_mode)
            else:
                predictions = predict(model, images, is_thing, args.device,
                                      args.score_threshold, args.overlap_threshold,
                                      semantic_mode=semantic_mode, instance_top_k=top_k)
            for (image, target), prediction in zip(batch, predictions, strict=True):
                metrics.update(prediction, target)
                file_name = str(target.get('file_name', f'image_{len(images_info):05d}.png'))
                image_id = target.get('image_id', len(images_info))
                image_id = image_id.item() if isinstance(image_id, torch.Tensor) else image_id
                images_info.append({'id': image_id, 'file_name': file_name,
                                    'height': int(image.shape[-2]),
                                    'width': int(image.shape[-1])})
                if semantic_only:
                    write_semantic_png(semantic_dir / Path(file_name).with_suffix('.png').name,
                                       prediction)
                else:
                    annotations.append(coco_annotation(prediction, classes, image_id,
                                                       file_name, panoptic_dir))
                if len(grid_rows) < args.plot:
                    rgb = np.ascontiguousarray(_plain(image).permute(1, 2, 0).numpy())
                    if semantic_only:
                        gt = semantic_as_panoptic(target['semantic'])
                        shown = semantic_as_panoptic(prediction)
                    else:
                        gt = target_panoptic(target, [c.is_thing for c in classes]).numpy()
                        shown = prediction.panoptic
                    grid_rows.append((rgb, gt, shown))
            progress.update(len(batch))

    result = metrics.compute()
    data = {'synthetic': f'synthetic val, {args.synthetic} images, seed {args.seed}',
            'COCO-panoptic': args.coco_panoptic, 'ADE20K': args.ade20k_semantic}[source]
    result['config'] = {
        'checkpoint': str(args.checkpoint), 'dataset': source, 'data': data,
        'img_size': list(config.img_size), 'semantic_mode': semantic_mode,
        'instance': bool(instance), 'instance_top_k': top_k, 'device': args.device,
    }
    if not semantic_only:
        result['config'].update(score_threshold=args.score_threshold,
                                overlap_threshold=args.overlap_threshold)
    (out / 'metrics.json').write_text(json.dumps(result, indent=2))
    if not semantic_only:
        categories = categories_json([c.name for c in classes], [c.is_thing for c in classes],
                                     [c.color for c in classes],
                                     [c.category_id for c in classes])
        (out / 'predictions.json').write_text(json.dumps(
            {'images': images_info, 'annotations': annotations, 'categories': categories}))
    if grid_rows:
        save_grid(out / 'predictions_grid.png', grid_rows, colors)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = evaluate(args)
    except (EvaluationError, DatasetError, CheckpointError, FileNotFoundError,
            OSError) as error:
        print(f'evaluate.py: error: {error}'.replace('\n', ' '), file=sys.stderr)
        return 1
    print(format_table(result))
    written = ['metrics.json']
    written += ['semantic/'] if args.ade20k_semantic is not None else \
        ['predictions.json', 'panoptic/']
    if args.plot:
        written.append('predictions_grid.png')
    print(f'\nwrote {", ".join(str(args.out / name) for name in written)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
