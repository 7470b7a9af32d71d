"""TokenMask: a plain ViT with K learnable queries in its last L2 blocks (EoMT layout).

Token layout in the last L2 blocks: ``[K queries | cls | registers | N patches]``.
The model receives its backbone (composition, as EoMT), so tests can use a 2-block ViT.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tokenmask_ros.model.backbone import build_backbone
from tokenmask_ros.model.config import TokenMaskConfig
from tokenmask_ros.model.heads import EoMTHead, MaskMLP, TokenMaskHead


class SegmentationOutput(NamedTuple):
    """Per-query class logits [B, K, C+1] (last = no object) and mask logits [B, K, h, w]."""

    class_logits: torch.Tensor
    mask_logits: torch.Tensor


class QueryFeatures(NamedTuple):
    """The final block's prediction before the mask head: class logits [B, K, C+1], mask
    embeddings [B, K, D] and normed patch tokens [B, N, D] (``mask_head`` makes the masks)."""

    class_logits: torch.Tensor
    mask_embed: torch.Tensor
    patch_tokens: torch.Tensor


class TokenMask(nn.Module):
    """ViT + queries + class head + mask MLP + one of the two mask heads."""

    def __init__(self, backbone: VisionTransformer, config: TokenMaskConfig):
        super().__init__()
        self.config = config
        self.backbone = backbone
        dim = backbone.embed_dim
        self.num_queries = config.num_queries
        self.num_query_blocks = config.num_query_blocks
        self.queries = nn.Embedding(config.num_queries, dim)
        self.class_head = nn.Linear(dim, config.num_classes + 1)
        self.mask_mlp = MaskMLP(dim)
        grid = backbone.patch_embed.grid_size
        if config.head == 'tokenmask':
            self.mask_head = TokenMaskHead(grid, config.patch_size, config.output_stride, dim,
                                           config.upsample)
        else:
            self.mask_head = EoMTHead(dim, grid, config.patch_size, config.output_stride)
        self.register_buffer('pixel_mean', torch.tensor(config.pixel_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('pixel_std', torch.tensor(config.pixel_std).view(1, 3, 1, 1),
                             persistent=False)
        # EoMT's masked-attention annealing: P(mask) per query block, set by the training
        # loop. Zero (off) by default, and only consulted in training mode.
        self.register_buffer('attn_mask_probs', torch.zeros(config.num_query_blocks),
                             persistent=False)

    # --- inference path ------------------------------------------------------------

    def forward(self, images: torch.Tensor, return_intermediate: bool = False):
        """``images``: [B, 3, H, W] RGB in [0, 1] at the config's ``img_size``.

        Returns the final :class:`SegmentationOutput`, or with ``return_intermediate`` the
        list of L2+1 outputs (one before each query block, then the final one).
        """
        x, outputs = self._encode(images, return_intermediate)
        outputs.append(self._predict(x))
        return outputs if return_intermediate else outputs[-1]

    def query_features(self, images: torch.Tensor) -> QueryFeatures:
        """The final prediction up to the mask head (inference): the deploy graph scores
        the queries first and runs the mask head only for those that can win a pixel."""
        x, _ = self._encode(images, False)
        return self._query_features(x)

    def _encode(self, images: torch.Tensor, return_intermediate: bool
                ) -> tuple[torch.Tensor, list[SegmentationOutput]]:
        """Token sequence after the last block, and the intermediate predictions made on
        the way (before each query block, when asked for or when attention is masked)."""
        x = self._embed((images - self.pixel_mean) / self.pixel_std)
        blocks = self.backbone.blocks
        first_query_block = len(blocks) - self.num_query_blocks
        masking = self.training and bool((self.attn_mask_probs > 0).any())
        outputs = []
        for index, block in enumerate(blocks):
            if index == first_query_block:
                queries = self.queries.weight.unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat((queries, x), dim=1)
            attn_mask = None
            if index >= first_query_block and (return_intermediate or masking):
                output = self._predict(x)
                outputs.append(output)
                if masking:
                    attn_mask = self._attention_mask(
                        x, output.mask_logits, self.attn_mask_probs[index - first_query_block])
            x = block(x, attn_mask=attn_mask)
        return x, outputs

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone
        x = backbone.patch_embed(images)
        x = backbone._pos_embed(x)
        x = backbone.patch_drop(x)
        return backbone.norm_pre(x)

    def _query_features(self, x: torch.Tensor) -> QueryFeatures:
        x = self.backbone.norm(x)
        queries = x[:, :self.num_queries]
        patch_tokens = x[:, self.num_queries + self.backbone.num_prefix_tokens:]
        return QueryFeatures(self.class_head(queries), self.mask_mlp(queries), patch_tokens)

    def _predict(self, x: torch.Tensor) -> SegmentationOutput:
        """Class and mask logits from the current token sequence (EoMT's ``_predict``)."""
        features = self._query_features(x)
        mask_logits = self.mask_head(features.mask_embed, features.patch_tokens)
        return SegmentationOutput(features.class_logits, mask_logits)

    # --- training-only machinery ---------------------------------------------------

    def set_attention_mask_probs(self, probs) -> None:
        """Per query block probability that a query's attention stays masked (EoMT annealing)."""
        probs = torch.as_tensor(probs, dtype=torch.float32, device=self.attn_mask_probs.device)
        if probs.shape != self.attn_mask_probs.shape or ((probs < 0) | (probs > 1)).any():
            raise ValueError(f'expected {self.num_query_blocks} probabilities in [0, 1], '
                             f'got {probs.tolist()}')
        self.attn_mask_probs.copy_(probs)

    def _attention_mask(self, x: torch.Tensor, mask_logits: torch.Tensor,
                        prob: torch.Tensor) -> torch.Tensor:
        """Queries attend only to patches inside their current mask (True = attend).

        Each (image, query) row is re-opened with probability 1 - ``prob``.
        """
        batch, tokens = x.shape[:2]
        on_grid = F.interpolate(mask_logits.detach(), self.backbone.patch_embed.grid_size,
                                mode='bilinear', align_corners=False).flatten(2) > 0
        reopen = torch.rand(batch, self.num_queries, 1, device=x.device) >= prob
        mask = torch.ones(batch, 1, tokens, tokens, dtype=torch.bool, device=x.device)
        patch_start = self.num_queries + self.backbone.num_prefix_tokens
        mask[:, 0, :self.num_queries, patch_start:] = on_grid | reopen
        return mask


def build_model(config: TokenMaskConfig) -> TokenMask:
    """A randomly initialised model for ``config`` (load weights with ``load_checkpoint``)."""
    return TokenMask(build_backbone(config), config)
