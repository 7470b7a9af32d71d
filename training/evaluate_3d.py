#!/usr/bin/env python3
"""3D centre error of segment_node's boxes on synthetic RGB-D sequences.

    python training/evaluate_3d.py --sequences 4 --length 60
    python training/evaluate_3d.py --sequences 1 --length 10 --no-model

For every ground-truth thing: the distance between its true centre and the centre of the
3D box that ``segment_node`` would publish (per-axis median of the segment's back-projected
depth pixels), relative to the thing's distance. Two rows: boxes from the ground-truth masks
(the depth maths alone) and from the bundled model's segments matched to the truth by mask
IoU >= 0.5 (``--model`` for another model). Prints a markdown table; ``--out`` also writes
it with a CSV of every thing.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

if not __package__:  # run as `python training/evaluate_3d.py`: the repository onto sys.path
    import _repo_path  # noqa: F401


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sequences', type=int, default=4, help='synthetic sequences (4)')
    parser.add_argument('--length', type=int, default=60, help='frames per sequence (60)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first sequence (0)')
    parser.add_argument('--model', default=None, help='model file (default: the bundled one)')
    parser.add_argument('--backend', default='auto', help='inference backend (auto)')
    parser.add_argument('--no-model', action='store_true', help='ground-truth masks only')
    parser.add_argument('--out', type=Path, help='folder for centres_3d.md and .csv')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.sequences < 1 or args.length < 1:
        parser.error('--sequences and --length must be at least 1')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from tokenmask_ros.synthetic_video import SequenceGenerator
    from training.centres_3d import model_errors, summarise, truth_errors

    segmenter = None
    if not args.no_model:
        from tokenmask_ros.bundled import resolve_model_path
        from tokenmask_ros.runtime import Segmenter

        segmenter = Segmenter(resolve_model_path(args.model), args.backend)
    errors = []
    frames = [(seed, index) for seed in range(args.seed, args.seed + args.sequences)
              for index in range(args.length)]
    generators = {}
    for seed, index in tqdm(frames, desc='3D centres', disable=args.no_progress):
        generator = generators.setdefault(seed, SequenceGenerator(seed=seed, length=args.length))
        frame = generator.frame(index)
        errors += truth_errors(frame)
        if segmenter is not None:
            errors += model_errors(frame, segmenter(frame.image).panoptic)
    table = markdown_table(errors, summarise, args)
    print(table)
    if args.out:
        write_outputs(args.out, table, errors)
    return 0


def markdown_table(errors, summarise, args) -> str:
    columns = ('things', 'median %', 'p90 %', 'median cm', 'within 2 %', 'within 5 %')
    lines = [f'3D centre error, {args.sequences} synthetic sequence(s) x {args.length} frames '
             f'(320x240), seeds {args.seed}..{args.seed + args.sequences - 1}', '',
             '| boxes from | ' + ' | '.join(columns) + ' |',
             '|---|' + '---|' * len(columns)]
    for source in ('ground truth', 'model'):
        stats = summarise([e for e in errors if e.source == source])
        if stats['things']:
            cells = [f'{stats[c]:.0f}' if c == 'things' else f'{stats[c]:.2f}' for c in columns]
            lines.append(f'| {source} masks | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_outputs(folder: Path, table: str, errors) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'centres_3d.md').write_text(table + '\n')
    with (folder / 'centres_3d.csv').open('w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['source', 'distance_m', 'error_m', 'relative_error'])
        for e in errors:
            writer.writerow([e.source, f'{e.distance:.4f}', f'{e.error:.4f}', f'{e.relative:.5f}'])
    print(f'wrote {folder / "centres_3d.md"}, {folder / "centres_3d.csv"}')


if __name__ == '__main__':
    sys.exit(main())
