"""Image files written the one checked way: folders made, failures raised, RGB kept RGB.

``cv2.imwrite`` reports a failed write (a full disk, a folder where the file should go, an
unwritable path) only by returning ``False``; a caller that ignores it loses the image
silently. Every writer in the package and in ``training/`` goes through here instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def write_bgr(path: str | Path, bgr: np.ndarray, params: Sequence[int] = ()) -> Path:
    """Write an OpenCV-order (BGR) image, making the parent folders; OSError when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), bgr, list(params)):
        raise OSError(f'cannot write {path}')
    return path


def write_rgb(path: str | Path, rgb: np.ndarray, jpeg_quality: int | None = None) -> Path:
    """Write an RGB image (how the package holds images) to PNG, JPEG or any cv2 format.

    ``jpeg_quality`` (0-100) applies to JPEG files; OpenCV's default (95) otherwise.
    """
    params = () if jpeg_quality is None else (cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality))
    return write_bgr(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
