"""tokenmask_ros.image_io: colour order on disk, failed writes raised, bombs refused unread."""

from __future__ import annotations

import resource
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest

from tokenmask_ros.defaults import MAX_IMAGE_PIXELS
from tokenmask_ros.image_io import (
    declared_image_size,
    decode_image,
    read_image_file,
    write_bgr,
    write_rgb,
)


def _pattern() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)


def test_write_rgb_png_reads_back_as_the_same_rgb_pixels(tmp_path):
    rgb = _pattern()
    path = write_rgb(tmp_path / 'deep' / 'er' / 'image.png', rgb)
    assert path == tmp_path / 'deep' / 'er' / 'image.png'
    back = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, rgb)


def test_write_rgb_keeps_a_pure_red_image_red(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    bgr = cv2.imread(str(write_rgb(tmp_path / 'red.png', red)), cv2.IMREAD_COLOR)
    assert bgr[..., 2].min() == 255 and bgr[..., :2].max() == 0


def test_jpeg_quality_changes_the_file(tmp_path):
    rgb = np.repeat(np.repeat(_pattern(), 8, axis=0), 8, axis=1)
    low = write_rgb(tmp_path / 'low.jpg', rgb, jpeg_quality=20).stat().st_size
    high = write_rgb(tmp_path / 'high.jpg', rgb, jpeg_quality=98).stat().st_size
    assert low < high


def test_write_bgr_single_channel_16_bit_round_trips(tmp_path):
    values = np.arange(300, dtype=np.uint16).reshape(15, 20)
    path = write_bgr(tmp_path / 'classes.png', values)
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), values)


def test_a_failed_write_raises_instead_of_passing_silently(tmp_path):
    (tmp_path / 'taken.png').mkdir()  # a folder where the file should go: imwrite returns False
    with pytest.raises(OSError, match='cannot write'):
        write_rgb(tmp_path / 'taken.png', _pattern())


def test_a_file_in_place_of_the_parent_folder_raises(tmp_path):
    (tmp_path / 'not_a_folder').write_text('x')
    with pytest.raises(OSError):
        write_rgb(tmp_path / 'not_a_folder' / 'image.png', _pattern())


# --- reading: declared size checked before decoding ------------------------------------

BOMB_SIDE = 32768  # 2**30 pixels: 3 GiB of BGR if anything decoded it


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose SOF0 frame header is patched to declare ``width`` x ``height``."""
    ok, encoded = cv2.imencode('.jpg', _pattern()[:8, :8])
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b'\xff\xc0')  # marker, length (2), precision (1), height, width
    data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR declares ``width`` x ``height``, its CRC recomputed."""
    ok, encoded = cv2.imencode('.png', _pattern()[:8, :8])
    assert ok
    data = bytearray(encoded.tobytes())
    assert data[12:16] == b'IHDR'
    data[16:24] = struct.pack('>II', width, height)
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize('craft', [jpeg_declaring, png_declaring], ids=['jpeg', 'png'])
def test_a_tiny_file_declaring_32768_squared_is_refused_before_decoding(craft):
    data = craft(BOMB_SIDE, BOMB_SIDE)
    assert len(data) < 1000
    assert declared_image_size(data) == (BOMB_SIDE, BOMB_SIDE)
    peak = _max_rss_mb()
    with pytest.raises(ValueError, match=r'image declares 32768x32768 = 1073741824 pixels, '
                                         r'more than max_image_pixels 16777216'):
        decode_image(data, MAX_IMAGE_PIXELS)
    assert _max_rss_mb() - peak < 100  # the peak never rose towards the 3 GiB a decode takes


def test_pillows_own_bomb_guard_does_not_fire_first():
    """Above Pillow's limit its warning (or error, at twice the limit) must not preempt ours."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a DecompressionBombWarning would fail the test
        assert declared_image_size(png_declaring(BOMB_SIDE, BOMB_SIDE)) == (BOMB_SIDE,) * 2
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's guard is back for everyone else


def test_an_image_within_the_limit_decodes_exactly_as_opencv_does(tmp_path):
    rgb = _pattern()
    path = write_rgb(tmp_path / 'small.png', rgb)
    data = path.read_bytes()
    assert declared_image_size(data) == (20, 12)
    np.testing.assert_array_equal(decode_image(data, 240), rgb[..., ::-1])
    np.testing.assert_array_equal(read_image_file(path, 240, cv2.IMREAD_UNCHANGED),
                                  cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    with pytest.raises(ValueError, match='declares 20x12 = 240 pixels, more than '
                                         'max_image_pixels 239'):
        decode_image(data, 239)


@pytest.mark.parametrize('data', [b'', b'\xff\xd8\xff\xe0' + bytes(200), bytes(range(256)) * 4,
                                  b'GIF89a' + bytes(20)],
                         ids=['empty', 'truncated-jpeg', 'garbage', 'broken-gif'])
def test_unreadable_data_is_one_clean_value_error(data):
    with pytest.raises(ValueError, match=r'^not a readable image') as error:
        decode_image(data, MAX_IMAGE_PIXELS)
    assert 'cv2' not in str(error.value) and '\n' not in str(error.value)


def test_a_valid_header_over_corrupt_pixels_is_a_clean_value_error():
    _, encoded = cv2.imencode('.png', _pattern())
    data = bytearray(encoded.tobytes())
    idat = data.index(b'IDAT')
    data[idat + 4:idat + 40] = bytes(36)  # zero the compressed pixel stream
    with pytest.raises(ValueError, match='not a readable image: its 20x12 pixels could not '
                                         'be decoded'):
        decode_image(bytes(data), MAX_IMAGE_PIXELS)


def test_read_image_file_names_the_file_in_its_errors(tmp_path):
    missing = tmp_path / 'missing.png'
    with pytest.raises(OSError, match=r'missing\.png'):
        read_image_file(missing, MAX_IMAGE_PIXELS)
    bomb = tmp_path / 'bomb.jpg'
    bomb.write_bytes(jpeg_declaring(BOMB_SIDE, BOMB_SIDE))
    with pytest.raises(ValueError, match=r'bomb\.jpg: image declares 32768x32768'):
        read_image_file(bomb, MAX_IMAGE_PIXELS)


def test_opencvs_own_refusal_becomes_a_clean_value_error():
    """40000^2 passes a huge caller limit but not OpenCV's: its cv2.error text stays inside."""
    with pytest.raises(ValueError, match=r'^not a readable image: OpenCV refuses') as error:
        decode_image(jpeg_declaring(40000, 40000), 2**32)
    assert 'Assertion' not in str(error.value) and 'cpp' not in str(error.value)
