"""The paper's configs (training/configs/generate.py): they load, their models build (on the
meta device, with each dataset's real class count) and their data pipelines run on tiny
fixture datasets in the real on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from tokenmask_ros.model import build_model
from training.configs.generate import DATASETS, HEADS, SIZES, config, names
from training.datasets import collate, id2rgb
from training.datasets.build import build_dataset
from training.datasets.loader import SeededTransform
from training.datasets.transforms import TrainTransform
from training.train_config import load_train_config, model_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'training' / 'configs'
NUM_CLASSES = {'ade20k_panoptic_640': 150, 'ade20k_semantic_512': 150,
               'coco_panoptic_640': 133, 'coco_instance_640': 80,
               'cityscapes_semantic_1024': 19}
SEMANTIC = ('ade20k_semantic_512', 'cityscapes_semantic_1024')


def test_the_forty_configs_are_committed_and_generated():
    paper = sorted(p.stem for p in CONFIGS.glob('*.yaml') if not p.stem.startswith('synthetic'))
    assert paper == sorted(names()) and len(paper) == 40
    assert set(DATASETS) == set(NUM_CLASSES)
    for name in paper:
        dataset, size, head = name.rsplit('_', 2)
        assert yaml.safe_load((CONFIGS / f'{name}.yaml').read_text()) == \
            config(dataset, size, head), f'{name}.yaml is stale: run generate.py'


@pytest.mark.parametrize('dataset', list(DATASETS))
def test_models_build_on_meta(dataset):
    _, classes, img_size, queries, epochs, _ = DATASETS[dataset]
    assert classes == NUM_CLASSES[dataset]
    for size in SIZES:
        for head in HEADS:
            config = load_train_config(CONFIGS / f'{dataset}_{size}_{head}.yaml')
            assert config.optim.batch_size == 16 and config.optim.epochs == epochs
            mconfig = model_config(config, [{'name': f'class_{i}', 'is_thing': True}
                                            for i in range(classes)])
            assert mconfig.img_size == (img_size, img_size) and mconfig.num_queries == queries
            assert (mconfig.head, mconfig.output_stride) == (head, 4)
            assert mconfig.mask_size == (img_size // 4, img_size // 4)
            with torch.device('meta'):
                model = build_model(mconfig)
            assert model.class_head.weight.shape[0] == classes + 1
            assert model.queries.weight.shape[0] == queries


# --- fixture datasets in the real formats --------------------------------------------------

SIZE = (24, 32)  # H, W


def write_panoptic(json_file: Path, panoptic_dir: Path, categories: list[dict],
                   images: list[dict]) -> None:
    """COCO-panoptic files; ``images[]``: id, path (where the picture goes), file_name (JSON),
    segments: (segment id, category id, iscrowd, (row slice, column slice))."""
    panoptic_dir.mkdir(parents=True, exist_ok=True)
    entries, annotations = [], []
    for image in images:
        ids = np.zeros(SIZE, np.int64)
        info = []
        for segment_id, category_id, crowd, (rows, cols) in image['segments']:
            ids[rows, cols] = segment_id
            info.append({'id': segment_id, 'category_id': category_id, 'iscrowd': crowd,
                         'bbox': [0, 0, 1, 1], 'area': 1})
        image['path'].parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image['path']), np.full((*SIZE, 3), 100, np.uint8))
        png = f'{image["id"]}_panoptic.png'
        cv2.imwrite(str(panoptic_dir / png), id2rgb(ids)[..., ::-1])
        entries.append({'id': image['id'], 'file_name': image['file_name'],
                        'height': SIZE[0], 'width': SIZE[1]})
        annotations.append({'image_id': image['id'], 'file_name': png, 'segments_info': info})
    json_file.write_text(json.dumps({'images': entries, 'annotations': annotations,
                                     'categories': categories}))


def segments(first: int, second: int, crowd: int = 0):
    """Stuff at the top, two instances of thing ``second`` below (sparse category ids)."""
    return [(first, first, 0, (slice(0, 8), slice(None))),
            (second * 1000, second, crowd, (slice(8, 24), slice(0, 10))),
            (second * 1000 + 1, second, 0, (slice(8, 24), slice(12, 32)))]


def coco_fixture(root: Path, *extra: str) -> list[str]:
    categories = [{'id': 1, 'name': 'person', 'isthing': 1}, {'id': 3, 'name': 'car', 'isthing': 1},
                  {'id': 7, 'name': 'road', 'isthing': 0}, {'id': 12, 'name': 'sky', 'isthing': 0}]
    images = [{'id': i, 'path': root / 'images' / f'{i:012d}.jpg', 'file_name': f'{i:012d}.jpg',
               'segments': segments(stuff, thing, crowd)}
              for i, (stuff, thing, crowd) in enumerate(((7, 1, 1), (12, 3, 0)))]
    write_panoptic(root / 'panoptic.json', root / 'panoptic', categories, images)
    return [f'data.images_dir={root / "images"}', f'data.panoptic_dir={root / "panoptic"}',
            f'data.json_file={root / "panoptic.json"}', *extra]


def cityscapes_fixture(root: Path) -> list[str]:
    """cityscapesscripts' createPanopticImgs layout: images under leftImg8bit/<split>/<city>/."""
    categories = [{'id': 7, 'name': 'road', 'isthing': 0}, {'id': 24, 'name': 'person',
                                                            'isthing': 1},
                  {'id': 26, 'name': 'car', 'isthing': 1}]
    images = []
    for city, stuff, thing in (('aachen', 7, 26), ('zurich', 7, 24)):
        image_id = f'{city}_000000_000019'
        images.append({'id': image_id, 'file_name': f'{image_id}_gtFine_leftImg8bit.png',
                       'path': root / 'leftImg8bit' / 'train' / city /
                       f'{image_id}_leftImg8bit.png', 'segments': segments(stuff, thing, 1)})
    gt = root / 'gtFine'
    write_panoptic(gt / 'cityscapes_panoptic_train.json', gt / 'cityscapes_panoptic_train',
                   categories, images)
    return [f'data.images_dir={root / "leftImg8bit" / "train"}',
            f'data.panoptic_dir={gt / "cityscapes_panoptic_train"}',
            f'data.json_file={gt / "cityscapes_panoptic_train.json"}']


def ade20k_fixture(root: Path) -> list[str]:
    for split in ('training', 'validation'):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
    for index in (1, 2):
        name = f'ADE_train_{index:08d}'
        labels = np.zeros(SIZE, np.uint8)
        labels[:8], labels[8:, :16], labels[8:, 16:] = index, 150, 0
        cv2.imwrite(str(root / 'images' / 'training' / f'{name}.jpg'),
                    np.full((*SIZE, 3), 100, np.uint8))
        cv2.imwrite(str(root / 'annotations' / 'training' / f'{name}.png'), labels)
    return [f'data.root={root}']


FIXTURES = {'ade20k_panoptic_640': coco_fixture, 'coco_panoptic_640': coco_fixture,
            'coco_instance_640': coco_fixture, 'ade20k_semantic_512': ade20k_fixture,
            'cityscapes_semantic_1024': cityscapes_fixture}
FIXTURE_CLASSES = {'ade20k_panoptic_640': 4, 'coco_panoptic_640': 4, 'coco_instance_640': 2,
                   'ade20k_semantic_512': 150, 'cityscapes_semantic_1024': 3}


@pytest.mark.parametrize('dataset', list(DATASETS))
def test_data_pipeline_on_fixture(dataset, tmp_path):
    config = load_train_config(CONFIGS / f'{dataset}_tiny_tokenmask.yaml',
                               [*FIXTURES[dataset](tmp_path / 'data'), 'data.num_workers=0'])
    raw, classes = build_dataset(config.data)
    assert len(raw) == 2 and len(classes) == FIXTURE_CLASSES[dataset]
    mconfig = model_config(config, classes)
    # as train.py builds it
    data = SeededTransform(raw, TrainTransform(mconfig.img_size, tuple(config.data.scale_range),
                                               color_jitter=config.data.color_jitter),
                           config.seed)
    images, targets = next(iter(DataLoader(data, 2, collate_fn=collate)))
    size = DATASETS[dataset][2]
    assert images.shape == (2, 3, size, size) and images.dtype == torch.uint8
    for target in targets:
        labels = target['labels']
        assert target['masks'].shape[1:] == (size, size) and len(labels) == len(target['masks'])
        assert labels.numel() == 0 or 0 <= int(labels.min()) <= int(labels.max()) < len(classes)
        assert not target['is_crowd'].any()
        if dataset in SEMANTIC:
            assert 'semantic' in target and len(labels.unique()) == len(labels)
    if dataset == 'coco_instance_640':
        assert [c['name'] for c in classes] == ['person', 'car']
        _, target = raw[1]  # road + two cars -> the two cars, renumbered
        assert target['labels'].tolist() == [1, 1]
    if dataset == 'cityscapes_semantic_1024':
        _, target = raw[0]  # road + crowd car + car -> one road mask, one car mask
        assert target['labels'].tolist() == [0, 2] and not target['is_crowd'].any()
        assert target['semantic'][0, 0] == 0 and target['semantic'][8, 11] == 255
        assert int(target['masks'][1].sum()) == 16 * 30


@pytest.mark.parametrize('dataset', list(DATASETS))
def test_missing_dataset_paths_are_clear(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default datasets/... paths do not exist here
    config = load_train_config(CONFIGS / f'{dataset}_small_eomt.yaml')
    first = config.data.root if dataset == 'ade20k_semantic_512' else config.data.images_dir
    with pytest.raises(FileNotFoundError, match=f'folder not found: {first}'):
        build_dataset(config.data)
