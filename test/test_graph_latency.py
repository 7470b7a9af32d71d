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
