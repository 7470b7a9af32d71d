"""The datasets ``evaluate.py`` (and periodic evaluation) runs on, with their classes.

Each reader is wrapped so a missing folder or a bad option becomes one
:class:`EvaluationError` line, and each dataset comes with :class:`EvalClass` entries that
map the model's contiguous class index to the dataset's category id and colour.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenmask_ros.viz import palette
from training.datasets.common import DatasetError


class EvaluationError(ValueError):
    """Evaluation cannot run: missing files, class mismatch, bad options (one-line message)."""


@dataclass(frozen=True)
class EvalClass:
    """One evaluated class: contiguous ``index``, the dataset's ``category_id``, its looks."""

    index: int
    category_id: int
    name: str
    is_thing: bool
    color: tuple[int, int, int]


# --------------------------------------------------------------------------- datasets


def synthetic_dataset(count: int, seed: int, size: tuple[int, int]):
    """``count`` validation scenes (generator stream 1) of ``size`` (H, W) and their classes."""
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
    from training.datasets.synthetic import SyntheticPanoptic

    if count < 1:
        raise EvaluationError(f'--synthetic needs at least 1 image, got {count}')
    if seed < 0:
        raise EvaluationError(f'--seed must be >= 0, got {seed}')
    try:
        dataset = SyntheticPanoptic(count, width=size[1], height=size[0], seed=seed,
                                    split='val')
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    classes = [EvalClass(c.id, c.id + 1, c.name, c.is_thing, tuple(c.color))
               for c in SYNTHETIC_CLASSES]
    return dataset, classes


def coco_dataset(images_dir: str, panoptic_dir: str, json_file: str):
    """The COCO-panoptic reader on the given folders and its classes."""
    from training.datasets.coco_panoptic import CocoPanoptic

    try:
        dataset = CocoPanoptic(images_dir, panoptic_dir, json_file)
    except (FileNotFoundError, DatasetError) as error:
        raise EvaluationError(str(error)) from None
    if len(dataset) == 0:
        raise EvaluationError(f'{json_file} lists no annotated images')
    colors = palette(len(dataset.classes))
    classes = [EvalClass(c.index, c.category_id, c.name, c.is_thing,
                         tuple(c.color) if any(c.color) else tuple(int(v) for v in colors[i]))
               for i, c in enumerate(dataset.classes)]
    return dataset, classes


def ade20k_dataset(root: str):
    """The ADE20K SceneParsing validation split under ``root`` (``ADEChallengeData2016``)
    and its 150 classes (all stuff; ``category_id`` = the annotation value, class + 1)."""
    from training.datasets.ade20k_semantic import ADE20KSemantic

    try:
        dataset = ADE20KSemantic(root, 'validation')
    except (FileNotFoundError, DatasetError) as error:
        raise EvaluationError(str(error)) from None
    colors = palette(dataset.num_classes)
    classes = [EvalClass(i, i + 1, name, False, tuple(int(v) for v in colors[i]))
               for i, name in enumerate(dataset.class_names)]
    return dataset, classes


def check_classes(config, classes: list[EvalClass], source: str) -> None:
    """Refuse a checkpoint whose classes are not the dataset's (names, in order)."""
    names = [c.name for c in classes]
    if config.classes:
        model_names = [c.name for c in config.classes]
        if model_names != names:
            raise EvaluationError(
                f'class mismatch: the checkpoint predicts {model_names} but the {source} '
                f'classes are {names}')
    elif config.num_classes != len(classes):
        raise EvaluationError(
            f'class mismatch: the checkpoint has {config.num_classes} classes (no names) but '
            f'the {source} dataset has {len(classes)}')

