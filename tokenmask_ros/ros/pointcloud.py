"""NumPy structured arrays to and from sensor_msgs/PointCloud2.

``sensor_msgs_py`` (ROS 2's ``point_cloud2`` helpers) has no pip wheel, so this module does
its two jobs: one copy from a structured array into a message, and a validated zero-copy
view of a message's data as a structured array. Every field of the message (names,
offsets, datatypes, counts, point_step, row_step, data length) is checked before the data
is viewed, so a malformed cloud raises :class:`CloudError` instead of reading garbage.
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

#: PointField datatype constant <-> little-endian NumPy dtype.
FIELD_DTYPES = {
    PointField.INT8: np.dtype('i1'), PointField.UINT8: np.dtype('u1'),
    PointField.INT16: np.dtype('<i2'), PointField.UINT16: np.dtype('<u2'),
    PointField.INT32: np.dtype('<i4'), PointField.UINT32: np.dtype('<u4'),
    PointField.FLOAT32: np.dtype('<f4'), PointField.FLOAT64: np.dtype('<f8'),
}
_DATATYPES = {dtype.newbyteorder('<'): code for code, dtype in FIELD_DTYPES.items()}
MAX_POINTS = 1 << 28  # a backstop against absurd width x height


class CloudError(ValueError):
    """A PointCloud2 or a points array cannot be converted; the text names the field."""


def points_to_cloud(points: np.ndarray, header=None) -> PointCloud2:
    """An unorganised cloud (height 1) holding ``points``, a 1-D structured array.

    Fields are scalar numeric fields of the dtype (stored little-endian, one copy);
    ``is_dense`` is true when ``x``, ``y`` and ``z`` (if present) are all finite.
    """
    points = np.asarray(points)
    if points.dtype.names is None or points.ndim != 1:
        raise CloudError(f'points must be a 1-D structured array, got {points.dtype} with '
                         f'shape {points.shape}')
    fields, little = [], []
    for name in points.dtype.names:
        dtype, offset = points.dtype.fields[name][:2]
        code = _DATATYPES.get(dtype.newbyteorder('<'))
        if code is None or dtype.shape:
            raise CloudError(f'field {name!r} has dtype {dtype}; PointCloud2 fields are '
                             'scalar int8..int32, uint8..uint32, float32 or float64')
        fields.append(PointField(name=name, offset=offset, datatype=code, count=1))
        little.append((name, dtype.newbyteorder('<')))
    layout = np.dtype({'names': [n for n, _ in little], 'formats': [d for _, d in little],
                       'offsets': [f.offset for f in fields],
                       'itemsize': points.dtype.itemsize})
    data = points.astype(layout, copy=False)  # a copy only if the byte order changes
    msg = PointCloud2(height=1, width=len(points), fields=fields, is_bigendian=False,
                      point_step=layout.itemsize, row_step=layout.itemsize * len(points))
    if header is not None:
        msg.header = header
    xyz = [n for n in ('x', 'y', 'z') if n in layout.names]
    msg.is_dense = bool(all(np.isfinite(data[n]).all() for n in xyz))
    buffer = array.array('B')  # the rosidl setter takes array('B') as is (bytes: per byte)
    buffer.frombytes(np.ascontiguousarray(data).data.cast('B'))
    msg.data = buffer
    return msg


def cloud_dtype(msg: PointCloud2) -> np.dtype:
    """The structured dtype one point of ``msg`` has, after validating its fields."""
    if msg.is_bigendian:
        raise CloudError('big-endian clouds are not supported')
    step = int(msg.point_step)
    if step <= 0:
        raise CloudError(f'point_step {step} must be positive')
    names, formats, offsets = [], [], []
    for field in msg.fields:
        dtype = FIELD_DTYPES.get(field.datatype)
        if dtype is None:
            raise CloudError(f'field {field.name!r} has unknown datatype {field.datatype}')
        if field.count < 1:
            raise CloudError(f'field {field.name!r} has count {field.count}')
        if field.name in names or not field.name:
            raise CloudError(f'field name {field.name!r} is empty or repeated')
        if field.count > 1:
            dtype = np.dtype((dtype, (field.count,)))
        if field.offset < 0 or field.offset + dtype.itemsize > step:
            raise CloudError(f'field {field.name!r} (offset {field.offset}, '
                             f'{dtype.itemsize} bytes) does not fit in point_step {step}')
        names.append(field.name)
        formats.append(dtype)
        offsets.append(field.offset)
    if not names:
        raise CloudError('the cloud has no fields')
    return np.dtype({'names': names, 'formats': formats, 'offsets': offsets, 'itemsize': step})


def cloud_to_points(msg: PointCloud2) -> np.ndarray:
    """``msg``'s points as a read-only structured array of shape (width * height,).

    A zero-copy view of ``msg.data`` (row padding beyond ``width * point_step`` skipped by
    a copy only when present); raises :class:`CloudError` on any inconsistent field.
    """
    dtype = cloud_dtype(msg)
    width, height, row_step = int(msg.width), int(msg.height), int(msg.row_step)
    if width < 0 or height < 0 or width * height > MAX_POINTS:
        raise CloudError(f'cloud size {width}x{height} is absurd')
    if row_step < width * dtype.itemsize:
        raise CloudError(f'row_step {row_step} is smaller than width * point_step '
                         f'({width} * {dtype.itemsize})')
    data = np.frombuffer(msg.data, np.uint8)  # array('B') as received: no copy
    if data.size < row_step * height:
        raise CloudError(f'data has {data.size} bytes, less than row_step * height '
                         f'({row_step} * {height})')
    raw = data[:row_step * height]
    if row_step == width * dtype.itemsize:
        points = raw.view(dtype)
    else:
        rows = raw.reshape(height, row_step)[:, :width * dtype.itemsize]
        points = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    points.flags.writeable = False
    return points
