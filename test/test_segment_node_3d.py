"""``segment_node``'s 3D outputs over real DDS: depth and camera_info paired by stamp.

One node for the module. A peer publishes depth and camera_info (early: before the colour
frame), then the colour frame, and waits for that frame's outputs. A frame that should get
no 3D is followed by a good one whose 3D outputs are awaited: each output comes from one
publisher, in order, so the bad frame's absence is then certain without a timing guess.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from conftest import spin_until

pytest.importorskip('rclpy')
pytest.importorskip('vision_msgs.msg')
import rclpy
from rcl_interfaces.msg import Log
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from tokenmask_ros.camera import PinholeCamera
from tokenmask_ros.depth3d import depth_to_metres, labelled_points, segment_boxes_3d
from tokenmask_ros.ros.conversions import image_to_numpy, numpy_to_image
from tokenmask_ros.ros.depth_pairing import stamp_ns
from tokenmask_ros.ros.pointcloud import cloud_to_points
from tokenmask_ros.ros.segment_node import SegmentNode
from tokenmask_ros.synthetic import SceneGenerator

pytestmark = pytest.mark.dds

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
NAMESPACE = '/t_3d'
HEIGHT, WIDTH = 120, 160
SCENE = SceneGenerator(height=HEIGHT, width=WIDTH, seed=3).scene(0)
CAMERA = PinholeCamera.from_fov(WIDTH, HEIGHT, 70.0)
# Depth grows down the rows (2 m at the top, 3.19 m at the bottom), in millimetres.
DEPTH_MM = np.repeat((2000 + 10 * np.arange(HEIGHT, dtype=np.uint16))[:, None], WIDTH, 1)
TOPICS = {'panoptic': Image, 'detections': Detection2DArray,
          'detections_3d': Detection3DArray, 'points': PointCloud2, 'markers': MarkerArray}
OUTPUTS_3D = ('detections_3d', 'points', 'markers')


class Harness:
    """The node under test, a peer node publishing its inputs, and what the peer heard."""

    def __init__(self):
        self.peer = rclpy.create_node('segment_node_3d_tester')
        self.node = SegmentNode(namespace=NAMESPACE, parameter_overrides=[
            Parameter('score_threshold', value=0.3)])
        self.executor = MultiThreadedExecutor(num_threads=2)
        for node in (self.peer, self.node):
            self.executor.add_node(node)
        self.logs: list[Log] = []
        self.peer.create_subscription(Log, '/rosout', self.logs.append, RELIABLE)
        self.outputs: dict[str, dict[int, object]] = defaultdict(dict)
        for name, msg_type in TOPICS.items():
            self.peer.create_subscription(
                msg_type, f'{NAMESPACE}/segment_node/{name}',
                lambda msg, name=name: self.outputs[name].__setitem__(
                    self._stamp_of(msg), msg), RELIABLE)
        self.image_pub = self.peer.create_publisher(Image, f'{NAMESPACE}/image', RELIABLE)
        self.depth_pub = self.peer.create_publisher(Image, f'{NAMESPACE}/depth', RELIABLE)
        self.info_pub = self.peer.create_publisher(CameraInfo, f'{NAMESPACE}/camera_info',
                                                   RELIABLE)
        self.stamp = 0
        assert self.spin_until(lambda: all(
            p.get_subscription_count() > 0 for p in (self.image_pub, self.depth_pub,
                                                     self.info_pub))
            and self.node.points_pub.get_subscription_count() > 0
            and self.node.markers_pub.get_subscription_count() > 0
            and self.node.detections_3d_pub.get_subscription_count() > 0)

    @staticmethod
    def _stamp_of(msg) -> int:
        header = msg.markers[0].header if isinstance(msg, MarkerArray) else msg.header
        return header.stamp.sec

    def spin_until(self, done, timeout: float = 60.0) -> bool:
        return spin_until(self.executor, done, timeout)

    def header(self, stamp: int, nanosec: int = 0):
        msg = Image().header
        msg.stamp.sec, msg.stamp.nanosec, msg.frame_id = stamp, nanosec, 'rgbd_optical'
        return msg

    def send(self, depth: Image | None = None, info: CameraInfo | None = None,
             late: bool = False, with_3d: bool = True) -> int:
        """Publish depth/camera_info (their stamps are set to the frame's unless set
        already), then the frame; wait for its 2D (and, ``with_3d``, 3D) outputs."""
        self.stamp += 1
        stamp = self.stamp
        extras = [m for m in (depth, info) if m is not None]
        for msg in extras:
            if msg.header.stamp.sec == 0:
                msg.header = self.header(stamp)
        if not late:
            self._publish_extras(depth, info)
        self.image_pub.publish(numpy_to_image(SCENE.image, 'rgb8', self.header(stamp)))
        wanted = ('panoptic', 'detections') + (OUTPUTS_3D if with_3d else ())
        assert self.spin_until(lambda: all(stamp in self.outputs[n] for n in wanted)), \
            f'no {wanted} for frame {stamp}'
        if late:
            self._publish_extras(depth, info)
        return stamp

    def _publish_extras(self, depth, info):
        """Publish, then wait until each message is in the node's pairing buffer."""
        pairing = self.node.pairing
        for msg, publisher, buffer in ((info, self.info_pub, pairing.camera_info),
                                       (depth, self.depth_pub, pairing.depth)):
            if msg is not None:
                publisher.publish(msg)
                assert self.spin_until(
                    lambda m=msg, b=buffer: b.nearest(stamp_ns(m.header), 0) is not None, 20)

    def send_without_3d(self, depth=None, info=None, late=False) -> int:
        """A frame that must get 2D and no 3D; proven by a good frame's 3D after it."""
        stamp = self.send(depth, info, late=late, with_3d=False)
        self.send(depth_msg(), info_msg())
        for name in OUTPUTS_3D:
            assert stamp not in self.outputs[name], name
        return stamp

    def log_lines(self, text: str) -> list[str]:
        return [log.msg for log in self.logs if text in log.msg and log.level == Log.WARN]


def depth_msg(pixels: np.ndarray = DEPTH_MM, encoding: str = '16UC1') -> Image:
    return numpy_to_image(pixels, encoding)


def info_msg(camera: PinholeCamera = CAMERA, **changes) -> CameraInfo:
    msg = CameraInfo(width=camera.width, height=camera.height, k=camera.k, p=camera.p)
    for name, value in changes.items():
        setattr(msg, name, value)
    return msg


@pytest.fixture(scope='module')
def rig(rclpy_context):
    harness = Harness()
    yield harness
    harness.executor.shutdown()
    harness.node.destroy_node()
    harness.peer.destroy_node()


def test_3d_outputs_match_the_2d_ids_and_the_depth(rig):
    stamp = rig.send(depth_msg(), info_msg())
    out = {name: rig.outputs[name][stamp] for name in TOPICS}
    for name in OUTPUTS_3D:
        header = out[name].markers[0].header if name == 'markers' else out[name].header
        assert header.frame_id == 'rgbd_optical', name
    panoptic = image_to_numpy(out['panoptic'])
    by_id = {d.id: d for d in out['detections'].detections}
    things = [d for d in out['detections'].detections if int(d.id) % 1000]
    assert things, 'the bundled model finds no thing at the low threshold'

    # Detection3DArray: the boxes depth3d computes from the published panoptic map, with
    # the same id, class and score as the 2D detection of the segment.
    depth_m = depth_to_metres(DEPTH_MM, '16UC1')
    boxes = segment_boxes_3d(panoptic, depth_m, CAMERA)
    detections_3d = out['detections_3d'].detections
    assert [d.id for d in detections_3d] == [i for i in by_id if int(i) in boxes]
    assert len(detections_3d) >= len(things)
    for detection in detections_3d:
        box, twin = boxes[int(detection.id)], by_id[detection.id]
        center, size = detection.bbox.center.position, detection.bbox.size
        assert (center.x, center.y, center.z) == pytest.approx(box.center)
        assert (size.x, size.y, size.z) == pytest.approx(box.size)
        assert detection.results[0].hypothesis.class_id == twin.results[0].hypothesis.class_id
        assert detection.results[0].hypothesis.score == twin.results[0].hypothesis.score
        assert 2.0 <= center.z <= 3.2  # the ramp's range
        if int(detection.id) % 1000:  # a thing (small): its centre projects into its 2D box
            u, v = CAMERA.project([center.x, center.y, center.z]) + 0.5
            x, y = twin.bbox.center.position.x, twin.bbox.center.position.y
            assert abs(u - x) <= twin.bbox.size_x / 2 + 2
            assert abs(v - y) <= twin.bbox.size_y / 2 + 2

    # The labelled cloud decodes back to depth3d's points; each point re-projects onto a
    # pixel of its own segment, with that pixel's colour.
    points = cloud_to_points(out['points'])
    np.testing.assert_array_equal(points, labelled_points(panoptic, SCENE.image, depth_m,
                                                          CAMERA, stride=4))
    assert len(points) > 100 and out['points'].is_dense
    uv = np.rint(CAMERA.project(np.stack([points['x'], points['y'], points['z']], -1)))
    cols, rows = uv[:, 0].astype(int), uv[:, 1].astype(int)
    np.testing.assert_array_equal(points['panoptic_id'], panoptic[rows, cols])
    np.testing.assert_array_equal(points['class_id'], points['panoptic_id'] // 1000)
    packed = points['rgb'].view(np.uint32)
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1)
    np.testing.assert_array_equal(rgb, SCENE.image[rows, cols])
    np.testing.assert_allclose(points['z'], DEPTH_MM[rows, cols] / 1000.0, rtol=1e-6)

    # Markers: DELETEALL first, a box per 3D detection, a "class #N" label per thing.
    markers = out['markers'].markers
    assert markers[0].action == Marker.DELETEALL
    lines = [m for m in markers if m.type == Marker.LINE_LIST]
    texts = [m for m in markers if m.type == Marker.TEXT_VIEW_FACING]
    assert len(lines) == len(detections_3d) and all(len(m.points) == 24 for m in lines)
    names = rig.node.class_names
    expected = sorted(f'{names[int(d.id) // 1000]} #{int(d.id) % 1000}' for d in detections_3d
                      if int(d.id) % 1000)
    assert sorted(m.text for m in texts) == expected


def test_late_stale_and_missing_depth_leave_the_frame_without_3d(rig):
    without = rig.node.stats.without_depth
    rig.send_without_3d(depth_msg(), info_msg(), late=True)  # after the frame was published
    stale = rig.header(rig.stamp + 1, 200_000_000)  # 0.2 s off: beyond depth_max_delay
    stale_depth, stale_info = depth_msg(), info_msg()
    stale_depth.header = stale_info.header = stale
    rig.send_without_3d(stale_depth, stale_info)
    rig.send_without_3d()  # nothing at all
    rig.send_without_3d(depth_msg())  # depth without camera_info
    assert rig.node.stats.without_depth >= without + 4
    assert rig.log_lines('no depth image and camera_info within depth_max_delay')


def test_a_longer_depth_max_delay_pairs_the_stale_depth(rig):
    try:
        assert rig.node.set_parameters([Parameter('depth_max_delay', value=0.5)])[0].successful
        stale = rig.header(rig.stamp + 1, 200_000_000)
        depth, info = depth_msg(), info_msg()
        depth.header = info.header = stale
        rig.send(depth, info)  # with 3D
    finally:
        rig.node.set_parameters([Parameter('depth_max_delay', value=0.05)])


@pytest.mark.parametrize(('make', 'warning'), [
    (lambda: (depth_msg(), info_msg(k=[0.0, 0, 80, 0, 0.0, 60, 0, 0, 1])),
     'focal length fx=0, fy=0 must be positive'),
    (lambda: (depth_msg(), info_msg(k=[np.nan] * 9)), 'K must be 9 finite numbers'),
    (lambda: (depth_msg(), info_msg(width=0)), 'camera_info has zero size'),
    (lambda: (depth_msg(DEPTH_MM.astype(np.uint8), 'mono8'), info_msg()),
     "depth encoding 'mono8' is not one of 16UC1, 32FC1"),
    (lambda: (short_depth(), info_msg()), 'less than step * height'),
])
def test_malformed_depth_or_camera_info_warns_once_per_kind_and_2d_goes_on(rig, make,
                                                                           warning):
    errors = rig.node.stats.errors
    for _ in range(2):  # the second of a kind is counted, not logged again
        rig.send_without_3d(*make())
    assert rig.node.stats.errors == errors + 2
    assert len(rig.log_lines(warning)) == 1


def short_depth() -> Image:
    msg = depth_msg()
    msg.data = bytes(100)
    return msg


@pytest.mark.parametrize(('pixels', 'encoding'), [
    (np.full((HEIGHT, WIDTH), np.nan, np.float32), '32FC1'),
    (np.full((HEIGHT, WIDTH), np.inf, np.float32), '32FC1'),
    (np.zeros((HEIGHT, WIDTH), np.uint16), '16UC1'),
])
def test_depth_without_valid_pixels_gives_empty_3d_outputs_not_errors(rig, pixels, encoding):
    errors = rig.node.stats.errors
    stamp = rig.send(depth_msg(pixels, encoding), info_msg())
    assert rig.outputs['detections_3d'][stamp].detections == []
    assert rig.outputs['points'][stamp].width == 0
    assert [m.action for m in rig.outputs['markers'][stamp].markers] == [Marker.DELETEALL]
    assert rig.node.stats.errors == errors


def test_depth_of_another_size_is_resized_with_one_warning(rig):
    half = DEPTH_MM[::2, ::2]
    for _ in range(2):
        stamp = rig.send(depth_msg(half), info_msg(CAMERA.scaled(WIDTH // 2, HEIGHT // 2)))
        ids_2d = {d.id for d in rig.outputs['detections'][stamp].detections}
        ids_3d = {d.id for d in rig.outputs['detections_3d'][stamp].detections}
        assert ids_3d and ids_3d <= ids_2d
        points = cloud_to_points(rig.outputs['points'][stamp])
        # Nearest: every depth is one of the half-size image's (2000 + 20 k mm), none blended.
        mm = points['z'].astype(np.float64) * 1000
        np.testing.assert_allclose(mm, 2000 + 20 * np.round((mm - 2000) / 20), atol=0.01)
    assert len(rig.log_lines('resized (nearest)')) == 1


def test_3d_parameters_have_ranges_and_depth_min_stays_below_depth_max(rig):
    node = rig.node
    for name, value in (('points_stride', 0), ('depth_max_delay', -1.0),
                        ('depth_min', -0.5), ('depth_max', 2000.0)):
        assert not node.set_parameters([Parameter(name, value=value)])[0].successful, name
    [result] = node.set_parameters([Parameter('depth_min', value=30.0)])
    assert not result.successful and 'depth_min (30.0) must be below depth_max' in result.reason
    try:
        assert node.set_parameters([Parameter('points_stride', value=8),
                                    Parameter('depth_max', value=2.5)])[0].successful
        stamp = rig.send(depth_msg(), info_msg())
        points = cloud_to_points(rig.outputs['points'][stamp])
        assert len(points) and points['z'].max() <= 2.5
        assert len(points) <= (HEIGHT // 8) * (WIDTH // 8)
    finally:
        node.set_parameters([Parameter('points_stride', value=4),
                             Parameter('depth_max', value=20.0)])
