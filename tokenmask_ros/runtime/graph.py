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
- ``content_size``: int32 ``[B, 2]``, the (height, width) of each image's content inside
  its canvas; everything right of / below it is padding and never labelled, and a slot
  with content ``(0, 0)`` (a batch padded up to ``B``) labels nothing. ``[2]`` (one size
  for every image) is accepted too and is what batch-1 exports take, so exports and
  TensorRT engines made before per-image sizes existed stay valid.
- ``score_threshold``: float32 ``[1]``, so thresholds change at run time without a re-export.

Outputs (:data:`OUTPUT_NAMES`, :class:`~tokenmask_ros.model.postprocess.PanopticScores`
field order): ``segment_map`` int32 ``[B, H, W]`` (index of the winning kept query or -1),
``query_class`` int32 ``[B, K]``, ``query_score`` float32 ``[B, K]``, ``keep`` bool
``[B, K]``, ``mask_area`` int32 ``[B, K]``, ``won_area`` int32 ``[B, K]``.

Only the best queries (kept ones first, by score) get full-resolution masks: a query under
the threshold never wins a pixel, so decoding all K of them (200 x 640 x 640 floats for a
COCO model) was most of the call. With ``selection='kept'`` (the default) the graph decodes
exactly the kept queries of the frame, at most ``decoded_queries`` and at least one, so the
cost follows the scene (a data-dependent TopK size: ONNX Runtime, OpenVINO and PyTorch run
it). ``selection='fixed'`` always decodes the ``decoded_queries`` best, so every shape is
static, which TensorRT needs. Either way the selection keeps query order, so ties break as
before, and the outputs equal those of decoding every query whenever at most
``decoded_queries`` queries are kept (``keep.sum() > decoded_queries`` says it bound: the
kept queries left out have ``mask_area`` and ``won_area`` 0 and are dropped); ``mask_area``
of queries that are not kept is 0 (not computed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenmask_ros.defaults import DECODED_QUERIES, SELECTIONS
from tokenmask_ros.model.heads import gather_queries
from tokenmask_ros.model.postprocess import PanopticScores, dense_panoptic_scores, query_scores

INPUT_NAMES = ('image', 'content_size', 'score_threshold')
OUTPUT_NAMES = PanopticScores._fields


class DeployGraph(nn.Module):
    """``model`` (a :class:`~tokenmask_ros.model.TokenMask` in eval mode) + normalisation +
    dense panoptic decoding at the network input resolution of at most ``decoded_queries``
    queries (``None`` or >= K: all of them); ``selection`` 'kept' decodes only the frame's
    kept queries under that cap, 'fixed' always the cap (see the module doc)."""

    def __init__(self, model: nn.Module, decoded_queries: int | None = DECODED_QUERIES,
                 selection: str = 'kept'):
        super().__init__()
        if decoded_queries is not None and decoded_queries < 1:
            raise ValueError(f'decoded_queries must be >= 1, got {decoded_queries}')
        if selection not in SELECTIONS:
            raise ValueError(f'selection must be one of {SELECTIONS}, got {selection!r}')
        self.model = model.eval()
        self.input_size = tuple(int(s) for s in model.config.img_size)
        num_queries = int(model.config.num_queries)
        self.decoded_queries = min(decoded_queries or num_queries, num_queries)
        self.selection = selection

    def forward(self, image: Tensor, content_size: Tensor, score_threshold: Tensor
                ) -> PanopticScores:
        dtype = self.model.pixel_mean.dtype
        features = self.model.query_features(image.to(dtype) / 255)
        class_logits = features.class_logits.float()
        threshold = score_threshold.float()
        scores, classes, keep = query_scores(class_logits, threshold)
        select = None
        if self.selection == 'kept' or self.decoded_queries < class_logits.shape[1]:
            count = self.decoded_queries
            if self.selection == 'kept':  # a 0-d tensor: the export's TopK size is dynamic
                count = keep.sum(1).max().clamp(1, self.decoded_queries)
            # Kept queries first, best score first; then back into query order.
            rank = torch.where(keep, scores, scores - 2.0)
            select = rank.topk(count, dim=1).indices.sort(dim=1).values
            class_logits = gather_queries(class_logits, select)
        mask_logits = self.model.mask_head(features.mask_embed, features.patch_tokens, select)
        mask_logits = F.interpolate(mask_logits, size=self.input_size, mode='bilinear',
                                    align_corners=False)
        height, width = self.input_size
        content = content_size.to(torch.int32).reshape(-1, 2)  # [1 or B, 2]
        rows = torch.arange(height, dtype=torch.int32, device=image.device)[:, None]
        cols = torch.arange(width, dtype=torch.int32, device=image.device)[None, :]
        valid = ((rows < content[:, 0, None, None])
                 & (cols < content[:, 1, None, None]))  # [1 or B, H, W]
        decoded = dense_panoptic_scores(class_logits, mask_logits.float(), None, threshold,
                                        valid, scatter_counts=self.selection == 'kept')
        if select is not None:
            decoded = _to_all_queries(decoded, select, scores, classes, keep)
        # Areas of queries that are not kept do not depend on which were decoded.
        mask_area = torch.where(keep, decoded.mask_area, 0)
        return decoded._replace(query_score=decoded.query_score.float(), mask_area=mask_area)


def _to_all_queries(decoded: PanopticScores, select: Tensor, scores: Tensor, classes: Tensor,
                    keep: Tensor) -> PanopticScores:
    """Outputs over the selected queries -> over all K (query indices, per-query areas)."""
    flat = decoded.segment_map.flatten(1)
    winner = torch.gather(select.to(torch.int32), 1, flat.clamp(min=0).long())
    segment_map = torch.where(flat >= 0, winner, -1).view_as(decoded.segment_map)

    def spread(area: Tensor) -> Tensor:
        return torch.zeros_like(keep, dtype=area.dtype).scatter(1, select, area)

    return PanopticScores(segment_map=segment_map, query_class=classes.to(torch.int32),
                          query_score=scores, keep=keep,
                          mask_area=spread(decoded.mask_area), won_area=spread(decoded.won_area))


def example_inputs(input_size: tuple[int, int], batch: int = 1,
                   device: torch.device | str = 'cpu') -> tuple[Tensor, Tensor, Tensor]:
    """Inputs of the right dtypes and shapes (a grey canvas, full content, threshold 0.8);
    ``content_size`` is ``[2]`` at batch 1 (the shape of every earlier export) and
    ``[B, 2]`` (one size per image) above."""
    height, width = input_size
    content = torch.tensor([height, width], dtype=torch.int32, device=device)
    return (torch.full((batch, 3, height, width), 128, dtype=torch.uint8, device=device),
            content if batch == 1 else content.repeat(batch, 1),
            torch.tensor([0.8], dtype=torch.float32, device=device))
