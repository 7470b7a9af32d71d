"""``Segmenter``: camera frame in, :class:`~tokenmask_ros.model.postprocess.Prediction` out.

Three stages, each timed (``last_timing``, milliseconds) for benchmarks and diagnostics:

1. preprocess (host): letterbox into a reused canvas (:mod:`.preprocess`);
2. inference (backend): the deployed graph (:mod:`.graph`) returns compact tensors at the
   network input resolution;
3. postprocess (host): crop the padding off the integer segment map, resize it (nearest)
   to the frame's size, and do the segment bookkeeping
   (:func:`~tokenmask_ros.model.postprocess.decode_panoptic`).

All backends run the same graph, so they agree up to floating-point noise. Arguments are
checked against the model file's config before a backend is built (a TensorRT build takes
minutes); a backend built by a Segmenter that then fails to start is closed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tokenmask_ros.defaults import BACKENDS, PRECISIONS
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

log = logging.getLogger('tokenmask_ros.runtime')


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
        _check_fraction(name, value)
    if (isinstance(label_divisor, bool) or not isinstance(label_divisor, int | np.integer)
            or label_divisor <= num_queries):
        raise ValueError(f'label_divisor must be an integer above the number of queries '
                         f'({num_queries}), got {label_divisor!r}')


def _check_fraction(name: str, value: float) -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float | np.number)
            or not 0.0 <= float(value) <= 1.0):
        raise ValueError(f'{name} must be a number in [0, 1], got {value!r}')


def check_options(backend: str, device: str, precision: str, max_pixels: int | None) -> None:
    """ValueError naming the first bad backend / device / precision name or ``max_pixels``."""
    if backend not in ('auto', *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}, "
                         f'got {backend!r}')
    if not isinstance(device, str) or not (
            device in ('auto', 'cpu', 'cuda')
            or (device.startswith('cuda:') and device[5:].isdigit())):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, '
                         f'got {precision!r}')
    if max_pixels is not None and (isinstance(max_pixels, bool)
                                   or not isinstance(max_pixels, int | np.integer)
                                   or max_pixels < 4):
        raise ValueError(f'max_pixels must be None or an integer of at least 4 (2x2), '
                         f'got {max_pixels!r}')


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
        check_options(backend, device, precision, max_pixels)
        self.config: TokenMaskConfig = model_config(model_path)  # metadata only: cheap
        check_thresholds(score_threshold, overlap_threshold, label_divisor,
                         self.config.num_queries)
        # A checkpoint without class information: every class is a thing.
        self.is_thing = thing_flags(self.config.classes or None, self.config.num_classes)
        self._thresholds = (float(score_threshold), float(overlap_threshold))
        self.label_divisor = int(label_divisor)
        self.max_pixels = max_pixels
        self.last_timing = Timing()
        #: Frames where more queries passed the score threshold than the graph decodes.
        self.capped_frames = 0
        self._canvas: np.ndarray | None = None
        self.backend: Backend = create_backend(
            backend, model_path, device=device, precision=precision, cache_dir=cache_dir,
            force_engine_update=force_engine_update, compile=compile)
        try:
            self.input_size = tuple(int(s) for s in self.backend.input_size)
            expected = tuple(int(s) for s in self.config.img_size)
            if self.input_size != expected:
                raise ValueError(f'{self.backend.describe()} runs {self.input_size} inputs but '
                                 f'the model config says {expected}: export the model again')
        except BaseException:
            self.backend.close()
            raise

    @property
    def score_threshold(self) -> float:
        return self._thresholds[0]

    @property
    def overlap_threshold(self) -> float:
        return self._thresholds[1]

    def set_thresholds(self, score_threshold: float | None = None,
                       overlap_threshold: float | None = None) -> None:
        """Check, then apply, new thresholds (None keeps the current one); both change
        together, so a frame being segmented meanwhile uses either the old or the new pair."""
        score = self.score_threshold if score_threshold is None else score_threshold
        overlap = self.overlap_threshold if overlap_threshold is None else overlap_threshold
        _check_fraction('score_threshold', score)
        _check_fraction('overlap_threshold', overlap)
        self._thresholds = (float(score), float(overlap))

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.config.classes]

    def __call__(self, image: np.ndarray) -> Prediction:
        """Segment one RGB ``(H, W, 3)`` uint8 frame; the result has the frame's size."""
        start = time.perf_counter()
        score_threshold, overlap_threshold = self._thresholds  # one consistent pair
        image = check_image(image, self.max_pixels)
        if self._canvas is None:
            self._canvas = np.zeros((*self.input_size, 3), np.uint8)
        canvas, box = letterbox(image, self.input_size, out=self._canvas)
        content = np.array(box.content_size, np.int32)
        prepared = time.perf_counter()
        scores = self.backend.run(canvas, content, score_threshold)
        inferred = time.perf_counter()
        self._report_cap(scores)
        content_h, content_w = box.content_size
        segment_map = scores.segment_map[0, :content_h, :content_w]
        if segment_map.shape != image.shape[:2]:
            segment_map = cv2.resize(segment_map, (image.shape[1], image.shape[0]),
                                     interpolation=cv2.INTER_NEAREST)
        scores = scores._replace(segment_map=segment_map[None])
        prediction = decode_panoptic(scores, self.is_thing,
                                     overlap_threshold=overlap_threshold,
                                     label_divisor=self.label_divisor)
        done = time.perf_counter()
        self.last_timing = Timing(1e3 * (prepared - start), 1e3 * (inferred - prepared),
                                  1e3 * (done - inferred))
        return prediction

    def _report_cap(self, scores) -> None:
        """Warn (on the 1st, 10th, 100th, ... such frame) when more queries passed the
        threshold than the graph decodes: the lowest-scoring of them were dropped."""
        cap = self.backend.decoded_queries
        if cap is None or cap >= self.config.num_queries:
            return
        kept = int(np.count_nonzero(scores.keep[0]))
        if kept <= cap:
            return
        self.capped_frames += 1
        if np.log10(self.capped_frames).is_integer():
            log.warning('%d queries passed the score threshold but the graph decodes the best '
                        '%d; the rest were dropped (%d frame(s) so far). Raise '
                        'score_threshold, or export with more decoded queries',
                        kept, cap, self.capped_frames)

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
