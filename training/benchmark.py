#!/usr/bin/env python3
"""Cost benchmark of TokenMask vs EoMT: parameters, GFLOPs, latency and peak memory.

Reproduces the cost columns of the TokenMask paper's Tables 5-7 (ADE20K panoptic, 640x640,
K=200 queries, 150 classes) for every valid (backbone, head, upsampling, output stride):

* GFLOPs (a) ``paper``: fvcore's rules (multiply-add once, fused attention not counted,
  layer norm 5/element, bilinear upsampling 4/output element), head evaluated before each
  of the last L2 query blocks and at the end (L2+1 calls).
* GFLOPs (b) ``deploy``: every op of one inference (attention, GELU, softmax, norms,
  interpolation, bias adds...), final head only.
  Both are defined op by op in ``tokenmask_ros/model/flops.py``.
* latency at batch 1 (median and p90 of ``--repeats`` timed runs after ``--warmup``), with
  random weights, ``torch.inference_mode`` and torch's default thread count; the runs of
  one backbone's configurations are interleaved round by round, so machine drift does not
  favour one of them.
* peak memory of one inference: counted from tensor allocations (CPU; models a fused
  attention kernel) or ``torch.cuda.max_memory_allocated`` (``--device cuda``).
* with ``--backends torch onnxruntime [tensorrt]``: latency (median, p90) and FPS of the
  whole deployed path per backend, ``Segmenter`` = letterbox + backend + panoptic decoding
  on synthetic frames, measured on a random-weight checkpoint of each latency row by
  :func:`tokenmask_ros.runtime.bench.bench_segmenter`, the function ``tokenmask bench``
  uses (one configuration after the other, not interleaved). Off by default (ONNX exports
  take a while); a backend that cannot run here is reported as skipped with the reason.

FLOPs and the counted memory use models built on the ``meta`` device (no weights, no time);
only latency (and CUDA memory) builds real models.

    python training/benchmark.py                                  # the full paper grid
    python training/benchmark.py --backbones tiny --strides 4     # a quick look
    python training/benchmark.py --variants --no-latency          # how the paper counted
    python training/benchmark.py --backbones tiny --strides 4 --backends torch onnxruntime

Writes ``costs.md``, ``costs.csv`` and ``costs.png`` (plus ``variants.md``/``.csv`` with
``--variants``) into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as `python training/benchmark.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

import numpy as np
import torch
from tqdm import tqdm

from tokenmask_ros.cli import parse_size
from tokenmask_ros.model.backbone import count_parameters
from tokenmask_ros.model.config import PRESETS, UPSAMPLING, TokenMaskConfig
from tokenmask_ros.model.flops import (
    DEPLOY,
    PAPER,
    count_activation_memory,
    count_flops,
    measure_cuda_memory,
)
from tokenmask_ros.model.tokenmask import build_model
from tokenmask_ros.runtime.backends import BACKENDS
from tokenmask_ros.runtime.bench import cpu_name

HEAD_NAMES = {'tokenmask': 'TokenMask', 'eomt': 'EoMT'}
BACKBONE_NAMES = {'tiny': 'ViT-T', 'small': 'ViT-S', 'base': 'ViT-B', 'large': 'ViT-L',
                  'giant': 'ViT-g'}

# GFLOPs the paper reports for ADE20K panoptic at 640x640 (Tables 5/6; ViT-S strides from
# Table 7, whose stride-4 value, 37.19, is 0.09 below Tables 5/6). "EoMT + Logit/None" in
# Table 5 equal TokenMask's rows in Table 6 (the same computation).
PAPER_GFLOPS: dict[tuple[str, str, str, int], tuple[float, str]] = {
    **{(b, 'eomt', 'feature', 4): (v, 'T5') for b, v in
       zip(('tiny', 'small', 'base', 'large'), (20.85, 71.69, 263.15, 699.89), strict=True)},
    **{(b, 'tokenmask', 'logit', 4): (v, 'T5/6') for b, v in
       zip(('tiny', 'small', 'base', 'large'), (9.68, 37.28, 146.33, 501.51), strict=True)},
    **{(b, 'tokenmask', 'none', 16): (v, 'T5/6') for b, v in
       zip(('tiny', 'small', 'base', 'large'), (9.58, 37.18, 146.23, 501.41), strict=True)},
    **{('small', 'tokenmask', 'logit', s): (v, 'T7') for s, v in
       ((1, 38.73), (8, 37.12), (16, 37.09))},
}

CSV_COLUMNS = (
    'backbone', 'head', 'upsample', 'output_stride', 'num_query_blocks', 'img_size',
    'num_queries', 'num_classes', 'params', 'params_m',
    'gflops_paper', 'gflops_paper_backbone', 'gflops_paper_head',
    'gflops_deploy', 'gflops_deploy_backbone', 'gflops_deploy_head',
    'paper_gflops', 'paper_table', 'diff_pct',
    'latency_ms_median', 'latency_ms_p90', 'latency_repeats', 'latency_device', 'threads',
    'act_mem_mb', 'peak_mem_mb', 'mem_method',
)
SEGMENTER_COLUMNS = ('ms_median', 'ms_p90', 'fps', 'status')  # per --backends entry, prefixed


def csv_columns(backends) -> list[str]:
    extra = [f'{b}_{c}' for b in backends for c in SEGMENTER_COLUMNS]
    return [*CSV_COLUMNS, *(['frame_size'] if backends else []), *extra]

# --variants: counting choices that could explain a gap to the paper.
VARIANTS = (
    ('l2_3', "L2=3 (EoMT's ViT-S/B configs), (a)", 3, PAPER, True),
    ('l2_4', 'L2=4, (a)', 4, PAPER, True),
    ('l2_4_attention', 'L2=4, (a) + attention matmuls', 4, PAPER.replace(attention='matmul'),
     True),
    ('l2_4_no_norm', 'L2=4, (a) without norms', 4,
     PAPER.replace(norm_affine=0, norm_plain=0), True),
    ('l2_4_gemm_only', 'L2=4, matmul/conv only', 4,
     PAPER.replace(norm_affine=0, norm_plain=0, elementwise={}, per_input={}), True),
    ('l2_4_final_head', 'L2=4, (a), final head only', 4, PAPER, False),
)


@dataclass
class Row:
    config: TokenMaskConfig
    values: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.values['backbone'], self.config.head, self.config.upsample,
                self.config.output_stride)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--backbones', nargs='+', default=['tiny', 'small', 'base', 'large'],
                        choices=sorted(PRESETS), metavar='NAME',
                        help=f'backbone presets to benchmark, from {sorted(PRESETS)}')
    parser.add_argument('--heads', nargs='+', default=['tokenmask', 'eomt'],
                        choices=sorted(UPSAMPLING), help='mask heads to benchmark')
    parser.add_argument('--upsampling', nargs='+', default=['logit', 'none', 'feature'],
                        choices=['logit', 'none', 'feature', 'subpatch'],
                        help='upsampling modes (tokenmask: logit/none/subpatch, eomt: '
                             "feature; the paper's tables have no subpatch); invalid "
                             'head/upsampling/stride combinations are skipped')
    parser.add_argument('--strides', nargs='+', type=int, default=[1, 4, 8, 16],
                        help='mask output strides (upsampling "none" only exists at 16)')
    parser.add_argument('--img-size', type=int, default=640,
                        help='square input size in pixels (a multiple of 16)')
    parser.add_argument('--num-queries', type=int, default=200, help='queries K')
    parser.add_argument('--num-classes', type=int, default=150,
                        help='classes without no-object (ADE20K: 150)')
    parser.add_argument('--num-query-blocks', type=int, default=None,
                        help="query blocks L2 for every backbone (default: each preset's)")
    parser.add_argument('--latency-backbones', nargs='+', default=['tiny', 'small'],
                        choices=sorted(PRESETS), metavar='NAME',
                        help='backbones whose latency is measured (real weights are built)')
    parser.add_argument('--no-latency', action='store_true', help='skip latency measurement')
    parser.add_argument('--repeats', type=int, default=10,
                        help='timed runs per configuration (interleaved rounds)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds before timing')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu',
                        help='device for latency and memory (cuda: max_memory_allocated)')
    parser.add_argument('--backends', nargs='+', default=[], choices=BACKENDS, metavar='NAME',
                        help='also time the full Segmenter path (preprocess + backend + '
                             f'decoding) with these backends, from {list(BACKENDS)}, on the '
                             'latency backbones (default: none)')
    parser.add_argument('--frame-size', type=parse_size, metavar='WxH',
                        help='camera frame size for --backends (default: img-size square)')
    parser.add_argument('--no-memory', action='store_true', help='skip peak-memory counting')
    parser.add_argument('--variants', action='store_true',
                        help='also count the variants that explain differences to the '
                             "paper's GFLOPs (variants.md / variants.csv)")
    parser.add_argument('--plot-stride', type=int, default=4,
                        help='output stride compared in costs.png (falls back to one run)')
    parser.add_argument('--out', type=Path, default=Path('benchmark_results'),
                        help='output folder for costs.md, costs.csv and costs.png')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    return args


def build_configs(args: argparse.Namespace) -> list[Row]:
    rows = []
    for backbone in args.backbones:
        for head in args.heads:
            for upsample in args.upsampling:
                if upsample not in UPSAMPLING[head]:
                    continue
                for stride in sorted(set(args.strides)):
                    overrides = {
                        'img_size': args.img_size, 'num_queries': args.num_queries,
                        'num_classes': args.num_classes, 'head': head, 'upsample': upsample,
                        'output_stride': stride}
                    if args.num_query_blocks is not None:
                        overrides['num_query_blocks'] = args.num_query_blocks
                    try:
                        config = TokenMaskConfig.from_preset(backbone, **overrides)
                    except ValueError:  # e.g. upsample 'none' at a stride other than 16
                        continue
                    rows.append(Row(config, {'backbone': backbone}))
    return rows


def meta_model(config: TokenMaskConfig) -> torch.nn.Module:
    with torch.device('meta'):
        return build_model(config).eval()


def real_model(config: TokenMaskConfig, device: str):
    """Randomly initialised (seeded) model and one random image on ``device``."""
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    return model, torch.rand(1, 3, *config.img_size, device=device)


def timed_forward(model, images) -> float:
    """Seconds for one forward at batch 1 (CUDA synchronised)."""
    cuda = images.device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model(images)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def count_row(row: Row, args: argparse.Namespace) -> None:
    """Parameters, both GFLOPs and peak memory of one configuration."""
    config, values = row.config, row.values
    values.update(head=config.head, upsample=config.upsample,
                  output_stride=config.output_stride,
                  num_query_blocks=config.num_query_blocks, img_size=config.img_size[0],
                  num_queries=config.num_queries, num_classes=config.num_classes)
    model = meta_model(config)
    values['params'] = count_parameters(model)
    values['params_m'] = values['params'] / 1e6
    for name, convention in (('paper', PAPER), ('deploy', DEPLOY)):
        count = count_flops(model, convention=convention)
        values[f'gflops_{name}'] = count.gflops
        values[f'gflops_{name}_backbone'] = count.part_gflops('backbone')
        values[f'gflops_{name}_head'] = count.part_gflops('head')
    reference = PAPER_GFLOPS.get(row.key) if config.img_size == (640, 640) else None
    if reference is not None:
        values['paper_gflops'], values['paper_table'] = reference
        values['diff_pct'] = 100 * (values['gflops_paper'] / reference[0] - 1)
    if not args.no_memory:
        if args.device == 'cuda':
            memory = measure_cuda_memory(*real_model(config, 'cuda'))
        else:
            memory = count_activation_memory(model)
        values.update(act_mem_mb=memory.activations_mb, peak_mem_mb=memory.total_mb,
                      mem_method=memory.method)


def measure_latencies(rows: list[Row], args: argparse.Namespace) -> None:
    """Median and p90 latency per row, one backbone at a time.

    The timed runs are interleaved (round r times every configuration once), so drift in
    the machine's speed (other processes, frequency scaling) spreads over all of them
    instead of biasing whichever configuration ran during a slow spell.
    """
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.values['backbone'] in args.latency_backbones:
            groups.setdefault(row.values['backbone'], []).append(row)
    total = sum(len(group) for group in groups.values()) * (args.warmup + args.repeats)
    progress = tqdm(total=total, desc='latency', unit='run')
    for backbone, group in groups.items():
        models = [real_model(row.config, args.device) for row in group]
        times: list[list[float]] = [[] for _ in group]
        for round_index in range(args.warmup + args.repeats):
            progress.set_postfix_str(f'{backbone} round {round_index + 1}')
            for index, (model, images) in enumerate(models):
                elapsed = timed_forward(model, images)
                if round_index >= args.warmup:
                    times[index].append(elapsed * 1e3)
                progress.update()
        for row, samples in zip(group, times, strict=True):
            row.values.update(latency_ms_median=float(np.median(samples)),
                              latency_ms_p90=float(np.percentile(samples, 90)),
                              latency_repeats=args.repeats, latency_device=args.device,
                              threads=torch.get_num_threads())
        del models
    progress.close()


def measure_segmenter_latencies(rows: list[Row], args: argparse.Namespace) -> None:
    """Per ``--backends`` entry: the Segmenter's latency on each latency row's model.

    Each configuration is saved as a random-weight checkpoint (seeded) and timed by
    :func:`tokenmask_ros.runtime.bench.bench_segmenter` on synthetic frames of
    ``--frame-size``, with the Segmenter's default thresholds.
    """
    from tokenmask_ros.model import save_checkpoint
    from tokenmask_ros.runtime.bench import bench_segmenter, synthetic_frames

    selected = [r for r in rows if r.values['backbone'] in args.latency_backbones]
    size = args.frame_size or (args.img_size, args.img_size)
    frames = synthetic_frames(*size)
    progress = tqdm(total=len(selected) * len(args.backends), desc='segmenter', unit='run')
    with tempfile.TemporaryDirectory(prefix='tokenmask_bench_') as tmp:
        for index, row in enumerate(selected):
            torch.manual_seed(0)
            checkpoint = save_checkpoint(build_model(row.config),
                                         Path(tmp) / f'model_{index}.safetensors')
            row.values['frame_size'] = f'{size[0]}x{size[1]}'
            for backend in args.backends:
                progress.set_postfix_str(f"{row.values['backbone']} {row.config.head} "
                                         f'{backend}')
                result = bench_segmenter(checkpoint, backend, 'auto', size, device=args.device,
                                         warmup=args.warmup, repeats=args.repeats,
                                         frames=frames, cache_dir=Path(tmp) / 'cache')
                row.values[f'{backend}_status'] = (
                    'ok' if result.ok else f'{result.status}: {result.reason}')
                if result.ok:
                    row.values.update({f'{backend}_ms_median': result.total.median,
                                       f'{backend}_ms_p90': result.total.p90,
                                       f'{backend}_fps': result.fps})
                progress.update()
            checkpoint.unlink()
    progress.close()


def count_variants(rows: list[Row]) -> list[dict]:
    """GFLOPs of each paper-referenced row under each counting choice in VARIANTS."""
    results = []
    for row in rows:
        if 'paper_gflops' not in row.values:
            continue
        result = {k: row.values[k] for k in ('backbone', 'head', 'upsample', 'output_stride')}
        result['num_query_blocks_preset'] = row.config.num_query_blocks
        for name, _, query_blocks, convention, intermediate in VARIANTS:
            config = row.config
            if query_blocks is not None:
                config = config.replace(num_query_blocks=query_blocks)
            count = count_flops(meta_model(config), convention=convention,
                                intermediate=intermediate)
            result[name] = count.gflops
        result['paper_gflops'] = row.values['paper_gflops']
        result['paper_table'] = row.values['paper_table']
        results.append(result)
    return results


# --- output -----------------------------------------------------------------------------

def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '–'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def _pct(value) -> str:
    return '–' if value is None else f'{value:+.1f}%'


def _segmenter_cell(values: dict, backend: str) -> str:
    status = values.get(f'{backend}_status')
    if status is None:
        return '–'
    if status != 'ok':
        return status.split(':', 1)[0]  # 'skipped' / 'error'; the reason is in the notes
    return f"{values[f'{backend}_ms_median']:.1f} / {values[f'{backend}_ms_p90']:.1f}"


def markdown_table(rows: list[Row], backends=()) -> str:
    header = ('| Backbone | Head | Upsampling | Stride | L2 | Params (M) | GFLOPs (a) | '
              '(a) head | Paper | Δ (a) vs paper | GFLOPs (b) | (b) head | '
              'Latency median (ms) | p90 (ms) | Act. peak (MB) | Peak (MB) |'
              + ''.join(f' Segmenter {b} (ms, median / p90) |' for b in backends))
    lines = [header, '|' + '---|' * header.count(' | ') + '---|']
    for row in rows:
        v = row.values
        paper = (f"{v['paper_gflops']:.2f} ({v['paper_table']})"
                 if 'paper_gflops' in v else '–')
        lines.append('| ' + ' | '.join((
            BACKBONE_NAMES.get(v['backbone'], v['backbone']), HEAD_NAMES[v['head']],
            v['upsample'].capitalize(), str(v['output_stride']), str(v['num_query_blocks']),
            _fmt(v['params_m']), _fmt(v['gflops_paper']), _fmt(v['gflops_paper_head']), paper,
            _pct(v.get('diff_pct')), _fmt(v['gflops_deploy']), _fmt(v['gflops_deploy_head']),
            _fmt(v.get('latency_ms_median'), 1), _fmt(v.get('latency_ms_p90'), 1),
            _fmt(v.get('act_mem_mb'), 1), _fmt(v.get('peak_mem_mb'), 1),
            *(_segmenter_cell(v, b) for b in backends))) + ' |')
    return '\n'.join(lines)


def segmenter_notes(rows: list[Row], backends) -> str:
    """What the Segmenter columns measure, and why a backend was skipped."""
    if not backends:
        return ''
    frame = next((r.values['frame_size'] for r in rows if 'frame_size' in r.values), '?')
    reasons = dict.fromkeys(r.values[f'{b}_status'] for r in rows for b in backends
                            if r.values.get(f'{b}_status', 'ok') != 'ok')
    text = (f'Segmenter columns: the whole deployed call (letterbox + backend + panoptic '
            f'decoding, `tokenmask_ros.runtime.bench`, as `tokenmask bench`) on {frame} '
            'synthetic frames, random weights, default thresholds, precision auto.')
    return text + ''.join(f' {reason}.' for reason in reasons)


def variants_table(results: list[dict]) -> str:
    names = [label for _, label, *_ in VARIANTS]
    header = ('| Backbone | Head | Upsampling | Stride | Paper | '
              + ' | '.join(names) + ' |')
    lines = [header, '|' + '---|' * header.count(' | ') + '---|']
    for r in results:
        cells = [BACKBONE_NAMES.get(r['backbone'], r['backbone']), HEAD_NAMES[r['head']],
                 r['upsample'].capitalize(), str(r['output_stride']),
                 f"{r['paper_gflops']:.2f} ({r['paper_table']})"]
        for name, *_ in VARIANTS:
            diff = 100 * (r[name] / r['paper_gflops'] - 1)
            cells.append(f'{r[name]:.2f} ({diff:+.1f}%)')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def environment(args: argparse.Namespace) -> str:
    device = (torch.cuda.get_device_name() if args.device == 'cuda'
              else f'{cpu_name()}, {os.cpu_count()} cores')
    return (f'Date {datetime.datetime.now().isoformat(timespec="seconds")}; {device}; '
            f'torch {torch.__version__} ({torch.get_num_threads()} threads); '
            f'python {platform.python_version()}.')


def write_csv(path: Path, rows: list[dict], columns) -> None:
    with path.open('w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction='ignore')
        writer.writeheader()
        for values in rows:
            writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v)
                             for k, v in values.items()})


def plot(path: Path, rows: list[Row], plot_stride: int) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    strides = {r.config.output_stride for r in rows}
    stride = plot_stride if plot_stride in strides else min(strides)
    backbones = list(dict.fromkeys(r.values['backbone'] for r in rows))

    def pick(backbone, head):
        candidates = [r for r in rows if r.values['backbone'] == backbone
                      and r.config.head == head and r.config.output_stride == stride]
        candidates.sort(key=lambda r: r.config.upsample != 'logit')
        return candidates[0].values if candidates else None

    series = [(head, HEAD_NAMES[head], color) for head, color in
              (('tokenmask', 'tab:blue'), ('eomt', 'tab:orange'))
              if any(r.config.head == head for r in rows)]
    figure, (flops_ax, latency_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(backbones))
    width = 0.8 / (2 * max(len(series), 1))
    for index, (head, label, color) in enumerate(series):
        for sub, (name, hatch) in enumerate((('paper', ''), ('deploy', '//'))):
            values = [pick(b, head) for b in backbones]
            heights = [v[f'gflops_{name}'] if v else np.nan for v in values]
            offset = (2 * index + sub - len(series) + 0.5) * width
            bars = flops_ax.bar(x + offset, heights, width, color=color, hatch=hatch,
                                edgecolor='black', linewidth=0.5,
                                label=f'{label} ({"a" if name == "paper" else "b"})')
            flops_ax.bar_label(bars, fmt='%.3g', fontsize=7)
    flops_ax.set_xticks(x, [BACKBONE_NAMES.get(b, b) for b in backbones])
    flops_ax.set_yscale('log')
    flops_ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    flops_ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
    flops_ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    flops_ax.set_ylabel('GFLOPs (multiply-adds, 1e9)')
    flops_ax.set_title(f'GFLOPs at stride {stride}: (a) paper, (b) deploy')
    flops_ax.legend(fontsize=8)

    timed = [b for b in backbones
             if any((pick(b, h) or {}).get('latency_ms_median') for h, *_ in series)]
    if timed:
        x = np.arange(len(timed))
        width = 0.8 / max(len(series), 1)
        for index, (head, label, color) in enumerate(series):
            values = [pick(b, head) or {} for b in timed]
            median = np.array([v.get('latency_ms_median') or 0 for v in values])
            p90 = np.array([v.get('latency_ms_p90') or 0 for v in values])
            bars = latency_ax.bar(x + (index - (len(series) - 1) / 2) * width, median, width,
                                  yerr=[np.zeros_like(median), np.maximum(p90 - median, 0)],
                                  capsize=3, color=color, edgecolor='black', linewidth=0.5,
                                  label=label)
            latency_ax.bar_label(bars, fmt='%.0f', fontsize=7, label_type='center')
        latency_ax.set_xticks(x, [BACKBONE_NAMES.get(b, b) for b in timed])
        device = next(r.values['latency_device'] for r in rows
                      if r.values.get('latency_device'))
        latency_ax.set_ylabel(f'{device.upper()} latency, batch 1 (ms)')
        latency_ax.set_title(f'Latency at stride {stride} (median, bar to p90)')
        latency_ax.legend(fontsize=8)
    else:
        latency_ax.text(0.5, 0.5, 'latency not measured', ha='center', va='center')
        latency_ax.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = build_configs(args)
    if not rows:
        print('no valid (backbone, head, upsampling, stride) combination selected',
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    progress = tqdm(rows, desc='counting', unit='config')
    for row in progress:
        c = row.config
        progress.set_postfix_str(f"{row.values['backbone']} {c.head} {c.upsample} "
                                 f's{c.output_stride}')
        count_row(row, args)
    if not args.no_latency:
        measure_latencies(rows, args)
    if args.backends:
        measure_segmenter_latencies(rows, args)
    command = 'python training/benchmark.py ' + shlex.join(sys.argv[1:] if argv is None
                                                            else argv)
    table = markdown_table(rows, args.backends)
    conventions = (
        '(a) paper convention: multiply-add counted once, fused attention not counted, layer '
        'norm 5/element, bilinear upsampling 4/output element (fvcore), head evaluated at the '
        'L2+1 predictions. (b) deploy: every op of one inference (attention, GELU, softmax, '
        'norms, bias adds...), final head only. Memory: one inference, batch 1, fp32; '
        '"Act. peak" counts tensors created during the forward, "Peak" adds weights and input.')
    notes = segmenter_notes(rows, args.backends)
    text = (f'# Cost benchmark\n\n`{command.strip()}`\n\n{environment(args)}\n\n'
            f'{conventions}{" " + notes if notes else ""}\n\n{table}\n')
    (args.out / 'costs.md').write_text(text)
    write_csv(args.out / 'costs.csv', [r.values for r in rows], csv_columns(args.backends))
    plot(args.out / 'costs.png', rows, args.plot_stride)
    print(table)
    if notes:
        print('\n' + notes)
    written = ['costs.md', 'costs.csv', 'costs.png']
    if args.variants:
        results = count_variants(rows)
        if results:
            vtable = variants_table(results)
            (args.out / 'variants.md').write_text(
                f'# GFLOPs counting variants vs the paper\n\n`{command.strip()}`\n\n{vtable}\n')
            columns = ['backbone', 'head', 'upsample', 'output_stride',
                       'num_query_blocks_preset', 'paper_gflops', 'paper_table',
                       *[name for name, *_ in VARIANTS]]
            write_csv(args.out / 'variants.csv', results, columns)
            print('\n' + vtable)
            written += ['variants.md', 'variants.csv']
    print(f'\nwrote {", ".join(str(args.out / name) for name in written)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
