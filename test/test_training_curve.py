"""training/training_curve.py: PQ-versus-time points from the checkpoints of chained runs."""

from __future__ import annotations

import csv
import shutil

import pytest

from training import training_curve
from training.train_config import load_train_config
from training.trainer import train

TOY = ['model.preset=tiny', 'model.embed_dim=32', 'model.depth=2', 'model.num_heads=2',
       'model.img_size=[48,64]', 'model.num_queries=4', 'model.num_query_blocks=1',
       'data.count=8', 'data.width=64', 'data.height=48', 'data.num_workers=0',
       'optim.batch_size=2', 'optim.num_points=64', 'optim.max_steps=2', 'checkpoint_every=1',
       'optim.head_warmup=1', 'optim.backbone_warmup=1']


def test_curve_chains_stages_and_their_clocks(tmp_path):
    first = tmp_path / 'first'
    train(load_train_config(None, TOY), first, progress=False)
    second = tmp_path / 'second'
    train(load_train_config(None, TOY), second, progress=False,
          init=str(first / 'checkpoints/step_000001/model.safetensors'))
    out = tmp_path / 'curve'
    assert training_curve.main([f'{first}:1', str(second), '--images', '1',
                                '--out', str(out)]) == 0
    with out.with_suffix('.csv').open() as file:
        rows = list(csv.DictReader(file))
    # Stage 1 cut at step 1, then stage 2's steps 1 and 2 (its final weights are step 2).
    assert [(int(r['stage']), int(r['step']), int(r['global_step'])) for r in rows] == \
        [(0, 1, 1), (1, 1, 2), (1, 2, 3)]
    hours = [float(r['hours']) for r in rows]
    assert hours == sorted(hours) and hours[1] > hours[0]
    assert all(0 <= float(r['pq']) <= 100 for r in rows)
    assert out.with_suffix('.png').stat().st_size > 1000

    # --reuse keeps scores already in the CSV (marked here) and evaluates only new points.
    text = out.with_suffix('.csv').read_text().splitlines()
    header, first_row = text[0].split(','), text[1].split(',')
    first_row[header.index('pq')] = '77.7'
    out.with_suffix('.csv').write_text('\n'.join([text[0], ','.join(first_row), *text[2:]]))
    assert training_curve.main([f'{first}:1', str(second), '--images', '1', '--reuse',
                                '--out', str(out)]) == 0
    with out.with_suffix('.csv').open() as file:
        reused = list(csv.DictReader(file))
    assert float(reused[0]['pq']) == 77.7
    assert [r['pq'] for r in reused[1:]] == [r['pq'] for r in rows[1:]]


def test_a_stage_known_only_by_its_weights_file_is_one_point(tmp_path):
    """Stages whose run folder is gone are placed by FILE:STEPS@MINUTES after the runs before."""
    run = tmp_path / 'run'
    train(load_train_config(None, TOY), run, progress=False)
    weights = run / 'checkpoints/step_000002/model.safetensors'
    out = tmp_path / 'curve'
    assert training_curve.main([str(run), f'{weights}:300@90', '--images', '1',
                                '--out', str(out)]) == 0
    with out.with_suffix('.csv').open() as file:
        rows = list(csv.DictReader(file))
    assert [(int(r['stage']), int(r['global_step'])) for r in rows] == [(0, 1), (0, 2), (1, 302)]
    assert rows[2]['run'] == str(weights)
    # 90 minutes after the end of the first run.
    assert abs(float(rows[2]['hours']) - float(rows[1]['hours']) - 1.5) < 1e-5

    # With --reuse the curve grows after the run folder is deleted: its recorded points stay.
    kept = tmp_path / 'kept.safetensors'
    kept.write_bytes(weights.read_bytes())
    shutil.rmtree(run)
    assert training_curve.main([str(run), f'{kept}:300@90', f'{kept}:100@30', '--images', '1',
                                '--reuse', '--out', str(out)]) == 0
    with out.with_suffix('.csv').open() as file:
        grown = list(csv.DictReader(file))
    assert [r['hours'] for r in grown[:2]] == [r['hours'] for r in rows[:2]]
    assert [r['pq'] for r in grown[:2]] == [r['pq'] for r in rows[:2]]
    assert [int(r['global_step']) for r in grown] == [1, 2, 302, 402]
    assert abs(float(grown[3]['hours']) - float(rows[1]['hours']) - 2.0) < 1e-5

    for bad, message in ((str(weights), 'STEPS@MINUTES'), (f'{tmp_path}@5', 'only for a weights'),
                         (f'{tmp_path}/gone.safetensors:1@1', 'no such file')):
        with pytest.raises(SystemExit, match=message):
            training_curve.main([bad, '--images', '1', '--out', str(out)])
