"""ONNX Runtime's fused attention on CPU: every attention block of a tokenmask export becomes
onnxruntime's ``MultiHeadAttention`` kernel in the session, the outputs stay those of the
file's own graph, and chains that differ are left as they are. Real exports, real ONNX
Runtime sessions."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

from conftest import save_tiny_checkpoint  # noqa: E402

from tokenmask_ros.bundled import resolve_model_path  # noqa: E402
from tokenmask_ros.model import load_checkpoint  # noqa: E402
from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from tokenmask_ros.runtime.export import cached_onnx, export_onnx  # noqa: E402
from tokenmask_ros.runtime.ort_attention import fuse_attention  # noqa: E402
from tokenmask_ros.runtime.preprocess import letterbox  # noqa: E402
from tokenmask_ros.synthetic import SceneGenerator  # noqa: E402

MODEL = resolve_model_path(None)
THRESHOLD = 0.8
EXACT = ('segment_map', 'query_class', 'keep', 'mask_area', 'won_area')


@pytest.fixture(scope='module')
def bundled_fp32(tmp_path_factory):
    return cached_onnx(MODEL, 'fp32', tmp_path_factory.mktemp('cache'))


def assert_same_panoptic_output(actual, expected) -> None:
    """Segments exactly equal; scores equal up to the float rounding of another summation order."""
    for name in EXACT:
        np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name),
                                      err_msg=name)
    np.testing.assert_allclose(actual.query_score, expected.query_score, atol=1e-5)


def attention_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type == 'MultiHeadAttention']


def test_every_block_of_the_bundled_export_is_fused_with_the_heads_and_scale_of_the_model(
        bundled_fp32):
    network = load_checkpoint(MODEL)
    blocks = len(network.backbone.blocks)
    attention = network.backbone.blocks[0].attn
    model = onnx.load(str(bundled_fp32))
    before = Counter(n.op_type for n in model.graph.node)
    assert fuse_attention(model) == blocks
    after = Counter(n.op_type for n in model.graph.node)
    assert after['MultiHeadAttention'] == blocks
    assert before['Softmax'] - after['Softmax'] == blocks  # the decoding's softmax stays
    for node in attention_nodes(model):
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert node.domain == 'com.microsoft'
        assert attributes['num_heads'] == attention.num_heads
        assert attributes['scale'] == pytest.approx(1 / math.sqrt(attention.head_dim), rel=1e-6)
    assert not [c for c in model.graph.node if c.op_type == 'Constant'
                and not any(c.output[0] in n.input for n in model.graph.node)], \
        'constants of the removed chains are left behind'


def test_the_fused_session_gives_the_outputs_of_the_files_graph_on_synthetic_scenes(
        bundled_fp32):
    on_disk = bundled_fp32.read_bytes()
    fused = OnnxRuntimeBackend(bundled_fp32, 'cpu')
    assert bundled_fp32.read_bytes() == on_disk  # the rewrite lives in the session only
    plain = OnnxRuntimeBackend(bundled_fp32, 'cpu', fuse_attention=False)
    assert fused.fused_attention == len(load_checkpoint(MODEL).backbone.blocks)
    assert plain.fused_attention == 0
    generator = SceneGenerator(480, 640, seed=5)
    try:
        for index in range(4):
            canvas, box = letterbox(generator.scene(index).image, fused.input_size)
            content = np.array(box.content_size, np.int32)
            expected = plain.run(canvas, content, THRESHOLD)
            actual = fused.run(canvas, content, THRESHOLD)
            assert expected.keep.sum() >= 3, 'too few segments to compare'
            assert_same_panoptic_output(actual, expected)
    finally:
        fused.close()
        plain.close()


def test_a_chain_whose_scores_are_read_elsewhere_is_left_alone(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.safetensors', depth=3)
    path = export_onnx(load_checkpoint(checkpoint), tmp_path / 'tiny.onnx')
    model = onnx.load(str(path))
    softmax = next(n for n in model.graph.node if n.op_type == 'Softmax')
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(softmax.output[0]))
    assert fuse_attention(model) == 2  # of 3 blocks: the first one's probabilities are an output
    assert softmax in model.graph.node


def test_fp16_exports_keep_their_fp32_scores_and_run_unfused(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.safetensors')
    path = export_onnx(load_checkpoint(checkpoint), tmp_path / 'tiny16.onnx', fp16=True)
    assert fuse_attention(onnx.load(str(path))) == 0  # the Cast islands break the chain
    backend = OnnxRuntimeBackend(path, 'cpu')
    try:
        assert backend.fused_attention == 0
        image = np.zeros((1, 3, *backend.input_size), np.uint8)
        result = backend.run(image, np.array(backend.input_size, np.int32), 0.5)
        assert result.segment_map.shape == (1, *backend.input_size)
    finally:
        backend.close()


def test_batched_exports_are_fused_and_every_image_keeps_its_output(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.safetensors', depth=2)
    path = export_onnx(load_checkpoint(checkpoint), tmp_path / 'tiny_b2.onnx', batch=2)
    fused = OnnxRuntimeBackend(path, 'cpu')
    plain = OnnxRuntimeBackend(path, 'cpu', fuse_attention=False)
    try:
        assert (fused.fused_attention, fused.batch) == (2, 2)
        images = np.random.default_rng(3).integers(0, 256, (2, 3, *fused.input_size), np.uint8)
        content = np.array([fused.input_size, (40, 48)], np.int32)
        expected, actual = plain.run(images, content, 0.0), fused.run(images, content, 0.0)
        assert expected.keep.any(axis=1).all(), "every image should keep a query"
        assert_same_panoptic_output(actual, expected)
    finally:
        fused.close()
        plain.close()
