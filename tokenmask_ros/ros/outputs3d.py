"""The node's 3D messages: vision_msgs/Detection3DArray and visualization_msgs/MarkerArray.

Both are built from the per-segment boxes of :func:`tokenmask_ros.depth3d.segment_boxes_3d`
(camera optical frame: x right, y down, z forward, metres) and carry the colour image's
header, so a consumer joins them with the 2D outputs by stamp and by id: a Detection3D's
``id`` is the same panoptic id string as its Detection2D's.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker, MarkerArray

LINE_WIDTH = 0.01  # metres: box edges in rviz
TEXT_HEIGHT = 0.08  # metres: height of a label's capital letters in rviz
# The 12 edges of a box as pairs of corner indices; corner i has bit 0/1/2 = +x/+y/+z side.
_EDGES = [(a, a | bit) for bit in (1, 2, 4) for a in range(8) if not a & bit]
_CORNER_SIGNS = np.array([[(i >> k & 1) * 2 - 1 for k in range(3)] for i in range(8)], float)


def detections_3d_message(prediction, boxes: dict, header) -> Detection3DArray:
    """One Detection3D per segment of ``prediction`` that has a box in ``boxes`` (things
    and stuff), in the segments' order; ``results[0]`` as in the 2D detection, its pose at
    the box centre."""
    out = Detection3DArray(header=header)
    for segment in prediction.segments:
        box = boxes.get(int(segment.id))
        if box is None:
            continue
        detection = Detection3D(header=header, id=str(segment.id))
        center = detection.bbox.center
        center.position.x, center.position.y, center.position.z = map(float, box.center)
        size = detection.bbox.size
        size.x, size.y, size.z = map(float, box.size)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(segment.class_id)
        hypothesis.hypothesis.score = float(segment.score)
        hypothesis.pose.pose.position = center.position
        detection.results.append(hypothesis)
        out.detections.append(detection)
    return out


def box_edges(center, size) -> list[Point]:
    """The 24 end points of a box's 12 edges (a LINE_LIST marker's ``points``)."""
    corners = np.asarray(center, float) + _CORNER_SIGNS * np.asarray(size, float) / 2
    return [Point(x=float(c[0]), y=float(c[1]), z=float(c[2]))
            for edge in _EDGES for c in corners[list(edge)]]


def markers_message(prediction, boxes: dict, header, class_names, class_colors,
                    label_divisor: int) -> MarkerArray:
    """A DELETEALL (stale boxes vanish), then a LINE_LIST box per segment with a box, in its
    class colour, and a "class #track" TEXT_VIEW_FACING label above each thing's box."""
    out = MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])
    colors = np.asarray(class_colors, np.float64).reshape(-1, 3) / 255.0
    for index, segment in enumerate(prediction.segments):
        box = boxes.get(int(segment.id))
        if box is None:
            continue
        class_id = int(segment.class_id)
        rgb = colors[class_id] if 0 <= class_id < len(colors) else (1.0, 1.0, 1.0)
        color = ColorRGBA(r=float(rgb[0]), g=float(rgb[1]), b=float(rgb[2]), a=1.0)
        marker = Marker(header=header, ns='boxes', id=index, type=Marker.LINE_LIST,
                        action=Marker.ADD, color=color, points=box_edges(box.center, box.size))
        marker.pose.orientation.w = 1.0
        marker.scale.x = LINE_WIDTH
        out.markers.append(marker)
        if not segment.is_thing:
            continue
        name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
        label = Marker(header=header, ns='labels', id=index, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, color=color,
                       text=f'{name} #{int(segment.id) % label_divisor}')
        label.pose.position.x, label.pose.position.z = float(box.center[0]), float(box.center[2])
        # Optical frame: y points down, so "above the box" is its smallest y.
        label.pose.position.y = float(box.center[1] - box.size[1] / 2 - TEXT_HEIGHT)
        label.pose.orientation.w = 1.0
        label.scale.z = TEXT_HEIGHT
        out.markers.append(label)
    return out
