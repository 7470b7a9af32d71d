"""PointCloud2 <-> structured arrays: round trips, the wire layout, and malformed clouds."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg')
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from tokenmask_ros.ros.pointcloud import CloudError, cloud_to_points, points_to_cloud

POINT = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4'),
                  ('class_id', '<i4'), ('panoptic_id', '<i4')])


def sample_points(n=7) -> np.ndarray:
    rng = np.random.default_rng(0)
    points = np.zeros(n, POINT)
    for name in ('x', 'y', 'z'):
        points[name] = rng.normal(size=n)
    points['rgb'] = np.array([0x00FF8001] * n, np.uint32).view(np.float32)
    points['class_id'] = rng.integers(0, 9, n)
    points['panoptic_id'] = points['class_id'] * 1000 + np.arange(n)
    return points


def test_round_trip_keeps_every_field_and_the_header():
    points = sample_points()
    header = Header(frame_id='camera_optical')
    header.stamp.sec = 42
    msg = points_to_cloud(points, header)
    assert msg.header == header
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 7, 24, 168)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1),
        ('z', 8, PointField.FLOAT32, 1), ('rgb', 12, PointField.FLOAT32, 1),
        ('class_id', 16, PointField.INT32, 1), ('panoptic_id', 20, PointField.INT32, 1)]
    assert msg.is_dense and not msg.is_bigendian
    back = cloud_to_points(msg)
    assert back.dtype == POINT
    np.testing.assert_array_equal(back, points)
    assert not back.flags.writeable


def test_wire_bytes_are_little_endian_whatever_the_input_byte_order():
    points = np.zeros(2, [('x', '>f4'), ('label', '>u2')])
    points['x'] = [1.5, -2.0]
    points['label'] = [258, 7]
    msg = points_to_cloud(points)
    data = bytes(msg.data)
    assert data[:4] == np.array(1.5, '<f4').tobytes()
    assert data[4:6] == bytes([2, 1])  # 258 little-endian
    back = cloud_to_points(msg)
    assert back['x'].tolist() == [1.5, -2.0] and back['label'].tolist() == [258, 7]


def test_survives_serialisation_over_the_wire_format():
    from rclpy.serialization import deserialize_message, serialize_message

    points = sample_points(50)
    msg = deserialize_message(serialize_message(points_to_cloud(points)), PointCloud2)
    np.testing.assert_array_equal(cloud_to_points(msg), points)


def test_non_finite_coordinates_clear_is_dense_and_empty_clouds_work():
    points = sample_points(3)
    points['z'][1] = np.nan
    assert not points_to_cloud(points).is_dense
    empty = points_to_cloud(np.zeros(0, POINT))
    assert empty.width == 0 and len(empty.data) == 0
    assert cloud_to_points(empty).shape == (0,)


def test_row_padding_is_skipped():
    points = sample_points(4)
    msg = points_to_cloud(points[:2])
    padded = bytes(msg.data) + b'\xee' * 8
    msg2 = points_to_cloud(points[2:])
    padded += bytes(msg2.data) + b'\xee' * 8
    msg.height, msg.width, msg.row_step = 2, 2, 2 * 24 + 8
    msg.data = padded
    np.testing.assert_array_equal(cloud_to_points(msg), points)


def test_unsupported_arrays_are_refused():
    with pytest.raises(CloudError, match='structured'):
        points_to_cloud(np.zeros((3, 3), np.float32))
    with pytest.raises(CloudError, match='complex'):
        points_to_cloud(np.zeros(3, [('x', '<f4'), ('c', 'c8')]))


def malformed(**changes) -> PointCloud2:
    msg = points_to_cloud(sample_points(4))
    for name, value in changes.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(('changes', 'message'), [
    ({'point_step': 0}, 'point_step 0'),
    ({'point_step': 20}, "'panoptic_id'.*does not fit in point_step 20"),
    ({'row_step': 50}, 'row_step 50 is smaller'),
    ({'data': bytes(50)}, 'data has 50 bytes'),
    ({'width': 5}, 'row_step 96 is smaller'),
    ({'is_bigendian': True}, 'big-endian'),
    ({'fields': []}, 'no fields'),
    ({'fields': [PointField(name='x', offset=0, datatype=99, count=1)]}, 'unknown datatype'),
    ({'fields': [PointField(name='x', offset=0, datatype=7, count=1),
                 PointField(name='x', offset=4, datatype=7, count=1)]}, 'repeated'),
    ({'fields': [PointField(name='x', offset=0, datatype=7, count=0)]}, 'count 0'),
    ({'height': 1 << 20, 'width': 1 << 20}, 'absurd'),
])
def test_malformed_clouds_raise_a_clear_error(changes, message):
    with pytest.raises(CloudError, match=message):
        cloud_to_points(malformed(**changes))
