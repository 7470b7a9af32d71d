"""The three runs of the tracking evaluation, over sequences of frames with ground truth.

* ``association``: the tracker fed the ground-truth thing masks with per-frame shuffled
  instance numbers (what a perfect per-frame segmenter would hand it), so only its
  association is measured;
* ``model+tracker``: the segmenter's predictions through the tracker (the node's output);
* ``model``: the segmenter's predictions as they come, numbered per frame (no tracking).

A sequence is any iterable of ``(RGB image, ground-truth FrameInstances)``: the synthetic
video generator (:func:`synthetic_sequences`) or folders with ``images/`` and a MOTS
``gt.txt`` (:func:`folder_sequences`). One model prediction per frame feeds both model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from tokenmask_ros.defaults import LABEL_DIVISOR
from training.tracking_metrics import (
    FrameInstances,
    frame_from_panoptic,
    frame_from_prediction,
    read_mots,
)

ASSOCIATION, MODEL_TRACKER, MODEL = 'association', 'model+tracker', 'model'
METHODS = (ASSOCIATION, MODEL_TRACKER, MODEL)
#: What each run means, for the table.
DESCRIPTIONS = {
    ASSOCIATION: 'tracker on ground-truth masks, shuffled per-frame numbers',
    MODEL_TRACKER: 'bundled model + tracker',
    MODEL: 'bundled model, per-frame numbering (no tracking)',
}
VOID = -1


@dataclass(frozen=True)
class TrackingSequence:
    """A named sequence: ``frames()`` yields ``(image, ground truth)`` each time it is
    called; ``is_thing`` flags the classes the tracker treats as things."""

    name: str
    length: int
    is_thing: tuple[bool, ...]
    frames: Callable[[], Iterator[tuple[np.ndarray, FrameInstances]]]


def _sequence_frame_instances(frame) -> FrameInstances:
    """Ground truth of a ``synthetic_video.SequenceFrame``: its thing segments with their
    sequence-wide track ids."""
    classes = {int(s.id): int(s.category_id) for s in frame.segments if s.is_thing}
    missing = set(classes) - set(frame.track_ids)
    if missing:
        raise ValueError(f'frame {frame.index}: things {sorted(missing)} have no track id')
    return frame_from_panoptic(frame.panoptic, {pid: (int(frame.track_ids[pid]), cls)
                                                for pid, cls in classes.items()})


def synthetic_sequences(count: int, length: int, size: tuple[int, int] = (320, 240),
                        seed: int = 0) -> list[TrackingSequence]:
    """``count`` synthetic videos of ``length`` frames, ``size`` = (width, height); sequence
    ``i`` uses seed ``seed + i``."""
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
    from tokenmask_ros.synthetic_video import SequenceGenerator

    width, height = size
    is_thing = tuple(c.is_thing for c in SYNTHETIC_CLASSES)

    def frames(sequence_seed: int) -> Iterator[tuple[np.ndarray, FrameInstances]]:
        generator = SequenceGenerator(height=height, width=width, seed=sequence_seed,
                                      length=length)
        for index in range(len(generator)):
            frame = generator.frame(index)
            yield frame.image, _sequence_frame_instances(frame)

    return [TrackingSequence(f'synthetic_seed{seed + i}', length, is_thing,
                             lambda s=seed + i: frames(s)) for i in range(count)]


def _sequence_folders(root: Path) -> list[Path]:
    if (root / 'gt.txt').is_file():
        return [root]
    folders = sorted(p for p in root.iterdir() if (p / 'gt.txt').is_file()) \
        if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f'{root}: neither a sequence folder (gt.txt, images/) nor a '
                                'folder of them')
    return folders


def read_rgb(path: Path) -> np.ndarray:
    from tokenmask_ros.defaults import MAX_IMAGE_PIXELS
    from tokenmask_ros.image_io import read_image_file

    return np.ascontiguousarray(read_image_file(path, MAX_IMAGE_PIXELS)[..., ::-1])


def folder_sequences(root: str | Path) -> list[TrackingSequence]:
    """Sequences on disk: ``root`` holds ``gt.txt`` (MOTS, frames from 0) and ``images/``
    (one image per frame, sorted by name), or sub-folders that each do."""
    sequences = []
    for folder in _sequence_folders(Path(root)):
        images = sorted(p for p in (folder / 'images').glob('*')
                        if p.suffix.lower() in ('.png', '.jpg', '.jpeg'))
        if not images:
            raise FileNotFoundError(f'{folder / "images"}: no PNG or JPEG frames')
        first = read_rgb(images[0])
        gt = read_mots(folder / 'gt.txt', num_frames=len(images), size=first.shape[:2])
        classes = np.concatenate([f.classes for f in gt] + [np.zeros(1, np.int64)])
        is_thing = (True,) * int(classes.max() + 1)

        def frames(images=images, gt=gt) -> Iterator[tuple[np.ndarray, FrameInstances]]:
            for path, truth in zip(images, gt, strict=True):
                image = read_rgb(path)
                if image.shape[:2] != truth.size:
                    raise ValueError(f'{path}: {image.shape[1]}x{image.shape[0]} but gt.txt '
                                     f'says {truth.size[1]}x{truth.size[0]}')
                yield image, truth

        sequences.append(TrackingSequence(folder.name, len(images), is_thing, frames))
    return sequences


def shuffled_panoptic(truth: FrameInstances, rng: np.random.Generator,
                      label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    """The ground-truth things as a panoptic map ``class * label_divisor + n``, with ``n``
    a random permutation of 1..N per frame (the track ids are thrown away); VOID elsewhere."""
    panoptic = np.full(truth.size, VOID, np.int32)
    if not truth.masks:
        return panoptic
    masks = mask_utils.decode(list(truth.masks))  # (H, W, N) uint8
    numbers = rng.permutation(len(truth.ids)) + 1
    if numbers.max() >= label_divisor:
        raise ValueError(f'{len(truth.ids)} things in one frame: label_divisor {label_divisor}'
                         ' is too small')
    for k in range(len(truth.ids)):  # one vectorised write per segment
        panoptic[masks[..., k] > 0] = truth.classes[k] * label_divisor + numbers[k]
    return panoptic


class SequenceRuns:
    """Feeds one sequence's frames to the chosen runs; ``predictions[method]`` and
    ``truth`` collect the :class:`FrameInstances` to score.

    ``segmenter``: a callable image -> ``Prediction`` (``tokenmask_ros.runtime.Segmenter``),
    needed by the model runs; ``tracker_factory(is_thing)`` makes a fresh
    ``PanopticTracker`` (one per run and sequence).
    """

    def __init__(self, methods: Sequence[str], is_thing: Sequence[bool], *,
                 segmenter=None, model_is_thing: Sequence[bool] | None = None,
                 tracker_factory: Callable | None = None, seed: int = 0,
                 label_divisor: int = LABEL_DIVISOR):
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise ValueError(f'unknown runs {sorted(unknown)}; choose from {", ".join(METHODS)}')
        if segmenter is None and ({MODEL, MODEL_TRACKER} & set(methods)):
            raise ValueError('the model runs need a segmenter')
        if tracker_factory is None:
            from tokenmask_ros.tracking import PanopticTracker

            tracker_factory = PanopticTracker
        self.methods = tuple(methods)
        self.is_thing = list(is_thing)
        self.segmenter = segmenter
        self.label_divisor = label_divisor
        self.rng = np.random.default_rng(seed)
        self.trackers = {}
        if ASSOCIATION in methods:
            self.trackers[ASSOCIATION] = tracker_factory(list(is_thing))
        if MODEL_TRACKER in methods:
            flags = model_is_thing if model_is_thing is not None else is_thing
            self.trackers[MODEL_TRACKER] = tracker_factory(list(flags))
        self.truth: list[FrameInstances] = []
        self.predictions: dict[str, list[FrameInstances]] = {m: [] for m in self.methods}

    def add(self, image: np.ndarray, truth: FrameInstances) -> None:
        self.truth.append(truth)
        if ASSOCIATION in self.methods:
            from tokenmask_ros.tracking import prediction_from_panoptic

            given = prediction_from_panoptic(
                shuffled_panoptic(truth, self.rng, self.label_divisor), self.is_thing,
                self.label_divisor)
            tracked = self.trackers[ASSOCIATION].update(given, image)
            self.predictions[ASSOCIATION].append(frame_from_prediction(tracked))
        if MODEL in self.methods or MODEL_TRACKER in self.methods:
            prediction = self.segmenter(image)
            if MODEL in self.methods:
                self.predictions[MODEL].append(frame_from_prediction(prediction))
            if MODEL_TRACKER in self.methods:
                tracked = self.trackers[MODEL_TRACKER].update(prediction, image)
                self.predictions[MODEL_TRACKER].append(frame_from_prediction(tracked))


def run_sequences(sequences: Iterable[TrackingSequence], methods: Sequence[str], *,
                  segmenter=None, model_is_thing=None, seed: int = 0, progress=None,
                  label_divisor: int = LABEL_DIVISOR
                  ) -> Iterator[tuple[TrackingSequence, SequenceRuns]]:
    """Each sequence with its finished runs; ``progress`` (a tqdm bar) advances per frame."""
    for number, sequence in enumerate(sequences):
        runs = SequenceRuns(methods, sequence.is_thing, segmenter=segmenter,
                            model_is_thing=model_is_thing, seed=seed + number,
                            label_divisor=label_divisor)
        for image, truth in sequence.frames():
            runs.add(image, truth)
            if progress is not None:
                progress.update(1)
        yield sequence, runs
