#!/usr/bin/env python3
"""The deploy graph before and after query selection, side by side: time and equal outputs.

    python training/decoding_benchmark.py                       # TokenMask-S and EoMT-S at 640
    python training/decoding_benchmark.py --backbones tiny --img-size 320 --repeats 5

For each model (random weights, K = ``--num-queries``, the paper's ADE20K panoptic setting by
default) the deploy graph is built three times: decoding every query (the graph before query
selection), always the ``--decoded-queries`` best (selection 'fixed', TensorRT's) and only
the frame's kept queries under that cap (selection 'kept', the default elsewhere). Each is
timed on ONNX Runtime (the exported graph, CPU provider, as the file describes it) and torch
(the same module); ONNX Runtime also runs the kept graph the way the ``onnxruntime`` backend
does on CPU, its attention blocks fused (:mod:`tokenmask_ros.runtime.ort_attention`). Rounds
alternate between the graphs so machine load favours none; a call is one frame through the
whole graph (network + dense decoding). The score threshold is set to keep ``--kept``
queries, and the outputs of the graphs are compared with the first one's: segment map,
classes, keep and won areas exactly, scores to ``SCORE_TOLERANCE`` (float rounding of the
fused attention). Writes ``decoding.md`` and ``decoding.csv`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python training/decoding_benchmark.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

EXACT = ('segment_map', 'query_class', 'keep', 'won_area')
# Fused attention sums in another order: scores move by float rounding (about 1e-7).
SCORE_TOLERANCE = 1e-6
COLUMNS = ('model', 'backend', 'decoded_queries', 'median_ms', 'p90_ms', 'speedup',
           'identical', 'max_score_difference', 'kept')


def parse_args(argv=None) -> argparse.Namespace:
    from tokenmask_ros.defaults import DECODED_QUERIES

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backbones', nargs='+', default=['small'],
                        choices=['tiny', 'small', 'base', 'large'])
    parser.add_argument('--heads', nargs='+', default=['tokenmask', 'eomt'],
                        choices=['tokenmask', 'eomt'])
    parser.add_argument('--img-size', type=int, default=640, help='square input size')
    parser.add_argument('--num-queries', type=int, default=200, help='queries K')
    parser.add_argument('--num-classes', type=int, default=150)
    parser.add_argument('--decoded-queries', type=int, default=DECODED_QUERIES,
                        help='queries the selecting graph decodes')
    parser.add_argument('--kept', type=int, default=20,
                        help='queries the score threshold keeps in the equality check')
    parser.add_argument('--backends', nargs='+', default=['onnxruntime', 'torch'],
                        choices=['onnxruntime', 'torch'])
    parser.add_argument('--repeats', type=int, default=10, help='timed rounds')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds')
    parser.add_argument('--out', type=Path, default=Path('benchmark_results/decoding'))
    parser.add_argument('--keep-graphs', type=Path, metavar='DIR',
                        help='keep the exported graphs in DIR/<model>/ (default: a temporary '
                             'folder), e.g. for training/graph_latency.py')
    args = parser.parse_args(argv)
    if min(args.repeats, args.decoded_queries, args.kept) < 1 or args.warmup < 0:
        parser.error('--repeats, --decoded-queries and --kept must be >= 1, --warmup >= 0')
    if args.kept > args.decoded_queries or args.decoded_queries >= args.num_queries:
        parser.error('need --kept <= --decoded-queries < --num-queries')
    return args


def random_model(backbone: str, head: str, args: argparse.Namespace):
    """A random-weight model of the paper's configuration (output stride 4)."""
    import torch

    from tokenmask_ros.model import TokenMaskConfig, build_model

    torch.manual_seed(0)
    config = TokenMaskConfig.from_preset(
        backbone, img_size=args.img_size, num_queries=args.num_queries,
        num_classes=args.num_classes, head=head, output_stride=4,
        upsample='logit' if head == 'tokenmask' else 'feature')
    return build_model(config).eval()


class GraphRunner:
    """One deploy graph on one backend: ``run(inputs) -> outputs`` as NumPy arrays."""

    def __init__(self, model, backend: str, decoded: int | None, selection: str,
                 folder: Path, fused: bool = False, reuse: bool = False):
        import torch

        from tokenmask_ros.runtime.graph import INPUT_NAMES, OUTPUT_NAMES, DeployGraph

        self.torch, self.input_names, self.output_names = torch, INPUT_NAMES, OUTPUT_NAMES
        self.backend = backend
        if backend == 'torch':
            self.graph = DeployGraph(model, decoded, selection)
        else:
            from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
            from tokenmask_ros.runtime.export import export_onnx

            path = folder / f'graph-{decoded or "all"}-{selection}.onnx'
            if not reuse:  # reuse: the same graph was just exported for another runner
                export_onnx(model, path, decoded_queries=decoded, selection=selection)
            # The backend's session: the file's graph, or with fused attention as it runs.
            self.session = OnnxRuntimeBackend(path, 'cpu', fuse_attention=fused).session

    def run(self, inputs):
        """One call of the graph (imports done in ``__init__``: this is the timed part)."""
        torch = self.torch
        if self.backend == 'torch':
            with torch.inference_mode():
                return [t.numpy() for t in self.graph(*(torch.from_numpy(x) for x in inputs))]
        return self.session.run(list(self.output_names),
                                dict(zip(self.input_names, inputs, strict=True)))


def threshold_keeping(runner: GraphRunner, image, content, count: int,
                      num_classes: int) -> float:
    """The score threshold half-way between the ``count``-th and next best real-class score."""
    import numpy as np

    from tokenmask_ros.runtime.graph import OUTPUT_NAMES

    outputs = dict(zip(OUTPUT_NAMES, runner.run((image, content, np.zeros(1, np.float32))),
                       strict=True))
    real = outputs['query_class'][0] != num_classes  # the last class is "no object"
    scores = np.sort(np.where(real, outputs['query_score'][0], -1.0))[::-1]
    return float((scores[count - 1] + scores[count]) / 2)


def compare(model_name: str, model, backend: str, args: argparse.Namespace,
            folder: Path) -> list[dict]:
    """Time the graphs of one model on one backend, alternating; check equal outputs."""
    import numpy as np

    from tokenmask_ros.runtime.graph import OUTPUT_NAMES

    cap = args.decoded_queries
    folder = folder / model_name  # the exports of one model, shared by its runners
    folder.mkdir(parents=True, exist_ok=True)
    runners = {f'all {args.num_queries}': GraphRunner(model, backend, None, 'fixed', folder),
               f'best {cap}': GraphRunner(model, backend, cap, 'fixed', folder),
               f'kept (<= {cap})': GraphRunner(model, backend, cap, 'kept', folder)}
    if backend == 'onnxruntime':
        runners[f'kept (<= {cap}), fused attention'] = GraphRunner(
            model, backend, cap, 'kept', folder, fused=True, reuse=True)
    full = f'all {args.num_queries}'
    size = args.img_size
    image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    content = np.array([size, size], np.int32)
    threshold = threshold_keeping(runners[full], image, content, args.kept,
                                  args.num_classes)
    inputs = (image, content, np.array([threshold], np.float32))
    results = {k: dict(zip(OUTPUT_NAMES, r.run(inputs), strict=True))
               for k, r in runners.items()}
    kept = int(results[full]['keep'].sum())
    times: dict = {k: [] for k in runners}
    for round_index in range(args.warmup + args.repeats):
        for key, runner in runners.items():
            start = time.perf_counter()
            runner.run(inputs)
            if round_index >= args.warmup:
                times[key].append(1e3 * (time.perf_counter() - start))
    before = statistics.median(times[full])
    rows = []
    for key, values in times.items():
        median = statistics.median(values)
        score_difference = float(np.abs(results[full]['query_score']
                                        - results[key]['query_score']).max())
        identical = (all(np.array_equal(results[full][n], results[key][n]) for n in EXACT)
                     and score_difference <= SCORE_TOLERANCE)
        rows.append({'model': model_name, 'backend': backend, 'decoded_queries': key,
                     'median_ms': round(median, 1),
                     'p90_ms': round(sorted(values)[int(0.9 * (len(values) - 1))], 1),
                     'speedup': round(before / median, 2), 'identical': identical,
                     'max_score_difference': score_difference,
                     'kept': kept})
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    from tokenmask_ros.runtime.bench import environment

    lines = [f'Deploy graph with every query decoded vs the {args.decoded_queries} best vs '
             f'the kept ones (at most {args.decoded_queries}), '
             f'{args.img_size}x{args.img_size}, K = {args.num_queries}, {args.num_classes} '
             f'classes, random weights, batch 1; {args.repeats} alternating rounds after '
             f'{args.warmup} warm-up; outputs compared with the threshold keeping '
             f'{args.kept} queries (identical: segment map, classes, keep and won areas equal, '
             f'scores within {SCORE_TOLERANCE:g}).', '', f'Machine: {environment("cpu")}', '',
             '| model | backend | decoded queries | median ms | p90 ms | speed-up | '
             'identical outputs | max score difference |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['decoded_queries']} | "
                     f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{'yes' if r['identical'] else 'NO'} | {r['max_score_difference']:.1e} |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    from training.table_files import write_table

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    keep = contextlib.nullcontext(args.keep_graphs) if args.keep_graphs else None
    with keep or tempfile.TemporaryDirectory(prefix='decoding-') as scratch:
        for backbone in args.backbones:
            for head in args.heads:
                name = f"{'TokenMask' if head == 'tokenmask' else 'EoMT'}-{backbone[0].upper()}"
                model = random_model(backbone, head, args)
                for backend in args.backends:
                    print(f'== {name} {backend}', flush=True)
                    rows += compare(name, model, backend, args, Path(scratch))
                    print('   ' + ', '.join(f"{r['decoded_queries']}: {r['median_ms']} ms"
                                            for r in rows if r['model'] == name
                                            and r['backend'] == backend), flush=True)
    write_table(args.out, 'decoding', COLUMNS, rows, markdown(rows, args))
    return 0 if all(r['identical'] for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
