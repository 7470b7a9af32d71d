#!/usr/bin/env python3
"""Exported deploy graphs side by side on ONNX Runtime: wall and CPU time per call.

    tokenmask export teacher.safetensors -o teacher.onnx
    tokenmask export student.safetensors -o student.onnx
    python training/graph_latency.py teacher.onnx student.onnx --threads 1

Why: on a small shared machine the whole-call latency of two models moves by tens of
percent between runs (other tenants, thread pools of several runtimes in one process), more
than the difference between a teacher and its student. This times only the graphs, in
rounds that rotate their order, with a fixed ONNX Runtime thread count (``--threads 1``
takes thread-pool scheduling out of the comparison), and reports the median wall clock and
the median CPU time of the process per call (with one thread, the compute itself). Frames
are letterboxed synthetic scenes at each graph's input size. Graphs run as the
``onnxruntime`` backend runs them on CPU, attention fused (``--unfused``: the file's graph
as it is).

``--gemm-ceiling`` also times one fp32 MatMul of a ViT-S MLP layer at 640 pixels (1,800
tokens x 384 -> 1,536) on the same ONNX Runtime and thread count: the GFLOP/s that the
linear layers, the bulk of a ViT's arithmetic, reach on this machine; a graph's FLOPs
divided by that rate is about the least its call can take. Writes ``latency.md`` and ``latency.csv``
into ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as `python training/graph_latency.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

COLUMNS = ('graph', 'threads', 'rounds', 'wall_ms_median', 'wall_ms_p90', 'cpu_ms_median',
           'ratio_to_first')
GEMM_SHAPE = (1800, 384, 1536)  # tokens x width -> MLP width of ViT-S at 640 with 200 queries


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('graphs', nargs='+', type=Path, metavar='GRAPH.onnx',
                        help='tokenmask exports (tokenmask export); the first is the reference')
    parser.add_argument('--threads', type=int, default=1,
                        help='ONNX Runtime intra-op threads (default 1; 0 = its default)')
    parser.add_argument('--rounds', type=int, default=150, help='timed rounds')
    parser.add_argument('--warmup', type=int, default=30, help='untimed calls per graph')
    parser.add_argument('--score-threshold', type=float, default=0.8)
    parser.add_argument('--unfused', action='store_true',
                        help="the files' graphs as they are (default: attention fused, as the "
                             'onnxruntime backend runs them on CPU)')
    parser.add_argument('--gemm-ceiling', action='store_true',
                        help='also time one fp32 MatMul ({}x{} x {}x{}) for the GFLOP/s this '
                             'machine reaches'.format(*GEMM_SHAPE[:2], *GEMM_SHAPE[1:]))
    parser.add_argument('--out', type=Path, default=Path('benchmark_results/graph_latency'))
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.threads < 0:
        parser.error('--rounds must be >= 1, --warmup and --threads >= 0')
    missing = [str(g) for g in args.graphs if not g.is_file()]
    if missing:
        parser.error(f'no such file: {", ".join(missing)}')
    return args


class TimedGraph:
    """One ONNX Runtime session of a tokenmask export, with frames fitted to its input."""

    def __init__(self, path: Path, threads: int, frames, score_threshold: float,
                 fused: bool = True):
        import numpy as np

        from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
        from tokenmask_ros.runtime.preprocess import letterbox

        backend = OnnxRuntimeBackend(path, 'cpu', threads=threads, fuse_attention=fused)
        height, width = backend.input_size
        self.name = path.name
        self.session = backend.session
        threshold = np.array([score_threshold], np.float32)
        self.feeds = []
        for frame in frames:
            canvas, box = letterbox(frame, (height, width))
            self.feeds.append({'image': canvas, 'score_threshold': threshold,
                               'content_size': np.array(box.content_size, np.int32)})
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def call(self, index: int, record: bool = True) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.session.run(None, self.feeds[index % len(self.feeds)])
        if record:
            self.wall.append(1e3 * (time.perf_counter() - wall))
            self.cpu.append(1e3 * (time.process_time() - cpu))


def measure(args: argparse.Namespace) -> list[dict]:
    from tokenmask_ros.runtime.bench import synthetic_frames

    frames = synthetic_frames(640, 480)
    graphs = [TimedGraph(p, args.threads, frames, args.score_threshold, not args.unfused)
              for p in args.graphs]
    for graph in graphs:
        for index in range(args.warmup):
            graph.call(index, record=False)
    for index in range(args.rounds):
        shift = index % len(graphs)
        for graph in graphs[shift:] + graphs[:shift]:
            graph.call(index)
    first = statistics.median(graphs[0].wall)
    return [{'graph': g.name, 'threads': args.threads, 'rounds': args.rounds,
             'wall_ms_median': round(statistics.median(g.wall), 2),
             'wall_ms_p90': round(sorted(g.wall)[int(0.9 * (len(g.wall) - 1))], 2),
             'cpu_ms_median': round(statistics.median(g.cpu), 2),
             'ratio_to_first': round(statistics.median(g.wall) / first, 3)} for g in graphs]


def gemm_gflops(threads: int, repeats: int = 200, shape=GEMM_SHAPE) -> float:
    """Median GFLOP/s of one fp32 MatMul ``[M, K] x [K, N]`` on ONNX Runtime's CPU provider."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rows, inner, cols = shape
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.random((inner, cols), np.float32), 'w')
    graph = helper.make_graph(
        [helper.make_node('MatMul', ['x', 'w'], ['y'])], 'gemm',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [rows, inner])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [rows, cols])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)],
                              ir_version=min(onnx.IR_VERSION, 9))  # what onnxruntime reads
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=['CPUExecutionProvider'])
    feed = {'x': rng.random((rows, inner), np.float32)}
    times = []
    for index in range(repeats + repeats // 10):
        start = time.perf_counter()
        session.run(None, feed)
        if index >= repeats // 10:  # the first tenth warms up
            times.append(time.perf_counter() - start)
    return 2 * rows * inner * cols / statistics.median(times) / 1e9


def markdown(rows: list[dict], args: argparse.Namespace, gemm: float | None = None) -> str:
    from tokenmask_ros.runtime.bench import environment

    lines = [f'ONNX Runtime CPU, {args.threads or "default"} intra-op thread(s), '
             f'{args.rounds} rounds in rotating order after {args.warmup} warm-up calls per '
             f'graph, attention {"as exported" if args.unfused else "fused"}; frames: '
             'synthetic scenes letterboxed to each graph input.', '',
             f'Machine: {environment("cpu")}', '',
             '| graph | wall ms (median) | wall ms (p90) | CPU ms (median) | x first |',
             '|---|---|---|---|---|']
    lines += [f"| {r['graph']} | {r['wall_ms_median']:.1f} | {r['wall_ms_p90']:.1f} | "
              f"{r['cpu_ms_median']:.1f} | {r['ratio_to_first']:.2f} |" for r in rows]
    if gemm is not None:
        rows_, inner, cols = GEMM_SHAPE
        lines += ['', f'fp32 MatMul [{rows_}, {inner}] x [{inner}, {cols}] on the same runtime '
                  f'and threads: {gemm:.0f} GFLOP/s (median); even at that rate a graph of '
                  f'F GFLOP takes F / {gemm:.0f} s here.']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    args = parse_args(argv)
    from training.table_files import write_table

    rows = measure(args)
    gemm = gemm_gflops(args.threads) if args.gemm_ceiling else None
    write_table(args.out, 'latency', COLUMNS, rows, markdown(rows, args, gemm))
    return 0


if __name__ == '__main__':
    sys.exit(main())
