"""tokenmask_ros.image_io: colour order on disk, folders made, failed writes raised."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tokenmask_ros.image_io import write_bgr, write_rgb


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
