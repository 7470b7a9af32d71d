"""Calibrated INT8 exports of the bundled model: the QDQ graph (which ops are quantized, which
stay float), its metadata, agreement with fp32 on ONNX Runtime and OpenVINO, cache names,
the ``tokenmask export --int8`` command and the backends that refuse int8. CPU only."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

from tokenmask_ros import cli  # noqa: E402
from tokenmask_ros.bundled import resolve_model_path  # noqa: E402
from tokenmask_ros.image_io import write_rgb  # noqa: E402
from tokenmask_ros.runtime import Segmenter  # noqa: E402
from tokenmask_ros.runtime.backends import BackendUnavailable, create_backend  # noqa: E402
from tokenmask_ros.runtime.export import cached_onnx, read_onnx_metadata  # noqa: E402
from tokenmask_ros.runtime.quantize import (  # noqa: E402
    CalibrationError,
    calibration_key,
    weighted_nodes,
)
from tokenmask_ros.synthetic import SceneGenerator  # noqa: E402

MODEL = resolve_model_path(None)
FLOAT_OPS = ('Softmax', 'LayerNormalization', 'Resize', 'Sigmoid', 'ArgMax', 'TopK',
             'ReduceMax', 'ReduceSum', 'Erf')


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='module')
def exports(cache):
    return {'fp32': cached_onnx(MODEL, 'fp32', cache),
            'int8': cached_onnx(MODEL, 'int8', cache, calibration='synthetic:8')}


def scenes(count: int = 4) -> list[np.ndarray]:
    """Evaluation scenes: stream 0 (calibration draws stream 7), another seed."""
    generator = SceneGenerator(480, 640, seed=21)
    return [generator.scene(index).image for index in range(count)]


def test_int8_graph_quantizes_the_weighted_layers_only(exports):
    fp32, int8 = onnx.load(exports['fp32']), onnx.load(exports['int8'])
    onnx.checker.check_model(int8)
    graph = int8.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ops = [n.op_type for n in graph.node]
    assert ops.count('QuantizeLinear') > 40 and ops.count('DequantizeLinear') > 90

    def fed_by_dequantize(node) -> bool:
        return any(getattr(producer.get(i), 'op_type', '') == 'DequantizeLinear'
                   for i in node.input)

    quantized = sorted(n.name for n in graph.node if fed_by_dequantize(n))
    layers = sorted(weighted_nodes(fp32))
    # ViT-Tiny: 12 blocks x (qkv, proj, fc1, fc2) + patch Conv + class head + 3 mask MLP.
    assert len(layers) == 12 * 4 + 1 + 1 + 3
    assert quantized == layers
    # One QuantizeLinear per distinct layer input (the class head and the mask MLP share
    # theirs), and every one feeds layers only, through DequantizeLinear.
    inputs = {producer[producer[n.input[0]].input[0]].input[0]
              for n in graph.node if n.name in layers}
    assert ops.count('QuantizeLinear') == len(inputs)
    for node in graph.node:
        if node.op_type == 'QuantizeLinear':
            (dequantize,) = consumers[node.output[0]]
            assert {c.name for c in consumers[dequantize.output[0]]} <= set(layers)
    for node in graph.node:
        if node.op_type in FLOAT_OPS:  # computed in float from float inputs
            assert not fed_by_dequantize(node), node.name
        # A LayerNorm's output is a layer's input, so it is quantized after the LayerNorm;
        # attention probabilities and the decoding are never quantized.
        if node.op_type in FLOAT_OPS and node.op_type != 'LayerNormalization':
            for output in node.output:
                assert all(c.op_type != 'QuantizeLinear' for c in consumers.get(output, [])), \
                    node.name
    attention = [n for n in graph.node if n.op_type == 'MatMul' and n.name not in layers]
    assert len(attention) == 12 * 2 + 1  # q @ k^T and p @ v per block, the mask head product
    assert not any(fed_by_dequantize(n) for n in attention)
    # Weights are int8, one scale per output channel.
    initializers = {t.name: t for t in graph.initializer}
    qkv = next(n for n in graph.node if n.name == '/blocks.0/attn/qkv/MatMul')
    weight = producer[qkv.input[1]]
    assert weight.op_type == 'DequantizeLinear'
    assert initializers[weight.input[0]].data_type == onnx.TensorProto.INT8
    assert list(initializers[weight.input[1]].dims) == [3 * 192]


def test_int8_metadata_keeps_the_export_and_says_int8(exports):
    fp32, int8 = read_onnx_metadata(exports['fp32']), read_onnx_metadata(exports['int8'])
    assert int8['precision'] == 'int8'
    for key in ('input_size', 'batch', 'decoded_queries', 'opset'):
        assert int8[key] == fp32[key], key
    props = {p.key: p.value for p in onnx.load(exports['int8']).metadata_props}
    assert props['calibration'] == 'synthetic8'
    assert 'QDQ' in props['quantization'] and 'per-channel' in props['quantization']
    assert json.loads(props['config'])['num_queries'] == 40


@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_int8_predictions_agree_with_fp32_on_most_pixels(exports, cache, backend):
    if backend == 'openvino':
        pytest.importorskip('openvino')
    reference = Segmenter(exports['fp32'], 'onnxruntime', 'cpu', cache_dir=cache)
    int8 = Segmenter(exports['int8'], backend, 'cpu', 'int8', cache_dir=cache)
    try:
        assert int8.backend.precision == 'int8'
        agreement, differs = [], False
        for image in scenes():
            expected, actual = reference(image), int8(image)
            agreement.append(float((expected.panoptic == actual.panoptic).mean()))
            differs |= [s.score for s in expected.segments] != [s.score for s in actual.segments]
        assert min(agreement) >= 0.9, agreement
        assert differs, 'the int8 graph computed exactly the fp32 scores: nothing quantized?'
    finally:
        reference.close()
        int8.close()


def test_precision_int8_flows_through_create_backend_with_its_own_cache_entry(exports, cache):
    backend = create_backend('onnxruntime', MODEL, device='cpu', precision='int8',
                             cache_dir=cache, calibration='synthetic:8')
    try:
        assert backend.precision == 'int8' and backend.path == exports['int8']
    finally:
        backend.close()
    names = {p.name for p in cache.glob('*.onnx')}
    assert exports['fp32'].name in names and exports['int8'].name in names
    assert exports['fp32'].name.endswith('-fp32.onnx')
    assert exports['int8'].name.endswith('-int8-synthetic8.onnx')
    assert exports['int8'].with_suffix('.json').is_file()  # checksum sidecar, like fp32


def test_calibration_keys_name_the_source(tmp_path):
    generator = SceneGenerator(48, 64, seed=0)
    for index in range(2):
        write_rgb(tmp_path / f'{index}.png', generator.scene(index).image)
    assert calibration_key('synthetic:8') == 'synthetic8' != calibration_key(16)
    before = calibration_key(tmp_path)
    assert before.startswith('images-') and len(before) == len('images-') + 12
    write_rgb(tmp_path / '1.png', generator.scene(5).image)
    assert calibration_key(tmp_path) != before
    with pytest.raises(CalibrationError, match='calibration folder not found'):
        calibration_key(tmp_path / 'missing')
    with pytest.raises(CalibrationError, match='1 to 1000 scenes'):
        calibration_key('synthetic:0')


def test_openvino_caches_int8_and_fp32_compilations_apart(exports, tmp_path):
    pytest.importorskip('openvino')
    from tokenmask_ros.runtime.backends.openvino_backend import OpenVINOBackend

    OpenVINOBackend(exports['fp32'], 'cpu', cache_dir=tmp_path).close()
    first = set((tmp_path / 'openvino').iterdir())
    backend = OpenVINOBackend(exports['int8'], 'cpu', cache_dir=tmp_path)
    assert backend.describe().startswith('openvino (cpu, int8')
    backend.close()
    assert len(set((tmp_path / 'openvino').iterdir()) - first) == 1


@pytest.mark.parametrize('backend', ['torch', 'tensorrt'])
def test_backends_without_int8_refuse_it_in_one_sentence(backend, tmp_path):
    with pytest.raises(BackendUnavailable, match='int8 runs as a calibrated ONNX export'):
        create_backend(backend, MODEL, device='cpu', precision='int8', cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_cli_export_int8_from_a_folder_of_images(tmp_path, capsys):
    images = tmp_path / 'calibration'
    images.mkdir()
    generator = SceneGenerator(480, 640, seed=3, stream=2)
    for index in range(3):
        write_rgb(images / f'frame{index}.jpg', generator.scene(index).image)
    output = tmp_path / 'model_int8.onnx'
    code = cli.main(['export', str(MODEL), '--int8', '--calibration', str(images),
                     '-o', str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert 'exported tokenmask_vit_tiny_synthetic.safetensors (int8' in captured.out
    props = {p.key: p.value for p in onnx.load(output).metadata_props}
    assert props['precision'] == 'int8' and props['calibration'] == calibration_key(images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['calibration', 'model_int8.onnx']


@pytest.mark.parametrize(('args', 'message'), [
    (['--int8'], '--int8 needs --calibration DIR'),
    (['--synthetic', '4'], 'only apply to --int8'),
    (['--int8', '--fp16', '--synthetic', '4'], '--int8 and --fp16 exclude each other'),
])
def test_cli_export_int8_argument_errors(args, message, tmp_path, capsys):
    code = cli.main(['export', str(MODEL), '-o', str(tmp_path / 'x.onnx'), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count('\n') == 1, err
    assert not (tmp_path / 'x.onnx').exists()


def test_cli_export_int8_with_an_empty_calibration_folder_fails_in_one_line(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    code = cli.main(['export', str(MODEL), '--int8', '--calibration', str(tmp_path / 'empty'),
                     '-o', str(tmp_path / 'x.onnx')])
    err = capsys.readouterr().err
    assert code == 1 and 'calibration folder' in err and err.count('\n') == 1, err
    assert not (tmp_path / 'x.onnx').exists()


def test_an_int8_export_of_an_older_recipe_is_quantized_again(exports, cache, caplog):
    import logging

    sidecar = exports['int8'].with_suffix('.json')
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, 'quantize_recipe': 1}))
    with caplog.at_level(logging.WARNING, 'tokenmask_ros.runtime'):
        again = cached_onnx(MODEL, 'int8', cache, calibration='synthetic:8')
    assert again == exports['int8']
    assert 'was made with quantize_recipe 1, not 2' in caplog.text
    assert json.loads(sidecar.read_text())['quantize_recipe'] == 2
    assert read_onnx_metadata(again)['precision'] == 'int8'
