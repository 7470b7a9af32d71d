"""`tokenmask bench --all`: every backend and precision side by side on the bundled model,
with a table, CSV and plot; real sessions, tiny repeats. Timing values are not asserted
(benchmarks, not tests): only that they are there, and the accuracy columns."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip('onnxruntime')

from tokenmask_ros import cli
from tokenmask_ros.runtime.bench import ALL_COMBINATIONS


def test_bench_all_reports_every_backend_side_by_side(tmp_path, capsys):
    pytest.importorskip('openvino')
    out = tmp_path / 'bench'
    code = cli.main(['bench', '--all', '--device', 'cpu', '--size', '320x240', '160x120',
                     '--warmup', '1', '--repeats', '3', '--cache-dir', str(tmp_path / 'cache'),
                     '-o', str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with (out / 'bench_all.csv').open() as handle:
        both = list(csv.DictReader(handle))
    assert [(r['width'], r['height']) for r in both] == \
        [('320', '240')] * len(ALL_COMBINATIONS) + [('160', '120')] * len(ALL_COMBINATIONS)
    small = both[len(ALL_COMBINATIONS):]
    assert {r['status'] for r in small if r['backend'] != 'tensorrt'} == {'ok'}
    assert float(small[0]['ratio_to_reference']) == 1.0  # each size has its own reference
    rows = both[:len(ALL_COMBINATIONS)]
    assert [(r['backend'], r['precision']) for r in rows] == list(ALL_COMBINATIONS)
    by_key = {(r['backend'], r['precision']): r for r in rows}
    measured = [('onnxruntime', 'fp32'), ('torch', 'fp32'), ('onnxruntime', 'int8'),
                ('openvino', 'fp32'), ('openvino', 'int8')]
    for key in measured:
        row = by_key[key]
        assert row['status'] == 'ok', row
        assert row['device'] == 'cpu' and row['repeats'] == '3'
        assert 0 < float(row['median_ms']) <= float(row['p90_ms'])
        assert float(row['ratio_to_reference']) > 0
        assert row['describe'].startswith(f'{key[0]} (cpu, {key[1]}')
    reference = by_key['onnxruntime', 'fp32']
    assert float(reference['ratio_to_reference']) == 1.0
    assert float(reference['pixel_agreement']) == 1.0
    assert float(by_key['openvino', 'fp32']['pixel_agreement']) == 1.0  # same graph, f32
    assert float(by_key['torch', 'fp32']['pixel_agreement']) >= 0.999
    for precision in ('onnxruntime', 'openvino'):
        assert 0.9 <= float(by_key[precision, 'int8']['pixel_agreement']) < 1.0
    for row in rows:
        if row['backend'] == 'tensorrt' and row['status'] != 'ok':
            assert row['status'] == 'skipped' and row['reason']
    table = (out / 'bench_all.md').read_text()
    assert '`tokenmask bench --all --device cpu' in table
    assert '| onnxruntime | int8 | cpu |' in table and '| 1.00 | 100.00 % |' in table
    assert '| Median (ms) | p90 (ms) | x onnxruntime fp32 | Pixels = onnxruntime fp32 |' \
        in captured.out
    assert '## 320x240 frames' in table and '## 160x120 frames' in table
    for label in ('320x240', '160x120'):  # one plot per size
        png = (out / f'bench_all_{label}.png').read_bytes()
        assert png.startswith(b'\x89PNG') and len(png) > 1000
