"""``segment_node`` with several cameras (``images``), as a real process over real DDS.

One node segments two or three cameras with one model (an ONNX Runtime export of batch =
number of cameras). Each camera publishes frames of its own size with its own frame_id;
every answer must come on that camera's outputs with that frame's header, at that frame's
size, with what the Segmenter gives for the frame alone. A camera that stops must not hold
back the others; depth is refused in this mode with a clear error; bad camera lists end the
node with one line.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pytest
from conftest import spin_until

pytestmark = pytest.mark.dds

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vision_msgs.msg')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_node_hardening import START_TIMEOUT_S, NodeProcess, run_to_exit  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from tokenmask_ros.bundled import default_model_path  # noqa: E402
from tokenmask_ros.ros.conversions import image_to_numpy, numpy_to_image  # noqa: E402
from tokenmask_ros.ros.segment_node import (  # noqa: E402
    LatestFrames,
    camera_name,
    camera_names,
)
from tokenmask_ros.synthetic import SceneGenerator  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
THRESHOLD = 0.3
# Each camera its own frame size: the node letterboxes each into its own batch slot.
CAMERAS = {'front': (120, 160), 'rear': (96, 128), 'left': (100, 200)}
TOPICS = {'front': 'front/image_raw', 'rear': 'rear/color/image_raw', 'left': 'left/image'}


def frame(camera: str, index: int) -> np.ndarray:
    height, width = CAMERAS[camera]
    return SceneGenerator(height=height, width=width, seed=len(camera)).scene(index).image


class Cameras:
    """The test's node: one publisher per camera, that camera's panoptic and detections
    collected by stamp, /diagnostics of the node."""

    def __init__(self, namespace: str, cameras):
        self.namespace = namespace
        self.node = rclpy.create_node('multicamera_tester', namespace=namespace)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.publishers = {c: self.node.create_publisher(Image, f'{namespace}/{TOPICS[c]}',
                                                         RELIABLE) for c in cameras}
        self.answers: dict[str, dict[str, dict[int, object]]] = defaultdict(
            lambda: defaultdict(dict))
        for camera in cameras:
            for output, msg_type in (('panoptic', Image), ('detections', Detection2DArray)):
                self.node.create_subscription(
                    msg_type, f'{namespace}/segment_node/{camera}/{output}',
                    lambda msg, c=camera, o=output: self.answers[c][o].__setitem__(
                        msg.header.stamp.sec, msg), RELIABLE)
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      RELIABLE)
        self.sent: dict[str, dict[int, Image]] = defaultdict(dict)
        self._stamp = 0

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == f'{self.namespace}/segment_node: segmentation':
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def connected(self) -> bool:
        """Both ways: the node hears every camera and this node hears every answer topic
        (the outputs are volatile: an answer sent before that is lost)."""
        outputs = [f'{self.namespace}/segment_node/{camera}/{output}'
                   for camera in self.publishers for output in ('panoptic', 'detections')]
        return (all(p.get_subscription_count() > 0 for p in self.publishers.values())
                and all(self.node.count_publishers(topic) > 0 for topic in outputs))

    def send(self, cameras, index: int) -> dict[str, int]:
        """One frame on each of ``cameras`` (stamps differ per camera); their stamps."""
        stamps = {}
        for camera in cameras:
            self._stamp += 1
            msg = numpy_to_image(frame(camera, index), 'rgb8')
            msg.header.stamp.sec, msg.header.stamp.nanosec = self._stamp, 1000 * self._stamp
            msg.header.frame_id = f'{camera}_optical_frame'
            self.publishers[camera].publish(msg)
            self.sent[camera][self._stamp] = msg
            stamps[camera] = self._stamp
        return stamps

    def answered(self, stamps: dict[str, int], timeout: float = 60.0) -> bool:
        return spin_until(self.executor, lambda: all(
            stamp in self.answers[camera][output] for camera, stamp in stamps.items()
            for output in ('panoptic', 'detections')), timeout)

    def wait_connected(self) -> None:
        assert spin_until(self.executor, self.connected, START_TIMEOUT_S), 'no subscription'

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def start(tmp_path, namespace: str, cameras, *extra: str) -> NodeProcess:
    topics = ', '.join(f"'{TOPICS[c]}'" for c in cameras)
    process = NodeProcess(tmp_path, namespace, '-p', f'images:=[{topics}]',
                          '-p', 'backend:=onnxruntime', '-p', 'device:=cpu',
                          '-p', f'score_threshold:={THRESHOLD}', '-p', 'tracking:=false',
                          '-p', 'image_reliability:=reliable', '-p', 'batch_max_delay:=0.2',
                          '-p', f'engine_cache_dir:={tmp_path / "cache"}', *extra)
    process.wait_ready()
    return process


@pytest.fixture(scope='module')
def segmenter(tmp_path_factory):
    """The reference: the Segmenter on one frame at a time (ONNX Runtime, batch 1)."""
    from tokenmask_ros.runtime import Segmenter

    with Segmenter(default_model_path(), 'onnxruntime', 'cpu', score_threshold=THRESHOLD,
                   cache_dir=tmp_path_factory.mktemp('cache')) as segmenter:
        yield segmenter


def check_answers(peer: Cameras, camera: str, stamp: int, segmenter) -> None:
    """The answer to frame ``stamp`` of ``camera``: its header, its size, its segmentation."""
    sent = peer.sent[camera][stamp]
    panoptic = peer.answers[camera]['panoptic'][stamp]
    detections = peer.answers[camera]['detections'][stamp]
    assert panoptic.header == sent.header and detections.header == sent.header
    assert (panoptic.height, panoptic.width) == (sent.height, sent.width) == CAMERAS[camera]
    expected = segmenter(image_to_numpy(sent))
    np.testing.assert_array_equal(image_to_numpy(panoptic), expected.panoptic)
    assert [d.id for d in detections.detections] == [str(s.id) for s in expected.segments]


def test_two_cameras_of_different_sizes_are_answered_each_with_its_own_header(
        rclpy_context, tmp_path, segmenter):
    process = start(tmp_path, '/t_multi2', ('front', 'rear'))
    peer = Cameras('/t_multi2', ('front', 'rear'))
    try:
        assert 'segmenting 2 cameras in batches of 2 (front, rear)' in process.output
        peer.wait_connected()
        rounds = []
        for index in range(4):  # one frame per camera at a time: newest frame wins
            rounds.append(peer.send(('front', 'rear'), index))
            assert peer.answered(rounds[-1]), process.output
        for stamps in rounds:
            for camera, stamp in stamps.items():
                check_answers(peer, camera, stamp, segmenter)
        # Every answer is on the right camera's topics: no stamp of one on the other.
        assert set(peer.answers['front']['panoptic']) == set(peer.sent['front'])
        assert set(peer.answers['rear']['detections']) == set(peer.sent['rear'])
        assert spin_until(peer.executor, lambda: peer.diagnostics.get('frames processed')
                          == '8', 10), peer.diagnostics
        # Frames sent together share a backend call (batch_max_delay gathers them).
        assert int(peer.diagnostics['batches']) < 8, peer.diagnostics
        assert peer.diagnostics['batch'] == '2'
        assert 'received 4, processed 4' in peer.diagnostics['camera front']
    finally:
        peer.close()
        process.close()


def test_three_cameras_keep_answering_when_one_stops(rclpy_context, tmp_path, segmenter):
    cameras = ('front', 'rear', 'left')
    process = start(tmp_path, '/t_multi3', cameras)
    peer = Cameras('/t_multi3', cameras)
    try:
        peer.wait_connected()
        for index in range(2):
            stamps = peer.send(cameras, index)
            assert peer.answered(stamps), process.output
        # 'left' stops; the other two go on and are answered, promptly, every time.
        for index in range(2, 6):
            stamps = peer.send(('front', 'rear'), index)
            started = time.monotonic()
            assert peer.answered(stamps, timeout=30), process.output
            for camera, stamp in stamps.items():
                check_answers(peer, camera, stamp, segmenter)
        assert time.monotonic() - started < 30
        assert len(peer.answers['left']['panoptic']) == 2
        for camera in cameras:
            for stamp in peer.sent[camera]:
                assert peer.answers[camera]['panoptic'][stamp].header == \
                    peer.sent[camera][stamp].header
        # A camera that stops is reported by its own counts.
        assert spin_until(peer.executor, lambda: peer.diagnostics.get('frames processed')
                          == '14', 10), peer.diagnostics  # 2 x 3 cameras + 4 x 2
        assert 'received 2, processed 2' in peer.diagnostics['camera left']
        assert 'received 6, processed 6' in peer.diagnostics['camera rear']
        # Depth cannot pair with several cameras: refused in one clear line, 2D goes on.
        depth = peer.node.create_publisher(Image, '/t_multi3/depth', RELIABLE)
        assert spin_until(peer.executor, lambda: depth.get_subscription_count() > 0, 30)
        deadline = time.monotonic() + 30
        while 'are ignored: 3D outputs need a single camera' not in process.output:
            assert time.monotonic() < deadline, process.output
            # Again until refused: the node may match this new publisher after the first
            # message (discovery is per side), which a best-effort reader then never sees.
            depth.publish(numpy_to_image(np.full((96, 128), 1000, np.uint16), '16UC1'))
            peer.executor.spin_once(timeout_sec=0.2)
        assert peer.answered(peer.send(('front',), 6)), process.output
    finally:
        peer.close()
        process.close()


@pytest.mark.parametrize(('images', 'message'), [
    ("['front/image_raw', 'front/image_rect']", "both give camera name 'front'"),
    ("['front/image_raw', 'front/image_raw']", "lists 'front/image_raw' twice"),
    ("['front/image raw']", 'cannot name a camera'),
])
def test_a_bad_camera_list_ends_the_node_with_one_clear_line(rclpy_context, tmp_path, images,
                                                             message):
    code, output = run_to_exit(tmp_path, '/t_multi_bad', '-p', f'images:={images}',
                               '-p', 'backend:=torch', '-p', 'device:=cpu')
    assert code == 1, output
    fatal = [line for line in output.splitlines() if 'cannot start:' in line]
    assert len(fatal) == 1 and message in fatal[0], output
    assert 'Traceback' not in output and 'loading' not in output  # refused before the model


# --- plain helpers -------------------------------------------------------------------

@pytest.mark.parametrize(('topic', 'name'), [
    ('/front/color/image_raw', 'front'), ('front/image_raw', 'front'),
    ('/robot/left/image', 'robot_left'), ('/image', 'image'), ('cam0', 'cam0'),
    ('/3d/image_rect', 'camera_3d'), ('/rear/image_raw/compressed', 'rear'),
])
def test_camera_names_come_from_the_topic(topic, name):
    assert camera_name(topic) == name


def test_camera_names_are_unique_and_bounded():
    assert camera_names(['/a/image_raw', '/b/image_raw']) == ['a', 'b']
    with pytest.raises(ValueError, match='at most 16 cameras'):
        camera_names([f'/c{i}/image' for i in range(17)])
    with pytest.raises(ValueError, match='list of image topics'):
        camera_names(['/a/image', 3])


def test_latest_frames_take_what_is_there_and_wait_only_for_live_cameras():
    now = [100.0]
    frames = LatestFrames(3, clock=lambda: now[0])
    assert frames.take_all(timeout=0.01) == []
    assert frames.put(0, 'a1') is False
    assert frames.put(0, 'a2') is True  # a1 never taken: dropped
    frames.put(1, 'b1')
    assert frames.take_all() == [(0, 'a2'), (1, 'b1')]
    # Camera 2 never sent: not waited for. Camera 1 sent a moment ago: waited for, up to
    # gather_s, then the batch goes without it.
    frames.put(0, 'a3')
    started = time.monotonic()
    assert frames.take_all(gather_s=0.2) == [(0, 'a3')]
    assert 0.15 < time.monotonic() - started < 5
    # Camera 1 silent for longer than a second: no longer waited for.
    now[0] += 2.0
    frames.put(0, 'a4')
    started = time.monotonic()
    assert frames.take_all(gather_s=5.0) == [(0, 'a4')]
    assert time.monotonic() - started < 1.0
    # A slow camera (a frame every 3 s) stays live for two of its intervals, then not.
    frames.put(2, 'c1')
    now[0] += 3.0
    frames.put(2, 'c2')
    assert frames.take_all() == [(2, 'c2')]
    now[0] += 4.0
    frames.put(0, 'a5')
    started = time.monotonic()
    assert frames.take_all(gather_s=0.2) == [(0, 'a5')]
    assert time.monotonic() - started > 0.15  # waited for camera 2
    now[0] += 3.0
    frames.put(0, 'a6')
    started = time.monotonic()
    assert frames.take_all(gather_s=5.0) == [(0, 'a6')]
    assert time.monotonic() - started < 1.0
    frames.close()
    assert frames.take_all() is None
    assert frames.empty
