#!/usr/bin/env python3
"""The paper's mask-head ablation on the synthetic scenes, each variant on the same budget.

    python training/ablation.py --steps 600 --out training/results/ablation_synthetic

Variants (all ViT-Tiny, same data, seed, schedule and number of optimiser steps):
``eomt/feature`` (the EoMT baseline: learned ScaleBlocks upsample the token map to stride 4),
``tokenmask/none`` (logits at the patch grid, stride 16) and ``tokenmask/logit`` at output
strides 1, 4 and 8 (bilinear upsampling of the logits). Each is trained with
training/train.py's ``train()``, from scratch or, as in the paper, from the same pretrained
backbone (``--backbone-weights``: timm/DINOv2 weights or any TokenMask checkpoint),
evaluated with training/evaluate.py's inference and metrics on fresh validation scenes, and
timed with the Segmenter (torch backend, the deployed graph) through ``tokenmask bench``'s
measurement. Writes ``ablation.md``, ``ablation.csv`` and
``ablation.png`` (PQ against latency) into ``--out``.

``--init-shared FILE`` starts every variant from *all* weights of a TokenMask checkpoint that
every head shares (backbone, queries, class head, mask MLP; only EoMT's ScaleBlocks are new),
so a short equal budget compares heads on a trained model rather than on untrained things
queries. ``--distil`` adds the label-free student of the ``eomt/feature s4`` variant
(``training/distill.py`` for the same number of steps, on unlabelled scenes of another
seed), with its PQ against distillation steps (``distillation_curve.{csv,png}``):

    python training/ablation.py --init-shared models/tokenmask_vit_tiny_synthetic.safetensors \
        --variants 'eomt/feature s4' 'tokenmask/logit s4' 'tokenmask/none s16' --distil \
        --steps 800 --lr 2e-4 --out training/results/head_comparison_synthetic
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

if not __package__:  # run as `python training/ablation.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

from tokenmask_ros.cli import parse_size

# name -> model overrides
VARIANTS = {
    'eomt/feature s4': {'head': 'eomt', 'upsample': 'feature', 'output_stride': 4},
    'tokenmask/none s16': {'head': 'tokenmask', 'upsample': 'none', 'output_stride': 16},
    'tokenmask/logit s8': {'head': 'tokenmask', 'upsample': 'logit', 'output_stride': 8},
    'tokenmask/logit s4': {'head': 'tokenmask', 'upsample': 'logit', 'output_stride': 4},
    'tokenmask/logit s1': {'head': 'tokenmask', 'upsample': 'logit', 'output_stride': 1},
    'tokenmask/subpatch s4': {'head': 'tokenmask', 'upsample': 'subpatch', 'output_stride': 4},
}
TEACHER = 'eomt/feature s4'
STUDENT = 'distilled student'
COLUMNS = ('variant', 'head', 'upsample', 'output_stride', 'steps', 'train_s', 'pq',
           'pq_things', 'pq_stuff', 'miou', 'gflops', 'latency_ms_median', 'latency_ms_p90',
           'inference_ms_median', 'params_m')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='training/results/ablation_synthetic',
                        help='output folder (tables, plot, one run folder per variant)')
    parser.add_argument('--steps', type=int, default=600, help='optimiser steps per variant')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--size', type=parse_size, default=(320, 240), metavar='WxH',
                        help='scene and model input size (multiples of 16; default 320x240)')
    parser.add_argument('--queries', type=int, default=40)
    parser.add_argument('--val-images', type=int, default=100)
    parser.add_argument('--val-seed', type=int, default=12345)
    parser.add_argument('--repeats', type=int, default=20, help='timed Segmenter calls')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS),
                        metavar='VARIANT', help=f'subset of {list(VARIANTS)}')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--backbone-weights', default=None, metavar='FILE',
                        help='start every variant from this backbone (timm/DINOv2 safetensors '
                             'or a TokenMask checkpoint, whose heads are ignored) instead of '
                             'from scratch; the heads are always new')
    parser.add_argument('--init-shared', default=None, metavar='FILE',
                        help='start every variant from all weights of this TokenMask '
                             'checkpoint that fit it (backbone, queries, class head, mask '
                             'MLP); head-specific weights (EoMT ScaleBlocks) are new and '
                             'masked attention is off')
    parser.add_argument('--distil', action='store_true',
                        help=f'also distil the {TEACHER!r} variant into a TokenMask student '
                             '(same steps, unlabelled scenes) and add it to the table')
    parser.add_argument('--distil-images', type=int, default=2000,
                        help='unlabelled scenes written for --distil')
    parser.add_argument('--curve-images', type=int, default=50,
                        help="validation scenes per point of the student's PQ curve")
    parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                        help='extra train-config overrides for every variant, e.g. '
                             'model.depth=6 (section.key=value, YAML values)')
    parser.add_argument('--reuse', action='store_true',
                        help='keep variants already trained and evaluated in --out (their '
                             'model.safetensors and metrics.json) and only re-time them, e.g. '
                             'on a quiet machine')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    if args.steps < 1 or args.val_images < 1 or args.repeats < 1:
        parser.error('--steps, --val-images and --repeats must be >= 1')
    for option in ('backbone_weights', 'init_shared'):
        value = getattr(args, option)
        if value and not Path(value).is_file():
            parser.error(f"--{option.replace('_', '-')}: no such file: {value}")
    if args.distil and TEACHER not in args.variants:
        parser.error(f'--distil needs the {TEACHER!r} variant (the teacher)')
    return args


def train_config(args: argparse.Namespace, model: dict):
    from training.train_config import load_train_config

    width, height = args.size
    overrides = {
        'model.preset': 'tiny', 'model.img_size': [height, width],
        'model.num_queries': args.queries, **{f'model.{k}': v for k, v in model.items()},
        'data.type': 'synthetic', 'data.count': 50000, 'data.width': width,
        'data.height': height, 'data.scale_range': [0.5, 1.5], 'data.num_workers': 1,
        'optim.lr': args.lr, 'optim.layer_decay': 1.0, 'optim.batch_size': args.batch_size,
        'optim.max_steps': args.steps, 'optim.head_warmup': max(1, args.steps // 40),
        'optim.backbone_warmup': max(1, args.steps // 10), 'optim.grad_clip': 1.0,
        'optim.num_points': 2048, 'checkpoint_every': 0, 'log_every': 20, 'seed': args.seed,
    }
    if args.init_shared:  # a trained model: no masked-attention phase, new heads warm up first
        overrides.update({'optim.mask_annealing': False,
                          'optim.head_warmup': max(1, args.steps // 10)})
    return load_train_config(None, [*(f'{k}={v}' for k, v in overrides.items()), *args.set])


def shared_init(source_path: str, config, path: Path) -> Path:
    """Write a checkpoint of ``config``'s model holding every tensor of ``source_path`` that
    fits (same name and shape after fitting the position embedding); the rest stays as built.

    Why a file: ``train()``'s ``--init`` then starts the run exactly as a user's would.
    """
    from tokenmask_ros.model import build_model, load_checkpoint, save_checkpoint
    from tokenmask_ros.model.backbone import fit_position_embedding
    from training.datasets.build import build_dataset
    from training.train_config import model_config

    source = load_checkpoint(source_path)
    target = model_config(config, build_dataset(config.data)[1])
    model = build_model(target)
    fitted = fit_position_embedding(source.state_dict(), source.config, target)
    own = model.state_dict()
    shared = {k: v for k, v in fitted.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith('backbone.') for k in shared):
        raise ValueError(f'{source_path}: no backbone weights fit the {target.head} model')
    model.load_state_dict(shared, strict=False)
    return save_checkpoint(model, path, {'init_from': str(source_path)})


def evaluate_checkpoint(path: Path, args: argparse.Namespace) -> dict:
    from tokenmask_ros.model import load_checkpoint
    from training.eval_data import synthetic_dataset
    from training.evaluation import evaluate_model

    model = load_checkpoint(path).eval()
    width, height = args.size
    dataset, classes = synthetic_dataset(args.val_images, args.val_seed, (height, width))
    return evaluate_model(model, dataset, classes)


def run_variant(name: str, args: argparse.Namespace, out: Path) -> dict:
    from training.trainer import train

    run = run_folder(out, name)
    checkpoint, saved = run / 'model.safetensors', run / 'ablation_metrics.json'
    if args.reuse and checkpoint.is_file() and saved.is_file():
        record = json.loads(saved.read_text())
        metrics, train_s = record['metrics'], record['train_s']
    else:
        started = time.monotonic()
        if name == STUDENT:
            distil_student(args, out, run)
        else:
            config = train_config(args, VARIANTS[name])
            init = shared_init(args.init_shared, config, run / 'init.safetensors') \
                if args.init_shared else None
            train(config, run, init=str(init) if init else None,
                  backbone_weights=args.backbone_weights, progress=not args.no_progress)
        train_s = time.monotonic() - started
        metrics = evaluate_checkpoint(checkpoint, args)
        saved.write_text(json.dumps({'metrics': metrics, 'train_s': train_s}, indent=1))
    return measured_row(name, checkpoint, metrics, train_s, args)


def run_folder(out: Path, name: str) -> Path:
    return out / name.replace('/', '_').replace(' ', '_')


def distil_student(args: argparse.Namespace, out: Path, run: Path) -> None:
    """``training/distill.py`` of the teacher variant for ``--steps`` steps on unlabelled
    scenes of another seed, checkpointed five times for the PQ-against-steps curve."""
    from tokenmask_ros.model import load_checkpoint, save_checkpoint
    from training.distiller import DistillConfig, distill, student_from_teacher

    teacher = run_folder(out, TEACHER) / 'model.safetensors'
    images = write_unlabelled_scenes(out / 'unlabelled', args.distil_images, args.size,
                                     args.seed + 1000, progress=not args.no_progress)
    config = DistillConfig(teacher=str(teacher), images=str(images), steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, grad_clip=1.0,
                           warmup=max(1, args.steps // 40),
                           checkpoint_every=max(1, args.steps // 5), seed=args.seed)
    teacher_model = load_checkpoint(teacher)
    initial = run / 'checkpoints' / 'step_000000' / 'model.safetensors'  # the curve's start
    save_checkpoint(student_from_teacher(teacher_model), initial, {'step': 0})
    distill(config, teacher_model, run, progress=not args.no_progress)


def write_unlabelled_scenes(folder: Path, count: int, size: tuple[int, int],
                            seed: int, progress: bool = True) -> Path:
    """``count`` training-stream synthetic scenes as PNG files, without their labels."""
    import cv2
    from tqdm import tqdm

    from training.datasets.synthetic import scene_generator

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob('*.png'))) == count:
        return folder
    width, height = size
    generator = scene_generator('train', width, height, seed)
    for index in tqdm(range(count), desc='unlabelled scenes', dynamic_ncols=True,
                      disable=not progress):
        rgb = generator.scene(index).image
        cv2.imwrite(str(folder / f'scene_{index:05d}.png'), rgb[:, :, ::-1])
    return folder


def measured_row(name: str, checkpoint: Path, metrics: dict, train_s: float,
                 args: argparse.Namespace) -> dict:
    """The table row: accuracy, GFLOPs of the deployed forward pass, Segmenter latency."""
    from tokenmask_ros.model import load_checkpoint
    from tokenmask_ros.model.backbone import count_parameters
    from tokenmask_ros.model.flops import count_flops
    from tokenmask_ros.runtime.bench import bench_segmenter

    timing = bench_segmenter(checkpoint, 'torch', 'fp32', args.size, device='cpu',
                             warmup=3, repeats=args.repeats)
    if not timing.ok:
        raise RuntimeError(f'{name}: timing failed: {timing.reason}')
    model = load_checkpoint(checkpoint).eval()
    params = count_parameters(model) / 1e6
    gflops = count_flops(model, convention='deploy').gflops
    config = model.config
    return {'variant': name, 'head': config.head, 'upsample': config.upsample,
            'output_stride': config.output_stride, 'steps': args.steps,
            'train_s': round(train_s, 1), **{k: round(metrics[k], 2) for k in
                                             ('pq', 'pq_things', 'pq_stuff', 'miou')},
            'gflops': round(gflops, 3),
            'latency_ms_median': round(timing.total.median, 2),
            'latency_ms_p90': round(timing.total.p90, 2),
            'inference_ms_median': round(timing.stages['inference'].median, 2),
            'params_m': round(params, 3)}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    from tokenmask_ros.runtime.bench import environment

    width, height = args.size
    start = f'from the shared weights of `{args.init_shared}`' if args.init_shared else \
        f'from the backbone of `{args.backbone_weights}`' if args.backbone_weights \
        else 'from scratch'
    lines = [f'Synthetic ablation: ViT-Tiny, {width}x{height}, {args.queries} queries, '
             f'{args.steps} steps of batch {args.batch_size} {start} per variant; PQ on '
             f'{args.val_images} validation scenes (seed {args.val_seed}); latency of the '
             'whole Segmenter call (torch backend, fp32, CPU).', '',
             f'Machine: {environment("cpu")}', '',
             '| variant | PQ | PQ things | PQ stuff | mIoU | GFLOPs | latency ms (median / p90) | '
             'params M | train s |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['variant']} | {r['pq']:.2f} | {r['pq_things']:.2f} | "
                     f"{r['pq_stuff']:.2f} | {r['miou']:.2f} | {r['gflops']:.2f} | "
                     f"{r['latency_ms_median']:.1f} / "
                     f"{r['latency_ms_p90']:.1f} | {r['params_m']:.2f} | {r['train_s']:.0f} |")
    return '\n'.join(lines) + '\n'


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for r in rows:
        marker = 's' if r['head'] == 'eomt' else 'o'
        axis.scatter(r['latency_ms_median'], r['pq'], marker=marker, s=50)
        axis.annotate(r['variant'], (r['latency_ms_median'], r['pq']),
                      textcoords='offset points', xytext=(5, 4), fontsize=8)
    axis.set_xlabel('Segmenter latency, median (ms, CPU)')
    axis.set_ylabel('PQ (synthetic val)')
    axis.set_title('Mask head ablation, same training budget')
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    names = list(args.variants)
    if args.distil:  # right after its teacher
        names.insert(names.index(TEACHER) + 1, STUDENT)
    for name in names:
        print(f'== {name}', flush=True)
        rows.append(run_variant(name, args, out))
        print(f"   PQ {rows[-1]['pq']:.2f}  latency {rows[-1]['latency_ms_median']:.1f} ms",
              flush=True)
    with (out / 'ablation.csv').open('w', newline='') as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if args.distil:
        from training import training_curve

        training_curve.main([str(run_folder(out, STUDENT)), '--images', str(args.curve_images),
                             '--seed', str(args.val_seed), '--reuse',
                             '--out', str(out / 'distillation_curve')])
    table = markdown(rows, args)
    (out / 'ablation.md').write_text(table)
    plot(out / 'ablation.png', rows)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
