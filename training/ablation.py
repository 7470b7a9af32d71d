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
}
COLUMNS = ('variant', 'head', 'upsample', 'output_stride', 'steps', 'train_s', 'pq',
           'pq_things', 'pq_stuff', 'miou', 'latency_ms_median', 'latency_ms_p90',
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
    if args.backbone_weights and not Path(args.backbone_weights).is_file():
        parser.error(f'--backbone-weights: no such file: {args.backbone_weights}')
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
    return load_train_config(None, [*(f'{k}={v}' for k, v in overrides.items()), *args.set])


def evaluate_checkpoint(path: Path, args: argparse.Namespace) -> dict:
    from tokenmask_ros.model import load_checkpoint
    from training.eval_data import synthetic_dataset
    from training.evaluation import evaluate_model

    model = load_checkpoint(path).eval()
    width, height = args.size
    dataset, classes = synthetic_dataset(args.val_images, args.val_seed, (height, width))
    return evaluate_model(model, dataset, classes)


def run_variant(name: str, args: argparse.Namespace, out: Path) -> dict:
    from tokenmask_ros.model import load_checkpoint
    from tokenmask_ros.model.backbone import count_parameters
    from tokenmask_ros.runtime.bench import bench_segmenter
    from training.trainer import train

    model = VARIANTS[name]
    run = out / name.replace('/', '_').replace(' ', '_')
    checkpoint, saved = run / 'model.safetensors', run / 'ablation_metrics.json'
    if args.reuse and checkpoint.is_file() and saved.is_file():
        record = json.loads(saved.read_text())
        metrics, train_s = record['metrics'], record['train_s']
    else:
        started = time.monotonic()
        train(train_config(args, model), run, backbone_weights=args.backbone_weights,
              progress=not args.no_progress)
        train_s = time.monotonic() - started
        metrics = evaluate_checkpoint(checkpoint, args)
        saved.write_text(json.dumps({'metrics': metrics, 'train_s': train_s}, indent=1))
    timing = bench_segmenter(checkpoint, 'torch', 'fp32', args.size, device='cpu',
                             warmup=3, repeats=args.repeats)
    if not timing.ok:
        raise RuntimeError(f'{name}: timing failed: {timing.reason}')
    params = count_parameters(load_checkpoint(checkpoint)) / 1e6
    return {'variant': name, 'head': model['head'], 'upsample': model['upsample'],
            'output_stride': model['output_stride'], 'steps': args.steps,
            'train_s': round(train_s, 1), **{k: round(metrics[k], 2) for k in
                                             ('pq', 'pq_things', 'pq_stuff', 'miou')},
            'latency_ms_median': round(timing.total.median, 2),
            'latency_ms_p90': round(timing.total.p90, 2),
            'inference_ms_median': round(timing.stages['inference'].median, 2),
            'params_m': round(params, 3)}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    from tokenmask_ros.runtime.bench import environment

    width, height = args.size
    start = f'from the backbone of `{args.backbone_weights}`' if args.backbone_weights \
        else 'from scratch'
    lines = [f'Synthetic ablation: ViT-Tiny, {width}x{height}, {args.queries} queries, '
             f'{args.steps} steps of batch {args.batch_size} {start} per variant; PQ on '
             f'{args.val_images} validation scenes (seed {args.val_seed}); latency of the '
             'whole Segmenter call (torch backend, fp32, CPU).', '',
             f'Machine: {environment("cpu")}', '',
             '| variant | PQ | PQ things | PQ stuff | mIoU | latency ms (median / p90) | '
             'params M | train s |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['variant']} | {r['pq']:.2f} | {r['pq_things']:.2f} | "
                     f"{r['pq_stuff']:.2f} | {r['miou']:.2f} | {r['latency_ms_median']:.1f} / "
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
    for name in args.variants:
        print(f'== {name}', flush=True)
        rows.append(run_variant(name, args, out))
        print(f"   PQ {rows[-1]['pq']:.2f}  latency {rows[-1]['latency_ms_median']:.1f} ms",
              flush=True)
    with (out / 'ablation.csv').open('w', newline='') as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, args)
    (out / 'ablation.md').write_text(table)
    plot(out / 'ablation.png', rows)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
