"""``make demo``: a camera (synthetic or yours) -> segment_node -> overlays, video, 3D, table.

One process, one single-threaded executor, three nodes talking over real DDS topics:
``image_source`` (the :class:`ImageSourceNode` class itself, reading ``--source``: a
synthetic RGB-D sequence (``synthetic_video``: things that move, with depth and
camera_info), ``camera:N``, an image folder or a video file, frames of any size),
``segment_node`` (:class:`SegmentNode`, the bundled model unless ``--model``, tracking on)
and a collector that subscribes to the camera, the overlay, the detections and the 3D
outputs. After ``--frames`` frames it writes into ``--output-dir``: ``overlay_NNNN.png`` per
segmented frame, ``overlay.mp4`` (MJPG ``.avi`` where OpenCV cannot write MP4): the tracked
video, each thing labelled "class #track" at its centre, ``contact_sheet.png`` (input
beside overlay for sampled frames), ``snapshot_3d.png`` (top view of the last frame's
labelled cloud with its 3D boxes; only when depth came with the frames) and
``summary.md``, and prints the summary table. End-to-end latency is header stamp (set by
image_source when it publishes) to the moment the collector receives the frame's
detections, on the same clock.

    python -m tokenmask_ros.ros.demo --frames 60 --rate 5 --output-dir demo_output
    python -m tokenmask_ros.ros.demo --source my_photos/ --frames 20 --rate 2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from tokenmask_ros import viz
from tokenmask_ros.bundled import resolve_model_path
from tokenmask_ros.image_io import write_bgr, write_rgb
from tokenmask_ros.ros.conversions import image_to_numpy
from tokenmask_ros.ros.image_source import ImageSourceNode
from tokenmask_ros.ros.pointcloud import CloudError, cloud_to_points
from tokenmask_ros.ros.processes import spin_until
from tokenmask_ros.ros.segment_node import SegmentNode, percentiles
from tokenmask_ros.sources import SourceError

NAMESPACE = '/tokenmask_demo'
FRAME_ID = 'camera'  # image_source's default and config/segment.rviz's fixed frame
TILE_WIDTH = 320  # contact sheet tiles; inputs are kept at this size only
KEEP_CLOUDS = 3  # labelled clouds kept for the 3D snapshot (the newest ones)


class Box:
    """A 3D box as Detection3D carries it: centre and size in metres (optical frame)."""

    def __init__(self, center, size):
        self.center, self.size = center, size


class Collector(Node):
    """Keeps every overlay, a thumbnail of every input and each detections' arrival time."""

    def __init__(self):
        super().__init__('demo_collector', namespace=NAMESPACE)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.overlays: dict[int, np.ndarray] = {}
        self.inputs: dict[int, np.ndarray] = {}  # stamp -> thumbnail for the contact sheet
        self.arrivals: dict[int, tuple[int, int]] = {}  # stamp -> (received ns, segments)
        self.ids: dict[int, list[int]] = {}  # stamp -> panoptic ids of the 2D detections
        self.boxes: dict[int, dict[int, Box]] = {}  # stamp -> panoptic id -> 3D box
        self.clouds: dict[int, np.ndarray] = {}  # stamp -> labelled points (newest few)
        self.markers = 0
        self.clouds_received = 0
        self.depth_frames = 0
        self.camera_infos = 0
        self.bad_3d: list[str] = []
        self.create_subscription(Image, 'image', self._on_image, qos)
        self.create_subscription(Image, 'segment_node/overlay', self._on_overlay, qos)
        self.create_subscription(Detection2DArray, 'segment_node/detections',
                                 self._on_detections, qos)
        # 3D: the node computes these only while subscribed, and only with depth; counting
        # depth and camera_info also makes this node a subscriber image_source waits for.
        self.create_subscription(Detection3DArray, 'segment_node/detections_3d',
                                 self._on_detections_3d, qos)
        self.create_subscription(PointCloud2, 'segment_node/points', self._on_points, qos)
        self.create_subscription(MarkerArray, 'segment_node/markers', self._on_markers, qos)
        self.create_subscription(Image, 'depth', self._on_depth, qos)
        self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, qos)

    @staticmethod
    def stamp_ns(msg) -> int:
        return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec

    def _on_image(self, msg: Image) -> None:
        self.inputs[self.stamp_ns(msg)] = fit(image_to_numpy(msg), TILE_WIDTH)

    def _on_overlay(self, msg: Image) -> None:
        self.overlays[self.stamp_ns(msg)] = image_to_numpy(msg).copy()

    def _on_detections(self, msg: Detection2DArray) -> None:
        now = self.get_clock().now().nanoseconds
        self.arrivals[self.stamp_ns(msg)] = (now, len(msg.detections))
        self.ids[self.stamp_ns(msg)] = [int(d.id) for d in msg.detections
                                        if d.id.lstrip('-').isdigit()]

    def _on_detections_3d(self, msg: Detection3DArray) -> None:
        boxes = {}
        for detection in msg.detections:
            if not detection.id.lstrip('-').isdigit():
                self.bad_3d.append(f'detection id {detection.id[:20]!r}')
                continue
            center, size = detection.bbox.center.position, detection.bbox.size
            boxes[int(detection.id)] = Box((center.x, center.y, center.z),
                                           (size.x, size.y, size.z))
        self.boxes[self.stamp_ns(msg)] = boxes

    def _on_points(self, msg: PointCloud2) -> None:
        try:
            points = cloud_to_points(msg)
        except CloudError as error:
            self.bad_3d.append(str(error))
            return
        self.clouds_received += 1
        self.clouds[self.stamp_ns(msg)] = points.copy()
        for stamp in sorted(self.clouds)[:-KEEP_CLOUDS]:
            del self.clouds[stamp]

    def _on_markers(self, msg: MarkerArray) -> None:
        self.markers += 1

    def _on_depth(self, msg: Image) -> None:
        self.depth_frames += 1

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_infos += 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m tokenmask_ros.ros.demo', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--source', default='synthetic',
                        help='"synthetic" (a synthetic RGB-D sequence: moving things, depth '
                             'and camera_info, so the 3D outputs have input), "camera:N", '
                             'an image folder or a video file (folders and videos loop '
                             'until --frames are out)')
    parser.add_argument('--frames', type=int, default=60, help='frames the camera publishes')
    parser.add_argument('--rate', type=float, default=5.0, help='camera rate in Hz')
    parser.add_argument('--size', default='320x240',
                        help='synthetic frame WIDTHxHEIGHT; the size requested from a camera')
    parser.add_argument('--output-dir', default='demo_output', help='where results go')
    parser.add_argument('--model', default='',
                        help='model file or bundled file name ("" = the bundled model)')
    parser.add_argument('--backend', default='auto',
                        help='auto, tensorrt, onnxruntime or torch')
    parser.add_argument('--score-threshold', type=float, default=None,
                        help='segment score threshold (default: the node default, 0.8)')
    parser.add_argument('--seed', type=int, default=0, help='synthetic scene seed')
    parser.add_argument('--executor', choices=('single', 'multi'), default='single',
                        help='rclpy executor for the three nodes (inference runs in the '
                             "node's own worker thread either way); rclpy's multi-threaded "
                             'one delays the camera timer by up to a second on 2 cores')
    parser.add_argument('--timeout', type=float, default=600.0,
                        help='give up after this many seconds of streaming')
    args = parser.parse_args(argv)
    if args.frames < 1 or args.rate <= 0:
        parser.error('--frames must be >= 1 and --rate > 0')
    try:
        args.width, args.height = (int(v) for v in args.size.lower().split('x'))
    except ValueError:
        parser.error(f'--size must be WIDTHxHEIGHT, got {args.size!r}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rclpy.init()
    executor = (SingleThreadedExecutor() if args.executor == 'single'
                else MultiThreadedExecutor(num_threads=3))
    nodes = []
    try:
        # A bare bundled file name works from any folder, as in the CLI.
        model = str(resolve_model_path(args.model)) if args.model.strip() else ''
        segment_params = [Parameter('model', value=model),
                          Parameter('backend', value=args.backend)]
        if args.score_threshold is not None:
            segment_params.append(Parameter('score_threshold', value=args.score_threshold))
        try:
            segment = SegmentNode(namespace=NAMESPACE, parameter_overrides=segment_params)
        except (FileNotFoundError, ValueError, RuntimeError, ImportError) as error:
            print(f'demo: cannot start segment_node: {error}', file=sys.stderr)
            return 1
        collector = Collector()
        nodes += [segment, collector]
        for node in nodes:
            executor.add_node(node)
        # The overlay is computed only while subscribed: match the collector first.
        spin_until(executor, lambda: segment.overlay_pub.get_subscription_count() > 0, 10)
        try:  # waits for both subscribers: segment_node and the collector
            source = ImageSourceNode(namespace=NAMESPACE, parameter_overrides=[
                *source_parameters(args.source), Parameter('rate', value=args.rate),
                Parameter('count', value=args.frames), Parameter('width', value=args.width),
                Parameter('height', value=args.height), Parameter('seed', value=args.seed),
                Parameter('frame_id', value=FRAME_ID),
                Parameter('wait_for_subscribers', value=2)])
        except (SourceError, ValueError) as error:
            print(f'demo: cannot open --source {args.source!r}: {error}', file=sys.stderr)
            return 2
        nodes.append(source)
        executor.add_node(source)

        start, cpu_start, steal_start = time.monotonic(), time.process_time(), cpu_steal_s()
        quiet_since = [time.monotonic(), -1]

        def finished() -> bool:
            received = segment.stats.received
            if received != quiet_since[1]:
                quiet_since[:] = [time.monotonic(), received]
            settled = time.monotonic() - quiet_since[0] > 1.0  # nothing in flight any more
            return (source.done and segment.idle and settled
                    and len(collector.arrivals) >= segment.stats.processed)

        completed = spin_until(executor, finished, args.timeout)
        wall, cpu = time.monotonic() - start, time.process_time() - cpu_start
        steal = cpu_steal_s()
        stolen = steal - steal_start if steal is not None and steal_start is not None else None
        summary = summarize(args, source, segment, collector, wall, completed, cpu, stolen)
        out = Path(args.output_dir)
        files = write_outputs(out, collector, args.rate)
        if write_snapshot_3d(out / 'snapshot_3d.png', collector, segment):
            files.insert(-1, 'snapshot_3d.png')
        summary.append(('files', ', '.join(files)))
        table = format_table(summary)
        (out / 'summary.md').write_text(table + '\n')
        print(table)
        return 0 if completed and collector.arrivals else 1
    except KeyboardInterrupt:
        return 130
    finally:
        executor.shutdown()
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.try_shutdown()


def source_parameters(source: str) -> list[Parameter]:
    """image_source's parameters for ``--source``: "synthetic" is the RGB-D sequence."""
    if source.strip() == 'synthetic':
        return [Parameter('source', value='synthetic_video'),
                Parameter('publish_depth', value=True),
                Parameter('publish_camera_info', value=True)]
    return [Parameter('source', value=source)]


def cpu_steal_s() -> float | None:
    """CPU time this (virtual) machine's hypervisor gave to others, summed over all CPUs.

    Read from the ``steal`` column of ``/proc/stat`` (Linux); None where there is none. A
    stall of the whole demo that shows up here was the host's, not ours.
    """
    try:
        with open('/proc/stat') as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf('SC_CLK_TCK')
    except (OSError, IndexError, ValueError):
        return None


def summarize(args, source, segment, collector, wall: float, completed: bool,
              cpu_s: float = float('nan'), stolen_s: float | None = None) -> list:
    stats = segment.stats
    arrivals = sorted(collector.arrivals.items())
    latency = [(received - stamp) / 1e6 for stamp, (received, _) in arrivals]
    out = len(arrivals)
    span = (arrivals[-1][1][0] - arrivals[0][1][0]) / 1e9 if out > 1 else 0.0
    fps = (out - 1) / span if span > 0 else float('nan')
    p50, p95, p99 = percentiles(latency)
    segments = np.mean([n for _, (_, n) in arrivals]) if arrivals else 0.0
    segmenter_ms = percentiles(list(stats.inference_ms), (50,))[0]  # the worker is idle now
    rows = [
        ('camera', f'{source.source.description} at {args.rate:g} Hz'),
        ('frames published (in)', source.published),
        ('frames received by segment_node', stats.received),
        ('frames segmented (out)', out),
        ('frames dropped (newest frame wins)', stats.dropped),
        ('frames lost in transport', source.published - stats.received),
        ('bad frames', stats.errors),
        ('output FPS', f'{fps:.2f}'),
        ('end-to-end latency p50 / p95 / p99 (ms)', f'{p50:.0f} / {p95:.0f} / {p99:.0f}'),
        ('segmenter time p50 (ms)', f'{segmenter_ms:.0f}'),
        ('segments per frame (mean)', f'{segments:.1f}'),
        *tracking_rows(segment, collector),
        ('backend', segment.segmenter.backend.describe()),
        ('model', segment.model_path.name),
        ('score threshold', segment.params['score_threshold']),
        ('streaming time (s)', f'{wall:.1f}' + ('' if completed else ' (timed out)')),
        ('demo process CPU time (s)', f'{cpu_s:.1f} ({args.executor}-threaded executor)'),
        ('longest gap between camera frames (ms)',
         f'{1e3 * source.longest_gap_s:.0f} (period {1e3 / args.rate:.0f})'),
        ('CPU time stolen by the hypervisor (s)',
         'n/a' if stolen_s is None else f'{stolen_s:.2f}'),
    ]
    return rows


def tracking_rows(segment, collector) -> list[tuple[str, str]]:
    """Tracks seen and the 3D outputs per frame ("n/a" where no depth came)."""
    divisor = int(segment.params['label_divisor'])
    things = {i for ids in collector.ids.values() for i in ids if i >= 0 and i % divisor}
    tracking = 'on' if segment.params.get('tracking') else 'off (ids per frame)'
    frames_3d = len(collector.boxes)
    if frames_3d:
        per_frame = np.mean([len(boxes) for boxes in collector.boxes.values()])
        things_3d = np.mean([sum(1 for i in boxes if i % divisor)
                             for boxes in collector.boxes.values()])
        segments_3d = f'{per_frame:.1f} ({things_3d:.1f} things) over {frames_3d} frames'
    else:
        segments_3d = f'n/a (no depth: {collector.depth_frames} depth frames received)'
    rows = [('tracking', tracking),
            ('tracks seen (distinct thing ids)', str(len(things))),
            ('3D segments per frame (mean)', segments_3d),
            ('labelled clouds / marker arrays received',
             f'{collector.clouds_received} / {collector.markers}')]
    if collector.bad_3d:
        rows.append(('bad 3D messages', f'{len(collector.bad_3d)}: {collector.bad_3d[0]}'))
    return rows


def format_table(rows) -> str:
    width = max(len(str(name)) for name, _ in rows)
    lines = [f'| {"":{width}} | value |', f'|{"-" * (width + 2)}|-------|']
    lines += [f'| {name:{width}} | {value} |' for name, value in rows]
    return '\n'.join(lines)


def write_outputs(out: Path, collector: Collector, rate: float) -> list[str]:
    """Overlay PNGs, a video and a contact sheet; returns the written names."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob('overlay_*.png'):
        old.unlink()
    stamps = sorted(collector.overlays)
    frames = [collector.overlays[stamp] for stamp in stamps]
    if not frames:
        return []
    bgr = [cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) for frame in frames]
    for index, image in enumerate(bgr):
        write_bgr(out / f'overlay_{index:04d}.png', image)
    video = write_video(out, bgr, rate)
    inputs = [collector.inputs.get(stamp) for stamp in stamps]
    write_rgb(out / 'contact_sheet.png', contact_sheet(inputs, frames))
    return [f'{len(frames)} x overlay_NNNN.png', video.name, 'contact_sheet.png', 'summary.md']


def write_snapshot_3d(path: Path, collector: Collector, segment) -> bool:
    """``snapshot_3d.png``: the newest frame that has both a labelled cloud and 3D boxes,
    seen from above (``viz.draw_top_view``); False (and an old snapshot removed) when no
    frame had depth."""
    stamps = sorted(set(collector.clouds) & set(collector.boxes))
    if not stamps:
        path.unlink(missing_ok=True)
        return False
    stamp = stamps[-1]
    image = viz.draw_top_view(collector.clouds[stamp], collector.boxes[stamp],
                              segment.class_names, segment.class_colors,
                              label_divisor=int(segment.params['label_divisor']))
    write_rgb(path, image)
    return True


def write_video(out: Path, frames: list[np.ndarray], fps: float) -> Path:
    """MP4 (mp4v) when this OpenCV build can write and read it back, else MJPG AVI.

    Frames of other sizes than the first (an image folder) are letterboxed to its size:
    a video writer silently drops frames of the wrong size.
    """
    height, width = frames[0].shape[:2]
    frames = [letterbox(frame, width, height) for frame in frames]
    for fourcc, name in (('mp4v', 'overlay.mp4'), ('MJPG', 'overlay.avi')):
        path = out / name
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps,
                                 (width, height))
        if not writer.isOpened():
            continue
        for frame in frames:
            writer.write(frame)
        writer.release()
        capture = cv2.VideoCapture(str(path))
        readable = capture.read()[0]
        capture.release()
        if readable:
            return path
        path.unlink(missing_ok=True)
    raise OSError('OpenCV can write neither mp4v nor MJPG video here')


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to fit ``width`` x ``height`` keeping its aspect, centred on black."""
    if image.shape[:2] == (height, width):
        return image
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    canvas = np.zeros((height, width, *image.shape[2:]), image.dtype)
    x, y = (width - size[0]) // 2, (height - size[1]) // 2
    canvas[y:y + size[1], x:x + size[0]] = cv2.resize(image, size,
                                                      interpolation=cv2.INTER_AREA)
    return canvas


def fit(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` shrunk to at most ``width`` pixels across (never enlarged)."""
    if image.shape[1] <= width:
        return image.copy()
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def contact_sheet(inputs: list[np.ndarray | None], overlays: list[np.ndarray],
                  count: int = 12, columns: int = 2, tile_width: int = TILE_WIDTH) -> np.ndarray:
    """Up to ``count`` frames, evenly spaced over the run: input beside overlay, numbered.

    ``columns`` input/overlay pairs per row; tiles are ``tile_width`` wide with the first
    overlay's aspect (other sizes letterboxed). A missing input is left black.
    """
    picks = np.unique(np.linspace(0, len(overlays) - 1, min(count, len(overlays))).round()
                      ).astype(int)
    first = overlays[0].shape
    width = min(tile_width, first[1])
    height = max(1, round(first[0] * width / first[1]))
    rows, columns = math.ceil(len(picks) / columns), min(columns, len(picks))
    sheet = np.zeros((rows * height, columns * 2 * width, 3), np.uint8)
    for cell, index in enumerate(picks):
        source = inputs[index] if inputs[index] is not None else np.zeros_like(overlays[index])
        tile = letterbox(source, width, height).copy()  # the number goes on the input
        cv2.putText(tile, f'#{index}', (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255),
                    2, cv2.LINE_AA)
        pair = np.hstack([tile, letterbox(overlays[index], width, height)])
        row, column = divmod(cell, columns)
        sheet[row * height:(row + 1) * height, column * 2 * width:(column + 1) * 2 * width] = pair
    return sheet


if __name__ == '__main__':
    sys.exit(main())
