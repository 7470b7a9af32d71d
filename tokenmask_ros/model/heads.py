"""The two mask heads. Both turn (queries, patch tokens) into per-query mask logits.

``TokenMaskHead`` is the paper: one batched GEMM between projected queries and patch
tokens (eq. 7-9), a reshape to the patch grid (eq. 10), and bilinear interpolation of the
*logits* (eq. 11). Its ``subpatch`` variant (ours) scores r x r learned sub-queries per query
against the same tokens, one per position inside a patch, and interleaves the results into
the stride-(patch / r) grid: still no dense feature map, but masks finer than a patch (thin
rods, poles) become possible. ``EoMTHead`` is the image-space baseline: patch tokens are
rebuilt into a (D, h, w) map, upscaled by learned ScaleBlocks, and scored with an einsum.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn


def gather_queries(values: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """Rows ``select`` [B, k] of ``values`` [B, K, ...] (ONNX GatherElements)."""
    index = select.view(*select.shape, *[1] * (values.dim() - 2))
    return torch.gather(values, 1, index.expand(-1, -1, *values.shape[2:]))


class MaskMLP(nn.Sequential):
    """Query -> mask embedding: Linear-GELU-Linear-GELU-Linear at width D (EoMT)."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(),
                         nn.Linear(dim, dim))


class TokenMaskHead(nn.Module):
    """Token-space scoring. ``upsample`` 'logit' / 'none' have no parameters besides the
    shared mask MLP; 'subpatch' adds one bias-free ``Linear(D, r*r*D)`` (r = patch / stride)
    that makes the sub-queries, initialised so every sub-query equals its query (nearest
    upsampling of the patch-grid logits) until training moves them apart."""

    def __init__(self, grid_size: tuple[int, int], patch_size: int, output_stride: int,
                 dim: int | None = None, upsample: str = 'logit'):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.scale = patch_size // output_stride
        self.subpatch = None
        if upsample == 'subpatch':
            if dim is None or self.scale < 2:
                raise ValueError('upsample "subpatch" needs dim and output_stride < patch_size')
            self.subpatch = nn.Linear(dim, self.scale ** 2 * dim, bias=False)
            with torch.no_grad():
                self.subpatch.weight.copy_(torch.eye(dim).repeat(self.scale ** 2, 1))

    def forward(self, mask_embed: torch.Tensor, patch_tokens: torch.Tensor,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits [B, K, h, w]; with ``select`` ([B, k] query indices) only those
        queries' [B, k, h, w], bit-identical to selecting from the full result ('logit',
        'none'; 'subpatch' scores only the selected queries' sub-queries)."""
        if self.subpatch is not None:
            return self._subpatch_logits(mask_embed, patch_tokens, select)
        # eq. (7)-(9): A = E_q X^T, one GEMM on the token sequence [B, K, D] x [B, D, N].
        # Selection comes after this cheap GEMM, so its values do not depend on k.
        affinity = torch.bmm(mask_embed, patch_tokens.transpose(1, 2))
        if select is not None:
            affinity = gather_queries(affinity, select)
        # eq. (10): back to the patch grid.
        logits = affinity.unflatten(2, self.grid_size)
        # eq. (11): interpolation in logit space (K channels, not D).
        if self.scale > 1:
            logits = F.interpolate(logits, scale_factor=self.scale, mode='bilinear',
                                   align_corners=False)
        return logits

    def _subpatch_logits(self, mask_embed: torch.Tensor, patch_tokens: torch.Tensor,
                         select: torch.Tensor | None) -> torch.Tensor:
        if select is not None:
            mask_embed = gather_queries(mask_embed, select)
        batch, queries, dim = mask_embed.shape
        r, (height, width) = self.scale, self.grid_size
        # [B, k*r*r, D] sub-queries x [B, D, N] tokens: one GEMM, as eq. (7)-(9).
        sub_queries = self.subpatch(mask_embed).reshape(batch, queries * r * r, dim)
        affinity = torch.bmm(sub_queries, patch_tokens.transpose(1, 2))
        # [B, k, r(row), r(col), h, w] -> [B, k, h*r, w*r]: sub-position (i, j) of patch
        # (y, x) is pixel (y*r + i, x*r + j) of the output grid (a pixel shuffle).
        logits = affinity.reshape(batch, queries, r, r, height, width)
        return logits.permute(0, 1, 4, 2, 5, 3).reshape(batch, queries, height * r, width * r)


class ScaleBlock(nn.Module):
    """EoMT's learned 2x upscale: ConvTranspose2d -> GELU -> depthwise 3x3 -> LayerNorm2d."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv2(self.act(self.conv1(x))))


class EoMTHead(nn.Module):
    """Image-space scoring after log2(patch / stride) learned ScaleBlocks (eq. 2-6)."""

    def __init__(self, dim: int, grid_size: tuple[int, int], patch_size: int, output_stride: int):
        super().__init__()
        self.grid_size = tuple(grid_size)
        num_blocks = int(math.log2(patch_size // output_stride))
        self.upscale = nn.Sequential(*[ScaleBlock(dim) for _ in range(num_blocks)])

    def forward(self, mask_embed: torch.Tensor, patch_tokens: torch.Tensor,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits [B, K, h, w]; with ``select`` ([B, k] query indices) only those
        queries' (the einsum at the output stride is per query, so it shrinks with k)."""
        if select is not None:
            mask_embed = gather_queries(mask_embed, select)
        feature_map = patch_tokens.transpose(1, 2).unflatten(2, self.grid_size)  # eq. (2)
        return torch.einsum('bkd,bdhw->bkhw', mask_embed, self.upscale(feature_map))  # eq. (5)
