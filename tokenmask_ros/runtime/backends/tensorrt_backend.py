"""TensorRT backend: an engine built on the target from the ONNX export, run on one stream.

Build (first use, then cached by :class:`~tokenmask_ros.runtime.engine_cache.EngineCache`
under ONNX hash + TensorRT version + GPU + precision + input shape): ``trt.Builder``, a
network parsed with ``trt.OnnxParser`` and built with ``build_serialized_network``.
Precision lives in the ONNX graph (``docs/architecture.md``, "Precision"): an FP16 export is built
as a strongly typed network (``STRONGLY_TYPED`` where TensorRT 9.1-10.x has it; TensorRT 11
types every network strongly and dropped the FP16 flag). The weakly typed FP16 builder flag
is only used to run an FP32 export in FP16 when asked (``precision='fp16'``) on a TensorRT
that still has the flag; it is never combined with strong typing.

Run: ``deserialize_cuda_engine``, one execution context, name-based I/O, pinned host and
device buffers allocated once, a non-blocking stream, ``execute_async_v3``, async copies,
one synchronize per call; optionally a CUDA graph captured after a warm-up run, which
replays the whole enqueue in one launch (fewer CPU-side launches per frame).

CUDA memory and streams come from pycuda (preferred) or, where pycuda is not built,
cuda-python's ``cuda.bindings.runtime`` (a wheel that comes with recent PyTorch). Neither
creates a context of its own: both use the device's *primary* context, the one the CUDA
runtime (so PyTorch and TensorRT) uses, so torch tensors and this backend live together in
one process. pycuda retains the primary context and pushes it around every call and pops it
after, so ``run`` works from any thread (ROS executors call back on worker threads) and
leaves the caller's context stack as it was; ``pycuda.autoinit`` (a separate context) and
``pycuda.autoprimaryctx`` (pushed once, on the importing thread only) are avoided on purpose.

Nothing here imports tensorrt, pycuda or cuda-python at module level: the module imports on
any machine and :meth:`TensorRTBackend.check_available` says in one sentence why it cannot
run.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime.backends.base import Backend, BackendUnavailable
from tokenmask_ros.runtime.engine_cache import (
    EngineCache,
    EngineKey,
    default_cache_dir,
    file_sha256,
)
from tokenmask_ros.runtime.graph import INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger('tokenmask_ros.runtime')

CUDA_APIS = ('auto', 'pycuda', 'cuda-python')
MIN_TENSORRT = (8, 5)  # name-based I/O and execute_async_v3

# TensorRT DataType names -> NumPy (looked up by name so the table needs no tensorrt import).
NUMPY_DTYPES = {'BOOL': np.bool_, 'UINT8': np.uint8, 'INT8': np.int8, 'INT32': np.int32,
                'INT64': np.int64, 'HALF': np.float16, 'FLOAT': np.float32}

_CU_STREAM_NON_BLOCKING = 0x1
_CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1  # as trtexec: other threads may keep using CUDA


def numpy_dtype(trt_dtype) -> np.dtype:
    """The NumPy dtype of a ``trt.DataType`` (BOOL, UINT8, INT8, INT32, INT64, HALF, FLOAT)."""
    name = getattr(trt_dtype, 'name', None) or str(trt_dtype).rsplit('.', 1)[-1]
    if name not in NUMPY_DTYPES:
        raise TypeError(f'TensorRT tensor type {name} has no NumPy equivalent here')
    return np.dtype(NUMPY_DTYPES[name])


def device_index(device: str) -> int:
    """'cuda' -> 0, 'cuda:N' -> N; BackendUnavailable for anything else."""
    if device == 'cuda':
        return 0
    if device.startswith('cuda:') and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailable(f'the tensorrt backend needs a CUDA device, got {device!r}')


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split('.'):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0]}' if text else type(error).__name__


def import_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable saying why not."""
    try:
        import tensorrt as trt
    except Exception as error:  # ImportError, or OSError when libnvinfer cannot load
        raise BackendUnavailable(f'TensorRT cannot be imported ({_one_line(error)})') from None
    version = getattr(trt, '__version__', '0')
    if _version_tuple(version) < MIN_TENSORRT:
        raise BackendUnavailable(f'TensorRT {version} is too old (the tensorrt backend needs '
                                 f'{".".join(map(str, MIN_TENSORRT))} or newer)')
    return trt


def typing_plan(trt, graph_precision: str, precision: str | None) -> tuple[int, bool, str]:
    """``(create_network flags, set BuilderFlag.FP16?, engine precision)`` for this TensorRT.

    - FP16 builder flag only for an FP32 graph asked to run in FP16, on a TensorRT that has
      the flag (<= 10.x), and then the network is left weakly typed: the flag and strong
      typing are never combined.
    - Otherwise ``STRONGLY_TYPED`` where the enum has it (9.1+; accepted and ignored by 11,
      where every network is strongly typed), so an FP16 export keeps the FP32 islands of
      its graph (attention scores, LayerNorm statistics, decoding) instead of TensorRT
      choosing FP16 for them.
    - ``EXPLICIT_BATCH`` only on TensorRT < 10 (ignored by 10, removed in 11).
    - An FP32 request for an FP16 graph cannot widen it: the graph's precision wins.
    """
    precision = precision or graph_precision
    creation = trt.NetworkDefinitionCreationFlag
    major = (_version_tuple(trt.__version__) or (0,))[0]
    weak_fp16 = (precision == 'fp16' and graph_precision == 'fp32' and major < 11
                 and hasattr(trt.BuilderFlag, 'FP16'))
    flags = 0
    if major < 10 and hasattr(creation, 'EXPLICIT_BATCH'):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if not weak_fp16 and hasattr(creation, 'STRONGLY_TYPED'):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    if precision != graph_precision and not weak_fp16:
        log.warning('tensorrt: the ONNX graph is %s and TensorRT %s cannot run it in %s; '
                    'export a %s ONNX for that', graph_precision, trt.__version__, precision,
                    precision)
    return flags, weak_fp16, 'fp16' if weak_fp16 else graph_precision


# --------------------------------------------------------------------------- CUDA APIs


class _CudaApi(Protocol):
    """The few CUDA calls the backend needs, on one device and one non-blocking stream.

    Everything allocated is recorded and freed by :meth:`close`. Call the memory and stream
    methods inside :meth:`activate`.
    """

    label: str
    gpu_name: str
    compute_capability: str

    def activate(self) -> contextlib.AbstractContextManager: ...
    def pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...
    def device_alloc(self, nbytes: int) -> int: ...
    def upload(self, device_ptr: int, host: np.ndarray) -> None: ...
    def download(self, host: np.ndarray, device_ptr: int) -> None: ...
    def synchronize(self) -> None: ...
    def begin_capture(self) -> None: ...
    def end_capture(self) -> None: ...
    def launch_graph(self) -> None: ...
    def close(self) -> None: ...
    @property
    def stream_handle(self) -> int: ...
    @staticmethod
    def device_count() -> int: ...


class _PyCuda:
    """pycuda on the device's retained primary context, pushed per call (module doc)."""

    label = 'pycuda'

    @staticmethod
    def device_count() -> int:
        """GPUs visible to the driver (creates no context); BackendUnavailable if none."""
        import pycuda.driver as cuda

        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as error:  # pycuda's LogicError / RuntimeError: no driver, no GPU
            raise BackendUnavailable(f'no CUDA GPU is visible to pycuda '
                                     f'({_one_line(error)})') from None
        if count < 1:
            raise BackendUnavailable('no CUDA GPU is visible to pycuda')
        return count

    def __init__(self, index: int):
        import pycuda.driver as cuda

        self._cuda = cuda
        _check_index(index, self.device_count())
        device = cuda.Device(index)
        self.gpu_name = device.name()
        self.compute_capability = '{}.{}'.format(*device.compute_capability())
        self._context = device.retain_primary_context()
        self._device_memory: list = []
        self._host_memory: list[np.ndarray] = []
        self._graph: _DriverGraph | None = None
        with self.activate():
            self._stream = cuda.Stream(flags=_CU_STREAM_NON_BLOCKING)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def pinned(self, shape, dtype):
        array = self._cuda.pagelocked_empty(shape, dtype)
        self._host_memory.append(array)
        return array

    def device_alloc(self, nbytes):
        allocation = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._device_memory.append(allocation)
        return int(allocation)

    def upload(self, device_ptr, host):
        self._cuda.memcpy_htod_async(device_ptr, host, self._stream)

    def download(self, host, device_ptr):
        self._cuda.memcpy_dtoh_async(host, device_ptr, self._stream)

    def synchronize(self):
        self._stream.synchronize()

    def begin_capture(self):
        # Released pycuda has no CUDA graph API: the driver API through ctypes.
        self._graph = _DriverGraph()
        self._graph.begin(self.stream_handle)

    def end_capture(self):
        self._graph.end(self.stream_handle)

    def launch_graph(self):
        self._graph.launch(self.stream_handle)

    def close(self):
        with self.activate():
            self._stream.synchronize()
            if self._graph is not None:
                self._graph.close()
                self._graph = None
            for allocation in self._device_memory:
                allocation.free()
            for array in self._host_memory:
                array.base.free()
            self._device_memory, self._host_memory = [], []
            self._stream = None
        self._context.detach()  # releases the primary context reference


class _DriverGraph:
    """One CUDA graph captured on a stream, through libcuda's driver API with ctypes."""

    def __init__(self):
        self._lib = ctypes.CDLL('libcuda.so.1')
        self._exec = ctypes.c_void_p()

    def _call(self, function: str, *args) -> None:
        result = getattr(self._lib, function)(*args)
        if result != 0:
            text = ctypes.c_char_p()
            self._lib.cuGetErrorString(result, ctypes.byref(text))
            raise RuntimeError(f'{function} failed: '
                               f'{text.value.decode() if text.value else result}')

    def begin(self, stream: int) -> None:
        self._call('cuStreamBeginCapture_v2', ctypes.c_void_p(stream),
                   ctypes.c_int(_CU_STREAM_CAPTURE_MODE_THREAD_LOCAL))

    def end(self, stream: int) -> None:
        graph = ctypes.c_void_p()
        self._call('cuStreamEndCapture', ctypes.c_void_p(stream), ctypes.byref(graph))
        try:
            self._call('cuGraphInstantiateWithFlags', ctypes.byref(self._exec), graph,
                       ctypes.c_ulonglong(0))
        finally:
            self._call('cuGraphDestroy', graph)  # the executable graph is independent of it

    def launch(self, stream: int) -> None:
        self._call('cuGraphLaunch', self._exec, ctypes.c_void_p(stream))

    def close(self) -> None:
        if self._exec.value:
            self._call('cuGraphExecDestroy', self._exec)
            self._exec = ctypes.c_void_p()


class _CudaPython:
    """cuda-python's runtime API (``cuda.bindings.runtime``): the runtime binds the device's
    primary context by itself; :meth:`activate` only selects the device for the calling
    thread and restores the previous one."""

    label = 'cuda-python'

    @staticmethod
    def device_count() -> int:
        """GPUs visible to the CUDA runtime; BackendUnavailable if none."""
        from cuda.bindings import runtime as cudart

        try:
            count = _cudart_check(cudart, cudart.cudaGetDeviceCount(), 'cudaGetDeviceCount')
        except RuntimeError as error:
            raise BackendUnavailable(f'no CUDA GPU is visible to cuda-python ({error})') from None
        if count < 1:
            raise BackendUnavailable('no CUDA GPU is visible to cuda-python')
        return count

    def __init__(self, index: int):
        from cuda.bindings import runtime as cudart

        self._rt = cudart
        self._index = index
        _check_index(index, self.device_count())
        props = self._check(cudart.cudaGetDeviceProperties(index), 'cudaGetDeviceProperties')
        name = props.name
        self.gpu_name = (name.decode(errors='replace') if isinstance(name, bytes)
                         else str(name)).split('\0', 1)[0].strip()
        self.compute_capability = f'{props.major}.{props.minor}'
        self._device_memory: list[int] = []
        self._host_memory: list[int] = []
        self._graph_exec = None
        with self.activate():
            self._stream = self._check(
                cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                'cudaStreamCreateWithFlags')

    def _check(self, result, function: str):
        return _cudart_check(self._rt, result, function)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        previous = self._check(self._rt.cudaGetDevice(), 'cudaGetDevice')
        if previous != self._index:
            self._check(self._rt.cudaSetDevice(self._index), 'cudaSetDevice')
        try:
            yield
        finally:
            if previous != self._index:
                self._check(self._rt.cudaSetDevice(previous), 'cudaSetDevice')

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def pinned(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        pointer = self._check(self._rt.cudaMallocHost(nbytes), 'cudaMallocHost')
        self._host_memory.append(pointer)
        buffer = (ctypes.c_ubyte * nbytes).from_address(pointer)
        return np.frombuffer(buffer, dtype, count=int(np.prod(shape))).reshape(shape)

    def device_alloc(self, nbytes):
        pointer = self._check(self._rt.cudaMalloc(max(int(nbytes), 1)), 'cudaMalloc')
        self._device_memory.append(pointer)
        return int(pointer)

    def upload(self, device_ptr, host):
        self._check(self._rt.cudaMemcpyAsync(
            device_ptr, host.ctypes.data, host.nbytes,
            self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream), 'cudaMemcpyAsync')

    def download(self, host, device_ptr):
        self._check(self._rt.cudaMemcpyAsync(
            host.ctypes.data, device_ptr, host.nbytes,
            self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream), 'cudaMemcpyAsync')

    def synchronize(self):
        self._check(self._rt.cudaStreamSynchronize(self._stream), 'cudaStreamSynchronize')

    def begin_capture(self):
        self._check(self._rt.cudaStreamBeginCapture(
            self._stream, self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            'cudaStreamBeginCapture')

    def end_capture(self):
        graph = self._check(self._rt.cudaStreamEndCapture(self._stream), 'cudaStreamEndCapture')
        try:
            self._graph_exec = self._check(self._rt.cudaGraphInstantiate(graph, 0),
                                           'cudaGraphInstantiate')
        finally:
            self._check(self._rt.cudaGraphDestroy(graph), 'cudaGraphDestroy')

    def launch_graph(self):
        self._check(self._rt.cudaGraphLaunch(self._graph_exec, self._stream), 'cudaGraphLaunch')

    def close(self):
        rt = self._rt
        with self.activate():
            self._check(rt.cudaStreamSynchronize(self._stream), 'cudaStreamSynchronize')
            if self._graph_exec is not None:
                self._check(rt.cudaGraphExecDestroy(self._graph_exec), 'cudaGraphExecDestroy')
                self._graph_exec = None
            for pointer in self._device_memory:
                self._check(rt.cudaFree(pointer), 'cudaFree')
            for pointer in self._host_memory:
                self._check(rt.cudaFreeHost(pointer), 'cudaFreeHost')
            self._device_memory, self._host_memory = [], []
            self._check(rt.cudaStreamDestroy(self._stream), 'cudaStreamDestroy')


def _cudart_check(cudart, result, function: str):
    """cuda-python returns ``(error, *values)``: the value, or RuntimeError naming the error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        raise RuntimeError(f'{function} failed: '
                           f'{text.decode() if isinstance(text, bytes) else error}')
    return values[0] if len(values) == 1 else None


def _check_index(index: int, count: int) -> None:
    if index >= count:
        raise BackendUnavailable(f'CUDA device {index} was requested but only {count} '
                                 f'{"is" if count == 1 else "are"} visible')


def _cuda_api_class(cuda_api: str = 'auto') -> type[_PyCuda | _CudaPython]:
    """The CUDA binding to use: pycuda where it imports, else cuda-python."""
    if cuda_api not in CUDA_APIS:
        raise ValueError(f'cuda_api must be one of {CUDA_APIS}, got {cuda_api!r}')
    reasons = []
    candidates = {'pycuda': (_PyCuda, 'pycuda.driver'),
                  'cuda-python': (_CudaPython, 'cuda.bindings.runtime')}
    for label, (cls, module) in candidates.items():
        if cuda_api not in ('auto', label):
            continue
        try:
            __import__(module)
        except Exception as error:  # ImportError; pycuda raises others when CUDA is broken
            reasons.append(f'{module}: {_one_line(error)}')
            continue
        return cls
    raise BackendUnavailable('the tensorrt backend needs pycuda or cuda-python for CUDA '
                             f'memory and neither imports ({"; ".join(reasons)})')


# --------------------------------------------------------------------------- backend


class TensorRTBackend(Backend):
    """A TensorRT engine for a tokenmask ONNX export (:func:`~..export.cached_onnx`).

    ``cache_dir``: the runtime cache root; engines go to ``<cache_dir>/engines``
    (default :func:`~tokenmask_ros.runtime.engine_cache.default_cache_dir`).
    ``force_rebuild``: build even if a valid cached engine exists. ``cuda_graph``: replay
    the enqueue as a CUDA graph captured after one warm-up run (falls back to plain
    enqueues, with a warning, where TensorRT cannot be captured). ``workspace_gb``: the
    builder's workspace pool limit. ``precision``: None = the graph's own; 'fp16' on an FP32
    graph uses the FP16 builder flag where TensorRT still has it (:func:`typing_plan`).
    ``cuda_api``: 'auto' | 'pycuda' | 'cuda-python' (module doc).

    After construction: ``engine_path`` (the cached engine), ``built_engine`` (whether this
    construction built it) and ``cuda_api`` (the binding in use).
    """

    name = 'tensorrt'

    def __init__(self, onnx_path: str | Path, device: str = 'cuda',
                 cache_dir: str | Path | None = None, force_rebuild: bool = False,
                 cuda_graph: bool = False, workspace_gb: float = 2, *,
                 precision: str | None = None, cuda_api: str = 'auto'):
        self._cuda: _CudaApi | None = None
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
        api_class = _cuda_api_class(cuda_api)
        self.onnx_path = Path(onnx_path)
        metadata = read_onnx_metadata(self.onnx_path)
        self.device = device
        self.input_size = tuple(int(s) for s in metadata['input_size'])
        if int(metadata.get('batch', 1)) != 1:
            raise ValueError(f'{self.onnx_path} was exported for batch {metadata["batch"]}; '
                             'the runtime feeds one image per call (export with batch=1)')
        height, width = self.input_size
        self._static_shapes = {'image': (1, 3, height, width), 'content_size': (2,),
                               'score_threshold': (1,)}
        flags, fp16_flag, self.precision = typing_plan(trt, metadata['precision'], precision)
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
                                    else default_cache_dir())
                self._load_engine(cache, key, flags, fp16_flag, workspace_gb, force_rebuild)
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
        _check_index(index, _cuda_api_class().device_count())

    def _load_engine(self, cache: EngineCache, key: EngineKey, flags: int, fp16_flag: bool,
                     workspace_gb: float, force: bool) -> None:
        trt = self._trt
        self.built_engine = False

        def build() -> bytes:
            self.built_engine = True
            return self._build(flags, fp16_flag, int(workspace_gb * (1 << 30)))

        self.engine_path = cache.get_or_build(key, build, force=force)
        self._runtime = runtime = trt.Runtime(self._logger)  # must outlive the engine
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None and not self.built_engine:
            # Verified bytes TensorRT still refuses (e.g. a driver change): rebuild once.
            log.warning('tensorrt: cached engine %s does not deserialize; rebuilding',
                        self.engine_path.name)
            self.engine_path = cache.get_or_build(key, build, force=True)
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f'TensorRT could not deserialize {self.engine_path}: '
                               f'{self._logger.summary()}')
        self._engine = engine

    def _build(self, flags: int, fp16_flag: bool, workspace_bytes: int) -> bytes:
        trt, logger = self._trt, self._logger
        log.info('tensorrt: building an engine for %s (%s, TensorRT %s, %s); this takes a '
                 'while once, later starts load it from the cache', self.onnx_path.name,
                 self.precision, trt.__version__, self._cuda.gpu_name)
        started = time.perf_counter()
        builder = trt.Builder(logger)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.onnx_path)):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f'TensorRT could not parse {self.onnx_path}: '
                               f'{errors or logger.summary()}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        if fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = self._optimization_profile(builder, network)
        if profile is not None:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f'TensorRT could not build an engine from {self.onnx_path}: '
                               f'{logger.summary()}')
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
            raise RuntimeError('TensorRT could not create an execution context (out of GPU '
                               f'memory?): {self._logger.summary()}')
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
                        _one_line(error))
            self._cuda.synchronize()
            return False
        return True

    # ------------------------------------------------------------------ inference

    def run(self, image: np.ndarray, content_size: np.ndarray,
            score_threshold: float) -> PanopticScores:
        values = {'image': image, 'content_size': content_size,
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
                            _one_line(error))


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
