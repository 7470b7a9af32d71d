"""training/ablation.py end to end on a toy budget: every variant trains, is evaluated and
timed, and the tables and plot are written."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import ablation  # noqa: E402


def test_ablation_runs_every_variant_on_the_same_budget(tmp_path):
    toy = ['model.embed_dim=32', 'model.depth=2', 'model.num_heads=2',
           'model.num_query_blocks=1', 'data.num_workers=0', 'optim.num_points=64']
    variants = ['eomt/feature s4', 'tokenmask/none s16', 'tokenmask/logit s4']
    code = ablation.main(['--out', str(tmp_path), '--steps', '2', '--batch-size', '2',
                          '--size', '64x48', '--queries', '4', '--val-images', '2',
                          '--repeats', '2', '--no-progress', '--variants', *variants,
                          '--set', *toy])
    assert code == 0
    with (tmp_path / 'ablation.csv').open() as file:
        rows = list(csv.DictReader(file))
    assert [r['variant'] for r in rows] == variants
    assert {r['steps'] for r in rows} == {'2'}
    for row in rows:
        assert 0.0 <= float(row['pq']) <= 100.0
        assert float(row['latency_ms_median']) > 0
    # The EoMT head has the ScaleBlocks the TokenMask head does without.
    params = {r['variant']: float(r['params_m']) for r in rows}
    assert params['eomt/feature s4'] > params['tokenmask/logit s4'] == params['tokenmask/none s16']
    table = (tmp_path / 'ablation.md').read_text()
    assert all(f'| {v} |' in table for v in variants)
    assert (tmp_path / 'ablation.png').stat().st_size > 1000
    weights = tmp_path / 'tokenmask_logit_s4' / 'model.safetensors'
    assert weights.is_file()

    # --reuse re-times the trained variants without training or evaluating them again.
    before = weights.stat().st_mtime_ns
    assert ablation.main(['--out', str(tmp_path), '--steps', '2', '--size', '64x48',
                          '--queries', '4', '--repeats', '2', '--no-progress', '--reuse',
                          '--variants', 'tokenmask/logit s4', '--set', *toy]) == 0
    assert weights.stat().st_mtime_ns == before
    with (tmp_path / 'ablation.csv').open() as file:
        again = list(csv.DictReader(file))
    assert again[0]['pq'] == rows[2]['pq']
