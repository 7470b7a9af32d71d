"""TensorRT backend: an engine built on the target from the ONNX export, run on one stream.

Needs TensorRT 10.0 or newer: onnx-tensorrt 8.5 has no LayerNormalization and no UINT8
input, and 8.6-9.x import opset-18 ReduceMax without its axes input. JetPack 6.1+ ships
TensorRT 10.3; on JetPack 5 / 6.0 use the onnxruntime backend.

Build (first use, then cached by :class:`~tokenmask_ros.runtime.engine_cache.EngineCache`
under ONNX hash + TensorRT version + GPU + precision + input shape): ``trt.Builder``, a
network parsed with ``trt.OnnxParser`` and built with ``build_serialized_network``.
Precision lives in the ONNX graph (``docs/architecture.md``, "Precision"): every network is
strongly typed (``STRONGLY_TYPED``; TensorRT 11 types every network strongly), so an FP16
export keeps its FP32 islands. FP16 is only ever built from an FP16 export: the weakly typed
FP16 builder flag would put attention in FP16, the overflow those islands exist to avoid.
FP32 engines are built without TF32, so they compute what PyTorch's FP32 model computes.
A parse, build or load failure raises :class:`~tokenmask_ros.runtime.errors.EngineBuildError`
(``backend: auto`` then moves on); a cached engine that does not load is rebuilt once.

Run: ``deserialize_cuda_engine``, one execution context, name-based I/O, pinned host and
device buffers allocated once, a non-blocking stream, ``execute_async_v3``, async copies,
one synchronize per call; optionally a CUDA graph captured after a warm-up run, which
replays the whole enqueue in one launch (fewer CPU-side launches per frame). CUDA memory,
streams and the device context: :mod:`.cuda_api`.

Nothing here imports tensorrt, pycuda or cuda-python at module level: the module imports on
any machine and :meth:`TensorRTBackend.check_available` says in one sentence why it cannot
run.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime.backends.base import Backend, fit_content_size
from tokenmask_ros.runtime.backends.cuda_api import (
    CudaApi,
    check_index,
    cuda_api_class,
    device_index,
)
from tokenmask_ros.runtime.engine_cache import (
    EngineCache,
    EngineKey,
    default_engine_dir,
    file_sha256,
)
from tokenmask_ros.runtime.errors import (
    BackendUnavailable,
    CacheError,
    EngineBuildError,
    LoadError,
    one_line,
)
from tokenmask_ros.runtime.graph import INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger('tokenmask_ros.runtime')

MIN_TENSORRT = (10, 0)  # the ONNX importer must know LayerNormalization, UINT8, opset 18

# TensorRT DataType names -> NumPy (looked up by name so the table needs no tensorrt import).
NUMPY_DTYPES = {'BOOL': np.bool_, 'UINT8': np.uint8, 'INT8': np.int8, 'INT32': np.int32,
                'INT64': np.int64, 'HALF': np.float16, 'FLOAT': np.float32}


def numpy_dtype(trt_dtype) -> np.dtype:
    """The NumPy dtype of a ``trt.DataType`` (BOOL, UINT8, INT8, INT32, INT64, HALF, FLOAT)."""
    name = getattr(trt_dtype, 'name', None) or str(trt_dtype).rsplit('.', 1)[-1]
    if name not in NUMPY_DTYPES:
        raise TypeError(f'TensorRT tensor type {name} has no NumPy equivalent here')
    return np.dtype(NUMPY_DTYPES[name])


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split('.'):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def import_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable saying why not."""
    try:
        import tensorrt as trt
    except Exception as error:  # ImportError, or OSError when libnvinfer cannot load
        raise BackendUnavailable(f'TensorRT cannot be imported ({one_line(error)})') from None
    version = getattr(trt, '__version__', '0')
    if _version_tuple(version) < MIN_TENSORRT:
        raise BackendUnavailable(
            f'TensorRT {version} is too old: the tensorrt backend needs TensorRT '
            f'{".".join(map(str, MIN_TENSORRT))} or newer (JetPack 6.1+ ships 10.3); on '
            'JetPack 5 or 6.0 use backend onnxruntime')
    return trt


class BuildPlan(NamedTuple):
    """How to build an engine for one export: network creation flags, whether to clear the
    TF32 builder flag, and the engine's precision."""

    network_flags: int
    clear_tf32: bool
    precision: str


def build_plan(trt, graph_precision: str, precision: str | None) -> BuildPlan:
    """The :class:`BuildPlan` of a ``graph_precision`` export asked to run in ``precision``
    (None = the graph's own) on this TensorRT.

    - ``STRONGLY_TYPED`` where the enum has it (10.x; accepted and ignored by 11, where every
      network is strongly typed): the graph's types, FP32 islands included, are kept.
    - FP16 from an FP32 export is refused (ValueError): the weakly typed FP16 builder flag is
      never used. An FP32 request for an FP16 export cannot widen it: a warning, FP16 engine.
    - FP32 engines clear ``BuilderFlag.TF32`` (on by default in TensorRT; PyTorch's FP32
      matmuls do not use TF32), so FP32 engines agree with the PyTorch model.
    """
    precision = precision or graph_precision
    if graph_precision == 'fp32' and precision == 'fp16':
        raise ValueError('this ONNX file is an FP32 export and the tensorrt backend builds FP16 '
                         'only from an FP16 export (its FP32 islands keep attention from '
                         "overflowing): pass the checkpoint, or export it with precision 'fp16'")
    if precision != graph_precision:
        log.warning('tensorrt: the ONNX graph is %s and cannot run in %s; building %s (export '
                    'a %s ONNX for that)', graph_precision, precision, graph_precision,
                    precision)
    creation = trt.NetworkDefinitionCreationFlag
    flags = 1 << int(creation.STRONGLY_TYPED) if hasattr(creation, 'STRONGLY_TYPED') else 0
    clear_tf32 = graph_precision == 'fp32' and hasattr(trt.BuilderFlag, 'TF32')
    return BuildPlan(flags, clear_tf32, graph_precision)


# --------------------------------------------------------------------------- backend


class TensorRTBackend(Backend):
    """A TensorRT engine for a tokenmask ONNX export (:func:`~..export.cached_onnx`).

    ``cache_dir``: the runtime cache root; engines go to ``<cache_dir>/engines``
    (default :func:`~tokenmask_ros.runtime.engine_cache.default_engine_dir`).
    ``force_rebuild``: build even if a valid cached engine exists. ``cuda_graph``: replay
    the enqueue as a CUDA graph captured after one warm-up run (falls back to plain
    enqueues, with a warning, where TensorRT cannot be captured). ``workspace_gb``: the
    builder's workspace pool limit. ``precision``: None = the graph's own; 'fp16' on an FP32
    export is refused with a ValueError (:func:`build_plan`).
    ``cuda_api``: 'auto' | 'pycuda' | 'cuda-python' (module doc).

    After construction: ``engine_path`` (the cached engine), ``built_engine`` (whether this
    construction built it) and ``cuda_api`` (the binding in use).
    """

    name = 'tensorrt'

    def __init__(self, onnx_path: str | Path, device: str = 'cuda',
                 cache_dir: str | Path | None = None, force_rebuild: bool = False,
                 cuda_graph: bool = False, workspace_gb: float = 2, *,
                 precision: str | None = None, cuda_api: str = 'auto'):
        self._cuda: CudaApi | None = None
        self._runtime = self._engine = self._context = None
        self._closed = False
        self._lock = threading.Lock()
        if precision not in (None, 'fp32', 'fp16'):
            raise ValueError(f"precision must be None, 'fp32' or 'fp16', got {precision!r}")
        if workspace_gb <= 0:
            raise ValueError(f'workspace_gb must be positive, got {workspace_gb}')
        from tokenmask_ros.runtime.export import read_onnx_metadata

        index = device_index(device)
        trt = import_tensorrt()
        api_class = cuda_api_class(cuda_api)
        self.onnx_path = Path(onnx_path)
        metadata = read_onnx_metadata(self.onnx_path)
        if metadata['selection'] != 'fixed':
            raise LoadError(f"{self.onnx_path} decodes a data-dependent number of queries "
                            "(selection 'kept'), which TensorRT cannot build; export it with "
                            "`tokenmask export --selection fixed`")
        self.device = device
        self.input_size = tuple(int(s) for s in metadata['input_size'])
        self.decoded_queries = metadata['decoded_queries']
        self.batch = int(metadata.get('batch', 1))
        height, width = self.input_size
        # content_size is [2] in batch-1 exports and [B, 2] in batched ones (graph.py).
        self._static_shapes = {'image': (self.batch, 3, height, width),
                               'content_size': (2,) if self.batch == 1 else (self.batch, 2),
                               'score_threshold': (1,)}
        plan = build_plan(trt, metadata['precision'], precision)
        self.precision = plan.precision
        self._cuda = api_class(index)
        self.cuda_api = self._cuda.label
        try:
            with self._cuda.activate():
                self._trt = trt
                self._logger = _make_logger(trt)
                key = EngineKey(
                    onnx_sha256=file_sha256(self.onnx_path), tensorrt_version=trt.__version__,
                    gpu_name=self._cuda.gpu_name,
                    compute_capability=self._cuda.compute_capability, precision=self.precision,
                    input_shape=self._static_shapes['image'], name=self.onnx_path.stem)
                cache = EngineCache(Path(cache_dir) / 'engines' if cache_dir is not None
                                    else default_engine_dir())
                self._load_engine(cache, key, plan, int(workspace_gb * (1 << 30)),
                                  force_rebuild)
                self._allocate_io()
                self.cuda_graph = cuda_graph and self._capture_graph()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ build / load

    @staticmethod
    def check_available(device: str) -> None:
        """BackendUnavailable with one sentence when this machine cannot run TensorRT on
        ``device``: not a CUDA device, no TensorRT, no CUDA binding, or no GPU visible."""
        index = device_index(device)
        import_tensorrt()
        check_index(index, cuda_api_class().device_count())

    def _load_engine(self, cache: EngineCache, key: EngineKey, plan: BuildPlan,
                     workspace_bytes: int, force: bool) -> None:
        """The engine for ``key`` from ``cache``, built when missing. A cached engine that does
        not load (damaged in a way its checksum misses, a driver change) is deleted and built
        again once; :class:`CacheError` if that one does not load either."""
        self.built_engine = False

        def build() -> bytes:
            self.built_engine = True
            return self._build(plan, workspace_bytes)

        self._runtime = self._trt.Runtime(self._logger)  # must outlive the engine
        self.engine_path = cache.get_or_build(key, build, force=force)
        engine, problem = self._deserialize()
        rebuilt = False
        if engine is None and not self.built_engine:
            log.warning('tensorrt: cached engine %s does not load (%s); deleting it and '
                        'building it again', self.engine_path, problem)
            cache.remove(key)
            self.engine_path = cache.get_or_build(key, build, force=True)
            engine, problem = self._deserialize()
            rebuilt = True
        if engine is None and rebuilt:
            raise CacheError(f'engine {self.engine_path} still does not load after building it '
                             f'again ({problem}): delete {cache.cache_dir} and retry, or use '
                             'backend onnxruntime')
        if engine is None:
            raise EngineBuildError(f'TensorRT could not load the engine it built from '
                                   f'{self.onnx_path.name} ({problem}); use backend '
                                   'onnxruntime')
        self._engine = engine

    def _deserialize(self):
        """``(engine, None)``, or ``(None, why)`` when TensorRT refuses the cached bytes."""
        try:
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        except Exception as error:  # TensorRT raises for some damaged plans; OSError
            return None, one_line(error)
        return engine, None if engine is not None else _flat(self._logger.summary())

    def _build(self, plan: BuildPlan, workspace_bytes: int) -> bytes:
        trt, logger = self._trt, self._logger
        log.info('tensorrt: building an engine for %s (%s, TensorRT %s, %s); this takes a '
                 'while once, later starts load it from the cache', self.onnx_path.name,
                 self.precision, trt.__version__, self._cuda.gpu_name)
        started = time.perf_counter()
        builder = trt.Builder(logger)
        network = builder.create_network(plan.network_flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.onnx_path)):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f'TensorRT {trt.__version__} could not parse '
                                   f'{self.onnx_path.name}: {_flat(errors or logger.summary())}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        if plan.clear_tf32:
            config.clear_flag(trt.BuilderFlag.TF32)
        profile = self._optimization_profile(builder, network)
        if profile is not None:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f'TensorRT could not build an engine from '
                                   f'{self.onnx_path.name} (out of memory, or an unsupported '
                                   f'layer): {_flat(logger.summary())}')
        log.info('tensorrt: engine built in %.0f s', time.perf_counter() - started)
        return bytes(memoryview(serialized))

    def _optimization_profile(self, builder, network):
        """A profile pinned to the export's shapes, only when an input dimension is dynamic
        (exports have fixed shapes; a dynamic batch gets min = opt = max)."""
        dynamic = {}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = tuple(tensor.shape)
            if any(d < 0 for d in dims):
                shape = self._static_shapes.get(tensor.name)
                if shape is None or len(shape) != len(dims):
                    raise RuntimeError(f'{self.onnx_path.name}: input {tensor.name!r} has '
                                       f'dynamic shape {dims} and no known size')
                dynamic[tensor.name] = shape
        if not dynamic:
            return None
        profile = builder.create_optimization_profile()
        for name, shape in dynamic.items():
            profile.set_shape(name, shape, shape, shape)
        return profile

    # ------------------------------------------------------------------ buffers

    def _allocate_io(self) -> None:
        trt, engine = self._trt, self._engine
        context = engine.create_execution_context()
        if context is None:
            raise EngineBuildError('TensorRT could not create an execution context (out of '
                                   f'GPU memory?): {_flat(self._logger.summary())}')
        self._context = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if ('image' not in inputs or not set(inputs) <= set(INPUT_NAMES)
                or not set(OUTPUT_NAMES) <= set(outputs)):
            raise RuntimeError(f'{self.onnx_path.name} is not a tokenmask deploy graph: inputs '
                               f'{inputs}, outputs {outputs}')
        is_host_io = getattr(engine, 'is_shape_inference_io', lambda name: False)
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, int] = {}
        self._uploads: list[str] = []
        self._inputs = inputs
        for name in inputs:  # inputs first: output shapes may depend on them
            shape = tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                shape = self._static_shapes[name]
                if not context.set_input_shape(name, shape):
                    raise RuntimeError(f'TensorRT refused shape {shape} for input {name!r}')
            host = self._cuda.pinned(shape, numpy_dtype(engine.get_tensor_dtype(name)))
            host[...] = 0
            self._host[name] = host
            if is_host_io(name):  # shape-inference inputs are read from host memory
                context.set_tensor_address(name, host.ctypes.data)
            else:
                self._bind_device(name, host)
                self._uploads.append(name)
        for name in OUTPUT_NAMES:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f'output {name!r} has a data-dependent shape {shape}')
            self._host[name] = self._cuda.pinned(
                shape, numpy_dtype(engine.get_tensor_dtype(name)))
            self._bind_device(name, self._host[name])
        for name in set(outputs) - set(OUTPUT_NAMES):  # extra outputs still need an address
            shape = tuple(context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * numpy_dtype(engine.get_tensor_dtype(name)).itemsize
            context.set_tensor_address(name, self._cuda.device_alloc(nbytes))

    def _bind_device(self, name: str, host: np.ndarray) -> None:
        self._device[name] = self._cuda.device_alloc(host.nbytes)
        if not self._context.set_tensor_address(name, self._device[name]):
            raise RuntimeError(f'TensorRT refused the address of {name!r}')

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._cuda.stream_handle):
            raise RuntimeError(f'TensorRT execution failed: {self._logger.summary()}')

    def _capture_graph(self) -> bool:
        """Warm up once (lazy kernel loading, deferred TensorRT updates must not happen
        inside the capture), then capture one enqueue; False (and a warning) on failure."""
        self._enqueue()
        self._cuda.synchronize()
        try:
            self._cuda.begin_capture()
            try:
                self._enqueue()
            finally:
                self._cuda.end_capture()  # always ends the capture, even after a failure
        except (RuntimeError, AttributeError, OSError) as error:  # OSError: no libcuda
            log.warning('tensorrt: CUDA graph capture failed (%s); running without it',
                        one_line(error))
            self._cuda.synchronize()
            return False
        return True

    # ------------------------------------------------------------------ inference

    def run(self, image: np.ndarray, content_size: np.ndarray,
            score_threshold: float) -> PanopticScores:
        self.check_batch(image)
        values = {'image': image,
                  'content_size': fit_content_size(content_size,
                                                   self._static_shapes['content_size']),
                  'score_threshold': np.array([score_threshold], np.float32)}
        with self._lock:
            if self._closed:
                raise RuntimeError('the tensorrt backend is closed')
            for name in self._inputs:  # TensorRT may drop an input no output depends on
                host, value = self._host[name], np.asarray(values[name])
                if value.shape != host.shape:
                    raise ValueError(f'{name} must have shape {host.shape}, got {value.shape}')
                np.copyto(host, value, casting='same_kind')
            with self._cuda.activate():
                for name in self._uploads:
                    self._cuda.upload(self._device[name], self._host[name])
                if self.cuda_graph:
                    self._cuda.launch_graph()
                else:
                    self._enqueue()
                for name in OUTPUT_NAMES:
                    self._cuda.download(self._host[name], self._device[name])
                self._cuda.synchronize()
            # Copies: the pinned buffers are overwritten by the next call.
            return PanopticScores(*(self._host[name].copy() for name in OUTPUT_NAMES))

    def describe(self) -> str:
        graph = ', CUDA graph' if getattr(self, 'cuda_graph', False) else ''
        return f'{self.name} ({self.device}, {self.precision}{graph})'

    def close(self) -> None:
        """Free buffers, stream, graph and TensorRT objects (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cuda, self._cuda = self._cuda, None
            if cuda is None:
                return
            try:
                with cuda.activate():  # TensorRT frees device memory: its context must be current
                    cuda.synchronize()
                    self._context = None  # execution context, then engine, then runtime
                    self._engine = None
                    self._runtime = None
                cuda.close()
            except Exception as error:  # closing must not raise during shutdown
                log.warning('tensorrt: error while releasing CUDA resources: %s',
                            one_line(error))


def _make_logger(trt):
    """A ``trt.ILogger`` that forwards to Python logging (INFO and VERBOSE at DEBUG level)
    and keeps the last errors to put into exception messages."""
    severity = trt.ILogger.Severity
    levels = {getattr(severity, name): level for name, level in (
        ('INTERNAL_ERROR', logging.ERROR), ('ERROR', logging.ERROR),
        ('WARNING', logging.WARNING), ('INFO', logging.DEBUG)) if hasattr(severity, name)}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level, message):
            python_level = levels.get(level)
            if python_level is None:  # VERBOSE: thousands of lines per build
                return
            if python_level >= logging.ERROR:
                self.errors = [*self.errors[-4:], message]
            log.log(python_level, 'TensorRT: %s', message)

        def summary(self) -> str:
            return ' | '.join(self.errors) or 'no error message from TensorRT'

    return _Logger()


def _flat(text: str) -> str:
    """``text`` on one line (TensorRT's parser and logger messages span several)."""
    return ' '.join(str(text).split())
