#!/usr/bin/env python3
"""What the ROS node costs on top of the model: segment_node vs the Segmenter called directly.

Two measurements of the same frames (synthetic scenes of ``--size``, seed ``--seed``), in one
run:

* **direct**: :class:`tokenmask_ros.runtime.Segmenter` called on each RGB frame in this
  process (wall time of the call), one call per camera period as the node sees them (a
  first back-to-back pass sizes that period). Measured before and after the node run; both
  passes count, so slow drift of a shared machine does not favour either side.
* **node**: ``image_source`` -> ``segment_node`` -> a subscriber in this process, three
  processes talking over real DDS (the installed console scripts, else ``python -m``).
  The camera replays the same frames from PNG files: rendering scenes live would load the
  2-core CPU during the node pass only (about 40 ms per scene) and count as node overhead.
  Per frame: header stamp (set by image_source as it publishes) to the arrival of the
  frame's ``~/detections`` here, on the same clock. That covers serialisation, DDS
  transport both ways, conversion, the worker hand-off, the same Segmenter call, and
  publishing panoptic, semantic and detections (no one subscribes to the overlay, so it is
  not computed). The camera rate is set so that a frame normally arrives after the
  previous one is done (period = ``--headroom`` x the direct p90); a frame the node still
  drops (newest frame wins, on a machine busy with other work) is counted and left out.

* **tracking and 3D cost** (host time per frame, at each ``--cost-sizes``, 320x240 and
  640x480 by default): on frames of the synthetic RGB-D sequence
  (``synthetic_video.SequenceGenerator``), the Segmenter call, then
  ``PanopticTracker.update`` on its prediction (with the image: the appearance cue), then
  the 3D work the node does per frame with depth: ``depth3d.depth_to_metres`` of the 16UC1
  depth, ``segment_boxes_3d`` and ``labelled_points`` (stride ``POINTS_STRIDE``), and
  separately building the three 3D messages (Detection3DArray, MarkerArray, PointCloud2).
  Each is reported as a share of the Segmenter's time (the issue's target: under 10 %).
  ``--cost-only`` runs just this part.

* **several cameras** (``--cameras 1 2 4``, only this part): one ``segment_node`` with N
  cameras (``images``, one batch-N export) against N ``segment_node`` processes of one camera
  each, side by side, with the same N ``image_source`` cameras (``--camera-rate`` Hz each,
  replaying the same PNG frames). After ``--settle`` seconds, for ``--duration`` seconds:
  total throughput (frames answered per second, over all cameras), latency (header stamp ->
  ``detections`` received here), CPU (user + system time of the segment_node processes,
  from ``/proc``, in % of one core) and memory (resident set of those processes, summed;
  their peak too). Writes ``node_benchmark_cameras.csv`` and ``node_benchmark_cameras.md``.

Overhead = node median - direct median, reported in ms and as a share of the direct
per-frame time. On a machine busy with other work the two passes see different loads, so
the report adds a same-window figure: the node's end-to-end median minus the median of the
Segmenter calls inside the node (from its ``/diagnostics``) during the very same frames.
Writes ``node_benchmark.csv`` (per frame), ``node_benchmark_cost.csv`` (tracking and 3D,
per size and frame) and ``node_benchmark.md`` into ``--out``.
Unlike the rest of ``training/``, this script needs ROS 2 (rclpy).

    python training/node_benchmark.py --frames 30 --size 320x240
    python training/node_benchmark.py --cost-only --cost-sizes 320x240 640x480
    python training/node_benchmark.py --cameras 1 2 4 --duration 20
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python training/node_benchmark.py`: the repository onto sys.path
    import _repo_path  # noqa: F401

import numpy as np

from tokenmask_ros.cli import parse_size
from tokenmask_ros.ros.processes import console_command, spin_until

NAMESPACE = '/node_benchmark'


def stop_processes(processes) -> None:
    """SIGINT every node process still running (a clean rclpy shutdown), kill laggards."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def frames(args) -> list[np.ndarray]:
    """The frames image_source publishes for ``source:=synthetic`` with the same size/seed."""
    from tokenmask_ros.synthetic import SceneGenerator

    generator = SceneGenerator(height=args.height, width=args.width, seed=args.seed)
    return [generator.scene(i).image for i in range(args.warmup + args.frames)]


def direct_pass(segmenter, images: list[np.ndarray], warmup: int,
                period_s: float = 0.0) -> list[float]:
    """Wall time (ms) of each Segmenter call after ``warmup``; one call per ``period_s``
    (the camera's rhythm, so the caches and thread pools idle between calls as they do in
    the node), or back to back when 0."""
    times = []
    next_start = time.perf_counter()
    for index, image in enumerate(images):
        time.sleep(max(0.0, next_start - time.perf_counter()))
        start = time.perf_counter()
        next_start = start + period_s
        segmenter(image)
        if index >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    return times


def write_frames(images: list[np.ndarray], folder: Path) -> None:
    """The frames as lossless PNGs, for image_source to replay (``source:=<folder>``)."""
    from tokenmask_ros.image_io import write_rgb

    for index, image in enumerate(images):
        write_rgb(folder / f'frame_{index:04d}.png', image)


def node_pass(args, period_s: float, folder: Path) -> tuple[list[float], dict]:
    """Per-frame latency (ms) of the node pipeline for frames warmup..warmup+frames-1.

    The camera replays ``folder`` (one PNG decode per frame) rather than rendering scenes,
    so the camera's own work loads the shared CPU as little as a real driver would.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import Detection2DArray, LabelInfo

    total = args.warmup + args.frames
    env = os.environ.copy()
    segment_args = [*console_command('segment_node'), '--ros-args', '-r', f'__ns:={NAMESPACE}',
                    '-p', f'backend:={args.backend}']
    if args.model:
        segment_args += ['-p', f'model:={args.model}']
    source_args = [*console_command('image_source'), '--ros-args', '-r', f'__ns:={NAMESPACE}',
                   '-p', f'source:={folder}', '-p', 'loop:=false',
                   '-p', f'rate:={1.0 / period_s:.4f}', '-p', f'count:={total}',
                   '-p', 'wait_for_subscribers:=1']
    rclpy.init()
    node = rclpy.create_node('node_benchmark_listener', namespace=NAMESPACE)
    arrivals: dict[int, int] = {}
    ready = []
    diagnostics: dict[str, str] = {}

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name == f'{NAMESPACE}/segment_node: segmentation':
                diagnostics.update((kv.key, kv.value) for kv in status.values)

    def on_detections(msg):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        arrivals[stamp] = node.get_clock().now().nanoseconds

    node.create_subscription(Detection2DArray, 'segment_node/detections', on_detections,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(LabelInfo, 'segment_node/label_info', ready.append, QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    processes = []
    try:
        segment = subprocess.Popen(segment_args, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        processes.append(segment)
        spin_until(node, lambda: ready or segment.poll() is not None, args.timeout)
        if not ready:
            raise RuntimeError('segment_node did not start: ' + (
                segment.communicate(timeout=5)[1] if segment.poll() is not None else 'timeout'))
        source = subprocess.Popen(source_args, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        processes.append(source)
        # Done when every frame is answered, or when the camera has finished and nothing
        # has arrived for a while (a frame the node dropped never will).
        last = [time.monotonic(), 0]

        def done() -> bool:
            if len(arrivals) != last[1]:
                last[:] = [time.monotonic(), len(arrivals)]
            quiet = time.monotonic() - last[0] > max(3.0, 5 * period_s)
            return len(arrivals) >= total or (source.poll() is not None and quiet)

        spin_until(node, done, args.timeout + total * period_s)
        received = len(arrivals)
        spin_until(node, lambda: int(diagnostics.get('frames processed', -1)) >= received, 5)
        stamps = sorted(arrivals)
        latency = [(arrivals[s] - s) / 1e6 for s in stamps]
        info = {'outputs': len(stamps), 'expected': total,
                'segmenter_p50': float(diagnostics.get('segmenter p50 (ms)', 'nan')),
                'in_node_p50': float(diagnostics.get('latency p50 (ms)', 'nan'))}
        return latency[args.warmup:], info
    finally:
        stop_processes(processes)
        node.destroy_node()
        rclpy.try_shutdown()


# --- several cameras: one node with N cameras vs N nodes -------------------------------

CAMERA_NAMESPACE = '/node_benchmark_cameras'
CAMERA_FIELDS = ('cameras', 'setup', 'processes', 'answered', 'seconds', 'throughput_fps',
                 'latency_p50_ms', 'latency_p90_ms', 'cpu_percent', 'rss_mb', 'peak_rss_mb')


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def process_memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of process ``pid``, from /proc."""
    values = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        key, _, rest = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
            values[key] = int(rest.split()[0]) / 1024
    return values.get('VmRSS', float('nan')), values.get('VmHWM', float('nan'))


def cameras_pass(args, count: int, setup: str, folder: Path) -> dict:
    """One measurement: ``count`` image_source cameras and either one segment_node with
    ``count`` cameras (``setup`` 'one node') or ``count`` single-camera nodes ('N nodes')."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import Detection2DArray, LabelInfo

    names = [f'cam{i}' for i in range(count)]
    common = ['-p', f'backend:={args.backend}', '-p', 'tracking:=false']
    if args.model:
        common += ['-p', f'model:={args.model}']
    if setup == 'one node':
        topics = ', '.join(f"'{name}/image'" for name in names)
        nodes = [[*console_command('segment_node'), '--ros-args', '-r',
                  f'__ns:={CAMERA_NAMESPACE}', '-p', f'images:=[{topics}]', *common]]
        outputs = [f'{CAMERA_NAMESPACE}/segment_node/{name}' for name in names]
        infos = [f'{CAMERA_NAMESPACE}/segment_node/label_info']
    else:
        nodes = [[*console_command('segment_node'), '--ros-args', '-r',
                  f'__ns:={CAMERA_NAMESPACE}/{name}', *common] for name in names]
        outputs = [f'{CAMERA_NAMESPACE}/{name}/segment_node' for name in names]
        infos = [f'{output}/label_info' for output in outputs]
    cameras = [[*console_command('image_source'), '--ros-args', '-r',
                f'__ns:={CAMERA_NAMESPACE}/{name}', '-p', f'source:={folder}',
                '-p', 'loop:=true', '-p', f'rate:={args.camera_rate}',
                '-p', f'frame_id:={name}', '-p', 'wait_for_subscribers:=1'] for name in names]
    rclpy.init()
    node = rclpy.create_node('node_benchmark_cameras')
    arrivals: list[tuple[float, float]] = []  # (arrival, latency ms)
    ready: set[str] = set()

    def on_detections(msg):
        now = node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        arrivals.append((time.monotonic(), (now - stamp) / 1e6))

    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    for output in outputs:
        node.create_subscription(Detection2DArray, f'{output}/detections', on_detections,
                                 reliable)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    for info in infos:
        node.create_subscription(LabelInfo, info, lambda _, i=info: ready.add(i), latched)
    segment_nodes, processes = [], []
    try:
        for command in nodes:
            segment_nodes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE, text=True))
        processes += segment_nodes
        spin_until(node, lambda: len(ready) == len(infos)
                   or any(p.poll() is not None for p in segment_nodes), args.timeout)
        if len(ready) != len(infos):
            failed = [p for p in segment_nodes if p.poll() is not None]
            raise RuntimeError(f'{setup} x {count}: segment_node did not start: ' + (
                failed[0].communicate(timeout=5)[1][-2000:] if failed else 'timeout'))
        processes += [subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL) for command in cameras]
        spin_until(node, lambda: False, args.settle)
        pids = [p.pid for p in segment_nodes]
        cpu_start = sum(process_cpu_seconds(pid) for pid in pids)
        start = time.monotonic()
        first = len(arrivals)
        spin_until(node, lambda: False, args.duration)
        seconds = time.monotonic() - start
        cpu = sum(process_cpu_seconds(pid) for pid in pids) - cpu_start
        memory = [process_memory_mb(pid) for pid in pids]
        window = [latency for arrival, latency in arrivals[first:] if arrival <= start + seconds]
    finally:
        stop_processes(processes)
        node.destroy_node()
        rclpy.try_shutdown()
    latency = stats(window)
    return {'cameras': count, 'setup': setup, 'processes': len(segment_nodes),
            'answered': len(window), 'seconds': seconds,
            'throughput_fps': len(window) / seconds,
            'latency_p50_ms': latency['median'], 'latency_p90_ms': latency['p90'],
            'cpu_percent': 100 * cpu / seconds, 'rss_mb': sum(m[0] for m in memory),
            'peak_rss_mb': sum(m[1] for m in memory)}


def cameras_report(args) -> int:
    """One node with N cameras vs N nodes, for each N of ``--cameras``: CSV + Markdown."""
    from tokenmask_ros.bundled import default_model_path

    model = Path(args.model) if args.model else default_model_path()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix='node_benchmark_') as folder:
        write_frames(frames(args), Path(folder))
        for count in args.cameras:
            for setup in ('one node', 'N nodes'):
                row = cameras_pass(args, count, setup, Path(folder))
                rows.append(row)
                print(f'{count} camera(s), {setup}: {row["throughput_fps"]:.2f} frames/s, '
                      f'latency p50 {row["latency_p50_ms"]:.0f} ms, CPU '
                      f'{row["cpu_percent"]:.0f} %, RSS {row["rss_mb"]:.0f} MiB', flush=True)
    with open(out / 'node_benchmark_cameras.csv', 'w', newline='') as file:
        writer = csv.DictWriter(file, CAMERA_FIELDS)
        writer.writeheader()
        writer.writerows({k: f'{v:.3f}' if isinstance(v, float) else v for k, v in row.items()}
                         for row in rows)
    lines = [f'# One segment_node with N cameras vs N segment_nodes ({model.name}, backend '
             f'{args.backend}, {args.width}x{args.height})', '',
             f'{platform.node()}, {os.cpu_count()} CPU(s), {time.strftime("%Y-%m-%d %H:%M")}; '
             f'every camera at {args.camera_rate:g} Hz; {args.settle:g} s settling, then '
             f'{args.duration:g} s measured. Throughput: frames answered per second over all '
             'cameras; latency: header stamp -> detections received; CPU: user + system time '
             'of the segment_node process(es) in % of one core; memory: their resident sets, '
             'summed (peak in brackets).', '',
             '| cameras | setup | processes | frames/s | latency p50 (ms) | latency p90 (ms) '
             '| CPU (%) | memory (MiB) |', '|---|---|---|---|---|---|---|---|']
    for row in rows:
        lines.append(f'| {row["cameras"]} | {row["setup"]} | {row["processes"]} | '
                     f'{row["throughput_fps"]:.2f} | {row["latency_p50_ms"]:.0f} | '
                     f'{row["latency_p90_ms"]:.0f} | {row["cpu_percent"]:.0f} | '
                     f'{row["rss_mb"]:.0f} ({row["peak_rss_mb"]:.0f}) |')
    report = '\n'.join(lines)
    (out / 'node_benchmark_cameras.md').write_text(report + '\n')
    print(report)
    print(f'wrote {out / "node_benchmark_cameras.md"} and {out / "node_benchmark_cameras.csv"}')
    return 0 if all(row['answered'] for row in rows) else 1


COST_STAGES = ('segmenter', 'tracking', 'depth3d', 'messages3d')
COST_NAMES = {'segmenter': 'Segmenter call', 'tracking': 'PanopticTracker.update',
              'depth3d': '3D: depth_to_metres + segment_boxes_3d + labelled_points',
              'messages3d': '3D messages: Detection3DArray + MarkerArray + PointCloud2'}


def cost_pass(segmenter, width: int, height: int, frames: int, warmup: int, seed: int
              ) -> dict[str, list[float]]:
    """Host time (ms) per frame of each of :data:`COST_STAGES` on ``warmup + frames`` frames
    of the synthetic RGB-D sequence at ``width`` x ``height`` (warm-up frames not kept)."""
    from std_msgs.msg import Header

    from tokenmask_ros.defaults import POINTS_STRIDE
    from tokenmask_ros.depth3d import (
        box_stride,
        depth_to_metres,
        labelled_points,
        segment_boxes_3d,
    )
    from tokenmask_ros.ros.outputs3d import detections_3d_message, markers_message
    from tokenmask_ros.ros.pointcloud import points_to_cloud
    from tokenmask_ros.synthetic_video import SequenceGenerator
    from tokenmask_ros.tracking import PanopticTracker
    from tokenmask_ros.viz import class_colors

    generator = SequenceGenerator(height=height, width=width, seed=seed,
                                  length=warmup + frames)
    tracker = PanopticTracker(segmenter.is_thing, label_divisor=segmenter.label_divisor)
    names = segmenter.class_names or [str(i) for i in range(segmenter.config.num_classes)]
    colors = class_colors(segmenter.config.classes, segmenter.config.num_classes)
    header = Header(frame_id='camera')
    times: dict[str, list[float]] = {stage: [] for stage in COST_STAGES}
    for index in range(warmup + frames):
        frame = generator.frame(index)
        depth_mm = np.round(frame.depth * 1000).astype(np.uint16)  # as a camera sends it
        stamps = [time.perf_counter()]
        prediction = segmenter(frame.image)
        stamps.append(time.perf_counter())
        prediction = tracker.update(prediction, frame.image)
        stamps.append(time.perf_counter())
        depth_m = depth_to_metres(depth_mm, '16UC1')
        boxes = segment_boxes_3d(prediction.panoptic, depth_m, frame.camera,
                                 stride=box_stride(*frame.image.shape[:2]))  # as the node
        points = labelled_points(prediction.panoptic, frame.image, depth_m, frame.camera,
                                 stride=POINTS_STRIDE, label_divisor=segmenter.label_divisor)
        stamps.append(time.perf_counter())
        detections_3d_message(prediction, boxes, header)
        markers_message(prediction, boxes, header, names, colors, segmenter.label_divisor)
        points_to_cloud(points, header)
        stamps.append(time.perf_counter())
        if index >= warmup:
            for stage, start, end in zip(COST_STAGES, stamps[:-1], stamps[1:], strict=True):
                times[stage].append(1e3 * (end - start))
    return times


def cost_report(model: Path, args) -> tuple[list[str], list[list]]:
    """Markdown lines and per-frame CSV rows of the tracking and 3D cost at each size."""
    from tokenmask_ros.runtime import Segmenter

    lines = ['## Tracking and 3D host time per frame', '',
             f'Synthetic RGB-D sequence (seed {args.seed}), {args.cost_frames} frames per size '
             f'after {args.warmup} warm-up; medians in ms, share of the Segmenter call in '
             'brackets (target: tracking and 3D under 10 % of it).', '',
             '| size | ' + ' | '.join(COST_NAMES[s] for s in COST_STAGES) + ' |',
             '|---|' + '---|' * len(COST_STAGES)]
    rows = []
    with Segmenter(model, args.backend) as segmenter:
        for width, height in args.cost_sizes:
            times = cost_pass(segmenter, width, height, args.cost_frames, args.warmup,
                              args.seed)
            median = {stage: float(np.median(times[stage])) for stage in COST_STAGES}
            cells = [f'{median["segmenter"]:.1f}'] + [
                f'{median[s]:.2f} ({100 * median[s] / median["segmenter"]:.1f} %)'
                for s in COST_STAGES[1:]]
            lines.append(f'| {width}x{height} | ' + ' | '.join(cells) + ' |')
            rows += [[f'{width}x{height}', args.warmup + i,
                      *(f'{times[s][i]:.3f}' for s in COST_STAGES)]
                     for i in range(args.cost_frames)]
            print(f'cost at {width}x{height}: ' + ', '.join(
                f'{s} {median[s]:.2f} ms' for s in COST_STAGES), flush=True)
    return lines, rows


def write_cost_csv(path: Path, rows: list[list]) -> None:
    with open(path, 'w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow(['size', 'frame', *(f'{s}_ms' for s in COST_STAGES)])
        writer.writerows(rows)


def stats(values: list[float]) -> dict:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return {'median': float('nan'), 'p90': float('nan'), 'mean': float('nan')}
    return {'median': float(np.median(values)), 'p90': float(np.percentile(values, 90)),
            'mean': float(values.mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0] + ' Also the host time per frame of tracking '
        '(PanopticTracker.update) and of the 3D outputs from depth (depth3d + the 3D '
        'messages) at --cost-sizes, each as a share of the Segmenter call (target < 10 %).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--frames', type=int, default=30, help='timed frames per pass')
    parser.add_argument('--warmup', type=int, default=3, help='untimed frames first')
    parser.add_argument('--size', default='320x240', help='frame WIDTHxHEIGHT')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--model', default='', help='"" = the bundled model')
    parser.add_argument('--backend', default='auto')
    parser.add_argument('--headroom', type=float, default=1.5,
                        help='camera period as a multiple of the direct p90 time')
    parser.add_argument('--timeout', type=float, default=180.0,
                        help='seconds to wait for the node to start / answer')
    parser.add_argument('--out', default='benchmark_results', help='output folder')
    parser.add_argument('--cost-sizes', nargs='+', type=parse_size,
                        default=[(320, 240), (640, 480)], metavar='WxH',
                        help='frame sizes of the tracking and 3D cost table')
    parser.add_argument('--cost-frames', type=int, default=None,
                        help='timed frames per size in the tracking and 3D cost table '
                        '(default: --frames)')
    parser.add_argument('--cost-only', action='store_true',
                        help='only the tracking and 3D cost table (no node run)')
    parser.add_argument('--cameras', nargs='+', type=int, default=None, metavar='N',
                        help='only the several-cameras comparison: one node with N cameras '
                        'vs N nodes, for each N given')
    parser.add_argument('--camera-rate', type=float, default=10.0,
                        help='Hz of each camera in the --cameras comparison')
    parser.add_argument('--settle', type=float, default=10.0,
                        help='seconds of the --cameras comparison before measuring')
    parser.add_argument('--duration', type=float, default=20.0,
                        help='seconds measured per setup in the --cameras comparison')
    args = parser.parse_args(argv)
    args.width, args.height = (int(v) for v in args.size.lower().split('x'))
    args.cost_frames = args.frames if args.cost_frames is None else args.cost_frames
    if args.cost_frames < 1 or args.frames < 1 or args.warmup < 0:
        parser.error('--frames and --cost-frames must be >= 1, --warmup >= 0')
    if args.cameras is not None:
        if not all(1 <= n <= 16 for n in args.cameras):
            parser.error('--cameras takes counts from 1 to 16')
        if args.camera_rate <= 0 or args.duration <= 0 or args.settle < 0:
            parser.error('--camera-rate and --duration must be > 0, --settle >= 0')
        return cameras_report(args)

    from tokenmask_ros.bundled import default_model_path
    from tokenmask_ros.runtime import Segmenter

    model = Path(args.model) if args.model else default_model_path()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cost_lines, cost_rows = cost_report(model, args)
    write_cost_csv(out / 'node_benchmark_cost.csv', cost_rows)
    if args.cost_only:
        report = '\n'.join([f'# Tracking and 3D cost ({model.name})', '',
                            f'{platform.node()}, {os.cpu_count()} CPU(s), '
                            f'{time.strftime("%Y-%m-%d %H:%M")}.', '', *cost_lines[2:]])
        (out / 'node_benchmark.md').write_text(report + '\n')
        print(report)
        print(f'wrote {out / "node_benchmark.md"} and {out / "node_benchmark_cost.csv"}')
        return 0
    images = frames(args)
    with Segmenter(model, args.backend) as segmenter:
        backend = segmenter.backend.describe()
        back_to_back = direct_pass(segmenter, images, args.warmup)
        sizing = stats(back_to_back)
        period = max(args.headroom * sizing['p90'] / 1e3, 1 / 30)
        direct_a = direct_pass(segmenter, images, args.warmup, period)
    first = stats(direct_a)
    print(f'direct pass 1 at {1 / period:.2f} Hz: median {first["median"]:.1f} ms, '
          f'p90 {first["p90"]:.1f} ms (back to back {sizing["median"]:.1f}'
          ' ms); node pass ...', flush=True)
    with tempfile.TemporaryDirectory(prefix='node_benchmark_') as folder:
        write_frames(images, Path(folder))
        node, info = node_pass(args, period, Path(folder))
    with Segmenter(model, args.backend) as segmenter:
        direct_b = direct_pass(segmenter, images, args.warmup, period)

    direct = stats(direct_a + direct_b)
    node_stats = stats(node)
    overhead = node_stats['median'] - direct['median']
    inside = {'median': info['segmenter_p50'], 'p90': float('nan'), 'mean': float('nan')}
    in_node = {'median': info['in_node_p50'], 'p90': float('nan'), 'mean': float('nan')}
    rows = [
        ('direct Segmenter call, back to back (sizes the camera period)', sizing),
        ('direct Segmenter call at the camera rate (this process, before + after the node '
         'run)', direct),
        ('Segmenter call inside the node (its /diagnostics, same time window)', inside),
        ('node: frame arrival -> outputs published (its /diagnostics)', in_node),
        ('end to end over DDS: stamp -> detections received', node_stats),
    ]
    lines = [
        f'# segment_node overhead ({model.name}, {backend}, {args.width}x{args.height})',
        '',
        f'{platform.node()}, {os.cpu_count()} CPU(s), {time.strftime("%Y-%m-%d %H:%M")}; '
        f'{args.frames} timed frames per pass after {args.warmup} warm-up; node outputs '
        f'received {info["outputs"]}/{info["expected"]}; camera at {1 / period:.2f} Hz.',
        '',
        '| path | median (ms) | p90 (ms) | mean (ms) | frames |',
        '|---|---|---|---|---|',
    ]
    counts = [len(back_to_back), len(direct_a) + len(direct_b), info['outputs'],
              info['outputs'], len(node)]
    for (name, s), count in zip(rows, counts, strict=True):
        cells = ' | '.join('–' if np.isnan(s[k]) else f'{s[k]:.1f}'
                           for k in ('median', 'p90', 'mean'))
        lines.append(f'| {name} | {cells} | {count} |')
    share = overhead / direct['median'] if direct['median'] else float('nan')
    paired = node_stats['median'] - inside['median']
    paired_share = paired / inside['median'] if inside['median'] else float('nan')
    lines += ['', f'**node overhead: {overhead:.1f} ms per frame = {100 * share:.1f} % of '
                  'the direct per-frame time** (end-to-end median - direct median; '
                  'target < 15 %).', '',
              f'Same time window (robust to a busy machine): end-to-end median - the '
              f'node\'s own Segmenter median = {paired:.1f} ms = {100 * paired_share:.1f} % '
              'of it (the node\'s medians include the warm-up frames).']
    report = '\n'.join([*lines, '', *cost_lines])
    (out / 'node_benchmark.md').write_text(report + '\n')
    with open(out / 'node_benchmark.csv', 'w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow(['frame', 'direct_pass1_ms', 'direct_pass2_ms', 'node_ms'])
        for index in range(args.frames):
            writer.writerow([args.warmup + index] + [
                f'{series[index]:.3f}' if index < len(series) else ''
                for series in (direct_a, direct_b, node)])
    print(report)
    print(f'wrote {out / "node_benchmark.md"}, {out / "node_benchmark.csv"} and '
          f'{out / "node_benchmark_cost.csv"}')
    return 0 if node else 1


if __name__ == '__main__':
    sys.exit(main())
