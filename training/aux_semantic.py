"""Optional training-only auxiliary loss: per-token semantic classes on the patch tokens.

Why: trained from scratch (no pretrained backbone, as on the synthetic set), a plain ViT
learns *where* objects are long before it learns *what* they are. The mask loss gives
dense, class-agnostic supervision, while class supervision reaches the patch tokens only
through a handful of matched queries per image. On the synthetic set the six thing shapes
stayed at chance for thousands of steps even though their masks were right. A linear
classifier on the patch tokens, trained against each token's class fractions, gives every
token a class signal and so teaches the backbone shape features that the queries then read.

The module is not part of the model: it is never saved with the weights, never exported,
and the default weight (``optim.aux_semantic_weight: 0``) leaves training exactly EoMT's.
It reads the tokens where the queries join (input of the first query block) and the final
tokens, through forward hooks, so the model's forward stays untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Tokens whose pixels are less than this fraction covered by labelled segments (padding,
#: void, crowd-free gaps) are left out of the loss.
MIN_COVERAGE = 0.5


def token_class_fractions(masks: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          patch_size: int) -> torch.Tensor:
    """Per-token class fractions ``[C, gh, gw]`` of one image's segments.

    ``masks``: bool ``[N, H, W]`` with H, W multiples of ``patch_size``; ``labels``: ``[N]``.
    A token's column sums to the share of its pixels covered by any segment.
    """
    height, width = masks.shape[-2:]
    grid = (height // patch_size, width // patch_size)
    if len(labels) == 0:
        return masks.new_zeros((num_classes, *grid), dtype=torch.float32)
    pooled = F.avg_pool2d(masks[:, None].float(), patch_size)[:, 0]  # [N, gh, gw]
    one_hot = F.one_hot(labels.long(), num_classes).float()           # [N, C]
    return torch.einsum('nc,nhw->chw', one_hot, pooled)


def soft_token_loss(logits: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of token logits ``[B, N, C]`` against class fractions ``[B, C, gh, gw]``.

    Fractions are renormalised per token; tokens below :data:`MIN_COVERAGE` are skipped.
    """
    targets = fractions.flatten(2).transpose(1, 2)  # [B, N, C]
    coverage = targets.sum(-1)
    valid = coverage >= MIN_COVERAGE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    targets = targets[valid] / coverage[valid, None]
    return -(targets * F.log_softmax(logits[valid].float(), -1)).sum(-1).mean()


class SemanticAuxiliary(nn.Module):
    """Linear token classifiers at the first query block's input and at the output."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        backbone = model.backbone
        dim = backbone.embed_dim
        self.num_classes = num_classes
        self.patch_size = backbone.patch_embed.patch_size[0]
        self.skip = model.num_queries + backbone.num_prefix_tokens
        self.heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes)) for _ in range(2))
        # The tokens of the latest training-mode forward pass, one slot per read-out point;
        # evaluation passes (eval mode) are not captured.
        self._tokens: list[torch.Tensor | None] = [None, None]
        first_query_block = backbone.blocks[len(backbone.blocks) - model.num_query_blocks]
        self._hooks = [
            first_query_block.register_forward_pre_hook(
                lambda module, args: self._capture(module, 0, args[0])),
            backbone.blocks[-1].register_forward_hook(
                lambda module, _args, output: self._capture(module, 1, output)),
        ]

    def _capture(self, block: nn.Module, slot: int, tokens: torch.Tensor) -> None:
        if block.training:
            self._tokens[slot] = tokens

    def loss(self, targets: Sequence[dict]) -> torch.Tensor:
        """The mean token loss of the two read-out points for the last forward pass."""
        tokens, self._tokens = self._tokens, [None, None]
        if any(t is None for t in tokens):
            raise RuntimeError('SemanticAuxiliary.loss needs one training-mode forward pass '
                               'of the model first')
        fractions = torch.stack([
            token_class_fractions(t['masks'], t['labels'], self.num_classes, self.patch_size)
            for t in targets])
        return sum(soft_token_loss(head(x[:, self.skip:]), fractions)
                   for head, x in zip(self.heads, tokens, strict=True)) / len(tokens)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
