#!/usr/bin/env python3
"""Panoptic (PQ / SQ / RQ) and semantic (mIoU) evaluation of a TokenMask checkpoint.

Each image is preprocessed as in EoMT inference (resize so the longer side fits the model's
``img_size``, pad bottom/right: :class:`Letterbox`), run through the model in eval mode
under ``torch.inference_mode``, and decoded at its ORIGINAL resolution: panoptic with
:func:`panoptic_predictions` (score / overlap thresholds), semantic with
:func:`decode_semantic` (every pixel gets a class, EoMT's semantic evaluation).

    python training/evaluate.py --checkpoint model.safetensors --synthetic 100 --seed 0
    python training/evaluate.py --checkpoint model.safetensors \\
        --coco-panoptic val2017 panoptic_val2017 panoptic_val2017.json --plot 4

Writes into ``--out`` (default ``eval_results/``): ``metrics.json``; the predictions in
COCO-panoptic format (``panoptic/<image>.png``, segment id = R + 256 G + 256^2 B, and
``predictions.json`` whose ``segments_info`` use the dataset's category ids; written by
:mod:`tokenmask_ros.coco_panoptic_io`, as ``tokenmask predict`` writes them); with
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

from tokenmask_ros.cli import parse_size  # noqa: E402
from tokenmask_ros.coco_panoptic_io import categories_json, encode_panoptic, write_png  # noqa: E402
from tokenmask_ros.model import CheckpointError, load_checkpoint, load_config  # noqa: E402
from tokenmask_ros.model.postprocess import (  # noqa: E402
    LABEL_DIVISOR,
    OVERLAP_THRESHOLD,
    SCORE_THRESHOLD,
    Letterbox,
    Prediction,
    decode_semantic,
    panoptic_predictions,
)
from tokenmask_ros.viz import colorize_panoptic, overlay, palette  # noqa: E402
from training.datasets.common import DatasetError, masks_to_semantic  # noqa: E402
from training.metrics import PanopticMetrics, SemanticMetrics, target_panoptic  # noqa: E402


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


def preprocess(image: torch.Tensor, input_size: tuple[int, int]
               ) -> tuple[torch.Tensor, Letterbox]:
    """A uint8 ``[3, H, W]`` image as a float ``[3, *input_size]`` network input in [0, 1].

    EoMT's inference preprocessing: resize (bilinear, antialiased) so the image just fits
    ``input_size``, then zero-pad bottom/right; the :class:`Letterbox` says where it sits.
    """
    image = image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else \
        torch.as_tensor(image)
    letterbox = Letterbox.fit(image.shape[-2:], input_size)
    if tuple(image.shape[-2:]) != letterbox.content_size:
        image = TF.resize(image, list(letterbox.content_size), antialias=True)
    pad_h = input_size[0] - letterbox.content_size[0]
    pad_w = input_size[1] - letterbox.content_size[1]
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0)
    return image.float() / 255.0, letterbox


@torch.inference_mode()
def predict(model, images: list[torch.Tensor], is_thing, device: str | torch.device = 'cpu',
            score_threshold: float = SCORE_THRESHOLD,
            overlap_threshold: float = OVERLAP_THRESHOLD) -> list[Prediction]:
    """Panoptic predictions at each image's original size, with ``semantic_argmax`` set.

    ``images``: uint8 ``[3, H, W]`` tensors (sizes may differ). The returned
    :class:`Prediction` objects carry an extra ``semantic_argmax`` attribute: the dense
    semantic map of :func:`decode_semantic` (uint8 / int64 class ids, no void).
    """
    input_size = tuple(model.config.img_size)
    inputs, boxes = zip(*(preprocess(image, input_size) for image in images), strict=True)
    output = model(torch.stack(inputs).to(device))
    results = []
    for index, letterbox in enumerate(boxes):
        class_logits = output.class_logits[index:index + 1]
        mask_logits = output.mask_logits[index:index + 1]
        prediction = panoptic_predictions(class_logits, mask_logits, is_thing, letterbox,
                                          score_threshold, overlap_threshold)[0]
        semantic = decode_semantic(class_logits, mask_logits, letterbox)[0].cpu().numpy()
        prediction.semantic_argmax = semantic
        results.append(prediction)
    return results


# --------------------------------------------------------------------------- metrics


class EvalMetrics:
    """PQ / SQ / RQ (PanopticMetrics) and mIoU (SemanticMetrics) over a dataset.

    ``update(prediction, target)``: ``prediction`` is anything with ``panoptic`` (int ids,
    ``class * label_divisor + instance``, VOID = -1) and ``semantic`` maps; a
    ``semantic_argmax`` attribute, when present, is used for mIoU instead of ``semantic``.
    ``target`` is a dataset target dict (``masks``, ``labels``, ``is_crowd``).
    """

    def __init__(self, classes: list[EvalClass], label_divisor: int = LABEL_DIVISOR):
        self.classes = classes
        self.flags = [c.is_thing for c in classes]
        self.label_divisor = label_divisor
        self.panoptic = PanopticMetrics(self.flags, label_divisor=label_divisor)
        self.semantic = SemanticMetrics(len(classes))
        self.images = 0

    def update(self, prediction, target: dict) -> None:
        gt_panoptic = target_panoptic(target, self.flags, self.label_divisor)
        masks, labels = target['masks'], target['labels']
        crowd = torch.as_tensor(target.get('is_crowd', torch.zeros_like(labels)), dtype=bool)
        gt_semantic = masks_to_semantic(masks[~crowd], labels[~crowd])
        semantic = getattr(prediction, 'semantic_argmax', None)
        if semantic is None:
            semantic = prediction.semantic
        self.panoptic.update([np.asarray(prediction.panoptic)], [gt_panoptic])
        self.semantic.update([torch.as_tensor(np.asarray(semantic))], [gt_semantic])
        self.images += 1

    def compute(self) -> dict:
        """A JSON-ready dict: overall, things / stuff and per-class numbers, in percent."""
        panoptic = self.panoptic.compute()
        semantic = self.semantic.compute()
        result = {key: panoptic[key] for key in
                  ('pq', 'sq', 'rq', 'pq_things', 'sq_things', 'rq_things', 'pq_stuff',
                   'sq_stuff', 'rq_stuff')}
        result.update(miou=semantic['miou'], pixel_accuracy=semantic['pixel_accuracy'],
                      num_images=self.images, num_classes_seen=panoptic['n'],
                      num_things_seen=panoptic['n_things'], num_stuff_seen=panoptic['n_stuff'])
        per_class = {}
        for c in self.classes:
            entry = dict(panoptic['per_class'][c.index])
            iou = float(semantic['per_class_iou'][c.index])
            entry.update(iou=None if math.isnan(iou) else iou, category_id=c.category_id,
                         is_thing=c.is_thing)
            per_class[c.name] = entry
        result['per_class'] = per_class
        return result


def format_table(metrics: dict) -> str:
    """A compact text table: the headline numbers, then per-class PQ / SQ / RQ / IoU."""
    keys = ('pq', 'pq_things', 'pq_stuff', 'sq', 'rq', 'miou')
    names = ('PQ', 'PQ_th', 'PQ_st', 'SQ', 'RQ', 'mIoU')
    lines = ['  '.join(f'{n:>7}' for n in names),
             '  '.join(f'{metrics[k]:7.2f}' for k in keys), '']
    width = max([5, *(len(n) for n in metrics['per_class'])])
    lines.append(f'{"class":<{width}}  {"kind":<5}  {"PQ":>6}  {"SQ":>6}  {"RQ":>6}  '
                 f'{"IoU":>6}  {"TP":>5}  {"FP":>5}  {"FN":>5}')
    for name, c in metrics['per_class'].items():
        iou = '     -' if c['iou'] is None else f'{c["iou"]:6.2f}'
        lines.append(f'{name:<{width}}  {"thing" if c["is_thing"] else "stuff":<5}  '
                     f'{c["pq"]:6.2f}  {c["sq"]:6.2f}  {c["rq"]:6.2f}  {iou}  '
                     f'{c["tp"]:5d}  {c["fp"]:5d}  {c["fn"]:5d}')
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
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[..., ::-1]):
        raise OSError(f'cannot write {path}')
    return path


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Evaluate a TokenMask checkpoint: PQ / SQ / RQ (all, things, stuff, per '
                    'class) and mIoU, with COCO-panoptic prediction files.')
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
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the synthetic scene generator (default: 0)')
    parser.add_argument('--size', type=parse_size, metavar='WxH',
                        help="synthetic image size (default: the model's img_size)")
    parser.add_argument('--out', type=Path, default=Path('eval_results'),
                        help='output folder for metrics.json, predictions.json, panoptic/ '
                             'PNGs and the grid plot (default: eval_results/)')
    parser.add_argument('--plot', type=int, default=0, metavar='K',
                        help='save predictions_grid.png with the first K images '
                             '(image | ground truth | prediction); 0 = no plot (default)')
    parser.add_argument('--score-threshold', type=float, default=SCORE_THRESHOLD,
                        help=f'minimum class probability of a kept query (default: '
                             f'{SCORE_THRESHOLD})')
    parser.add_argument('--overlap-threshold', type=float, default=OVERLAP_THRESHOLD,
                        help='minimum fraction of its mask a query must keep after the '
                             f'argmax (default: {OVERLAP_THRESHOLD})')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward pass (default: 1)')
    parser.add_argument('--workers', type=int, default=0,
                        help='data loading worker processes (default: 0, in the main process)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='device to run the model on (default: cpu)')
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation ``args`` describe; returns the metrics (also written to disk)."""
    if args.batch_size < 1:
        raise EvaluationError(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.plot < 0:
        raise EvaluationError(f'--plot must be >= 0, got {args.plot}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise EvaluationError('--device cuda was given but CUDA is not available')
    if not args.checkpoint.is_file():
        raise EvaluationError(f'checkpoint not found: {args.checkpoint}')
    try:
        config = load_config(args.checkpoint)
    except CheckpointError as error:
        raise EvaluationError(str(error)) from None
    if args.synthetic is not None:
        size = args.size[::-1] if args.size else tuple(config.img_size)  # (H, W)
        dataset, classes = synthetic_dataset(args.synthetic, args.seed, size)
        source = 'synthetic'
    else:
        dataset, classes = coco_dataset(*args.coco_panoptic)
        source = 'COCO-panoptic'
    check_classes(config, classes, source)
    try:
        model = load_checkpoint(args.checkpoint, device=args.device)
    except CheckpointError as error:
        raise EvaluationError(str(error)) from None
    model.eval()
    is_thing = [c.is_thing for c in config.classes] if config.classes else \
        [c.is_thing for c in classes]
    colors = np.array([c.color for c in classes], np.uint8)

    out = args.out
    panoptic_dir = out / 'panoptic'
    out.mkdir(parents=True, exist_ok=True)
    metrics = EvalMetrics(classes)
    annotations, images_info, grid_rows = [], [], []
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=list)
    with tqdm(total=len(dataset), desc='evaluating', unit='img') as progress:
        for batch in loader:
            images = [image for image, _ in batch]
            predictions = predict(model, images, is_thing, args.device, args.score_threshold,
                                  args.overlap_threshold)
            for (image, target), prediction in zip(batch, predictions, strict=True):
                metrics.update(prediction, target)
                file_name = str(target.get('file_name', f'image_{len(annotations):05d}.png'))
                image_id = target.get('image_id', len(annotations))
                image_id = image_id.item() if isinstance(image_id, torch.Tensor) else image_id
                annotations.append(coco_annotation(prediction, classes, image_id, file_name,
                                                   panoptic_dir))
                images_info.append({'id': image_id, 'file_name': file_name,
                                    'height': int(image.shape[-2]),
                                    'width': int(image.shape[-1])})
                if len(grid_rows) < args.plot:
                    gt = target_panoptic(target, [c.is_thing for c in classes]).numpy()
                    rgb = np.ascontiguousarray(image.as_subclass(torch.Tensor)
                                               .permute(1, 2, 0).numpy())
                    grid_rows.append((rgb, gt, prediction.panoptic))
            progress.update(len(batch))

    result = metrics.compute()
    result['config'] = {
        'checkpoint': str(args.checkpoint), 'dataset': source,
        'data': (f'synthetic val, {args.synthetic} images, seed {args.seed}'
                 if args.synthetic is not None else list(args.coco_panoptic)),
        'img_size': list(config.img_size), 'score_threshold': args.score_threshold,
        'overlap_threshold': args.overlap_threshold, 'device': args.device,
    }
    (out / 'metrics.json').write_text(json.dumps(result, indent=2))
    categories = categories_json([c.name for c in classes], [c.is_thing for c in classes],
                                 [c.color for c in classes], [c.category_id for c in classes])
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
    written = ['metrics.json', 'predictions.json', 'panoptic/']
    if args.plot:
        written.append('predictions_grid.png')
    print(f'\nwrote {", ".join(str(args.out / name) for name in written)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
