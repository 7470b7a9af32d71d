"""The deployed graph: uint8 image in, compact panoptic tensors out.

One module serves every backend. The torch backend runs it directly; the ONNX export
(:mod:`tokenmask_ros.runtime.export`) traces it, so ONNX Runtime and TensorRT compute
exactly the same thing. Normalisation and the pixel-dense half of panoptic decoding
(:func:`tokenmask_ros.model.postprocess.dense_panoptic_scores`) live inside the graph
(``docs/architecture.md``, "The deploy graph"); the host only crops, resizes the integer
segment map and does the segment bookkeeping.

Inputs (fixed shapes, batch ``B`` fixed at export):

- ``image``: uint8 ``[B, 3, H, W]`` RGB, letterboxed to the model's ``img_size``
  (:func:`tokenmask_ros.runtime.preprocess.letterbox`).
- ``content_size``: int32 ``[2]``, the (height, width) of the image content inside the
  canvas; everything right of / below it is padding and never labelled.
- ``score_threshold``: float32 ``[1]``, so thresholds change at run time without a re-export.

Outputs (:data:`OUTPUT_NAMES`, :class:`~tokenmask_ros.model.postprocess.PanopticScores`
field order): ``segment_map`` int32 ``[B, H, W]`` (index of the winning kept query or -1),
``query_class`` int32 ``[B, K]``, ``query_score`` float32 ``[B, K]``, ``keep`` bool
``[B, K]``, ``mask_area`` int32 ``[B, K]``, ``won_area`` int32 ``[B, K]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenmask_ros.model.postprocess import PanopticScores, dense_panoptic_scores

INPUT_NAMES = ('image', 'content_size', 'score_threshold')
OUTPUT_NAMES = PanopticScores._fields


class DeployGraph(nn.Module):
    """``model`` (a :class:`~tokenmask_ros.model.TokenMask` in eval mode) + normalisation +
    dense panoptic decoding at the network input resolution."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.input_size = tuple(int(s) for s in model.config.img_size)

    def forward(self, image: Tensor, content_size: Tensor, score_threshold: Tensor
                ) -> PanopticScores:
        dtype = self.model.pixel_mean.dtype
        output = self.model(image.to(dtype) / 255)
        mask_logits = F.interpolate(output.mask_logits, size=self.input_size, mode='bilinear',
                                    align_corners=False)
        height, width = self.input_size
        content = content_size.to(torch.int32)
        rows = torch.arange(height, dtype=torch.int32, device=image.device)[:, None]
        cols = torch.arange(width, dtype=torch.int32, device=image.device)[None, :]
        valid = ((rows < content[0]) & (cols < content[1]))[None]
        scores = dense_panoptic_scores(output.class_logits.float(), mask_logits.float(),
                                       None, score_threshold.float(), valid)
        return scores._replace(query_score=scores.query_score.float())


def example_inputs(input_size: tuple[int, int], batch: int = 1,
                   device: torch.device | str = 'cpu') -> tuple[Tensor, Tensor, Tensor]:
    """Inputs of the right dtypes and shapes (a grey canvas, full content, threshold 0.8)."""
    height, width = input_size
    return (torch.full((batch, 3, height, width), 128, dtype=torch.uint8, device=device),
            torch.tensor([height, width], dtype=torch.int32, device=device),
            torch.tensor([0.8], dtype=torch.float32, device=device))
