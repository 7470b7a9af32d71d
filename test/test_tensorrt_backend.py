"""TensorRT backend.

Everywhere: a clear one-sentence refusal where TensorRT, a CUDA binding or a GPU is missing,
``backend: auto`` falling back, dtype / device / strong-typing / TF32 decisions for TensorRT
10.x and 11.x (older ones are refused). On GPU hosts with TensorRT (marked ``gpu``, skipped
elsewhere with the reason): engines built from a tiny exported model in FP32 and FP16, the
engine cache, forced rebuilds, parity with the torch backend, the CUDA graph path, both CUDA
bindings.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import logging
import re
import subprocess
import sys
import threading
import types
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint

from tokenmask_ros.model import load_checkpoint
from tokenmask_ros.runtime import backends
from tokenmask_ros.runtime.backends import BackendUnavailable, create_backend
from tokenmask_ros.runtime.backends import tensorrt_backend as trt_backend
from tokenmask_ros.runtime.backends.cuda_api import check_index, device_index
from tokenmask_ros.runtime.backends.tensorrt_backend import (
    TensorRTBackend,
    build_plan,
    numpy_dtype,
)
from tokenmask_ros.runtime.engine_cache import EngineCache, EngineKey, file_sha256
from tokenmask_ros.runtime.errors import CacheError, EngineBuildError
from tokenmask_ros.runtime.graph import OUTPUT_NAMES


def _unavailable_reason() -> str | None:
    try:
        TensorRTBackend.check_available('cuda')
    except BackendUnavailable as error:
        return str(error)
    return None


UNAVAILABLE = _unavailable_reason()
requires_tensorrt = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f'needs TensorRT, a CUDA binding and a GPU: {UNAVAILABLE}')


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def assert_one_sentence(error: BaseException) -> None:
    message = str(error)
    assert message and '\n' not in message and '. ' not in message, message
    assert 'Traceback' not in message
    # raised `from None`: no chained ImportError traceback in front of it
    assert error.__cause__ is None and (error.__suppress_context__ or error.__context__ is None)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny.safetensors')


# --- refusing clearly (every machine) ----------------------------------------------------


def test_non_cuda_device_is_refused_first():
    for device in ('cpu', 'auto', 'cuda:x'):
        with pytest.raises(BackendUnavailable, match='needs a CUDA device') as info:
            TensorRTBackend.check_available(device)
        assert_one_sentence(info.value)


def test_missing_tensorrt_is_one_sentence_not_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorrt', None)  # import tensorrt raises ImportError
    with pytest.raises(BackendUnavailable, match='TensorRT cannot be imported') as info:
        TensorRTBackend.check_available('cuda')
    assert_one_sentence(info.value)


@pytest.mark.parametrize('version', ['8.4.3.1', '8.5.2.2', '8.6.2.3', '9.3.0.1'])
def test_tensorrt_before_10_is_refused_naming_the_fix(monkeypatch, version):
    """8.5 lacks LayerNormalization and UINT8 inputs, 8.6-9.x misread opset-18 ReduceMax."""
    monkeypatch.setitem(sys.modules, 'tensorrt', types.SimpleNamespace(__version__=version))
    with pytest.raises(BackendUnavailable, match=re.escape(f'{version} is too old')) as info:
        TensorRTBackend.check_available('cuda')
    assert_one_sentence(info.value)
    assert 'needs TensorRT 10.0 or newer' in str(info.value)
    assert 'use backend onnxruntime' in str(info.value)


def test_missing_cuda_bindings_are_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorrt', types.SimpleNamespace(__version__='10.3.0'))
    for module in ('pycuda', 'pycuda.driver', 'cuda.bindings', 'cuda.bindings.runtime'):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BackendUnavailable, match='needs pycuda or cuda-python') as info:
        TensorRTBackend.check_available('cuda')
    assert_one_sentence(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason='a GPU is visible here')
def test_no_visible_gpu_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorrt', types.SimpleNamespace(__version__='10.3.0'))
    with pytest.raises(BackendUnavailable, match=r'no CUDA GPU is visible|needs pycuda') as info:
        TensorRTBackend.check_available('cuda')
    assert_one_sentence(info.value)


def test_device_index_beyond_the_visible_gpus_is_refused():
    assert device_index('cuda') == 0 and device_index('cuda:3') == 3
    with pytest.raises(BackendUnavailable, match='device 2 was requested but only 1 is') as info:
        check_index(2, 1)
    assert_one_sentence(info.value)


@pytest.mark.skipif(UNAVAILABLE is None, reason='TensorRT and a GPU are present here')
def test_here_check_available_and_create_backend_refuse_in_one_sentence(checkpoint, tmp_path):
    with pytest.raises(BackendUnavailable) as info:
        TensorRTBackend.check_available('cuda')
    assert_one_sentence(info.value)
    with pytest.raises(BackendUnavailable) as info:
        create_backend('tensorrt', checkpoint, device='cuda', cache_dir=tmp_path)
    assert_one_sentence(info.value)
    assert not any(tmp_path.iterdir())  # refused before spending time on an ONNX export


@pytest.mark.skipif(UNAVAILABLE is None, reason='TensorRT and a GPU are present here')
def test_auto_falls_back_to_an_available_backend(checkpoint, tmp_path, monkeypatch):
    if not importable('tokenmask_ros.runtime.export'):
        pytest.skip('tokenmask_ros.runtime.export is not written yet')
    expected = 'onnxruntime' if (importable('tokenmask_ros.runtime.backends.onnxruntime_backend')
                                 and importable('onnxruntime')) else 'torch'
    monkeypatch.setattr(backends, 'AUTO_ORDER', ('tensorrt', expected))
    backend = create_backend('auto', checkpoint, device='auto', cache_dir=tmp_path)
    try:
        assert backend.name == expected
        height, width = backend.input_size
        image = np.full((1, 3, height, width), 128, np.uint8)
        scores = backend.run(image, np.array([height, width], np.int32), 0.5)
        assert scores.segment_map.shape == (1, height, width)
    finally:
        backend.close()


# --- decisions that need no GPU ------------------------------------------------------------


def test_tensorrt_dtypes_map_to_numpy():
    expected = {'BOOL': np.bool_, 'UINT8': np.uint8, 'INT32': np.int32, 'INT64': np.int64,
                'FLOAT': np.float32, 'HALF': np.float16}
    for name, dtype in expected.items():
        assert numpy_dtype(types.SimpleNamespace(name=name)) == np.dtype(dtype)
    assert numpy_dtype('DataType.HALF') == np.float16  # enums without .name print like this
    with pytest.raises(TypeError, match='BF16'):
        numpy_dtype(types.SimpleNamespace(name='BF16'))


def fake_tensorrt(version: str, creation_flags: dict[str, int], builder_flags: dict[str, int]):
    return types.SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=enum.IntEnum('NetworkDefinitionCreationFlag',
                                                   creation_flags),
        BuilderFlag=enum.IntEnum('BuilderFlag', builder_flags))


TRT_10 = fake_tensorrt('10.3.0', {'EXPLICIT_BATCH': 0, 'STRONGLY_TYPED': 1},
                       {'FP16': 0, 'TF32': 6})
TRT_11 = fake_tensorrt('11.0.0', {'STRONGLY_TYPED': 1}, {'TF32': 6})
TRT_11_NO_FLAGS = fake_tensorrt('11.2.0', {'PREFER_JIT_PYTHON_PLUGINS': 3}, {'DEBUG': 2})
STRONG = 1 << 1


@pytest.mark.parametrize(('trt', 'graph', 'asked', 'expected'), [
    # strongly typed wherever the flag exists; TF32 cleared for FP32 engines only
    (TRT_10, 'fp16', None, (STRONG, False, 'fp16')),
    (TRT_10, 'fp32', None, (STRONG, True, 'fp32')),
    (TRT_10, 'fp32', 'fp32', (STRONG, True, 'fp32')),
    (TRT_11, 'fp16', 'fp16', (STRONG, False, 'fp16')),
    (TRT_11, 'fp32', None, (STRONG, True, 'fp32')),
    (TRT_11_NO_FLAGS, 'fp16', None, (0, False, 'fp16')),
    (TRT_11_NO_FLAGS, 'fp32', None, (0, False, 'fp32')),
    (TRT_10, 'fp16', 'fp32', (STRONG, False, 'fp16')),  # cannot widen an FP16 graph
])
def test_build_plan_is_strongly_typed_and_fp32_without_tf32(trt, graph, asked, expected,
                                                            caplog):
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.runtime'):
        plan = build_plan(trt, graph, asked)
    assert plan == expected
    assert ('cannot run in' in caplog.text) == (asked is not None and plan.precision != asked)


@pytest.mark.parametrize('trt', [TRT_10, TRT_11, TRT_11_NO_FLAGS])
def test_fp16_from_an_fp32_export_is_refused_never_weakly_typed(trt):
    with pytest.raises(ValueError, match='FP16 only from an FP16 export') as info:
        build_plan(trt, 'fp32', 'fp16')
    assert '\n' not in str(info.value)


# --- the backend's plumbing on an emulated TensorRT (every machine) ------------------------
#
# FakeTensorRT mimics the TensorRT Python API the backend calls and "executes" the engine
# with onnxruntime on the CPU; FakeCuda keeps "device memory" in NumPy arrays and replays
# a "captured" enqueue as the CUDA graph. Build flags, the engine cache, buffer binding,
# dtypes, copies, the CUDA graph path and close() are exercised for real; kernels are not.

ORT_TYPES = {'tensor(bool)': 'BOOL', 'tensor(uint8)': 'UINT8', 'tensor(int32)': 'INT32',
             'tensor(int64)': 'INT64', 'tensor(float)': 'FLOAT', 'tensor(float16)': 'HALF'}


class FakeCuda:
    label, gpu_name, compute_capability = 'fake', 'Fake GPU', '9.0'
    memory: ClassVar[dict[int, np.ndarray]] = {}
    capturing: ClassVar[list | None] = None  # enqueues recorded while a capture is open

    @staticmethod
    def device_count():
        return 1

    def __init__(self, index):
        self.graph, self.closed = None, False

    def activate(self):
        return contextlib.nullcontext()

    def pinned(self, shape, dtype):
        return np.full(shape, 99, dtype)  # garbage, as real pinned memory would hold

    def device_alloc(self, nbytes):
        pointer = 0x1000 * (len(self.memory) + 1)
        self.memory[pointer] = np.zeros(nbytes, np.uint8)
        return pointer

    def upload(self, pointer, host):
        self.memory[pointer][:host.nbytes] = np.ascontiguousarray(host).view(np.uint8).ravel()

    def download(self, host, pointer):
        host.view(np.uint8).reshape(-1)[:] = self.memory[pointer][:host.nbytes]

    stream_handle = 7

    def synchronize(self):
        pass

    def begin_capture(self):
        FakeCuda.capturing = []

    def end_capture(self):
        self.graph, FakeCuda.capturing = FakeCuda.capturing, None

    def launch_graph(self):
        for enqueue in self.graph:
            enqueue()

    def close(self):
        self.closed = True


def make_fake_tensorrt(version='10.3.0'):
    trt = types.ModuleType('tensorrt')
    trt.__version__ = version
    trt.NetworkDefinitionCreationFlag = enum.IntEnum('NetworkDefinitionCreationFlag',
                                                     {'EXPLICIT_BATCH': 0, 'STRONGLY_TYPED': 1})
    trt.BuilderFlag = enum.IntEnum('BuilderFlag', {'FP16': 0, 'TF32': 6})
    trt.MemoryPoolType = enum.IntEnum('MemoryPoolType', {'WORKSPACE': 0})
    trt.TensorIOMode = enum.IntEnum('TensorIOMode', {'NONE': 0, 'INPUT': 1, 'OUTPUT': 2})
    trt.builds = []
    trt.parse_errors = []  # set: the parser fails with these messages
    trt.build_output = None  # set: the builder returns these bytes

    class ILogger:
        Severity = enum.IntEnum('Severity', {'INTERNAL_ERROR': 0, 'ERROR': 1, 'WARNING': 2,
                                             'INFO': 3, 'VERBOSE': 4})

        def __init__(self):
            pass

    class Network:
        def __init__(self, flags):
            self.flags, self.path = flags, None
            self.num_inputs = 0

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = len(trt.parse_errors)

        def parse_from_file(self, path):
            self.network.path = path
            return not trt.parse_errors

        def get_error(self, index):
            return trt.parse_errors[index]

    class Config:
        def __init__(self):  # TensorRT sets TF32 by default
            self.flags, self.pools = {trt.BuilderFlag.TF32}, {}

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

    class Builder:
        def __init__(self, logger):
            assert isinstance(logger, ILogger)

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            trt.builds.append({'network_flags': network.flags, 'builder_flags': config.flags,
                               'workspace': config.pools[trt.MemoryPoolType.WORKSPACE]})
            return memoryview(trt.build_output or b'FAKE' + network.path.encode())

    class Engine:
        def __init__(self, path):
            import onnxruntime

            self.session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
            self.io = {t.name: (trt.TensorIOMode.INPUT, t) for t in self.session.get_inputs()}
            self.io.update({t.name: (trt.TensorIOMode.OUTPUT, t)
                            for t in self.session.get_outputs()})
            self.num_io_tensors = len(self.io)

        def get_tensor_name(self, index):
            return list(self.io)[index]

        def get_tensor_mode(self, name):
            return self.io[name][0]

        def get_tensor_dtype(self, name):
            return types.SimpleNamespace(name=ORT_TYPES[self.io[name][1].type])

        def get_tensor_shape(self, name):
            return tuple(self.io[name][1].shape)

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.addresses = engine, {}

        def set_tensor_address(self, name, pointer):
            self.addresses[name] = pointer
            return True

        def get_tensor_shape(self, name):
            return self.engine.get_tensor_shape(name)

        def execute_async_v3(self, stream):
            assert stream == FakeCuda.stream_handle
            if FakeCuda.capturing is not None:
                FakeCuda.capturing.append(self._execute)
            else:
                self._execute()
            return True

        def _execute(self):
            def array(name):
                _, info = self.engine.io[name]
                dtype = numpy_dtype(self.engine.get_tensor_dtype(name))
                size = int(np.prod(info.shape)) * dtype.itemsize
                return FakeCuda.memory[self.addresses[name]][:size].view(dtype).reshape(
                    info.shape)

            feeds = {t.name: array(t.name).copy() for t in self.engine.session.get_inputs()}
            for output, value in zip(self.engine.session.get_outputs(),
                                     self.engine.session.run(None, feeds), strict=True):
                array(output.name)[...] = value

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if data.startswith(b'RAISE'):  # TensorRT 10 raises for some damaged plans
                raise RuntimeError('IRuntime::deserializeCudaEngine: Error Code 1: '
                                   'Serialization (Serialization assertion failed)\nmore')
            return Engine(data[4:].decode()) if data.startswith(b'FAKE') else None

    trt.ILogger, trt.Builder, trt.OnnxParser, trt.Runtime = ILogger, Builder, OnnxParser, Runtime
    return trt


@pytest.fixture()
def fake_tensorrt(monkeypatch):
    trt = make_fake_tensorrt()
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    monkeypatch.setattr(trt_backend, 'cuda_api_class', lambda cuda_api='auto': FakeCuda)
    FakeCuda.memory.clear()
    return trt


@pytest.fixture(scope='module')
def fp32_onnx(checkpoint, tmp_path_factory):
    from tokenmask_ros.runtime.export import cached_onnx

    return cached_onnx(checkpoint, 'fp32', tmp_path_factory.mktemp('onnx32'),
                       selection='fixed')


def reference_outputs(onnx_path, image, content_size, threshold):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    feeds = {'image': np.ascontiguousarray(image), 'content_size': content_size,
             'score_threshold': np.array([threshold], np.float32)}
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds), strict=True))


def letterboxed_inputs(size, seed=0):
    """A transposed (non-contiguous) canvas view, as letterbox() hands it to backends."""
    height, width = size
    hwc = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return hwc.transpose(2, 0, 1)[None], np.array([height, width - 16], np.int32), 0.2


def test_emulated_build_cache_and_outputs(fake_tensorrt, fp32_onnx, tmp_path):
    backend = TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path, workspace_gb=1)
    try:
        assert backend.built_engine and backend.engine_path.parent == tmp_path / 'engines'
        assert backend.precision == 'fp32' and backend.describe() == 'tensorrt (cuda, fp32)'
        (build,) = fake_tensorrt.builds
        # strongly typed, and TF32 (on by default) cleared for an FP32 engine
        assert build == {'network_flags': 1 << 1, 'builder_flags': set(), 'workspace': 1 << 30}
        for seed in range(2):
            inputs = letterboxed_inputs(backend.input_size, seed)
            scores, expected = backend.run(*inputs), reference_outputs(fp32_onnx, *inputs)
            assert scores._fields == OUTPUT_NAMES
            for name in OUTPUT_NAMES:
                np.testing.assert_array_equal(getattr(scores, name), expected[name], name)
        assert scores.keep.dtype == np.bool_ and scores.segment_map.dtype == np.int32
    finally:
        backend.close()
    again = TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path)
    assert not again.built_engine and again.engine_path == backend.engine_path
    again.close()
    forced = TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path, force_rebuild=True)
    assert forced.built_engine and len(fake_tensorrt.builds) == 2
    forced.close()


def test_emulated_fp16_request_on_an_fp32_export_builds_nothing(fake_tensorrt, fp32_onnx,
                                                                 tmp_path):
    with pytest.raises(ValueError, match='FP16 only from an FP16 export'):
        TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path, precision='fp16')
    assert fake_tensorrt.builds == [] and not (tmp_path / 'engines').exists()


def test_emulated_cuda_graph_rereads_inputs_and_runs_from_any_thread(fake_tensorrt, fp32_onnx,
                                                                     tmp_path):
    backend = TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path, cuda_graph=True)
    try:
        assert backend.cuda_graph and 'CUDA graph' in backend.describe()
        height, width = backend.input_size
        for seed, content in ((0, (height, width)), (1, (height // 2, width))):
            image, _, threshold = letterboxed_inputs(backend.input_size, seed)
            content = np.array(content, np.int32)
            results = []
            worker = threading.Thread(
                target=lambda: results.append(backend.run(image, content, threshold)))  # noqa: B023
            worker.start()
            worker.join()
            expected = reference_outputs(fp32_onnx, image, content, threshold)
            for name in OUTPUT_NAMES:
                np.testing.assert_array_equal(getattr(results[0], name), expected[name])
    finally:
        backend.close()


def test_emulated_engine_that_does_not_deserialize_is_rebuilt_once(fake_tensorrt, fp32_onnx,
                                                                   tmp_path):
    key = EngineKey(onnx_sha256=file_sha256(fp32_onnx), tensorrt_version='10.3.0',
                    gpu_name='Fake GPU', compute_capability='9.0', precision='fp32',
                    input_shape=(1, 3, 64, 64), name=fp32_onnx.stem)
    EngineCache(tmp_path / 'engines').get_or_build(key, lambda: b'verified but unloadable')
    backend = TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path)
    backend.close()
    assert backend.built_engine and len(fake_tensorrt.builds) == 1
    assert backend.engine_path.read_bytes().startswith(b'FAKE')


def cache_engine(onnx_path, cache_dir, data: bytes) -> None:
    """Put ``data`` into the engine cache as a verified engine for ``onnx_path``."""
    key = EngineKey(onnx_sha256=file_sha256(onnx_path), tensorrt_version='10.3.0',
                    gpu_name='Fake GPU', compute_capability='9.0', precision='fp32',
                    input_shape=(1, 3, 64, 64), name=onnx_path.stem)
    EngineCache(cache_dir / 'engines').get_or_build(key, lambda: data)


def test_emulated_engine_whose_load_raises_is_deleted_and_rebuilt_once(fake_tensorrt,
                                                                       fp32_onnx, tmp_path,
                                                                       caplog):
    cache_engine(fp32_onnx, tmp_path, b'RAISE: verified bytes TensorRT refuses')
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.runtime'):
        backend = TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path)
    backend.close()
    assert backend.built_engine and len(fake_tensorrt.builds) == 1
    assert backend.engine_path.read_bytes().startswith(b'FAKE')
    assert 'does not load (RuntimeError: IRuntime::deserializeCudaEngine' in caplog.text


def test_emulated_engine_that_fails_to_load_twice_is_one_clear_error(fake_tensorrt, fp32_onnx,
                                                                     tmp_path):
    cache_engine(fp32_onnx, tmp_path, b'RAISE: damaged')
    fake_tensorrt.build_output = b'RAISE: built damaged too'
    with pytest.raises(CacheError, match='still does not load after building it again') as info:
        TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path)
    assert_one_sentence(info.value)
    assert str(tmp_path / 'engines') in str(info.value)
    assert len(fake_tensorrt.builds) == 1


def test_emulated_build_failure_is_clear_and_auto_moves_on(fake_tensorrt, checkpoint, tmp_path,
                                                           caplog):
    fake_tensorrt.parse_errors = ['In node 12 (importLayerNormalization): UNSUPPORTED_NODE:\n'
                                  'No importer registered for op: LayerNormalization']
    with pytest.raises(EngineBuildError, match='could not parse') as info:
        create_backend('tensorrt', checkpoint, device='cuda', cache_dir=tmp_path)
    assert_one_sentence(info.value)
    assert 'LayerNormalization' in str(info.value)
    with caplog.at_level(logging.INFO, logger='tokenmask_ros.runtime'):
        try:
            backend = create_backend('auto', checkpoint, device='cuda', cache_dir=tmp_path)
        except BackendUnavailable as error:  # no CUDA here for onnxruntime or torch either
            message = str(error)
            assert 'tensorrt: TensorRT 10.3.0 could not parse' in message
            assert 'onnxruntime:' in message and 'torch:' in message
        else:
            assert backend.name != 'tensorrt'
            backend.close()
    assert 'backend auto: tensorrt failed' in caplog.text


def test_emulated_tensorrt_gets_a_fixed_selection_export_and_refuses_a_kept_one(
        fake_tensorrt, checkpoint, tmp_path):
    """TensorRT needs static shapes: create_backend exports with selection 'fixed'; an export
    that decodes a data-dependent number of queries is refused in one sentence."""
    from tokenmask_ros.runtime.errors import LoadError
    from tokenmask_ros.runtime.export import cached_onnx, read_onnx_metadata

    backend = create_backend('tensorrt', checkpoint, device='cuda', cache_dir=tmp_path)
    try:
        assert read_onnx_metadata(backend.onnx_path)['selection'] == 'fixed'
        assert backend.onnx_path.stem.endswith('-fixed')
    finally:
        backend.close()
    kept = cached_onnx(checkpoint, 'fp32', tmp_path)
    assert read_onnx_metadata(kept)['selection'] == 'kept'
    with pytest.raises(LoadError, match='--selection fixed') as info:
        TensorRTBackend(kept, 'cuda', cache_dir=tmp_path)
    assert_one_sentence(info.value)
    assert len(fake_tensorrt.builds) == 1


def test_emulated_close_is_idempotent_and_final(fake_tensorrt, fp32_onnx, tmp_path):
    backend = TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path)
    cuda = backend._cuda
    backend.close()
    backend.close()
    assert cuda.closed and backend._engine is None and backend._context is None
    with pytest.raises(RuntimeError, match='closed'):
        backend.run(*letterboxed_inputs(backend.input_size))
    with pytest.raises(ValueError, match='shape'):
        TensorRTBackend(fp32_onnx, 'cuda', cache_dir=tmp_path).run(
            np.zeros((1, 3, 8, 8), np.uint8), np.array([8, 8], np.int32), 0.5)


# --- GPU hosts with TensorRT ----------------------------------------------------------------


@pytest.fixture(scope='module')
def onnx_paths(checkpoint, tmp_path_factory):
    from tokenmask_ros.runtime.export import cached_onnx

    cache = tmp_path_factory.mktemp('onnx')
    return {p: cached_onnx(checkpoint, p, cache, selection='fixed') for p in ('fp32', 'fp16')}


def canvas_inputs(size, seed=0):
    height, width = size
    image = np.random.default_rng(seed).integers(0, 256, (1, 3, height, width), np.uint8)
    return image, np.array([height, width - 16], np.int32), 0.0


@pytest.mark.gpu
@requires_tensorrt
@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_engine_is_built_once_then_loaded_from_the_cache(onnx_paths, tmp_path, precision):
    first = TensorRTBackend(onnx_paths[precision], 'cuda', cache_dir=tmp_path)
    try:
        assert first.built_engine and first.precision == precision
        assert first.engine_path.parent == tmp_path / 'engines'
        stat = first.engine_path.stat()
    finally:
        first.close()
    second = TensorRTBackend(onnx_paths[precision], 'cuda', cache_dir=tmp_path)
    try:
        assert not second.built_engine and second.engine_path == first.engine_path
        again = second.engine_path.stat()
        assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    finally:
        second.close()
    forced = TensorRTBackend(onnx_paths[precision], 'cuda', cache_dir=tmp_path,
                             force_rebuild=True)
    try:
        assert forced.built_engine and forced.engine_path.stat().st_ino != stat.st_ino
    finally:
        forced.close()


@pytest.mark.gpu
@requires_tensorrt
@pytest.mark.parametrize(('precision', 'min_agreement', 'score_atol'),
                         [('fp32', 0.999, 1e-3), ('fp16', 0.99, 2e-2)])
def test_outputs_match_the_torch_backend(onnx_paths, checkpoint, tmp_path, precision,
                                         min_agreement, score_atol, monkeypatch):
    """Against the FP32 torch model on the GPU. FP32 engines are built without TF32 and the
    reference runs without it too (cuDNN convolutions allow TF32 by default), so FP32 class
    decisions agree exactly; a borderline pixel may still differ by summation order."""
    from tokenmask_ros.runtime.backends.torch_backend import TorchBackend

    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)

    reference = TorchBackend(load_checkpoint(checkpoint), 'cuda', 'fp32')
    backend = TensorRTBackend(onnx_paths[precision], 'cuda', cache_dir=tmp_path)
    try:
        agreement = []
        for seed in range(4):
            inputs = canvas_inputs(backend.input_size, seed)
            expected, actual = reference.run(*inputs), backend.run(*inputs)
            assert actual._fields == OUTPUT_NAMES
            for name in OUTPUT_NAMES:
                assert getattr(actual, name).shape == getattr(expected, name).shape, name
                assert getattr(actual, name).dtype == getattr(expected, name).dtype, name
            assert np.isfinite(actual.query_score).all()
            agreement.append(actual.segment_map == expected.segment_map)
            assert (actual.segment_map[..., inputs[1][1]:] == -1).all()  # padding unlabelled
            same_class = actual.query_class == expected.query_class
            assert same_class.mean() >= (1.0 if precision == 'fp32' else 0.8)
            np.testing.assert_allclose(actual.query_score[same_class],
                                       expected.query_score[same_class], atol=score_atol)
        agreement = np.mean(agreement)  # 4 x 64 x 64 pixels
        assert agreement >= min_agreement, f'{precision}: {agreement:.5f}'
    finally:
        backend.close()
        reference.close()


@pytest.mark.gpu
@requires_tensorrt
def test_cuda_graph_replays_the_same_outputs(onnx_paths, tmp_path):
    plain = TensorRTBackend(onnx_paths['fp16'], 'cuda', cache_dir=tmp_path)
    graphed = TensorRTBackend(onnx_paths['fp16'], 'cuda', cache_dir=tmp_path, cuda_graph=True)
    try:
        assert graphed.cuda_graph and not graphed.built_engine  # same cached engine
        height, width = plain.input_size
        for seed, content in ((0, (height, width)), (1, (height // 2, width))):
            image, _, threshold = canvas_inputs(plain.input_size, seed)
            content = np.array(content, np.int32)
            expected, actual = plain.run(image, content, threshold), graphed.run(
                image, content, threshold)
            for name in OUTPUT_NAMES:  # inputs are re-read on every replay
                np.testing.assert_allclose(getattr(actual, name), getattr(expected, name),
                                           rtol=0, atol=1e-6, err_msg=name)
            assert (actual.segment_map[:, content[0]:] == -1).all()
    finally:
        plain.close()
        graphed.close()


@pytest.mark.gpu
@requires_tensorrt
@pytest.mark.parametrize('cuda_api', ['pycuda', 'cuda-python'])
def test_both_cuda_bindings_give_the_same_outputs_from_any_thread(onnx_paths, tmp_path,
                                                                  cuda_api):
    module = {'pycuda': 'pycuda.driver', 'cuda-python': 'cuda.bindings.runtime'}[cuda_api]
    if not importable(module):
        pytest.skip(f'{module} is not installed')
    reference = TensorRTBackend(onnx_paths['fp32'], 'cuda', cache_dir=tmp_path)
    backend = TensorRTBackend(onnx_paths['fp32'], 'cuda', cache_dir=tmp_path,
                              cuda_api=cuda_api)
    try:
        assert backend.cuda_api == cuda_api
        inputs = canvas_inputs(backend.input_size)
        results = []
        worker = threading.Thread(target=lambda: results.append(backend.run(*inputs)))
        worker.start()
        worker.join()
        expected = reference.run(*inputs)
        for name in OUTPUT_NAMES:
            np.testing.assert_array_equal(getattr(results[0], name), getattr(expected, name))
    finally:
        backend.close()
        reference.close()


@pytest.mark.gpu
@requires_tensorrt
def test_close_is_idempotent_and_final(onnx_paths, tmp_path):
    backend = TensorRTBackend(onnx_paths['fp32'], 'cuda', cache_dir=tmp_path)
    backend.close()
    backend.close()
    with pytest.raises(RuntimeError, match='closed'):
        backend.run(*canvas_inputs(backend.input_size))



# A fresh process, so nothing else (PyTorch) holds the primary context: once PyCuda closes,
# the context must be inactive again (released exactly once) and no thread may keep it
# current. Closing on the creating thread and on another thread are both checked.
PYCUDA_CONTEXT_SCRIPT = """
import ctypes, sys, threading
sys.path.insert(0, sys.argv[1])
from tokenmask_ros.runtime.backends.cuda_api import LibCuda, PyCuda

lib = LibCuda()

def primary_active():
    device, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    lib.call('cuDeviceGet', ctypes.byref(device), 0)
    lib.call('cuDevicePrimaryCtxGetState', device, ctypes.byref(flags), ctypes.byref(active))
    return bool(active.value)

def opened():
    api = PyCuda(0)
    with api.activate():
        api.pinned((4,), 'float32')
        api.device_alloc(64)
    assert primary_active()
    return api

api = opened()
assert lib.current_context() == 0
api.close()
api.close()
assert lib.current_context() == 0, 'the closing thread keeps the context current'
assert not primary_active(), 'the primary context is still retained after close'

api = opened()
seen = {}
def close_here():
    seen['before'] = lib.current_context()
    api.close()
    seen['after'] = lib.current_context()
worker = threading.Thread(target=close_here)
worker.start()
worker.join()
assert seen == {'before': 0, 'after': 0}, seen
assert lib.current_context() == 0
assert not primary_active(), 'closing on another thread leaked the retain'
print('released once')
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.skipif(not importable('pycuda.driver'), reason='pycuda is not installed')
def test_pycuda_releases_the_primary_context_once_from_any_thread():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, '-c', PYCUDA_CONTEXT_SCRIPT, str(repo)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'released once' in result.stdout
