"""Published label sets: which classes are things or stuff, and their standard colours.

A checkpoint's ``id2label`` only names its classes; panoptic decoding also needs to know
which are countable things (split into instances) and which are stuff (one region per
class), and users expect the datasets' usual colours. The data lives in JSON files beside
this module (``label_sets/<name>.json``, a list of ``{name, isthing, color}``, the same
format :func:`load_label_set_file` reads for any other label set):

- ``coco_panoptic``: COCO panoptic, 133 classes (80 things, 53 stuff), as in panopticapi's
  ``panoptic_coco_categories.json``;
- ``ade20k_panoptic``: ADE20K panoptic, 150 classes (100 things), as in Mask2Former's
  ADE20K panoptic metadata;
- ``cityscapes``: the 19 Cityscapes train classes (8 things), with Cityscapes' colours.

The module itself imports no torch (only the ``ClassInfo`` dataclass).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

from tokenmask_ros.model.config import ClassInfo

log = logging.getLogger('tokenmask_ros.model')

LABEL_SETS = ('coco_panoptic', 'ade20k_panoptic', 'cityscapes')
# label_set values besides the names above and a path to a .json file.
AUTO, ALL_THINGS = 'auto', 'things'
CHOICES = (AUTO, *LABEL_SETS, ALL_THINGS)
# Suffixes that distinguish panopticapi's names ("sky-other-merged", "door-stuff") from the
# plain names that converted configs may use ("sky", "door").
_SUFFIXES = (' merged', ' other', ' stuff')


class LabelSetError(ValueError):
    """A label set cannot be read or does not fit the model: the message says why."""


def normalize_name(name: str) -> tuple[str, ...]:
    """The spellings a class name may match: case, ``_``/``-``/space and suffixes ignored.

    ADE20K names list synonyms ("road, route"); each synonym is one accepted spelling.
    """
    text = re.sub(r'[\s_\-]+', ' ', str(name).lower()).strip()
    spellings = {text}
    for part in text.split(','):
        part = part.strip()
        spellings.add(part)
        changed = True
        while changed:  # "wall other merged" -> "wall other" -> "wall"
            changed = False
            for suffix in _SUFFIXES:
                if part.endswith(suffix) and len(part) > len(suffix):
                    part = part[:-len(suffix)].strip()
                    spellings.add(part)
                    changed = True
    spellings.discard('')
    return tuple(sorted(spellings))


def _parse(data: object, source: str) -> tuple[ClassInfo, ...]:
    if not isinstance(data, list) or not data:
        raise LabelSetError(f'{source}: expected a non-empty JSON list of '
                            '{"name", "isthing", "color"} objects')
    classes = []
    for index, item in enumerate(data):
        where = f'{source}: class {index}'
        if not isinstance(item, dict):
            raise LabelSetError(f'{where}: expected a JSON object, got {type(item).__name__}')
        unknown = set(item) - {'name', 'isthing', 'color', 'id', 'supercategory'}
        if unknown:
            raise LabelSetError(f'{where}: unknown key(s) {sorted(unknown)}')
        name = item.get('name')
        if not isinstance(name, str) or not name.strip():
            raise LabelSetError(f'{where}: "name" must be a non-empty string')
        isthing = item.get('isthing', True)
        if isthing not in (True, False, 0, 1):  # panopticapi writes 0/1
            raise LabelSetError(f'{where} ({name}): "isthing" must be true/false or 1/0')
        color = item.get('color')
        if color is not None:
            if (not isinstance(color, list) or len(color) != 3 or any(
                    not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255
                    for v in color)):
                raise LabelSetError(f'{where} ({name}): "color" must be [r, g, b] in 0..255')
            color = tuple(color)
        classes.append(ClassInfo(name.strip(), bool(isthing), color))
    names = [c.name for c in classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LabelSetError(f'{source}: duplicate class names {duplicates}')
    return tuple(classes)


def load_label_set_file(path: str | Path) -> tuple[ClassInfo, ...]:
    """Classes of another label set: a JSON list of ``{name, isthing, color}`` in class order.

    ``isthing`` defaults to true and ``color`` to none (the palette picks one); panopticapi's
    ``id`` and ``supercategory`` keys are accepted and ignored, so its categories file loads.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelSetError(f'{path}: not a readable JSON label set: {error}') from None
    return _parse(data, str(path))


@cache
def published_classes(name: str) -> tuple[ClassInfo, ...]:
    """The classes of one of :data:`LABEL_SETS`, in the published class order."""
    if name not in LABEL_SETS:
        raise LabelSetError(f'unknown label set {name!r}; choose from {", ".join(CHOICES)} '
                            'or a .json file')
    text = resources.files(__package__).joinpath('label_sets', f'{name}.json').read_text()
    return _parse(json.loads(text), f'label set {name}')


def _same_names(names: Sequence[str], classes: Sequence[ClassInfo]) -> bool:
    return len(names) == len(classes) and all(
        set(normalize_name(ours)) & set(normalize_name(theirs.name))
        for ours, theirs in zip(names, classes, strict=True))


def match_label_set(names: Sequence[str]) -> str | None:
    """The published label set whose class list ``names`` is, in order; else ``None``."""
    for name in LABEL_SETS:
        if _same_names(names, published_classes(name)):
            return name
    return None


def classes_for(names: Sequence[str], label_set: str | Path = AUTO, *,
                num_classes: int | None = None) -> tuple[ClassInfo, ...]:
    """Class metadata for a model whose classes are ``names`` (its ``id2label``).

    ``label_set``: ``'auto'`` takes the published set that ``names`` match, else marks
    every class a thing with a logged warning; one of :data:`LABEL_SETS` forces that set;
    ``'things'`` marks all classes things without a warning; a path ending in ``.json`` is
    read with :func:`load_label_set_file`. A published set keeps the model's own names and
    adds flags and colours; a file's names replace them. The class count must fit
    (``num_classes``, else ``len(names)``); with no names, a set or file supplies them.
    """
    names = [str(n) for n in names]
    count = num_classes if num_classes is not None else len(names)
    if names and len(names) != count:
        raise LabelSetError(f'{len(names)} class names for {count} classes')
    if label_set == AUTO:
        matched = match_label_set(names) if names else None
        if matched is None:
            if names:
                log.warning('the %d class names match no known label set (%s), so every '
                            'class is treated as a thing; pass a label set name or a JSON '
                            'file to mark stuff classes', count, ', '.join(LABEL_SETS))
                return tuple(ClassInfo(n) for n in names)
            return ()
        label_set = matched
    if label_set == ALL_THINGS:
        return tuple(ClassInfo(n) for n in names)
    if str(label_set).lower().endswith('.json'):
        classes, what = load_label_set_file(label_set), f'label set file {label_set}'
    else:
        classes, what = published_classes(label_set), f'label set {label_set}'
    if len(classes) != count:
        raise LabelSetError(f'{what} has {len(classes)} classes but the model has {count}')
    if names and not str(label_set).lower().endswith('.json'):
        classes = tuple(ClassInfo(n, c.is_thing, c.color)
                        for n, c in zip(names, classes, strict=True))
    return classes
