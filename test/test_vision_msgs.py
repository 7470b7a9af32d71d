"""vision_msgs (ours or upstream) has upstream's field layout and travels over DDS."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.dds
vision_msgs = pytest.importorskip('vision_msgs.msg')

# Field names and types of ros-perception/vision_msgs 4.x: the wire format depends on them.
UPSTREAM_FIELDS = {
    'Point2D': {'x': 'double', 'y': 'double'},
    'Pose2D': {'position': 'vision_msgs/Point2D', 'theta': 'double'},
    'BoundingBox2D': {'center': 'vision_msgs/Pose2D', 'size_x': 'double', 'size_y': 'double'},
    'ObjectHypothesis': {'class_id': 'string', 'score': 'double'},
    'ObjectHypothesisWithPose': {'hypothesis': 'vision_msgs/ObjectHypothesis',
                                 'pose': 'geometry_msgs/PoseWithCovariance'},
    'Detection2D': {'header': 'std_msgs/Header',
                    'results': 'sequence<vision_msgs/ObjectHypothesisWithPose>',
                    'bbox': 'vision_msgs/BoundingBox2D', 'id': 'string'},
    'Detection2DArray': {'header': 'std_msgs/Header',
                         'detections': 'sequence<vision_msgs/Detection2D>'},
    'VisionClass': {'class_id': 'uint16', 'class_name': 'string'},
    'LabelInfo': {'header': 'std_msgs/Header', 'class_map': 'sequence<vision_msgs/VisionClass>',
                  'threshold': 'float'},
}


@pytest.mark.parametrize('name', sorted(UPSTREAM_FIELDS))
def test_message_fields_match_upstream_in_order(name):
    fields = getattr(vision_msgs, name).get_fields_and_field_types()
    assert list(fields.items()) == list(UPSTREAM_FIELDS[name].items())


def test_detections_and_latched_label_info_cross_dds(ros_node):
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    label_pub = ros_node.create_publisher(vision_msgs.LabelInfo, '/test_vm/label_info', latched)
    det_pub = ros_node.create_publisher(vision_msgs.Detection2DArray, '/test_vm/detections', 10)
    info = vision_msgs.LabelInfo(threshold=0.8, class_map=[
        vision_msgs.VisionClass(class_id=i, class_name=n) for i, n in enumerate(['floor', 'disc'])])
    label_pub.publish(info)  # before anyone subscribes: transient-local must still deliver it

    listener = rclpy.create_node('vision_msgs_listener')
    got_info, got_dets = [], []
    listener.create_subscription(vision_msgs.LabelInfo, '/test_vm/label_info', got_info.append,
                                 latched)
    listener.create_subscription(vision_msgs.Detection2DArray, '/test_vm/detections',
                                 got_dets.append, 10)
    detection = vision_msgs.Detection2D(id='2001')
    detection.bbox.center.position.x, detection.bbox.center.position.y = 12.5, 30.0
    detection.bbox.size_x, detection.bbox.size_y = 5.0, 8.0
    hypothesis = vision_msgs.ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = '2', 0.93
    detection.results.append(hypothesis)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(ros_node)
    executor.add_node(listener)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (got_info and got_dets):
            det_pub.publish(vision_msgs.Detection2DArray(detections=[detection]))
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        listener.destroy_node()
    assert [(c.class_id, c.class_name) for c in got_info[0].class_map] == [(0, 'floor'),
                                                                            (1, 'disc')]
    assert got_info[0].threshold == pytest.approx(0.8)
    received = got_dets[0].detections[0]
    assert received.id == '2001'
    assert (received.bbox.center.position.x, received.bbox.size_y) == (12.5, 8.0)
    assert received.results[0].hypothesis.class_id == '2'
    assert received.results[0].hypothesis.score == pytest.approx(0.93)
