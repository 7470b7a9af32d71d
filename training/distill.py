#!/usr/bin/env python3
"""Distil an EoMT teacher into a TokenMask student on unlabelled images (no annotations).

    python training/distill.py --teacher eomt.safetensors --images frames/ --out runs/d
    python training/distill.py --teacher eomt.safetensors --images frames/ --out runs/d \
        --resume runs/d/checkpoints/step_000500
    torchrun --nproc-per-node 4 training/distill.py --teacher ... --batch-size 32   # DDP

The teacher is a TokenMask-format checkpoint (``tokenmask import-eomt`` or ``train.py``
with ``head: eomt``). ``--images`` is a folder of images and / or video files (every
``--video-stride``-th frame). Writes ``metrics.csv`` (and TensorBoard events when
tensorboard is installed), ``checkpoints/step_N/`` and the student ``model.safetensors``;
with ``--eval-synthetic N`` or ``--eval-coco`` also ``eval.csv`` (student PQ per checkpoint).
The run is :mod:`training.distiller`.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # run as `python training/distill.py`: the repository onto sys.path
    import _repo_path  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--teacher', required=True, help='teacher checkpoint (.safetensors)')
    parser.add_argument('--images', required=True, help='folder of unlabelled images / videos')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--resume', default=None, help='checkpoints/step_N folder of this run')
    parser.add_argument('--steps', type=int, default=1000)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--lr', type=float, default=1e-4)
    parser.add_argument('--weight-decay', type=float, default=0.05)
    parser.add_argument('--warmup', type=int, default=0, help='linear lr warm-up steps')
    parser.add_argument('--temperature', type=float, default=1.0, help='class softmax T')
    parser.add_argument('--class-weight', type=float, default=1.0,
                        help='weight of the class KL against the mask loss (larger keeps '
                        "the teacher's classes while all weights learn)")
    parser.add_argument('--dice-weight', type=float, default=0.0,
                        help='add a per-query Dice term to the mask loss (small objects '
                        'count as much as large regions)')
    parser.add_argument('--grad-clip', type=float, default=0.01, help='<= 0 disables')
    parser.add_argument('--video-stride', type=int, default=10, help='use every Nth frame')
    parser.add_argument('--checkpoint-every', type=int, default=500)
    parser.add_argument('--log-every', type=int, default=10)
    parser.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16'),
                        help='mixed precision (CUDA only)')
    parser.add_argument('--train', default='all', choices=('all', 'mask'),
                        help='what learns: all of the student, or only its mask MLP (the '
                             'backbone, queries and class head stay the teacher\'s, so the '
                             'classes stay exactly the teacher\'s; cheaper steps)')
    parser.add_argument('--student-upsample', default='logit', choices=('logit', 'subpatch'),
                        help="the student's mask head: 'logit' (the paper's bilinear "
                        "upsampling of patch-grid logits) or 'subpatch' (learned sub-queries "
                        'per position inside a patch: masks thinner than a patch, such as '
                        'poles)')
    parser.add_argument('--student-init', default=None, metavar='FILE',
                        help='start from this student of the same teacher (e.g. the '
                             'model.safetensors of a --train mask run) instead of the teacher')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--eval-synthetic', type=int, default=0, metavar='N',
                        help='log the student\'s PQ on N synthetic validation scenes at every '
                             'checkpoint (eval.csv); for students of synthetic-class teachers')
    parser.add_argument('--eval-coco', nargs=3, default=None,
                        metavar=('IMAGES_DIR', 'PANOPTIC_DIR', 'JSON'),
                        help='or on a labelled COCO-panoptic validation set (its first '
                             '--eval-images images)')
    parser.add_argument('--eval-images', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-progress', action='store_true', help='no tqdm bar')
    args = parser.parse_args(argv)
    from tokenmask_ros.model import CheckpointError, load_checkpoint
    from training.datasets.common import DatasetError
    from training.distiller import DistillConfig, distill
    from training.eval_data import EvaluationError

    config = DistillConfig(
        teacher=args.teacher, images=args.images, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
        temperature=args.temperature, class_weight=args.class_weight,
        dice_weight=args.dice_weight, grad_clip=args.grad_clip,
        video_stride=args.video_stride, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, amp=args.amp, device=args.device, seed=args.seed,
        train=args.train, student_init=args.student_init,
        student_upsample=args.student_upsample,
        eval_synthetic=args.eval_synthetic,
        eval_coco=tuple(args.eval_coco) if args.eval_coco else None,
        eval_images=args.eval_images)
    try:
        teacher = load_checkpoint(args.teacher)
        result = distill(config, teacher, args.out, args.resume, not args.no_progress)
    except (FileNotFoundError, ValueError, CheckpointError, EvaluationError,
            DatasetError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'step {result["step"]}: student written to {result["out"] / "model.safetensors"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
