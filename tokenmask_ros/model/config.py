"""Model configuration and the named backbone presets.

Defaults live here, in one dataclass; YAML configs and checkpoints only carry what differs.
The config round-trips through JSON (``to_dict`` / ``from_dict``) so a checkpoint's
safetensors metadata can rebuild the exact model without any pickled object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

HEADS = ('tokenmask', 'eomt')
# Arguments the backbone builder sets from other fields; backbone_kwargs must not repeat them.
MANAGED_BACKBONE_ARGS = ('pretrained', 'num_classes', 'global_pool', 'img_size', 'patch_size',
                         'dynamic_img_size', 'embed_dim', 'depth', 'num_heads')
# The only ViT architecture arguments a config (and so a checkpoint's metadata) may pass on
# to timm.create_model, with their JSON types: what the EoMT importer sets. Anything else is
# refused, so a checkpoint cannot reach timm's file-loading arguments (checkpoint_path,
# pretrained_cfg_overlay, ...).
ALLOWED_BACKBONE_KWARGS: dict[str, tuple[type, ...]] = {
    'class_token': (bool,),
    'reg_tokens': (int,),
    'no_embed_class': (bool,),
    'init_values': (int, float, type(None)),
    'mlp_ratio': (int, float),
    'qkv_bias': (bool,),
}
UPSAMPLING = {'tokenmask': ('logit', 'none', 'subpatch'), 'eomt': ('feature',)}
OUTPUT_STRIDES = (1, 2, 4, 8, 16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassInfo:
    """One category: its name, whether it is a countable thing, and its display colour."""

    name: str
    is_thing: bool = True
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class BackbonePreset:
    """A ViT size as the paper uses it: width D, depth, heads, and L2 query blocks."""

    backbone: str
    embed_dim: int
    depth: int
    num_heads: int
    num_query_blocks: int


# L2 = 4 for ViT-T/S/B/L and 5 for ViT-g: EoMT's code default, and the value under which
# the TokenMask paper's cost tables reproduce exactly (training/README.md, "Cost benchmark";
# EoMT's own COCO configs use 3 for ViT-S/B, pass num_query_blocks=3 for those). DINOv2
# weights load into the patch-16 grid (``load_backbone_weights`` resamples them once).
PRESETS: dict[str, BackbonePreset] = {
    'tiny': BackbonePreset('vit_tiny_patch16_224', 192, 12, 3, 4),
    'small': BackbonePreset('vit_small_patch14_reg4_dinov2', 384, 12, 6, 4),
    'base': BackbonePreset('vit_base_patch14_reg4_dinov2', 768, 12, 12, 4),
    'large': BackbonePreset('vit_large_patch14_reg4_dinov2', 1024, 24, 16, 4),
    'giant': BackbonePreset('vit_giant_patch14_reg4_dinov2', 1536, 40, 24, 5),
}


def backbone_kwargs_problems(kwargs: Any) -> list[str]:
    """What is wrong with ``backbone_kwargs``: keys outside the allow-list, wrong types.

    Checked at config construction and again right before ``timm.create_model``, because
    the dict comes from untrusted checkpoint metadata.
    """
    if not isinstance(kwargs, dict):
        return [f'backbone_kwargs must be a JSON object, got {type(kwargs).__name__}']
    problems = []
    for key in sorted(kwargs, key=str):
        value = kwargs[key]
        if key in MANAGED_BACKBONE_ARGS:
            problems.append(f'backbone_kwargs must not set {key!r}: use the config field')
        elif key not in ALLOWED_BACKBONE_KWARGS:
            problems.append(f'backbone_kwargs key {key!r} is not allowed (allowed: '
                            f'{", ".join(ALLOWED_BACKBONE_KWARGS)})')
        elif (not isinstance(value, ALLOWED_BACKBONE_KWARGS[key])
              or (isinstance(value, bool) and bool not in ALLOWED_BACKBONE_KWARGS[key])):
            problems.append(f'backbone_kwargs {key!r} has the wrong type '
                            f'{type(value).__name__}')
    return problems


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


@dataclass(frozen=True)
class TokenMaskConfig:
    """Everything needed to build a TokenMask or EoMT model.

    ``embed_dim``/``depth``/``num_heads`` override the timm backbone's own sizes (``None``
    keeps them); tiny test models use them. ``output_stride`` is the mask resolution
    relative to the input: logits are bilinearly upsampled to it (``tokenmask`` +
    ``logit``), produced at the patch grid (``tokenmask`` + ``none``: stride = patch size),
    scored per sub-patch position in token space (``tokenmask`` + ``subpatch``: each query
    becomes (patch/stride)^2 learned sub-queries, one per position inside a patch), or
    reached with learned ScaleBlocks (``eomt`` + ``feature``: log2(patch/stride) blocks,
    EoMT's default two at stride 4). ``backbone_kwargs`` are further JSON-valued keyword
    arguments for ``timm.create_model`` (e.g. ``reg_tokens``, ``init_values``) for
    architectures the backbone name alone does not pin down, such as imported EoMT models.
    """

    backbone: str = 'vit_small_patch16_224'
    img_size: int | tuple[int, int] = 640
    patch_size: int = 16
    num_queries: int = 200
    num_query_blocks: int = 3
    num_classes: int = 133
    head: str = 'tokenmask'
    upsample: str = 'logit'
    output_stride: int = 4
    classes: tuple[ClassInfo, ...] = ()
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, 'img_size', _pair(self.img_size))
        object.__setattr__(self, 'classes', tuple(
            c if isinstance(c, ClassInfo) else ClassInfo(**c) for c in self.classes))
        problems = list(self._problems())
        if problems:
            raise ValueError('invalid TokenMaskConfig: ' + '; '.join(problems))

    def _problems(self):
        if self.head not in HEADS:
            yield f'head must be one of {HEADS}, got {self.head!r}'
        elif self.upsample not in UPSAMPLING[self.head]:
            yield (f'head {self.head!r} takes upsample {UPSAMPLING[self.head]}, '
                   f'got {self.upsample!r}')
        if self.output_stride not in OUTPUT_STRIDES:
            yield f'output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride}'
        elif self.patch_size % self.output_stride:
            yield f'output_stride {self.output_stride} must divide patch_size {self.patch_size}'
        if self.upsample == 'none' and self.output_stride != self.patch_size:
            yield (f'upsample "none" predicts at the patch grid: output_stride must be '
                   f'{self.patch_size}, got {self.output_stride}')
        if self.upsample == 'subpatch' and self.output_stride == self.patch_size:
            yield (f'upsample "subpatch" scores positions inside a patch: output_stride must '
                   f'be below patch_size {self.patch_size}')
        if any(s <= 0 or s % self.patch_size for s in self.img_size):
            yield f'img_size {self.img_size} must be positive multiples of {self.patch_size}'
        if self.num_queries < 1 or self.num_query_blocks < 1 or self.num_classes < 1:
            yield 'num_queries, num_query_blocks and num_classes must be >= 1'
        if self.depth is not None and self.num_query_blocks > self.depth:
            yield f'num_query_blocks {self.num_query_blocks} exceeds depth {self.depth}'
        yield from backbone_kwargs_problems(self.backbone_kwargs)
        if self.classes:
            if len(self.classes) != self.num_classes:
                yield f'{len(self.classes)} class names for num_classes={self.num_classes}'
            names = [c.name for c in self.classes]
            if len(set(names)) != len(names):
                yield 'class names must be unique'

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def mask_size(self) -> tuple[int, int]:
        """(H, W) of ``mask_logits``."""
        return (self.img_size[0] // self.output_stride, self.img_size[1] // self.output_stride)

    def replace(self, **changes) -> TokenMaskConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data['img_size'] = list(self.img_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenMaskConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f'unknown TokenMaskConfig field(s): {sorted(unknown)}')
        data = dict(data)
        for key in ('pixel_mean', 'pixel_std'):
            if key in data:
                data[key] = tuple(data[key])
        if 'classes' in data:
            data['classes'] = tuple(
                ClassInfo(c['name'], bool(c.get('is_thing', True)),
                          tuple(c['color']) if c.get('color') is not None else None)
                for c in data['classes'])
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TokenMaskConfig:
        """A config for one of :data:`PRESETS` (``tiny`` ... ``giant``) plus overrides."""
        try:
            preset = PRESETS[name]
        except KeyError:
            raise ValueError(f'unknown preset {name!r}; choose from {sorted(PRESETS)}') from None
        values = {'backbone': preset.backbone, 'num_query_blocks': preset.num_query_blocks}
        values.update(overrides)
        return cls(**values)
