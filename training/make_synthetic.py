#!/usr/bin/env python3
"""Write the synthetic scenes as a COCO-panoptic dataset (train and val splits).

    python training/make_synthetic.py --out data/synthetic --train 2000 --val 200 \\
        --size 640x480 --seed 0

Writes ``OUT/images/{train,val}/``, ``OUT/panoptic/{train,val}/`` and
``OUT/panoptic_{train,val}.json`` (see ``training/datasets/synthetic.py``); the result reads
with ``training.datasets.CocoPanoptic`` like COCO, ADE20K or Cityscapes panoptic. The same
arguments always give the same files; val scenes come from a different random stream.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python training/make_synthetic.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

from tokenmask_ros.cli import parse_size
from training.settings import IMAGE_FORMATS


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {value}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, type=Path,
                        help='output folder (created if missing; existing files are replaced)')
    parser.add_argument('--train', type=_count, default=1000,
                        help='number of training scenes (default 1000)')
    parser.add_argument('--val', type=_count, default=100,
                        help='number of validation scenes (default 100)')
    parser.add_argument('--size', type=parse_size, default=(640, 480),
                        help='WIDTHxHEIGHT of every scene (default 640x480)')
    parser.add_argument('--seed', type=_count, default=0,
                        help='generator seed; train and val use two streams of it (default 0)')
    parser.add_argument('--image-format', choices=IMAGE_FORMATS, default='png',
                        help='image file format: png (lossless, default) or jpg (quality 95)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars or summary')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm  # after parsing: --help does not wait for PyTorch

    from training.datasets.synthetic import write_split

    width, height = args.size
    for split, count in (('train', args.train), ('val', args.val)):
        def progress(items, split=split):
            return tqdm(items, desc=split, unit='scene', disable=args.quiet)

        json_file = write_split(args.out, split, count, width, height, args.seed,
                                image_format=args.image_format, progress=progress)
        if not args.quiet:
            print(f'{split}: {count} scene(s) of {width}x{height} -> {json_file}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
