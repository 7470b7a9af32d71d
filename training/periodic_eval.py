"""Periodic evaluation of the model under training (``eval.every`` > 0)."""

from __future__ import annotations

import torch

from tokenmask_ros.model.config import TokenMaskConfig
from training.eval_data import check_classes, coco_dataset, synthetic_dataset
from training.evaluation import evaluate_model
from training.train_config import TrainConfig


class ValidationSet:
    """PQ / mIoU of a model on fixed validation samples (``evaluate.py``'s inference and
    metrics, so the numbers match a later ``evaluate.py`` run): the first ``count`` images of
    a COCO-panoptic set (``coco_paths`` = images dir, panoptic dir, JSON) or ``count``
    synthetic scenes of ``size`` (H, W). Used by training and distillation runs alike."""

    def __init__(self, model_config: TokenMaskConfig, count: int, *,
                 coco_paths: tuple[str, str, str] | None = None, seed: int = 12345,
                 size: tuple[int, int] | None = None):
        if coco_paths:
            dataset, self.classes = coco_dataset(*coco_paths)
        else:
            dataset, self.classes = synthetic_dataset(count, seed, size)
        check_classes(model_config, self.classes, 'validation')
        self.samples = [dataset[i] for i in range(min(count, len(dataset)))]

    def __call__(self, model, device: torch.device) -> dict[str, float]:
        result = evaluate_model(model, self.samples, self.classes, device)
        return {f'val_{k}': result[k] for k in ('pq', 'pq_things', 'pq_stuff', 'miou')}


class PeriodicEvaluation(ValidationSet):
    """The validation set of ``eval.every`` > 0, from a training config's ``eval`` section."""

    def __init__(self, config: TrainConfig, model_config: TokenMaskConfig):
        settings = config.eval
        if settings.images < 1:
            raise ValueError(f'eval.images must be >= 1, got {settings.images}')
        paths = (settings.images_dir, settings.panoptic_dir, settings.json_file)
        if any(paths) and not all(paths):
            raise ValueError('eval needs all of images_dir, panoptic_dir and json_file')
        if not any(paths) and config.data.type != 'synthetic':
            raise ValueError(f'eval.every > 0 with data.type {config.data.type} needs '
                             'eval.images_dir, eval.panoptic_dir and eval.json_file')
        super().__init__(model_config, settings.images,
                         coco_paths=paths if any(paths) else None, seed=settings.seed,
                         size=(config.data.height, config.data.width))
