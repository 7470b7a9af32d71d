"""Cache faults end in one clear error or a rebuild, never a traceback or a silent wrong answer.

A tiny real model, real ONNX exports and real onnxruntime sessions on the CPU: cache folders
that cannot be written, exports with flipped weight bytes, exports whose nodes are corrupted
while the protobuf stays valid, and ``backend: auto`` moving on to the torch backend.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
from conftest import save_tiny_checkpoint

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

from tokenmask_ros.runtime import (  # noqa: E402
    BackendUnavailable,
    CacheError,
    LoadError,
    Segmenter,
    create_backend,
)
from tokenmask_ros.runtime import export as export_module  # noqa: E402
from tokenmask_ros.runtime.backends.onnxruntime_backend import (  # noqa: E402
    OnnxRuntimeBackend,
    providers,
)
from tokenmask_ros.runtime.engine_cache import EngineCache, EngineKey  # noqa: E402
from tokenmask_ros.runtime.export import cached_onnx  # noqa: E402

KEY = EngineKey(onnx_sha256='ab' * 32, tensorrt_version='10.3.0', gpu_name='GPU',
                compute_capability='9.0', precision='fp32', input_shape=(1, 3, 32, 32))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny.safetensors',
                                img_size=32, depth=1, num_queries=4, num_classes=3)


@pytest.fixture(scope='module')
def frame():
    return np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)


def segment(checkpoint, cache_dir, frame, backend='onnxruntime'):
    with Segmenter(checkpoint, backend, 'cpu', score_threshold=0.0, overlap_threshold=0.0,
                   cache_dir=cache_dir) as segmenter:
        return segmenter(frame)


def assert_one_sentence(error: BaseException) -> None:
    message = str(error)
    assert message and '\n' not in message and 'Traceback' not in message, message


def rewrite_sidecar(onnx_path) -> None:
    """Make the checksum sidecar match the file again: a damaged export that still verifies
    (written damaged, or by a version without the check)."""
    sidecar = onnx_path.with_suffix('.json')
    record = json.loads(sidecar.read_text())
    record.update(onnx_size=onnx_path.stat().st_size,
                  onnx_sha256=export_module.file_sha256(onnx_path))
    sidecar.write_text(json.dumps(record))


def corrupt_softmax_axis(onnx_path) -> None:
    """Set a Softmax axis out of range: still valid protobuf, refused by onnxruntime."""
    model = onnx.load(onnx_path)
    softmax = next(n for n in model.graph.node if n.op_type == 'Softmax')
    next(a for a in softmax.attribute if a.name == 'axis').i = 57
    onnx.save(model, onnx_path)


# --- cache folders that cannot be used ----------------------------------------------------


def test_a_file_in_place_of_the_cache_folder_is_one_clear_error(checkpoint, tmp_path):
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('a file')
    with pytest.raises(CacheError) as info:
        create_backend('onnxruntime', checkpoint, device='cpu', cache_dir=blocker)
    assert_one_sentence(info.value)
    assert str(blocker) in str(info.value) and 'writable folder' in str(info.value)
    with pytest.raises(CacheError, match='writable folder') as info:
        EngineCache(blocker / 'engines').get_or_build(KEY, lambda: b'engine')
    assert_one_sentence(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_read_only_cache_folder_is_one_clear_error(checkpoint, tmp_path):
    folder = tmp_path / 'read_only'
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(CacheError, match='cannot be written') as info:
            create_backend('onnxruntime', checkpoint, device='cpu', cache_dir=folder)
        assert_one_sentence(info.value)
    finally:
        folder.chmod(0o755)


def test_auto_moves_on_to_torch_and_logs_why(checkpoint, tmp_path, frame, caplog):
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('a file')
    with caplog.at_level(logging.INFO, logger='tokenmask_ros.runtime'):
        backend = create_backend('auto', checkpoint, device='cpu', cache_dir=blocker)
    try:
        assert backend.name == 'torch'
    finally:
        backend.close()
    failed = [r for r in caplog.records if r.levelno == logging.WARNING
              and 'onnxruntime failed' in r.getMessage()]
    assert failed and str(blocker) in failed[0].getMessage()
    assert segment(checkpoint, blocker, frame, 'auto').panoptic.shape == frame.shape[:2]


# --- ONNX exports damaged in the cache -----------------------------------------------------


def test_flipped_weight_bytes_are_detected_and_the_export_redone(checkpoint, tmp_path, frame,
                                                                  caplog):
    clean = segment(checkpoint, tmp_path, frame)
    (onnx_path,) = tmp_path.glob('*.onnx')
    clean_bytes = onnx_path.read_bytes()
    weights = max(onnx.load(onnx_path).graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(clean_bytes)
    start = data.find(weights.raw_data) + len(weights.raw_data) // 2
    data[start:start + 2048] = b'\x42' * 2048  # weights of ~48.6: valid floats, wrong model
    onnx_path.write_bytes(bytes(data))
    damaged = tmp_path / 'damaged_copy'
    damaged.mkdir()
    shutil.copy(onnx_path, damaged / onnx_path.name)
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.runtime'):
        again = segment(checkpoint, tmp_path, frame)
    assert 'does not match the SHA-256' in caplog.text
    assert onnx_path.read_bytes() == clean_bytes  # exported again
    np.testing.assert_array_equal(again.panoptic, clean.panoptic)
    assert again.segments == clean.segments
    # the damage mattered: the damaged file, run as a user's own export, segments differently
    with Segmenter(damaged / onnx_path.name, 'onnxruntime', 'cpu', score_threshold=0.0,
                   overlap_threshold=0.0) as segmenter:
        wrong = segmenter(frame)
    assert not np.array_equal(wrong.panoptic, clean.panoptic)


def test_an_export_without_its_checksum_is_exported_again(checkpoint, tmp_path, caplog):
    onnx_path = cached_onnx(checkpoint, 'fp32', tmp_path)
    onnx_path.with_suffix('.json').unlink()
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.runtime'):
        assert cached_onnx(checkpoint, 'fp32', tmp_path) == onnx_path
    assert 'no readable checksum sidecar' in caplog.text
    assert onnx_path.with_suffix('.json').is_file()


@pytest.fixture()
def count_exports(monkeypatch):
    calls = []
    real = export_module.export_onnx

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, 'export_onnx', counted)
    return calls


def test_a_verified_export_that_does_not_load_is_rebuilt_once(checkpoint, tmp_path, frame,
                                                              count_exports, caplog):
    clean = segment(checkpoint, tmp_path, frame)
    (onnx_path,) = tmp_path.glob('*.onnx')
    corrupt_softmax_axis(onnx_path)
    rewrite_sidecar(onnx_path)
    with pytest.raises(LoadError, match='onnxruntime cannot load'):
        OnnxRuntimeBackend(onnx_path)
    del count_exports[:]
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.runtime'):
        again = segment(checkpoint, tmp_path, frame)
    assert count_exports == [onnx_path]
    assert 'does not load' in caplog.text
    np.testing.assert_array_equal(again.panoptic, clean.panoptic)


def test_an_export_that_fails_to_load_twice_is_one_clear_error(checkpoint, tmp_path,
                                                               monkeypatch, caplog):
    real = export_module.export_onnx
    exports = []

    def export_damaged(model, path, **kwargs):  # an exporter that writes broken graphs
        exports.append(path)
        real(model, path, **kwargs)
        corrupt_softmax_axis(path)
        return path

    monkeypatch.setattr(export_module, 'export_onnx', export_damaged)
    with pytest.raises(CacheError, match='still does not load after exporting it again') as info:
        create_backend('onnxruntime', checkpoint, device='cpu', cache_dir=tmp_path)
    assert_one_sentence(info.value)
    assert len(exports) == 2
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.runtime'):
        backend = create_backend('auto', checkpoint, device='cpu', cache_dir=tmp_path)
    assert backend.name == 'torch'
    backend.close()
    assert 'still does not load' in caplog.text


def test_a_users_own_onnx_that_does_not_load_is_reported_not_deleted(checkpoint, tmp_path):
    onnx_path = shutil.copy(cached_onnx(checkpoint, 'fp32', tmp_path / 'cache'),
                            tmp_path / 'mine.onnx')
    corrupt_softmax_axis(onnx_path)
    before = onnx_path.read_bytes()
    with pytest.raises(LoadError, match=r'mine\.onnx') as info:
        create_backend('onnxruntime', onnx_path, device='cpu', cache_dir=tmp_path / 'cache')
    assert_one_sentence(info.value)
    assert onnx_path.read_bytes() == before
    with pytest.raises(BackendUnavailable, match='no backend can run here'):
        create_backend('auto', onnx_path, device='cpu')


# --- onnxruntime's TensorRT execution provider --------------------------------------------


def test_ort_tensorrt_provider_caches_under_the_cache_folder(tmp_path):
    available = ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    chosen = providers(available, 'cuda:1', tmp_path)
    name, options = chosen[0]
    folder = tmp_path / 'ort_tensorrt'
    assert name == 'TensorrtExecutionProvider' and folder.is_dir()
    assert options == {'device_id': 1, 'trt_engine_cache_enable': True,
                       'trt_engine_cache_path': str(folder), 'trt_timing_cache_enable': True,
                       'trt_timing_cache_path': str(folder)}
    assert chosen[1:] == [('CUDAExecutionProvider', {'device_id': 1}), 'CPUExecutionProvider']


def test_ort_tensorrt_provider_is_skipped_when_its_cache_cannot_be_written(tmp_path, caplog):
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('a file')
    available = ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.runtime'):
        chosen = providers(available, 'cuda', blocker)
    assert chosen == [('CUDAExecutionProvider', {'device_id': 0}), 'CPUExecutionProvider']
    assert 'not using its TensorRT provider' in caplog.text
