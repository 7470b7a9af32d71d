"""What every backend provides: run the deployed graph (:mod:`..graph`) on a batch of
canvases."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime.errors import BackendUnavailable

__all__ = ['Backend', 'BackendUnavailable', 'fit_content_size']


class Backend(ABC):
    """A loaded model that maps a letterboxed canvas to :class:`PanopticScores` (NumPy).

    ``name``: 'torch' | 'onnxruntime' | 'tensorrt'; ``device``: 'cpu' | 'cuda[:N]';
    ``precision``: 'fp32' | 'fp16'; ``input_size``: the fixed (H, W) of the canvas;
    ``decoded_queries``: how many queries the graph decodes (None: all of them);
    ``batch``: the images per call, fixed when the graph was exported (ONNX Runtime,
    TensorRT), or None when any batch runs (PyTorch). A caller with fewer images than a
    fixed ``batch`` pads (:meth:`~tokenmask_ros.runtime.Segmenter.segment_batch`).
    """

    name: str
    device: str
    precision: str
    input_size: tuple[int, int]
    decoded_queries: int | None = None
    batch: int | None = 1

    @abstractmethod
    def run(self, image: np.ndarray, content_size: np.ndarray,
            score_threshold: float) -> PanopticScores:
        """``image`` uint8 [B, 3, H, W], ``content_size`` int32 [B, 2] (each image's content
        (height, width)) or [2] (one size for all) -> NumPy outputs, batch first."""

    def check_batch(self, image: np.ndarray) -> None:
        """ValueError unless ``image`` is [B, 3, H, W] with this backend's batch and size
        (a fixed-shape graph would otherwise fail deep inside its runtime)."""
        expected = (self.batch, 3, *self.input_size)
        shape = tuple(np.shape(image))
        if len(shape) != 4 or shape[1:] != expected[1:] or (
                self.batch is not None and shape[0] != self.batch):
            wanted = 'B' if self.batch is None else self.batch
            raise ValueError(f'{self.name} backend runs images of shape [{wanted}, 3, '
                             f'{self.input_size[0]}, {self.input_size[1]}], got {list(shape)}')

    def close(self) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Release device memory and handles (idempotent)."""

    def describe(self) -> str:
        return f'{self.name} ({self.device}, {self.precision})'


def fit_content_size(content_size, shape: tuple[int, ...]) -> np.ndarray:
    """``content_size`` ([2] or [B, 2]) as an int32 array of the ``shape`` a fixed-shape
    graph declares: [2] for batch-1 exports, [B, 2] for batched ones (a shared [2] is
    repeated for every image). Anything else is a ValueError naming both shapes."""
    content = np.asarray(content_size, dtype=np.int32)
    shape = tuple(int(d) for d in shape)
    if content.shape == shape:
        return content
    if content.size == 2 and int(np.prod(shape)) == 2:  # [1, 2] <-> [2]
        return content.reshape(shape)
    if content.shape == (2,) and len(shape) == 2 and shape[1] == 2:
        return np.ascontiguousarray(np.broadcast_to(content, shape))
    raise ValueError(f'content_size must have shape {list(shape)} (or [2]), '
                     f'got {list(content.shape)}')


def graph_feed(image: np.ndarray, content_size, score_threshold: float,
               content_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The deploy graph's named inputs for a runtime that takes NumPy arrays (ONNX Runtime,
    OpenVINO): uint8 images, ``content_size`` fitted to the export's shape, the threshold."""
    from tokenmask_ros.runtime.graph import INPUT_NAMES

    return dict(zip(INPUT_NAMES, (
        np.ascontiguousarray(image, dtype=np.uint8),
        fit_content_size(content_size, content_shape),
        np.array([score_threshold], dtype=np.float32)), strict=True))
