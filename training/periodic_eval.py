"""Periodic evaluation of the model under training (``eval.every`` > 0)."""

from __future__ import annotations

import torch

from tokenmask_ros.model.config import TokenMaskConfig
from training.eval_data import check_classes, coco_dataset, synthetic_dataset
from training.evaluation import evaluate_model
from training.train_config import TrainConfig


class PeriodicEvaluation:
    """PQ / mIoU of the model under training on a fixed validation set (``evaluate.py``'s
    inference and metrics, so the numbers match a later ``evaluate.py`` run)."""

    def __init__(self, config: TrainConfig, model_config: TokenMaskConfig):
        settings = config.eval
        if settings.images < 1:
            raise ValueError(f'eval.images must be >= 1, got {settings.images}')
        paths = (settings.images_dir, settings.panoptic_dir, settings.json_file)
        if any(paths):
            if not all(paths):
                raise ValueError('eval needs all of images_dir, panoptic_dir and json_file')
            dataset, self.classes = coco_dataset(*paths)
        elif config.data.type == 'synthetic':
            dataset, self.classes = synthetic_dataset(
                settings.images, settings.seed, (config.data.height, config.data.width))
        else:
            raise ValueError(f'eval.every > 0 with data.type {config.data.type} needs '
                             'eval.images_dir, eval.panoptic_dir and eval.json_file')
        check_classes(model_config, self.classes, 'validation')
        self.samples = [dataset[i] for i in range(min(settings.images, len(dataset)))]

    def __call__(self, model, device: torch.device) -> dict[str, float]:
        result = evaluate_model(model, self.samples, self.classes, device)
        return {f'val_{k}': result[k] for k in ('pq', 'pq_things', 'pq_stuff', 'miou')}

