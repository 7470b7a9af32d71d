"""Deployment runtime: one :class:`Segmenter`, three backends (torch, onnxruntime, tensorrt),
ONNX export and the TensorRT engine cache. Imports no ROS; optional backends are imported
only when asked for.

Names are loaded on first use, so importing a light submodule (the engine cache, the
errors) does not import PyTorch.
"""

from __future__ import annotations

import importlib

_HOMES = {
    'BACKENDS': 'backends', 'BackendUnavailable': 'errors', 'CacheError': 'errors',
    'EngineBuildError': 'errors', 'LoadError': 'errors', 'create_backend': 'backends',
    'cached_onnx': 'export', 'export_onnx': 'export', 'read_onnx_config': 'export',
    'read_onnx_metadata': 'export', 'InputError': 'preprocess', 'letterbox': 'preprocess',
    'Segmenter': 'segmenter', 'Timing': 'segmenter', 'check_thresholds': 'segmenter',
    'model_config': 'segmenter',
}

__all__ = sorted(_HOMES)  # each resolved by __getattr__ on first use


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{_HOMES[name]}'), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
