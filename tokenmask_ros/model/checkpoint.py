"""Checkpoints as safetensors files that describe themselves.

The safetensors metadata holds the full :class:`TokenMaskConfig` (with class names,
thing/stuff flags and colours) as JSON and a SHA-256 over every tensor, so
``load_checkpoint(path)`` rebuilds the model with no other input and refuses files that are
truncated, foreign, or altered after saving. Nothing is ever unpickled. The metadata is
not covered by the checksum, so the config it holds is validated (an allow-list of backbone
arguments) before anything is built from it.

:func:`load_backbone_weights` lives here, not in ``backbone``, because it reads TokenMask
checkpoints; the model modules then import in one direction only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from tokenmask_ros.atomic_file import atomic_path
from tokenmask_ros.model.backbone import fit_position_embedding
from tokenmask_ros.model.config import TokenMaskConfig
from tokenmask_ros.model.tokenmask import TokenMask, build_model

FORMAT = 'tokenmask'
FORMAT_VERSION = '1'


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message says which file and why."""


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of all tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to('cpu').contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.view(torch.uint8).numpy() if tensor.numel() else b'')
    return digest.hexdigest()


def save_checkpoint(model: TokenMask, path: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write ``model`` atomically (temp file + rename) with its config in the metadata."""
    path = Path(path)
    state = {k: v.detach().to('cpu').contiguous() for k, v in model.state_dict().items()}
    metadata = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'config': json.dumps(model.config.to_dict()),
        'sha256': tensor_digest(state),
    }
    for key, value in (extra_metadata or {}).items():
        metadata[f'user.{key}'] = str(value)
    with atomic_path(path) as temp:
        save_file(state, temp, metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of ``path``; raises :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        with safe_open(str(path), framework='pt') as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f'{path} is not a readable safetensors file (truncated or '
                              f'corrupt?): {error}') from None


def load_config(path: str | Path) -> TokenMaskConfig:
    """The model config stored in a checkpoint, without loading its tensors."""
    metadata = read_metadata(path)
    if metadata.get('format') != FORMAT:
        raise CheckpointError(f'{path} is a safetensors file but not a tokenmask checkpoint '
                              f'(metadata format={metadata.get("format")!r}); import EoMT '
                              'weights with `tokenmask import-eomt`')
    if metadata.get('format_version') != FORMAT_VERSION:
        raise CheckpointError(f'{path} has checkpoint format version '
                              f'{metadata.get("format_version")!r}; this code reads '
                              f'{FORMAT_VERSION}')
    try:
        return TokenMaskConfig.from_dict(json.loads(metadata['config']))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f'{path} has an unusable model config: {error}') from None


def load_checkpoint(path: str | Path, device: str | torch.device = 'cpu') -> TokenMask:
    """Rebuild the model stored in ``path`` and return it in eval mode on ``device``."""
    config = load_config(path)
    expected_digest = read_metadata(path).get('sha256')
    try:
        with safe_open(str(path), framework='pt', device='cpu') as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f'{path}: tensor data is unreadable (truncated?): {error}') from None
    if expected_digest != tensor_digest(state):
        raise CheckpointError(f'{path}: tensor checksum mismatch: the file was modified or '
                              'damaged after it was saved')
    try:
        model = build_model(config)
    except ValueError as error:  # e.g. a backbone name timm does not know
        raise CheckpointError(f'{path}: {error}') from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected)
                         if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f'{path}: tensors do not match its config: missing {missing[:5]}, '
            f'unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]}')
    model.load_state_dict(state)
    return model.to(device).eval()


def load_backbone_weights(backbone: VisionTransformer, path: str | Path) -> None:
    """Load pretrained ViT weights from a local safetensors file: timm or DINOv2 layout, or
    the backbone of a TokenMask checkpoint (its heads are ignored).

    The last lets a model with other classes, head or input size start from a trained or
    imported EoMT backbone; its position embedding is resampled from the checkpoint's token
    grid. timm's checkpoint filter resamples a patch-14 embedding to patch 16 and the
    position embeddings to this grid, once, at load time (what EoMT does for DINOv2).
    """
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
