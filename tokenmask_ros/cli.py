"""The ``tokenmask`` command line: one entry point, one subcommand per job.

Subcommands register themselves in :data:`COMMANDS`; each has its own ``--help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenmask_ros import __version__


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (argparse type) into ``(width, height)``; shared by the scripts."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}') from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f'size must be at least 16x16, got {text!r}')
    return width, height


def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic scenes as PNG images (and, with --preview, ground-truth overlays)."""
    import cv2
    import numpy as np
    from tqdm import tqdm

    from tokenmask_ros import viz
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES, SceneGenerator

    width, height = args.size
    generator = SceneGenerator(height=height, width=width, seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    class_colors = np.array([c.color for c in SYNTHETIC_CLASSES], np.uint8)
    for index in tqdm(range(args.count), desc='synth', unit='scene', disable=args.quiet):
        scene = generator.scene(index)
        name = f'scene_{index:05d}'
        cv2.imwrite(str(out / f'{name}.png'), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        if args.preview:
            colored = viz.colorize_panoptic(scene.panoptic, class_colors)
            preview = np.hstack([scene.image, viz.overlay(scene.image, colored, 0.6)])
            cv2.imwrite(str(out / f'{name}_preview.png'), cv2.cvtColor(preview, cv2.COLOR_RGB2BGR))
    if not args.quiet:
        print(f'wrote {args.count} scene(s) of {width}x{height} to {out}')
    return 0


def _add_synth(subparsers) -> None:
    parser = subparsers.add_parser(
        'synth', help='write synthetic scenes (shapes on textures) as PNG files',
        description=cmd_synth.__doc__)
    parser.add_argument('output', help='folder to write into (created if missing)')
    parser.add_argument('--count', type=int, default=16, help='number of scenes (default 16)')
    parser.add_argument('--size', type=parse_size, default=(640, 480),
                        help='WIDTHxHEIGHT of each scene (default 640x480)')
    parser.add_argument('--seed', type=int, default=0, help='generator seed (default 0)')
    parser.add_argument('--preview', action='store_true',
                        help='also write <name>_preview.png: image beside its panoptic overlay')
    parser.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    parser.set_defaults(func=cmd_synth)


def cmd_import_eomt(args: argparse.Namespace) -> int:
    """Convert a Hugging Face EoMT folder (config.json + model.safetensors) to a checkpoint."""
    from tokenmask_ros.model import save_checkpoint
    from tokenmask_ros.model.eomt_import import EomtImportError, import_hf_eomt

    try:
        model = import_hf_eomt(args.folder)
        path = save_checkpoint(model, args.output,
                               extra_metadata={'imported_from': Path(args.folder).resolve().name})
    except (EomtImportError, OSError) as error:
        print(f'tokenmask import-eomt: error: {error}', file=sys.stderr)
        return 1
    if not args.quiet:
        config = model.config
        print(f'imported {args.folder} ({config.backbone}, width {config.embed_dim}, depth '
              f'{config.depth}, {config.num_classes} classes, {config.num_queries} queries) '
              f'to {path}')
    return 0


def _add_import_eomt(subparsers) -> None:
    parser = subparsers.add_parser(
        'import-eomt', help='convert a Hugging Face transformers EoMT model to a checkpoint',
        description=cmd_import_eomt.__doc__)
    parser.add_argument('folder', metavar='DIR',
                        help='folder saved by EomtForUniversalSegmentation '
                        '(config.json and model.safetensors)')
    parser.add_argument('-o', '--output', required=True, metavar='OUT',
                        help='checkpoint to write (.safetensors; replaced if it exists)')
    parser.add_argument('--quiet', action='store_true', help='no summary line')
    parser.set_defaults(func=cmd_import_eomt)


COMMANDS = (_add_synth, _add_import_eomt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='tokenmask', description='TokenMask panoptic segmentation tools for ROS 2.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    subparsers = parser.add_subparsers(title='commands', dest='command', required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, 'count', 1) < 0:
        print('tokenmask: --count must be >= 0', file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
