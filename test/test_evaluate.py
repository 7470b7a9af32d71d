"""training/evaluate.py: metrics, COCO-panoptic prediction files, grid plot, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tokenmask_ros.model import ClassInfo, TokenMaskConfig, build_model, save_checkpoint
from tokenmask_ros.model.postprocess import Prediction
from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
from training import evaluate as ev
from training.datasets.coco_panoptic import CocoPanoptic, rgb2id
from training.datasets.common import masks_to_semantic
from training.datasets.synthetic import SyntheticPanoptic
from training.metrics import target_panoptic

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'training' / 'evaluate.py'
SYNTHETIC_INFO = tuple(ClassInfo(c.name, c.is_thing, tuple(c.color)) for c in SYNTHETIC_CLASSES)


def tiny_config(classes=SYNTHETIC_INFO) -> TokenMaskConfig:
    return TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=64, embed_dim=32, depth=2,
                           num_heads=2, num_queries=10, num_query_blocks=1,
                           num_classes=len(classes), classes=classes)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.safetensors'
    return save_checkpoint(build_model(tiny_config()), path)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ev.parse_args(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ('--checkpoint', '--synthetic', '--seed', '--size', '--coco-panoptic', '--out',
                 '--plot', '--score-threshold', '--overlap-threshold', '--batch-size',
                 '--device'):
        assert flag in text


def test_synthetic_run_writes_metrics_predictions_and_grid(checkpoint, tmp_path):
    out = tmp_path / 'eval'
    # A low score threshold so the random model keeps some segments to write out.
    result = run_script('--checkpoint', str(checkpoint), '--synthetic', '3', '--plot', '2',
                        '--out', str(out), '--score-threshold', '0.0', '--batch-size', '2',
                        '--size', '80x48')
    assert result.returncode == 0, result.stderr
    assert 'PQ' in result.stdout and 'mIoU' in result.stdout

    metrics = json.loads((out / 'metrics.json').read_text())
    for key in ('pq', 'sq', 'rq', 'pq_things', 'sq_things', 'rq_things', 'pq_stuff',
                'sq_stuff', 'rq_stuff', 'miou', 'pixel_accuracy'):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics['num_images'] == 3
    assert list(metrics['per_class']) == [c.name for c in SYNTHETIC_CLASSES]
    for entry in metrics['per_class'].values():
        assert 0.0 <= entry['pq'] <= 100.0
        assert entry['iou'] is None or 0.0 <= entry['iou'] <= 100.0

    predictions = json.loads((out / 'predictions.json').read_text())
    assert [c['id'] for c in predictions['categories']] == [c.id + 1 for c in SYNTHETIC_CLASSES]
    category_ids = {c['id'] for c in predictions['categories']}
    assert len(predictions['annotations']) == 3
    for annotation in predictions['annotations']:
        png = cv2.imread(str(out / 'panoptic' / annotation['file_name']), cv2.IMREAD_COLOR)
        assert png.shape == (48, 80, 3)  # the original image size, not the model's 64x64
        ids = rgb2id(png[..., ::-1])
        listed = {s['id']: s for s in annotation['segments_info']}
        assert set(np.unique(ids)) - {0} == set(listed)
        for segment_id, segment in listed.items():
            assert segment['category_id'] in category_ids
            assert segment['area'] == int((ids == segment_id).sum())
    grid = cv2.imread(str(out / 'predictions_grid.png'))
    assert grid is not None and grid.shape[0] > 2 * 48


def test_oracle_predictions_score_100(tmp_path):
    classes = ev.synthetic_dataset(4, seed=3, size=(48, 64))[1]
    dataset = SyntheticPanoptic(4, width=64, height=48, seed=3, split='val')
    metrics = ev.EvalMetrics(classes)
    flags = [c.is_thing for c in classes]
    annotations = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        oracle = Prediction(target_panoptic(target, flags).numpy(),
                            masks_to_semantic(target['masks'], target['labels']).numpy())
        metrics.update(oracle, target)
        annotations.append(ev.coco_annotation(oracle, classes, index, target['file_name'],
                                              tmp_path / 'panoptic'))
    result = metrics.compute()
    for key in ('pq', 'sq', 'rq', 'pq_things', 'pq_stuff', 'miou'):
        assert result[key] == pytest.approx(100.0), key
    assert 'PQ' in ev.format_table(result)

    # The written oracle predictions are a COCO-panoptic dataset equal to the ground truth.
    (tmp_path / 'images').mkdir()
    images = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        cv2.imwrite(str(tmp_path / 'images' / target['file_name']),
                    image.numpy().transpose(1, 2, 0)[..., ::-1])
        images.append({'id': index, 'file_name': target['file_name'], 'width': 64,
                       'height': 48})
    categories = [{'id': c.category_id, 'name': c.name, 'isthing': int(c.is_thing)}
                  for c in classes]
    (tmp_path / 'pred.json').write_text(json.dumps(
        {'images': images, 'annotations': annotations, 'categories': categories}))
    reread = CocoPanoptic(tmp_path / 'images', tmp_path / 'panoptic', tmp_path / 'pred.json')
    for index in range(len(dataset)):
        _, expected = dataset[index]
        _, actual = reread[index]
        assert torch.equal(target_panoptic(actual, flags), target_panoptic(expected, flags))


def test_predict_decodes_at_original_resolution(checkpoint):
    model = ev.load_checkpoint(checkpoint)
    images = [torch.randint(0, 256, (3, 40, 90), dtype=torch.uint8),
              torch.randint(0, 256, (3, 70, 30), dtype=torch.uint8)]
    predictions = ev.predict(model, images, [c.is_thing for c in SYNTHETIC_INFO],
                             score_threshold=0.0)
    assert [p.panoptic.shape for p in predictions] == [(40, 90), (70, 30)]
    assert [p.semantic_argmax.shape for p in predictions] == [(40, 90), (70, 30)]
    tensor, letterbox = ev.preprocess(images[0], (64, 64))
    assert tensor.shape == (3, 64, 64) and letterbox.content_size == (28, 64)
    assert float(tensor[:, 28:].abs().max()) == 0.0  # padding at the bottom


def test_missing_checkpoint_exits_1_with_one_line(tmp_path):
    result = run_script('--checkpoint', str(tmp_path / 'nope.safetensors'), '--synthetic', '2',
                        '--out', str(tmp_path / 'out'))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'checkpoint not found' in lines[0]


def test_class_mismatch_is_refused(tmp_path, capsys):
    classes = (ClassInfo('cat', True), ClassInfo('sky', False))
    path = save_checkpoint(build_model(tiny_config(classes)), tmp_path / 'other.safetensors')
    code = ev.main(['--checkpoint', str(path), '--synthetic', '2', '--out', str(tmp_path)])
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'class mismatch' in error
    assert not (tmp_path / 'metrics.json').exists()


def test_missing_coco_data_is_refused(checkpoint, tmp_path, capsys):
    code = ev.main(['--checkpoint', str(checkpoint), '--coco-panoptic', str(tmp_path / 'img'),
                    str(tmp_path / 'pan'), str(tmp_path / 'x.json'), '--out', str(tmp_path)])
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'not found' in error
