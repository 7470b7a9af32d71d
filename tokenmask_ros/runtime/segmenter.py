"""``Segmenter``: camera frame in, :class:`~tokenmask_ros.model.postprocess.Prediction` out.

Three stages, each timed (``last_timing``, milliseconds) for benchmarks and diagnostics:

1. preprocess (host): letterbox into a reused canvas (:mod:`.preprocess`);
2. inference (backend): the deployed graph (:mod:`.graph`) returns compact tensors at the
   network input resolution;
3. postprocess (host): crop the padding off the integer segment map, resize it (nearest)
   to the frame's size, and do the segment bookkeeping
   (:func:`~tokenmask_ros.model.postprocess.decode_panoptic`).

:meth:`Segmenter.segment_batch` does the same for several frames (several cameras) in one
backend call: each frame is letterboxed into its own slot of a reused ``[B, H, W, 3]``
canvas with its own content size, so frames of different sizes share a batch. A backend
whose batch is fixed at export (ONNX Runtime, TensorRT: ``batch`` images per call) gets
its empty slots as content ``(0, 0)``: nothing there is decoded, but the network still
runs on them, which costs little on a GPU (the batch runs in parallel) and about one
frame each on a CPU. PyTorch runs the frames as they are, without padding.

All backends run the same graph, so they agree up to floating-point noise. Arguments are
checked against the model file's config before a backend is built (a TensorRT build takes
minutes); a backend built by a Segmenter that then fails to start is closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
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
from tokenmask_ros.runtime.backends import (
    OPENVINO_DEVICE,
    Backend,
    check_device,
    check_threads,
    create_backend,
)
from tokenmask_ros.runtime.preprocess import InputError, check_image, letterbox

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
    check_device(device)
    if OPENVINO_DEVICE.match(device) and backend != 'openvino':
        raise ValueError(f"device {device!r} is an OpenVINO device name (Intel GPU / NPU): "
                         "use it with backend 'openvino'")
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
                 max_pixels: int | None = None, batch: int = 1, threads: int | None = None):
        check_options(backend, device, precision, max_pixels)
        check_threads(threads)
        if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
            raise ValueError(f'batch must be an integer >= 1, got {batch!r}')
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
        self._canvas: np.ndarray | None = None  # [slots, H, W, 3], reused across calls
        self.backend: Backend = create_backend(
            backend, model_path, device=device, precision=precision, cache_dir=cache_dir,
            force_engine_update=force_engine_update, compile=compile, batch=int(batch),
            threads=threads)
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
        return self.segment_batch([image])[0]

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Segment RGB ``(H, W, 3)`` uint8 frames (any sizes) in as few backend calls as the
        backend's batch allows; one :class:`Prediction` per frame, in order, each at its
        frame's size. Every frame is checked before anything runs, so a bad one raises
        :class:`~tokenmask_ros.runtime.preprocess.InputError` without costing inference.
        ``last_timing`` adds up the stages over all the calls."""
        stages = np.zeros(3)  # seconds: preprocess, inference, postprocess
        mark = time.perf_counter()
        score_threshold, overlap_threshold = self._thresholds  # one consistent pair
        images = [check_image(image, self.max_pixels) for image in images]
        if not images:
            raise InputError('segment_batch needs at least one image')
        slots = self.backend.batch or len(images)  # None: PyTorch runs any batch
        predictions: list[Prediction] = []
        for first in range(0, len(images), slots):
            chunk = images[first:first + slots]
            canvas = self._slots(slots)
            # Empty slots (a fixed-batch graph with fewer frames) keep whatever pixels they
            # hold: content (0, 0) means nothing there is labelled or counted.
            content = np.zeros((slots, 2), np.int32)
            for index, image in enumerate(chunk):
                _, box = letterbox(image, self.input_size, out=canvas[index])
                content[index] = box.content_size
            prepared = time.perf_counter()
            scores = self.backend.run(canvas.transpose(0, 3, 1, 2), content, score_threshold)
            inferred = time.perf_counter()
            predictions += [self._decode(scores, index, image, content[index],
                                         overlap_threshold)
                            for index, image in enumerate(chunk)]
            finished = time.perf_counter()
            stages += (prepared - mark, inferred - prepared, finished - inferred)
            mark = finished
        self.last_timing = Timing(*(1e3 * stages))
        return predictions

    def _slots(self, slots: int) -> np.ndarray:
        """The reused ``[slots, H, W, 3]`` canvas (a new one only when ``slots`` changes)."""
        if self._canvas is None or self._canvas.shape[0] != slots:
            self._canvas = np.zeros((slots, *self.input_size, 3), np.uint8)
        return self._canvas

    def _decode(self, scores, index: int, image: np.ndarray, content: np.ndarray,
                overlap_threshold: float) -> Prediction:
        """The prediction of batch slot ``index``: crop the padding off its segment map,
        resize it (nearest) to ``image``'s size, then the segment bookkeeping."""
        self._report_cap(scores, index)
        content_h, content_w = (int(v) for v in content)
        segment_map = scores.segment_map[index, :content_h, :content_w]
        if segment_map.shape != image.shape[:2]:
            segment_map = cv2.resize(segment_map, (image.shape[1], image.shape[0]),
                                     interpolation=cv2.INTER_NEAREST)
        single = scores._replace(segment_map=segment_map[None], **{
            name: getattr(scores, name)[index:index + 1]
            for name in scores._fields if name != 'segment_map'})
        return decode_panoptic(single, self.is_thing, overlap_threshold=overlap_threshold,
                               label_divisor=self.label_divisor)

    def _report_cap(self, scores, index: int = 0) -> None:
        """Warn (on the 1st, 10th, 100th, ... such frame) when more queries passed the
        threshold than the graph decodes: the lowest-scoring of them were dropped."""
        cap = self.backend.decoded_queries
        if cap is None or cap >= self.config.num_queries:
            return
        kept = int(np.count_nonzero(scores.keep[index]))
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
