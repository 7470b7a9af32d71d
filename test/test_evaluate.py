"""training/evaluate.py: metrics (PQ, mask AP, mIoU), padded and sliding-window inference,
COCO-panoptic prediction files, ADE20K semantic evaluation, grid plot, clear errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tokenmask_ros.model import (
    ClassInfo,
    TokenMaskConfig,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from tokenmask_ros.model.postprocess import Instances, Prediction, semantic_scores
from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
from training import evaluate as ev
from training.datasets.coco_panoptic import CocoPanoptic, rgb2id
from training.datasets.common import masks_to_semantic
from training.datasets.synthetic import SyntheticPanoptic
from training.eval_data import ade20k_dataset, synthetic_dataset
from training.eval_metrics import EvalMetrics
from training.eval_outputs import coco_annotation
from training.eval_report import format_table
from training.inference import predict
from training.letterbox import preprocess
from training.metrics import target_panoptic
from training.sliding_window import semantic_windows, sliding_window_semantic

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'training' / 'evaluate.py'
SYNTHETIC_INFO = tuple(ClassInfo(c.name, c.is_thing, tuple(c.color)) for c in SYNTHETIC_CLASSES)


def tiny_config(classes=SYNTHETIC_INFO, num_classes=None) -> TokenMaskConfig:
    return TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=64, embed_dim=32, depth=2,
                           num_heads=2, num_queries=10, num_query_blocks=1,
                           num_classes=num_classes or len(classes), classes=classes)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.safetensors'
    return save_checkpoint(build_model(tiny_config()), path)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)  # generous: CI cores may be busy


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ev.parse_args(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ('--checkpoint', '--synthetic', '--seed', '--size', '--coco-panoptic', '--out',
                 '--plot', '--score-threshold', '--overlap-threshold', '--batch-size',
                 '--device', '--ade20k-semantic', '--semantic-mode', '--instance',
                 '--no-instance'):
        assert flag in text


def test_synthetic_run_writes_metrics_predictions_and_grid(checkpoint, tmp_path):
    out = tmp_path / 'eval'
    # A low score threshold so the random model keeps some segments to write out.
    result = run_script('--checkpoint', str(checkpoint), '--synthetic', '3', '--plot', '2',
                        '--out', str(out), '--score-threshold', '0.0', '--batch-size', '2',
                        '--size', '80x48', '--instance', '--semantic-mode', 'sliding')
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in ('PQ', 'mIoU', 'AP50'))

    metrics = json.loads((out / 'metrics.json').read_text())
    for key in ('pq', 'sq', 'rq', 'pq_things', 'sq_things', 'rq_things', 'pq_stuff',
                'sq_stuff', 'rq_stuff', 'miou', 'pixel_accuracy'):
        assert 0.0 <= metrics[key] <= 100.0, key
    for key in ('ap', 'ap50', 'ap75', 'ap_small', 'ap_medium', 'ap_large'):
        assert metrics[key] == -1.0 or 0.0 <= metrics[key] <= 100.0, key  # -1: none to average
    assert metrics['config']['instance'] and metrics['config']['instance_top_k'] == 100
    assert metrics['config']['semantic_mode'] == 'sliding'
    assert metrics['num_images'] == 3
    assert list(metrics['per_class']) == [c.name for c in SYNTHETIC_CLASSES]
    for entry in metrics['per_class'].values():
        assert 0.0 <= entry['pq'] <= 100.0
        assert entry['iou'] is None or 0.0 <= entry['iou'] <= 100.0
        if entry['is_thing']:
            assert entry['ap'] == -1.0 or 0.0 <= entry['ap'] <= 100.0
        else:
            assert 'ap' not in entry  # mask AP is over thing classes only

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
    classes = synthetic_dataset(4, seed=3, size=(48, 64))[1]
    dataset = SyntheticPanoptic(4, width=64, height=48, seed=3, split='val')
    metrics = EvalMetrics(classes, instance=True)
    flags = [c.is_thing for c in classes]
    annotations = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        oracle = Prediction(target_panoptic(target, flags).numpy(),
                            masks_to_semantic(target['masks'], target['labels']).numpy())
        things = torch.as_tensor(flags)[target['labels']] & ~target['is_crowd']
        count = int(things.sum())
        oracle.instances = Instances(target['masks'][things].as_subclass(torch.Tensor),
                                     torch.ones(count), target['labels'][things],
                                     torch.arange(count))
        metrics.update(oracle, target)
        annotations.append(coco_annotation(oracle, classes, index, target['file_name'],
                                              tmp_path / 'panoptic'))
    result = metrics.compute()
    for key in ('pq', 'sq', 'rq', 'pq_things', 'pq_stuff', 'miou', 'ap', 'ap50', 'ap75'):
        assert result[key] == pytest.approx(100.0), key
    assert {c['ap'] for c in result['per_class'].values() if c['is_thing']} <= {100.0, -1.0}
    assert 'PQ' in format_table(result) and 'AP75' in format_table(result)

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
    model = load_checkpoint(checkpoint)
    images = [torch.randint(0, 256, (3, 40, 90), dtype=torch.uint8),
              torch.randint(0, 256, (3, 70, 30), dtype=torch.uint8)]
    predictions = predict(model, images, [c.is_thing for c in SYNTHETIC_INFO],
                             score_threshold=0.0)
    assert [p.panoptic.shape for p in predictions] == [(40, 90), (70, 30)]
    assert [p.semantic_argmax.shape for p in predictions] == [(40, 90), (70, 30)]
    tensor, letterbox = preprocess(images[0], (64, 64))
    assert tensor.shape == (3, 64, 64) and letterbox.content_size == (28, 64)
    assert float(tensor[:, 28:].abs().max()) == 0.0  # padding at the bottom


def test_semantic_windows_follow_eomt_layout():
    # A 320x240 (W x H) image, 320 input: the shorter side is scaled to 320, the longer to
    # 427, and two 320-wide windows share the 213-pixel overlap.
    assert semantic_windows((240, 320), (320, 320)) == ((320, 427), [(0, 0), (0, 107)])
    assert semantic_windows((64, 128), (64, 64)) == ((64, 128), [(0, 0), (0, 64)])
    assert semantic_windows((100, 50), (64, 64)) == ((128, 64), [(0, 0), (64, 0)])
    assert semantic_windows((32, 32), (64, 64)) == ((64, 64), [(0, 0)])
    for length in range(64, 4 * 64 + 1):  # EoMT's float formula, every pixel covered
        resized, corners = semantic_windows((64, length), (64, 64))
        count = math.ceil(length / 64)
        step = 64 - (count * 64 - length) / (count - 1) if count > 1 else 0
        assert resized == (64, length)
        assert [left for _, left in corners] == [int(j * step) for j in range(count)]
        covered = np.zeros(length, int)
        for _, left in corners:
            covered[left:left + 64] += 1
        assert covered.min() >= 1 and corners[-1][1] + 64 == length


def test_sliding_window_on_a_fitting_square_image_equals_padded_inference(checkpoint):
    model = load_checkpoint(checkpoint).eval()
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    scores = sliding_window_semantic(model, image)
    padded = predict(model, [image], [c.is_thing for c in SYNTHETIC_INFO])[0]
    with torch.inference_mode():
        output = model(preprocess(image, (64, 64))[0][None])
        expected = semantic_scores(output.class_logits, output.mask_logits, (64, 64))[0]
    torch.testing.assert_close(scores, expected)
    np.testing.assert_array_equal(scores.argmax(0).numpy(), padded.semantic_argmax)
    sliding = predict(model, [image], [c.is_thing for c in SYNTHETIC_INFO],
                         semantic_mode='sliding')[0]
    np.testing.assert_array_equal(sliding.semantic_argmax, padded.semantic_argmax)


def test_sliding_window_averages_overlapping_windows(checkpoint):
    model = load_checkpoint(checkpoint).eval()
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)  # windows at x = 0 and 32
    scores = sliding_window_semantic(model, image)
    with torch.inference_mode():
        crops = torch.stack([image[..., :64], image[..., 32:]]).float() / 255.0
        output = model(crops)
        left, right = semantic_scores(output.class_logits, output.mask_logits, (64, 64))
    assert scores.shape == (len(SYNTHETIC_INFO), 64, 96)
    torch.testing.assert_close(scores[..., :32], left[..., :32])
    torch.testing.assert_close(scores[..., 32:64], (left[..., 32:] + right[..., :32]) / 2)
    torch.testing.assert_close(scores[..., 64:], right[..., 32:])
    # Resized images come back at their own size, every pixel scored.
    wide = sliding_window_semantic(model, torch.randint(0, 256, (3, 30, 70),
                                                           dtype=torch.uint8))
    assert wide.shape == (len(SYNTHETIC_INFO), 30, 70) and bool(torch.isfinite(wide).all())


@pytest.fixture()
def ade_root(tmp_path) -> Path:
    """A tiny ADEChallengeData2016: two validation images (wide, tall), labels 0 = ignore,
    classes 1..3, and one training image the evaluation must not read."""
    root = tmp_path / 'ADEChallengeData2016'
    rng = np.random.default_rng(0)
    for split, name, (height, width) in (('validation', 'ADE_val_00000001', (40, 90)),
                                         ('validation', 'ADE_val_00000002', (70, 50)),
                                         ('training', 'ADE_train_00000001', (20, 20))):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        labels = np.zeros((height, width), np.uint8)
        labels[:, width // 3:] = 1
        labels[height // 2:, : width // 2] = 3
        labels[:3] = 0
        cv2.imwrite(str(root / 'images' / split / f'{name}.jpg'), image)
        cv2.imwrite(str(root / 'annotations' / split / f'{name}.png'), labels)
    return root


def test_ade20k_semantic_runs_end_to_end(ade_root, tmp_path, capsys):
    torch.manual_seed(0)
    path = save_checkpoint(build_model(tiny_config((), num_classes=150)),
                           tmp_path / 'ade.safetensors')
    out = tmp_path / 'eval'
    code = ev.main(['--checkpoint', str(path), '--ade20k-semantic', str(ade_root),
                    '--out', str(out), '--plot', '1', '--batch-size', '2'])
    assert code == 0, capsys.readouterr().err
    assert 'mIoU' in capsys.readouterr().out
    metrics = json.loads((out / 'metrics.json').read_text())
    assert 0.0 <= metrics['miou'] <= 100.0 and metrics['num_images'] == 2
    assert 'pq' not in metrics and 'ap' not in metrics  # a semantic benchmark
    assert metrics['config']['semantic_mode'] == 'sliding'
    assert len(metrics['per_class']) == 150
    for name, size in (('ADE_val_00000001', (40, 90)), ('ADE_val_00000002', (70, 50))):
        png = cv2.imread(str(out / 'semantic' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert png.shape == size and png.min() >= 1 and png.max() <= 150
    assert cv2.imread(str(out / 'predictions_grid.png')) is not None
    assert not (out / 'predictions.json').exists()

    # Padded inference works too; --instance has nothing to measure on ADE20K.
    code = ev.main(['--checkpoint', str(path), '--ade20k-semantic', str(ade_root),
                    '--out', str(out), '--semantic-mode', 'padded'])
    assert code == 0
    assert json.loads((out / 'metrics.json').read_text())['config']['semantic_mode'] == 'padded'
    capsys.readouterr()
    assert ev.main(['--checkpoint', str(path), '--ade20k-semantic', str(ade_root),
                    '--out', str(out), '--instance']) == 1
    assert 'no thing classes' in capsys.readouterr().err


def test_ade20k_ignored_pixels_do_not_count(ade_root):
    dataset, classes = ade20k_dataset(str(ade_root))
    assert len(dataset) == 2 and len(classes) == 150
    metrics = EvalMetrics(classes, panoptic=False)
    for index in range(len(dataset)):
        _, target = dataset[index]
        semantic = target['semantic'].numpy().astype(np.int64)
        assert set(np.unique(semantic)) == {0, 2, 255}  # 0 -> ignore, 1..3 -> 0..2
        metrics.update(np.where(semantic == 255, 1, semantic), target)  # wrong where ignored
    result = metrics.compute()
    assert result['miou'] == pytest.approx(100.0) and 'pq' not in result
    assert 'mIoU' in format_table(result)


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


# --------------------------------------------------------------------------- deployed path


def test_backend_scores_the_deployed_path_and_an_exported_graph(tmp_path):
    """--backend: the bundled model through the Segmenter (ONNX Runtime) scores like the
    padded torch evaluation on the same scenes, and its exported .onnx file runs too."""
    pytest.importorskip('onnxruntime')
    from tokenmask_ros.bundled import default_model_path
    from tokenmask_ros.runtime.export import export_onnx

    bundled = default_model_path()
    common = ['--synthetic', '6', '--seed', '12345', '--no-instance']
    assert ev.main(['--checkpoint', str(bundled), *common, '--out', str(tmp_path / 'torch')]) == 0
    assert ev.main(['--checkpoint', str(bundled), *common, '--backend', 'onnxruntime',
                    '--out', str(tmp_path / 'ort')]) == 0
    onnx_path = export_onnx(load_checkpoint(bundled), tmp_path / 'bundled.onnx')
    assert ev.main(['--checkpoint', str(onnx_path), '--synthetic', '6', '--seed', '12345',
                    '--backend', 'onnxruntime', '--out', str(tmp_path / 'onnx')]) == 0
    torch_metrics, ort_metrics, onnx_metrics = (
        json.loads((tmp_path / name / 'metrics.json').read_text())
        for name in ('torch', 'ort', 'onnx'))
    assert ort_metrics['config']['backend'] == 'onnxruntime'
    assert ort_metrics['config']['precision'] == 'fp32'
    assert ort_metrics['config']['semantic_mode'] == 'deployed'
    assert 'ap' not in ort_metrics  # no per-query masks in the graph
    # Same model, same scenes: decoding at the input size vs the original size differs only
    # on boundary pixels, so PQ stays close; both exports are the same graph.
    assert ort_metrics['pq'] > 20
    assert abs(ort_metrics['pq'] - torch_metrics['pq']) < 3.0
    assert onnx_metrics['pq'] == pytest.approx(ort_metrics['pq'], abs=1e-6)
    assert len(json.loads((tmp_path / 'ort' / 'predictions.json').read_text())[
        'annotations']) == 6


def test_backend_refusals_are_one_line(checkpoint, tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    from tokenmask_ros.runtime.export import export_onnx

    onnx_path = export_onnx(load_checkpoint(checkpoint), tmp_path / 'tiny.onnx')
    assert ev.main(['--checkpoint', str(onnx_path), '--synthetic', '2',
                    '--out', str(tmp_path)]) == 1
    assert '--backend onnxruntime' in capsys.readouterr().err
    assert ev.main(['--checkpoint', str(checkpoint), '--synthetic', '2', '--instance',
                    '--backend', 'onnxruntime', '--out', str(tmp_path)]) == 1
    assert 'per-query masks' in capsys.readouterr().err
    assert ev.main(['--checkpoint', str(checkpoint), '--synthetic', '2', '--backend', 'torch',
                    '--precision', 'fp16', '--out', str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith('evaluate.py: error: --backend torch') and '\n' not in error
