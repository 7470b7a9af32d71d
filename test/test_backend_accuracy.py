"""training/backend_accuracy.py: one table of PQ, latency and memory per backend x precision
of the deployed path, on the bundled model and real exported graphs."""

from __future__ import annotations

import csv

import pytest

from training import backend_accuracy


def test_table_scores_every_backend_that_runs_here(tmp_path):
    pytest.importorskip('onnxruntime')
    out = tmp_path / 'table'
    assert backend_accuracy.main(['--images', '2', '--repeats', '1', '--sizes', '160x120',
                                  '--out', str(out)]) == 0
    with (out / 'backends.csv').open(newline='') as file:
        rows = {(r['backend'], r['precision']): r for r in csv.DictReader(file)}
    reference = rows[('onnxruntime', 'fp32')]
    assert reference['status'] == 'ok' and float(reference['ratio']) == 1.0
    assert 0.0 <= float(reference['pq']) <= 100.0 and float(reference['median_ms']) > 0
    # torch runs the same graph as the export: the same segments, the same PQ.
    assert float(rows[('torch', 'fp32')]['pq']) == pytest.approx(float(reference['pq']),
                                                                 abs=0.01)
    for key, row in rows.items():
        assert row['status'] in ('ok', 'skipped'), (key, row['reason'])
        assert row['width'] == '160' and row['height'] == '120'
    table = (out / 'backends.md').read_text()
    assert '| 160x120 | onnxruntime | fp32 |' in table and 'Machine:' in table
