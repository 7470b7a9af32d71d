"""EoMT's padded inference preprocessing for camera frames, on the host, in one pass.

The image is resized so that it just fits the network input (the longer side fills it,
aspect ratio kept) straight into a zero canvas, which is then viewed as NCHW. OpenCV does
the resize (area filter when shrinking, which is the antialiased resize EoMT's torchvision
path does; bilinear when enlarging); nothing iterates over pixels in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from tokenmask_ros.model.postprocess import Letterbox


class InputError(ValueError):
    """The image cannot be segmented (wrong shape, dtype or size); the message says why."""


def check_image(image: np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """``image`` as an ``(H, W, 3)`` uint8 array, or :class:`InputError` naming the problem."""
    if not isinstance(image, np.ndarray):
        raise InputError(f'expected a NumPy array, got {type(image).__name__}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f'expected an RGB image of shape (H, W, 3), got {image.shape}')
    if image.dtype != np.uint8:
        raise InputError(f'expected uint8 pixels, got {image.dtype}')
    height, width = image.shape[:2]
    if height < 2 or width < 2:
        raise InputError(f'image of {width}x{height} pixels is too small to segment '
                         '(at least 2x2)')
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(f'image of {width}x{height} pixels exceeds the limit of '
                         f'{max_pixels} pixels')
    return image


def letterbox(image: np.ndarray, input_size: Sequence[int],
              out: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
    """``(canvas [1, 3, H, W] uint8, Letterbox)`` for an RGB ``(h, w, 3)`` uint8 ``image``.

    ``out`` (an ``(H, W, 3)`` uint8 C-contiguous array) is reused when given, so a camera
    stream allocates the canvas once. The returned canvas is a transposed *view* of it.
    """
    image = check_image(image)
    box = Letterbox.fit(image.shape[:2], input_size)
    in_h, in_w = box.input_size
    if out is None or out.shape != (in_h, in_w, 3) or out.dtype != np.uint8:
        out = np.zeros((in_h, in_w, 3), np.uint8)
    content_h, content_w = box.content_size
    target = out[:content_h, :content_w]
    if (content_h, content_w) == image.shape[:2]:
        target[...] = image
    else:
        shrinking = content_h * content_w < image.shape[0] * image.shape[1]
        cv2.resize(image, (content_w, content_h), dst=target,
                   interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    out[content_h:] = 0
    out[:content_h, content_w:] = 0
    return out.transpose(2, 0, 1)[None], box
