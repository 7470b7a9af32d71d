"""training/graph_latency.py: exported graphs timed side by side on real ONNX Runtime sessions.
Timing values are not asserted (a benchmark, not a test): that each graph has its row, the
first is the reference, and CPU time is measured alongside the wall clock."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip('onnxruntime')

from tokenmask_ros.model import TokenMaskConfig, build_model
from tokenmask_ros.runtime.export import export_onnx
from training import graph_latency


def tiny_export(path, **overrides):
    config = TokenMaskConfig.from_preset('tiny', img_size=(64, 96), embed_dim=32, depth=2,
                                         num_heads=2, num_query_blocks=1, num_queries=6,
                                         num_classes=3, **overrides)
    return export_onnx(build_model(config).eval(), path)


def test_every_graph_gets_a_row_against_the_first(tmp_path, capsys):
    teacher = tiny_export(tmp_path / 'teacher.onnx', head='eomt', upsample='feature')
    student = tiny_export(tmp_path / 'student.onnx', upsample='subpatch')
    out = tmp_path / 'out'
    assert graph_latency.main([str(teacher), str(student), '--rounds', '3', '--warmup', '1',
                               '--out', str(out)]) == 0
    with (out / 'latency.csv').open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r['graph'] for r in rows] == ['teacher.onnx', 'student.onnx']
    assert float(rows[0]['ratio_to_first']) == 1.0
    for row in rows:
        assert (row['threads'], row['rounds']) == ('1', '3')
        assert 0 < float(row['wall_ms_median']) <= float(row['wall_ms_p90'])
        assert float(row['cpu_ms_median']) > 0
    assert '| student.onnx |' in (out / 'latency.md').read_text()
    assert '| teacher.onnx |' in capsys.readouterr().out


def test_missing_graph_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        graph_latency.main([str(tmp_path / 'nope.onnx'), '--out', str(tmp_path / 'out')])
    assert 'nope.onnx' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_unfused_graphs_and_the_gemm_ceiling_are_reported(tmp_path):
    graph = tiny_export(tmp_path / 'model.onnx')
    out = tmp_path / 'out'
    assert graph_latency.main([str(graph), '--rounds', '2', '--warmup', '0', '--unfused',
                               '--gemm-ceiling', '--out', str(out)]) == 0
    table = (out / 'latency.md').read_text()
    assert 'attention as exported' in table
    line = next(x for x in table.splitlines() if x.startswith('fp32 MatMul [1800, 384]'))
    assert float(line.split(': ')[1].split(' GFLOP/s')[0]) > 0


def test_gemm_rate_is_the_flops_of_the_product_over_its_time():
    rate = graph_latency.gemm_gflops(1, repeats=10, shape=(64, 32, 48))
    assert 0 < rate < 1e4  # GFLOP/s: a CPU core does tens, not thousands
