"""The synthetic scenes (``tokenmask_ros.synthetic``) as a dataset: in memory or as files.

``write_split`` / ``write_dataset`` write real COCO-panoptic files that
:class:`~training.datasets.coco_panoptic.CocoPanoptic` reads back exactly::

    OUT/images/{train,val}/scene_00000.png      # RGB (png, lossless; or jpg)
    OUT/panoptic/{train,val}/scene_00000.png    # segment id = R + 256 G + 256^2 B
    OUT/panoptic_{train,val}.json               # images, annotations, categories

Category ids are the generator's class ids + 1 (COCO style, none is 0), segment ids are
``category_id * LABEL_DIVISOR + instance`` (never 0 = VOID), so the reader's contiguous
classes equal the generator's class ids. Train scenes come from generator stream 0, val
scenes from stream 1 of the same seed: the splits never share a scene.

``SyntheticPanoptic`` yields the same samples straight from the generator (no files).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from tokenmask_ros.coco_panoptic_io import write_png
from tokenmask_ros.image_io import write_rgb
from tokenmask_ros.synthetic import LABEL_DIVISOR, SYNTHETIC_CLASSES, SceneGenerator
from training.datasets.coco_panoptic import CocoPanoptic
from training.datasets.common import make_sample
from training.settings import IMAGE_FORMATS

SPLIT_STREAMS = {'train': 0, 'val': 1}


def categories() -> list[dict]:
    """COCO ``categories`` of the synthetic classes (id = class id + 1)."""
    return [{'id': c.id + 1, 'name': c.name, 'isthing': int(c.is_thing), 'color': list(c.color),
             'supercategory': 'thing' if c.is_thing else 'stuff'} for c in SYNTHETIC_CLASSES]


def scene_generator(split: str, width: int, height: int, seed: int) -> SceneGenerator:
    if split not in SPLIT_STREAMS:
        raise ValueError(f'split must be one of {sorted(SPLIT_STREAMS)}, got {split!r}')
    return SceneGenerator(height=height, width=width, seed=seed, stream=SPLIT_STREAMS[split])


def split_paths(root: str | Path, split: str) -> tuple[Path, Path, Path]:
    """``(images_dir, panoptic_dir, json_file)`` of a split written by :func:`write_split`."""
    root = Path(root)
    return root / 'images' / split, root / 'panoptic' / split, root / f'panoptic_{split}.json'


def open_split(root: str | Path, split: str, transforms: Callable | None = None) -> CocoPanoptic:
    """The COCO-panoptic reader on a written split."""
    return CocoPanoptic(*split_paths(root, split), transforms=transforms)


def coco_segments(scene) -> tuple[np.ndarray, list[dict]]:
    """File segment ids ``(H, W)`` and ``segments_info`` of a generated scene."""
    offset = LABEL_DIVISOR  # category id = class id + 1, so shift the panoptic id by one class
    ids = scene.panoptic + offset
    info = [{'id': int(s.id + offset), 'category_id': s.category_id + 1, 'iscrowd': 0,
             'bbox': [int(v) for v in s.bbox], 'area': int(s.area)} for s in scene.segments]
    return ids, info


def write_split(root: str | Path, split: str, count: int, width: int, height: int,
                seed: int, image_format: str = 'png', progress: Callable[[Iterable], Iterable]
                | None = None) -> Path:
    """Write ``count`` scenes of one split; returns the JSON path (written last)."""
    if count < 0:
        raise ValueError(f'count must be >= 0, got {count}')
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f'image_format must be one of {IMAGE_FORMATS}, got {image_format!r}')
    generator = scene_generator(split, width, height, seed)
    images_dir, panoptic_dir, json_file = split_paths(root, split)
    images_dir.mkdir(parents=True, exist_ok=True)
    panoptic_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    indices = range(count) if progress is None else progress(range(count))
    for index in indices:
        scene = generator.scene(index)
        name = f'scene_{index:05d}'
        image_name, png_name = f'{name}.{image_format}', f'{name}.png'
        ids, info = coco_segments(scene)
        write_rgb(images_dir / image_name, scene.image, jpeg_quality=95)
        write_png(panoptic_dir / png_name, ids)
        images.append({'id': index, 'file_name': image_name, 'width': width, 'height': height})
        annotations.append({'image_id': index, 'file_name': png_name, 'segments_info': info})
    data = {
        'info': {'description': f'tokenmask_ros synthetic scenes, {split} split',
                 'generator': 'tokenmask_ros.synthetic.SceneGenerator', 'seed': seed,
                 'stream': SPLIT_STREAMS[split], 'width': width, 'height': height,
                 'label_divisor': LABEL_DIVISOR},
        'images': images,
        'annotations': annotations,
        'categories': categories(),
    }
    temporary = json_file.with_suffix('.json.tmp')
    temporary.write_text(json.dumps(data))
    temporary.replace(json_file)
    return json_file


class SyntheticPanoptic(Dataset):
    """``length`` generated scenes as ``(image, target)`` samples, without files.

    Same sample format and class indices as reading :func:`write_split`'s files.
    """

    def __init__(self, length: int, width: int = 640, height: int = 480, seed: int = 0,
                 split: str = 'train', transforms: Callable | None = None, **generator_kwargs):
        if length < 0:
            raise ValueError(f'length must be >= 0, got {length}')
        if split not in SPLIT_STREAMS:
            raise ValueError(f'split must be one of {sorted(SPLIT_STREAMS)}, got {split!r}')
        self.length = int(length)
        self.generator = SceneGenerator(height=height, width=width, seed=seed,
                                        stream=SPLIT_STREAMS[split], **generator_kwargs)
        self.transforms = transforms
        self.class_names = [c.name for c in SYNTHETIC_CLASSES]
        self.thing_classes = tuple(c.id for c in SYNTHETIC_CLASSES if c.is_thing)
        self.stuff_classes = tuple(c.id for c in SYNTHETIC_CLASSES if not c.is_thing)

    num_classes = len(SYNTHETIC_CLASSES)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(f'index {index} out of range for {self.length} scenes')
        scene = self.generator.scene(index)
        segment_ids = np.array([s.id for s in scene.segments], np.int64)
        masks = scene.panoptic[None] == segment_ids[:, None, None].astype(np.int32)
        labels = np.array([s.category_id for s in scene.segments], np.int64)
        sample = make_sample(scene.image, masks, labels, np.zeros(len(labels), bool),
                             segment_ids=segment_ids + LABEL_DIVISOR, image_id=index,
                             file_name=f'scene_{index:05d}.png')
        return self.transforms(*sample) if self.transforms is not None else sample
