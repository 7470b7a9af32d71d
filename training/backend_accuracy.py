#!/usr/bin/env python3
"""Backend x precision: PQ, latency and peak memory of the deployed path, in one table.

    python training/backend_accuracy.py                           # bundled model, 200 scenes
    python training/backend_accuracy.py --model my.safetensors --sizes 640x480 --images 50

For every (backend, precision) that runs here (``tokenmask bench --all``'s list: ONNX
Runtime fp32 / int8, torch fp32, OpenVINO fp32 / int8, TensorRT fp32 / fp16) and every frame
size: PQ of the Segmenter on ``--images`` synthetic validation scenes of that size (the same
scenes for every combination, ``training/evaluate.py --backend``'s scoring), and the
latency (median / p90 of the whole call) and peak memory of ``tokenmask bench``'s
measurement. The int8 exports are calibrated on 32 synthetic scenes (``tokenmask export
--int8 --synthetic 32``, cached). Writes ``backends.md`` and ``backends.csv`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

if not __package__:  # run as `python training/backend_accuracy.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

from tokenmask_ros.cli import parse_size

COLUMNS = ('backend', 'precision', 'width', 'height', 'status', 'pq', 'pq_things',
           'pq_stuff', 'miou', 'median_ms', 'p90_ms', 'ratio', 'peak_mem_mb', 'reason')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default=None,
                        help='TokenMask checkpoint with the synthetic classes (default: the '
                             'bundled model)')
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=[(320, 240), (640, 480)],
                        metavar='WxH', help='frame sizes (default: 320x240 640x480)')
    parser.add_argument('--images', type=int, default=200, help='validation scenes per size')
    parser.add_argument('--seed', type=int, default=12345, help='validation seed')
    parser.add_argument('--repeats', type=int, default=20, help='timed calls per combination')
    parser.add_argument('--out', type=Path, default=Path('benchmark_results/backends'))
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error('--images and --repeats must be >= 1')
    return args


def score(segmenter, dataset, classes) -> dict:
    """PQ / mIoU of the Segmenter on every scene (evaluate.py's metrics)."""
    import numpy as np
    from tqdm import tqdm

    from training.eval_metrics import EvalMetrics
    from training.letterbox import plain_image

    metrics = EvalMetrics(classes, instance=False)
    for index in tqdm(range(len(dataset)), desc='scoring', leave=False, dynamic_ncols=True):
        image, target = dataset[index]
        rgb = np.ascontiguousarray(plain_image(image).permute(1, 2, 0).numpy())
        metrics.update(segmenter(rgb), target)
    return metrics.compute()


def measure(model: str, backend: str, precision: str, size: tuple[int, int],
            args: argparse.Namespace) -> dict:
    """One row: PQ on the scenes of ``size``, then latency and peak memory."""
    from tokenmask_ros.runtime import BackendUnavailable, Segmenter
    from tokenmask_ros.runtime.bench import bench_segmenter
    from training.eval_data import synthetic_dataset

    width, height = size
    row = {'backend': backend, 'precision': precision, 'width': width, 'height': height}
    try:
        segmenter = Segmenter(model, backend, 'cpu' if backend != 'tensorrt' else 'cuda',
                              precision)
    except (BackendUnavailable, ImportError, ValueError) as error:
        return {**row, 'status': 'skipped', 'reason': str(error).split('\n')[0][:200]}
    with segmenter:
        dataset, classes = synthetic_dataset(args.images, args.seed, (height, width))
        metrics = score(segmenter, dataset, classes)
    timing = bench_segmenter(model, backend, precision, size,
                             device='cpu' if backend != 'tensorrt' else 'cuda',
                             repeats=args.repeats)
    if not timing.ok:
        return {**row, 'status': timing.status, 'reason': timing.reason}
    return {**row, 'status': 'ok', **{k: round(metrics[k], 2) for k in
                                      ('pq', 'pq_things', 'pq_stuff', 'miou')},
            'median_ms': round(timing.total.median, 1), 'p90_ms': round(timing.total.p90, 1),
            'peak_mem_mb': round(timing.peak_mem_mb, 1) if timing.peak_mem_mb else None,
            'reason': ''}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    from tokenmask_ros.runtime.bench import environment

    lines = [f'Deployed path (Segmenter) per backend and precision: PQ on {args.images} '
             f'synthetic validation scenes (seed {args.seed}) of each frame size; latency of '
             f'the whole call, {args.repeats} timed calls after warm-up; peak memory of the '
             'process while timing.', '', f'Machine: {environment("cpu")}', '',
             '| frame | backend | precision | PQ | PQ things | mIoU | median ms | p90 ms | '
             'x ORT fp32 | peak MB |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        if r['status'] != 'ok':
            lines.append(f"| {r['width']}x{r['height']} | {r['backend']} | {r['precision']} | "
                         f"{r['status']}: {r['reason'][:80]} | | | | | | |")
            continue
        lines.append(f"| {r['width']}x{r['height']} | {r['backend']} | {r['precision']} | "
                     f"{r['pq']:.2f} | {r['pq_things']:.2f} | {r['miou']:.2f} | "
                     f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['ratio']:.2f} | "
                     f"{r['peak_mem_mb'] if r['peak_mem_mb'] is not None else '-'} |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    args = parse_args(argv)
    from tokenmask_ros.bundled import default_model_path
    from tokenmask_ros.runtime.bench import ALL_COMBINATIONS, REFERENCE

    model = str(args.model or default_model_path())
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        block = []
        for backend, precision in ALL_COMBINATIONS:
            print(f'== {size[0]}x{size[1]} {backend} {precision}', flush=True)
            block.append(measure(model, backend, precision, size, args))
        reference = next((r for r in block if (r['backend'], r['precision']) == REFERENCE
                          and r['status'] == 'ok'), None)
        for row in block:
            if row['status'] == 'ok' and reference is not None:
                row['ratio'] = round(row['median_ms'] / reference['median_ms'], 3)
        rows += block
    with (args.out / 'backends.csv').open('w', newline='') as file:
        writer = csv.DictWriter(file, COLUMNS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    table = markdown([{**r, 'ratio': r.get('ratio', float('nan'))} for r in rows], args)
    (args.out / 'backends.md').write_text(table)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
