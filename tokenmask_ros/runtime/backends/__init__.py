"""Backend selection. Optional dependencies (onnxruntime, tensorrt, pycuda) are imported
only when their backend is asked for, so this package imports on any machine."""

from __future__ import annotations

import logging
from pathlib import Path

from tokenmask_ros.defaults import AUTO_ORDER, BACKENDS, PRECISIONS
from tokenmask_ros.runtime.backends.base import Backend, BackendUnavailable

log = logging.getLogger('tokenmask_ros.runtime')

__all__ = ['AUTO_ORDER', 'BACKENDS', 'Backend', 'BackendUnavailable', 'create_backend',
           'resolve_device']


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; other values are checked."""
    import torch

    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device != 'cpu' and not device.startswith('cuda'):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def _precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'auto':
        return 'fp16' if device.startswith('cuda') else 'fp32'
    return precision


def create_backend(name: str, model_path: str | Path, *, device: str = 'auto',
                   precision: str = 'auto', cache_dir: str | Path | None = None,
                   force_engine_update: bool = False, compile: bool = False) -> Backend:
    """The backend ``name`` ('auto' = the first of :data:`AUTO_ORDER` that works here).

    ``model_path``: a TokenMask ``.safetensors`` checkpoint (every backend; ONNX files are
    exported into ``cache_dir`` on first use) or an exported ``.onnx`` file (onnxruntime,
    tensorrt). Raises :class:`BackendUnavailable` with one sentence when it cannot run.
    """
    device = resolve_device(device)
    if name == 'auto':
        reasons = []
        for candidate in AUTO_ORDER:
            try:
                backend = create_backend(candidate, model_path, device=device,
                                         precision=precision, cache_dir=cache_dir,
                                         force_engine_update=force_engine_update,
                                         compile=compile)
            except BackendUnavailable as error:
                reasons.append(f'{candidate}: {error}')
                continue
            log.info('backend auto: using %s%s', backend.describe(),
                     ''.join(f'; skipped {r}' for r in reasons))
            return backend
        raise BackendUnavailable('no backend can run here: ' + '; '.join(reasons))
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}")
    precision = _precision(precision, device)
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f'model file not found: {path}')
    if name == 'torch':
        if path.suffix == '.onnx':
            raise BackendUnavailable('the torch backend needs a .safetensors checkpoint, '
                                     f'not an ONNX file ({path.name})')
        from tokenmask_ros.model import load_checkpoint
        from tokenmask_ros.runtime.backends.torch_backend import TorchBackend

        return TorchBackend(load_checkpoint(path), device, precision, compile=compile)
    from tokenmask_ros.runtime.export import cached_onnx

    if name == 'onnxruntime':
        from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        onnx_path = cached_onnx(path, precision, cache_dir)
        return OnnxRuntimeBackend(onnx_path, device)
    from tokenmask_ros.runtime.backends.tensorrt_backend import TensorRTBackend

    TensorRTBackend.check_available(device)  # fail before spending time on an export
    onnx_path = cached_onnx(path, precision, cache_dir)
    return TensorRTBackend(onnx_path, device, cache_dir=cache_dir,
                           force_rebuild=force_engine_update)
