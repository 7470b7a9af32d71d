"""vision_msgs (ours or upstream) has upstream's fields and type hashes, and travels over DDS."""

from __future__ import annotations

import json
import time
from pathlib import Path

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
    'BoundingBox3D': {'center': 'geometry_msgs/Pose', 'size': 'geometry_msgs/Vector3'},
    'BoundingBox3DArray': {'header': 'std_msgs/Header',
                           'boxes': 'sequence<vision_msgs/BoundingBox3D>'},
    'Detection3D': {'header': 'std_msgs/Header',
                    'results': 'sequence<vision_msgs/ObjectHypothesisWithPose>',
                    'bbox': 'vision_msgs/BoundingBox3D', 'id': 'string'},
    'Detection3DArray': {'header': 'std_msgs/Header',
                         'detections': 'sequence<vision_msgs/Detection3D>'},
}

# RIHS01 type hashes of upstream's messages: obtained by building ros-perception/vision_msgs
# 4.1.1 (tag 4.1.1, commit e77fa2d97d69abaaa546592892d2d5d16cec9977) with colcon and the rosidl
# of ROS 2 Kilted from requirements/ros-build.txt (geometry_msgs / std_msgs 5.5.1), read from
# its install/vision_msgs/share/vision_msgs/msg/<Name>.json. A subscriber only connects to a
# publisher with the same hash, so ours must equal these on the wire.
UPSTREAM_TYPE_HASHES = {
    'BoundingBox2D': 'RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f',
    'BoundingBox3D': 'RIHS01_bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698',
    'BoundingBox3DArray':
        'RIHS01_a81938db9576b10c2eecd7c5a5da3eac496efd00221b25ed051dfbc81fb56da6',
    'Detection2D': 'RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea',
    'Detection2DArray': 'RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968',
    'Detection3D': 'RIHS01_ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b',
    'Detection3DArray': 'RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018',
    'LabelInfo': 'RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783',
    'ObjectHypothesis': 'RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90',
    'ObjectHypothesisWithPose':
        'RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc',
    'Point2D': 'RIHS01_eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247',
    'Pose2D': 'RIHS01_b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648',
    'VisionClass': 'RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a',
}


@pytest.mark.parametrize('name', sorted(UPSTREAM_FIELDS))
def test_message_fields_match_upstream_in_order(name):
    fields = getattr(vision_msgs, name).get_fields_and_field_types()
    assert list(fields.items()) == list(UPSTREAM_FIELDS[name].items())


def test_every_message_we_ship_has_a_golden_hash():
    assert sorted(UPSTREAM_TYPE_HASHES) == sorted(UPSTREAM_FIELDS)


def test_type_hashes_announced_over_dds_match_upstream(ros_node):
    """The hash a publisher announces in discovery is what remote subscribers match on."""
    announced = {}
    for name in sorted(UPSTREAM_TYPE_HASHES):
        topic = f'/test_vm/hash/{name}'
        ros_node.create_publisher(getattr(vision_msgs, name), topic, 1)
        infos = ros_node.get_publishers_info_by_topic(topic)
        assert [info.topic_type for info in infos] == [f'vision_msgs/msg/{name}']
        announced[name] = str(infos[0].topic_type_hash)
    assert announced == UPSTREAM_TYPE_HASHES


@pytest.mark.parametrize('name', sorted(UPSTREAM_TYPE_HASHES))
def test_installed_type_description_matches_upstream(name):
    """The installed type description: upstream's hash, and no default values (4.1.1 has none)."""
    from ament_index_python.packages import get_package_share_directory

    path = Path(get_package_share_directory('vision_msgs')) / 'msg' / f'{name}.json'
    description = json.loads(path.read_text())
    own_hash = description['type_hashes'][0]
    assert own_hash == {'type_name': f'vision_msgs/msg/{name}',
                        'hash_string': UPSTREAM_TYPE_HASHES[name]}
    message = description['type_description_msg']['type_description']
    assert [field['name'] for field in message['fields']] == list(UPSTREAM_FIELDS[name])
    assert [field['default_value'] for field in message['fields']] == [''] * len(message['fields'])


def test_detections_and_latched_label_info_cross_dds(ros_node):
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    label_pub = ros_node.create_publisher(vision_msgs.LabelInfo, '/test_vm/label_info', latched)
    det_pub = ros_node.create_publisher(vision_msgs.Detection2DArray, '/test_vm/detections', 10)
    det3_pub = ros_node.create_publisher(vision_msgs.Detection3DArray, '/test_vm/detections_3d', 10)
    info = vision_msgs.LabelInfo(threshold=0.8, class_map=[
        vision_msgs.VisionClass(class_id=i, class_name=n) for i, n in enumerate(['floor', 'disc'])])
    label_pub.publish(info)  # before anyone subscribes: transient-local must still deliver it

    listener = rclpy.create_node('vision_msgs_listener')
    got_info, got_dets, got_dets3 = [], [], []
    listener.create_subscription(vision_msgs.LabelInfo, '/test_vm/label_info', got_info.append,
                                 latched)
    listener.create_subscription(vision_msgs.Detection2DArray, '/test_vm/detections',
                                 got_dets.append, 10)
    listener.create_subscription(vision_msgs.Detection3DArray, '/test_vm/detections_3d',
                                 got_dets3.append, 10)
    detection = vision_msgs.Detection2D(id='2001')
    detection.bbox.center.position.x, detection.bbox.center.position.y = 12.5, 30.0
    detection.bbox.size_x, detection.bbox.size_y = 5.0, 8.0
    hypothesis = vision_msgs.ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = '2', 0.93
    detection.results.append(hypothesis)
    detection3 = vision_msgs.Detection3D(id='2001', results=[hypothesis])
    detection3.bbox.center.position.z, detection3.bbox.size.x = 2.5, 0.4
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(ros_node)
    executor.add_node(listener)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (got_info and got_dets and got_dets3):
            det_pub.publish(vision_msgs.Detection2DArray(detections=[detection]))
            det3_pub.publish(vision_msgs.Detection3DArray(detections=[detection3]))
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
    received3 = got_dets3[0].detections[0]
    assert received3.id == '2001'
    assert (received3.bbox.center.position.z, received3.bbox.size.x) == (2.5, 0.4)
    assert received3.results[0].hypothesis.class_id == '2'
