"""``image_source``: publish camera-like image streams without a camera.

Feeds demos and tests from a video file, an image folder, a camera device, or the built-in
synthetic generators (single scenes, or a video whose things move, occlude one another and
leave and re-enter the frame), at a fixed rate, with correct headers. Publishes
``image`` (sensor_msgs/Image) and, on request, ``image/compressed``
(sensor_msgs/CompressedImage, the image_transport naming); with a synthetic source also
``depth`` (16UC1 millimetres, registered to the image) and ``camera_info``, both with the
image's header, as an RGB-D camera driver does. Exits with status 0 once ``count`` frames
are out or a non-looping source is exhausted.
"""

from __future__ import annotations

import sys
import time

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from tokenmask_ros.ros.conversions import (
    ImageConversionError,
    convert_encoding,
    numpy_to_compressed,
    numpy_to_image,
)
from tokenmask_ros.ros.qos import RELIABILITY, make_qos
from tokenmask_ros.sequence_io import depth_to_png
from tokenmask_ros.sources import SourceError, open_source
from tokenmask_ros.synthetic_video import SyntheticRGBDSource

OUTPUT_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')
RGBD_SOURCES = ('synthetic', 'synthetic_video')

# name -> (default, description, extra descriptor fields). config/image_source.yaml
# repeats these defaults; a test keeps the two in step.
PARAMETERS = {
    'source': ('synthetic', '"synthetic", "synthetic_video", "camera:N", an image folder, or '
               'a video file', {}),
    'rate': (10.0, 'publish rate in Hz', {'floating_point_range': [
        FloatingPointRange(from_value=0.01, to_value=1000.0)]}),
    'loop': (True, 'restart folders, videos and synthetic_video at the end', {}),
    'count': (0, 'frames to publish before exiting; 0 = no limit', {'integer_range': [
        IntegerRange(from_value=0, to_value=2**31 - 1)]}),
    'frame_id': ('camera', 'header.frame_id of every message', {}),
    'encoding': ('rgb8', f'published encoding: {", ".join(OUTPUT_ENCODINGS)}', {}),
    'width': (640, 'synthetic scene width; requested camera width', {'integer_range': [
        IntegerRange(from_value=16, to_value=16384)]}),
    'height': (480, 'synthetic scene height; requested camera height', {'integer_range': [
        IntegerRange(from_value=16, to_value=16384)]}),
    'seed': (0, 'seed of the synthetic scene generator', {}),
    'sequence_length': (60, 'frames of the synthetic_video sequence (it loops)', {
        'integer_range': [IntegerRange(from_value=1, to_value=100000)]}),
    'publish_raw': (True, 'publish sensor_msgs/Image on "image"', {}),
    'publish_compressed': (False, 'publish sensor_msgs/CompressedImage on "image/compressed"', {}),
    'publish_depth': (False, 'publish 16UC1 depth in millimetres on "depth" (synthetic sources)',
                      {}),
    'publish_camera_info': (False, 'publish sensor_msgs/CameraInfo on "camera_info" (synthetic '
                            'sources)', {}),
    'compressed_format': ('jpeg', 'compression of "image/compressed": jpeg or png', {}),
    'jpeg_quality': (90, 'JPEG quality 1-100', {'integer_range': [
        IntegerRange(from_value=1, to_value=100)]}),
    'wait_for_subscribers': (0, 'hold the first frame until every enabled topic has this many '
                             'subscribers (playback for tests and benchmarks)', {
                                 'integer_range': [IntegerRange(from_value=0, to_value=1000)]}),
    'reliability': ('reliable', f'publisher reliability: {", ".join(RELIABILITY)}', {}),
    'qos_depth': (5, 'publisher queue depth', {'integer_range': [
        IntegerRange(from_value=1, to_value=1000)]}),
}


class ImageSourceNode(Node):
    """Timer-driven publisher: one frame per tick, stamped when it is published."""

    def __init__(self, **kwargs):
        super().__init__('image_source', **kwargs)
        for name, (default, description, extra) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, read_only=True, **extra))
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self._check(p)
        self.count, self.frame_id, self.encoding = p['count'], p['frame_id'], p['encoding']
        self.compressed_format, self.jpeg_quality = p['compressed_format'], p['jpeg_quality']
        self.wait_for_subscribers = p['wait_for_subscribers']

        spec = p['source'].strip()
        if spec == 'synthetic_video' or (p['publish_depth'] or p['publish_camera_info']):
            self.source = SyntheticRGBDSource(spec, width=p['width'], height=p['height'],
                                              seed=p['seed'], loop=p['loop'],
                                              length=p['sequence_length'])
        else:
            self.source = open_source(spec, loop=p['loop'], width=p['width'],
                                      height=p['height'], seed=p['seed'])
        qos = make_qos(p['reliability'], p['qos_depth'])
        self.raw_pub = self.create_publisher(Image, 'image', qos) if p['publish_raw'] else None
        self.compressed_pub = (self.create_publisher(CompressedImage, 'image/compressed', qos)
                               if p['publish_compressed'] else None)
        self.depth_pub = (self.create_publisher(Image, 'depth', qos)
                          if p['publish_depth'] else None)
        self.info_pub = (self.create_publisher(CameraInfo, 'camera_info', qos)
                         if p['publish_camera_info'] else None)
        self.published = 0
        self.longest_gap_s = 0.0  # longest time between two publishes: shows stalls
        self._last_publish = None
        self.done = False
        self.timer = self.create_timer(1.0 / p['rate'], self._tick)
        self.get_logger().info(
            f'publishing {self.source.description} at {p["rate"]:g} Hz as {self.encoding}'
            + (f', {self.count} frame(s)' if self.count else ''))

    @staticmethod
    def _check(p: dict) -> None:
        if p['encoding'] not in OUTPUT_ENCODINGS:
            raise ValueError(f'encoding must be one of {OUTPUT_ENCODINGS}, got {p["encoding"]!r}')
        if p['compressed_format'] not in ('jpeg', 'png'):
            raise ValueError(
                f'compressed_format must be jpeg or png, got {p["compressed_format"]!r}')
        if not (p['publish_raw'] or p['publish_compressed']):
            raise ValueError(
                'publish_raw and publish_compressed are both false: nothing to publish')
        if ((p['publish_depth'] or p['publish_camera_info'])
                and p['source'].strip() not in RGBD_SOURCES):
            raise ValueError('publish_depth and publish_camera_info need source "synthetic" or '
                             f'"synthetic_video" (no depth or intrinsics for {p["source"]!r})')

    def _tick(self) -> None:
        if self.done or not self._subscribers_ready():
            return
        frame = self.source.read()
        if frame is None:
            self._finish(f'source exhausted after {self.published} frame(s)')
            return
        pixels = convert_encoding(frame.pixels, frame.encoding, self.encoding)
        msg = Image()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        if self.raw_pub is not None:
            self.raw_pub.publish(numpy_to_image(pixels, self.encoding, msg=msg))
        if self.compressed_pub is not None:
            self.compressed_pub.publish(numpy_to_compressed(
                pixels, self.encoding, self.compressed_format, self.jpeg_quality, msg.header))
        if self.depth_pub is not None:
            self.depth_pub.publish(numpy_to_image(depth_to_png(self.source.depth), '16UC1',
                                                  header=msg.header))
        if self.info_pub is not None:
            self.info_pub.publish(camera_info(self.source.camera, msg.header))
        self.published += 1
        now = time.monotonic()
        if self._last_publish is not None:
            self.longest_gap_s = max(self.longest_gap_s, now - self._last_publish)
        self._last_publish = now
        if self.count and self.published >= self.count:
            self._finish(f'published {self.published} frame(s)')

    def _subscribers_ready(self) -> bool:
        if self.published or not self.wait_for_subscribers:
            return True
        publishers = [p for p in self._output_publishers() if p is not None]
        return all(p.get_subscription_count() >= self.wait_for_subscribers for p in publishers)

    def _output_publishers(self) -> tuple:
        return self.raw_pub, self.compressed_pub, self.depth_pub, self.info_pub

    def _finish(self, why: str) -> None:
        self.done = True
        self.timer.cancel()
        self.get_logger().info(f'{why}; exiting')

    def wait_for_delivery(self, timeout_s: float = 2.0) -> None:
        """Let reliable subscribers acknowledge the last frames before the process exits."""
        for pub in self._output_publishers():
            if pub is not None and pub.qos_profile.reliability == RELIABILITY['reliable']:
                pub.wait_for_all_acked(Duration(seconds=timeout_s))

    def destroy_node(self):
        self.source.close()
        super().destroy_node()


def camera_info(camera, header) -> CameraInfo:
    """CameraInfo of an undistorted pinhole camera (plumb_bob, zero distortion)."""
    msg = CameraInfo()
    msg.header = header
    msg.width, msg.height = camera.width, camera.height
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    msg.k = camera.k
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = camera.p
    return msg


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = ImageSourceNode()
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.wait_for_delivery()
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except (SourceError, ValueError, ImageConversionError) as error:
        logger = node.get_logger() if node else rclpy.logging.get_logger('image_source')
        logger.fatal(str(error))
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == '__main__':
    sys.exit(main())
