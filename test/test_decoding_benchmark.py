"""training/decoding_benchmark.py: the graph before query selection, the selecting graphs and
ONNX Runtime's fused-attention session, run side by side on real exports; every one must
give the panoptic output of the first. Timings are not asserted (a benchmark)."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip('onnxruntime')

from training import decoding_benchmark


def test_every_graph_and_the_fused_session_give_the_output_of_decoding_every_query(tmp_path):
    out, graphs = tmp_path / 'out', tmp_path / 'graphs'
    code = decoding_benchmark.main([
        '--backbones', 'tiny', '--heads', 'tokenmask', '--img-size', '64', '--num-queries', '12',
        '--num-classes', '3', '--decoded-queries', '6', '--kept', '3', '--repeats', '1',
        '--warmup', '0', '--backends', 'onnxruntime', '--out', str(out),
        '--keep-graphs', str(graphs)])
    with (out / 'decoding.csv').open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r['decoded_queries'] for r in rows] == [
        'all 12', 'best 6', 'kept (<= 6)', 'kept (<= 6), fused attention']
    assert code == 0 and all(r['identical'] == 'True' for r in rows)
    assert all(r['kept'] == '3' for r in rows)
    assert float(rows[-1]['max_score_difference']) <= decoding_benchmark.SCORE_TOLERANCE
    assert sorted(p.name for p in (graphs / 'TokenMask-T').iterdir()) == [
        'graph-6-fixed.onnx', 'graph-6-kept.onnx', 'graph-all-fixed.onnx']
