#!/usr/bin/env python3
"""PQ against training time from the checkpoints of one or more runs (stages in order).

    python training/training_curve.py runs/stage1 runs/stage2:900 runs/stage3 \\
        --images 50 --out models/tokenmask_vit_tiny_synthetic_curve

Each run folder's ``checkpoints/step_N/model.safetensors`` is evaluated on ``--images``
fresh synthetic validation scenes (training/evaluate.py's inference and metrics). Its time
is the run's ``elapsed_s`` at that step (metrics.csv), or, for runs logged before that
column existed, the checkpoint's modification time minus the run's start (``config.yaml``).
``RUN:STEP`` ends a stage at the checkpoint the next stage was initialised from; later
stages start the clock where it stopped. A stage whose run folder is gone can still be
placed by its final weights alone: ``FILE.safetensors:STEPS@MINUTES`` (one point, that
stage's step count and training time as recorded, e.g. in the model card).
Writes ``<out>.csv`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

if not __package__:  # run as `python training/training_curve.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

from tqdm import tqdm

SCORES = ('pq', 'pq_things', 'pq_stuff', 'miou')  # the curve's columns, from evaluate_model


def stage_points(text: str, previous: list[dict]) -> tuple[Path, list[tuple[int, float, Path]]]:
    """``(run or file, points)`` of one ``RUN[:STEP]`` or ``FILE.safetensors:STEPS@MINUTES``.

    A run folder that is gone but scored in ``previous`` (the ``--reuse`` CSV) keeps the
    points and times recorded there, so a curve can grow after old run folders are deleted.
    """
    spec, _, minutes = text.partition('@')
    path, _, last = spec.partition(':')
    path = Path(path)
    if path.suffix == '.safetensors':
        if not (last and minutes):
            raise SystemExit(f'error: {text}: a weights file needs its stage length, '
                             'FILE.safetensors:STEPS@MINUTES')
        if not path.is_file():
            raise SystemExit(f'error: {path}: no such file')
        return path, [(int(last), float(minutes) * 60, path)]
    if minutes:
        raise SystemExit(f'error: {text}: @MINUTES is only for a weights file; a run folder '
                         'has its own clock')
    last = int(last) if last else None
    recorded = [] if path.is_dir() else recorded_times(path, last, previous)
    return path, recorded or checkpoint_times(path, last)


def recorded_times(run: Path, last: int | None,
                   previous: list[dict]) -> list[tuple[int, float, None]]:
    """``(step, seconds since the run started, None)`` of a run's rows in an earlier curve
    (empty when it has none up to ``last``)."""
    rows = [r for r in previous
            if r['run'] == str(run) and (last is None or int(r['step']) <= last)]
    if not rows:
        return []
    stage = int(rows[0]['stage'])
    before = [float(r['hours']) for r in previous if int(r['stage']) == stage - 1]
    start = before[-1] if before else 0.0
    return [(int(r['step']), (float(r['hours']) - start) * 3600, None) for r in rows]


def checkpoint_times(run: Path, last: int | None) -> list[tuple[int, float, Path]]:
    """``(step, seconds since the run started, weights)`` of each kept checkpoint."""
    elapsed: dict[int, float] = {}
    metrics = run / 'metrics.csv'
    if metrics.is_file():
        with metrics.open(newline='') as file:
            for row in csv.DictReader(file):
                if row.get('elapsed_s'):
                    elapsed[int(row['step'])] = float(row['elapsed_s'])
    config = run / 'config.yaml'  # train.py writes it first; distill.py runs have none
    start = config.stat().st_mtime if config.is_file() else None
    points = []
    for folder in sorted((run / 'checkpoints').glob('step_*')):
        step = int(folder.name.split('_')[1])
        weights = folder / 'model.safetensors'
        if not weights.is_file() or (last is not None and step > last):
            continue
        seconds = elapsed.get(step, 0.0 if step == 0 or start is None
                              else weights.stat().st_mtime - start)
        points.append((step, seconds, weights))
    if not points:
        raise SystemExit(f'error: no checkpoints in {run / "checkpoints"}')
    return points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('stages', nargs='+', metavar='RUN[:STEP]',
                        help='run folders in training order (optionally cut at STEP), or '
                             'FILE.safetensors:STEPS@MINUTES for a stage known only by its '
                             'final weights')
    parser.add_argument('--images', type=int, default=50, help='validation scenes per point')
    parser.add_argument('--seed', type=int, default=12345, help='validation seed')
    parser.add_argument('--out', required=True, help='output path without extension')
    parser.add_argument('--reuse', action='store_true',
                        help="keep the scores of checkpoints already in <out>.csv (same run and "
                             "step) and evaluate only the new ones, e.g. after adding a stage; "
                             "runs whose folder is gone keep their recorded points")
    args = parser.parse_args(argv)

    from tokenmask_ros.model import load_checkpoint
    from training.eval_data import synthetic_dataset
    from training.evaluation import evaluate_model

    out = Path(args.out)
    previous = previous_rows(out.with_suffix('.csv')) if args.reuse else []
    known = {(row['run'], int(row['step'])): {k: float(row[k]) for k in SCORES}
             for row in previous}
    rows, offset, total_steps = [], 0.0, 0
    plan = []
    for index, text in enumerate(args.stages):
        run, points = stage_points(text, previous)
        plan += [(index, run, step, offset + seconds, total_steps + step, weights)
                 for step, seconds, weights in points]
        offset += points[-1][1]
        total_steps += points[-1][0]
    datasets = {}
    for stage, run, step, seconds, global_step, weights in tqdm(plan, desc='checkpoints'):
        result = known.get((str(run), step))
        if result is None:
            model = load_checkpoint(weights).eval()
            size = tuple(model.config.img_size)
            if size not in datasets:
                datasets[size] = synthetic_dataset(args.images, args.seed, size)
            dataset, classes = datasets[size]
            result = evaluate_model(model, dataset, classes)
        rows.append({'stage': stage, 'run': str(run), 'step': step, 'global_step': global_step,
                     'hours': round(seconds / 3600, 6),
                     **{k: round(result[k], 2) for k in SCORES}})
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix('.csv').open('w', newline='') as file:
        writer = csv.DictWriter(file, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(out.with_suffix('.png'), rows, args.images)
    for row in rows:
        print(row)
    return 0


def previous_rows(path: Path) -> list[dict]:
    """The rows of an earlier curve CSV (empty when there is none)."""
    if not path.is_file():
        return []
    with path.open(newline='') as file:
        return list(csv.DictReader(file))


def plot(path: Path, rows: list[dict], images: int) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    hours = [r['hours'] for r in rows]
    for key, label in (('pq', 'PQ'), ('pq_things', 'PQ things'), ('pq_stuff', 'PQ stuff'),
                       ('miou', 'mIoU')):
        axis.plot(hours, [r[key] for r in rows], marker='o', markersize=3, label=label)
    for stage in sorted({r['stage'] for r in rows})[1:]:
        # A stage starts where the one before it ended (its first point is a checkpoint later).
        start = [r['hours'] for r in rows if r['stage'] < stage][-1]
        axis.axvline(start, color='grey', linestyle=':', linewidth=1)
    axis.set_xlabel('training time (hours, 2-core CPU)')
    axis.set_ylabel(f'% on {images} synthetic val scenes')
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == '__main__':
    sys.exit(main())
