"""ONNX Runtime backend: a tokenmask ONNX export (:mod:`..export`) on CPU or CUDA.

Precision and input size come from the file's metadata (an FP16 export runs as FP16; on
the CPU provider ONNX Runtime computes the FP16 nodes it has no FP16 kernel for in FP32).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime.backends.base import Backend, BackendUnavailable
from tokenmask_ros.runtime.graph import INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger('tokenmask_ros.runtime')


def _providers(ort, device: str) -> list:
    """Execution providers for ``device``, best first; CPU is always the last resort."""
    if device == 'cpu':
        return ['CPUExecutionProvider']
    available = ort.get_available_providers()
    if 'CUDAExecutionProvider' not in available:
        raise BackendUnavailable(f'onnxruntime backend: device {device!r} requested but this '
                                 'onnxruntime has no CUDAExecutionProvider (install '
                                 'onnxruntime-gpu)')
    device_id = int(device.partition(':')[2] or 0)
    providers: list = []
    if 'TensorrtExecutionProvider' in available:
        from tokenmask_ros.runtime.export import default_cache_dir

        providers.append(('TensorrtExecutionProvider', {
            'device_id': device_id, 'trt_engine_cache_enable': True,
            'trt_engine_cache_path': str(default_cache_dir() / 'ort_tensorrt')}))
    providers.append(('CUDAExecutionProvider', {'device_id': device_id}))
    providers.append('CPUExecutionProvider')
    return providers


class OnnxRuntimeBackend(Backend):
    name = 'onnxruntime'

    def __init__(self, onnx_path: str | Path, device: str = 'cpu'):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise BackendUnavailable(f'onnxruntime backend: onnxruntime is not importable '
                                     f'({error})') from None
        from tokenmask_ros.runtime.export import parse_metadata

        if device != 'cpu' and not device.startswith('cuda'):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f'ONNX file not found: {self.path}')
        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=_providers(ort, device))
        metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        if metadata['batch'] != 1:
            raise ValueError(f'{self.path} was exported for batch {metadata["batch"]}; the '
                             'runtime feeds one image per call (export with batch=1)')
        self.precision = metadata['precision']
        self.input_size = tuple(metadata['input_size'])
        if device != 'cpu' and 'CUDAExecutionProvider' not in self.session.get_providers():
            raise BackendUnavailable('onnxruntime backend: the CUDA execution provider failed '
                                     'to load (CUDA / cuDNN libraries missing?)')
        names = {o.name for o in self.session.get_outputs()}
        if not set(OUTPUT_NAMES) <= names:
            raise ValueError(f'{self.path}: outputs {sorted(names)} lack '
                             f'{sorted(set(OUTPUT_NAMES) - names)}')
        log.info('onnxruntime: %s on %s', self.path.name, self.session.get_providers()[0])

    def run(self, image: np.ndarray, content_size: np.ndarray,
            score_threshold: float) -> PanopticScores:
        feed = dict(zip(INPUT_NAMES, (
            np.ascontiguousarray(image, dtype=np.uint8),
            np.asarray(content_size, dtype=np.int32),
            np.array([score_threshold], dtype=np.float32)), strict=True))
        return PanopticScores(*self.session.run(list(OUTPUT_NAMES), feed))

    def close(self) -> None:
        self.session = None

    def describe(self) -> str:
        provider = self.session.get_providers()[0] if self.session is not None else 'closed'
        return f'{self.name} ({self.device}, {self.precision}, {provider})'
