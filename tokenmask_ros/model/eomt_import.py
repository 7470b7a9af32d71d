"""Import EoMT checkpoints saved by Hugging Face ``transformers`` into our ``eomt`` head.

Such a folder (``EomtForUniversalSegmentation.save_pretrained``) holds ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). Both are read
here directly, without importing transformers, so importing needs no extra dependency and
runs no foreign code. The HF model is a DINOv2-style ViT: position embeddings only for the
patches (timm ``no_embed_class``), register tokens, LayerScale in every block and separate
q/k/v projections, which we fuse into timm's single ``qkv`` linear.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tokenmask_ros.model.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUTPUT_STRIDES,
    ClassInfo,
    TokenMaskConfig,
)
from tokenmask_ros.model.label_sets import AUTO, classes_for
from tokenmask_ros.model.tokenmask import TokenMask, build_model

log = logging.getLogger('tokenmask_ros.model')

HF_ARCHITECTURE = 'EomtForUniversalSegmentation'
# timm's ViT LayerNorm (and LayerNorm2d in the ScaleBlocks) use eps 1e-6; create_model has
# no argument to change it, so other values cannot be reproduced exactly.
TIMM_LAYER_NORM_EPS = 1e-6
# A timm DINOv2 builder per width, so imported configs read like the presets; the sizes are
# overridden explicitly anyway. Only the giant builder has a (packed) SwiGLU MLP.
DINOV2_BACKBONES = {384: 'vit_small_patch14_reg4_dinov2', 768: 'vit_base_patch14_reg4_dinov2',
                    1024: 'vit_large_patch14_reg4_dinov2'}
SWIGLU_BACKBONE = 'vit_giant_patch14_reg4_dinov2'
# Tensors in the HF file that are not model weights: the loss' class weights.
IGNORED_WEIGHTS = ('criterion.empty_weight',)


class EomtImportError(ValueError):
    """A folder cannot be imported: the message says which file and why."""


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) for v in value):
        return (value[0], value[1])
    raise EomtImportError(f'{name} must be an int or a pair of ints, got {value!r}')


def _swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Width of HF's SwiGLU gate/up projections: 2/3 of the MLP width, rounded up to 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _ratio_for_width(dim: int, width: int) -> float:
    """An mlp_ratio for which timm's ``int(dim * mlp_ratio)`` is exactly ``width``."""
    ratio = width / dim
    while int(dim * ratio) < width:  # float rounding can land just below
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _class_infos(hf_config: dict, num_classes: int) -> tuple[ClassInfo, ...]:
    """Class names from ``id2label`` when it names every class once; otherwise none."""
    id2label = {str(k): v for k, v in (hf_config.get('id2label') or {}).items()}
    try:
        names = [str(id2label[key]) for key in map(str, range(num_classes))]
    except KeyError:
        return ()
    return tuple(ClassInfo(name) for name in names) if len(set(names)) == len(names) else ()


def config_from_hf(hf_config: dict, *, pixel_mean: Sequence[float] = IMAGENET_MEAN,
                   pixel_std: Sequence[float] = IMAGENET_STD,
                   classes: Sequence[ClassInfo] | None = None) -> TokenMaskConfig:
    """The :class:`TokenMaskConfig` of an ``eomt`` model equivalent to an HF ``EomtConfig``.

    ``hf_config`` is the parsed ``config.json``. Architectures our model cannot reproduce
    exactly raise :class:`EomtImportError`. ``pixel_mean``/``pixel_std`` are the image
    processor's (ImageNet by default); ``classes`` replaces the names from ``id2label``.
    """
    if hf_config.get('model_type') != 'eomt':
        raise EomtImportError(f'model_type is {hf_config.get("model_type")!r}, not "eomt"')
    get = hf_config.get  # absent keys take EomtConfig's defaults

    def count(name: str, default: int, minimum: int = 1) -> int:
        value = get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise EomtImportError(f'{name} must be an integer >= {minimum}, got {value!r}')
        return value

    dim, depth = count('hidden_size', 1024), count('num_hidden_layers', 24)
    heads = count('num_attention_heads', 16)
    if dim % heads:
        raise EomtImportError(f'hidden_size {dim} is not divisible by num_attention_heads {heads}')
    if get('num_channels', 3) != 3:
        raise EomtImportError(f'num_channels {get("num_channels")} is not supported (RGB only)')
    if get('hidden_act', 'gelu') != 'gelu':
        # HF's 'gelu' is the exact (erf) GELU, as nn.GELU in timm and in our heads.
        raise EomtImportError(f'hidden_act {get("hidden_act")!r} is not supported: only '
                              '"gelu" (exact erf GELU) matches our backbone and heads')
    eps = get('layer_norm_eps', 1e-6)
    if not math.isclose(eps, TIMM_LAYER_NORM_EPS, rel_tol=1e-9):
        raise EomtImportError(f'layer_norm_eps {eps} is not supported: timm ViTs use '
                              f'{TIMM_LAYER_NORM_EPS}')
    patch_h, patch_w = _pair(get('patch_size', 16), 'patch_size')
    if patch_h != patch_w:
        raise EomtImportError(f'non-square patch_size {get("patch_size")} is not supported')
    patch = patch_h
    img_size = _pair(get('image_size', 640), 'image_size')
    if any(s <= 0 or s % patch for s in img_size):
        raise EomtImportError(f'patch_size {patch} does not divide image_size {img_size}')
    upscale = count('num_upscale_blocks', 2, minimum=0)
    stride = patch / 2 ** upscale
    if stride not in OUTPUT_STRIDES:
        raise EomtImportError(f'num_upscale_blocks {upscale} with patch_size {patch} gives mask '
                              f'stride {stride}; supported strides are {OUTPUT_STRIDES}')
    num_blocks = count('num_blocks', 4)
    if num_blocks > depth:
        raise EomtImportError(f'num_blocks {num_blocks} exceeds num_hidden_layers {depth}')

    mlp_ratio = get('mlp_ratio', 4)
    if not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise EomtImportError(f'mlp_ratio must be a positive number, got {mlp_ratio!r}')
    if get('use_swiglu_ffn', False):
        # timm's giant DINOv2 builder packs gate and up projections into one fc1.
        backbone = SWIGLU_BACKBONE
        timm_ratio = _ratio_for_width(dim, 2 * _swiglu_hidden(dim, mlp_ratio))
    else:
        backbone = DINOV2_BACKBONES.get(dim, DINOV2_BACKBONES[768])
        timm_ratio = _ratio_for_width(dim, int(dim * mlp_ratio))

    num_classes = get('num_labels') or len(get('id2label') or {}) or 2  # 2: HF's default
    if len(pixel_mean) != 3 or len(pixel_std) != 3:
        raise EomtImportError(f'pixel mean/std need 3 values, got {pixel_mean} / {pixel_std}')
    layerscale = get('layerscale_value', 1.0)
    return TokenMaskConfig(
        backbone=backbone, img_size=img_size, patch_size=patch,
        num_queries=count('num_queries', 200), num_query_blocks=num_blocks,
        num_classes=num_classes, head='eomt', upsample='feature', output_stride=int(stride),
        classes=tuple(classes) if classes is not None else _class_infos(hf_config, num_classes),
        embed_dim=dim, depth=depth, num_heads=heads,
        pixel_mean=tuple(float(v) for v in pixel_mean),
        pixel_std=tuple(float(v) for v in pixel_std),
        extra={'imported_from': f'transformers {HF_ARCHITECTURE}'},
        backbone_kwargs={
            'class_token': True,
            'reg_tokens': count('num_register_tokens', 4, minimum=0),
            'no_embed_class': True,  # DINOv2: position embeddings for patches only
            # Any non-zero value gives every block a LayerScale; the weights replace it.
            'init_values': layerscale or 1e-5,
            'mlp_ratio': timm_ratio,
            'qkv_bias': True,
        },
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EomtImportError(f'{path}: not readable JSON: {error}') from None
    if not isinstance(data, dict):
        raise EomtImportError(f'{path}: expected a JSON object')
    return data


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors``, or of the shards its index lists."""
    single, index = folder / 'model.safetensors', folder / 'model.safetensors.index.json'
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get('weight_map')
        if not isinstance(weight_map, dict):
            raise EomtImportError(f'{index}: no "weight_map"')
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        raise EomtImportError(f'{folder} has no model.safetensors (nor a sharded index)')
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as error:
            raise EomtImportError(f'{path}: not a readable safetensors file: {error}') from None
    return state


def _names(names: Sequence[str], limit: int = 12) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f', ... ({len(names)} in all)' if len(names) > limit else '')


def map_hf_state(hf_state: dict[str, torch.Tensor],
                 config: TokenMaskConfig) -> dict[str, torch.Tensor]:
    """Rename (and for q/k/v and SwiGLU, concatenate) HF EoMT tensors to our state dict.

    Every HF tensor must be used: missing or left-over names raise :class:`EomtImportError`.
    """
    source = dict(hf_state)
    missing: list[str] = []

    def take(name: str) -> torch.Tensor | None:
        if name not in source:
            missing.append(name)
            return None
        return source.pop(name)

    def cat(*names: str) -> torch.Tensor | None:
        parts = [take(name) for name in names]
        return None if any(p is None for p in parts) else torch.cat(parts)

    for name in IGNORED_WEIGHTS:
        source.pop(name, None)
    probs = source.pop('attn_mask_probs', None)
    if probs is not None and bool((probs > 0).any()):
        # save_pretrained writes the buffer as it stands, e.g. its initial ones; EoMT itself
        # ends mask annealing at 0 and runs unmasked at inference, as our model always does.
        log.warning('attn_mask_probs is %s, so the saved checkpoint still had masked '
                    'attention on; the imported model runs unmasked, as EoMT does at '
                    'inference after mask annealing', [round(p, 4) for p in probs.tolist()])

    state = {
        'backbone.patch_embed.proj.weight': take('embeddings.patch_embeddings.projection.weight'),
        'backbone.patch_embed.proj.bias': take('embeddings.patch_embeddings.projection.bias'),
        'backbone.cls_token': take('embeddings.cls_token'),
        'backbone.norm.weight': take('layernorm.weight'),
        'backbone.norm.bias': take('layernorm.bias'),
        'queries.weight': take('query.weight'),
        'class_head.weight': take('class_predictor.weight'),
        'class_head.bias': take('class_predictor.bias'),
    }
    positions = take('embeddings.position_embeddings.weight')
    state['backbone.pos_embed'] = None if positions is None else positions.unsqueeze(0)
    registers = take('embeddings.register_tokens')
    if config.backbone_kwargs.get('reg_tokens'):
        state['backbone.reg_token'] = registers
    elif registers is not None and registers.numel():
        raise EomtImportError(f'config.json has no register tokens but the weights have '
                              f'{tuple(registers.shape)}')
    for index in range(config.depth):
        hf, ours = f'layers.{index}.', f'backbone.blocks.{index}.'
        for suffix in ('weight', 'bias'):
            state[f'{ours}attn.qkv.{suffix}'] = cat(
                *(f'{hf}attention.{p}_proj.{suffix}' for p in 'qkv'))
            state[f'{ours}attn.proj.{suffix}'] = take(f'{hf}attention.out_proj.{suffix}')
            for norm in ('norm1', 'norm2'):
                state[f'{ours}{norm}.{suffix}'] = take(f'{hf}{norm}.{suffix}')
            if config.backbone == SWIGLU_BACKBONE:  # packed fc1 = [gate | up] (timm GluMlp)
                state[f'{ours}mlp.fc1.{suffix}'] = cat(f'{hf}mlp.gate_proj.{suffix}',
                                                       f'{hf}mlp.up_proj.{suffix}')
                state[f'{ours}mlp.fc2.{suffix}'] = take(f'{hf}mlp.down_proj.{suffix}')
            else:
                state[f'{ours}mlp.fc1.{suffix}'] = take(f'{hf}mlp.fc1.{suffix}')
                state[f'{ours}mlp.fc2.{suffix}'] = take(f'{hf}mlp.fc2.{suffix}')
        state[f'{ours}ls1.gamma'] = take(f'{hf}layer_scale1.lambda1')
        state[f'{ours}ls2.gamma'] = take(f'{hf}layer_scale2.lambda1')
    for index, hf in enumerate(('fc1', 'fc2', 'fc3')):
        for suffix in ('weight', 'bias'):
            state[f'mask_mlp.{2 * index}.{suffix}'] = take(f'mask_head.{hf}.{suffix}')
    num_upscale = int(math.log2(config.patch_size // config.output_stride))
    for index in range(num_upscale):
        hf, ours = f'upscale_block.block.{index}.', f'mask_head.upscale.{index}.'
        state[f'{ours}conv1.weight'] = take(f'{hf}conv1.weight')
        state[f'{ours}conv1.bias'] = take(f'{hf}conv1.bias')
        state[f'{ours}conv2.weight'] = take(f'{hf}conv2.weight')
        state[f'{ours}norm.weight'] = take(f'{hf}layernorm2d.weight')
        state[f'{ours}norm.bias'] = take(f'{hf}layernorm2d.bias')

    problems = []
    if missing:
        problems.append(f'missing weights: {_names(missing)}')
    if source:
        problems.append(f'weights with no place in the model: {_names(sorted(source))}')
    if problems:
        raise EomtImportError('the weights do not fit config.json: ' + '; '.join(problems))
    return state


def import_hf_eomt(folder: str | Path, *, label_set: str | Path = AUTO,
                   **config_overrides) -> TokenMask:
    """Build our ``eomt`` model from an HF EoMT folder; returns it in eval mode on the CPU.

    ``config_overrides`` go to :func:`config_from_hf` (``pixel_mean``, ``pixel_std``,
    ``classes``). Without them, mean/std come from ``preprocessor_config.json`` when the
    folder has one, else ImageNet's (the EoMT image processor's defaults). ``label_set``
    gives the classes their thing/stuff flags and colours (see
    :func:`~tokenmask_ros.model.label_sets.classes_for`: ``'auto'``, a published set's
    name, ``'things'`` or a ``.json`` file); explicit ``classes`` take precedence.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EomtImportError(f'{folder} is not a folder')
    config_path = folder / 'config.json'
    if not config_path.is_file():
        raise EomtImportError(f'{folder} has no config.json')
    hf_config = _read_json(config_path)
    architectures = hf_config.get('architectures') or [HF_ARCHITECTURE]
    if HF_ARCHITECTURE not in architectures:
        raise EomtImportError(f'{config_path}: architectures {architectures} do not include '
                              f'{HF_ARCHITECTURE}')
    processor_path = folder / 'preprocessor_config.json'
    if processor_path.is_file():
        processor = _read_json(processor_path)
        if processor.get('do_normalize') is False:
            processor = {'image_mean': (0.0, 0.0, 0.0), 'image_std': (1.0, 1.0, 1.0)}
        for ours, theirs in (('pixel_mean', 'image_mean'), ('pixel_std', 'image_std')):
            if theirs in processor:
                config_overrides.setdefault(ours, processor[theirs])
    try:  # EomtImportError, or TokenMaskConfig's own validation
        config = config_from_hf(hf_config, **config_overrides)
    except ValueError as error:
        raise EomtImportError(f'{config_path}: {error}') from None
    if 'classes' not in config_overrides:
        try:  # LabelSetError: unreadable file, unknown name, wrong class count
            config = config.replace(classes=classes_for(
                [c.name for c in config.classes], label_set, num_classes=config.num_classes))
        except ValueError as error:
            raise EomtImportError(f'{folder}: {error}') from None
    try:
        state = map_hf_state(_read_weights(folder), config)
    except EomtImportError as error:
        raise EomtImportError(f'{folder}: {error}') from None
    model = build_model(config)
    expected = model.state_dict()
    wrong = sorted(f'{name} {tuple(state[name].shape)} instead of {tuple(tensor.shape)}'
                   for name, tensor in expected.items()
                   if name in state and state[name].shape != tensor.shape)
    unmapped = sorted(set(expected) - set(state))
    if wrong or unmapped:
        raise EomtImportError(f'{folder}: the weights do not fit config.json: '
                              + '; '.join(f'{what}: {_names(names)}' for what, names in (
                                  ('wrong shapes', wrong), ('not set', unmapped)) if names))
    model.load_state_dict(state)
    return model.eval()
