"""Frame sources on real files: PNG folders and a video written by OpenCV."""

import cv2
import numpy as np
import pytest

from tokenmask_ros.sources import (
    CaptureSource,
    FolderSource,
    SourceError,
    SyntheticSource,
    open_source,
)


def write_images(folder, count, size=(24, 32)):
    images = []
    for i in range(count):
        image = np.full((*size, 3), (i * 40) % 256, np.uint8)
        image[0, 0] = (i, 255 - i, 7)
        cv2.imwrite(str(folder / f'frame{i}.png'), image)
        images.append(image)
    return images


def test_folder_source_reads_in_natural_order_and_loops(tmp_path):
    images = write_images(tmp_path, 11)  # frame10 must come after frame9, not after frame1
    source = open_source(str(tmp_path), loop=True)
    assert isinstance(source, FolderSource)
    frames = [source.read() for _ in range(13)]
    for k, frame in enumerate(frames):
        assert frame.encoding == 'bgr8' and frame.index == k
        np.testing.assert_array_equal(frame.pixels, images[k % 11])


def test_folder_source_without_loop_ends_and_skips_unreadable_files(tmp_path):
    write_images(tmp_path, 2)
    (tmp_path / 'frame1b.png').write_bytes(b'not a png')
    (tmp_path / 'notes.txt').write_text('ignored: not an image suffix')
    source = FolderSource(tmp_path, loop=False)
    assert len(list(source)) == 2
    assert source.read() is None
    assert [p.name for p in source.unreadable] == ['frame1b.png']


def test_folder_of_only_broken_images_is_an_error(tmp_path):
    (tmp_path / 'a.jpg').write_bytes(b'\xff\xd8 broken')
    with pytest.raises(SourceError, match='readable image'):
        FolderSource(tmp_path, loop=True).read()


def test_video_source_reads_every_frame_then_loops(tmp_path):
    path = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (64, 48))
    assert writer.isOpened()
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 50, np.uint8))
    writer.release()
    source = open_source(str(path), loop=False)
    assert isinstance(source, CaptureSource)
    levels = [int(f.pixels.mean()) for f in source]
    assert levels == pytest.approx([0, 50, 100, 150, 200], abs=3)
    looping = open_source(str(path), loop=True)
    assert [looping.read() is not None for _ in range(8)] == [True] * 8
    looping.close()


def test_synthetic_source_streams_rgb_scenes():
    source = open_source('synthetic', width=64, height=48, seed=1)
    assert isinstance(source, SyntheticSource)
    a, b = source.read(), source.read()
    assert a.pixels.shape == (48, 64, 3) and a.encoding == 'rgb8'
    assert (a.index, b.index) == (0, 1)
    assert not np.array_equal(a.pixels, b.pixels)


@pytest.mark.parametrize(('spec', 'match'), [
    ('/no/such/path', 'is not "synthetic"'),
    ('camera:97', 'cannot open camera device 97'),
])
def test_bad_source_specs_raise_source_error(spec, match):
    with pytest.raises(SourceError, match=match):
        open_source(spec)


def test_empty_folder_and_corrupt_video_are_errors(tmp_path):
    with pytest.raises(SourceError, match='has no images'):
        open_source(str(tmp_path))
    bad = tmp_path / 'bad.mp4'
    bad.write_bytes(b'\x00' * 100)
    with pytest.raises(SourceError, match='cannot open video file'):
        open_source(str(bad))


def test_folder_source_skips_images_over_max_pixels_before_decoding(tmp_path):
    import struct
    import zlib

    images = write_images(tmp_path, 2, size=(24, 32))  # 32x24 = 768 pixels each
    cv2.imwrite(str(tmp_path / 'frame1a.png'), np.zeros((40, 40, 3), np.uint8))  # 1600
    bomb = bytearray(cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    bomb[16:24] = struct.pack('>II', 16384, 16384)  # IHDR: 2^28 pixels declared
    bomb[29:33] = struct.pack('>I', zlib.crc32(bytes(bomb[12:29])))
    (tmp_path / 'frame0b.png').write_bytes(bytes(bomb))
    source = FolderSource(tmp_path, loop=False, max_pixels=1000)
    frames = list(source)
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[1].pixels, images[1])
    assert sorted(p.name for p in source.unreadable) == ['frame0b.png', 'frame1a.png']


def test_video_over_max_pixels_is_refused_from_its_capture_properties(tmp_path):
    path = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    with pytest.raises(SourceError, match=r'64x48 frames = 3072 pixels, more than the limit'):
        CaptureSource(str(path), max_pixels=3000)
    with CaptureSource(str(path), max_pixels=3072) as source:
        assert source.read().pixels.shape == (48, 64, 3)
