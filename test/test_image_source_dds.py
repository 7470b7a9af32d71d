"""The installed ``image_source`` console script in its own process, heard over real DDS."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
import uuid

import cv2
import numpy as np
import pytest
from conftest import installed_executable

pytestmark = pytest.mark.dds

rclpy = pytest.importorskip('rclpy')
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from tokenmask_ros.camera import PinholeCamera  # noqa: E402
from tokenmask_ros.ros.conversions import compressed_to_numpy, image_to_numpy  # noqa: E402
from tokenmask_ros.sequence_io import depth_to_png  # noqa: E402
from tokenmask_ros.synthetic import SceneGenerator  # noqa: E402
from tokenmask_ros.synthetic_depth import scene_depth  # noqa: E402
from tokenmask_ros.synthetic_video import SequenceGenerator  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def start_source(topic: str, *params: str) -> subprocess.Popen:
    namespace = topic.rsplit('/', 1)[0]
    args = [*installed_executable('image_source'), '--ros-args', '-r', f'image:={topic}',
            '-r', f'image/compressed:={topic}/compressed', '-r', f'depth:={namespace}/depth',
            '-r', f'camera_info:={namespace}/camera_info']
    for param in params:
        args += ['-p', param]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy())


def subscribe(node, msg_type, topic: str) -> list:
    """A reliable subscription that appends every message to the returned list."""
    received = []
    node.create_subscription(msg_type, topic, received.append, RELIABLE)
    return received


def spin_until(node, done, timeout: float = 30.0) -> None:
    """Spin ``node`` until ``done()`` holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        rclpy.spin_once(node, timeout_sec=0.05)


def run_source_until(node, process: subprocess.Popen, done) -> str:
    """Spin until ``done()``, then wait for the source to exit; returns its output."""
    try:
        spin_until(node, done)
        return process.communicate(timeout=15)[0]
    finally:
        process.kill()


def unique_topic() -> str:
    return f'/test_{uuid.uuid4().hex[:10]}/image'


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_publishes_count_frames_with_headers_then_exits_cleanly(ros_node):
    topic = unique_topic()
    received = subscribe(ros_node, Image, topic)
    process = start_source(topic, 'count:=6', 'rate:=15.0', 'width:=160', 'height:=120',
                           'frame_id:=test_cam', 'encoding:=bgr8', 'wait_for_subscribers:=1')
    output = run_source_until(ros_node, process, lambda: len(received) >= 6)
    assert process.returncode == 0, output
    assert 'published 6 frame(s); exiting' in output
    assert len(received) == 6
    for msg in received:
        assert (msg.width, msg.height, msg.encoding) == (160, 120, 'bgr8')
        assert msg.header.frame_id == 'test_cam'
        assert image_to_numpy(msg).shape == (120, 160, 3)
    stamps = [stamp_ns(m) for m in received]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    # 15 Hz: consecutive stamps about 67 ms apart (loose bounds: CI machines are busy).
    assert 20e6 < np.median(np.diff(stamps)) < 250e6


def test_folder_source_publishes_the_files_pixel_exact_and_compressed(ros_node, tmp_path):
    images = []
    for i in range(3):
        image = np.zeros((40, 56, 3), np.uint8)
        image[:, :, i] = 200
        image[5:15, 5 + 10 * i:15 + 10 * i] = 255
        cv2.imwrite(str(tmp_path / f'{i:02d}.png'), image)
        images.append(image)
    topic = unique_topic()
    raw = subscribe(ros_node, Image, topic)
    compressed = subscribe(ros_node, CompressedImage, f'{topic}/compressed')
    process = start_source(topic, f'source:={tmp_path}', 'loop:=false', 'rate:=20.0',
                           'wait_for_subscribers:=1', 'encoding:=rgb8', 'publish_compressed:=true',
                           'compressed_format:=png')
    output = run_source_until(ros_node, process, lambda: len(raw) >= 3 and len(compressed) >= 3)
    assert process.returncode == 0, output
    assert 'source exhausted after 3 frame(s)' in output
    assert [len(raw), len(compressed)] == [3, 3]
    for msg, cmsg, bgr in zip(raw, compressed, images, strict=True):
        np.testing.assert_array_equal(image_to_numpy(msg), bgr[..., ::-1])
        assert cmsg.format == 'rgb8; png compressed bgr8'
        assert cmsg.header == msg.header
        np.testing.assert_array_equal(compressed_to_numpy(cmsg, 'bgr8'), bgr)


def test_synthetic_video_publishes_depth_and_camera_info_with_the_image_header(ros_node):
    topic = unique_topic()
    namespace = topic.rsplit('/', 1)[0]
    images = subscribe(ros_node, Image, topic)
    depths = subscribe(ros_node, Image, f'{namespace}/depth')
    infos = subscribe(ros_node, CameraInfo, f'{namespace}/camera_info')
    process = start_source(topic, 'source:=synthetic_video', 'sequence_length:=4', 'count:=6',
                           'rate:=20.0', 'width:=160', 'height:=120', 'seed:=3',
                           'frame_id:=rgbd_cam', 'publish_depth:=true',
                           'publish_camera_info:=true', 'wait_for_subscribers:=1')
    output = run_source_until(
        ros_node, process, lambda: min(len(images), len(depths), len(infos)) >= 6)
    assert process.returncode == 0, output
    assert [len(images), len(depths), len(infos)] == [6, 6, 6]
    sequence = SequenceGenerator(height=120, width=160, seed=3, length=4)
    camera = sequence.camera
    for i, (image, depth, info) in enumerate(zip(images, depths, infos, strict=True)):
        assert image.header == depth.header == info.header
        assert image.header.frame_id == 'rgbd_cam'
        frame = sequence.frame(i % 4)  # the sequence loops after 4 frames
        np.testing.assert_array_equal(image_to_numpy(image), frame.image)
        assert (depth.encoding, depth.width, depth.height) == ('16UC1', 160, 120)
        np.testing.assert_array_equal(image_to_numpy(depth), depth_to_png(frame.depth))
        assert (info.width, info.height, info.distortion_model) == (160, 120, 'plumb_bob')
        assert list(info.d) == [0.0] * 5
        np.testing.assert_array_equal(info.r, np.eye(3).ravel())
        np.testing.assert_allclose(info.p, camera.p)
        assert PinholeCamera.from_camera_info(info.k, info.width, info.height) == camera
    stamps = [stamp_ns(m) for m in images]
    assert all(b > a for a, b in itertools.pairwise(stamps))


def test_synthetic_scenes_publish_their_depth_on_request(ros_node):
    topic = unique_topic()
    images = subscribe(ros_node, Image, topic)
    depths = subscribe(ros_node, Image, f'{topic.rsplit("/", 1)[0]}/depth')
    process = start_source(topic, 'count:=2', 'rate:=20.0', 'width:=96', 'height:=64',
                           'publish_depth:=true', 'wait_for_subscribers:=1')
    output = run_source_until(ros_node, process, lambda: min(len(images), len(depths)) >= 2)
    assert process.returncode == 0, output
    scenes = SceneGenerator(height=64, width=96)
    for i, (image, depth) in enumerate(zip(images, depths, strict=True)):
        assert image.header == depth.header
        scene = scenes.scene(i)
        np.testing.assert_array_equal(image_to_numpy(image), scene.image)
        np.testing.assert_array_equal(image_to_numpy(depth), depth_to_png(scene_depth(scene)))


def test_sigint_stops_an_endless_stream_cleanly(ros_node):
    topic = unique_topic()
    received = subscribe(ros_node, Image, topic)
    process = start_source(topic, 'rate:=30.0', 'width:=64', 'height:=48')
    try:
        spin_until(ros_node, lambda: len(received) >= 3)
        assert len(received) >= 3
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=15)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert 'Traceback' not in output


@pytest.mark.parametrize(('params', 'message'), [
    (['source:=/definitely/not/here'], 'is not "synthetic"'),
    (['encoding:=yuv422'], 'encoding must be one of'),
    (['publish_raw:=false'], 'nothing to publish'),
    (['source:=camera:0', 'publish_camera_info:=true'], 'need source "synthetic"'),
])
def test_bad_parameters_exit_with_status_1_and_a_clear_message(params, message):
    process = start_source(unique_topic(), *params)
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 1, output
    assert message in output
    assert 'Traceback' not in output
