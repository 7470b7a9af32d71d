"""``segment_node`` against hostile input and hostile process control, as a real process.

Every test runs the console script in its own process and talks to it over real DDS:
decompression bombs must be refused before decoding (its peak memory stays flat), senders
must not be able to flood the log or grow the node with ever-new encodings, and bad start
parameters, bad ``--ros-args`` and SIGTERM / SIGHUP / double SIGINT must end the process
with one clear line and the right exit code, never a traceback.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import cv2
import pytest
from conftest import installed_executable, spin_until

pytestmark = pytest.mark.dds

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vision_msgs.msg')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from tokenmask_ros.ros.conversions import numpy_to_compressed, numpy_to_image  # noqa: E402
from tokenmask_ros.ros.segment_node import ERROR_LOG_PERIOD_S  # noqa: E402
from tokenmask_ros.synthetic import SceneGenerator  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
FRAME = SceneGenerator(height=96, width=128, seed=5).scene(0).image
START_TIMEOUT_S = 300  # start-up imports torch: minutes on a CPU shared with other jobs


def kib(status_key: str, pid: int) -> int:
    """A memory figure (kB) of process ``pid`` from /proc/<pid>/status (VmRSS, VmHWM)."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(status_key + ':'):
            return int(line.split()[1])
    raise AssertionError(f'{status_key} not in /proc/{pid}/status')


class NodeProcess:
    """The segment_node console script in its own process, its stdout+stderr in a file."""

    def __init__(self, tmp_path: Path, namespace: str, *ros_args: str):
        self.namespace = namespace
        self.output_path = tmp_path / f'{namespace.strip("/")}.log'
        self._output = self.output_path.open('w')
        env = dict(os.environ, RCUTILS_LOGGING_BUFFERED_STREAM='0',
                   RCUTILS_COLORIZED_OUTPUT='0', PYTHONUNBUFFERED='1')
        self.process = subprocess.Popen(
            [*installed_executable('segment_node'), '--ros-args', '-r', f'__ns:={namespace}',
             *ros_args], stdout=self._output, stderr=subprocess.STDOUT, env=env)

    @property
    def output(self) -> str:
        return self.output_path.read_text()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while 'ready:' not in self.output:
            assert self.process.poll() is None, f'node exited early:\n{self.output}'
            assert time.monotonic() < deadline, f'node not ready:\n{self.output}'
            time.sleep(0.2)

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f'node still running after {timeout} s:\n{self.output}') \
                from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._output.close()


def run_to_exit(tmp_path: Path, namespace: str, *ros_args: str,
                timeout: float = START_TIMEOUT_S) -> tuple[int, str]:
    """Start a node that is expected to end by itself: its exit code and its output."""
    process = NodeProcess(tmp_path, namespace, *ros_args)
    try:
        return process.wait_exit(timeout), process.output
    finally:
        process.close()


def assert_clean_shutdown(output: str, signal_name: str) -> None:
    assert f'shutting down on {signal_name}' in output, output
    assert 'stopped: worker joined, model closed' in output, output
    assert 'Traceback' not in output and 'KeyboardInterrupt' not in output, output


class DdsPeer:
    """A node of the test's own: publishes frames, hears /rosout, diagnostics, detections."""

    def __init__(self, namespace: str, message_type):
        self.node = rclpy.create_node('hardening_tester', namespace=namespace)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.namespace = namespace
        self.logs: list[Log] = []
        self.node.create_subscription(Log, '/rosout', self._on_log,
                                      QoSProfile(depth=1000, reliability=RELIABLE.reliability))
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      RELIABLE)
        self.detections: dict[int, Detection2DArray] = {}
        self.node.create_subscription(
            Detection2DArray, f'{namespace}/segment_node/detections',
            lambda msg: self.detections.__setitem__(msg.header.stamp.sec, msg), RELIABLE)
        self.label_info: list[LabelInfo] = []
        self.node.create_subscription(LabelInfo, f'{namespace}/segment_node/label_info',
                                      self.label_info.append, LATCHED)
        topic = 'image/compressed' if message_type is CompressedImage else 'image'
        self.publisher = self.node.create_publisher(message_type, f'{namespace}/{topic}',
                                                    RELIABLE)
        self._stamp = 0

    def _on_log(self, log: Log) -> None:
        if log.name.startswith(self.namespace.strip('/').replace('/', '.')):
            self.logs.append(log)

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name == f'{self.namespace}/segment_node: segmentation':
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def spin_until(self, done, timeout: float = 60.0) -> bool:
        return spin_until(self.executor, done, timeout)

    def connect(self) -> None:
        assert self.spin_until(lambda: self.label_info
                               and self.publisher.get_subscription_count() > 0, 60)

    def publish(self, msg) -> int:
        self._stamp += 1
        msg.header.stamp.sec = self._stamp
        self.publisher.publish(msg)
        return self._stamp

    def send_good(self, msg) -> Detection2DArray:
        """Publish a good frame and wait for its detections: every earlier frame is done."""
        stamp = self.publish(msg)
        assert self.spin_until(lambda: stamp in self.detections, 120), 'good frame unanswered'
        return self.detections[stamp]

    def count(self, key: str) -> int:
        return int(self.diagnostics.get(key, 0))

    def lines(self, text: str, level: int | None = None) -> list[str]:
        return [log.msg for log in self.logs
                if text in log.msg and (level is None or log.level == level)]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture()
def started(rclpy_context, tmp_path, request):
    """``started(namespace, message_type, *ros_args)``: a ready node process and a tester."""
    made = []

    def start(namespace, message_type=Image, *ros_args):
        process = NodeProcess(tmp_path, namespace, *ros_args)
        made.append(process)
        tester = DdsPeer(namespace, message_type)
        made.append(tester)
        process.wait_ready()
        tester.connect()
        return process, tester

    yield start
    for thing in reversed(made):
        thing.close()


# --- decompression bombs ---------------------------------------------------------------

def jpeg_bomb() -> bytes:
    """A real 8x8 JPEG (about 630 bytes) whose SOF0 header declares 32768x32768."""
    ok, encoded = cv2.imencode('.jpg', FRAME[:8, :8])
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', 32768, 32768)
    return bytes(data)


def png_bomb() -> bytes:
    """A real PNG whose IHDR declares 32768x32768 (CRC recomputed)."""
    ok, encoded = cv2.imencode('.png', FRAME[:8, :8])
    assert ok
    data = bytearray(encoded.tobytes())
    data[16:24] = struct.pack('>II', 32768, 32768)
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_decompression_bombs_are_refused_unread_and_the_node_keeps_serving(started):
    process, tester = started('/t_bombs', CompressedImage, '-p', 'input_transport:=compressed',
                              '-p', 'image_reliability:=reliable')
    good = numpy_to_compressed(FRAME, 'rgb8', 'png')
    assert tester.send_good(good) is not None  # warm: inference buffers are allocated
    peak_before = kib('VmHWM', process.process.pid)
    for refused, bomb in enumerate((jpeg_bomb(), png_bomb()), 1):
        assert len(bomb) < 1000
        tester.publish(CompressedImage(format='jpeg', data=bomb))
        assert tester.spin_until(lambda n=refused: tester.count('errors') == n, 20), \
            tester.diagnostics
        tester.send_good(numpy_to_compressed(FRAME, 'rgb8', 'png'))  # still answered
    growth_mb = (kib('VmHWM', process.process.pid) - peak_before) / 1024
    assert growth_mb < 300, f'peak memory grew by {growth_mb:.0f} MB: a bomb was decoded'
    assert tester.spin_until(lambda: tester.lines('declares 32768x32768 = 1073741824 '
                                                  'pixels, more than max_image_pixels',
                                                  Log.WARN), 10)
    assert process.process.poll() is None


# --- log flooding ----------------------------------------------------------------------

def test_unique_long_encodings_give_a_handful_of_log_lines_and_bounded_memory(started):
    """Each frame's encoding is new and 64 KiB long: formerly a new log line and a new
    64 KiB rate-limiter key per frame (1996 lines from 2000 frames; +154 MB at 50 Hz)."""
    process, tester = started('/t_flood', Image, '-p', 'image_reliability:=reliable')
    pixels = bytes(4 * 4 * 3)

    def flood(count: int, tag: str) -> None:
        """``count`` frames at up to 200 Hz (DDS drops samples of a faster burst), then a
        good frame, answered once every earlier frame is done; diagnostics then up to date."""
        for i in range(count):
            encoding = f'{tag}{i:06d}'.ljust(65536, 'x')
            tester.publish(Image(encoding=encoding, width=4, height=4, step=12, data=pixels))
            tester.executor.spin_once(timeout_sec=0.0)
            time.sleep(0.005)
        processed = len(tester.detections) + 1  # good frames so far, this one included
        tester.send_good(numpy_to_image(FRAME, 'rgb8'))
        assert tester.spin_until(lambda: tester.count('frames processed') == processed, 10)

    start = time.monotonic()
    flood(200, 'warmup')
    for _ in range(3):  # onnxruntime's arena grows (about 40 MB) on the second inference
        tester.send_good(numpy_to_image(FRAME, 'rgb8'))
    rss_before = kib('VmRSS', process.process.pid)
    errors_before = tester.count('errors')
    flood(1000, 'flood')
    errors = tester.count('errors') - errors_before
    assert errors > 500, f'only {errors} of 1000 frames reached the node'
    growth_mb = (kib('VmRSS', process.process.pid) - rss_before) / 1024
    assert growth_mb < 24, f'the node grew by {growth_mb:.0f} MB over {errors} unique encodings'
    tester.spin_until(lambda: False, 0.5)  # the last log lines arrive
    lines = tester.lines('unsupported image encoding')
    periods = (time.monotonic() - start) / ERROR_LOG_PERIOD_S
    assert 1 <= len(lines) <= periods + 1, (len(lines), periods)  # one per period, not frame
    assert len(lines) < errors / 50
    assert all(len(line) < 1000 for line in lines)
    assert "'warmup000000xxxx" in lines[0] and '(65536 chars)' in lines[0]


# --- start-up failures -----------------------------------------------------------------

def fatal_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if '[FATAL]' in line]


def test_an_engine_cache_dir_that_is_a_file_ends_with_one_fatal_line(tmp_path):
    not_a_folder = tmp_path / 'cache_is_a_file'
    not_a_folder.write_text('not a folder')
    code, output = run_to_exit(tmp_path, '/t_bad_cache', '-p', 'backend:=onnxruntime',
                               '-p', f'engine_cache_dir:={not_a_folder}')
    assert code == 1, output
    assert 'Traceback' not in output, output
    [fatal] = fatal_lines(output)
    assert 'cannot start' in fatal and str(not_a_folder) in fatal, fatal


def test_a_bad_ros_args_remap_ends_with_one_fatal_line(tmp_path):
    code, output = run_to_exit(tmp_path, '/t_bad_remap', '-r', 'foo', timeout=60)
    assert code == 1, output
    assert 'Traceback' not in output, output
    [fatal] = fatal_lines(output)
    assert "remap rule: '-r foo'" in fatal and '.c:' not in fatal, fatal


# --- signals ---------------------------------------------------------------------------

@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGHUP], ids=['SIGTERM', 'SIGHUP'])
def test_sigterm_and_sighup_shut_down_cleanly(started, signum):
    name = signal.Signals(signum).name
    process, tester = started(f'/t_{name.lower()}')
    tester.send_good(numpy_to_image(FRAME, 'rgb8'))  # the worker has run
    process.process.send_signal(signum)
    code = process.wait_exit(60)
    output = process.output
    assert code == 0, output
    assert_clean_shutdown(output, name)


def test_a_second_sigint_during_shutdown_is_ignored(started):
    process, tester = started('/t_sigint_twice')
    tester.send_good(numpy_to_image(FRAME, 'rgb8'))
    process.process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.process.send_signal(signal.SIGINT)
    code = process.wait_exit(60)
    output = process.output
    assert code == 0, output
    assert_clean_shutdown(output, 'SIGINT')


def test_sigterm_during_start_up_exits_cleanly(tmp_path):
    process = NodeProcess(tmp_path, '/t_sigterm_start')
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while 'loading' not in process.output:  # the model is being loaded now
            assert process.process.poll() is None and time.monotonic() < deadline, \
                process.output
            time.sleep(0.05)
        process.process.send_signal(signal.SIGTERM)
        code = process.wait_exit(120)
        output = process.output
    finally:
        process.close()
    assert code == 0, output
    assert 'shutting down on SIGTERM' in output and 'Traceback' not in output, output

