"""sensor_msgs/Image and CompressedImage <-> NumPy on real message objects, no graph needed."""

from __future__ import annotations

import resource
import struct

import cv2
import numpy as np
import pytest

sensor_msgs = pytest.importorskip('sensor_msgs.msg')

from tokenmask_ros.ros.conversions import (  # noqa: E402
    ENCODINGS,
    ImageConversionError,
    compressed_to_numpy,
    compressed_to_rgb8,
    convert_encoding,
    image_to_numpy,
    image_to_rgb8,
    numpy_to_compressed,
    numpy_to_image,
)

RNG = np.random.default_rng(7)


def random_pixels(encoding: str, height: int = 5, width: int = 7) -> np.ndarray:
    layout = ENCODINGS[encoding]
    shape = (height, width) if layout.channels == 1 else (height, width, layout.channels)
    if layout.dtype.kind == 'f':
        return RNG.normal(size=shape).astype(layout.dtype)
    info = np.iinfo(layout.dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=layout.dtype)


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """A gradient image: JPEG reproduces it closely, unlike noise."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) % 256], -1).astype(np.uint8)


def raw_message(pixels: np.ndarray, encoding: str, step: int, big_endian: bool = False,
                pad_byte: int = 0xAB):
    """Build an Image by hand with ``step``-byte rows, as a driver with row padding would."""
    dtype = pixels.dtype.newbyteorder('>' if big_endian else '<')
    rows = np.ascontiguousarray(pixels.astype(dtype)).reshape(pixels.shape[0], -1).view(np.uint8)
    buffer = np.full((pixels.shape[0], step), pad_byte, np.uint8)
    buffer[:, :rows.shape[1]] = rows
    msg = sensor_msgs.Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                            is_bigendian=int(big_endian), step=step)
    msg.data = buffer.tobytes()
    return msg


ROUND_TRIP_ENCODINGS = ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '16UC1', '32SC1',
                        '32FC1', '16SC1', '64FC1', '8UC3', 'yuv422', 'yuv422_yuy2']


@pytest.mark.parametrize('encoding', ROUND_TRIP_ENCODINGS)
def test_round_trip_preserves_pixels_and_fields(encoding):
    pixels = random_pixels(encoding)
    msg = numpy_to_image(pixels, encoding)
    assert isinstance(msg, sensor_msgs.Image)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == 7 * ENCODINGS[encoding].pixel_bytes
    assert len(msg.data) == msg.step * msg.height
    assert msg.is_bigendian == 0
    back = image_to_numpy(msg)
    assert back.dtype == pixels.dtype
    np.testing.assert_array_equal(back, pixels)


def test_unpadded_image_is_a_read_only_zero_copy_view():
    msg = numpy_to_image(random_pixels('rgb8', 32, 40), 'rgb8')
    view = image_to_numpy(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    assert not view.flags.writeable


@pytest.mark.parametrize('encoding', ['rgb8', 'mono8', 'mono16', '32FC1', 'bgra8'])
def test_padded_rows_are_skipped_without_copying(encoding):
    pixels = random_pixels(encoding, 6, 9)
    row_bytes = 9 * ENCODINGS[encoding].pixel_bytes
    msg = raw_message(pixels, encoding, step=row_bytes + 13)
    view = image_to_numpy(msg)
    np.testing.assert_array_equal(view, pixels)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    assert view.strides[0] == row_bytes + 13


@pytest.mark.parametrize('encoding', ['mono16', '16UC1', '32SC1', '32FC1', '16SC1'])
def test_big_endian_data_comes_back_native(encoding):
    pixels = random_pixels(encoding, 4, 6)
    row_bytes = 6 * ENCODINGS[encoding].pixel_bytes
    msg = raw_message(pixels, encoding, step=row_bytes + 2, big_endian=True)
    back = image_to_numpy(msg)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, pixels)


def test_big_endian_array_is_published_as_big_endian():
    pixels = random_pixels('mono16').astype('>u2')
    msg = numpy_to_image(pixels, 'mono16')
    assert msg.is_bigendian == 1
    assert bytes(msg.data[:2]) == pixels[:1, :1].tobytes()
    np.testing.assert_array_equal(image_to_numpy(msg), pixels.astype('=u2'))


def test_desired_encoding_swaps_channels_like_cv_bridge():
    pixels = random_pixels('rgb8')
    msg = numpy_to_image(pixels, 'rgb8')
    np.testing.assert_array_equal(image_to_numpy(msg, 'bgr8'), pixels[..., ::-1])
    np.testing.assert_array_equal(image_to_numpy(msg, 'rgb8'), pixels)
    gray = random_pixels('mono8')
    rgb = image_to_numpy(numpy_to_image(gray, 'mono8'), 'rgb8')
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize(('encoding', 'code'), [('yuv422', cv2.COLOR_YUV2RGB_UYVY),
                                                ('yuv422_yuy2', cv2.COLOR_YUV2RGB_YUY2)])
def test_packed_yuv422_converts_to_rgb_like_opencv(encoding, code):
    packed = random_pixels(encoding, 8, 10)
    msg = raw_message(packed, encoding, step=10 * 2 + 4)
    np.testing.assert_array_equal(image_to_numpy(msg, 'rgb8'), cv2.cvtColor(packed, code))


def test_impossible_conversion_is_refused():
    msg = numpy_to_image(random_pixels('32FC1'), '32FC1')
    with pytest.raises(ImageConversionError, match="'32FC1' to 'rgb8'"):
        image_to_numpy(msg, 'rgb8')


# --- malformed raw messages --------------------------------------------------------

def valid_message():
    return numpy_to_image(random_pixels('rgb8', 4, 5), 'rgb8')


@pytest.mark.parametrize(('mutate', 'match'), [
    (lambda m: setattr(m, 'encoding', 'rgb9'), 'unsupported image encoding'),
    (lambda m: setattr(m, 'encoding', ''), 'unsupported image encoding'),
    (lambda m: setattr(m, 'step', 14), 'step 14 is smaller than one row'),
    (lambda m: setattr(m, 'data', bytes(59)), 'data holds 59 bytes'),
    (lambda m: setattr(m, 'width', 0), 'zero size'),
    (lambda m: setattr(m, 'height', 0), 'zero size'),
    (lambda m: (setattr(m, 'width', 100_000), setattr(m, 'step', 300_000)), 'absurd'),
    (lambda m: (setattr(m, 'height', 30_000), setattr(m, 'step', 4_000_000_000)), 'absurd'),
], ids=['unknown-encoding', 'empty-encoding', 'short-step', 'short-data', 'zero-width',
        'zero-height', 'absurd-width', 'absurd-bytes'])
def test_malformed_image_raises_one_clear_error(mutate, match):
    msg = valid_message()
    mutate(msg)
    with pytest.raises(ImageConversionError, match=match):
        image_to_numpy(msg)


def test_array_that_does_not_match_its_encoding_is_refused():
    with pytest.raises(ImageConversionError, match='3 channel'):
        numpy_to_image(np.zeros((4, 4), np.uint8), 'rgb8')
    with pytest.raises(ImageConversionError, match='dtype'):
        numpy_to_image(np.zeros((4, 4), np.float32), 'mono16')
    with pytest.raises(ImageConversionError, match='zero size'):
        numpy_to_image(np.zeros((0, 4, 3), np.uint8), 'rgb8')


# --- compressed images -------------------------------------------------------------

@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8', 'rgba8'])
def test_jpeg_decodes_exactly_as_opencv_decodes_it(encoding):
    rgb = smooth_rgb()
    pixels = {'rgb8': rgb, 'bgr8': rgb[..., ::-1], 'mono8': rgb[..., 0],
              'rgba8': np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])}[encoding]
    msg = numpy_to_compressed(np.ascontiguousarray(pixels), encoding, 'jpeg', quality=95)
    coded = 'mono8' if encoding == 'mono8' else 'bgr8'
    assert msg.format == f'{encoding}; jpeg compressed {coded}'
    opencv = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(compressed_to_numpy(msg, 'passthrough'), opencv)
    decoded = compressed_to_numpy(msg, 'mono8' if encoding == 'mono8' else 'rgb8')
    expected = rgb[..., 0] if encoding == 'mono8' else rgb
    assert np.abs(decoded.astype(int) - expected).mean() < 4.0


@pytest.mark.parametrize('encoding', ['bgr8', 'rgb8', 'mono8', 'mono16', 'bgra8'])
def test_png_round_trip_is_lossless(encoding):
    pixels = random_pixels(encoding, 12, 10)
    msg = numpy_to_compressed(pixels, encoding, 'png')
    np.testing.assert_array_equal(compressed_to_numpy(msg, encoding), pixels)


def test_foreign_compressed_payload_with_bare_format_decodes():
    """A CompressedImage from another driver: plain "jpeg" format, bytes from cv2.imencode."""
    bgr = smooth_rgb()[..., ::-1]
    ok, payload = cv2.imencode('.jpg', bgr)
    assert ok
    msg = sensor_msgs.CompressedImage(format='jpeg')
    msg.data = payload.tobytes()
    expected = cv2.imdecode(payload, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(compressed_to_numpy(msg), expected)
    np.testing.assert_array_equal(compressed_to_numpy(msg, 'rgb8'), expected[..., ::-1])


def test_compressed_depth_header_is_skipped():
    depth = random_pixels('16UC1', 20, 30)
    ok, payload = cv2.imencode('.png', depth)
    assert ok
    msg = sensor_msgs.CompressedImage(format='16UC1; compressedDepth png')
    msg.data = bytes(12) + payload.tobytes()
    np.testing.assert_array_equal(compressed_to_numpy(msg, 'passthrough'), depth)


@pytest.mark.parametrize(('payload', 'match'), [
    (b'', 'no data'),
    (b'\xff\xd8\xff\xe0' + bytes(200), 'could not be decoded'),
    (bytes(range(256)) * 4, 'could not be decoded'),
], ids=['empty', 'truncated-jpeg', 'garbage'])
def test_undecodable_compressed_payload_raises(payload, match):
    msg = sensor_msgs.CompressedImage(format='jpeg')
    msg.data = payload
    with pytest.raises(ImageConversionError, match=match):
        compressed_to_numpy(msg)


def test_jpeg_refuses_16_bit_and_unknown_formats():
    with pytest.raises(ImageConversionError, match='jpeg cannot store'):
        numpy_to_compressed(random_pixels('mono16'), 'mono16', 'jpeg')
    with pytest.raises(ImageConversionError, match='unsupported compression format'):
        numpy_to_compressed(random_pixels('rgb8'), 'rgb8', 'gif')


# --- RGB for the segmentation model ---------------------------------------------------

def test_every_picture_encoding_becomes_the_expected_rgb8():
    rgb = random_pixels('rgb8', 6, 9)
    gray = random_pixels('mono8', 6, 9)
    alpha = np.full((6, 9, 1), 77, np.uint8)
    cases = {
        'rgb8': (rgb, rgb), 'bgr8': (rgb[..., ::-1], rgb), '8UC3': (rgb[..., ::-1], rgb),
        'rgba8': (np.dstack([rgb, alpha]), rgb), 'bgra8': (np.dstack([rgb[..., ::-1], alpha]), rgb),
        'mono8': (gray, np.dstack([gray] * 3)), '8UC1': (gray, np.dstack([gray] * 3)),
        # 16 bit: full range scaled to 8 bit (x * 255 / 65535), as cv_bridge does.
        'mono16': (gray.astype(np.uint16) * 257, np.dstack([gray] * 3)),
        'rgb16': (rgb.astype(np.uint16) * 257, rgb),
        'bgr16': (rgb[..., ::-1].astype(np.uint16) * 257, rgb),
    }
    for encoding, (pixels, expected) in cases.items():
        for step_padding in (0, 6):
            step = pixels.shape[1] * ENCODINGS[encoding].pixel_bytes + step_padding
            out = image_to_rgb8(raw_message(pixels, encoding, step))
            assert out.dtype == np.uint8 and out.shape == (6, 9, 3), encoding
            np.testing.assert_array_equal(out, expected, err_msg=encoding)


@pytest.mark.parametrize('encoding', ['32FC1', '64FC1', '16SC1', '32SC1'])
def test_depth_and_label_encodings_are_refused_before_the_data_is_read(encoding):
    msg = sensor_msgs.Image(encoding=encoding, width=4, height=4, step=1, data=b'')
    with pytest.raises(ImageConversionError, match=f"'{encoding}' images cannot be segmented"):
        image_to_rgb8(msg)


def test_compressed_frames_become_rgb8_and_depth_payloads_are_refused():
    rgb = smooth_rgb()
    np.testing.assert_array_equal(compressed_to_rgb8(numpy_to_compressed(rgb, 'rgb8', 'png')),
                                  rgb)
    gray = numpy_to_compressed(rgb[..., 0].copy(), 'mono8', 'png')
    np.testing.assert_array_equal(compressed_to_rgb8(gray), np.dstack([rgb[..., 0]] * 3))
    depth = sensor_msgs.CompressedImage(format='16UC1; compressedDepth png', data=b'\0' * 20)
    with pytest.raises(ImageConversionError, match='depth map'):
        compressed_to_rgb8(depth)


# --- hostile input: clean errors, never raw OpenCV text, sender text quoted short -------

def _assert_clean(error) -> None:
    text = str(error.value)
    assert 'Assertion' not in text and '.cpp' not in text and '\n' not in text, text


@pytest.mark.parametrize('encoding', ['yuv422', 'uyvy', 'yuyv', 'yuv422_yuy2'])
def test_odd_width_packed_yuv422_is_refused_before_opencv(encoding):
    msg = raw_message(random_pixels(encoding, 4, 7), encoding, step=7 * 2)
    with pytest.raises(ImageConversionError, match=f'{encoding} image has an odd width '
                                                   r'\(7\).*must be even') as error:
        image_to_rgb8(msg)
    _assert_clean(error)
    assert error.value.kind == 'bad size'
    assert image_to_numpy(msg).shape == (4, 7, 2)  # passthrough needs no pairs


def test_opencv_conversion_errors_become_clean_conversion_errors():
    # cvtColor refuses a 4:2:2 array that is not 8-bit; the message names the conversion.
    with pytest.raises(ImageConversionError, match='OpenCV cannot convert yuv422 to rgb8 for '
                                                   'a float64 array') as error:
        convert_encoding(np.zeros((2, 4, 2), np.float64), 'yuv422', 'rgb8')
    _assert_clean(error)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose SOF0 header is patched to declare ``width`` x ``height``."""
    ok, encoded = cv2.imencode('.jpg', smooth_rgb(8, 8))
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


def test_a_jpeg_declaring_a_huge_size_is_refused_before_decoding():
    msg = sensor_msgs.CompressedImage(format='jpeg', data=jpeg_declaring(32768, 32768))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageConversionError, match=r"compressed image \('jpeg'\): image "
                                                   r'declares 32768x32768 = 1073741824 pixels, '
                                                   r'more than max_image_pixels 16777216') as e:
        compressed_to_rgb8(msg)
    assert e.value.kind == 'too large'
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024 < 100  # MiB
    with pytest.raises(ImageConversionError, match='more than max_image_pixels 63'):
        compressed_to_numpy(sensor_msgs.CompressedImage(format='jpeg',
                                                        data=jpeg_declaring(8, 8)),
                            max_pixels=63)


@pytest.mark.parametrize('payload', [jpeg_declaring(40000, 40000),
                                     jpeg_declaring(64, 64)[:-120] + bytes(40),
                                     b'\xff\xd8' + bytes(range(256)) * 8],
                         ids=['over-opencv-limit', 'corrupt-scan', 'garbage'])
def test_huge_or_garbage_jpeg_gives_one_clean_error(payload):
    msg = sensor_msgs.CompressedImage(format='jpeg', data=payload)
    with pytest.raises(ImageConversionError, match='could not be decoded') as error:
        compressed_to_rgb8(msg, max_pixels=2**32)
    _assert_clean(error)
    assert error.value.kind == 'undecodable'


def test_sender_chosen_text_is_quoted_short():
    long_text = 'x' * 65536
    msg = valid_message()
    msg.encoding = long_text
    with pytest.raises(ImageConversionError, match=r"^unsupported image encoding 'x{64}'\.\.\. "
                                                   r'\(65536 chars\)') as error:
        image_to_rgb8(msg)
    assert len(str(error.value)) < 600 and error.value.kind == 'unsupported encoding'
    compressed = sensor_msgs.CompressedImage(format='\n' + long_text, data=b'junk')
    with pytest.raises(ImageConversionError) as error:
        compressed_to_rgb8(compressed)
    assert len(str(error.value)) < 400 and '\n' not in str(error.value)
    assert str(error.value).startswith(r"compressed image ('\nxxx")
