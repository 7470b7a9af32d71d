"""The deploy graph decodes only the best-scoring queries: same panoptic outputs as decoding
all K whenever the kept queries fit under the cap, a report when they do not, through torch
and through real ONNX Runtime sessions of exported graphs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tokenmask_ros.model import ClassInfo, TokenMaskConfig, build_model, load_checkpoint
from tokenmask_ros.model.postprocess import decode_panoptic
from tokenmask_ros.runtime.graph import DeployGraph
from tokenmask_ros.synthetic import SceneGenerator

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / 'models' / \
    'tokenmask_vit_tiny_synthetic.safetensors'

INPUT_SIZE = (64, 96)
CLASSES = (ClassInfo('floor', False), ClassInfo('wall', False), ClassInfo('disc'),
           ClassInfo('box'), ClassInfo('bar'))


def random_model(head: str, num_queries: int = 200, seed: int = 0) -> nn.Module:
    """A 3-block random model with K = ``num_queries`` (the paper's COCO setting), weights
    spread so that many queries score and win pixels."""
    torch.manual_seed(seed)
    config = TokenMaskConfig.from_preset(
        'tiny', img_size=INPUT_SIZE, embed_dim=32, depth=3, num_heads=2, num_query_blocks=2,
        num_queries=num_queries, num_classes=len(CLASSES), classes=CLASSES, head=head,
        upsample='logit' if head == 'tokenmask' else 'feature')
    model = build_model(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.add_(0.3 * torch.randn_like(module.weight))
        model.queries.weight.mul_(4)
    return model


def graph_inputs(image: np.ndarray, content=None, threshold: float = 0.8):
    height, width = image.shape[:2]
    content = content or (height, width)
    return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None],
            torch.tensor(content, dtype=torch.int32), torch.tensor([threshold]))


def threshold_keeping(graph: DeployGraph, inputs, count: int) -> float:
    """A score threshold that keeps exactly ``count`` queries (scores must differ there)."""
    outputs = graph(*inputs[:2], torch.tensor([0.0]))
    real_class = outputs.query_class[0] != len(CLASSES)  # not no-object
    ranked = torch.where(real_class, outputs.query_score[0], -1.0).sort(descending=True).values
    assert ranked[count - 1] > ranked[count], 'tied scores at the cut'
    return float((ranked[count - 1] + ranked[count]) / 2)


def assert_same_decoding(full, capped):
    """Every output equal; ``mask_area`` only for kept queries (others are not decoded)."""
    for name in ('segment_map', 'query_class', 'query_score', 'keep', 'won_area'):
        assert torch.equal(getattr(full, name), getattr(capped, name)), name
    keep = full.keep
    assert torch.equal(full.mask_area[keep], capped.mask_area[keep])


@pytest.mark.parametrize('head', ['tokenmask', 'eomt'])
def test_random_k200_model_decodes_identically_below_the_cap(head):
    model = random_model(head)
    rng = np.random.default_rng(1)
    full, capped = DeployGraph(model, None), DeployGraph(model, 32)
    assert full.decoded_queries == 200 and capped.decoded_queries == 32
    with torch.no_grad():
        for index, kept in enumerate((1, 12, 32)):
            image = rng.integers(0, 256, (*INPUT_SIZE, 3), dtype=np.uint8)
            inputs = graph_inputs(image, content=(INPUT_SIZE[0] - 8 * index, INPUT_SIZE[1]))
            threshold = threshold_keeping(full, inputs, kept)
            inputs = (*inputs[:2], torch.tensor([threshold]))
            reference, selected = full(*inputs), capped(*inputs)
            assert int(reference.keep.sum()) == kept
            assert (reference.segment_map >= 0).any()
            assert_same_decoding(reference, selected)


def test_bundled_model_decodes_identically_on_synthetic_scenes():
    model = load_checkpoint(BUNDLED_MODEL).eval()
    generator = SceneGenerator(*model.config.img_size, seed=7, stream=1)
    full, capped = DeployGraph(model, None), DeployGraph(model, 24)
    with torch.no_grad():
        for index in range(3):
            inputs = graph_inputs(generator.scene(index).image, threshold=0.5)
            reference = full(*inputs)
            assert 3 <= int(reference.keep.sum()) <= 24
            assert_same_decoding(reference, capped(*inputs))


def test_a_binding_cap_keeps_the_best_queries_and_drops_the_rest():
    model = random_model('tokenmask', num_queries=40)
    graph = DeployGraph(model, 4)
    image = np.random.default_rng(2).integers(0, 256, (*INPUT_SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        inputs = graph_inputs(image, threshold=0.0)
        outputs = graph(*inputs)
    keep = outputs.keep[0]
    assert int(keep.sum()) > 4  # the cap binds
    best = set(torch.where(keep, outputs.query_score[0], -1.0).topk(4).indices.tolist())
    winners = set(outputs.segment_map.unique().tolist()) - {-1}
    assert winners and winners <= best
    decoded = set(torch.nonzero(outputs.mask_area[0]).flatten().tolist())
    assert decoded <= best
    prediction = decode_panoptic(outputs, np.array([c.is_thing for c in CLASSES]))
    assert 0 < len(prediction.segments) <= 4


def test_decoded_queries_must_be_positive():
    with pytest.raises(ValueError, match='decoded_queries'):
        DeployGraph(random_model('tokenmask', num_queries=8), 0)
    assert DeployGraph(random_model('tokenmask', num_queries=8), 64).decoded_queries == 8


# --------------------------------------------------------------------------- exported graphs


@pytest.fixture(scope='module')
def k200_checkpoint(tmp_path_factory):
    from tokenmask_ros.model import save_checkpoint

    return save_checkpoint(random_model('tokenmask'),
                           tmp_path_factory.mktemp('k200') / 'k200.safetensors')


def test_onnx_runtime_capped_graph_equals_the_full_graph(k200_checkpoint, tmp_path):
    pytest.importorskip('onnxruntime')
    from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from tokenmask_ros.runtime.export import export_onnx, read_onnx_metadata

    model = load_checkpoint(k200_checkpoint)
    full_path = export_onnx(model, tmp_path / 'full.onnx', decoded_queries=None)
    capped_path = export_onnx(model, tmp_path / 'capped.onnx', decoded_queries=32)
    assert read_onnx_metadata(full_path)['decoded_queries'] == 200
    assert read_onnx_metadata(capped_path)['decoded_queries'] == 32
    full, capped = OnnxRuntimeBackend(full_path), OnnxRuntimeBackend(capped_path)
    assert capped.decoded_queries == 32
    image = np.random.default_rng(3).integers(0, 256, (1, 3, *INPUT_SIZE), dtype=np.uint8)
    content = np.array(INPUT_SIZE, np.int32)
    everything = full.run(image, content, 0.0)
    real_class = everything.query_class[0] != len(CLASSES)
    scores = np.sort(np.where(real_class, everything.query_score[0], -1))[::-1]
    threshold = float((scores[19] + scores[20]) / 2)  # 20 kept queries
    reference, selected = full.run(image, content, threshold), capped.run(image, content,
                                                                         threshold)
    assert int(reference.keep.sum()) == 20
    for name in ('segment_map', 'query_class', 'query_score', 'keep', 'won_area'):
        np.testing.assert_array_equal(getattr(reference, name), getattr(selected, name),
                                      err_msg=name)


def test_onnx_runtime_kept_selection_decodes_only_the_kept_queries(k200_checkpoint, tmp_path):
    """Selection 'kept' (a data-dependent TopK size in the export) gives the outputs of the
    full graph for 0, 1, 7 and 32 kept queries, and those of a fixed-cap graph."""
    pytest.importorskip('onnxruntime')
    import onnx

    from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from tokenmask_ros.runtime.export import export_onnx, read_onnx_metadata

    model = load_checkpoint(k200_checkpoint)
    paths = {name: export_onnx(model, tmp_path / f'{name}.onnx', decoded_queries=cap,
                               selection=selection)
             for name, cap, selection in (('full', None, 'fixed'), ('fixed', 32, 'fixed'),
                                          ('kept', 32, 'kept'))}
    assert read_onnx_metadata(paths['kept'])['selection'] == 'kept'
    top_k = [n for n in onnx.load(paths['kept']).graph.node if n.op_type == 'TopK']
    initializers = {t.name for t in onnx.load(paths['kept']).graph.initializer}
    assert any(n.input[1] not in initializers for n in top_k)  # K computed in the graph
    backends = {name: OnnxRuntimeBackend(path) for name, path in paths.items()}
    image = np.random.default_rng(5).integers(0, 256, (1, 3, *INPUT_SIZE), dtype=np.uint8)
    content = np.array(INPUT_SIZE, np.int32)
    everything = backends['full'].run(image, content, 0.0)
    real_class = everything.query_class[0] != len(CLASSES)
    scores = np.sort(np.where(real_class, everything.query_score[0], -1))[::-1]
    for kept in (0, 1, 7, 32):
        threshold = 1.0 if kept == 0 else float((scores[kept - 1] + scores[kept]) / 2)
        outputs = {name: b.run(image, content, threshold) for name, b in backends.items()}
        assert int(outputs['full'].keep.sum()) == kept
        for name in ('fixed', 'kept'):
            for field in ('segment_map', 'query_class', 'query_score', 'keep', 'won_area',
                          'mask_area'):
                np.testing.assert_array_equal(getattr(outputs['full'], field),
                                              getattr(outputs[name], field),
                                              err_msg=f'{name} {field} ({kept} kept)')


def test_segmenter_reports_a_binding_cap(k200_checkpoint, tmp_path, caplog):
    pytest.importorskip('onnxruntime')
    from tokenmask_ros.runtime import Segmenter
    from tokenmask_ros.runtime.export import export_onnx

    path = export_onnx(load_checkpoint(k200_checkpoint), tmp_path / 'cap4.onnx',
                       decoded_queries=4)
    image = np.random.default_rng(4).integers(0, 256, (*INPUT_SIZE, 3), dtype=np.uint8)
    with Segmenter(path, backend='onnxruntime', score_threshold=0.01) as segmenter, \
            caplog.at_level(logging.WARNING, logger='tokenmask_ros.runtime'):
        for _ in range(3):
            prediction = segmenter(image)
    assert segmenter.capped_frames == 3
    warnings = [r for r in caplog.records if 'decodes the best 4' in r.getMessage()]
    assert len(warnings) == 1  # the 1st frame; then the 10th, 100th, ...
    assert len(prediction.segments) <= 4
