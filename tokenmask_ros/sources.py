"""Frame sources for demos and tests: video files, image folders, cameras, synthetic scenes.

Plain Python (no ROS), so the CLI and benchmarks can read the same inputs as the
``image_source`` node. Every source yields :class:`Frame` objects in the encoding it
naturally produces (OpenCV reads BGR, the synthetic generator draws RGB), so the caller
converts at most once, into the encoding it publishes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tokenmask_ros.defaults import MAX_IMAGE_PIXELS
from tokenmask_ros.image_io import read_image_file
from tokenmask_ros.synthetic import SceneGenerator

IMAGE_SUFFIXES = frozenset(
    {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm'})


class SourceError(RuntimeError):
    """A source cannot be opened or read: the text says which and why."""


@dataclass(frozen=True)
class Frame:
    """One image and the ROS encoding of its pixels (``rgb8``, ``bgr8`` or ``mono8``)."""

    pixels: np.ndarray
    encoding: str
    index: int


class FrameSource:
    """Iterate frames with ``read()``; ``None`` means the source is exhausted."""

    description = 'frames'

    def read(self) -> Frame | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files and devices; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame


class SyntheticSource(FrameSource):
    """Endless deterministic synthetic scenes (``tokenmask_ros.synthetic``)."""

    def __init__(self, width: int = 640, height: int = 480, seed: int = 0):
        self._generator = SceneGenerator(height=height, width=width, seed=seed)
        self._index = 0
        self.description = f'synthetic scenes {width}x{height} (seed {seed})'

    def read(self) -> Frame:
        frame = Frame(self._generator.scene(self._index).image, 'rgb8', self._index)
        self._index += 1
        return frame


class FolderSource(FrameSource):
    """The images of one folder in natural-sorted order (``img2`` before ``img10``).

    An image whose header declares more than ``max_pixels`` is skipped like an unreadable
    one, before it is decoded.
    """

    def __init__(self, folder: str | Path, loop: bool = True,
                 max_pixels: int = MAX_IMAGE_PIXELS):
        folder = Path(folder)
        if not folder.is_dir():
            raise SourceError(f'image folder {folder} does not exist')
        self.paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                            key=_natural_key)
        if not self.paths:
            raise SourceError(f'image folder {folder} has no images '
                              f'({", ".join(sorted(IMAGE_SUFFIXES))})')
        self.folder = folder
        self.loop = loop
        self.max_pixels = max_pixels
        self.unreadable: set[Path] = set()
        self._next = 0
        self._index = 0
        self.description = f'{len(self.paths)} images in {folder}'

    def read(self) -> Frame | None:
        # Unreadable files are skipped (and listed in ``unreadable``); a whole pass over
        # the folder without one decodable image is an error rather than a silent stall.
        for _ in range(len(self.paths)):
            if self._next == len(self.paths):
                if not self.loop:
                    return None
                self._next = 0
            path = self.paths[self._next]
            self._next += 1
            try:
                pixels = read_image_file(path, self.max_pixels)
            except (ValueError, OSError):
                self.unreadable.add(path)
                continue
            frame = Frame(pixels, 'bgr8', self._index)
            self._index += 1
            return frame
        raise SourceError(f'none of the {len(self.paths)} files in {self.folder} is a '
                          'readable image')


class CaptureSource(FrameSource):
    """A video file or a camera device, read through OpenCV's VideoCapture.

    With ``max_pixels``, a stream whose frame size (from the capture properties, before any
    frame is read) exceeds it is refused; a decoded frame over it ends the stream with an
    error, for containers that do not report their size.
    """

    def __init__(self, target: str | int, loop: bool = False, width: int = 0, height: int = 0,
                 max_pixels: int | None = None):
        self._capture = cv2.VideoCapture(target)
        kind = 'camera device' if isinstance(target, int) else 'video file'
        if not self._capture.isOpened():
            raise SourceError(f'cannot open {kind} {target!r}')
        if isinstance(target, int) and width > 0 and height > 0:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.max_pixels = max_pixels
        self.target = target
        frame_width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        frame_height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if max_pixels is not None and frame_width * frame_height > max_pixels:
            self._capture.release()
            raise SourceError(f'{kind} {target!r} has {frame_width}x{frame_height} frames = '
                              f'{frame_width * frame_height} pixels, more than the limit of '
                              f'{max_pixels}')
        self.is_camera = isinstance(target, int)
        self.loop = loop and not self.is_camera
        self._index = 0
        self.description = f'camera {target}' if self.is_camera else f'video {target}'

    def read(self) -> Frame | None:
        ok, pixels = self._capture.read()
        if not ok and self.loop and self._index > 0:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, pixels = self._capture.read()
        if not ok:
            return None
        if self.max_pixels is not None and pixels.shape[0] * pixels.shape[1] > self.max_pixels:
            raise SourceError(f'{self.target!r}: frame {self._index} has {pixels.shape[1]}x'
                              f'{pixels.shape[0]} pixels, more than the limit of '
                              f'{self.max_pixels}')
        frame = Frame(pixels, 'bgr8', self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self._capture.release()


def open_source(spec: str, loop: bool = True, width: int = 640, height: int = 480,
                seed: int = 0) -> FrameSource:
    """Open a source from one string, as the node's ``source`` parameter gives it.

    ``synthetic`` -> synthetic scenes of ``width`` x ``height``; ``camera:N`` or ``N`` ->
    camera device N; a folder -> its images; any other path -> a video file.
    """
    spec = spec.strip()
    if spec == 'synthetic':
        return SyntheticSource(width=width, height=height, seed=seed)
    camera = re.fullmatch(r'(?:camera:)?(\d+)', spec)
    if camera:
        return CaptureSource(int(camera.group(1)), width=width, height=height)
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path, loop=loop)
    if path.is_file():
        return CaptureSource(str(path), loop=loop)
    raise SourceError(f'source {spec!r} is not "synthetic", "camera:N", a folder or a file')


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', path.name)]
