"""training/ablation.py end to end on a toy budget: every variant trains, is evaluated and
timed, and the tables and plot are written."""

from __future__ import annotations

import csv

from training import ablation


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


def test_ablation_variants_start_from_the_given_backbone(tmp_path):
    """With --backbone-weights every variant starts from that backbone (lr 0 keeps it
    unchanged, so the trained variant's blocks must equal the source's exactly)."""
    import torch

    from tokenmask_ros.model import TokenMaskConfig, build_model, load_checkpoint, save_checkpoint

    sizes = {'embed_dim': 32, 'depth': 2, 'num_heads': 2, 'num_query_blocks': 1}
    torch.manual_seed(4)
    source = build_model(TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=(32, 48),
                                         num_queries=3, num_classes=2, **sizes))
    weights = save_checkpoint(source, tmp_path / 'pretrained.safetensors')
    toy = [*(f'model.{k}={v}' for k, v in sizes.items()), 'data.num_workers=0',
           'optim.num_points=64']
    assert ablation.main(['--out', str(tmp_path / 'out'), '--steps', '1', '--batch-size', '2',
                          '--lr', '0', '--size', '64x48', '--queries', '4', '--val-images', '1',
                          '--repeats', '1', '--no-progress', '--variants', 'eomt/feature s4',
                          '--backbone-weights', str(weights), '--set', *toy]) == 0
    trained = load_checkpoint(tmp_path / 'out' / 'eomt_feature_s4' / 'model.safetensors')
    assert torch.equal(trained.backbone.blocks[1].mlp.fc2.weight,
                       source.backbone.blocks[1].mlp.fc2.weight)
    assert 'from the backbone of' in (tmp_path / 'out' / 'ablation.md').read_text()
