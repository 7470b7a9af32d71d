"""The openvino backend on the bundled model: its outputs equal ONNX Runtime's on the same
export, its compiled-model cache, device names, and how ``auto`` chooses it. Real OpenVINO
and ONNX Runtime sessions on real exports; CPU only."""

from __future__ import annotations

import logging
import platform

import numpy as np
import pytest

pytest.importorskip('onnxruntime')
pytest.importorskip('openvino')

from tokenmask_ros import cli
from tokenmask_ros.bundled import resolve_model_path
from tokenmask_ros.defaults import AUTO_ORDER, BACKENDS
from tokenmask_ros.runtime import Segmenter
from tokenmask_ros.runtime.backends import BackendUnavailable, create_backend
from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from tokenmask_ros.runtime.backends.openvino_backend import (
    OpenVINOBackend,
    auto_skip_reason,
)
from tokenmask_ros.runtime.export import cached_onnx
from tokenmask_ros.runtime.preprocess import letterbox
from tokenmask_ros.synthetic import SceneGenerator

MODEL = resolve_model_path(None)
THRESHOLD = 0.8


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def fp32(cache):
    return cached_onnx(MODEL, 'fp32', cache)


def scenes(count: int = 4) -> list[np.ndarray]:
    generator = SceneGenerator(480, 640, seed=11)
    return [generator.scene(index).image for index in range(count)]


def assert_one_sentence(error: BaseException) -> None:
    text = str(error)
    assert text and '\n' not in text and text.count('. ') == 0, text


def test_openvino_outputs_equal_onnxruntime_on_the_bundled_model(fp32, cache):
    openvino = OpenVINOBackend(fp32, 'cpu', cache_dir=cache)
    onnxruntime = OnnxRuntimeBackend(fp32, 'cpu')
    assert (openvino.precision, openvino.input_size, openvino.batch) == (
        'fp32', onnxruntime.input_size, 1)
    try:
        for image in scenes():
            canvas, box = letterbox(image, openvino.input_size)
            content = np.array(box.content_size, np.int32)
            expected = onnxruntime.run(canvas, content, THRESHOLD)
            actual = openvino.run(canvas, content, THRESHOLD)
            assert expected.keep.sum() >= 3, 'too few segments to compare'
            assert len(np.unique(expected.segment_map)) >= 4
            for name in ('segment_map', 'query_class', 'keep', 'mask_area', 'won_area'):
                np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name),
                                              err_msg=name)
                assert getattr(actual, name).dtype == getattr(expected, name).dtype, name
            np.testing.assert_allclose(actual.query_score, expected.query_score, atol=1e-4)
    finally:
        openvino.close()
        onnxruntime.close()


def test_segmenter_predictions_equal_onnxruntime(cache):
    openvino = Segmenter(MODEL, 'openvino', 'cpu', cache_dir=cache)
    onnxruntime = Segmenter(MODEL, 'onnxruntime', 'cpu', cache_dir=cache)
    try:
        assert openvino.backend.describe().startswith('openvino (cpu, fp32')
        for image in scenes(2):
            a, b = openvino(image), onnxruntime(image)
            np.testing.assert_array_equal(a.panoptic, b.panoptic)
            assert [s.id for s in a.segments] == [s.id for s in b.segments]
    finally:
        openvino.close()
        onnxruntime.close()


def test_compiled_models_are_cached_under_the_cache_folder(fp32, tmp_path):
    folder = tmp_path / 'cache'
    OpenVINOBackend(fp32, 'cpu', cache_dir=folder).close()
    blobs = sorted((folder / 'openvino').iterdir())
    assert blobs and all(b.stat().st_size > 100_000 for b in blobs)
    stamps = [b.stat().st_mtime_ns for b in blobs]
    OpenVINOBackend(fp32, 'cpu', cache_dir=folder).close()  # imported, not compiled again
    assert sorted((folder / 'openvino').iterdir()) == blobs
    assert [b.stat().st_mtime_ns for b in blobs] == stamps


def test_an_unwritable_cache_folder_compiles_without_a_cache(fp32, tmp_path, caplog):
    (tmp_path / 'openvino').write_text('a file where the folder should be')
    with caplog.at_level(logging.WARNING, 'tokenmask_ros.runtime'):
        backend = OpenVINOBackend(fp32, 'cpu', cache_dir=tmp_path)
    try:
        assert backend.cache_folder is None
        assert 'compiling without a model cache' in caplog.text
        height, width = backend.input_size
        image = np.full((1, 3, height, width), 128, np.uint8)
        assert backend.run(image, np.array([height, width], np.int32),
                           0.5).segment_map.shape == (1, height, width)
    finally:
        backend.close()


def test_cuda_devices_are_refused_before_any_export(tmp_path):
    with pytest.raises(BackendUnavailable, match='CUDA GPU, which OpenVINO does not drive') as info:
        create_backend('openvino', MODEL, device='cuda:0', cache_dir=tmp_path)
    assert_one_sentence(info.value)
    assert not any(tmp_path.iterdir())


def test_openvino_device_names(tmp_path):
    import openvino

    if not any(d.startswith('NPU') for d in openvino.Core().available_devices):
        with pytest.raises(BackendUnavailable, match='finds no NPU device here') as info:
            create_backend('openvino', MODEL, device='npu', cache_dir=tmp_path)
        assert_one_sentence(info.value)
    with pytest.raises(BackendUnavailable, match='only the openvino backend runs on it'):
        create_backend('onnxruntime', MODEL, device='GPU.1', cache_dir=tmp_path)
    with pytest.raises(ValueError, match="openvino device must be 'cpu'"):
        OpenVINOBackend(tmp_path / 'missing.onnx', device='tpu')


def test_segmenter_passes_openvino_device_names_to_the_backend(tmp_path):
    """'NPU' / 'GPU.1' are valid Segmenter devices of the openvino backend, which answers for
    them (here: no such device); with any other backend the option check names the mix-up."""
    import openvino

    from tokenmask_ros.runtime import Segmenter

    available = openvino.Core().available_devices
    for device in ('NPU', 'gpu.1'):
        if any(d.upper() == device.upper() for d in available):
            continue
        with pytest.raises(BackendUnavailable, match='finds no'):
            Segmenter(MODEL, backend='openvino', device=device, cache_dir=tmp_path)
    for backend in ('onnxruntime', 'auto'):
        with pytest.raises(ValueError, match="use it with backend 'openvino'"):
            Segmenter(MODEL, backend=backend, device='NPU', cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"'GPU', 'GPU\.N' or 'NPU'"):
        Segmenter(MODEL, backend='openvino', device='tpu', cache_dir=tmp_path)


def test_auto_prefers_openvino_for_int8_on_x86_cpus_and_logs_why(cache, caplog, monkeypatch):
    """auto: int8 on x86-64 CPUs -> openvino; fp32 -> onnxruntime (measured faster there);
    other architectures -> onnxruntime, each skip logged with its reason."""
    assert 'openvino' in BACKENDS
    assert AUTO_ORDER.index('openvino') < AUTO_ORDER.index('onnxruntime')
    assert auto_skip_reason('cuda', 'int8') is not None
    assert auto_skip_reason('NPU') is None
    x86 = platform.machine().lower() in ('x86_64', 'amd64')
    with caplog.at_level(logging.INFO, 'tokenmask_ros.runtime'):
        backend = create_backend('auto', MODEL, device='cpu', precision='int8', cache_dir=cache)
    backend.close()
    assert backend.name == ('openvino' if x86 else 'onnxruntime')
    assert f'backend auto: using {backend.name} (cpu, int8' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, 'tokenmask_ros.runtime'):
        backend = create_backend('auto', MODEL, device='cpu', cache_dir=cache)
    backend.close()
    assert backend.name == 'onnxruntime'
    if x86:
        assert 'not trying openvino (auto prefers openvino on CPUs for int8 only' in caplog.text
    caplog.clear()
    monkeypatch.setattr(platform, 'machine', lambda: 'aarch64')
    with caplog.at_level(logging.INFO, 'tokenmask_ros.runtime'):
        backend = create_backend('auto', MODEL, device='cpu', precision='int8', cache_dir=cache)
    backend.close()
    assert backend.name == 'onnxruntime'
    assert 'not trying openvino (auto prefers openvino only on x86-64 CPUs' in caplog.text
    assert 'skipped openvino: auto prefers openvino only on x86-64' in caplog.text


def test_cli_predict_runs_the_openvino_backend(cache, tmp_path, capsys):
    from tokenmask_ros.image_io import write_rgb

    image = write_rgb(tmp_path / 'scene.png', scenes(1)[0])
    code = cli.main(['predict', str(image), '-o', str(tmp_path / 'out'), '--device', 'cpu',
                     '--backend', 'openvino', '--cache-dir', str(cache), '--no-overlay'])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert 'openvino (cpu, fp32' in (tmp_path / 'out' / 'predictions.json').read_text()


def test_node_parameters_accept_the_new_names():
    """The node validates backend / precision against the shared defaults only."""
    pytest.importorskip('rclpy')
    from tokenmask_ros.ros.segment_node import PARAMETERS, SegmentNode

    values = {name: param.default for name, param in PARAMETERS.items()}
    SegmentNode._check({**values, 'backend': 'openvino', 'precision': 'int8'})
    with pytest.raises(ValueError, match='backend must be one of'):
        SegmentNode._check({**values, 'backend': 'openvinox'})
