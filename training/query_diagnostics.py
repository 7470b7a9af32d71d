#!/usr/bin/env python3
"""Where a panoptic model loses its things: mask quality or class, by object size.

    python training/query_diagnostics.py --checkpoint models/X.safetensors --synthetic 100

PQ mixes two failures: a thing whose mask no query finds, and a thing found by a query
that names the wrong class (or is not confident enough to pass the score threshold). This
tool separates them without any threshold: for every ground-truth thing it takes the query
whose mask (logit > 0) overlaps it best and reports, per object-area bin, how often that
mask has IoU > 0.5, how often its most likely class is right, and the mean probability of
the right class; plus the confusion matrix of the thing classes over all sizes (a last
column counts things taken for a stuff class). Inference is evaluate.py's padded forward
pass, so the numbers describe the model PQ measures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as `python training/query_diagnostics.py`: the repository onto sys.path
    import _repo_path  # noqa: F401


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 3)[3])
    parser.add_argument('--checkpoint', required=True, help='TokenMask checkpoint')
    parser.add_argument('--synthetic', type=int, default=100, metavar='N',
                        help='number of fresh synthetic validation scenes (default 100)')
    parser.add_argument('--seed', type=int, default=12345,
                        help='scene generator seed (default 12345, as the issue bar)')
    parser.add_argument('--out', default=None, help='also write the summary as this JSON file')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)

    # After parsing, so --help does not wait for PyTorch; the statistics are query_stats.py.
    from tokenmask_ros.model import load_checkpoint
    from tokenmask_ros.model.checkpoint import CheckpointError
    from training.eval_data import EvaluationError, check_classes, synthetic_dataset
    from training.query_stats import diagnose, format_summary

    try:
        model = load_checkpoint(args.checkpoint)
        samples, classes = synthetic_dataset(args.synthetic, args.seed,
                                             tuple(model.config.img_size))
        check_classes(model.config, classes, 'the synthetic dataset')
    except (CheckpointError, EvaluationError) as error:
        parser.error(str(error))
    summary = diagnose(model, samples, classes, progress=not args.no_progress)
    print(format_summary(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
