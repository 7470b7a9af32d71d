"""What every backend provides: run the deployed graph (:mod:`..graph`) on one canvas."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime.errors import BackendUnavailable

__all__ = ['Backend', 'BackendUnavailable']


class Backend(ABC):
    """A loaded model that maps a letterboxed canvas to :class:`PanopticScores` (NumPy).

    ``name``: 'torch' | 'onnxruntime' | 'tensorrt'; ``device``: 'cpu' | 'cuda[:N]';
    ``precision``: 'fp32' | 'fp16'; ``input_size``: the fixed (H, W) of the canvas;
    ``decoded_queries``: how many queries the graph decodes (None: all of them).
    """

    name: str
    device: str
    precision: str
    input_size: tuple[int, int]
    decoded_queries: int | None = None

    @abstractmethod
    def run(self, image: np.ndarray, content_size: np.ndarray,
            score_threshold: float) -> PanopticScores:
        """``image`` uint8 [1, 3, H, W], ``content_size`` int32 [2] -> NumPy outputs."""

    def close(self) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Release device memory and handles (idempotent)."""

    def describe(self) -> str:
        return f'{self.name} ({self.device}, {self.precision})'
