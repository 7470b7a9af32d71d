"""``Segmenter``: camera frame in, :class:`~tokenmask_ros.model.postprocess.Prediction` out.

Three stages, each timed (``last_timing``, milliseconds) for benchmarks and diagnostics:

1. preprocess (host): letterbox into a reused canvas (:mod:`.preprocess`);
2. inference (backend): the deployed graph (:mod:`.graph`) returns compact tensors at the
   network input resolution;
3. postprocess (host): crop the padding off the integer segment map, resize it (nearest)
   to the frame's size, and do the segment bookkeeping
   (:func:`~tokenmask_ros.model.postprocess.decode_panoptic`).

All backends run the same graph, so they agree up to floating-point noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tokenmask_ros.model import TokenMaskConfig
from tokenmask_ros.model.postprocess import (
    LABEL_DIVISOR,
    OVERLAP_THRESHOLD,
    SCORE_THRESHOLD,
    Prediction,
    decode_panoptic,
    thing_flags,
)
from tokenmask_ros.runtime.backends import Backend, create_backend
from tokenmask_ros.runtime.preprocess import check_image, letterbox


@dataclass
class Timing:
    """Milliseconds spent in each stage of the last call."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0

    @property
    def total(self) -> float:
        return self.preprocess + self.inference + self.postprocess


def check_thresholds(score_threshold: float, overlap_threshold: float,
                     label_divisor: int, num_queries: int) -> None:
    """ValueError naming the first bad value (shared by the Segmenter and the ROS node)."""
    for name, value in (('score_threshold', score_threshold),
                        ('overlap_threshold', overlap_threshold)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f'{name} must be in [0, 1], got {value}')
    if int(label_divisor) <= num_queries:
        raise ValueError(f'label_divisor must exceed the number of queries ({num_queries}), '
                         f'got {label_divisor}')


class Segmenter:
    """Panoptic segmentation of RGB uint8 frames with the chosen backend.

    >>> segmenter = Segmenter('models/tokenmask_vit_tiny_synthetic.safetensors')
    >>> prediction = segmenter(rgb)          # rgb: (H, W, 3) uint8
    >>> prediction.panoptic.shape == rgb.shape[:2]
    True
    """

    def __init__(self, model_path: str | Path, backend: str = 'auto', device: str = 'auto',
                 precision: str = 'auto', *, score_threshold: float = SCORE_THRESHOLD,
                 overlap_threshold: float = OVERLAP_THRESHOLD,
                 label_divisor: int = LABEL_DIVISOR, cache_dir: str | Path | None = None,
                 force_engine_update: bool = False, compile: bool = False,
                 max_pixels: int | None = None):
        self.backend: Backend = create_backend(
            backend, model_path, device=device, precision=precision, cache_dir=cache_dir,
            force_engine_update=force_engine_update, compile=compile)
        self.config: TokenMaskConfig = model_config(model_path)
        # A checkpoint without class information: every class is a thing.
        self.is_thing = thing_flags(self.config.classes or None, self.config.num_classes)
        self.score_threshold = score_threshold
        self.overlap_threshold = overlap_threshold
        self.label_divisor = label_divisor
        check_thresholds(score_threshold, overlap_threshold, label_divisor,
                         self.config.num_queries)
        self.max_pixels = max_pixels
        self.input_size = tuple(self.backend.input_size)
        self.last_timing = Timing()
        self._canvas: np.ndarray | None = None

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.config.classes]

    def __call__(self, image: np.ndarray) -> Prediction:
        """Segment one RGB ``(H, W, 3)`` uint8 frame; the result has the frame's size."""
        start = time.perf_counter()
        image = check_image(image, self.max_pixels)
        if self._canvas is None:
            self._canvas = np.zeros((*self.input_size, 3), np.uint8)
        canvas, box = letterbox(image, self.input_size, out=self._canvas)
        content = np.array(box.content_size, np.int32)
        prepared = time.perf_counter()
        scores = self.backend.run(canvas, content, float(self.score_threshold))
        inferred = time.perf_counter()
        content_h, content_w = box.content_size
        segment_map = scores.segment_map[0, :content_h, :content_w]
        if segment_map.shape != image.shape[:2]:
            segment_map = cv2.resize(segment_map, (image.shape[1], image.shape[0]),
                                     interpolation=cv2.INTER_NEAREST)
        scores = scores._replace(segment_map=segment_map[None])
        prediction = decode_panoptic(scores, self.is_thing,
                                     overlap_threshold=self.overlap_threshold,
                                     label_divisor=self.label_divisor)
        done = time.perf_counter()
        self.last_timing = Timing(1e3 * (prepared - start), 1e3 * (inferred - prepared),
                                  1e3 * (done - inferred))
        return prediction

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def model_config(model_path: str | Path) -> TokenMaskConfig:
    """The model config stored in a checkpoint's or an exported ONNX file's metadata."""
    path = Path(model_path)
    if path.suffix == '.onnx':
        from tokenmask_ros.runtime.export import read_onnx_config

        return read_onnx_config(path)
    from tokenmask_ros.model import load_config

    return load_config(path)
