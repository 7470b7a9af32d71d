"""ONNX export and the onnxruntime backend: parity with PyTorch, the FP16 islands, metadata
and the export cache. Tiny random models (3-block ViT at 64x96), CPU only."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

from tokenmask_ros.model import ClassInfo, TokenMaskConfig, build_model, save_checkpoint  # noqa: E402
from tokenmask_ros.runtime import Segmenter  # noqa: E402
from tokenmask_ros.runtime.backends import BackendUnavailable  # noqa: E402
from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from tokenmask_ros.runtime.export import (  # noqa: E402
    ExportError,
    cached_onnx,
    default_export_dir,
    export_module,
    export_onnx,
    fp16_model,
    read_onnx_config,
    read_onnx_metadata,
)
from tokenmask_ros.runtime.graph import DeployGraph  # noqa: E402
from tokenmask_ros.runtime.preprocess import letterbox  # noqa: E402
from tokenmask_ros.synthetic import SceneGenerator  # noqa: E402

INPUT_SIZE = (64, 96)
THRESHOLD = 0.1  # random models: low, so that queries are kept and the maps are non-trivial
CLASSES = (ClassInfo('floor', False), ClassInfo('wall', False), ClassInfo('disc'),
           ClassInfo('box'), ClassInfo('bar'))


UPSAMPLE = {'tokenmask': 'logit', 'eomt': 'feature', 'subpatch': 'subpatch'}


def tiny_config(head: str) -> TokenMaskConfig:
    """``head`` 'tokenmask', 'eomt' or 'subpatch' (the TokenMask head with sub-queries)."""
    return TokenMaskConfig.from_preset(
        'tiny', img_size=INPUT_SIZE, embed_dim=32, depth=3, num_heads=2, num_query_blocks=2,
        num_queries=8, num_classes=len(CLASSES), classes=CLASSES,
        head='eomt' if head == 'eomt' else 'tokenmask', upsample=UPSAMPLE[head])


def random_model(head: str, seed: int = 0) -> nn.Module:
    """Random weights spread wider than timm's initialisation, so that several queries win
    pixels; LayerNorm affines randomised too (they start as ones / zeros)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(head)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.add_(0.2 * torch.randn_like(module.weight))
            elif isinstance(module, nn.LayerNorm):
                module.weight.mul_(1 + 0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
        model.backbone.pos_embed.add_(torch.randn_like(model.backbone.pos_embed))
    return model


class LogitsGraph(nn.Module):
    """The deployed graph's model part only: uint8 image -> raw class and mask logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, image: torch.Tensor):
        output = self.model(image.to(self.model.pixel_mean.dtype) / 255)
        return output.class_logits.float(), output.mask_logits.float()


def export_logits(model: nn.Module, path, fp16: bool = False):
    graph = LogitsGraph(fp16_model(model) if fp16 else model)
    image = torch.zeros((1, 3, *INPUT_SIZE), dtype=torch.uint8)
    return export_module(graph, (image,), path, input_names=('image',),
                         output_names=('class_logits', 'mask_logits'))


def session(path):
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def scene_canvases(count: int = 3):
    """Letterboxed synthetic scenes (3:4, so there is padding) with their content sizes."""
    generator = SceneGenerator(120, 160, seed=3)
    return [letterbox(generator.scene(i).image, INPUT_SIZE) for i in range(count)]


def extreme_canvases():
    rng = np.random.default_rng(0)
    shape = (1, 3, *INPUT_SIZE)
    return {'black': np.zeros(shape, np.uint8), 'white': np.full(shape, 255, np.uint8),
            'noise': rng.integers(0, 256, shape, dtype=np.uint8)}


@pytest.fixture(scope='module', params=['tokenmask', 'eomt', 'subpatch'])
def exported(request, tmp_path_factory):
    """One random model per head with its four exports (panoptic / logits x fp32 / fp16)."""
    head = request.param
    folder = tmp_path_factory.mktemp(head)
    model = random_model(head)
    return {
        'head': head,
        'model': model,
        'fp32': export_onnx(model, folder / 'fp32.onnx'),
        'fp16': export_onnx(model, folder / 'fp16.onnx', fp16=True),
        'logits_fp32': export_logits(model, folder / 'logits_fp32.onnx'),
        'logits_fp16': export_logits(model, folder / 'logits_fp16.onnx', fp16=True),
    }


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


# --- FP32: onnxruntime == PyTorch ----------------------------------------------------

def test_onnxruntime_logits_match_pytorch(exported):
    model, logits = exported['model'], session(exported['logits_fp32'])
    for canvas, _ in scene_canvases():
        with torch.no_grad():
            expected = model(torch.from_numpy(canvas).float() / 255)
        class_logits, mask_logits = logits.run(None, {'image': canvas})
        np.testing.assert_allclose(class_logits, expected.class_logits.numpy(),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(mask_logits, expected.mask_logits.numpy(),
                                   rtol=1e-4, atol=1e-4)
        assert relative_error(mask_logits, expected.mask_logits.numpy()) < 1e-5


def test_onnxruntime_compact_outputs_match_pytorch(exported):
    graph, backend = DeployGraph(exported['model']), OnnxRuntimeBackend(exported['fp32'])
    assert (backend.precision, backend.input_size) == ('fp32', INPUT_SIZE)
    for canvas, box in scene_canvases():
        content = np.array(box.content_size, np.int32)
        with torch.no_grad():
            expected = graph(torch.from_numpy(canvas), torch.from_numpy(content),
                             torch.tensor([THRESHOLD]))
        actual = backend.run(canvas, content, THRESHOLD)
        segment_map = expected.segment_map.numpy()
        assert len(np.unique(segment_map[segment_map >= 0])) >= 2, 'trivial segment map'
        assert (segment_map[0, box.content_size[0]:] == -1).all()  # padding is never labelled
        assert (actual.segment_map == segment_map).mean() >= 0.999
        np.testing.assert_array_equal(actual.query_class, expected.query_class.numpy())
        np.testing.assert_array_equal(actual.keep, expected.keep.numpy())
        np.testing.assert_allclose(actual.query_score, expected.query_score.numpy(), atol=1e-5)
        tolerance = max(2, segment_map.size // 1000)
        np.testing.assert_allclose(actual.mask_area, expected.mask_area.numpy(), atol=tolerance)
        np.testing.assert_allclose(actual.won_area, expected.won_area.numpy(), atol=tolerance)


# --- FP16 ------------------------------------------------------------------------------

def test_fp16_export_is_half_precision_with_fp32_islands(exported):
    """Weights are float16 except the LayerNorm affines; LayerNorm, attention scores and
    every softmax compute in float32 (types from ONNX shape inference)."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(exported['fp16']), strict_mode=True)
    graph, float32, float16 = proto.graph, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    elements = {float32: 0, float16: 0}
    for tensor in graph.initializer:
        if tensor.data_type in elements:
            elements[tensor.data_type] += int(np.prod(tensor.dims))
        if tensor.data_type == float32:
            assert 'norm' in tensor.name and list(tensor.dims) == [32], tensor.name
    assert elements[float16] > 100 * elements[float32]
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})

    def input_types(op):
        return [types[n.input[0]] for n in graph.node if n.op_type == op]

    depth = exported['model'].config.depth
    layer_norms = 2 * depth + 1 + (2 if exported['head'] == 'eomt' else 0)
    assert input_types('LayerNormalization') == [float32] * layer_norms
    # attention, the class softmax, and that of the decoded queries (graph.py selects them)
    assert input_types('Softmax') == [float32] * (depth + 2)
    assert sorted(input_types('MatMul')).count(float32) == depth  # q @ k^T only
    assert float16 in input_types('MatMul')
    assert {types[i.name] for i in graph.input} == {onnx.TensorProto.UINT8,
                                                    onnx.TensorProto.INT32, float32}


def test_fp16_export_is_nan_free_and_close_to_fp32(exported):
    model, fp16 = exported['model'], session(exported['logits_fp16'])
    images = {**extreme_canvases(), **{f'scene{i}': c for i, (c, _) in
                                       enumerate(scene_canvases())}}
    for name, canvas in images.items():
        with torch.no_grad():
            expected = model(torch.from_numpy(canvas).float() / 255)
        class_logits, mask_logits = fp16.run(None, {'image': canvas})
        assert np.isfinite(class_logits).all() and np.isfinite(mask_logits).all(), name
        assert relative_error(class_logits, expected.class_logits.numpy()) < 1e-2, name
        assert relative_error(mask_logits, expected.mask_logits.numpy()) < 1e-2, name
    backend32 = OnnxRuntimeBackend(exported['fp32'])
    backend16 = OnnxRuntimeBackend(exported['fp16'])
    assert backend16.precision == 'fp16'
    for canvas, box in scene_canvases():
        content = np.array(box.content_size, np.int32)
        reference, actual = (b.run(canvas, content, THRESHOLD) for b in (backend32, backend16))
        assert np.isfinite(actual.query_score).all()
        assert (actual.segment_map == reference.segment_map).mean() >= 0.99
        np.testing.assert_allclose(actual.query_score, reference.query_score, atol=2e-3)


def test_fp32_attention_scores_survive_what_overflows_in_fp16():
    """The island's reason: q @ k^T beyond 65504 is inf in float16 and the softmax NaN."""
    model = random_model('tokenmask')
    with torch.no_grad():
        for block in model.backbone.blocks:  # large query / key projections
            block.attn.qkv.weight[:64] = 40 * torch.randn(64, 32)
    image = torch.from_numpy(extreme_canvases()['noise'])
    plain = copy.deepcopy(model).half()
    for block in plain.backbone.blocks:
        block.attn.fused_attn = False  # scores as the exported graph computes them
    with torch.no_grad():
        reference = model(image.float() / 255).mask_logits
        overflowing = plain(image.half() / 255).mask_logits
        islands = fp16_model(model)(image.half() / 255).mask_logits.float()
    assert not torch.isfinite(overflowing).all()
    assert torch.isfinite(islands).all()
    assert (islands - reference).abs().max() < 2e-2 * reference.abs().max()
    assert model.backbone.blocks[0].attn.qkv.weight.dtype == torch.float32  # copied, not changed


# --- Segmenter end to end ----------------------------------------------------------------

def test_segmenter_onnxruntime_matches_torch_end_to_end(tmp_path):
    checkpoint = save_checkpoint(random_model('tokenmask', seed=2), tmp_path / 'model.safetensors')
    image = SceneGenerator(479, 641, seed=5).scene(0).image  # odd size: 641 x 479
    options = {'device': 'cpu', 'precision': 'fp32', 'score_threshold': THRESHOLD,
               'overlap_threshold': 0.2, 'cache_dir': tmp_path / 'cache'}
    with Segmenter(checkpoint, backend='torch', **options) as torch_segmenter, \
            Segmenter(checkpoint, backend='onnxruntime', **options) as ort_segmenter:
        assert ort_segmenter.backend.name == 'onnxruntime'
        expected, actual = torch_segmenter(image), ort_segmenter(image)
    assert actual.panoptic.shape == image.shape[:2]
    assert len(expected.segments) >= 3, 'trivial prediction'
    assert (actual.panoptic == expected.panoptic).mean() >= 0.999
    assert [(s.id, s.class_id, s.is_thing) for s in actual.segments] == \
        [(s.id, s.class_id, s.is_thing) for s in expected.segments]
    for ours, theirs in zip(actual.segments, expected.segments, strict=True):
        assert ours.score == pytest.approx(theirs.score, abs=1e-5)
        assert abs(ours.area - theirs.area) <= max(2, theirs.area // 1000)


# --- metadata, refusals, cache -------------------------------------------------------------

def test_metadata_round_trip_and_model_left_unchanged(tmp_path):
    model = random_model('eomt').train()
    path = export_onnx(model, tmp_path / 'model.onnx', fp16=True, opset=20)
    assert read_onnx_config(path) == model.config
    metadata = read_onnx_metadata(path)
    assert {k: metadata[k] for k in ('format_version', 'precision', 'input_size', 'batch',
                                     'opset')} == {'format_version': '1', 'precision': 'fp16',
                                                   'input_size': INPUT_SIZE, 'batch': 1,
                                                   'opset': 20}
    assert onnx.load(path).opset_import[0].version == 20
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert sorted(os.listdir(tmp_path)) == ['model.onnx']  # no temp file left behind


def test_foreign_onnx_files_are_refused_by_name(tmp_path):
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node('Identity', ['x'], ['y'])], 'foreign',
        [helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / 'foreign.onnx'
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)],
                                ir_version=8), path)
    with pytest.raises(ExportError, match=r'foreign\.onnx.*not a tokenmask export'):
        read_onnx_config(path)
    with pytest.raises(ExportError, match='not a tokenmask export'):
        OnnxRuntimeBackend(path)
    (tmp_path / 'garbage.onnx').write_bytes(b'\xffnot a protobuf')
    with pytest.raises(ExportError, match=r'garbage\.onnx'):
        read_onnx_metadata(tmp_path / 'garbage.onnx')


@pytest.mark.parametrize('opset', [17, 23])
def test_opsets_outside_18_to_20_are_refused(tmp_path, opset):
    with pytest.raises(ValueError, match='opset'):
        export_onnx(random_model('tokenmask'), tmp_path / 'model.onnx', opset=opset)
    assert not list(tmp_path.iterdir())


def test_cuda_without_a_cuda_provider_is_unavailable(exported):
    if 'CUDAExecutionProvider' in ort.get_available_providers():
        pytest.skip('this onnxruntime has a CUDA provider')
    with pytest.raises(BackendUnavailable, match='CUDAExecutionProvider'):
        OnnxRuntimeBackend(exported['fp32'], device='cuda')


def test_cached_onnx_reuses_its_export_and_keys_it_on_the_checkpoint(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(random_model('tokenmask'), tmp_path / 'model.safetensors')
    cache = tmp_path / 'cache'
    first = cached_onnx(checkpoint, 'fp32', cache)
    assert first.parent == cache and first.name.startswith('model-')
    assert first.name.endswith('-64x96-fp32.onnx')
    modified = first.stat().st_mtime_ns
    assert cached_onnx(checkpoint, 'fp32', cache) == first
    assert first.stat().st_mtime_ns == modified
    assert cached_onnx(first, 'fp16') == first  # an ONNX file is used as it is
    save_checkpoint(random_model('tokenmask', seed=7), checkpoint)
    second = cached_onnx(checkpoint, 'fp32', cache)
    assert second != first and second.is_file()
    assert sorted(p.name for p in cache.glob('*.onnx')) == sorted([first.name, second.name])
    monkeypatch.setenv('TOKENMASK_CACHE_DIR', str(tmp_path / 'elsewhere'))
    assert default_export_dir() == tmp_path / 'elsewhere'
