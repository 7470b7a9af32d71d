"""TokenMask and EoMT heads: the maths of the paper, shapes, presets and masked attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenmask_ros.model import PRESETS, TokenMaskConfig, build_model
from tokenmask_ros.model.heads import EoMTHead, ScaleBlock, TokenMaskHead


def tiny_config(**overrides) -> TokenMaskConfig:
    """A 2-block ViT at 64x64: small enough for every test, still the real architecture."""
    values = {'backbone': 'vit_tiny_patch16_224', 'img_size': 64, 'embed_dim': 32, 'depth': 2,
              'num_heads': 2, 'num_queries': 6, 'num_query_blocks': 1, 'num_classes': 4}
    values.update(overrides)
    return TokenMaskConfig(**values)


@pytest.fixture()
def images():
    torch.manual_seed(0)
    return torch.rand(2, 3, 64, 64)


# --- the paper's equations ---------------------------------------------------------

def test_token_space_scores_equal_the_image_space_dot_product():
    """Eq. (7)-(10): one GEMM on tokens == reshape to a map, then the einsum of EoMT."""
    torch.manual_seed(1)
    batch, queries, dim, grid = 2, 5, 16, (3, 4)
    mask_embed = torch.randn(batch, queries, dim, dtype=torch.float64)
    tokens = torch.randn(batch, grid[0] * grid[1], dim, dtype=torch.float64)
    token_space = TokenMaskHead(grid, patch_size=16, output_stride=16)(mask_embed, tokens)
    feature_map = tokens.transpose(1, 2).reshape(batch, dim, *grid)
    image_space = torch.einsum('bqc,bchw->bqhw', mask_embed, feature_map)
    torch.testing.assert_close(token_space, image_space, rtol=0, atol=1e-12)


@pytest.mark.parametrize('output_stride', [1, 4, 8])
def test_logit_upsampling_equals_feature_upsampling_then_dot_product(output_stride):
    """Eq. (11): bilinear interpolation is linear, so it commutes with the dot product."""
    torch.manual_seed(2)
    grid, dim = (4, 5), 24
    mask_embed = torch.randn(1, 7, dim, dtype=torch.float64)
    tokens = torch.randn(1, grid[0] * grid[1], dim, dtype=torch.float64)
    logit_space = TokenMaskHead(grid, 16, output_stride)(mask_embed, tokens)
    feature_map = tokens.transpose(1, 2).reshape(1, dim, *grid)
    upsampled = F.interpolate(feature_map, scale_factor=16 // output_stride, mode='bilinear',
                              align_corners=False)
    feature_space = torch.einsum('bqc,bchw->bqhw', mask_embed, upsampled)
    assert logit_space.shape[-2:] == (grid[0] * 16 // output_stride, grid[1] * 16 // output_stride)
    torch.testing.assert_close(logit_space, feature_space, rtol=0, atol=1e-10)


def test_eomt_head_without_scale_blocks_is_the_tokenmask_head_at_the_patch_grid():
    """Only the learned upscale differs between the heads."""
    torch.manual_seed(3)
    mask_embed, tokens = torch.randn(2, 4, 8), torch.randn(2, 12, 8)
    eomt = EoMTHead(8, (3, 4), patch_size=16, output_stride=16)
    assert len(eomt.upscale) == 0
    torch.testing.assert_close(eomt(mask_embed, tokens),
                               TokenMaskHead((3, 4), 16, 16)(mask_embed, tokens))


def test_subpatch_head_starts_as_nearest_upsampling_of_the_patch_grid_logits():
    """Identity sub-queries: every position inside a patch scores like the patch itself."""
    torch.manual_seed(4)
    grid, dim = (3, 4), 8
    mask_embed = torch.randn(2, 5, dim, dtype=torch.float64)
    tokens = torch.randn(2, grid[0] * grid[1], dim, dtype=torch.float64)
    head = TokenMaskHead(grid, 16, 4, dim, 'subpatch').double()
    patch_grid = TokenMaskHead(grid, 16, 16)(mask_embed, tokens)
    expected = F.interpolate(patch_grid, scale_factor=4, mode='nearest')
    torch.testing.assert_close(head(mask_embed, tokens), expected, rtol=0, atol=1e-12)


def test_subpatch_logit_of_a_pixel_is_its_sub_query_scored_against_its_patch_token():
    """Pixel (y*r + i, x*r + j) = <W_(i, j) e_q, x_(y, x)>: the pixel-shuffle order."""
    torch.manual_seed(5)
    grid, dim, r = (2, 3), 6, 4
    head = TokenMaskHead(grid, 16, 4, dim, 'subpatch').double()
    torch.nn.init.normal_(head.subpatch.weight)
    mask_embed = torch.randn(1, 2, dim, dtype=torch.float64)
    tokens = torch.randn(1, grid[0] * grid[1], dim, dtype=torch.float64)
    logits = head(mask_embed, tokens)
    assert logits.shape == (1, 2, grid[0] * r, grid[1] * r)
    weight = head.subpatch.weight.view(r, r, dim, dim)  # [i, j, out, in]
    for q, y, x, i, j in [(0, 0, 0, 0, 0), (1, 1, 2, 3, 1), (0, 1, 0, 2, 3), (1, 0, 1, 1, 2)]:
        expected = (weight[i, j] @ mask_embed[0, q]) @ tokens[0, y * grid[1] + x]
        torch.testing.assert_close(logits[0, q, y * r + i, x * r + j], expected)
    select = torch.tensor([[1]])
    torch.testing.assert_close(head(mask_embed, tokens, select), logits[:, 1:])


# --- model structure -----------------------------------------------------------------

def test_tokenmask_head_has_no_parameters_and_eomt_head_has_scale_blocks():
    tokenmask = build_model(tiny_config())
    eomt = build_model(tiny_config(head='eomt', upsample='feature'))
    assert sum(p.numel() for p in tokenmask.mask_head.parameters()) == 0
    blocks = [m for m in eomt.mask_head.modules() if isinstance(m, ScaleBlock)]
    assert len(blocks) == 2  # stride 4 from patch 16: EoMT's default two blocks
    def count(module):
        return sum(p.numel() for p in module.parameters())

    extra = count(eomt) - count(tokenmask)
    assert extra == count(eomt.mask_head) > 0


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_presets_build_the_paper_backbones(preset):
    spec = PRESETS[preset]
    with torch.device('meta'):
        model = build_model(TokenMaskConfig.from_preset(preset, img_size=64))
    backbone = model.backbone
    assert backbone.embed_dim == spec.embed_dim
    assert len(backbone.blocks) == spec.depth
    assert backbone.blocks[0].attn.num_heads == spec.num_heads
    assert model.num_query_blocks == spec.num_query_blocks
    assert backbone.patch_embed.patch_size == (16, 16)


HEAD_STRIDES = [('tokenmask', 'logit', s) for s in (1, 4, 8, 16)] + [
    ('tokenmask', 'none', 16), ('tokenmask', 'subpatch', 4), ('tokenmask', 'subpatch', 8)] + [
    ('eomt', 'feature', s) for s in (1, 4, 8, 16)]


@pytest.mark.parametrize('preset', sorted(PRESETS))
@pytest.mark.parametrize(('head', 'upsample', 'stride'), HEAD_STRIDES)
def test_output_shapes_for_every_preset_head_and_stride(preset, head, upsample, stride):
    config = TokenMaskConfig.from_preset(preset, img_size=(64, 96), num_queries=10,
                                         num_classes=7, head=head, upsample=upsample,
                                         output_stride=stride)
    with torch.device('meta'):
        model = build_model(config).eval()
        images = torch.empty(1, 3, 64, 96)
        final = model(images)
        everything = model(images, return_intermediate=True)
    assert final.class_logits.shape == (1, 10, 8)
    assert final.mask_logits.shape == (1, 10, 64 // stride, 96 // stride)
    assert len(everything) == config.num_query_blocks + 1
    assert all(o.mask_logits.shape == final.mask_logits.shape for o in everything)


def test_final_output_equals_last_intermediate_output(images):
    model = build_model(tiny_config(num_query_blocks=2)).eval()
    with torch.no_grad():
        final = model(images)
        outputs = model(images, return_intermediate=True)
    assert len(outputs) == 3
    torch.testing.assert_close(outputs[-1].mask_logits, final.mask_logits)
    assert not torch.allclose(outputs[0].mask_logits, final.mask_logits)


def test_model_normalises_images_inside_the_graph(images):
    """Inputs are [0, 1] RGB; ImageNet mean/std are applied by the model itself."""
    model = build_model(tiny_config()).eval()
    shifted = build_model(tiny_config(pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0)))
    shifted.load_state_dict(model.state_dict())
    shifted.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(images).mask_logits,
                                   shifted((images - mean) / std).mask_logits)


# --- masked attention (training only) ------------------------------------------------

def test_masked_attention_is_off_by_default_and_never_used_in_eval(images):
    model = build_model(tiny_config(num_query_blocks=2))
    assert torch.equal(model.attn_mask_probs, torch.zeros(2))
    model.eval()
    with torch.no_grad():
        reference = model(images).mask_logits
        model.set_attention_mask_probs([1.0, 1.0])
        torch.testing.assert_close(model(images).mask_logits, reference)
    # Training mode with probabilities 0 is the plain forward (no dropout in these ViTs).
    model.train()
    model.set_attention_mask_probs([0.0, 0.0])
    with torch.no_grad():
        torch.testing.assert_close(model(images).mask_logits, reference)
        model.set_attention_mask_probs([1.0, 1.0])
        assert not torch.allclose(model(images).mask_logits, reference)


def test_attention_mask_restricts_queries_to_their_predicted_patches():
    model = build_model(tiny_config())
    tokens = 6 + 1 + 16  # queries, cls, 4x4 patches
    x = torch.zeros(1, tokens, 32)
    logits = torch.full((1, 6, 16, 16), -1.0)
    logits[:, 0, :8] = 1.0  # query 0 covers the top half
    closed = model._attention_mask(x, logits, torch.tensor(1.0))
    assert closed.shape == (1, 1, tokens, tokens)
    patch_rows = closed[0, 0, 0, 7:].view(4, 4)
    assert patch_rows[:2].all() and not patch_rows[2:].any()
    assert not closed[0, 0, 1, 7:].any()          # query 1 predicts nothing: sees no patch
    assert closed[0, 0, :, :7].all()               # queries and cls always visible
    assert closed[0, 0, 6:].all()                  # patch and cls tokens are never masked
    opened = model._attention_mask(x, logits, torch.tensor(0.0))
    assert opened.all()


def test_attention_probabilities_are_validated():
    model = build_model(tiny_config(num_query_blocks=2))
    with pytest.raises(ValueError, match='2 probabilities'):
        model.set_attention_mask_probs([0.5])
    with pytest.raises(ValueError, match='in \\[0, 1\\]'):
        model.set_attention_mask_probs([0.5, 1.5])


def test_gradients_reach_queries_backbone_and_heads(images):
    model = build_model(tiny_config(head='eomt', upsample='feature')).train()
    outputs = model(images, return_intermediate=True)
    sum(o.mask_logits.mean() + o.class_logits.mean() for o in outputs).backward()
    for name in ('queries.weight', 'class_head.weight', 'mask_mlp.0.weight',
                 'backbone.patch_embed.proj.weight', 'mask_head.upscale.0.conv1.weight'):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


# --- configuration -------------------------------------------------------------------

@pytest.mark.parametrize(('overrides', 'message'), [
    ({'head': 'fpn'}, 'head must be one of'),
    ({'upsample': 'feature'}, "head 'tokenmask' takes upsample"),
    ({'head': 'eomt', 'upsample': 'logit'}, "head 'eomt' takes upsample"),
    ({'output_stride': 3}, 'output_stride must be one of'),
    ({'upsample': 'none', 'output_stride': 4}, 'predicts at the patch grid'),
    ({'upsample': 'subpatch', 'output_stride': 16}, 'positions inside a patch'),
    ({'img_size': 70}, 'multiples of 16'),
    ({'num_queries': 0}, 'must be >= 1'),
    ({'num_query_blocks': 3}, 'exceeds depth'),
    ({'classes': ({'name': 'a'},)}, '1 class names for num_classes=4'),
])
def test_invalid_configs_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_round_trips_through_json_and_knows_its_sizes():
    import json

    config = tiny_config(img_size=(64, 96), output_stride=8, classes=tuple(
        {'name': n, 'is_thing': i > 1, 'color': (i, 2 * i, 3 * i)}
        for i, n in enumerate('abcd')))
    again = TokenMaskConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert config.grid_size == (4, 6) and config.mask_size == (8, 12)
    with pytest.raises(ValueError, match='unknown TokenMaskConfig field'):
        TokenMaskConfig.from_dict({**config.to_dict(), 'dropout': 0.1})
    with pytest.raises(ValueError, match='unknown preset'):
        TokenMaskConfig.from_preset('huge')


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot build backbone 'vit_nonexistent'"):
        build_model(tiny_config(backbone='vit_nonexistent'))


def test_exported_inference_graph_is_one_gemm_one_upsample_and_no_masking():
    """The eval graph (what ONNX/TensorRT see): no attention masks, no random re-opening,
    exactly one token-space GEMM and one logit interpolation, no learned upscale."""
    from collections import Counter

    model = build_model(tiny_config()).eval()
    model.set_attention_mask_probs([1.0])
    graph = torch.export.export(model, (torch.rand(1, 3, 64, 64),)).graph
    ops = Counter(str(n.target) for n in graph.nodes if n.op == 'call_function')
    assert ops['aten.bmm.default'] == 1
    assert ops['aten.upsample_bilinear2d.vec'] == 1
    assert ops['aten.conv2d.default'] == 1  # the patch embedding only
    assert not any('rand' in op or 'conv_transpose' in op for op in ops)
    assert ops['aten.scaled_dot_product_attention.default'] == 2  # two blocks, unmasked
    sdpa = [n for n in graph.nodes if str(n.target).startswith('aten.scaled_dot')]
    # (q, k, v) only: no attention mask, positional or keyword.
    assert all(len(n.args) == 3 and n.kwargs.get('attn_mask') is None for n in sdpa)


def test_model_modules_import_each_other_without_cycles():
    """Every import between tokenmask_ros.model modules, function-level ones included, goes
    one way (a cycle only works while someone keeps one import lazy)."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / 'tokenmask_ros' / 'model'
    names = {p.stem for p in folder.glob('*.py')}
    edges = {}
    for name in names:
        tree = ast.parse((folder / f'{name}.py').read_text())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
                if module == 'tokenmask_ros.model':
                    targets.add('__init__')
                elif module.startswith('tokenmask_ros.model.'):
                    targets.add(module.rsplit('.', 1)[1])
        edges[name] = targets & names - {name}

    def cycle_from(start, path):
        for target in edges[path[-1]]:
            if target == start:
                return [*path, start]
            if target not in path and (found := cycle_from(start, [*path, target])):
                return found
        return None

    cycles = [c for n in sorted(names) if (c := cycle_from(n, [n]))]
    assert cycles == [], f'import cycle: {" -> ".join(cycles[0])}'
    assert 'checkpoint' not in edges['backbone'] and 'backbone' in edges['tokenmask']
