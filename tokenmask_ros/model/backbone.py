"""timm ViT backbones at a fixed input size and patch 16, and loading their weights."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from tokenmask_ros.model.config import TokenMaskConfig


def build_backbone(config: TokenMaskConfig) -> VisionTransformer:
    """A randomly initialised timm ViT with the config's grid; no classifier, no download."""
    sizes = {k: v for k, v in (('embed_dim', config.embed_dim), ('depth', config.depth),
                               ('num_heads', config.num_heads)) if v is not None}
    try:
        backbone = timm.create_model(
            config.backbone, pretrained=False, num_classes=0, global_pool='',
            img_size=config.img_size, patch_size=config.patch_size, dynamic_img_size=False,
            **sizes, **config.backbone_kwargs)
    except (RuntimeError, TypeError) as error:  # timm: "Unknown model (...)", bad kwargs
        raise ValueError(f'cannot build backbone {config.backbone!r}: {error}') from None
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(f'backbone {config.backbone!r} is a {type(backbone).__name__}, '
                         'not a timm VisionTransformer')
    if config.num_query_blocks > len(backbone.blocks):
        raise ValueError(f'num_query_blocks {config.num_query_blocks} exceeds the '
                         f'{len(backbone.blocks)} blocks of {config.backbone}')
    return backbone


def load_backbone_weights(backbone: VisionTransformer, path: str | Path) -> None:
    """Load pretrained ViT weights from a local safetensors file: timm or DINOv2 layout, or
    the backbone of a TokenMask checkpoint (its heads are ignored).

    The last lets a model with other classes, head or input size start from a trained or
    imported EoMT backbone; its position embedding is resampled from the checkpoint's token
    grid. timm's checkpoint filter resamples a patch-14 embedding to patch 16 and the
    position embeddings to this grid, once, at load time (what EoMT does for DINOv2).
    """
    from safetensors.torch import load_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    from tokenmask_ros.model.checkpoint import FORMAT, read_metadata

    if read_metadata(path).get('format') == FORMAT:
        state = _tokenmask_backbone_state(path, backbone)
    else:
        state = checkpoint_filter_fn(load_file(str(path)), backbone)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith('head')]
    if missing or unexpected:
        raise ValueError(f'{path}: backbone weights do not fit {type(backbone).__name__}: '
                         f'missing {missing[:5]}, unexpected {unexpected[:5]}')


def _tokenmask_backbone_state(path: str | Path, backbone: VisionTransformer
                              ) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` tensors of a TokenMask checkpoint (checksum verified), with the
    position embedding resampled from the checkpoint's grid to ``backbone``'s by
    :func:`fit_position_embedding` (timm's filter cannot: it assumes a square old grid).
    """
    from dataclasses import replace

    from tokenmask_ros.model.checkpoint import load_checkpoint

    source = load_checkpoint(path)
    target = replace(source.config, img_size=tuple(backbone.patch_embed.img_size))
    fitted = fit_position_embedding(source.state_dict(), source.config, target, crop=False)
    prefix = 'backbone.'
    state = {k[len(prefix):]: v.float() for k, v in fitted.items() if k.startswith(prefix)}
    expected = backbone.state_dict()
    wrong = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if wrong:
        raise ValueError(f'{path}: backbone weights do not fit {type(backbone).__name__}: '
                         f'wrong shape {wrong[:5]}')
    return state


def fit_position_embedding(state: dict[str, torch.Tensor], source: TokenMaskConfig,
                           target: TokenMaskConfig, crop: bool = True
                           ) -> dict[str, torch.Tensor]:
    """Adapt the backbone position embedding in a TokenMask ``state`` dict from ``source``'s
    token grid to ``target``'s (another input size, same model otherwise).

    With ``crop`` (training's ``--init``), a grid that fits inside the old one keeps its
    top-left part: images are letterboxed to the top-left corner, so those are exactly the
    positions that saw image content (a 320x240 scene in a 320x320 model fills the top 15 of
    20 rows). Otherwise the grid is resampled (bicubic, timm's ``resample_abs_pos_embed``),
    as EoMT does for a new resolution.
    """
    from timm.layers import resample_abs_pos_embed

    key = 'backbone.pos_embed'
    old, new = source.grid_size, target.grid_size
    if key not in state or old == new:
        return state
    embed = state[key]
    prefix = embed.shape[1] - old[0] * old[1]
    if crop and new[0] <= old[0] and new[1] <= old[1]:
        grid = embed[:, prefix:].reshape(1, *old, -1)[:, :new[0], :new[1]]
        fitted = torch.cat((embed[:, :prefix], grid.reshape(1, new[0] * new[1], -1)), dim=1)
    else:
        fitted = resample_abs_pos_embed(embed, list(new), list(old), num_prefix_tokens=prefix)
    return {**state, key: fitted.contiguous()}


@torch.no_grad()
def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
