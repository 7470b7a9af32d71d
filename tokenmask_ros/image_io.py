"""Image files written the one checked way, and encoded images read the one safe way.

Writing: folders made, failures raised, RGB kept RGB.

``cv2.imwrite`` reports a failed write (a full disk, a folder where the file should go, an
unwritable path) only by returning ``False``; a caller that ignores it loses the image
silently. Every writer in the package and in ``training/`` goes through here instead.

Reading: ``cv2.imdecode`` allocates whatever size a header declares, so a tiny file can
ask for gigabytes. :func:`decode_image` reads the declared size first (Pillow, header
only) and refuses an image over the caller's pixel limit before decoding anything.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


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
    is_jpeg = Path(path).suffix.lower() in ('.jpg', '.jpeg')
    # OpenCV warns once per write about a JPEG key given to another codec: pass it to JPEG only.
    params = () if jpeg_quality is None or not is_jpeg else (cv2.IMWRITE_JPEG_QUALITY,
                                                             int(jpeg_quality))
    return write_bgr(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)


# --- reading: the header's size is checked before a single pixel is decoded -------------

class ImageTooLargeError(ValueError):
    """An image's header declares more pixels than the caller allows."""


# Pillow's own decompression-bomb guard is a process-wide setting; it is lifted only while
# Pillow reads a header here (our limit is checked right after), under this lock.
_PILLOW_LIMIT_LOCK = threading.Lock()


def declared_image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` that an encoded image's header declares, no pixels decoded.

    Pillow reads only the header; a 600-byte JPEG can declare 32768x32768. Formats Pillow
    cannot identify are refused, so no format slips past the size check unread.
    """
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (OSError, ValueError, SyntaxError, struct.error, IndexError, TypeError,
                EOFError, Image.DecompressionBombError) as error:
            raise ValueError(f'not a readable image ({len(data)} bytes): unknown format or '
                             f'corrupt header ({type(error).__name__})') from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    if width <= 0 or height <= 0:
        raise ValueError(f'not a readable image: its header declares {width}x{height} pixels')
    return int(width), int(height)


def decode_image(data: bytes, max_pixels: int, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) with OpenCV once its header passes the limit.

    :class:`ImageTooLargeError` (a ValueError), before any pixel is decoded, when the header
    declares more than ``max_pixels``; ValueError (never raw OpenCV text) when the data
    does not decode. ``data`` is any bytes-like object.
    """
    width, height = declared_image_size(data)
    if width * height > max_pixels:
        raise ImageTooLargeError(f'image declares {width}x{height} = {width * height} pixels, '
                                 f'more than max_image_pixels {max_pixels}')
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        raise ValueError(f'not a readable image: OpenCV refuses to decode its {width}x{height} '
                         'pixels (over its own size limit, or corrupt data)') from None
    if pixels is None or pixels.size == 0:
        raise ValueError(f'not a readable image: its {width}x{height} pixels could not be '
                         'decoded (truncated or corrupt data)')
    if pixels.shape[0] * pixels.shape[1] > max_pixels:  # a decoder that disagrees with Pillow
        raise ImageTooLargeError(f'image decodes to {pixels.shape[1]}x{pixels.shape[0]} pixels, '
                                 f'more than max_image_pixels {max_pixels}')
    return pixels


def read_image_file(path: str | Path, max_pixels: int,
                    flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """:func:`decode_image` on a file's bytes; OSError (with the path) when it cannot be read.

    ValueErrors name the file too.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return decode_image(data, max_pixels, flags)
    except ValueError as error:
        raise type(error)(f'{path}: {error}') from None
