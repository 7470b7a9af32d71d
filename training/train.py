#!/usr/bin/env python3
"""Train TokenMask / EoMT with EoMT's recipe (training/README.md).

    python training/train.py --config training/configs/synthetic_tiny_tokenmask.yaml --out runs/t
    python training/train.py --config CFG --out runs/t --resume runs/t/checkpoints/step_000500
    torchrun --nproc-per-node 2 training/train.py --config CFG optim.batch_size=8

Configs are short YAML files over the defaults of :class:`TrainConfig`; ``section.key=value``
arguments override them (values parsed as YAML). Writes ``config.yaml``, ``metrics.csv``
(plus ``eval.csv`` with periodic validation PQ / mIoU when ``eval.every`` > 0, and
TensorBoard events when tensorboard is installed), ``checkpoints/step_N/`` (weights
``model.safetensors`` + pickle-free training state) and ``model.safetensors`` at the end,
then prints where each went.

This script parses the options; the run is :mod:`training.trainer`, the configuration
:mod:`training.train_config`, the data :mod:`training.datasets.build` and
:mod:`training.datasets.loader`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if not __package__:  # run as `python training/train.py`: the repository onto sys.path
    import _repo_path  # noqa: F401


def report_outputs(result: dict) -> None:
    """Say where the model went (rank 0 only), with or without the progress bar."""
    from training.trainer import run_outputs

    if int(os.environ.get('RANK', '0')) != 0:
        return
    outputs = run_outputs(Path(result['out']), result['step'])
    print(f'step {result["step"]}: wrote')
    for role, path in outputs.items():
        print(f'  {role + ":":<12} {path}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', required=True, help='YAML training config')
    parser.add_argument('--out', default=None, help='output folder (default runs/<config>)')
    parser.add_argument('--resume', default=None,
                        help='checkpoint folder (checkpoints/step_N) to continue from')
    parser.add_argument('--init', default=None,
                        help='tokenmask checkpoint to start from (config must match except '
                             'img_size; the position embedding is cropped or resampled)')
    parser.add_argument('--backbone-weights', default=None,
                        help='local safetensors file with pretrained timm/DINOv2 ViT weights, '
                             'or a TokenMask checkpoint whose backbone only is used (other '
                             'classes, head or input size are fine)')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm bar')
    parser.add_argument('overrides', nargs='*', help='section.key=value (YAML values)')
    args = parser.parse_args(argv)
    # After parsing: --help and usage errors do not wait for PyTorch.
    from training.train_config import load_train_config
    from training.trainer import train

    try:
        config = load_train_config(args.config, args.overrides)
        out = args.out or str(Path('runs') / Path(args.config).stem)
        result = train(config, out, args.resume, args.init, args.backbone_weights,
                       progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    report_outputs(result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
