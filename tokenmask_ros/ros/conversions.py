"""sensor_msgs/Image and CompressedImage <-> NumPy, with cv_bridge's encoding names.

ROS 2 ``cv_bridge`` has no pip wheel, and PyPI's ``cv-bridge`` is an old ROS 1 port with a
16UC1 bug, so this module does the conversion itself: raw images become zero-copy NumPy
views over the message buffer (row padding from ``step`` is kept as a stride, never copied),
compressed images are decoded with OpenCV once their header's declared size passes the
caller's pixel limit (:func:`tokenmask_ros.image_io.decode_image`). Every malformed message
raises :class:`ImageConversionError` naming the problem, before any indexing with its
fields and with sender-chosen text (encoding, format) quoted short; OpenCV's own error text
never reaches the caller.

This module only touches message *fields*, so it works with any object shaped like
sensor_msgs/Image; it imports the message classes lazily when it has to build one.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from tokenmask_ros.defaults import MAX_IMAGE_PIXELS
from tokenmask_ros.image_io import ImageTooLargeError, decode_image

# Images larger than this are rejected as corrupt instead of allocated (about a 16k x 16k
# RGBA frame); it also keeps width * height * channels far away from integer overflow.
MAX_IMAGE_BYTES = 1 << 30
MAX_SIDE = 1 << 15


QUOTE_LIMIT = 64  # characters of sender-chosen text (encoding, format) an error quotes


class ImageConversionError(ValueError):
    """A message cannot be converted: the text names the field and the problem.

    ``kind`` is one of :data:`ERROR_KINDS`, never text from the message, so a node can
    rate-limit its logs per kind of fault without a sender inventing new kinds.
    """

    def __init__(self, text: str, kind: str = 'malformed'):
        super().__init__(text)
        self.kind = kind


#: The kinds of conversion fault (:attr:`ImageConversionError.kind`).
ERROR_KINDS = ('unsupported encoding', 'not a picture', 'bad size', 'bad step', 'short data',
               'too large', 'no data', 'undecodable', 'malformed')


def quoted(text, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of sender-chosen text cut to ``limit`` characters (marked), for messages."""
    text = str(text)
    return repr(text) if len(text) <= limit else f'{text[:limit]!r}... ({len(text)} chars)'


@dataclass(frozen=True)
class Encoding:
    """Memory layout of one ROS image encoding."""

    dtype: np.dtype
    channels: int

    @property
    def pixel_bytes(self) -> int:
        return self.dtype.itemsize * self.channels


def _layout(dtype: str, channels: int) -> Encoding:
    return Encoding(np.dtype(dtype), channels)


# The encodings of sensor_msgs/image_encodings.hpp that robots publish in practice.
ENCODINGS: dict[str, Encoding] = {
    'rgb8': _layout('u1', 3),
    'bgr8': _layout('u1', 3),
    'rgba8': _layout('u1', 4),
    'bgra8': _layout('u1', 4),
    'rgb16': _layout('u2', 3),
    'bgr16': _layout('u2', 3),
    'mono8': _layout('u1', 1),
    'mono16': _layout('u2', 1),
    '8UC1': _layout('u1', 1),
    '8UC3': _layout('u1', 3),
    '8UC4': _layout('u1', 4),
    '16UC1': _layout('u2', 1),
    '16SC1': _layout('i2', 1),
    '32SC1': _layout('i4', 1),
    '32FC1': _layout('f4', 1),
    '64FC1': _layout('f8', 1),
    # Packed 4:2:2, two bytes per pixel: UYVY and YUYV byte orders.
    'yuv422': _layout('u1', 2),
    'uyvy': _layout('u1', 2),
    'yuv422_yuy2': _layout('u1', 2),
    'yuyv': _layout('u1', 2),
}

# Colour conversions OpenCV performs for us, keyed by (source, target) encoding.
_COLOR_CONVERSIONS: dict[tuple[str, str], int] = {
    ('rgb8', 'bgr8'): cv2.COLOR_RGB2BGR,
    ('bgr8', 'rgb8'): cv2.COLOR_BGR2RGB,
    ('rgba8', 'bgra8'): cv2.COLOR_RGBA2BGRA,
    ('bgra8', 'rgba8'): cv2.COLOR_BGRA2RGBA,
    ('rgba8', 'rgb8'): cv2.COLOR_RGBA2RGB,
    ('rgba8', 'bgr8'): cv2.COLOR_RGBA2BGR,
    ('bgra8', 'bgr8'): cv2.COLOR_BGRA2BGR,
    ('bgra8', 'rgb8'): cv2.COLOR_BGRA2RGB,
    ('rgb8', 'rgba8'): cv2.COLOR_RGB2RGBA,
    ('rgb8', 'bgra8'): cv2.COLOR_RGB2BGRA,
    ('bgr8', 'bgra8'): cv2.COLOR_BGR2BGRA,
    ('bgr8', 'rgba8'): cv2.COLOR_BGR2RGBA,
    ('mono8', 'rgb8'): cv2.COLOR_GRAY2RGB,
    ('mono8', 'bgr8'): cv2.COLOR_GRAY2BGR,
    ('mono8', 'rgba8'): cv2.COLOR_GRAY2RGBA,
    ('mono8', 'bgra8'): cv2.COLOR_GRAY2BGRA,
    ('rgb8', 'mono8'): cv2.COLOR_RGB2GRAY,
    ('bgr8', 'mono8'): cv2.COLOR_BGR2GRAY,
    ('rgba8', 'mono8'): cv2.COLOR_RGBA2GRAY,
    ('bgra8', 'mono8'): cv2.COLOR_BGRA2GRAY,
}
for _yuv, _code_rgb, _code_bgr in (
    ('yuv422', cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2BGR_UYVY),
    ('uyvy', cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2BGR_UYVY),
    ('yuv422_yuy2', cv2.COLOR_YUV2RGB_YUY2, cv2.COLOR_YUV2BGR_YUY2),
    ('yuyv', cv2.COLOR_YUV2RGB_YUY2, cv2.COLOR_YUV2BGR_YUY2),
):
    _COLOR_CONVERSIONS[(_yuv, 'rgb8')] = _code_rgb
    _COLOR_CONVERSIONS[(_yuv, 'bgr8')] = _code_bgr

# Encodings that share a memory layout and meaning (cv_bridge treats them as equal).
_ALIASES = {'8UC1': 'mono8', '16UC1': 'mono16', '8UC3': 'bgr8', '8UC4': 'bgra8'}


def encoding_layout(encoding: str) -> Encoding:
    """The dtype and channel count of ``encoding``; raises for unknown names."""
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        known = ', '.join(sorted(ENCODINGS))
        raise ImageConversionError(
            f'unsupported image encoding {quoted(encoding)} (supported: {known})',
            'unsupported encoding') from None


def _check_size(width: int, height: int, what: str = 'image') -> None:
    if not isinstance(width, (int, np.integer)) or not isinstance(height, (int, np.integer)):
        raise ImageConversionError(f'{what} width/height must be integers, got '
                                   f'{type(width).__name__}/{type(height).__name__}', 'bad size')
    if width <= 0 or height <= 0:
        raise ImageConversionError(f'{what} has zero size ({width}x{height})', 'bad size')
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageConversionError(
            f'{what} size {width}x{height} is absurd (limit {MAX_SIDE} pixels per side)',
            'bad size')


def image_to_numpy(msg, desired_encoding: str = 'passthrough') -> np.ndarray:
    """Return the pixels of a sensor_msgs/Image as an ``(H, W)`` or ``(H, W, C)`` array.

    With ``passthrough`` (or the message's own encoding) the result is a read-only,
    zero-copy view into ``msg.data`` whenever the data is in native byte order; big-endian
    16/32-bit data is byte-swapped into a native copy. Any other ``desired_encoding`` is
    produced with one OpenCV colour conversion (see :data:`_COLOR_CONVERSIONS`).
    """
    layout = encoding_layout(msg.encoding)
    height, width, step = msg.height, msg.width, msg.step
    _check_size(width, height)
    row_bytes = width * layout.pixel_bytes
    if not isinstance(step, (int, np.integer)) or step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than one row of {width} {msg.encoding} pixels '
            f'({row_bytes} bytes)', 'bad step')
    if step * height > MAX_IMAGE_BYTES:
        raise ImageConversionError(
            f'image of {step * height} bytes is absurd (limit {MAX_IMAGE_BYTES})', 'bad size')
    buffer = memoryview(msg.data).cast('B')
    if buffer.nbytes < step * height:
        raise ImageConversionError(
            f'data holds {buffer.nbytes} bytes, less than step * height = '
            f'{step} * {height} = {step * height}', 'short data')

    dtype = layout.dtype
    swap = dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == 'big')
    if swap:
        dtype = dtype.newbyteorder()
    shape = (height, width, layout.channels)
    strides = (step, layout.pixel_bytes, dtype.itemsize)
    pixels = np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)
    if layout.channels == 1:
        pixels = pixels[:, :, 0]
    if swap:
        pixels = pixels.astype(dtype.newbyteorder('='))
    else:
        pixels.flags.writeable = False
    return convert_encoding(pixels, msg.encoding, desired_encoding)


def convert_encoding(pixels: np.ndarray, encoding: str, desired_encoding: str) -> np.ndarray:
    """Convert an array in ``encoding`` to ``desired_encoding`` (no copy when they match)."""
    if desired_encoding in ('passthrough', encoding):
        return pixels
    encoding_layout(desired_encoding)
    source = _ALIASES.get(encoding, encoding)
    target = _ALIASES.get(desired_encoding, desired_encoding)
    if source == target:
        return pixels
    code = _COLOR_CONVERSIONS.get((source, target))
    if code is None:
        raise ImageConversionError(
            f'cannot convert {encoding!r} to {desired_encoding!r}', 'not a picture')
    if pixels.ndim == 3 and pixels.shape[2] == 2:
        # OpenCV reads packed 4:2:2 as one (H, W, 2) 8-bit image; the row must be dense.
        if pixels.shape[1] % 2:
            raise ImageConversionError(
                f'{encoding} image has an odd width ({pixels.shape[1]}): packed 4:2:2 stores '
                'pixels in pairs, so the width must be even', 'bad size')
        pixels = np.ascontiguousarray(pixels)
    return _opencv(cv2.cvtColor, f'convert {encoding} to {desired_encoding}', pixels, code)


def _opencv(function, what: str, pixels: np.ndarray, *args, **kwargs) -> np.ndarray:
    """``function(pixels, ...)`` with cv2.error turned into one clean ImageConversionError."""
    try:
        return function(pixels, *args, **kwargs)
    except cv2.error:
        raise ImageConversionError(
            f'OpenCV cannot {what} for a {pixels.dtype} array of shape {pixels.shape}',
            'malformed') from None


def numpy_to_image(pixels: np.ndarray, encoding: str, header=None, msg=None):
    """Build a sensor_msgs/Image from ``pixels`` with one copy into the message buffer.

    ``encoding`` must describe ``pixels``' dtype and channel count. Pass ``msg`` to fill an
    existing message instead of a new one.
    """
    layout = encoding_layout(encoding)
    pixels = np.asarray(pixels)
    expected_ndim = 2 if layout.channels == 1 else 3
    if pixels.ndim == 3 and layout.channels == 1 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if (pixels.ndim != expected_ndim
            or (expected_ndim == 3 and pixels.shape[2] != layout.channels)):
        raise ImageConversionError(
            f'array of shape {pixels.shape} does not match encoding {encoding!r} '
            f'({layout.channels} channel(s))')
    if pixels.dtype.newbyteorder('=') != layout.dtype:
        raise ImageConversionError(
            f'array dtype {pixels.dtype} does not match encoding {encoding!r} '
            f'(needs {layout.dtype})')
    height, width = pixels.shape[:2]
    _check_size(width, height, 'array')
    if msg is None:
        from sensor_msgs.msg import Image
        msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = height, width, encoding
    big_endian = pixels.dtype.byteorder == '>' or (
        pixels.dtype.byteorder == '=' and sys.byteorder == 'big')
    msg.is_bigendian = int(big_endian and pixels.dtype.itemsize > 1)
    msg.step = width * layout.pixel_bytes
    msg.data = _to_byte_array(pixels)
    return msg


def _to_byte_array(pixels: np.ndarray) -> array.array:
    """One memcpy into an ``array('B')``, which the generated message setter takes as is.

    Assigning ``bytes`` instead makes the rosidl setter validate every byte in Python.
    """
    data = array.array('B')
    data.frombytes(np.ascontiguousarray(pixels).data.cast('B'))
    return data


# --- compressed images -------------------------------------------------------------

_COMPRESSED_DEPTH_HEADER_BYTES = 12  # compressed_depth_image_transport's ConfigHeader


def compressed_to_numpy(msg, desired_encoding: str = 'bgr8',
                        max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG, PNG, ... anything OpenCV reads).

    ``passthrough`` returns what OpenCV decodes: ``bgr8``/``bgra8`` colour, ``mono8`` or
    16-bit grey. ``compressedDepth`` payloads (PNG behind a 12-byte header) are handled.
    Images declaring more than ``max_pixels`` pixels are refused before decoding.
    """
    pixels, encoding = decode_compressed(msg, max_pixels)
    return convert_encoding(pixels, encoding, desired_encoding)


def decode_compressed(msg, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, str]:
    """``(pixels, encoding)`` of what OpenCV decodes from a CompressedImage, unconverted;
    refused before decoding when its header declares more than ``max_pixels`` pixels."""
    fmt = quoted(msg.format)
    data = memoryview(msg.data).cast('B')
    if _is_compressed_depth(str(msg.format)):
        data = data[_COMPRESSED_DEPTH_HEADER_BYTES:]
    if data.nbytes == 0:
        raise ImageConversionError(f'compressed image ({fmt}) has no data', 'no data')
    if data.nbytes > MAX_IMAGE_BYTES:
        raise ImageConversionError(f'compressed image of {data.nbytes} bytes is absurd',
                                   'bad size')
    try:
        pixels = decode_image(data, max_pixels, cv2.IMREAD_UNCHANGED)
    except ImageTooLargeError as error:
        raise ImageConversionError(f'compressed image ({fmt}): {error}', 'too large') from None
    except ValueError as error:
        raise ImageConversionError(f'compressed image ({fmt}, {data.nbytes} bytes) could not '
                                   f'be decoded: {error}', 'undecodable') from None
    return pixels, _decoded_encoding(pixels, fmt)


def _is_compressed_depth(fmt: str) -> bool:
    return 'compresseddepth' in fmt.lower().replace(' ', '')


def _decoded_encoding(pixels: np.ndarray, fmt: str) -> str:
    """The ROS encoding of what ``cv2.imdecode(..., IMREAD_UNCHANGED)`` returned (``fmt``
    already quoted)."""
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    names = {(np.uint8, 1): 'mono8', (np.uint8, 3): 'bgr8', (np.uint8, 4): 'bgra8',
             (np.uint16, 1): 'mono16', (np.uint16, 3): 'bgr16'}
    try:
        return names[(pixels.dtype.type, channels)]
    except KeyError:
        raise ImageConversionError(
            f'compressed image ({fmt}) decoded to an unsupported {channels}-channel '
            f'{pixels.dtype} image', 'not a picture') from None


def numpy_to_compressed(pixels: np.ndarray, encoding: str = 'bgr8', fmt: str = 'jpeg',
                        quality: int = 90, header=None):
    """Encode ``pixels`` as a sensor_msgs/CompressedImage the way image_transport does.

    ``format`` is written as ``"<encoding>; <fmt> compressed <coded encoding>"``. JPEG takes
    8-bit images only (alpha dropped); PNG also takes alpha and 16-bit mono.
    """
    fmt = fmt.lower()
    if fmt in ('jpg', 'jpeg'):
        fmt, ext, params = 'jpeg', '.jpg', [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == 'png':
        ext, params = '.png', [cv2.IMWRITE_PNG_COMPRESSION, 1]
    else:
        raise ImageConversionError(f'unsupported compression format {fmt!r} (jpeg or png)')
    layout = encoding_layout(encoding)
    if layout.channels == 1 and (layout.dtype == np.uint8 or (
            fmt == 'png' and layout.dtype == np.uint16)):
        coded_encoding = encoding
    elif layout.dtype == np.uint8 and layout.channels == 4 and fmt == 'png':
        coded_encoding = 'bgra8'
    elif layout.dtype == np.uint8 and layout.channels > 1:
        coded_encoding = 'bgr8'  # JPEG has no alpha: it is dropped
    else:
        raise ImageConversionError(f'{fmt} cannot store {encoding!r} images')
    coded = convert_encoding(pixels, encoding, coded_encoding)
    ok, payload = cv2.imencode(ext, coded, params)
    if not ok:
        raise ImageConversionError(f'OpenCV could not encode a {encoding!r} image as {fmt}')
    from sensor_msgs.msg import CompressedImage
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = f'{encoding}; {fmt} compressed {coded_encoding}'
    msg.data = _to_byte_array(payload)
    return msg


# --- RGB for a colour model ---------------------------------------------------------

# Encodings that hold a picture a colour model can look at, and the 8-bit encoding each
# becomes on the way to rgb8. Depth (32FC1, 64FC1, 16SC1) and label (32SC1) images are not
# pictures: they are refused with a message saying so. 16UC1 is mono16 to cv_bridge.
_PICTURE_ENCODINGS = {
    'rgb8': 'rgb8', 'bgr8': 'bgr8', 'rgba8': 'rgba8', 'bgra8': 'bgra8', 'mono8': 'mono8',
    '8UC1': 'mono8', '8UC3': 'bgr8', '8UC4': 'bgra8',
    'rgb16': 'rgb8', 'bgr16': 'bgr8', 'mono16': 'mono8', '16UC1': 'mono8',
    'yuv422': 'yuv422', 'uyvy': 'uyvy', 'yuv422_yuy2': 'yuv422_yuy2', 'yuyv': 'yuyv',
}
RGB_INPUT_ENCODINGS = tuple(_PICTURE_ENCODINGS)


def check_rgb_input_encoding(encoding: str) -> None:
    """Raise unless ``encoding`` is a known encoding that :func:`to_rgb8` can turn into RGB."""
    encoding_layout(encoding)
    if encoding not in _PICTURE_ENCODINGS:
        raise ImageConversionError(
            f'{encoding!r} images cannot be segmented: the model needs a colour or grey '
            f'picture ({", ".join(RGB_INPUT_ENCODINGS)}), not depth or label data',
            'not a picture')


def to_rgb8(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """Any picture encoding as an RGB ``(H, W, 3)`` uint8 array, in at most two OpenCV passes.

    Grey becomes grey RGB, BGR is swapped, alpha is dropped, packed 4:2:2 is converted, and
    16-bit data is scaled by 255/65535 (full range, as cv_bridge converts 16 to 8 bits).
    ``rgb8`` input is returned as it is (possibly a read-only view).
    """
    check_rgb_input_encoding(encoding)
    eight_bit = _PICTURE_ENCODINGS[encoding]
    if ENCODINGS[encoding].dtype.itemsize == 2:
        pixels = _opencv(cv2.convertScaleAbs, 'scale 16-bit pixels to 8 bits', pixels,
                         alpha=255.0 / 65535.0)
    return convert_encoding(pixels, eight_bit, 'rgb8')


def image_to_rgb8(msg) -> np.ndarray:
    """A sensor_msgs/Image as RGB uint8; the encoding is checked before the data is read."""
    check_rgb_input_encoding(msg.encoding)
    return to_rgb8(image_to_numpy(msg), msg.encoding)


def compressed_to_rgb8(msg, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A sensor_msgs/CompressedImage (JPEG, PNG, ...) as RGB uint8; depth payloads refused,
    and images declaring more than ``max_pixels`` pixels refused before decoding."""
    if _is_compressed_depth(str(msg.format)):
        raise ImageConversionError(
            f'compressed image ({quoted(msg.format)}) is a depth map and cannot be segmented',
            'not a picture')
    pixels, encoding = decode_compressed(msg, max_pixels)
    return to_rgb8(pixels, encoding)
