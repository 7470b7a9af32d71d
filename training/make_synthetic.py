#!/usr/bin/env python3
"""Write the synthetic scenes as a COCO-panoptic dataset (train and val splits), or
synthetic RGB-D videos with ground-truth track ids (``--sequences``).

    python training/make_synthetic.py --out data/synthetic --train 2000 --val 200 \\
        --size 640x480 --seed 0
    python training/make_synthetic.py --out data/sequences --sequences 5 --length 60

Writes ``OUT/images/{train,val}/``, ``OUT/panoptic/{train,val}/`` and
``OUT/panoptic_{train,val}.json`` (see ``training/datasets/synthetic.py``); the result reads
with ``training.datasets.CocoPanoptic`` like COCO, ADE20K or Cityscapes panoptic. The same
arguments always give the same files; val scenes come from a different random stream.

With ``--sequences N``: folders ``OUT/0000 .. OUT/N-1`` (sequence ``i`` from seed
``SEED + i``; layout in ``tokenmask_ros/sequence_io.py``: images, 16-bit depth, COCO
panoptic PNGs, camera_info.json and a KITTI MOTS gt.txt) and ``OUT/seqmap.txt``, the
KITTI MOTS seqmap (``name empty first last``) that TrackEval reads.
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
    parser.add_argument('--train', type=_count, default=None,
                        help='number of training scenes (default 1000)')
    parser.add_argument('--val', type=_count, default=None,
                        help='number of validation scenes (default 100)')
    parser.add_argument('--sequences', type=_count, default=0,
                        help='write this many video sequences instead of scene splits')
    parser.add_argument('--length', type=_count, default=60,
                        help='frames per sequence (default 60)')
    parser.add_argument('--things', type=_count, default=6,
                        help='things per sequence (default 6)')
    parser.add_argument('--size', type=parse_size, default=None,
                        help='WIDTHxHEIGHT of every image (default 640x480 for scenes, '
                             '320x240 for sequences)')
    parser.add_argument('--seed', type=_count, default=0,
                        help='generator seed; train and val use two streams of it (default 0)')
    parser.add_argument('--image-format', choices=IMAGE_FORMATS, default='png',
                        help='image file format: png (lossless, default) or jpg (quality 95)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars or summary')
    return parser


def write_sequences(args) -> None:
    """``args.sequences`` sequence folders and the seqmap (written last)."""
    from tqdm import tqdm

    from tokenmask_ros.sequence_io import write_sequence
    from tokenmask_ros.synthetic_video import SequenceGenerator

    width, height = args.size or (320, 240)
    rows = []
    for i in range(args.sequences):
        name = f'{i:04d}'
        generator = SequenceGenerator(height=height, width=width, seed=args.seed + i,
                                      length=args.length, num_things=args.things)

        def progress(items, name=name):
            return tqdm(items, desc=name, unit='frame', disable=args.quiet)

        write_sequence(args.out / name, generator, progress=progress)
        rows.append(f'{name} empty {0:06d} {args.length - 1:06d}\n')
    (args.out / 'seqmap.txt').write_text(''.join(rows))
    if not args.quiet:
        print(f'{args.sequences} sequence(s) of {args.length} frames, {width}x{height} -> '
              f'{args.out} (seqmap {args.out / "seqmap.txt"})')


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sequences:
        if args.train is not None or args.val is not None:
            parser.error('--train/--val write scene splits; they do not go with --sequences')
        if args.length < 1:
            parser.error('--length must be >= 1')
        write_sequences(args)
        return 0
    from tqdm import tqdm  # after parsing: --help does not wait for PyTorch

    from training.datasets.synthetic import write_split

    width, height = args.size or (640, 480)
    counts = (('train', 1000 if args.train is None else args.train),
              ('val', 100 if args.val is None else args.val))
    for split, count in counts:
        def progress(items, split=split):
            return tqdm(items, desc=split, unit='scene', disable=args.quiet)

        json_file = write_split(args.out, split, count, width, height, args.seed,
                                image_format=args.image_format, progress=progress)
        if not args.quiet:
            print(f'{split}: {count} scene(s) of {width}x{height} -> {json_file}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
