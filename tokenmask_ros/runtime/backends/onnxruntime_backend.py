"""ONNX Runtime backend: a tokenmask ONNX export (:mod:`..export`) on CPU or CUDA.

The batch is the export's (``batch`` in its metadata): a batch-B export runs B images per
call, each with its own content size.

Precision and input size come from the file's metadata (an FP16 export runs as FP16; on
the CPU provider ONNX Runtime computes the FP16 nodes it has no FP16 kernel for in FP32).
Where onnxruntime has its TensorRT execution provider, that provider's engines and timing
cache go to ``ort_tensorrt/`` under the runtime's cache folder (``engine_cache_dir``).

On CPU the session runs the graph with its attention blocks fused into onnxruntime's
attention kernel (:mod:`tokenmask_ros.runtime.ort_attention`; same outputs, a few per cent
faster, more for long token sequences); the file itself is not changed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime.backends.base import Backend, graph_feed
from tokenmask_ros.runtime.engine_cache import cache_root, prepare_cache_dir
from tokenmask_ros.runtime.errors import BackendUnavailable, CacheError, LoadError, one_line
from tokenmask_ros.runtime.graph import OUTPUT_NAMES

log = logging.getLogger('tokenmask_ros.runtime')


def providers(available: list[str], device: str, cache_dir: str | Path | None = None) -> list:
    """Execution providers for ``device`` out of onnxruntime's ``available`` ones, best first;
    CPU is always the last resort. The TensorRT provider caches its engines and timing cache
    under ``<cache_dir>/ort_tensorrt`` (default :func:`cache_root`); it is left out, with a
    warning, when that folder cannot be written (CUDA then runs the whole graph)."""
    if device == 'cpu':
        return ['CPUExecutionProvider']
    if 'CUDAExecutionProvider' not in available:
        raise BackendUnavailable(f'onnxruntime backend: device {device!r} requested but this '
                                 'onnxruntime has no CUDAExecutionProvider (install '
                                 'onnxruntime-gpu)')
    device_id = int(device.partition(':')[2] or 0)
    chosen: list = []
    if 'TensorrtExecutionProvider' in available:
        folder = Path(cache_dir) if cache_dir is not None else cache_root()
        try:
            folder = str(prepare_cache_dir(folder / 'ort_tensorrt'))
        except CacheError as error:
            log.warning('onnxruntime: not using its TensorRT provider: %s', error)
        else:
            chosen.append(('TensorrtExecutionProvider', {
                'device_id': device_id, 'trt_engine_cache_enable': True,
                'trt_engine_cache_path': folder, 'trt_timing_cache_enable': True,
                'trt_timing_cache_path': folder}))
    chosen.append(('CUDAExecutionProvider', {'device_id': device_id}))
    chosen.append('CPUExecutionProvider')
    return chosen


def fused_graph(path: Path) -> tuple[bytes, int] | None:
    """The serialized graph of ``path`` with its attention blocks fused and how many, or None
    when none matched or the rewrite failed (then the file runs as it is, nothing lost)."""
    import onnx

    from tokenmask_ros.runtime.ort_attention import fuse_attention

    try:
        model = onnx.load(str(path))
    except Exception:  # protobuf's DecodeError and friends: the session load reports it
        return None
    try:
        count = fuse_attention(model)
        return (model.SerializeToString(), count) if count else None
    except Exception as error:  # e.g. a graph over protobuf's 2 GiB once serialized
        log.warning('onnxruntime: attention not fused in %s (%s)', path.name, one_line(error))
        return None


class OnnxRuntimeBackend(Backend):
    name = 'onnxruntime'

    def __init__(self, onnx_path: str | Path, device: str = 'cpu',
                 cache_dir: str | Path | None = None, threads: int | None = None,
                 fuse_attention: bool = True):
        """``cache_dir``: the runtime's cache folder, for the TensorRT provider's cache
        (:func:`providers`). ``threads``: intra-op threads (None / 0: onnxruntime's
        default). ``fuse_attention``: on CPU, run the attention blocks as onnxruntime's
        fused kernel (``False``: the file's graph as it is, for comparisons). A file
        onnxruntime refuses to load raises :class:`LoadError`."""
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
        if threads:
            options.intra_op_num_threads = threads
        chosen = providers(ort.get_available_providers(), device, cache_dir)
        # Only the CPU provider: TensorRT's provider does not know the contrib op.
        fused = fused_graph(self.path) if fuse_attention and device == 'cpu' else None
        if fused:
            try:
                self.session = ort.InferenceSession(fused[0], options, providers=chosen)
            except Exception as error:  # e.g. a build of onnxruntime without contrib ops
                log.warning('onnxruntime: running %s unfused, the fused graph did not load '
                            '(%s)', self.path.name, one_line(error))
                fused = None
        if not fused:
            try:
                self.session = ort.InferenceSession(str(self.path), options, providers=chosen)
            except Exception as error:  # onnxruntime's InvalidArgument, Fail, InvalidGraph, ...
                raise LoadError(f'onnxruntime cannot load {self.path} ({one_line(error)}); '
                                'export it again') from None
        self.fused_attention = fused[1] if fused else 0
        metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.batch = metadata['batch']
        self.precision = metadata['precision']
        self.input_size = tuple(metadata['input_size'])
        self.decoded_queries = metadata['decoded_queries']
        if device != 'cpu' and 'CUDAExecutionProvider' not in self.session.get_providers():
            raise BackendUnavailable('onnxruntime backend: the CUDA execution provider failed '
                                     'to load (CUDA / cuDNN libraries missing?)')
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if 'content_size' not in inputs:
            raise ValueError(f'{self.path}: no content_size input (inputs: {sorted(inputs)})')
        # [2] in batch-1 exports, [B, 2] in batched ones (graph.py).
        self._content_shape = tuple(inputs['content_size'])
        names = {o.name for o in self.session.get_outputs()}
        if not set(OUTPUT_NAMES) <= names:
            raise ValueError(f'{self.path}: outputs {sorted(names)} lack '
                             f'{sorted(set(OUTPUT_NAMES) - names)}')
        log.info('onnxruntime: %s on %s%s', self.path.name, self.session.get_providers()[0],
                 f', {self.fused_attention} attention blocks fused' if self.fused_attention else '')

    def run(self, image: np.ndarray, content_size: np.ndarray,
            score_threshold: float) -> PanopticScores:
        self.check_batch(image)
        feed = graph_feed(image, content_size, score_threshold, self._content_shape)
        return PanopticScores(*self.session.run(list(OUTPUT_NAMES), feed))

    def close(self) -> None:
        self.session = None

    def describe(self) -> str:
        provider = self.session.get_providers()[0] if self.session is not None else 'closed'
        return f'{self.name} ({self.device}, {self.precision}, {provider})'
