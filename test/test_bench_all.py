"""`tokenmask bench --all`: every backend and precision side by side on the bundled model,
with a table, CSV and plot; real sessions, tiny repeats. Timing values are not asserted
(benchmarks, not tests): only that they are there, and the accuracy columns. The reference
row is the bundled model's graph before query selection (`tokenmask export --selection
all`), so the pixel columns also check that selection changes no output."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip('onnxruntime')

from tokenmask_ros import cli
from tokenmask_ros.bundled import BUNDLED_MODELS
from tokenmask_ros.runtime.bench import ALL_COMBINATIONS
from tokenmask_ros.runtime.export import read_onnx_config, read_onnx_metadata

BUNDLED_MODEL = BUNDLED_MODELS[0]


def test_bench_all_reports_every_backend_side_by_side(tmp_path, capsys):
    pytest.importorskip('openvino')
    before = tmp_path / 'before.onnx'
    assert cli.main(['export', BUNDLED_MODEL, '--selection', 'all', '-o', str(before)]) == 0
    metadata = read_onnx_metadata(before)
    assert (metadata['selection'], metadata['decoded_queries']) == \
        ('fixed', read_onnx_config(before).num_queries)  # every query decoded
    out = tmp_path / 'bench'
    code = cli.main(['bench', '--all', '--device', 'cpu', '--size', '320x240', '160x120',
                     '--warmup', '1', '--repeats', '3', '--cache-dir', str(tmp_path / 'cache'),
                     '--reference', str(before), '-o', str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with (out / 'bench_all.csv').open() as handle:
        both = list(csv.DictReader(handle))
    per_size = 1 + len(ALL_COMBINATIONS)  # the reference graph first
    assert [(r['width'], r['height']) for r in both] == \
        [('320', '240')] * per_size + [('160', '120')] * per_size
    small = both[per_size:]
    assert {r['status'] for r in small if r['backend'] != 'tensorrt'} == {'ok'}
    assert float(small[0]['ratio_to_reference']) == 1.0  # each size has its own reference
    first, rows = both[0], both[1:per_size]
    assert (first['backend'], first['precision'], first['model']) == \
        ('onnxruntime', 'fp32', 'before.onnx')
    assert float(first['ratio_to_reference']) == 1.0 and first['pixel_agreement'] == '1'
    assert [(r['backend'], r['precision'], r['model']) for r in rows] == \
        [(*key, '') for key in ALL_COMBINATIONS]
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
    # Decoding only the kept queries changes no pixel against decoding every query.
    assert float(by_key['onnxruntime', 'fp32']['pixel_agreement']) == 1.0
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
    assert '| onnxruntime (before.onnx) | fp32 | cpu |' in table
    assert 'Reference: the exported graph before.onnx' in table
    assert ('| Median (ms) | p90 (ms) | x onnxruntime fp32 (before.onnx) | '
            'Pixels = onnxruntime fp32 (before.onnx) |') in captured.out
    assert '## 320x240 frames' in table and '## 160x120 frames' in table
    for label in ('320x240', '160x120'):  # one plot per size
        png = (out / f'bench_all_{label}.png').read_bytes()
        assert png.startswith(b'\x89PNG') and len(png) > 1000


def test_bench_reference_must_be_an_exported_graph_and_needs_all(tmp_path, capsys):
    out = str(tmp_path / 'bench')
    assert cli.main(['bench', '--reference', BUNDLED_MODEL, '-o', out]) == 2
    assert '--reference only applies to --all' in capsys.readouterr().err
    assert cli.main(['bench', '--all', '--reference', BUNDLED_MODEL, '-o', out]) == 2
    assert 'not an exported .onnx graph' in capsys.readouterr().err
    missing = tmp_path / 'missing.onnx'
    assert cli.main(['bench', '--all', '--reference', str(missing), '-o', out]) == 2
    assert 'missing.onnx' in capsys.readouterr().err
    assert not (tmp_path / 'bench').exists()
