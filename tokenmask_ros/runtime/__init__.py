"""Deployment runtime: one :class:`Segmenter`, three backends (torch, onnxruntime, tensorrt),
ONNX export and the TensorRT engine cache. Imports no ROS; optional backends are imported
only when asked for."""

from tokenmask_ros.runtime.backends import BACKENDS, BackendUnavailable, create_backend
from tokenmask_ros.runtime.export import (
    cached_onnx,
    export_onnx,
    read_onnx_config,
    read_onnx_metadata,
)
from tokenmask_ros.runtime.preprocess import InputError, letterbox
from tokenmask_ros.runtime.segmenter import Segmenter, Timing, check_thresholds, model_config

__all__ = ['BACKENDS', 'BackendUnavailable', 'InputError', 'Segmenter', 'Timing',
           'cached_onnx', 'check_thresholds', 'create_backend', 'export_onnx', 'letterbox',
           'model_config', 'read_onnx_config', 'read_onnx_metadata']
