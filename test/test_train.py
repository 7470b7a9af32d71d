"""Training loop: schedule, annealing, a short real run, exact resume, --init checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenmask_ros.model import TokenMaskConfig, build_model, save_checkpoint
from training.annealing import (
    annealing_windows,
    mask_probabilities,
    mask_probability,
)
from training.optim import build_optimizer, build_scheduler, two_stage_factor
from training.train_config import load_train_config, model_config
from training.trainer import train

REPO = Path(__file__).resolve().parents[1]

TINY = ['model.preset=tiny', 'model.embed_dim=64', 'model.depth=4', 'model.num_heads=2',
        'model.img_size=64', 'model.num_queries=8', 'model.num_query_blocks=2',
        'data.count=8', 'data.width=96', 'data.height=64', 'data.num_workers=0',
        'data.scale_range=[0.8,1.2]', 'optim.batch_size=2', 'optim.num_points=256',
        'optim.grad_clip=1.0', 'optim.head_warmup=2', 'optim.backbone_warmup=2',
        'log_every=1', 'deterministic=true']


def tiny_config(*extra):
    return load_train_config(None, [*TINY, *extra])


def tiny_model():
    return build_model(TokenMaskConfig(backbone='vit_tiny_patch16_224', embed_dim=32, depth=4,
                                       num_heads=2, img_size=32, num_queries=4,
                                       num_query_blocks=2, num_classes=3))


def test_two_stage_schedule_values():
    args = {'total_steps': 100, 'head_warmup': 10, 'backbone_warmup': 20, 'power': 0.9}
    assert two_stage_factor(0, 'head', **args) == 0.0
    assert two_stage_factor(5, 'head', **args) == pytest.approx(0.5)
    assert two_stage_factor(10, 'head', **args) == pytest.approx(1.0)
    assert two_stage_factor(55, 'head', **args) == pytest.approx(0.5 ** 0.9)
    assert two_stage_factor(100, 'head', **args) == 0.0
    assert two_stage_factor(9, 'backbone', **args) == 0.0
    assert two_stage_factor(20, 'backbone', **args) == pytest.approx(0.5)
    assert two_stage_factor(30, 'backbone', **args) == pytest.approx(1.0)
    assert two_stage_factor(65, 'backbone', **args) == pytest.approx(0.5 ** 0.9)


def test_layer_decay_and_scheduler():
    model = tiny_model()
    optimizer = build_optimizer(model, lr=1e-3, layer_decay=0.5)
    groups = {g['name']: g for g in optimizer.param_groups}
    assert [groups[f'block{i}']['lr'] for i in range(4)] == pytest.approx(
        [1e-3 * 0.5 ** 3, 1e-3 * 0.5 ** 2, 1e-3 * 0.5, 1e-3])
    assert groups['embed']['lr'] == pytest.approx(1e-3 * 0.5 ** 4)
    assert groups['head']['lr'] == 1e-3
    head_names = {id(p) for p in groups['head']['params']}
    assert id(model.queries.weight) in head_names
    assert id(model.backbone.norm.weight) in head_names
    assert sum(len(g['params']) for g in optimizer.param_groups) == \
        len(list(model.parameters()))
    scheduler = build_scheduler(optimizer, total_steps=10, head_warmup=2, backbone_warmup=2)
    seen = []
    for _ in range(5):
        seen.append({g['name']: g['lr'] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert seen[1]['head'] == pytest.approx(5e-4) and seen[1]['block3'] == 0.0
    assert seen[3]['block3'] == pytest.approx(5e-4)
    assert seen[3]['block2'] == pytest.approx(2.5e-4)
    assert seen[4]['block3'] == pytest.approx(1e-3)


def test_annealing_windows_and_probabilities():
    windows = annealing_windows(600, 4)
    assert windows == [(100, 200), (200, 300), (300, 400), (400, 500)]
    assert mask_probability(99, 100, 200) == 1.0
    assert mask_probability(150, 100, 200) == pytest.approx(0.5 ** 0.9)
    assert mask_probability(200, 100, 200) == 0.0
    assert mask_probabilities(250, windows) == pytest.approx([0.0, 0.5 ** 0.9, 1.0, 1.0])
    assert annealing_windows(600, 1) == [(100, 200)]


def test_training_lowers_loss(tmp_path):
    config = tiny_config('optim.lr=2e-3', 'optim.max_steps=30', 'checkpoint_every=0',
                         'optim.mask_annealing=false')
    result = train(config, tmp_path, progress=False)
    losses = result['losses']
    assert len(losses) == 30 and result['step'] == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert (tmp_path / 'model.safetensors').is_file()
    assert (tmp_path / 'metrics.csv').read_text().count('\n') == 31


def test_resume_matches_straight_run(tmp_path):
    config = tiny_config('optim.lr=1e-3', 'optim.max_steps=6', 'checkpoint_every=3')
    straight = train(config, tmp_path / 'a', progress=False)
    resumed = train(config, tmp_path / 'b', resume=str(tmp_path / 'a/checkpoints/step_000003'),
                    progress=False)
    assert resumed['step'] == 6 and len(resumed['losses']) == 3
    assert resumed['losses'] == pytest.approx(straight['losses'][3:], rel=1e-5)
    final_a = load_file(str(tmp_path / 'a/model.safetensors'))
    final_b = load_file(str(tmp_path / 'b/model.safetensors'))
    for name, value in final_a.items():
        torch.testing.assert_close(final_b[name], value, rtol=1e-5, atol=1e-6, msg=name)
    state_a = load_file(str(tmp_path / 'a/checkpoints/step_000006/train_state.safetensors'))
    state_b = load_file(str(tmp_path / 'b/checkpoints/step_000006/train_state.safetensors'))
    assert state_a.keys() == state_b.keys()
    assert float(state_b['optim.0.step']) == 6.0


def test_init_mismatch_is_a_clear_error(tmp_path):
    config = tiny_config()
    other = model_config(config, None).replace(num_queries=5, num_classes=3, classes=())
    checkpoint = save_checkpoint(build_model(other), tmp_path / 'other.safetensors')
    overrides = [*TINY, 'optim.max_steps=1']
    run = subprocess.run(
        [sys.executable, str(REPO / 'training/train.py'), '--config',
         str(REPO / 'training/configs/synthetic_tiny_tokenmask.yaml'), '--out',
         str(tmp_path / 'out'), '--init', str(checkpoint), '--no-progress', *overrides],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2, run.stderr
    assert 'does not match the training config' in run.stderr
    assert 'num_queries: checkpoint 5 != config 8' in run.stderr


def test_cli_names_the_files_it_wrote_without_a_progress_bar(tmp_path):
    """--no-progress silences tqdm, the only output of a run: the end still says where the
    model, the checkpoint and the metrics went."""
    out = tmp_path / 'out'
    run = subprocess.run(
        [sys.executable, str(REPO / 'training/train.py'), '--config',
         str(REPO / 'training/configs/synthetic_tiny_tokenmask.yaml'), '--out', str(out),
         '--no-progress', *TINY, 'optim.max_steps=1'],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    report = run.stdout.split('step 1: wrote\n')[1]
    listed = dict(line.split(maxsplit=1) for line in report.splitlines())
    assert listed.items() >= {'model:': str(out / 'model.safetensors'),
                              'checkpoint:': str(out / 'checkpoints' / 'step_000001'),
                              'metrics:': str(out / 'metrics.csv'),
                              'config:': str(out / 'config.yaml')}.items()
    assert all(Path(path).exists() for path in listed.values())


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    config = tiny_config('data.type=coco_panoptic', f'data.images_dir={tmp_path}/nope',
                         f'data.panoptic_dir={tmp_path}', f'data.json_file={tmp_path}/x.json')
    with pytest.raises(FileNotFoundError, match='nope'):
        train(config, tmp_path / 'out', progress=False)


def test_shipped_configs_build():
    for name in ('synthetic_tiny_tokenmask', 'synthetic_tiny_eomt'):
        config = load_train_config(REPO / f'training/configs/{name}.yaml')
        from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
        mconfig = model_config(config, [{'name': c.name, 'is_thing': c.is_thing}
                                        for c in SYNTHETIC_CLASSES])
        assert mconfig.num_classes == len(SYNTHETIC_CLASSES)
        assert mconfig.img_size == (256, 256) and mconfig.num_queries == 40


def test_bundled_model_recipe_loads():
    """The recipe named in models/README.md stays loadable as the trainer evolves."""
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES

    config = load_train_config(REPO / 'training/configs/synthetic_tiny_tokenmask_cpu.yaml')
    mconfig = model_config(config, [{'name': c.name, 'is_thing': c.is_thing}
                                    for c in SYNTHETIC_CLASSES])
    assert mconfig.img_size == (320, 320) and mconfig.head == 'tokenmask'
    assert (config.optim.max_steps, config.optim.layer_decay) == (2400, 1.0)


def test_periodic_evaluation_and_elapsed_time(tmp_path):
    config = tiny_config('optim.lr=1e-3', 'optim.max_steps=4', 'checkpoint_every=0',
                         'eval.every=2', 'eval.images=2')
    train(config, tmp_path, progress=False)
    import csv
    with (tmp_path / 'eval.csv').open() as file:
        rows = list(csv.DictReader(file))
    assert [int(r['step']) for r in rows] == [2, 4]
    for row in rows:
        for key in ('val_pq', 'val_pq_things', 'val_pq_stuff', 'val_miou'):
            assert 0.0 <= float(row[key]) <= 100.0, row
    with (tmp_path / 'metrics.csv').open() as file:
        elapsed = [float(r['elapsed_s']) for r in csv.DictReader(file)]
    assert len(elapsed) == 4 and elapsed == sorted(elapsed) and elapsed[0] > 0


def test_periodic_evaluation_needs_a_validation_set(tmp_path):
    config = tiny_config('data.type=ade20k_semantic', f'data.root={tmp_path}', 'eval.every=2')
    from training.periodic_eval import PeriodicEvaluation
    with pytest.raises(ValueError, match=r'eval\.images_dir'):
        PeriodicEvaluation(config, model_config(config, None))


def test_init_across_input_sizes_keeps_content_positions(tmp_path):
    """--init from a square model to a smaller grid keeps the top-left position embeddings
    (the letterboxed content); a larger grid is resampled."""
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
    classes = [{'name': c.name, 'is_thing': c.is_thing, 'color': tuple(c.color)}
               for c in SYNTHETIC_CLASSES]
    source_config = model_config(tiny_config(), classes)
    source = build_model(source_config)
    path = save_checkpoint(source, tmp_path / 'square.safetensors')
    embed = source.backbone.pos_embed.detach()  # [1, 1 + 4 * 4, D]
    grid = embed[:, 1:].reshape(1, 4, 4, -1)

    result = train(tiny_config('model.img_size=[48,64]', 'optim.max_steps=1', 'checkpoint_every=0'),
                   tmp_path / 'small', init=str(path), progress=False)
    assert result['step'] == 1
    from tokenmask_ros.model import load_config
    assert load_config(tmp_path / 'small/model.safetensors').img_size == (48, 64)
    from tokenmask_ros.model.backbone import fit_position_embedding
    target = source_config.replace(img_size=(48, 64))
    fitted = fit_position_embedding(source.state_dict(), source_config, target)
    torch.testing.assert_close(fitted['backbone.pos_embed'][:, :1], embed[:, :1])
    torch.testing.assert_close(fitted['backbone.pos_embed'][:, 1:],
                               grid[:, :3, :4].reshape(1, 12, -1))
    larger = fit_position_embedding(source.state_dict(), source_config,
                                    source_config.replace(img_size=(96, 64)))
    assert larger['backbone.pos_embed'].shape == (1, 1 + 6 * 4, embed.shape[-1])
    build_model(source_config.replace(img_size=(96, 64))).load_state_dict(larger)


def test_stage2_recipe_loads():
    config = load_train_config(REPO / 'training/configs/synthetic_tiny_tokenmask_cpu_stage2.yaml')
    assert config.model['img_size'] == [240, 320]
    assert (config.data.width, config.data.height) == (320, 320 * 3 // 4)
    assert config.optim.mask_annealing is False


def test_annealing_can_start_later():
    assert annealing_windows(600, 4, 1 / 6, 5 / 6) == annealing_windows(600, 4)
    late = annealing_windows(1000, 4, 0.5, 0.9)
    assert late[0] == (500, 600) and late[-1] == (800, 900)
    with pytest.raises(ValueError):
        annealing_windows(100, 4, 0.9, 0.5)


@pytest.mark.parametrize('name', ['synthetic_tiny_tokenmask_cpu_stage3',
                                  'synthetic_tiny_tokenmask_cpu_stage4',
                                  'synthetic_tiny_tokenmask_cpu_stage5',
                                  'synthetic_tiny_tokenmask_cpu_stage6',
                                  'synthetic_tiny_tokenmask_gpu'])
def test_bundled_model_later_recipes_load(name):
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES

    config = load_train_config(REPO / f'training/configs/{name}.yaml')
    mconfig = model_config(config, [{'name': c.name, 'is_thing': c.is_thing}
                                    for c in SYNTHETIC_CLASSES])
    assert mconfig.img_size == (240, 320) and mconfig.num_queries == 40
    assert (config.data.width, config.data.height) == (320, 240)
    # From scratch the masks stay on for at least a third of the run, and the run ends with
    # some unmasked steps (the model inference runs).
    assert config.optim.mask_annealing
    assert 0.3 <= config.optim.mask_annealing_start < config.optim.mask_annealing_end <= 0.95
    assert config.optim.aux_semantic_weight == (0.0 if name.endswith('stage3') else 2.0)
