"""FLOP / memory counting (``tokenmask_ros.model.flops``) and the cost benchmark script."""

import csv
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, run_command
from torch import nn

from tokenmask_ros.model import TokenMaskConfig, build_model
from tokenmask_ros.model.flops import (
    DEPLOY,
    PAPER,
    count_activation_memory,
    count_flops,
    count_function,
)

GEMM_ONLY = PAPER.replace(norm_affine=0, norm_plain=0, elementwise={}, per_input={})


def meta_model(**overrides):
    """A ViT-T-wide model with 6 blocks (fast to count; the counts scale the same way)."""
    values = {'num_classes': 150, 'img_size': 320, 'depth': 6} | overrides
    with torch.device('meta'):
        return build_model(TokenMaskConfig.from_preset('tiny', **values))


# --- hand-computed counts on single ops --------------------------------------------------

def test_linear_counts_multiply_adds_once_and_the_bias_only_in_deploy():
    linear, x = nn.Linear(16, 32), torch.randn(4, 16)
    paper = count_flops(linear, x, convention='paper')
    assert paper.total == 4 * 16 * 32 == 2048
    assert paper.ops == {'addmm': 2048}
    assert count_flops(linear, x, convention='deploy').total == 2048 + 4 * 32


@pytest.mark.parametrize('device', ['cpu', 'meta'])
def test_bmm_and_convolutions(device):
    a, b = torch.randn(2, 3, 4, device=device), torch.randn(2, 4, 5, device=device)
    for convention in (PAPER, DEPLOY):
        assert count_function(lambda: torch.bmm(a, b), convention)[0] == 2 * 3 * 4 * 5
    with torch.device(device):
        conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        x = torch.randn(1, 3, 10, 10)
        up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        y = torch.randn(1, 4, 5, 5)
    assert count_flops(conv, x).total == 10 * 10 * 8 * 3 * 9
    # Transposed: every weight element meets every *input* position once.
    assert count_flops(up, y).total == 5 * 5 * 4 * 4 * 2 * 2
    assert count_flops(up, y, convention='deploy').total == 1600 + 4 * 10 * 10  # + bias


@pytest.mark.parametrize('device', ['cpu', 'meta'])
def test_fused_attention_is_excluded_in_paper_and_included_in_deploy(device):
    q, k, v = (torch.randn(1, 2, 8, 4, device=device) for _ in range(3))
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool, device=device)
    scores = 1 * 2 * 8 * 8
    matmuls = 2 * scores * 4  # q k^T and (softmax) v
    attention = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    assert count_function(attention, PAPER)[0] == 0
    assert count_function(attention, PAPER.replace(attention='matmul'))[0] == matmuls
    assert count_function(attention, DEPLOY)[0] == matmuls + 6 * scores  # scale + softmax
    masked = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    assert count_function(masked, DEPLOY)[0] == matmuls + 7 * scores


def test_per_element_costs():
    x = torch.randn(1, 2, 4, 4)
    norm = nn.LayerNorm(4)
    upsample = lambda: F.interpolate(x, scale_factor=2, mode='bilinear')  # noqa: E731
    for convention in (PAPER, DEPLOY):
        assert count_flops(norm, x, convention=convention).total == 5 * 32
        assert count_function(upsample, convention)[0] == 4 * 2 * 8 * 8  # 4 taps per output
    assert count_function(lambda: F.gelu(x), PAPER)[0] == 0
    assert count_function(lambda: F.gelu(x), DEPLOY)[0] == 4 * 32
    assert count_function(lambda: x.softmax(-1), DEPLOY)[0] == 5 * 32
    assert count_function(lambda: x + x * 2, DEPLOY)[0] == 2 * 32
    assert count_function(lambda: (x.view(-1), x.transpose(1, 2).contiguous()), DEPLOY)[0] == 0


# --- whole models (meta device) ----------------------------------------------------------

def test_tokenmask_stride_4_and_16_differ_only_by_the_logit_interpolation():
    strided_model = meta_model(output_stride=4)
    native_model = meta_model(upsample='none', output_stride=16)
    strided, native = count_flops(strided_model), count_flops(native_model)
    calls = strided_model.num_query_blocks + 1  # L2 + 1 head evaluations
    interpolation = 4 * 200 * (320 // 4) ** 2 * calls
    assert strided.total - native.total == interpolation
    assert strided.ops.pop('upsample_bilinear2d') == interpolation
    assert strided.ops == native.ops
    # With matrix products and convolutions alone the two are the same model.
    assert (count_flops(strided_model, convention=GEMM_ONLY).total
            == count_flops(native_model, convention=GEMM_ONLY).total)


@pytest.mark.parametrize('convention', ['paper', 'deploy'])
def test_eomt_head_costs_more_than_tokenmask_on_the_same_backbone(convention):
    tokenmask = count_flops(meta_model(), convention=convention)
    eomt = count_flops(meta_model(head='eomt', upsample='feature'), convention=convention)
    assert eomt.parts['backbone'] == tokenmask.parts['backbone']
    assert eomt.parts['head'] > tokenmask.parts['head'] > 0
    assert eomt.total > tokenmask.total


def test_paper_convention_counts_the_head_at_every_query_block_and_the_end():
    per_call = None
    for query_blocks in (2, 4):
        model = meta_model(num_query_blocks=query_blocks, head='eomt', upsample='feature')
        final = count_flops(model, intermediate=False).parts['head']
        every = count_flops(model)
        assert every.intermediate
        assert every.parts['head'] == (query_blocks + 1) * final
        per_call = per_call or final
        assert final == per_call
    assert not count_flops(model, convention='deploy').intermediate


def test_counting_leaves_the_model_as_it_was_and_ignores_the_attention_path():
    model = meta_model()
    fused = count_flops(model, convention='deploy').total
    model.train()
    for block in model.backbone.blocks:
        block.attn.fused_attn = False
    assert count_flops(model, convention='deploy').total == fused
    assert model.training
    assert not any(block.attn.fused_attn for block in model.backbone.blocks)


def test_activation_memory_counts_live_tensors():
    class Chain(nn.Module):
        def forward(self, x):
            return (x * 2 + 1).view(-1) * 3

    x = torch.randn(1000)
    estimate = count_activation_memory(Chain(), x)
    assert estimate.activations == 2 * 4000  # x*2 still alive while +1 is allocated
    assert estimate.inputs == 4000 and estimate.weights == 0
    cpu_config = TokenMaskConfig.from_preset('tiny', num_classes=150, img_size=96, depth=2,
                                             num_query_blocks=1, head='eomt',
                                             upsample='feature')
    real = count_activation_memory(build_model(cpu_config))
    with torch.device('meta'):
        meta = count_activation_memory(build_model(cpu_config))
    assert real == meta and real.activations > 0


# --- the benchmark script ----------------------------------------------------------------

def test_benchmark_smoke_run_writes_table_csv_and_plot(tmp_path):
    out = tmp_path / 'results'
    result = run_command(
        [sys.executable, str(REPO_ROOT / 'training' / 'benchmark.py'), '--backbones', 'tiny',
         '--upsampling', 'logit', 'feature', '--strides', '16', '--img-size', '64',
         '--repeats', '1', '--warmup', '0', '--out', str(out)],
        cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    with (out / 'costs.csv').open() as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {'backbone', 'head', 'upsample', 'output_stride', 'params', 'gflops_paper',
            'gflops_deploy', 'latency_ms_median', 'latency_ms_p90', 'act_mem_mb',
            'peak_mem_mb'} <= columns
    assert [(r['backbone'], r['head'], r['upsample'], r['output_stride']) for r in rows] == [
        ('tiny', 'tokenmask', 'logit', '16'), ('tiny', 'eomt', 'feature', '16')]
    for row in rows:
        assert float(row['gflops_paper']) > 0 and float(row['gflops_deploy']) > 0
        assert float(row['latency_ms_median']) > 0 and row['mem_method'] == 'dispatch'
    table = (out / 'costs.md').read_text()
    assert '| ViT-T | TokenMask | Logit | 16 |' in table
    assert '| ViT-T | EoMT | Feature | 16 |' in result.stdout
    png = (out / 'costs.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 1000
