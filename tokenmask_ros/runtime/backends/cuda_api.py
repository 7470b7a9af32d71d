"""CUDA memory, streams, graphs and the device context for the TensorRT backend.

Two bindings behind one small interface (:class:`CudaApi`): pycuda (preferred) or, where
pycuda is not built, cuda-python's ``cuda.bindings.runtime`` (a wheel that comes with recent
PyTorch). Neither creates a context of its own: both use the device's *primary* context, the
one the CUDA runtime (so PyTorch and TensorRT) uses, so torch tensors and the backend live
together in one process.

pycuda retains the primary context once (released exactly once by ``close``, from whichever
thread closes), pushes it around every call and pops it after, so ``run`` works from any
thread (ROS executors call back on worker threads) and leaves the caller's context stack as
it was. ``pycuda.autoinit`` (a separate context) and ``pycuda.autoprimaryctx`` (pushed once,
on the importing thread only) are avoided on purpose. What pycuda lacks (CUDA graphs, popping
a context it stopped tracking) goes through libcuda's driver API with ctypes
(:class:`LibCuda`).

Nothing here imports pycuda or cuda-python at module level.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from tokenmask_ros.runtime.errors import BackendUnavailable, one_line

log = logging.getLogger('tokenmask_ros.runtime')

__all__ = ['CUDA_APIS', 'CudaApi', 'CudaPython', 'LibCuda', 'PyCuda', 'check_index',
           'cuda_api_class', 'device_index']

CUDA_APIS = ('auto', 'pycuda', 'cuda-python')

_CU_STREAM_NON_BLOCKING = 0x1
_CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1  # as trtexec: other threads may keep using CUDA


def device_index(device: str) -> int:
    """'cuda' -> 0, 'cuda:N' -> N; BackendUnavailable for anything else."""
    if device == 'cuda':
        return 0
    if device.startswith('cuda:') and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailable(f'the tensorrt backend needs a CUDA device, got {device!r}')



class CudaApi(Protocol):
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


class PyCuda:
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
                                     f'({one_line(error)})') from None
        if count < 1:
            raise BackendUnavailable('no CUDA GPU is visible to pycuda')
        return count

    def __init__(self, index: int):
        import pycuda.driver as cuda

        self._cuda = cuda
        check_index(index, self.device_count())
        device = cuda.Device(index)
        self.gpu_name = device.name()
        self.compute_capability = '{}.{}'.format(*device.compute_capability())
        self._device_memory: list = []
        self._host_memory: list[np.ndarray] = []
        self._graph: LibCuda | None = None
        self._stream = None
        self._context = device.retain_primary_context()  # released once, by close()
        try:
            with self.activate():
                self._stream = cuda.Stream(flags=_CU_STREAM_NON_BLOCKING)
        except BaseException:
            self._release_context()
            raise

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
        self._graph = LibCuda()
        self._graph.begin_capture(self.stream_handle)

    def end_capture(self):
        self._graph.end_capture(self.stream_handle)

    def launch_graph(self):
        self._graph.launch_graph(self.stream_handle)

    def close(self):
        """Free everything, then release the primary context (idempotent, any thread)."""
        if self._context is None:
            return
        try:
            with self.activate():
                self._stream.synchronize()
                if self._graph is not None:
                    self._graph.destroy_graph()
                    self._graph = None
                for allocation in self._device_memory:
                    allocation.free()
                for array in self._host_memory:
                    array.base.free()
                self._device_memory, self._host_memory = [], []
                self._stream = None
        finally:
            self._release_context()

    def _release_context(self) -> None:
        """Release the retain of ``__init__`` exactly once and leave the calling thread's
        context stack as found, whichever thread calls.

        pycuda's ``detach()`` releases a primary context only while it is current on
        pycuda's stack: otherwise it pushes it first and never pops it (on the retaining
        thread) or does nothing at all (on any other thread, leaking the retain). And the
        release itself (``cuDevicePrimaryCtxRelease``) pops nothing. So: push, detach, then
        pop the driver's stack back with the driver API.
        """
        context, self._context = self._context, None
        below = self._cuda.Context.get_current()  # a pycuda context of the caller, or None
        context.push()
        try:
            context.detach()
        finally:
            driver = LibCuda()
            if below is not None:  # detach made it current again, on top of ours
                driver.pop_context()
            popped = driver.pop_context()
            if below is not None:
                driver.push_context(below.handle)
            if popped != context.handle:
                log.warning('pycuda: popped context %#x while releasing %#x', popped,
                            context.handle)


class LibCuda:
    """libcuda's driver API through ctypes, for what pycuda lacks: one CUDA graph captured
    on a stream, and popping / pushing contexts pycuda no longer tracks."""

    def __init__(self):
        self._lib = ctypes.CDLL('libcuda.so.1')
        self._exec = ctypes.c_void_p()

    def call(self, function: str, *args) -> None:
        """``function(*args)``, or RuntimeError naming it and the CUDA error."""
        result = getattr(self._lib, function)(*args)
        if result != 0:
            text = ctypes.c_char_p()
            self._lib.cuGetErrorString(result, ctypes.byref(text))
            raise RuntimeError(f'{function} failed: '
                               f'{text.value.decode() if text.value else result}')

    def current_context(self) -> int:
        context = ctypes.c_void_p()
        self.call('cuCtxGetCurrent', ctypes.byref(context))
        return context.value or 0

    def pop_context(self) -> int:
        context = ctypes.c_void_p()
        self.call('cuCtxPopCurrent_v2', ctypes.byref(context))
        return context.value or 0

    def push_context(self, handle: int) -> None:
        self.call('cuCtxPushCurrent_v2', ctypes.c_void_p(handle))

    def begin_capture(self, stream: int) -> None:
        self.call('cuStreamBeginCapture_v2', ctypes.c_void_p(stream),
                  ctypes.c_int(_CU_STREAM_CAPTURE_MODE_THREAD_LOCAL))

    def end_capture(self, stream: int) -> None:
        graph = ctypes.c_void_p()
        self.call('cuStreamEndCapture', ctypes.c_void_p(stream), ctypes.byref(graph))
        try:
            self.call('cuGraphInstantiateWithFlags', ctypes.byref(self._exec), graph,
                      ctypes.c_ulonglong(0))
        finally:
            self.call('cuGraphDestroy', graph)  # the executable graph is independent of it

    def launch_graph(self, stream: int) -> None:
        self.call('cuGraphLaunch', self._exec, ctypes.c_void_p(stream))

    def destroy_graph(self) -> None:
        if self._exec.value:
            self.call('cuGraphExecDestroy', self._exec)
            self._exec = ctypes.c_void_p()


class CudaPython:
    """cuda-python's runtime API (``cuda.bindings.runtime``): the runtime binds the device's
    primary context by itself; :meth:`activate` only selects the device for the calling
    thread and restores the previous one."""

    label = 'cuda-python'

    @staticmethod
    def device_count() -> int:
        """GPUs visible to the CUDA runtime; BackendUnavailable if none."""
        from cuda.bindings import runtime as cudart

        try:
            count = cudart_check(cudart, cudart.cudaGetDeviceCount(), 'cudaGetDeviceCount')
        except RuntimeError as error:
            raise BackendUnavailable(f'no CUDA GPU is visible to cuda-python ({error})') from None
        if count < 1:
            raise BackendUnavailable('no CUDA GPU is visible to cuda-python')
        return count

    def __init__(self, index: int):
        from cuda.bindings import runtime as cudart

        self._rt = cudart
        self._index = index
        check_index(index, self.device_count())
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
        return cudart_check(self._rt, result, function)

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


def cudart_check(cudart, result, function: str):
    """cuda-python returns ``(error, *values)``: the value, or RuntimeError naming the error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        raise RuntimeError(f'{function} failed: '
                           f'{text.decode() if isinstance(text, bytes) else error}')
    return values[0] if len(values) == 1 else None


def check_index(index: int, count: int) -> None:
    if index >= count:
        raise BackendUnavailable(f'CUDA device {index} was requested but only {count} '
                                 f'{"is" if count == 1 else "are"} visible')


def cuda_api_class(cuda_api: str = 'auto') -> type[PyCuda | CudaPython]:
    """The CUDA binding to use: pycuda where it imports, else cuda-python."""
    if cuda_api not in CUDA_APIS:
        raise ValueError(f'cuda_api must be one of {CUDA_APIS}, got {cuda_api!r}')
    reasons = []
    candidates = {'pycuda': (PyCuda, 'pycuda.driver'),
                  'cuda-python': (CudaPython, 'cuda.bindings.runtime')}
    for label, (cls, module) in candidates.items():
        if cuda_api not in ('auto', label):
            continue
        try:
            __import__(module)
        except Exception as error:  # ImportError; pycuda raises others when CUDA is broken
            reasons.append(f'{module}: {one_line(error)}')
            continue
        return cls
    raise BackendUnavailable('the tensorrt backend needs pycuda or cuda-python for CUDA '
                             f'memory and neither imports ({"; ".join(reasons)})')


