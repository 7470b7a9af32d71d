"""Segmenter (tokenmask_ros.runtime): odd frame sizes, bad input, thresholds, consistent output.

A real tiny model (2 blocks, 6 queries) with a non-square 96x64 (WxH) input is saved as a
checkpoint and run through the torch backend on CPU. Thresholds are 0 so that even random
weights produce segments to check.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tokenmask_ros.model import ClassInfo, TokenMaskConfig, build_model, save_checkpoint
from tokenmask_ros.runtime import InputError, Segmenter, check_thresholds

CLASSES = (ClassInfo('car', True, (200, 30, 30)), ClassInfo('road', False, (90, 90, 90)),
           ClassInfo('person', True, (30, 200, 30)), ClassInfo('sky', False, (40, 90, 220)))


def tiny_config(**overrides) -> TokenMaskConfig:
    values = {'backbone': 'vit_tiny_patch16_224', 'img_size': (64, 96), 'embed_dim': 32,
              'depth': 2, 'num_heads': 2, 'num_queries': 6, 'num_query_blocks': 1,
              'num_classes': len(CLASSES), 'classes': CLASSES}
    values.update(overrides)
    return TokenMaskConfig(**values)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_model(tiny_config()),
                           tmp_path_factory.mktemp('segmenter') / 'tiny.safetensors')


def open_segmenter(path, **options) -> Segmenter:
    options = {'score_threshold': 0.0, 'overlap_threshold': 0.0, **options}
    return Segmenter(path, 'torch', 'cpu', **options)


@pytest.fixture(scope='module')
def segmenter(checkpoint):
    with open_segmenter(checkpoint) as segmenter:
        yield segmenter


def frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB pattern with some noise (random weights still find structure in it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                     127 + 127 * np.sin(x / 7.0 + y / 11.0)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def assert_consistent(prediction, divisor: int = 1000) -> None:
    """Ids, areas, boxes, classes and the semantic map all agree with the panoptic map."""
    panoptic, semantic = prediction.panoptic, prediction.semantic
    assert panoptic.dtype == np.int32 and semantic.shape == panoptic.shape
    ids = [s.id for s in prediction.segments]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert set(np.unique(panoptic)) - {-1} == set(ids)
    for segment in prediction.segments:
        mask = panoptic == segment.id
        assert segment.area == int(mask.sum()) > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = segment.bbox
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert segment.class_id == segment.id // divisor
        assert segment.is_thing == CLASSES[segment.class_id].is_thing
        if not segment.is_thing:
            assert segment.id % divisor == 0  # stuff: instance 0
        assert 0.0 <= segment.score <= 1.0
    labelled = panoptic >= 0
    np.testing.assert_array_equal(semantic[labelled], panoptic[labelled] // divisor)
    assert (semantic[~labelled] == 255).all()


def test_odd_frame_size_is_segmented_at_its_own_resolution(segmenter):
    prediction = segmenter(frame(641, 479))
    assert prediction.panoptic.shape == (479, 641)
    assert prediction.segments, 'thresholds 0 should keep at least one segment'
    assert_consistent(prediction)
    timing = segmenter.last_timing
    assert timing.preprocess > 0 and timing.inference > 0 and timing.postprocess > 0
    assert timing.total == pytest.approx(timing.preprocess + timing.inference
                                         + timing.postprocess)


def test_a_12_megapixel_frame_is_handled(segmenter):
    image = np.repeat(np.repeat(frame(400, 300, seed=1), 10, axis=0), 10, axis=1)
    prediction = segmenter(image)
    assert prediction.panoptic.shape == (3000, 4000)
    assert_consistent(prediction)


@pytest.mark.parametrize('size', [(96, 64), (50, 200), (300, 40), (2, 2)])
def test_non_square_model_takes_landscape_portrait_and_tiny_frames(segmenter, size):
    assert segmenter.input_size == (64, 96)
    width, height = size
    prediction = segmenter(frame(width, height, seed=width))
    assert prediction.panoptic.shape == (height, width)
    assert_consistent(prediction)


def test_one_pixel_frame_is_rejected_naming_its_size(segmenter):
    with pytest.raises(InputError, match='1x1'):
        segmenter(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InputError, match='5x1'):
        segmenter(np.zeros((1, 5, 3), np.uint8))


@pytest.mark.parametrize(('image', 'message'), [
    (np.zeros((32, 32, 3), np.float32), 'uint8'),
    (np.zeros((32, 32, 3), np.uint16), 'uint8'),
    (np.zeros((32, 32), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((32, 32, 4), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((1, 32, 32, 3), np.uint8), r'\(H, W, 3\)'),
    ([[[0, 0, 0]]], 'NumPy array'),
])
def test_wrong_dtype_or_shape_is_rejected(segmenter, image, message):
    with pytest.raises(InputError, match=message):
        segmenter(image)


def test_max_pixels_limits_the_frame_size(checkpoint):
    with open_segmenter(checkpoint, max_pixels=100 * 80) as limited:
        assert limited(frame(100, 80)).panoptic.shape == (80, 100)
        with pytest.raises(InputError, match='101x80 pixels exceeds the limit of 8000'):
            limited(frame(101, 80))


@pytest.mark.parametrize(('options', 'message'), [
    ({'score_threshold': 1.5}, 'score_threshold'),
    ({'score_threshold': -0.1}, 'score_threshold'),
    ({'overlap_threshold': 2.0}, 'overlap_threshold'),
    ({'label_divisor': 6}, 'label_divisor'),
])
def test_bad_thresholds_are_rejected(checkpoint, options, message):
    with pytest.raises(ValueError, match=message):
        open_segmenter(checkpoint, **options)
    values = {'score_threshold': 0.5, 'overlap_threshold': 0.5, 'label_divisor': 1000,
              **options}
    with pytest.raises(ValueError, match=message):
        check_thresholds(**values, num_queries=6)


def test_thresholds_and_label_divisor_shape_the_output(checkpoint):
    image = frame(120, 90, seed=3)
    with open_segmenter(checkpoint, label_divisor=7) as small_divisor, \
            open_segmenter(checkpoint, score_threshold=1.0) as nothing_kept, \
            open_segmenter(checkpoint) as default:
        reference = default(image)
        relabelled = small_divisor(image)
        assert_consistent(relabelled, divisor=7)
        np.testing.assert_array_equal(relabelled.semantic, reference.semantic)
        empty = nothing_kept(image)
        assert empty.segments == [] and (empty.panoptic == -1).all()
        assert (empty.semantic == 255).all()


def test_the_same_frame_twice_gives_identical_output(segmenter):
    image = frame(200, 150, seed=4)
    first, second = segmenter(image), segmenter(image.copy())
    np.testing.assert_array_equal(first.panoptic, second.panoptic)
    np.testing.assert_array_equal(first.semantic, second.semantic)
    assert first.segments == second.segments


def test_reused_canvas_leaves_no_stale_padding(checkpoint):
    """A wide frame fills the canvas' top rows; a tall one after it must see zeros there."""
    wide = np.full((100, 800, 3), 255, np.uint8)  # content 96x12 (WxH), top rows
    tall = frame(30, 80, seed=5)  # content 24x64, padding on the right
    with open_segmenter(checkpoint) as reused, open_segmenter(checkpoint) as fresh:
        reused(wide)
        after_wide = reused(tall)
        clean = fresh(tall)
    np.testing.assert_array_equal(after_wide.panoptic, clean.panoptic)
    assert after_wide.segments == clean.segments


def test_checkpoint_without_class_names_treats_every_class_as_a_thing(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(build_model(tiny_config(classes=())), tmp_path / 'anon.safetensors')
    with open_segmenter(path) as segmenter:
        assert segmenter.is_thing.tolist() == [True] * len(CLASSES)
        prediction = segmenter(frame(64, 48))
    assert all(s.is_thing and s.id % 1000 >= 1 for s in prediction.segments)


@pytest.mark.parametrize(('options', 'message'), [
    ({'score_threshold': float('nan')}, 'score_threshold'),
    ({'score_threshold': '0.5'}, 'score_threshold'),
    ({'overlap_threshold': True}, 'overlap_threshold'),
    ({'label_divisor': 6}, 'label_divisor'),  # the model file has 6 queries
    ({'label_divisor': 1000.5}, 'label_divisor'),
    ({'max_pixels': 0}, 'max_pixels'),
    ({'backend': 'tensorrt8'}, 'backend'),
    ({'device': 'gpu'}, 'device'),
    ({'precision': 'int4'}, 'precision'),
])
def test_bad_arguments_are_refused_before_any_backend_is_built(checkpoint, tmp_path, options,
                                                                message):
    """The onnxruntime backend would first export the model into the cache folder."""
    arguments = {'backend': 'onnxruntime', 'device': 'cpu', 'precision': 'auto', **options}
    with pytest.raises(ValueError, match=message):
        Segmenter(checkpoint, arguments.pop('backend'), arguments.pop('device'),
                  arguments.pop('precision'), cache_dir=tmp_path, **arguments)
    assert not any(tmp_path.iterdir())


def test_set_thresholds_checks_both_before_applying_either(segmenter):
    original = (segmenter.score_threshold, segmenter.overlap_threshold)
    image = frame(120, 90, seed=6)
    try:
        segmenter.set_thresholds(score_threshold=1.0)
        assert segmenter.score_threshold == 1.0
        assert segmenter.overlap_threshold == original[1]
        assert segmenter(image).segments == []  # nothing scores above 1
        with pytest.raises(ValueError, match='overlap_threshold'):
            segmenter.set_thresholds(score_threshold=0.0, overlap_threshold=1.5)
        assert (segmenter.score_threshold, segmenter.overlap_threshold) == (1.0, original[1])
        segmenter.set_thresholds(overlap_threshold=0.25)
        assert (segmenter.score_threshold, segmenter.overlap_threshold) == (1.0, 0.25)
    finally:
        segmenter.set_thresholds(*original)
    assert segmenter(image).segments


def test_a_backend_that_fails_after_it_was_built_is_closed(checkpoint, tmp_path, monkeypatch):
    """An export whose stored config disagrees with its graph's input size."""
    onnx = pytest.importorskip('onnx')
    from tokenmask_ros.runtime import cached_onnx
    from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    model = onnx.load(cached_onnx(checkpoint, 'fp32', tmp_path / 'cache'))
    entry = next(p for p in model.metadata_props if p.key == 'config')
    config = json.loads(entry.value)
    config['img_size'] = [32, 32]
    entry.value = json.dumps(config)
    onnx.save(model, tmp_path / 'mismatched.onnx')
    closed = []
    real_close = OnnxRuntimeBackend.close
    monkeypatch.setattr(OnnxRuntimeBackend, 'close',
                        lambda self: (closed.append(self), real_close(self)))
    with pytest.raises(ValueError, match='export the model again'):
        Segmenter(tmp_path / 'mismatched.onnx', 'onnxruntime', 'cpu')
    assert len(closed) == 1 and closed[0].session is None
