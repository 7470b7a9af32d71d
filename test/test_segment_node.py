"""``segment_node`` with the bundled model, over real DDS: outputs, inputs, errors, QoS, parameters.

Two nodes live in this process for the whole module (raw and compressed input, each in its
own namespace) and one runs as the installed console script in its own process. Frames are
published one at a time and each test waits for that frame's outputs, so nothing here
depends on how fast the (shared, busy) CPU is.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
from collections import defaultdict

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, installed_executable, spin_until

pytestmark = pytest.mark.dds

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vision_msgs.msg')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.event_handler import PublisherEventCallbacks  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from tokenmask_ros.bundled import default_model_path  # noqa: E402
from tokenmask_ros.ros.conversions import (  # noqa: E402
    compressed_to_rgb8,
    image_to_numpy,
    numpy_to_compressed,
    numpy_to_image,
)
from tokenmask_ros.ros.segment_node import (  # noqa: E402
    ERROR_LOG_PERIOD_S,
    PARAMETERS,
    LatestFrameSlot,
    RateLimiter,
    SegmentNode,
)
from tokenmask_ros.synthetic import SceneGenerator  # noqa: E402

RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
LOW_THRESHOLD = 0.3  # the bundled model's thing scores are often low; 0.3 finds more segments
SCENES = SceneGenerator(height=120, width=160, seed=3)
OUTPUTS = ('panoptic', 'semantic', 'overlay', 'detections')


class Graph:
    """One executor for the test's own node and the nodes under test, plus what it heard."""

    def __init__(self):
        self.node = rclpy.create_node('segment_node_tester')
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self.logs: list[Log] = []
        self.node.create_subscription(Log, '/rosout', self.logs.append,
                                      QoSProfile(depth=200, reliability=RELIABLE.reliability))
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      self.diagnostics.append, RELIABLE)
        self._stamp = 0

    def spin_until(self, done, timeout: float = 60.0) -> bool:
        return spin_until(self.executor, done, timeout)

    def next_stamp(self) -> int:
        self._stamp += 1
        return self._stamp

    def log_lines(self, text: str, level: int | None = None) -> list[str]:
        return [log.msg for log in self.logs
                if text in log.msg and (level is None or log.level == level)]


class NodeUnderTest:
    """A SegmentNode in ``namespace``, its input publisher and collectors of its outputs."""

    def __init__(self, graph: Graph, namespace: str, *params: Parameter):
        self.graph = graph
        self.segment = SegmentNode(namespace=namespace, parameter_overrides=list(params))
        graph.executor.add_node(self.segment)
        self.outputs: dict[str, dict[int, object]] = defaultdict(dict)
        for name in OUTPUTS:
            msg_type = Detection2DArray if name == 'detections' else Image
            graph.node.create_subscription(
                msg_type, f'{namespace}/segment_node/{name}',
                lambda msg, name=name: self.outputs[name].__setitem__(msg.header.stamp.sec, msg),
                RELIABLE)
        compressed = self.segment.params['input_transport'] == 'compressed'
        self.topic = f'{namespace}/image' + ('/compressed' if compressed else '')
        self.publisher = graph.node.create_publisher(
            CompressedImage if compressed else Image, self.topic, RELIABLE)
        assert graph.spin_until(lambda: self.publisher.get_subscription_count() > 0
                                and self.segment.overlay_pub.get_subscription_count() > 0)

    def send(self, msg, outputs=OUTPUTS, timeout: float = 60.0) -> dict[str, object]:
        """Publish one frame with a fresh stamp; wait for ``outputs`` of it; return them all."""
        stamp = self.graph.next_stamp()
        msg.header.stamp.sec, msg.header.frame_id = stamp, 'test_camera'
        self.publisher.publish(msg)
        assert self.graph.spin_until(
            lambda: all(stamp in self.outputs[n] for n in outputs), timeout), \
            f'no {outputs} for frame {stamp}'
        self.graph.spin_until(lambda: False, 0.2)  # let the other outputs of it arrive
        return {name: self.outputs[name].get(stamp) for name in OUTPUTS}

    def send_bad(self, msg, expected: str) -> None:
        """Publish a malformed frame and wait until the node has counted it."""
        errors = self.segment.stats.errors
        msg.header.stamp.sec = self.graph.next_stamp()
        self.publisher.publish(msg)
        assert self.graph.spin_until(lambda: self.segment.stats.errors > errors, 20), expected


@pytest.fixture(scope='module')
def graph(rclpy_context):
    graph = Graph()
    yield graph
    graph.executor.shutdown()
    graph.node.destroy_node()


@pytest.fixture(scope='module')
def raw(graph):
    # Per-frame numbering: each frame's ids are the Segmenter's (tracking has its own tests).
    node = NodeUnderTest(graph, '/t_raw', Parameter('score_threshold', value=LOW_THRESHOLD),
                         Parameter('tracking', value=False))
    yield node
    node.segment.destroy_node()


@pytest.fixture(scope='module')
def compressed(graph):
    # Reliable subscription: the QoS test below offers it a best-effort publisher.
    node = NodeUnderTest(graph, '/t_compressed',
                         Parameter('score_threshold', value=LOW_THRESHOLD),
                         Parameter('tracking', value=False),
                         Parameter('input_transport', value='compressed'),
                         Parameter('image_reliability', value='reliable'))
    yield node
    node.segment.destroy_node()


@pytest.fixture(scope='module')
def segmenter():
    """The Segmenter the node wraps, called directly: the reference for every comparison."""
    from tokenmask_ros.runtime import Segmenter

    with Segmenter(default_model_path(), score_threshold=LOW_THRESHOLD) as segmenter:
        yield segmenter


def detection_tuples(msg) -> list[tuple]:
    return [(d.id, d.results[0].hypothesis.class_id, round(d.results[0].hypothesis.score, 4),
             d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y)
            for d in msg.detections]


def expected_tuples(prediction) -> list[tuple]:
    return [(str(s.id), str(s.class_id), round(s.score, 4), s.bbox[0] + s.bbox[2] / 2,
             s.bbox[1] + s.bbox[3] / 2, float(s.bbox[2]), float(s.bbox[3]))
            for s in prediction.segments]


# --- outputs -------------------------------------------------------------------------

def test_every_output_has_the_input_header_size_and_the_segmenters_result(graph, raw,
                                                                          segmenter):
    rgb = SCENES.scene(0).image
    expected = segmenter(rgb)
    assert expected.segments, 'the bundled model finds nothing at the low threshold'
    for encoding, pixels in (('rgb8', rgb), ('bgr8', rgb[..., ::-1])):
        sent = numpy_to_image(pixels, encoding)
        out = raw.send(sent)
        for name in OUTPUTS:
            assert out[name].header == sent.header, name
        kinds = {name: (out[name].encoding, out[name].width, out[name].height)
                 for name in ('panoptic', 'semantic', 'overlay')}
        assert kinds == {'panoptic': ('32SC1', 160, 120), 'semantic': ('mono8', 160, 120),
                         'overlay': ('rgb8', 160, 120)}
        panoptic = image_to_numpy(out['panoptic'])
        np.testing.assert_array_equal(panoptic, expected.panoptic)
        np.testing.assert_array_equal(image_to_numpy(out['semantic']), expected.semantic)
        assert detection_tuples(out['detections']) == expected_tuples(expected)
        assert {int(d.id) for d in out['detections'].detections} == set(np.unique(panoptic)) - {-1}
        assert image_to_numpy(out['overlay']).shape == (120, 160, 3)


def test_label_info_reaches_a_late_subscriber_and_diagnostics_report(graph, raw):
    label_info = []
    graph.node.create_subscription(LabelInfo, '/t_raw/segment_node/label_info',
                                   label_info.append, LATCHED)
    assert graph.spin_until(lambda: label_info, 20)
    info = label_info[-1]
    assert [(c.class_id, c.class_name) for c in info.class_map] == list(
        enumerate(raw.segment.class_names))
    assert info.threshold == pytest.approx(LOW_THRESHOLD)

    def report():
        for array in reversed(graph.diagnostics):
            for status in array.status:
                if status.name == '/t_raw/segment_node: segmentation':
                    return {kv.key: kv.value for kv in status.values}
        return None

    assert graph.spin_until(lambda: report() and int(report()['frames processed']) > 0, 10)
    values = report()
    for key in ('input rate (Hz)', 'output rate (Hz)', 'latency p50 (ms)', 'latency p95 (ms)',
                'latency p99 (ms)', 'frames received', 'frames dropped', 'errors', 'backend'):
        assert key in values, key
    assert float(values['latency p50 (ms)']) > 0
    assert values['backend'] == raw.segment.segmenter.backend.describe()


# --- compressed input ----------------------------------------------------------------

def test_png_input_equals_raw_and_jpeg_is_close(graph, compressed, segmenter):
    rgb = SCENES.scene(1).image
    expected = segmenter(rgb)
    png = compressed.send(numpy_to_compressed(rgb, 'rgb8', 'png'))
    np.testing.assert_array_equal(image_to_numpy(png['panoptic']), expected.panoptic)
    assert detection_tuples(png['detections']) == expected_tuples(expected)

    jpeg_msg = numpy_to_compressed(rgb, 'rgb8', 'jpeg', quality=95)
    jpeg = compressed.send(jpeg_msg)
    # What the node saw is the decoded JPEG: its result is the Segmenter's on those pixels,
    # and within JPEG's tolerance of the raw frame's.
    np.testing.assert_array_equal(image_to_numpy(jpeg['panoptic']),
                                  segmenter(compressed_to_rgb8(jpeg_msg)).panoptic)
    agreement = np.mean(image_to_numpy(jpeg['semantic']) == expected.semantic)
    assert agreement > 0.9, agreement


def test_corrupt_compressed_frames_are_logged_and_the_next_good_frame_is_answered(
        graph, compressed):
    bad = {
        'could not be decoded': CompressedImage(format='jpeg', data=b'\xff\xd8\xff' + b'x' * 64),
        'has no data': CompressedImage(format='png', data=b''),
        'is a depth map': CompressedImage(format='16UC1; compressedDepth png',
                                          data=b'\0' * 12 + b'\x89PNG'),
    }
    for expected, msg in bad.items():  # three kinds of fault: each logged (a warning)
        compressed.send_bad(msg, expected)
        assert graph.spin_until(lambda e=expected: graph.log_lines(e, Log.WARN), 10), expected
    png = numpy_to_compressed(SCENES.scene(2).image, 'rgb8', 'png')
    assert compressed.send(png)['panoptic'] is not None


def test_best_effort_camera_and_reliable_subscription_give_a_qos_warning(graph, compressed):
    # Its own incompatible-QoS event is silenced: only the node's warning is under test.
    graph.node.create_publisher(CompressedImage, compressed.topic, BEST_EFFORT,
                                event_callbacks=PublisherEventCallbacks(
                                    incompatible_qos=lambda event: None))
    assert graph.spin_until(lambda: graph.log_lines('image_reliability:=best_effort',
                                                    Log.WARN), 20)
    line = graph.log_lines('image_reliability:=best_effort')[0]
    assert 'incompatible QoS' in line and 'RELIABILITY' in line


# --- malformed input -----------------------------------------------------------------

def raw_msg(encoding='rgb8', width=8, height=6, step=None, data=None) -> Image:
    channels = {'rgb8': 3, 'mono8': 1}.get(encoding, 4)
    step = width * channels if step is None else step
    data = bytes(step * height) if data is None else data
    return Image(encoding=encoding, width=width, height=height, step=step, data=data)


# One frame of each kind of fault: each is logged once, as a warning (the sender's fault).
MALFORMED = {
    "unsupported image encoding 'weird8'": raw_msg('weird8'),
    "'32FC1' images cannot be segmented": raw_msg('32FC1', step=32),
    'step 10 is smaller than one row': raw_msg(step=10),
    'less than step * height': raw_msg(data=bytes(100)),
    'has zero size (0x0)': raw_msg(width=0, height=0, data=b''),
    'exceeds max_image_pixels': raw_msg(width=5000, height=4000, data=b''),
    'too small to segment': raw_msg(width=1, height=1),
}
# More of the same kinds (other numbers, other encodings): counted, not logged again.
REPEATED = {
    "'64FC1' images cannot be segmented": raw_msg('64FC1', step=64),
    "'16SC1' images cannot be segmented": raw_msg('16SC1', step=16),
    'step 11 is smaller than one row': raw_msg(step=11),
    'is absurd (limit': raw_msg(width=40000, height=1, data=b''),
    "unsupported image encoding 'weird9'": raw_msg('weird9'),
}


def test_malformed_frames_are_logged_once_per_kind_and_the_node_keeps_serving(graph, raw):
    for expected, msg in MALFORMED.items():
        raw.send_bad(msg, expected)
        assert graph.spin_until(lambda e=expected: graph.log_lines(e, Log.WARN), 10), expected
    errors = raw.segment.stats.errors
    for expected, msg in REPEATED.items():
        raw.send_bad(msg, expected)
    graph.spin_until(lambda: False, 0.5)
    assert raw.segment.stats.errors == errors + len(REPEATED)
    for expected in REPEATED:
        assert not graph.log_lines(expected), expected
    assert len(graph.log_lines('smaller than one row')) == 1
    assert len(graph.log_lines('images cannot be segmented')) == 1
    assert ERROR_LOG_PERIOD_S >= 5  # the repeats above came well within it

    out = raw.send(numpy_to_image(SCENES.scene(0).image, 'rgb8'))
    assert out['detections'].detections


# --- parameters ----------------------------------------------------------------------

def test_thresholds_and_overlay_change_at_run_time_and_bad_values_are_refused(graph, raw):
    frame = SCENES.scene(0).image
    low = raw.send(numpy_to_image(frame, 'rgb8'))['detections'].detections
    node = raw.segment
    try:
        assert all(r.successful for r in node.set_parameters([
            Parameter('score_threshold', value=0.97), Parameter('publish_overlay', value=False)]))
        out = raw.send(numpy_to_image(frame, 'rgb8'), outputs=('panoptic', 'detections'))
        high = out['detections'].detections
        assert len(high) < len(low)
        assert all(d.results[0].hypothesis.score >= 0.97 for d in high)
        assert out['overlay'] is None
    finally:
        node.set_parameters([Parameter('score_threshold', value=LOW_THRESHOLD),
                             Parameter('publish_overlay', value=True)])

    refused = {
        'score_threshold': (1.5, 'out of range'),
        'overlay_alpha': (-0.1, 'out of range'),
        'model': ('/other.safetensors', 'restart the node to change model'),
        'backend': ('torch', 'restart the node to change backend'),
        'input_transport': ('compressed', 'restart the node to change input_transport'),
        'image_reliability': ('reliable', 'restart the node to change image_reliability'),
        'mask_threshold': (0.3, 'read-only'),
    }
    for name, (value, reason) in refused.items():
        before = node.get_parameter(name).value
        [result] = node.set_parameters([Parameter(name, value=value)])
        assert not result.successful, name
        assert reason in result.reason, (name, result.reason)
        assert node.get_parameter(name).value == before
    assert node.segmenter.score_threshold == pytest.approx(LOW_THRESHOLD)


def test_parameter_file_matches_the_node_defaults(graph):
    config = yaml.safe_load((REPO_ROOT / 'config' / 'segment.yaml').read_text())
    file_values = config['segment_node']['ros__parameters']
    assert file_values == {name: p.default for name, p in PARAMETERS.items()}
    node = SegmentNode(namespace='/t_defaults')
    try:
        for name, value in file_values.items():
            assert node.get_parameter(name).value == value, name
            descriptor = node.describe_parameter(name)
            assert descriptor.description, f'{name} has no description'
            if isinstance(value, float):
                assert descriptor.floating_point_range, f'{name} has no range'
            elif isinstance(value, int) and not isinstance(value, bool):
                assert descriptor.integer_range, f'{name} has no range'
    finally:
        node.destroy_node()


@pytest.mark.parametrize(('param', 'message'), [
    (Parameter('backend', value='cudnn'), 'backend must be one of'),
    (Parameter('input_transport', value='theora'), 'input_transport must be one of'),
    (Parameter('model', value='/no/such/model.safetensors'), 'not found|does not exist'),
])
def test_bad_start_parameters_raise_a_clear_error(rclpy_context, param, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        SegmentNode(namespace='/t_bad', parameter_overrides=[param])


def test_mask_threshold_other_than_the_graphs_is_refused_at_start(rclpy_context):
    from rclpy.exceptions import InvalidParameterValueException

    with pytest.raises(InvalidParameterValueException):
        SegmentNode(namespace='/t_bad', parameter_overrides=[
            Parameter('mask_threshold', value=0.3)])


# --- the console script --------------------------------------------------------------

def test_console_script_segments_over_dds_then_stops_cleanly_on_sigint(graph):
    namespace = '/t_process'
    process = subprocess.Popen(
        [*installed_executable('segment_node'), '--ros-args', '-r', f'__ns:={namespace}',
         '-p', f'score_threshold:={LOW_THRESHOLD}'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        label_info, detections = [], []
        graph.node.create_subscription(LabelInfo, f'{namespace}/segment_node/label_info',
                                       label_info.append, LATCHED)
        graph.node.create_subscription(Detection2DArray, f'{namespace}/segment_node/detections',
                                       detections.append, RELIABLE)
        publisher = graph.node.create_publisher(Image, f'{namespace}/image', RELIABLE)
        # Start-up imports torch: minutes on a CPU shared with a training job.
        assert graph.spin_until(lambda: label_info or process.poll() is not None, 300)
        assert process.poll() is None, process.communicate()
        assert graph.spin_until(lambda: publisher.get_subscription_count() > 0, 20)
        publisher.publish(numpy_to_image(SCENES.scene(0).image, 'rgb8'))
        assert graph.spin_until(lambda: detections, 60)
        assert detections[0].detections
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert 'Traceback' not in stderr + stdout


# --- plain helpers -------------------------------------------------------------------

def test_latest_frame_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken: dropped
    assert slot.take() == 2
    assert slot.take(timeout=0.01) is None
    slot.close()
    assert slot.take() is None


def test_fault_kinds_come_from_a_fixed_set_never_from_message_text():
    from tokenmask_ros.ros.conversions import ERROR_KINDS, ImageConversionError
    from tokenmask_ros.ros.segment_node import fault_kind

    assert fault_kind('input', ImageConversionError("encoding 'a'", 'unsupported encoding')) \
        == fault_kind('input', ImageConversionError("encoding 'b'", 'unsupported encoding'))
    assert fault_kind('input', ValueError('x')) == fault_kind('input', ValueError('y'))
    assert fault_kind('input', ImageConversionError('a', 'bad step')) \
        != fault_kind('input', ImageConversionError('a', 'bad size'))
    assert fault_kind('segmentation', RuntimeError('a')) != fault_kind('input', RuntimeError('a'))
    assert 'malformed' in ERROR_KINDS


def test_rate_limiter_table_is_bounded():
    now = [0.0]
    limiter = RateLimiter(10.0, clock=lambda: now[0], max_keys=4)
    assert [limiter.allow(f'k{i}')[0] for i in range(4)] == [True] * 4
    assert limiter.allow('k4') == (True, 0)  # no room: the shared overflow key
    assert limiter.allow('k5') == (False, 0)  # ... which is rate-limited like any other
    assert len(limiter) == 5  # four keys and the overflow key, however many keys arrive
    for i in range(1000):
        limiter.allow(f'x{i}')
    assert len(limiter) == 5
    now[0] = 11.0  # the old keys are idle for a period: forgotten to make room
    assert limiter.allow('new') == (True, 0)
    assert len(limiter) <= 5


def test_rate_limiter_allows_one_per_period_and_counts_the_rest():
    now = [0.0]
    limiter = RateLimiter(10.0, clock=lambda: now[0])
    assert limiter.allow('a') == (True, 0)
    assert limiter.allow('a') == (False, 0)
    assert limiter.allow('b') == (True, 0)
    now[0] = 10.5
    assert limiter.allow('a') == (True, 1)


def test_node_benchmark_compares_the_node_with_the_bare_segmenter(tmp_path):
    """training/node_benchmark.py end to end: three processes, a report and per-frame CSV."""
    import csv
    import sys

    from conftest import run_command

    result = run_command([sys.executable, 'training/node_benchmark.py', '--frames', '4',
                          '--warmup', '1', '--backend', 'torch', '--out', str(tmp_path)],
                         timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = (tmp_path / 'node_benchmark.md').read_text()
    assert 'node overhead:' in report and 'camera rate' in report
    rows = list(csv.DictReader((tmp_path / 'node_benchmark.csv').read_text().splitlines()))
    assert [int(r['frame']) for r in rows] == [1, 2, 3, 4]
    assert all(float(r['direct_pass1_ms']) > 0 and float(r['direct_pass2_ms']) > 0
               for r in rows)
    assert any(r['node_ms'] and float(r['node_ms']) > 0 for r in rows)


# --- launch files and rviz config ----------------------------------------------------

LAUNCH_FILES = ('segment.launch.py', 'two_cameras.launch.py')


@pytest.mark.parametrize('name', LAUNCH_FILES)
def test_launch_file_compiles_and_names_existing_config_files(name):
    source = (REPO_ROOT / 'launch' / name).read_text()
    compile(source, name, 'exec')
    assert "'segment.yaml'" in source
    assert (REPO_ROOT / 'config' / 'segment.yaml').is_file()
    if name == 'segment.launch.py':
        assert "'segment.rviz'" in source


def test_rviz_config_shows_the_overlay_and_semantic_images():
    config = yaml.safe_load((REPO_ROOT / 'config' / 'segment.rviz').read_text())
    displays = config['Visualization Manager']['Displays']
    topics = {d['Topic']['Value'] for d in displays if d['Class'] == 'rviz_default_plugins/Image'}
    # rviz's Image display cannot show 32SC1 (~/panoptic); the overlay colours panoptic ids.
    assert topics == {'/segment_node/overlay', '/segment_node/semantic'}


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None,
                    reason='the ROS launch package has no wheel; checked where it is installed')
@pytest.mark.parametrize('name', LAUNCH_FILES)
def test_launch_file_builds_a_launch_description(name):
    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location(name.split('.')[0],
                                                  REPO_ROOT / 'launch' / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.generate_launch_description(), LaunchDescription)
