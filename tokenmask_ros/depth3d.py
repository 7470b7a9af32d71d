"""3D from a registered depth image: per-segment boxes and a labelled point cloud.

NumPy only (no ROS, no torch), so the node, the demo and the benchmarks share one
implementation. Points are in the camera's optical frame (x right, y down, z forward, metres),
back-projected with :class:`tokenmask_ros.camera.PinholeCamera`. Depth that is zero, NaN,
infinite, negative or outside ``[min_depth, max_depth]`` is ignored, as are void pixels
(panoptic id < 0); the work is vectorised over pixels and loops over segments only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenmask_ros.camera import PinholeCamera
from tokenmask_ros.defaults import DEPTH_MAX, DEPTH_MIN, LABEL_DIVISOR, POINTS_STRIDE

#: Depth image encodings understood, with their units per metre (millimetres, metres).
DEPTH_UNITS_PER_METRE = {'16UC1': 1000.0, '32FC1': 1.0}
#: One point of the labelled cloud; ``rgb`` holds 0x00RRGGBB bits viewed as float32 (PCL).
POINT_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4'),
                        ('class_id', '<i4'), ('panoptic_id', '<i4')])
#: Percentiles (of each axis) that bound a box: robust to stray edge pixels.
BOX_PERCENTILES = (5.0, 95.0)


@dataclass(frozen=True)
class Box3D:
    """Axis-aligned box of a segment: median centre, 5..95 percentile size, points it used."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    num_points: int


#: Pixels the 3D boxes are computed from at most (a 320x240 frame's worth): larger frames are
#: subsampled with :func:`box_stride`, which keeps the 3D cost a small share of the segmenter.
BOX_SAMPLE_PIXELS = 320 * 240


def box_stride(height: int, width: int) -> int:
    """Pixel stride for :func:`segment_boxes_3d` so that at most about BOX_SAMPLE_PIXELS are
    back-projected: 1 up to 320x240, 2 at 640x480, 4 at 1280x960. Medians and percentiles
    of a segment barely move under a regular subsampling, while the cost falls with stride^2.
    """
    return max(1, int(np.ceil(np.sqrt(height * width / BOX_SAMPLE_PIXELS) - 1e-9)))


def depth_to_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """A depth image as float32 metres with NaN where invalid (0, NaN, inf or negative).

    ``16UC1`` holds millimetres (uint16), ``32FC1`` metres (float); anything else, or data
    whose shape or dtype does not fit the encoding, raises ValueError.
    """
    if encoding not in DEPTH_UNITS_PER_METRE:
        raise ValueError(f'depth encoding must be one of {", ".join(DEPTH_UNITS_PER_METRE)}, '
                         f'got {str(encoding)[:32]!r}')
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f'depth image must be a non-empty (H, W) array, got shape {depth.shape}')
    if encoding == '16UC1' and not (depth.dtype.kind == 'u' and depth.dtype.itemsize == 2):
        raise ValueError(f'16UC1 depth must be uint16 millimetres, got dtype {depth.dtype}')
    if encoding == '32FC1' and depth.dtype.kind != 'f':
        raise ValueError(f'32FC1 depth must be floating-point metres, got dtype {depth.dtype}')
    metres = depth.astype(np.float32)
    if encoding == '16UC1':
        metres /= np.float32(DEPTH_UNITS_PER_METRE[encoding])  # division: 1500 mm is 1.5 exactly
    metres[~(np.isfinite(metres) & (metres > 0))] = np.nan
    return metres


def segment_boxes_3d(panoptic: np.ndarray, depth_m: np.ndarray, camera: PinholeCamera, *,
                     min_depth: float = DEPTH_MIN, max_depth: float = DEPTH_MAX,
                     min_points: int = 10, stride: int = 1) -> dict[int, Box3D]:
    """``{panoptic id: Box3D}`` for every segment (things and stuff) with at least
    ``min_points`` valid depth pixels among every ``stride``-th row and column; a segment
    without enough valid depth is absent (never NaN). Centre: per-axis median of its
    back-projected pixels; size: per-axis 5th..95th percentile extent.
    """
    if int(min_points) < 1:
        raise ValueError(f'min_points must be >= 1, got {min_points}')
    rows, cols, ids, z = _valid_pixels(panoptic, depth_m, camera, stride, min_depth, max_depth)
    if not len(ids):
        return {}
    points = np.empty((3, len(ids)), np.float32)
    _back_project(camera, cols, rows, z, *points)
    order = np.argsort(ids, kind='stable')  # row-major runs: quick; one slice per segment
    ids, points = ids[order], np.take(points, order, axis=1)  # take: quicker than [:, order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # one run per segment
    ends = np.r_[starts[1:], len(ids)]
    boxes = {}
    for start, end in zip(starts, ends, strict=True):
        if end - start < min_points:
            continue
        lo, center, hi = _percentiles(points[:, start:end], (BOX_PERCENTILES[0], 50.0,
                                                            BOX_PERCENTILES[1]))
        boxes[int(ids[start])] = Box3D(tuple(map(float, center)), tuple(map(float, hi - lo)),
                                       int(end - start))
    return boxes


def _percentiles(values: np.ndarray, q: tuple[float, ...]) -> list[np.ndarray]:
    """np.percentile(values, q, axis=1) (its default linear method) with one partition: a
    fraction of np.percentile's per-call overhead, which dominated with ~10 segments."""
    positions = np.asarray(q) / 100.0 * (values.shape[1] - 1)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, values.shape[1] - 1)
    part = np.partition(values, np.unique(np.r_[below, above]), axis=1)
    weight = positions - below
    return [part[:, b] + (part[:, a] - part[:, b]) * w
            for b, a, w in zip(below, above, weight, strict=True)]


def labelled_points(panoptic: np.ndarray, rgb: np.ndarray, depth_m: np.ndarray,
                    camera: PinholeCamera, *, stride: int = POINTS_STRIDE,
                    min_depth: float = DEPTH_MIN, max_depth: float = DEPTH_MAX,
                    label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    """Every ``stride``-th pixel (rows and columns) with valid depth and a segment, as a
    :data:`POINT_DTYPE` array in row-major pixel order: position, packed colour of ``rgb``
    ((H, W, 3) uint8 RGB), class id (``panoptic_id // label_divisor``) and panoptic id."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'rgb must be an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}')
    if rgb.shape[:2] != np.shape(panoptic):
        raise ValueError(f'rgb {rgb.shape[:2]} and panoptic {np.shape(panoptic)} differ in size')
    if int(label_divisor) < 1:
        raise ValueError(f'label_divisor must be >= 1, got {label_divisor}')
    rows, cols, ids, z = _valid_pixels(panoptic, depth_m, camera, stride, min_depth, max_depth)
    out = np.empty(len(ids), POINT_DTYPE)
    _back_project(camera, cols, rows, z, out['x'], out['y'], out['z'])
    out['rgb'] = pack_rgb(rgb[rows, cols])
    out['class_id'] = ids // int(label_divisor)
    out['panoptic_id'] = ids
    return out


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) float32 holding 0x00RRGGBB bits, as PCL's ``rgb`` field."""
    colors = np.asarray(colors, np.uint32)
    packed = colors[..., 0] << 16 | colors[..., 1] << 8 | colors[..., 2]
    return packed.astype('<u4').view('<f4')


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pack_rgb`: (...) float32 -> (..., 3) uint8 RGB."""
    bits = np.ascontiguousarray(packed, '<f4').view('<u4')
    return np.stack([bits >> 16, bits >> 8, bits], -1).astype(np.uint8)


def _valid_pixels(panoptic, depth_m, camera, stride, min_depth, max_depth):
    """Rows, columns, panoptic ids and depths of every ``stride``-th pixel (rows and
    columns) that has a segment (id >= 0) and depth in range (NaN dropped), row-major."""
    panoptic, depth_m = np.asarray(panoptic), np.asarray(depth_m)
    if panoptic.ndim != 2 or panoptic.dtype.kind not in 'iu':
        raise ValueError(f'panoptic must be an (H, W) integer map, got {panoptic.dtype} '
                         f'{panoptic.shape}')
    if depth_m.shape != panoptic.shape or depth_m.dtype.kind != 'f':
        raise ValueError(f'depth must be (H, W) float metres like panoptic {panoptic.shape}, '
                         f'got {depth_m.dtype} {depth_m.shape}')
    if (camera.height, camera.width) != panoptic.shape:
        raise ValueError(f'camera is {camera.width}x{camera.height} but the image '
                         f'{panoptic.shape[1]}x{panoptic.shape[0]}: use camera.scaled()')
    if isinstance(stride, bool) or int(stride) != stride or stride < 1:
        raise ValueError(f'stride must be an integer >= 1, got {stride}')
    if not 0 <= min_depth < max_depth:
        raise ValueError(f'need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}')
    stride = int(stride)
    z = depth_m[::stride, ::stride]
    with np.errstate(invalid='ignore'):  # NaN compares False: dropped
        keep = (panoptic[::stride, ::stride] >= 0) & (z > 0) & (z >= min_depth) & (z <= max_depth)
    flat = np.flatnonzero(keep)  # much quicker than a 2D np.nonzero
    rows, cols = np.divmod(flat, keep.shape[1])
    return rows * stride, cols * stride, panoptic[::stride, ::stride][keep], z[keep]


def _back_project(camera: PinholeCamera, u, v, z, x_out, y_out, z_out) -> None:
    """PinholeCamera.back_project's formula for pixels (u, v) at depths z, written into the
    float32 arrays ``x_out``, ``y_out``, ``z_out``: no temporaries (fresh pages are costly)."""
    z_out[...] = z
    np.subtract(u, camera.cx, out=x_out, casting='unsafe')
    x_out *= z_out
    x_out /= camera.fx
    np.subtract(v, camera.cy, out=y_out, casting='unsafe')
    y_out *= z_out
    y_out /= camera.fy
