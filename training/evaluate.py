#!/usr/bin/env python3
"""Panoptic (PQ / SQ / RQ), instance (mask AP) and semantic (mIoU) evaluation of a checkpoint.

Inference follows EoMT's evaluation (``docs/architecture.md``, "Evaluation"):

* panoptic and instance: **padded inference**. Each image is resized so the longer side fits
  the model's ``img_size`` and padded bottom/right (:class:`Letterbox`); the logits are
  upsampled, the padding cropped, and the rest resized to the ORIGINAL resolution, where
  :func:`panoptic_predictions` (score / overlap thresholds) and :func:`decode_instances`
  (top-100 (query, class) pairs, mask = logit > 0, score = class probability x mean mask
  sigmoid, thing classes only) decode it;
* semantic: ``--semantic-mode sliding`` (default for ADE20K) is EoMT's **sliding window**
  (:func:`sliding_window_semantic`): the image is resized so it just covers the input
  (the shorter side equals a square input's size), windows of the input size slide along
  the longer side, their :func:`semantic_scores` are averaged and argmaxed.
  ``--semantic-mode padded`` (default for panoptic datasets) takes :func:`decode_semantic`
  of the padded forward pass. Either way every pixel gets a class.

    python training/evaluate.py --checkpoint model.safetensors --synthetic 100 --seed 0
    python training/evaluate.py --checkpoint model.safetensors \\
        --coco-panoptic val2017 panoptic_val2017 panoptic_val2017.json --plot 4
    python training/evaluate.py --checkpoint ade.safetensors \\
        --ade20k-semantic ADEChallengeData2016
    python training/evaluate.py --checkpoint model-int8.onnx --backend openvino --synthetic 200

``--backend`` scores what a robot runs instead: the Segmenter on that backend (letterbox to
the input size, the exported graph, host decoding, nearest-neighbour resize of the segment
map to the original size), so fp32 / fp16 / int8 exports are compared on the same scenes.
Its semantic map is that of the panoptic result (unlabelled pixels count as misses) and it
has no mask AP (the graph does not return per-query masks).

Metrics (torchmetrics, wrapped by :mod:`training.metrics`): PQ / SQ / RQ overall, for things
and for stuff, per class (PanopticQuality's rules and states, its per-image counting done
with NumPy by :func:`training.metrics.segment_stats`, which is much faster); mIoU
(MulticlassJaccardIndex, 255 ignored); mask AP, AP50, AP75, AP small / medium / large and
per-class AP (MeanAveragePrecision(iou_type='segm'), pycocotools backend) on thing classes,
``-1`` where COCO has nothing to average (as pycocotools reports it). ADE20K SceneParsing is
a semantic benchmark: mIoU only.

Writes into ``--out`` (default ``eval_results/``): ``metrics.json``; for panoptic datasets
the predictions in COCO-panoptic format (``panoptic/<image>.png``, segment id = R + 256 G +
256^2 B, and ``predictions.json`` whose ``segments_info`` use the dataset's category ids;
written by :mod:`tokenmask_ros.coco_panoptic_io`, as ``tokenmask predict`` writes them); for
ADE20K ``semantic/<image>.png`` in the benchmark's format (class + 1, uint8); with
``--plot K`` ``predictions_grid.png`` (K rows: image | ground truth | prediction).

This script parses the options; the work is in library modules: :mod:`training.evaluation`
(the loop), :mod:`training.inference`, :mod:`training.letterbox`,
:mod:`training.sliding_window` (inference), :mod:`training.eval_metrics`,
:mod:`training.eval_data`, :mod:`training.eval_outputs` and :mod:`training.eval_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python training/evaluate.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

from tokenmask_ros.cli import parse_size
from tokenmask_ros.defaults import BACKENDS, OVERLAP_THRESHOLD, PRECISIONS, SCORE_THRESHOLD
from training.settings import INSTANCE_TOP_K, SEMANTIC_MODES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Evaluate a TokenMask checkpoint: PQ / SQ / RQ (all, things, stuff, per '
                    'class), mask AP and mIoU, with COCO-panoptic prediction files; or mIoU '
                    'on ADE20K SceneParsing with EoMT\'s sliding-window inference.')
    parser.add_argument('--checkpoint', required=True, type=Path,
                        help='model checkpoint (.safetensors written by save_checkpoint), or '
                             'with --backend an exported graph (.onnx, e.g. an int8 export)')
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument('--synthetic', type=int, metavar='N',
                      help='evaluate on N freshly generated synthetic validation scenes '
                           '(generator val stream); the checkpoint must predict the '
                           'synthetic classes')
    data.add_argument('--coco-panoptic', nargs=3, metavar=('IMAGES_DIR', 'PANOPTIC_DIR', 'JSON'),
                      help='evaluate on a COCO-panoptic dataset: image folder, panoptic PNG '
                           'folder and panoptic JSON file')
    data.add_argument('--ade20k-semantic', metavar='ROOT',
                      help='evaluate mIoU on the validation split of ADE20K SceneParsing '
                           '(ROOT = ADEChallengeData2016 with images/validation/*.jpg and '
                           'annotations/validation/*.png); the checkpoint must have its 150 '
                           'classes')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the synthetic scene generator (default: 0)')
    parser.add_argument('--size', type=parse_size, metavar='WxH',
                        help="synthetic image size (default: the model's img_size)")
    parser.add_argument('--out', type=Path, default=Path('eval_results'),
                        help='output folder for metrics.json, predictions.json and panoptic/ '
                             'PNGs (semantic/ PNGs for ADE20K) and the grid plot '
                             '(default: eval_results/)')
    parser.add_argument('--plot', type=int, default=0, metavar='K',
                        help='save predictions_grid.png with the first K images '
                             '(image | ground truth | prediction); 0 = no plot (default)')
    parser.add_argument('--semantic-mode', choices=SEMANTIC_MODES,
                        help='inference for mIoU: "sliding" = EoMT\'s sliding window of '
                             'input-sized crops along the longer side, scores averaged (one '
                             'extra forward pass per window on panoptic datasets); "padded" = '
                             'the padded panoptic forward pass (default: sliding for '
                             '--ade20k-semantic, padded otherwise)')
    parser.add_argument('--instance', action=argparse.BooleanOptionalAction, default=None,
                        help=f'mask AP (AP, AP50, AP75, APs/m/l, per class; pycocotools) on '
                             f'the thing classes of panoptic datasets, from EoMT\'s top-'
                             f'{INSTANCE_TOP_K} instance decoding. On by default (it adds '
                             f'about 6%% to the CPU time of --synthetic 200); --no-instance '
                             f'skips it. '
                             f'Never for --ade20k-semantic, which has no things')
    parser.add_argument('--score-threshold', type=float, default=SCORE_THRESHOLD,
                        help=f'minimum class probability of a kept query (default: '
                             f'{SCORE_THRESHOLD})')
    parser.add_argument('--overlap-threshold', type=float, default=OVERLAP_THRESHOLD,
                        help='minimum fraction of its mask a query must keep after the '
                             f'argmax (default: {OVERLAP_THRESHOLD})')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per padded forward pass (default: 1); sliding windows '
                             'are batched per image')
    parser.add_argument('--workers', type=int, default=0,
                        help='data loading worker processes (default: 0, in the main process)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='device to run the model on (default: cpu)')
    parser.add_argument('--backend', choices=BACKENDS, default=None,
                        help='score the deployed path instead: every image through the '
                             'Segmenter on this backend (letterbox, the exported graph, host '
                             'decoding), so exported fp32 / fp16 / int8 graphs are scored on '
                             'the same scenes; semantic from its panoptic map, no mask AP')
    parser.add_argument('--precision', choices=PRECISIONS, default='auto',
                        help='with --backend: the precision to run (default: auto)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # After parsing: --help and usage errors do not wait for PyTorch.
    from tokenmask_ros.model import CheckpointError
    from training.datasets.common import DatasetError
    from training.eval_data import EvaluationError
    from training.eval_report import format_table
    from training.evaluation import evaluate

    try:
        result = evaluate(args)
    except (EvaluationError, DatasetError, CheckpointError, FileNotFoundError,
            OSError) as error:
        print(f'evaluate.py: error: {error}'.replace('\n', ' '), file=sys.stderr)
        return 1
    print(format_table(result))
    written = ['metrics.json']
    written += ['semantic/'] if args.ade20k_semantic is not None else \
        ['predictions.json', 'panoptic/']
    if args.plot:
        written.append('predictions_grid.png')
    print(f'\nwrote {", ".join(str(args.out / name) for name in written)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
