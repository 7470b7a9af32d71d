"""Evaluation loops: :func:`evaluate_model` for code that evaluates a model in memory
(periodic evaluation, ablation, training curves) and :func:`evaluate` for ``evaluate.py``'s
full run (checkpoint, dataset, metrics.json, prediction files, grid).

Both use the same padded inference (:mod:`training.inference`) and metrics
(:class:`training.eval_metrics.EvalMetrics`), so their numbers match.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tokenmask_ros.bundled import not_found_message
from tokenmask_ros.coco_panoptic_io import categories_json
from tokenmask_ros.model import CheckpointError, load_checkpoint
from training.eval_data import (
    EvalClass,
    EvaluationError,
    ade20k_dataset,
    check_classes,
    coco_dataset,
    synthetic_dataset,
)
from training.eval_metrics import EvalMetrics
from training.eval_outputs import (
    coco_annotation,
    save_grid,
    semantic_as_panoptic,
    write_semantic_png,
)
from training.inference import predict, predict_semantic
from training.letterbox import plain_image
from training.metrics import target_panoptic
from training.settings import INSTANCE_DEFAULT, INSTANCE_TOP_K


@torch.no_grad()
def evaluate_model(model, samples, classes: list[EvalClass],
                   device: str | torch.device = 'cpu') -> dict:
    """PQ / mIoU of ``model`` over ``samples`` (a dataset or a list of ``(image, target)``),
    one image at a time with ``evaluate.py``'s padded inference. The model is put in eval
    mode for the call and its mode restored."""
    was_training = model.training
    model.eval()
    metrics = EvalMetrics(classes)
    is_thing = [c.is_thing for c in classes]
    for index in range(len(samples)):
        image, target = samples[index]
        metrics.update(predict(model, [image], is_thing, device)[0], target)
    model.train(was_training)
    return metrics.compute()


# --------------------------------------------------------------------------- evaluate.py


@dataclass
class EvalRun:
    """What one ``evaluate.py`` run evaluates, resolved from its options."""

    model: torch.nn.Module
    config: object  # the checkpoint's TokenMaskConfig
    dataset: object
    classes: list[EvalClass]
    source: str  # 'synthetic', 'COCO-panoptic' or 'ADE20K'
    semantic_only: bool
    semantic_mode: str
    top_k: int  # instances decoded per image for mask AP; 0 = no mask AP
    segmenter: object = None  # --backend: the deployed path, instead of ``model``

    @property
    def is_thing(self) -> list[bool]:
        if self.config.classes:
            return [c.is_thing for c in self.config.classes]
        return [c.is_thing for c in self.classes]


@dataclass
class EvalOutputs:
    """The per-image results collected for the files written at the end."""

    annotations: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    grid_rows: list[tuple] = field(default_factory=list)


def check_options(args: argparse.Namespace) -> None:
    """Refuse option values no run can use, before anything is loaded."""
    if args.batch_size < 1:
        raise EvaluationError(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.plot < 0:
        raise EvaluationError(f'--plot must be >= 0, got {args.plot}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise EvaluationError('--device cuda was given but CUDA is not available')
    if args.ade20k_semantic is not None and args.instance:
        raise EvaluationError('--instance needs a panoptic dataset: ADE20K SceneParsing has '
                              'no thing classes')
    if not args.checkpoint.is_file():
        raise EvaluationError(not_found_message('checkpoint', args.checkpoint))
    backend = getattr(args, 'backend', None)
    if backend is None and args.checkpoint.suffix == '.onnx':
        raise EvaluationError('an exported graph (.onnx) is evaluated through a runtime: add '
                              '--backend onnxruntime (or openvino, tensorrt)')
    if backend is not None and (args.ade20k_semantic is not None or args.instance):
        raise EvaluationError('--backend scores the deployed panoptic path: not with '
                              '--ade20k-semantic or --instance (the graph returns no '
                              'per-query masks)')


def _load_dataset(args: argparse.Namespace, config):
    """The dataset, its classes and a name for messages and metrics.json."""
    if args.synthetic is not None:
        size = args.size[::-1] if args.size else tuple(config.img_size)  # (H, W)
        return (*synthetic_dataset(args.synthetic, args.seed, size), 'synthetic')
    if args.coco_panoptic is not None:
        return (*coco_dataset(*args.coco_panoptic), 'COCO-panoptic')
    return (*ade20k_dataset(args.ade20k_semantic), 'ADE20K')


def load_run(args: argparse.Namespace) -> EvalRun:
    """The checkpoint's model and the dataset, refused if their classes differ."""
    from tokenmask_ros.runtime import BackendUnavailable
    from tokenmask_ros.runtime.export import ExportError
    from tokenmask_ros.runtime.segmenter import model_config

    try:
        config = model_config(args.checkpoint)
    except (CheckpointError, ExportError) as error:
        raise EvaluationError(str(error)) from None
    dataset, classes, source = _load_dataset(args, config)
    check_classes(config, classes, source)
    if getattr(args, 'backend', None) is not None:
        from tokenmask_ros.runtime import Segmenter

        try:
            segmenter = Segmenter(args.checkpoint, args.backend, args.device, args.precision,
                                  score_threshold=args.score_threshold,
                                  overlap_threshold=args.overlap_threshold)
        except (BackendUnavailable, ExportError, ValueError) as error:
            raise EvaluationError(f'--backend {args.backend}: {error}') from None
        return EvalRun(None, config, dataset, classes, source, False, 'deployed', 0, segmenter)
    try:
        model = load_checkpoint(args.checkpoint, device=args.device)
    except CheckpointError as error:
        raise EvaluationError(str(error)) from None
    model.eval()
    semantic_only = args.ade20k_semantic is not None
    run = EvalRun(model, config, dataset, classes, source, semantic_only,
                  args.semantic_mode or ('sliding' if semantic_only else 'padded'), 0)
    wants_instances = INSTANCE_DEFAULT if args.instance is None else args.instance
    if not semantic_only and any(run.is_thing) and wants_instances:
        run.top_k = INSTANCE_TOP_K
    return run


def predict_batch(run: EvalRun, images: list, args: argparse.Namespace) -> list:
    """Predictions of one batch: class maps for semantic datasets, panoptic otherwise."""
    if run.segmenter is not None:
        return [run.segmenter(np.ascontiguousarray(plain_image(image).permute(1, 2, 0).numpy()))
                for image in images]
    if run.semantic_only:
        return predict_semantic(run.model, images, args.device, run.semantic_mode)
    return predict(run.model, images, run.is_thing, args.device, args.score_threshold,
                   args.overlap_threshold, semantic_mode=run.semantic_mode,
                   instance_top_k=run.top_k)


def record_image(run: EvalRun, outputs: EvalOutputs, image, target, prediction,
                 args: argparse.Namespace) -> None:
    """Write one image's prediction file and keep what the final files and grid need."""
    file_name = str(target.get('file_name', f'image_{len(outputs.images):05d}.png'))
    image_id = target.get('image_id', len(outputs.images))
    image_id = image_id.item() if isinstance(image_id, torch.Tensor) else image_id
    outputs.images.append({'id': image_id, 'file_name': file_name,
                           'height': int(image.shape[-2]), 'width': int(image.shape[-1])})
    if run.semantic_only:
        write_semantic_png(args.out / 'semantic' / Path(file_name).with_suffix('.png').name,
                           prediction)
    else:
        outputs.annotations.append(coco_annotation(prediction, run.classes, image_id,
                                                   file_name, args.out / 'panoptic'))
    if len(outputs.grid_rows) < args.plot:
        rgb = np.ascontiguousarray(plain_image(image).permute(1, 2, 0).numpy())
        if run.semantic_only:
            gt, shown = semantic_as_panoptic(target['semantic']), semantic_as_panoptic(prediction)
        else:
            gt = target_panoptic(target, [c.is_thing for c in run.classes]).numpy()
            shown = prediction.panoptic
        outputs.grid_rows.append((rgb, gt, shown))


def evaluation_loop(run: EvalRun, args: argparse.Namespace) -> tuple[dict, EvalOutputs]:
    """Predict every image, score it and write its prediction file; the metrics at the end."""
    metrics = EvalMetrics(run.classes, panoptic=not run.semantic_only,
                          instance=run.top_k > 0)
    outputs = EvalOutputs()
    loader = DataLoader(run.dataset, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=list)
    with tqdm(total=len(run.dataset), desc='evaluating', unit='img') as progress:
        for batch in loader:
            predictions = predict_batch(run, [image for image, _ in batch], args)
            for (image, target), prediction in zip(batch, predictions, strict=True):
                metrics.update(prediction, target)
                record_image(run, outputs, image, target, prediction, args)
            progress.update(len(batch))
    return metrics.compute(), outputs


def run_description(run: EvalRun, args: argparse.Namespace) -> dict:
    """metrics.json's ``config``: what was evaluated, and how."""
    data = {'synthetic': f'synthetic val, {args.synthetic} images, seed {args.seed}',
            'COCO-panoptic': args.coco_panoptic, 'ADE20K': args.ade20k_semantic}[run.source]
    description = {
        'checkpoint': str(args.checkpoint), 'dataset': run.source, 'data': data,
        'img_size': list(run.config.img_size), 'semantic_mode': run.semantic_mode,
        'instance': run.top_k > 0, 'instance_top_k': run.top_k, 'device': args.device,
    }
    if run.segmenter is not None:
        description.update(backend=run.segmenter.backend.name,
                           precision=run.segmenter.backend.precision)
    if not run.semantic_only:
        description.update(score_threshold=args.score_threshold,
                           overlap_threshold=args.overlap_threshold)
    return description


def write_results(run: EvalRun, result: dict, outputs: EvalOutputs, out: Path) -> None:
    """metrics.json, predictions.json (panoptic datasets) and the grid plot (if any rows)."""
    (out / 'metrics.json').write_text(json.dumps(result, indent=2))
    classes = run.classes
    if not run.semantic_only:
        categories = categories_json([c.name for c in classes], [c.is_thing for c in classes],
                                     [c.color for c in classes],
                                     [c.category_id for c in classes])
        (out / 'predictions.json').write_text(json.dumps(
            {'images': outputs.images, 'annotations': outputs.annotations,
             'categories': categories}))
    if outputs.grid_rows:
        colors = np.array([c.color for c in classes], np.uint8)
        save_grid(out / 'predictions_grid.png', outputs.grid_rows, colors)


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation ``args`` (evaluate.py's options) describe; returns the metrics
    (also written to disk)."""
    check_options(args)
    run = load_run(args)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        result, outputs = evaluation_loop(run, args)
        result['config'] = run_description(run, args)
        write_results(run, result, outputs, args.out)
    finally:
        if run.segmenter is not None:
            run.segmenter.close()
    return result
