"""Predictions of a model at each image's original size, as evaluation scores them.

Wraps :mod:`tokenmask_ros.model.postprocess` decoding around one padded forward pass
(:func:`training.letterbox.forward_padded`): panoptic segments, the semantic map (padded or
sliding window) and, optionally, EoMT's top-k instances for mask AP.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenmask_ros.defaults import OVERLAP_THRESHOLD, SCORE_THRESHOLD
from tokenmask_ros.model.postprocess import (
    Prediction,
    decode_instances,
    decode_semantic,
    panoptic_predictions,
)
from training.letterbox import forward_padded
from training.settings import SEMANTIC_MODES
from training.sliding_window import sliding_window_semantic


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
    output, boxes = forward_padded(model, images, device)
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
    output, boxes = forward_padded(model, images, device)
    return [decode_semantic(output.class_logits[i:i + 1], output.mask_logits[i:i + 1],
                            letterbox)[0].cpu().numpy() for i, letterbox in enumerate(boxes)]

