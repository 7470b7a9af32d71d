"""Defaults and names shared by the model, the runtime, the CLI, the ROS node and training.

One torch-free home, so ``tokenmask --help`` and the node's parameter declarations can
read them without importing PyTorch, and a changed default changes everywhere at once.
"""

from __future__ import annotations

#: Panoptic id = ``class_id * LABEL_DIVISOR + instance_id``; must exceed the query count.
LABEL_DIVISOR = 1000
#: Minimum class score of a query for its segment to be kept.
SCORE_THRESHOLD = 0.8
#: Minimum fraction of its mask a segment must keep after overlaps are resolved.
OVERLAP_THRESHOLD = 0.8
#: Mask probability threshold, fixed in the exported graph (sigmoid >= 0.5).
MASK_THRESHOLD = 0.5
#: Opacity of the class colours in overlays (contours and labels carry the segments).
OVERLAY_ALPHA = 0.35
#: Largest accepted input image (width * height); larger frames are refused before decoding.
MAX_IMAGE_PIXELS = 16_777_216

#: The deploy graph decodes full-resolution masks only for the DECODED_QUERIES best-scoring
#: queries (kept ones first): exact while at most that many queries pass the score
#: threshold, which covers typical scenes; more are reported and the lowest-scoring dropped.
DECODED_QUERIES = 64
#: How the deploy graph picks them: 'kept' decodes only the frame's kept queries (a
#: data-dependent count: onnxruntime, openvino, torch), 'fixed' always DECODED_QUERIES (static
#: shapes, which TensorRT needs).
SELECTIONS = ('kept', 'fixed')

#: Inference backends, and the order ``auto`` tries them in (openvino only for int8 on x86-64
#: CPUs, where it was measured faster than onnxruntime, and on Intel GPUs / NPUs:
#: docs/backends.md).
BACKENDS = ('torch', 'onnxruntime', 'openvino', 'tensorrt')
AUTO_ORDER = ('tensorrt', 'openvino', 'onnxruntime', 'torch')
#: Numeric precisions; ``auto`` = fp16 on a GPU, fp32 on the CPU (never int8: a calibrated
#: ONNX export for onnxruntime / openvino, asked for explicitly).
PRECISIONS = ('auto', 'fp32', 'fp16', 'int8')

#: Tracking: frames a thing track survives unseen (occlusion, a missed detection) before its
#: number may be reused, and the least (motion-compensated) mask IoU of a frame-to-frame match.
TRACK_MAX_AGE = 30
TRACK_MIN_IOU = 0.2

#: 3D from depth: a depth image / camera_info pairs with a colour frame when their stamps
#: differ by at most DEPTH_MAX_DELAY seconds; depths outside [DEPTH_MIN, DEPTH_MAX] metres
#: are ignored; the labelled cloud keeps every POINTS_STRIDE-th pixel in each direction.
DEPTH_MAX_DELAY = 0.05
DEPTH_MIN = 0.1
DEPTH_MAX = 20.0
POINTS_STRIDE = 4
