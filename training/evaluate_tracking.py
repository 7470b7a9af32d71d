#!/usr/bin/env python3
"""Score panoptic tracking on masks with TrackEval: HOTA, DetA, AssA, IDF1, ID switches.

    python training/evaluate_tracking.py --sequences 8 --length 60 --out runs/tracking
    python training/evaluate_tracking.py --data datasets/video --out runs/tracking   # from disk

Three runs over the same sequences (``--runs`` picks some):
  association    the tracker fed the ground-truth thing masks with shuffled per-frame
                 instance numbers: its association alone;
  model+tracker  the bundled model (or --model) through the tracker, as segment_node runs;
  model          the model's own per-frame numbering: the baseline without tracking.
Class-aware (each class scored on its own, combined detection-averaged as TrackEval's
cls_comb_det_av); mask IoU similarity; IDF1 and ID switches at IoU 0.5.

Writes OUT/tracking.md (the table), OUT/tracking.csv (every run: all sequences, then each
sequence) and OUT/tracking.png; with --mots, OUT/mots/<run>/<sequence>.txt and
OUT/mots/gt/<sequence>.txt in the MOTS text format TrackEval reads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as `python training/evaluate_tracking.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

from tokenmask_ros.cli import parse_size

RUNS = ('association', 'model+tracker', 'model')  # training.tracking_runs.METHODS


def _whole(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be >= {minimum}, got {value}')
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--sequences', type=_whole(1), default=8,
                        help='number of synthetic sequences (default 8)')
    source.add_argument('--data', type=Path,
                        help='sequences on disk instead: a folder with images/ and gt.txt '
                             '(MOTS), or a folder of such folders (make_synthetic.py --sequences)')
    parser.add_argument('--length', type=_whole(1), default=60,
                        help='frames per synthetic sequence (default 60)')
    parser.add_argument('--size', type=parse_size, default=(320, 240),
                        help='WIDTHxHEIGHT of the synthetic frames (default 320x240, the '
                             "bundled model's input)")
    parser.add_argument('--seed', type=_whole(0), default=0,
                        help='seed of the first synthetic sequence (then seed+1, ...) and of '
                             'the shuffling (default 0)')
    parser.add_argument('--runs', nargs='+', choices=RUNS, default=list(RUNS),
                        help='which runs (default all three)')
    parser.add_argument('--no-model', action='store_true',
                        help='only the association run (no model loaded)')
    parser.add_argument('--model', default=None,
                        help='model file (default: the bundled model)')
    parser.add_argument('--backend', default='auto',
                        help='inference backend: auto, torch, onnxruntime, tensorrt')
    parser.add_argument('--out', type=Path, default=Path('tracking_results'),
                        help='output folder (default tracking_results)')
    parser.add_argument('--mots', action='store_true',
                        help='also write every run and the ground truth as MOTS text files')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = ['association'] if args.no_model else list(dict.fromkeys(args.runs))

    from tqdm import tqdm  # after parsing: --help stays fast

    from training.tracking_metrics import sequence_results, summarise, write_mots
    from training.tracking_report import format_table, plot, write_csv
    from training.tracking_runs import (
        DESCRIPTIONS,
        MODEL,
        MODEL_TRACKER,
        folder_sequences,
        run_sequences,
        synthetic_sequences,
    )

    try:
        sequences = folder_sequences(args.data) if args.data else synthetic_sequences(
            args.sequences, args.length, args.size, args.seed)
    except (OSError, ValueError) as error:
        print(f'evaluate_tracking: {error}', file=sys.stderr)
        return 1
    segmenter = None
    model_name = None
    if MODEL in runs or MODEL_TRACKER in runs:
        from tokenmask_ros.bundled import resolve_model_path
        from tokenmask_ros.runtime import Segmenter

        try:
            model = resolve_model_path(args.model)
            if not Path(model).is_file():
                raise FileNotFoundError(f'no model file {model}')
            segmenter = Segmenter(model, args.backend)
        except (OSError, ValueError) as error:
            print(f'evaluate_tracking: {error}', file=sys.stderr)
            return 1
        model_name = Path(model).name

    args.out.mkdir(parents=True, exist_ok=True)
    per_run: dict[str, list] = {run: [] for run in runs}
    rows = []
    start = time.perf_counter()
    total = sum(s.length for s in sequences)
    try:
        with tqdm(total=total, unit='frame', disable=args.no_progress,
                  desc='tracking') as progress:
            model_is_thing = segmenter.is_thing if segmenter is not None else None
            for sequence, done in run_sequences(sequences, runs, segmenter=segmenter,
                                                model_is_thing=model_is_thing,
                                                seed=args.seed, progress=progress):
                for run in runs:
                    results = sequence_results(done.truth, done.predictions[run])
                    per_run[run].extend(results)
                    rows.append((run, sequence.name, summarise(results)))
                    if args.mots:
                        (args.out / 'mots' / run).mkdir(parents=True, exist_ok=True)
                        write_mots(args.out / 'mots' / run / f'{sequence.name}.txt',
                                   done.predictions[run])
                if args.mots:
                    (args.out / 'mots' / 'gt').mkdir(parents=True, exist_ok=True)
                    write_mots(args.out / 'mots' / 'gt' / f'{sequence.name}.txt', done.truth)
    finally:
        if segmenter is not None:
            segmenter.close()
    scores = {run: summarise(per_run[run]) for run in runs}
    rows = [(run, 'all', scores[run]) for run in runs] + rows

    frames = f'{len(sequences)} sequence(s), {total} frames'
    source = str(args.data) if args.data else (
        f'synthetic, {args.size[0]}x{args.size[1]}, seeds {args.seed}..'
        f'{args.seed + len(sequences) - 1}')
    descriptions = dict(DESCRIPTIONS)
    if model_name:
        descriptions = {k: v.replace('bundled model', model_name) for k, v in
                        descriptions.items()}
    table = format_table(scores, descriptions)
    header = (f'Tracking on masks, TrackEval (HOTA/DetA/AssA over IoU 0.05..0.95; IDF1 and ID '
              f'switches at IoU 0.5; class-aware, detection-averaged): {frames}, {source}; '
              f'{time.perf_counter() - start:.0f} s.')
    (args.out / 'tracking.md').write_text(header + '\n\n' + table + '\n')
    write_csv(args.out / 'tracking.csv', rows)
    plot(args.out / 'tracking.png', scores, f'Tracking on masks: {frames}')
    print(header)
    print()
    print(table)
    print(f'\nwrote {args.out / "tracking.md"}, {args.out / "tracking.csv"}, '
          f'{args.out / "tracking.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
