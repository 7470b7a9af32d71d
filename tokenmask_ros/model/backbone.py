"""timm ViT backbones at a fixed input size and patch 16, and resampling their position
embeddings.

Loading pretrained weights lives in :mod:`tokenmask_ros.model.checkpoint` (it reads
TokenMask checkpoints), so the modules form a chain without cycles:
config <- backbone <- tokenmask <- checkpoint.
"""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from tokenmask_ros.model.config import TokenMaskConfig, backbone_kwargs_problems


def build_backbone(config: TokenMaskConfig) -> VisionTransformer:
    """A randomly initialised timm ViT with the config's grid; no classifier, no download."""
    # Checkpoint metadata reaches this point: pass timm only registry names and allow-listed
    # architecture arguments, never a hub/local-dir source or a file-loading argument.
    if not timm.is_model(config.backbone):
        raise ValueError(f'cannot build backbone {config.backbone!r}: not a timm model name '
                         '(hub and local-dir sources are refused); e.g. vit_tiny_patch16_224')
    problems = backbone_kwargs_problems(config.backbone_kwargs)
    if problems:
        raise ValueError('; '.join(problems))
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
