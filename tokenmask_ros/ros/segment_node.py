"""``segment_node``: panoptic segmentation of a camera topic with a TokenMask model.

Subscribes ``image`` (sensor_msgs/Image) or ``image/compressed`` (CompressedImage) and
publishes, for every frame it segments, with the input's header and size:

- ``~/panoptic`` (``32SC1``: ``class * label_divisor + instance``, void -1),
- ``~/semantic`` (``mono8`` class ids, 255 void; ``mono16`` / 65535 beyond 255 classes),
- ``~/overlay`` (``rgb8`` colour overlay, computed only while someone subscribes),
- ``~/detections`` (vision_msgs/Detection2DArray, one Detection2D per segment),

plus ``~/label_info`` (vision_msgs/LabelInfo, latched) and ``/diagnostics``. With
``tracking`` on (the default) a :class:`~tokenmask_ros.tracking.PanopticTracker` renumbers
every prediction first, so thing ids (panoptic, detections, overlay labels) are track
numbers that persist across frames.

Optional inputs ``depth`` (registered to the colour image) and ``camera_info`` are paired
with each frame by stamp (:mod:`tokenmask_ros.ros.depth_pairing`) and give, only while
someone subscribes, ``~/detections_3d`` (vision_msgs/Detection3DArray), ``~/points``
(labelled sensor_msgs/PointCloud2) and ``~/markers`` (visualization_msgs/MarkerArray).
Missing, late or bad depth never holds back the 2D outputs.

Newest frame wins: the subscription callback only puts the message into a one-frame slot
(a frame still waiting there is dropped and counted); one worker thread converts,
segments and publishes. A slow model therefore drops stale frames instead of building a
backlog, and the executor stays free for parameters and diagnostics.

Hostile input is refused cheaply: a compressed frame's declared size is checked before it
is decoded, bad frames are logged at most once per kind of fault per period (the kinds are
a fixed set, never sender text), and SIGINT, SIGTERM and SIGHUP all shut down cleanly.

Several cameras, one model: with ``images`` (a list of image topics) the node subscribes
every camera, batches the newest waiting frame of each camera that has one into one backend
call (:meth:`~tokenmask_ros.runtime.Segmenter.segment_batch`, an export of batch = number of
cameras) and answers each camera on its own outputs ``~/<camera>/panoptic``, ...,
each with that camera's header. The worker never waits for a camera: it takes what is
there, so a camera that stops only leaves its slot empty. Each camera has its own tracker;
frames of any size are letterboxed into their own slot (``docs/node.md``); 3D from depth
stays single-camera.

With the parameter ``lifecycle`` true the node is a managed (lifecycle) node: it starts
unconfigured, and the standard ``~/change_state`` service drives it: configure loads the
model and starts the worker, activate subscribes and lets outputs out, deactivate
unsubscribes (an idle node runs no inference), cleanup frees the model. A plain start runs
the same configure and activate steps at once.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn as Transition
from rclpy.node import Node
from rclpy.parameter import Parameter as RclpyParameter
from rclpy.qos import QoSPolicyKind, qos_policy_name_from_kind, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from vision_msgs.msg import (
    Detection2D,
    Detection2DArray,
    Detection3DArray,
    LabelInfo,
    ObjectHypothesisWithPose,
    VisionClass,
)
from visualization_msgs.msg import MarkerArray

from tokenmask_ros import viz
from tokenmask_ros.defaults import (
    BACKENDS,
    DEPTH_MAX,
    DEPTH_MAX_DELAY,
    DEPTH_MIN,
    LABEL_DIVISOR,
    MASK_THRESHOLD,
    MAX_IMAGE_PIXELS,
    OVERLAP_THRESHOLD,
    OVERLAY_ALPHA,
    POINTS_STRIDE,
    PRECISIONS,
    SCORE_THRESHOLD,
    TRACK_MAX_AGE,
    TRACK_MIN_IOU,
)
from tokenmask_ros.depth3d import box_stride, labelled_points, segment_boxes_3d
from tokenmask_ros.ros.conversions import (
    ImageConversionError,
    compressed_to_rgb8,
    image_to_rgb8,
    numpy_to_image,
)
from tokenmask_ros.ros.depth_pairing import DepthPairing, depth_frame
from tokenmask_ros.ros.outputs3d import detections_3d_message, markers_message
from tokenmask_ros.ros.pointcloud import points_to_cloud
from tokenmask_ros.ros.qos import RELIABILITY, make_qos
from tokenmask_ros.tracking import PanopticTracker

TRANSPORTS = ('raw', 'compressed')
OUTPUT_DEPTH = 5           # reliable outputs: a few frames of headroom for slow readers
BATCH_MAX_DELAY = 0.01    # s: cameras triggered together share a batch; DDS jitter is ~1 ms
ERROR_LOG_PERIOD_S = 10.0  # one log line per kind of fault in this period
ERROR_LOG_KINDS = 64       # rate-limiter table bound (the kinds are a fixed set; a backstop)
LOG_TEXT_LIMIT = 1000      # characters of one error log line
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LATENCY_WINDOW = 200       # frames behind the latency percentiles in /diagnostics
DIAGNOSTICS_PERIOD_S = 1.0


def _unit_range() -> dict:
    return {'floating_point_range': [FloatingPointRange(from_value=0.0, to_value=1.0)]}


def _float_range(low: float, high: float) -> dict:
    return {'floating_point_range': [FloatingPointRange(from_value=low, to_value=high)]}


def _int_range(low: int, high: int) -> dict:
    return {'integer_range': [IntegerRange(from_value=low, to_value=high)]}


class Param(NamedTuple):
    default: Any
    description: str
    dynamic: bool = False  # may change while the node runs
    extra: dict = {}  # noqa: RUF012 (never mutated: descriptor keyword arguments)
    read_only: bool = False


# config/segment.yaml repeats these defaults; a test keeps the two in step.
PARAMETERS: dict[str, Param] = {
    'model': Param('', 'TokenMask checkpoint (.safetensors) or exported .onnx file; "" = the '
                   'bundled model (restart the node to change)'),
    'backend': Param('auto', 'auto, tensorrt, openvino, onnxruntime or torch; auto = the '
                     'first of those that runs here, openvino only for int8 on x86-64 CPUs '
                     'and on Intel GPU / NPU (restart the node to change)'),
    'device': Param('auto', 'auto, cpu, cuda, cuda:N, or GPU / NPU for backend openvino '
                    '(restart the node to change)'),
    'precision': Param('auto', 'auto, fp32, fp16 or int8 (calibrated, onnxruntime / '
                       'openvino); auto = fp16 on a GPU, fp32 on the CPU (restart the node to '
                       'change)'),
    'engine_cache_dir': Param('', 'folder for ONNX exports and TensorRT engines; "" = '
                              '$TOKENMASK_CACHE_DIR or ~/.cache/tokenmask_ros'),
    'force_engine_update': Param(False, 'rebuild the TensorRT engine even when a matching '
                                 'one is cached'),
    'threads': Param(0, 'CPU threads per inference (onnxruntime, openvino, torch); 0 = each '
                     "runtime's default (restart the node to change)",
                     extra=_int_range(0, 1024)),
    'input_transport': Param('raw', 'raw: sensor_msgs/Image on "image"; compressed: '
                             'sensor_msgs/CompressedImage on "image/compressed"'),
    'image_reliability': Param('best_effort', 'reliability of the image subscription: '
                               'best_effort (sensor data, reaches every camera) or reliable'),
    'score_threshold': Param(SCORE_THRESHOLD, 'minimum class score of a segment (query)',
                             True, _unit_range()),
    'overlap_threshold': Param(OVERLAP_THRESHOLD, 'minimum fraction of its mask a segment must '
                               'keep after overlaps are resolved', True, _unit_range()),
    'mask_threshold': Param(MASK_THRESHOLD, 'mask probability threshold; fixed at 0.5 by the '
                            'exported graph (sigmoid >= 0.5), declared for visibility only',
                            extra={'floating_point_range': [FloatingPointRange(
                                from_value=MASK_THRESHOLD, to_value=MASK_THRESHOLD)]},
                            read_only=True),
    'label_divisor': Param(LABEL_DIVISOR, 'panoptic id = class * label_divisor + instance; must '
                           'exceed the number of queries', extra={'integer_range': [
                               IntegerRange(from_value=1, to_value=2**31 - 1)]}),
    'publish_overlay': Param(True, 'publish ~/overlay (computed only while subscribed)', True),
    'overlay_alpha': Param(OVERLAY_ALPHA, 'opacity of the class colours in ~/overlay', True,
                           _unit_range()),
    'max_image_pixels': Param(MAX_IMAGE_PIXELS, 'larger input images are rejected (width * '
                              'height)', True, {'integer_range': [
                                  IntegerRange(from_value=4, to_value=2**30)]}),
    'tracking': Param(True, 'number things by track (ids persist across frames); false = '
                      'per-frame numbering', True),
    'track_max_age': Param(TRACK_MAX_AGE, 'frames a track survives unseen before its number '
                           'may be reused', True, _int_range(0, 10000)),
    'track_min_iou': Param(TRACK_MIN_IOU, 'least mask IoU of a frame-to-frame track match',
                           True, _unit_range()),
    'depth_max_delay': Param(DEPTH_MAX_DELAY, 'seconds a depth image / camera_info stamp may '
                             'differ from the colour frame\'s to pair with it', True,
                             _float_range(0.0, 10.0)),
    'points_stride': Param(POINTS_STRIDE, '~/points keeps every N-th pixel in each direction',
                           True, _int_range(1, 64)),
    'depth_min': Param(DEPTH_MIN, 'nearer depths (m) are ignored; below depth_max', True,
                       _float_range(0.0, 1000.0)),
    'depth_max': Param(DEPTH_MAX, 'farther depths (m) are ignored; above depth_min', True,
                       _float_range(0.0, 1000.0)),
    'batch_max_delay': Param(BATCH_MAX_DELAY, 'with images: seconds the worker waits, once a '
                             'frame is in, for the other live cameras (a frame within the '
                             'last second or two of their frame intervals) before it segments '
                             'without them', True,
                             _float_range(0.0, 1.0)),
    'images': Param([], 'image topics of several cameras segmented by one model in batches '
                    '(outputs under ~/<camera>/, camera = the topic without its image_raw-like '
                    'ending); [] = the one topic "image" (restart the node to change)'),
    'lifecycle': Param(False, 'true = a managed (lifecycle) node that starts unconfigured and '
                       'waits for ~/change_state; false = configure and activate at start '
                       '(restart the node to change)'),
}
RESTART_ONLY = frozenset(name for name, p in PARAMETERS.items()
                         if not p.dynamic and not p.read_only)


# --- plain helpers (no ROS) ----------------------------------------------------------

LIVE_CAMERA_S = 1.0  # a camera is waited for (batch_max_delay) this long after its last
LIVE_PERIODS = 2.0   # frame, or this many of its frame intervals when those are longer


class LatestFrames:
    """Newest-frame-wins mailboxes, one per camera, and one worker that takes them together.

    ``put`` replaces a camera's waiting frame (a drop); ``take_all`` waits until any camera
    has a frame and then takes every waiting one at once, so the worker batches the cameras
    that have something new and never waits for one that stopped.
    """

    def __init__(self, count: int = 1, clock=time.monotonic):
        self._condition = threading.Condition()
        self._items: list = [None] * count
        self._last_put = [-float('inf')] * count
        self._live_s = [LIVE_CAMERA_S] * count  # how long after its last frame it is live
        self._clock = clock
        self._closed = False

    def put(self, index: int, item) -> bool:
        """Store ``item`` for camera ``index``; True when it replaced a frame never taken."""
        with self._condition:
            replaced = self._items[index] is not None
            self._items[index] = item
            now = self._clock()
            interval = now - self._last_put[index]  # inf for its first frame
            if interval != float('inf'):
                self._live_s[index] = max(LIVE_CAMERA_S, LIVE_PERIODS * interval)
            self._last_put[index] = now
            self._condition.notify()
            return replaced

    def take_all(self, timeout: float | None = None,
                 gather_s: float = 0.0) -> list[tuple[int, Any]] | None:
        """``[(camera index, item), ...]`` of every waiting frame, removing them; ``[]``
        after ``timeout`` with nothing waiting; None once closed.

        ``gather_s``: once a frame is in, wait up to this long for the other *live* cameras
        (a frame within the last :data:`LIVE_CAMERA_S`, or :data:`LIVE_PERIODS` of its own
        frame interval for a slower camera), so frames of cameras triggered together share a
        batch instead of the first one running alone; a camera that stopped is soon not live
        and then never waited for.
        """
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or any(i is not None for i in self._items), timeout)
            if gather_s > 0 and not self._closed:
                now = self._clock()
                live = [i for i, (last, window) in enumerate(zip(
                    self._last_put, self._live_s, strict=True)) if now - last < window]
                self._condition.wait_for(lambda: self._closed or all(
                    self._items[i] is not None for i in live), gather_s)
            if self._closed:
                return None
            taken = [(index, item) for index, item in enumerate(self._items)
                     if item is not None]
            self._items = [None] * len(self._items)
            return taken

    @property
    def empty(self) -> bool:
        with self._condition:
            return all(item is None for item in self._items)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class LatestFrameSlot:
    """A one-frame mailbox: :class:`LatestFrames` of a single camera."""

    def __init__(self):
        self._frames = LatestFrames(1)

    def put(self, item) -> bool:
        """Store ``item``; True when it replaced a frame that was never taken (a drop)."""
        return self._frames.put(0, item)

    def take(self, timeout: float | None = None):
        """The newest item (removing it); None once closed or after ``timeout``."""
        taken = self._frames.take_all(timeout)
        return taken[0][1] if taken else None

    @property
    def empty(self) -> bool:
        return self._frames.empty

    def close(self) -> None:
        self._frames.close()


# Last topic levels that say "an image" rather than which camera (dropped from camera names).
GENERIC_IMAGE_LEVELS = frozenset({
    'image', 'image_raw', 'image_rect', 'image_rect_raw', 'image_color', 'image_rect_color',
    'image_mono', 'image_rect_mono', 'compressed', 'color', 'rgb'})
MAX_CAMERAS = 16
NAME_TOKEN = re.compile(r'[A-Za-z][A-Za-z0-9_]*')


def camera_name(topic: str) -> str:
    """The name of the camera publishing ``topic``: its levels without the trailing generic
    ones (``image_raw``, ``color``, ...), joined by ``_``; ``/front/color/image_raw`` ->
    ``front``, ``/robot/left/image`` -> ``robot_left``, ``/image`` -> ``image``. Always a valid
    ROS name token (``camera_`` goes in front of one that starts with a digit)."""
    levels = [level for level in topic.strip('/').split('/') if level and level != '~']
    while len(levels) > 1 and levels[-1] in GENERIC_IMAGE_LEVELS:
        levels.pop()
    name = '_'.join(levels)
    if name[:1].isdigit():
        name = f'camera_{name}'
    if not NAME_TOKEN.fullmatch(name):
        raise ValueError(f'images: cannot name a camera after topic {clip(topic, 200)!r} '
                         '(use letters, digits and _ in topic names)')
    return name


def camera_names(topics) -> list[str]:
    """:func:`camera_name` of every topic of the ``images`` parameter, or ValueError naming
    the first problem: not a list of strings, too many, a topic twice, two topics whose
    camera names collide."""
    if not isinstance(topics, list | tuple) or not all(isinstance(t, str) for t in topics):
        raise ValueError(f'images must be a list of image topics, got {topics!r}')
    if len(topics) > MAX_CAMERAS:
        raise ValueError(f'images lists {len(topics)} topics; at most {MAX_CAMERAS} cameras '
                         'share one node (run more nodes)')
    names: dict[str, str] = {}
    for topic in topics:
        name = camera_name(topic)
        if name in names:
            same = names[name].strip('/') == topic.strip('/')
            raise ValueError(f'images lists {topic!r} twice' if same else
                             f'images {names[name]!r} and {topic!r} both give camera name '
                             f'{name!r}: outputs would collide (rename a topic or remap it)')
        names[name] = topic
    return list(names)


class RateLimiter:
    """Allows one event per key every ``period_s``; counts what it held back meanwhile.

    At most ``max_keys`` keys are tracked: when the table is full, keys idle for a period
    are forgotten, and a key that still finds no room shares one overflow key.
    """

    OVERFLOW = '(other)'

    def __init__(self, period_s: float, clock=time.monotonic, max_keys: int = ERROR_LOG_KINDS):
        self.period_s = period_s
        self.max_keys = max_keys
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._last)

    def allow(self, key: str) -> tuple[bool, int]:
        """``(allowed, events held back since the last allowed one)``."""
        now = self._clock()
        if key not in self._last and len(self._last) >= self.max_keys:
            self._forget_idle(now)
            if len(self._last) >= self.max_keys:
                key = self.OVERFLOW
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, last in self._last.items()
                    if now - last >= self.period_s and k != self.OVERFLOW]:
            del self._last[key]
            self._held.pop(key, None)


def fault_kind(stage: str, error: Exception) -> str:
    """The rate-limiting key of an error: where it happened and what kind of fault it is.

    Built from code-chosen names only (the stage, :attr:`ImageConversionError.kind`, the
    exception class), never from message text a sender could vary to flood the log.
    """
    kind = error.kind if isinstance(error, ImageConversionError) else type(error).__name__
    return f'{stage}: {kind}'


def clip(text: str, limit: int = LOG_TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, marked when cut (a backstop for log lines)."""
    return text if len(text) <= limit else f'{text[:limit]}... ({len(text)} chars)'


@dataclass
class Stats:
    """Counters and recent timings shared by the callback, the worker and diagnostics."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    errors: int = 0
    batches: int = 0  # backend calls (several cameras: fewer than frames processed)
    without_depth: int = 0  # frames whose 3D outputs were wanted but no depth paired
    last_error: str = ''
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    inference_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


@dataclass
class Camera:
    """One input of the node: its topic, its outputs, its tracker and its own counts.

    ``name`` is '' for the single ``image`` topic (outputs ``~/panoptic``, ...) and the
    camera's name with ``images`` (outputs ``~/<name>/panoptic``, ...).
    """

    name: str
    topic: str  # as configured; ``subscription.topic_name`` once subscribed
    tracker: PanopticTracker
    publishers: dict = field(default_factory=dict)  # panoptic, semantic, overlay, detections
    subscription: Any = None
    reset_tracker: bool = False
    received: int = 0
    processed: int = 0
    dropped: int = 0

    @property
    def prefix(self) -> str:
        return f'~/{self.name}/' if self.name else '~/'

    @property
    def label(self) -> str:
        """How logs and diagnostics name it: the resolved topic once subscribed."""
        return self.subscription.topic_name if self.subscription is not None else self.topic


def percentiles(values, qs=(50, 95, 99)) -> list[float]:
    if not values:
        return [float('nan')] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, np.float64), qs)]


def detections_message(prediction, header) -> Detection2DArray:
    """One Detection2D per segment; bbox centre and size in pixels, pixel i spans [i, i+1)."""
    out = Detection2DArray(header=header)
    for segment in prediction.segments:
        x, y, w, h = segment.bbox
        detection = Detection2D(header=header, id=str(segment.id))
        detection.bbox.center.position.x = x + w / 2.0
        detection.bbox.center.position.y = y + h / 2.0
        detection.bbox.size_x, detection.bbox.size_y = float(w), float(h)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(segment.class_id)
        hypothesis.hypothesis.score = float(segment.score)
        detection.results.append(hypothesis)
        out.detections.append(detection)
    return out


# --- the node ------------------------------------------------------------------------

class SegmentNode(LifecycleNode):
    """Camera frames in, panoptic segmentation out; see the module docstring.

    One class for both modes: the lifecycle state machine always exists, but its services
    are created only with ``lifecycle`` true, so a plain node looks exactly as before.
    """

    def __init__(self, node_name: str = 'segment_node', **kwargs):
        # Node first: the parameter ``lifecycle`` decides whether the lifecycle services exist.
        Node.__init__(self, node_name, **kwargs)
        self.stats = Stats()
        self._lock = threading.Lock()
        self._busy = False
        self._active = False
        self._closing = False
        self._error_log = RateLimiter(ERROR_LOG_PERIOD_S)
        self.segmenter = self._slot = self._worker = None
        self._output_pubs: list = []
        self._input_subs: list = []
        self.cameras: list[Camera] = []
        self.multi_camera = False
        self.managed = False
        try:
            self._declare()
            if self.managed:
                self.get_logger().info('lifecycle node: unconfigured, waiting for configure '
                                       f'on {self.resolve_service_name("~/change_state")}')
                return
            self._configure()
            self._activate()
        except BaseException:
            self.destroy_node()  # frees a loaded model before the error propagates
            raise

    def _declare(self) -> None:
        """Parameters, the lifecycle interface (only when ``lifecycle``), diagnostics."""
        for name, param in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=param.description,
                                             read_only=param.read_only, **param.extra)
            if name == 'images':
                # rclpy types an empty list as a byte array, and an empty override leaves a
                # typed parameter unset: declare the type, then set [] when nothing came.
                self.declare_parameter(name, RclpyParameter.Type.STRING_ARRAY, descriptor)
                try:
                    self.get_parameter(name)
                except ParameterUninitializedException:
                    self.set_parameters([RclpyParameter(
                        name, RclpyParameter.Type.STRING_ARRAY, [])])
                continue
            self.declare_parameter(name, param.default, descriptor)
        self.params = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.managed = bool(self.params['lifecycle'])
        LifecycleNodeMixin.__init__(self, enable_communication_interface=self.managed)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # In every state: the timer also wakes the executor, so a signal is handled promptly
        # (Python runs signal handlers only between bytecodes, not inside rcl_wait).
        self.diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
            callback_group=MutuallyExclusiveCallbackGroup())

    # --- set-up and tear-down, shared by both modes --------------------------------------

    def _configure(self) -> None:
        """Load the model, create the output publishers and diagnostics, start the worker."""
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self._check(p)
        names = camera_names(list(p['images']))
        for topic in p['images']:
            self.resolve_topic_name(topic)  # a bad topic name fails here, in one line
        self.params = p
        # One camera per call unless several: their batch is the export's (graph.py).
        self.segmenter = self._load_segmenter(p, batch=max(1, len(names)))
        config = self.segmenter.config
        self.class_colors = viz.class_colors(config.classes, config.num_classes)
        self.class_names = (self.segmenter.class_names
                            or [f'class_{i}' for i in range(config.num_classes)])
        if config.num_classes * p['label_divisor'] >= 2**31:
            raise ValueError(f'label_divisor {p["label_divisor"]} x {config.num_classes} '
                             'classes overflows the int32 panoptic ids')

        compressed = p['input_transport'] == 'compressed'
        self.image_type = CompressedImage if compressed else Image
        suffix = '/compressed' if compressed else ''
        topics = list(zip(names, p['images'], strict=True)) or [('', 'image')]
        self.cameras = [Camera(name, topic + suffix, PanopticTracker(
            self.segmenter.is_thing, label_divisor=p['label_divisor'],
            max_age=p['track_max_age'], min_iou=p['track_min_iou'])) for name, topic in topics]
        self.multi_camera = bool(names)

        # Outputs: reliable (what rviz, ros2_benchmark and launch_testing subscribe with).
        out_qos = make_qos('reliable', OUTPUT_DEPTH)
        publish = self._create_output_publisher
        for camera in self.cameras:
            camera.publishers = {
                'panoptic': publish(Image, f'{camera.prefix}panoptic', out_qos),
                'semantic': publish(Image, f'{camera.prefix}semantic', out_qos),
                'overlay': publish(Image, f'{camera.prefix}overlay', out_qos),
                'detections': publish(Detection2DArray, f'{camera.prefix}detections', out_qos)}
        single = self.cameras[0]
        # The single camera's names, as before (demo, benchmarks and tests use them).
        self.panoptic_pub, self.semantic_pub, self.overlay_pub, self.detections_pub = (
            single.publishers[k] for k in ('panoptic', 'semantic', 'overlay', 'detections'))
        self.tracker = single.tracker
        if not self.multi_camera:  # 3D from depth: one camera only (docs/node.md)
            self.detections_3d_pub = publish(Detection3DArray, '~/detections_3d', out_qos)
            self.points_pub = publish(PointCloud2, '~/points', out_qos)
            self.markers_pub = publish(MarkerArray, '~/markers', out_qos)
        self.label_info_pub = publish(LabelInfo, '~/label_info',
                                      make_qos('reliable', 1, transient_local=True))
        self.input_topic = ', '.join(self.resolve_topic_name(c.topic) for c in self.cameras)
        self._warned_resize = False
        self.pairing = DepthPairing(p['depth_max_delay'])
        self._last_report = (time.monotonic(), self.stats.received, self.stats.processed,
                             self.stats.errors)
        self._closing = False
        self._slot = LatestFrames(len(self.cameras))
        self._worker = threading.Thread(target=self._work, name='segment_worker', daemon=True)
        self._worker.start()

    def _activate(self) -> None:
        """Subscribe to the image(s), depth and camera_info; outputs flow from now on."""
        p = self.params
        self._active = True
        for index, camera in enumerate(self.cameras):
            camera.subscription = self.create_subscription(
                self.image_type, camera.topic,
                lambda msg, index=index: self._on_image(msg, index),
                make_qos(p['image_reliability'], 1),
                callback_group=MutuallyExclusiveCallbackGroup(),
                event_callbacks=SubscriptionEventCallbacks(
                    incompatible_qos=lambda event, camera=camera:
                    self._on_incompatible_publisher(event, camera)))
            self._input_subs.append(camera.subscription)
        self.subscription = self.cameras[0].subscription
        self.input_topic = ', '.join(camera.label for camera in self.cameras)
        group = MutuallyExclusiveCallbackGroup()
        if self.multi_camera:
            # Depth is not paired with several cameras: say so when some arrives (raw: the
            # message is never deserialised).
            self.depth_subscription = self.create_subscription(
                Image, 'depth', self._on_depth_refused, qos_profile_sensor_data,
                callback_group=group, raw=True)
            self._input_subs.append(self.depth_subscription)
        else:
            # Depth and camera_info: a callback only stores the message; read only while a
            # 3D output has subscribers.
            self.depth_subscription = self.create_subscription(
                Image, 'depth', self.pairing.add_depth, qos_profile_sensor_data,
                callback_group=group)
            self.camera_info_subscription = self.create_subscription(
                CameraInfo, 'camera_info', self.pairing.add_camera_info,
                qos_profile_sensor_data, callback_group=group)
            self._input_subs += [self.depth_subscription, self.camera_info_subscription]
        self._publish_label_info()
        config = self.segmenter.config
        cameras = (f'{len(self.cameras)} cameras in batches of '
                   f'{self.segmenter.backend.batch or "any size"} '
                   f'({", ".join(c.name for c in self.cameras)}): '
                   if self.multi_camera else '')
        self.get_logger().info(
            f'ready: {self.segmenter.backend.describe()}, model {self.model_path.name} '
            f'({config.num_classes} classes, input {self.segmenter.input_size[1]}x'
            f'{self.segmenter.input_size[0]}); segmenting {cameras}{self.input_topic} '
            f'({p["input_transport"]}, {p["image_reliability"]})')

    def _deactivate(self) -> None:
        """Unsubscribe, drop a waiting frame and wait for the frame in work: from the return
        on nothing is published and no inference runs."""
        self._active = False
        for subscription in self._input_subs:
            self.destroy_subscription(subscription)
        self._input_subs = []
        for camera in self.cameras:
            camera.subscription = None
        if self._slot is not None:
            self._slot.take_all(timeout=0.0)
        deadline = time.monotonic() + 60.0
        while not self.idle and time.monotonic() < deadline:
            time.sleep(0.01)

    def _cleanup(self) -> None:
        """Join the worker, free the model and remove what configure created (any part)."""
        self.stop_worker()
        self._slot = self._worker = None
        for publisher in self._output_pubs:
            self.destroy_publisher(publisher)
        self._output_pubs = []
        segmenter, self.segmenter = self.segmenter, None
        if segmenter is not None:
            segmenter.close()

    # --- lifecycle transitions (``lifecycle`` true) --------------------------------------

    def _transition(self, name: str, step, undo=None) -> Transition:
        """Run one transition step; an error is logged in one line and returns FAILURE,
        after ``undo`` has removed whatever the step had made."""
        try:
            step()
        except Exception as error:
            self.get_logger().error(f'{name} failed: {one_line(error)}')
            if undo is not None:
                try:
                    undo()
                except Exception as undo_error:
                    self.get_logger().error(f'{name}: undo failed: {one_line(undo_error)}')
            return Transition.FAILURE
        self.get_logger().info(f'{name}: done')
        return Transition.SUCCESS

    def on_configure(self, state: LifecycleState) -> Transition:
        return self._transition('configure', self._configure, self._cleanup)

    def on_activate(self, state: LifecycleState) -> Transition:
        return self._transition('activate', self._activate, self._deactivate)

    def on_deactivate(self, state: LifecycleState) -> Transition:
        return self._transition('deactivate', self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> Transition:
        return self._transition('cleanup', self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> Transition:
        return self._transition('shutdown', self._shutdown)

    def on_error(self, state: LifecycleState) -> Transition:
        self._shutdown()  # back to unconfigured with nothing held
        return Transition.SUCCESS

    def _shutdown(self) -> None:
        if self._active:
            self._deactivate()
        self._cleanup()

    # --- set-up ------------------------------------------------------------------------

    @staticmethod
    def _check(p: dict) -> None:

        for name, allowed in (('backend', ('auto', *BACKENDS)), ('precision', PRECISIONS),
                              ('input_transport', TRANSPORTS),
                              ('image_reliability', tuple(RELIABILITY))):
            if p[name] not in allowed:
                raise ValueError(f'{name} must be one of {", ".join(allowed)}; '
                                 f'got {p[name]!r}')
        if not p['depth_min'] < p['depth_max']:
            raise ValueError(f'depth_min ({p["depth_min"]}) must be below depth_max '
                             f'({p["depth_max"]})')

    def _load_segmenter(self, p: dict, batch: int = 1):
        from tokenmask_ros.bundled import resolve_model_path
        from tokenmask_ros.runtime import Segmenter

        self.model_path = resolve_model_path(p['model'])
        self.get_logger().info(f'loading {self.model_path} (backend {p["backend"]}, device '
                               f'{p["device"]}, precision {p["precision"]})')
        return Segmenter(
            self.model_path, p['backend'], p['device'], p['precision'],
            score_threshold=p['score_threshold'], overlap_threshold=p['overlap_threshold'],
            label_divisor=p['label_divisor'], cache_dir=p['engine_cache_dir'] or None,
            force_engine_update=p['force_engine_update'], batch=batch,
            threads=p['threads'])

    def _create_output_publisher(self, msg_type, topic: str, qos):
        def warn(event, topic=topic):
            policy = qos_policy_name_from_kind(event.last_policy_kind)
            offered = ('reliable, transient local' if topic == '~/label_info'
                       else 'reliable, volatile')
            self.get_logger().warning(
                f'a subscriber of {self.resolve_topic_name(topic)} requests QoS this node '
                f'does not offer ({policy} policy); the topic is published {offered}: '
                'subscribe with a compatible profile or it receives nothing')

        publisher = self.create_publisher(msg_type, topic, qos, event_callbacks=(
            PublisherEventCallbacks(incompatible_qos=warn)))
        self._output_pubs.append(publisher)
        return publisher

    def _on_incompatible_publisher(self, event, camera: Camera) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        if event.last_policy_kind == QoSPolicyKind.RELIABILITY:
            fix = ('a best-effort camera cannot reach a reliable subscription: set '
                   'image_reliability:=best_effort (the default) or make the camera '
                   'publish reliable')
        else:
            fix = (f'make the camera\'s {policy} policy compatible with this subscription '
                   f'({self.params["image_reliability"]}, volatile, depth 1)')
        self.get_logger().warning(
            f'incompatible QoS: a publisher on {camera.label} cannot reach this node '
            f'({policy} policy, {event.total_count} incompatible so far); no images will '
            f'arrive from it. {fix}')

    # --- parameters --------------------------------------------------------------------

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Refuse restart-only changes while configured (an unconfigured lifecycle node takes
        them at its next configure); apply thresholds through the Segmenter, which checks
        them. Value ranges are enforced by rclpy from the declared descriptors."""
        values = {parameter.name: parameter.value for parameter in parameters}
        configured = self.segmenter is not None
        for name, value in values.items():
            if name in RESTART_ONLY and value != self.params[name] and (
                    configured or name == 'lifecycle'):
                how = ('clean up the node (lifecycle cleanup) or restart it'
                       if self.managed and name != 'lifecycle' else 'restart the node')
                return SetParametersResult(successful=False, reason=f'{how} to change {name}')
        depth_range = (values.get('depth_min', self.params['depth_min']),
                       values.get('depth_max', self.params['depth_max']))
        if not depth_range[0] < depth_range[1]:
            return SetParametersResult(successful=False, reason=(
                f'depth_min ({depth_range[0]}) must be below depth_max ({depth_range[1]})'))
        if not configured:  # configure reads every parameter afresh
            self.params.update(values)
            return SetParametersResult(successful=True)
        thresholds = {name: float(values[name]) for name in
                      ('score_threshold', 'overlap_threshold') if name in values}
        if thresholds:
            try:
                self.segmenter.set_thresholds(**thresholds)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        self.params.update(values)
        for camera in self.cameras:
            if 'track_max_age' in values:
                camera.tracker.max_age = int(values['track_max_age'])
            if 'track_min_iou' in values:
                camera.tracker.min_iou = float(values['track_min_iou'])
        if 'depth_max_delay' in values:
            self.pairing.max_delay = float(values['depth_max_delay'])
        if values.get('tracking') is False:
            for camera in self.cameras:  # tracks restart from 1 when tracking is back on
                camera.reset_tracker = True
        if 'score_threshold' in values and self._active:
            self._publish_label_info()
        return SetParametersResult(successful=True)

    def _publish_label_info(self) -> None:
        info = LabelInfo(threshold=float(self.params['score_threshold']), class_map=[
            VisionClass(class_id=i, class_name=name) for i, name in enumerate(self.class_names)])
        info.header.stamp = self.get_clock().now().to_msg()
        self.label_info_pub.publish(info)

    # --- frames --------------------------------------------------------------------------

    def _on_image(self, msg, index: int = 0) -> None:
        dropped = self._slot.put(index, (msg, time.monotonic()))
        with self._lock:
            camera = self.cameras[index]
            camera.received += 1
            camera.dropped += int(dropped)
            self.stats.received += 1
            self.stats.dropped += int(dropped)

    def _on_depth_refused(self, _serialized) -> None:
        """Depth with ``images`` set: not used; say why at most once per period."""
        allowed, held = self._error_log.allow('3d: several cameras')
        if allowed and not self._closing:
            more = f' ({held} more like it)' if held else ''
            self.get_logger().error(
                f'depth images on {self.depth_subscription.topic_name} are ignored: 3D outputs '
                'need a single camera, and images lists several; run one segment_node per '
                f'RGB-D camera for 3D{more}')

    def _work(self) -> None:
        while True:
            items = self._slot.take_all(
                gather_s=float(self.params['batch_max_delay']) if self.multi_camera else 0.0)
            if items is None:
                return
            with self._lock:
                self._busy = True
            try:
                self._process(items)
            finally:
                with self._lock:
                    self._busy = False

    def _process(self, items: list[tuple[int, tuple]]) -> None:
        """Segment the newest frame of every camera in ``items`` (``[(camera index, (msg,
        arrival)), ...]``) in one batch, then answer each camera with its own header. A bad
        frame is dropped alone; the others go on."""
        from tokenmask_ros.runtime.preprocess import check_image

        frames = []  # (camera, msg, arrival, rgb)
        for index, (msg, received) in items:
            camera = self.cameras[index]
            try:
                # Checked here, so one bad camera never fails the whole batch.
                rgb = check_image(self._to_rgb(msg))
            except ValueError as error:  # ImageConversionError, InputError: the sender's
                self._report_error(f'dropped a frame from {camera.label}: {error}', error,
                                   'input', warning=True)
                continue
            frames.append((camera, msg, received, rgb))
        if not frames:
            return
        try:
            predictions = self.segmenter.segment_batch([rgb for *_, rgb in frames])
        except Exception as error:  # a backend failure must not end the node
            self._report_error(f'segmentation failed: {error!r}', error, 'segmentation')
            return
        inference_ms = self.segmenter.last_timing.total
        tracking = bool(self.params['tracking'])
        for (camera, msg, received, rgb), prediction in zip(frames, predictions, strict=True):
            if self._answer(camera, msg.header, rgb, prediction, tracking):
                with self._lock:
                    camera.processed += 1
                    self.stats.processed += 1
                    self.stats.latency_ms.append(1e3 * (time.monotonic() - received))
        with self._lock:
            self.stats.batches += 1
            self.stats.inference_ms.append(inference_ms)

    def _answer(self, camera: Camera, header, rgb: np.ndarray, prediction,
                tracking: bool) -> bool:
        """Track, publish a camera's outputs (and 3D, single camera only); False when the
        frame got no outputs (an error, a deactivation meanwhile)."""
        if tracking:
            try:
                prediction = self._track(camera, prediction, rgb)
            except Exception as error:
                self._report_error(f'tracking failed: {error!r}', error, 'tracking')
                return False
        if not self._active:
            return False  # deactivated while this frame was segmented: nothing goes out
        try:
            self._publish(header, rgb, prediction, tracking, camera)
        except Exception as error:
            if not (self._closing or not self.context.ok()):  # else: publishers going away
                self._report_error(f'publishing failed: {error!r}', error, 'publishing')
            return False
        if self.multi_camera:
            return True
        try:  # after the 2D outputs: depth that came while segmenting is found too
            self._publish_3d(header, rgb, prediction)
        except Exception as error:
            if self._closing or not self.context.ok():
                return False
            self._report_error(f'3D outputs failed: {error!r}', error, '3d')
        return True

    def _to_rgb(self, msg) -> np.ndarray:
        """RGB pixels of a frame; frames over ``max_image_pixels`` are refused unread (a
        compressed frame on the size its header declares, before decoding)."""
        limit = self.params['max_image_pixels']
        if isinstance(msg, CompressedImage):
            return np.ascontiguousarray(compressed_to_rgb8(msg, limit))
        if msg.height * msg.width > limit:
            raise ImageConversionError(f'image of {msg.width}x{msg.height} pixels exceeds '
                                       f'max_image_pixels ({limit})', 'too large')
        return np.ascontiguousarray(image_to_rgb8(msg))

    def _track(self, camera: Camera, prediction, rgb: np.ndarray):
        """``prediction`` with thing ids renumbered by track (one tracker per camera: ids
        of two cameras are independent; worker thread)."""
        if camera.reset_tracker:
            camera.reset_tracker = False
            camera.tracker.reset()
        return camera.tracker.update(prediction, rgb)

    def _publish(self, header, rgb: np.ndarray, prediction, tracking: bool = False,
                 camera: Camera | None = None) -> None:
        """A camera's 2D outputs, each with its frame's header (``camera`` None: the
        first, the only one without ``images``)."""
        pubs = (camera or self.cameras[0]).publishers
        semantic_encoding = 'mono8' if prediction.semantic.dtype == np.uint8 else 'mono16'
        pubs['panoptic'].publish(numpy_to_image(prediction.panoptic, '32SC1', header))
        pubs['semantic'].publish(numpy_to_image(prediction.semantic, semantic_encoding, header))
        if self.params['publish_overlay'] and pubs['overlay'].get_subscription_count() > 0:
            label_text = (viz.track_label_text(self.params['label_divisor']) if tracking
                          else None)
            blended = viz.draw_overlay(rgb, prediction, self.class_names, self.class_colors,
                                       float(self.params['overlay_alpha']),
                                       label_text=label_text)
            pubs['overlay'].publish(numpy_to_image(blended, 'rgb8', header))
        pubs['detections'].publish(detections_message(prediction, header))

    def _publish_3d(self, header, rgb: np.ndarray, prediction) -> None:
        """``~/detections_3d``, ``~/markers`` and ``~/points`` of a frame, each only while
        subscribed, from the depth and camera_info paired with it (none: nothing sent)."""
        want_boxes = (self.detections_3d_pub.get_subscription_count() > 0,
                      self.markers_pub.get_subscription_count() > 0)
        want_points = self.points_pub.get_subscription_count() > 0
        if not (any(want_boxes) or want_points):
            return
        pair = self.pairing.match(header)
        if pair is None:
            self._note_without_depth(header)
            return
        p = self.params
        try:
            frame = depth_frame(*pair, rgb.shape[:2], p['max_image_pixels'])
        except ValueError as error:  # DepthFault and ImageConversionError: the sender's
            self._report_error(f'no 3D for a frame: {error}', error, '3d', warning=True)
            return
        if frame.resized and not self._warned_resize:
            self._warned_resize = True
            depth = pair[0]
            self.get_logger().warning(
                f'depth image {depth.width}x{depth.height} differs from the colour image '
                f'{rgb.shape[1]}x{rgb.shape[0]}: resized (nearest); register depth to the '
                'colour camera for exact 3D (logged once)')
        depth_range = {'min_depth': float(p['depth_min']), 'max_depth': float(p['depth_max'])}
        if any(want_boxes):
            boxes = segment_boxes_3d(prediction.panoptic, frame.depth_m, frame.camera,
                                     stride=box_stride(*rgb.shape[:2]), **depth_range)
            if want_boxes[0]:
                self.detections_3d_pub.publish(detections_3d_message(prediction, boxes, header))
            if want_boxes[1]:
                self.markers_pub.publish(markers_message(
                    prediction, boxes, header, self.class_names, self.class_colors,
                    int(p['label_divisor'])))
        if want_points:
            points = labelled_points(prediction.panoptic, rgb, frame.depth_m, frame.camera,
                                     stride=int(p['points_stride']),
                                     label_divisor=int(p['label_divisor']), **depth_range)
            self.points_pub.publish(points_to_cloud(points, header))

    def _note_without_depth(self, header) -> None:
        """Count a frame whose 3D outputs are wanted but has no depth/camera_info paired;
        say why at most once per period (not an error: depth is optional)."""
        with self._lock:
            self.stats.without_depth += 1
        allowed, held = self._error_log.allow('3d: no depth paired')
        if allowed and not self._closing:
            more = f' ({held} more like it)' if held else ''
            self.get_logger().warning(
                f'3D outputs have subscribers but no depth image and camera_info within '
                f'depth_max_delay ({self.params["depth_max_delay"]:g} s) of a frame: no 3D '
                f'for it ({len(self.pairing.depth)} depth, {len(self.pairing.camera_info)} '
                f'camera_info recent){more}')

    def _report_error(self, text: str, error: Exception, stage: str,
                      warning: bool = False) -> None:
        """Count a failed frame; log it unless its kind was logged within the period."""
        with self._lock:
            self.stats.errors += 1
            self.stats.last_error = clip(str(error))
        if self._closing:
            return
        allowed, held = self._error_log.allow(fault_kind(stage, error))
        if allowed:
            more = f' ({held} more like it in the last {ERROR_LOG_PERIOD_S:g} s)' if held else ''
            log = self.get_logger().warning if warning else self.get_logger().error
            log(clip(text) + more)

    @property
    def idle(self) -> bool:
        """No frame waiting and none being processed (demos and benchmarks wait for it)."""
        with self._lock:
            return not self._busy and self._slot.empty

    # --- diagnostics ---------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        if self.segmenter is None:  # an unconfigured (or finalized) lifecycle node
            label = self._state_machine.current_state[1]
            status = DiagnosticStatus(
                name=f'{self.get_fully_qualified_name()}: segmentation',
                level=DiagnosticStatus.OK, message=f'{label} (lifecycle): no model loaded')
            report = DiagnosticArray(status=[status])
            report.header.stamp = self.get_clock().now().to_msg()
            self.diagnostics_pub.publish(report)
            return
        now = time.monotonic()
        with self._lock:
            s = self.stats
            counts = (s.received, s.processed, s.errors)
            latency = percentiles(s.latency_ms)
            inference = percentiles(s.inference_ms, (50,))[0]
            values = {'frames received': s.received, 'frames processed': s.processed,
                      'frames dropped': s.dropped, 'errors': s.errors,
                      'frames without depth': s.without_depth,
                      'last error': s.last_error}
            if self.multi_camera:  # each camera's own counts: a stopped camera shows here
                values['batch'] = self.segmenter.backend.batch or 'any'
                values['batches'] = s.batches
                values.update((f'camera {c.name}', f'{c.label}: received {c.received}, '
                               f'processed {c.processed}, dropped {c.dropped}')
                              for c in self.cameras)
        then, *previous = self._last_report
        self._last_report = (now, *counts)
        elapsed = max(now - then, 1e-9)
        input_rate = (counts[0] - previous[0]) / elapsed
        output_rate = (counts[1] - previous[1]) / elapsed
        new_errors = counts[2] - previous[2]
        status = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: segmentation',
                                  hardware_id=self.segmenter.backend.describe())
        if not self._active:
            status.level = DiagnosticStatus.OK
            status.message = 'inactive (lifecycle): not subscribed, no inference'
        elif new_errors:
            status.level = DiagnosticStatus.WARN
            status.message = f'{new_errors} bad frame(s) in the last {elapsed:.1f} s'
        elif counts[0] == 0:
            status.level = DiagnosticStatus.OK
            status.message = f'waiting for images on {self.input_topic}'
        else:
            status.level = DiagnosticStatus.OK
            status.message = (f'{output_rate:.1f} Hz out, {input_rate:.1f} Hz in'
                              if counts[0] > previous[0] else
                              f'no new images on {self.input_topic} for {elapsed:.1f} s')
        values = {
            'backend': self.segmenter.backend.describe(),
            'model': self.model_path.name,
            'input topic': self.input_topic,
            'input rate (Hz)': f'{input_rate:.2f}',
            'output rate (Hz)': f'{output_rate:.2f}',
            'latency p50 (ms)': f'{latency[0]:.1f}',
            'latency p95 (ms)': f'{latency[1]:.1f}',
            'latency p99 (ms)': f'{latency[2]:.1f}',
            'segmenter p50 (ms)': f'{inference:.1f}',
            **values,
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        report = DiagnosticArray(status=[status])
        report.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(report)

    # --- shutdown ------------------------------------------------------------------------

    def stop_worker(self) -> None:
        """Close the frame slot and join the worker, so nothing publishes from now on."""
        self._closing = True
        slot, worker = getattr(self, '_slot', None), getattr(self, '_worker', None)
        if slot is not None:
            slot.close()
        if worker is not None and worker.is_alive():
            worker.join(timeout=60.0)

    def destroy_node(self):
        """Stop and join the worker, free the model (and its GPU memory), then the node."""
        self._cleanup()
        super().destroy_node()


class ShutdownRequested(BaseException):
    """Raised in the main thread by the first shutdown signal; carries the signal's name.

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way swallows it.
    """


class ShutdownSignals:
    """SIGINT, SIGTERM and SIGHUP all become one :class:`ShutdownRequested`; any signal after
    the first (or once shutdown has begun) is logged and ignored, so cleanup runs to the end.

    rclpy's own handler would shut the context down at once, under a worker that may be
    publishing (a crash in rmw); raising in the main thread instead lets ``main`` stop the
    worker first, then tear down executor, node and context in order.
    """

    def __init__(self, logger):
        self.logger = logger
        self.received: str | None = None

    def install(self) -> None:
        for signum in SHUTDOWN_SIGNALS:
            signal.signal(signum, self._handle)

    def begin_shutdown(self) -> None:
        """From now on every signal is ignored (the handlers stay: a late one cannot kill)."""
        if self.received is None:
            self.received = 'exit'

    def ignore_until_exit(self) -> None:
        """Once cleanup is done: ignore these signals for good. Python resets the signals it
        handles to their default action while the interpreter finalizes, so a late SIGINT
        would otherwise still kill the process (exit status -2) after a clean shutdown;
        ignored signals stay ignored."""
        for signum in SHUTDOWN_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            self.logger.warning(f'{name} while shutting down: ignored, finishing the shutdown')
            return
        self.received = name
        raise ShutdownRequested(name)


def one_line(error: BaseException) -> str:
    """An exception as one log line: its class when the text alone is unclear, no C paths."""
    text = re.sub(r',? at /\S+:\d+', '', ' '.join(str(error).split()))
    if isinstance(error, (ValueError, RuntimeError)) and type(error).__module__ == 'builtins':
        return text or type(error).__name__
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def main(args=None) -> int:
    logger = rclpy.logging.get_logger('segment_node')
    signals = ShutdownSignals(logger)
    signals.install()
    node = executor = None
    try:
        try:
            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
            executor = SingleThreadedExecutor()
            node = SegmentNode()
            executor.add_node(node)
        except Exception as error:
            # Bad arguments or parameters, a missing or broken model or cache, no usable
            # backend, whatever a backend library raises: one clear line, exit code 1.
            logger.fatal(f'cannot start: {one_line(error)}')
            return 1
        # Not executor.spin(): if a library swallowed the handler's exception (a signal that
        # arrived inside its code while the model loaded), the recorded signal still ends
        # the loop within 0.1 s.
        while signals.received is None:
            executor.spin_once(timeout_sec=0.1)
        raise ShutdownRequested(signals.received)
    except ShutdownRequested as request:
        (node.get_logger() if node is not None else logger).info(f'shutting down on {request}')
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        signals.begin_shutdown()
        if node is not None:
            node.stop_worker()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
            logger.info('stopped: worker joined, model closed')
        rclpy.try_shutdown()
        signals.ignore_until_exit()


if __name__ == '__main__':
    sys.exit(main())
