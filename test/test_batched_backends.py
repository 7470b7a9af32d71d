"""Batched inference: one backend call on [B, 3, H, W] with a content size per image gives
what B single calls give (ONNX Runtime and PyTorch), padded slots label nothing, and
``Segmenter.segment_batch`` equals the Segmenter called frame by frame, for frames of
different sizes and more frames than the export's batch.

Real ONNX Runtime sessions on real exports of the bundled model (batch 1 and batch 3),
real synthetic scenes; nothing is mocked.
"""

from __future__ import annotations

import numpy as np
import pytest

from tokenmask_ros.bundled import default_model_path
from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime import Segmenter
from tokenmask_ros.runtime.backends.base import fit_content_size
from tokenmask_ros.runtime.preprocess import InputError, letterbox
from tokenmask_ros.synthetic import SceneGenerator

pytest.importorskip('onnxruntime')

THRESHOLD = 0.3  # the bundled model's thing scores are often low: more segments to compare
# Different sizes (landscape, portrait, wide), so every slot has its own content size.
SIZES = [(120, 160), (240, 180), (100, 300)]


def scenes(sizes=SIZES, seed: int = 3) -> list[np.ndarray]:
    return [SceneGenerator(height=h, width=w, seed=seed + i).scene(i).image
            for i, (h, w) in enumerate(sizes)]


def letterboxed(images, input_size) -> tuple[np.ndarray, np.ndarray]:
    """``([B, 3, H, W] uint8, [B, 2] int32)`` of ``images`` letterboxed one by one."""
    canvases, contents = [], []
    for image in images:
        canvas, box = letterbox(image, input_size)
        canvases.append(canvas.copy())
        contents.append(box.content_size)
    return np.concatenate(canvases), np.array(contents, np.int32)


def slot(scores: PanopticScores, index: int) -> PanopticScores:
    return PanopticScores(*(np.asarray(field)[index:index + 1] for field in scores))


def assert_same_scores(actual: PanopticScores, expected: PanopticScores) -> None:
    for name in PanopticScores._fields:
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.shape == e.shape, name
        if a.dtype.kind == 'f':
            np.testing.assert_allclose(a, e, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(a, e, err_msg=name)


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    from tokenmask_ros.runtime.export import cached_onnx

    cache = tmp_path_factory.mktemp('cache')
    return {batch: cached_onnx(default_model_path(), 'fp32', cache, batch=batch)
            for batch in (1, 3)}


@pytest.fixture(scope='module')
def ort(exports):
    from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    backends = {batch: OnnxRuntimeBackend(path) for batch, path in exports.items()}
    yield backends
    for backend in backends.values():
        backend.close()


def test_batched_exports_are_cached_beside_batch_1_ones_with_per_image_content_sizes(
        exports, ort):
    assert exports[1].name.endswith('-fp32.onnx')  # batch-1 names (and caches) unchanged
    assert exports[3].name.endswith('-fp32-b3.onnx')
    shapes = {batch: {i.name: i.shape for i in backend.session.get_inputs()}
              for batch, backend in ort.items()}
    assert shapes[1]['content_size'] == [2]  # what every earlier export takes
    assert shapes[3]['content_size'] == [3, 2]
    assert shapes[3]['image'][0] == 3
    assert (ort[1].batch, ort[3].batch) == (1, 3)


def test_onnxruntime_batch_of_3_equals_3_single_runs(ort):
    images, contents = letterboxed(scenes(), ort[1].input_size)
    assert len({tuple(c) for c in contents}) == 3  # three different content sizes
    batched = ort[3].run(images, contents, THRESHOLD)
    assert batched.segment_map.shape == (3, *ort[1].input_size)
    for index in range(3):
        single = ort[1].run(images[index:index + 1], contents[index], THRESHOLD)
        assert single.keep.any(), 'the bundled model keeps nothing: nothing to compare'
        assert_same_scores(slot(batched, index), single)
        # Nothing outside the slot's own content is labelled.
        height, width = contents[index]
        assert (batched.segment_map[index, height:] == -1).all()
        assert (batched.segment_map[index, :, width:] == -1).all()


def test_a_padded_slot_labels_nothing_and_leaves_the_others_alone(ort):
    images, contents = letterboxed(scenes()[:2], ort[1].input_size)
    padded = np.concatenate([images, images[:1]])  # stale pixels in the empty slot
    padded_contents = np.concatenate([contents, np.zeros((1, 2), np.int32)])
    batched = ort[3].run(padded, padded_contents, THRESHOLD)
    assert (batched.segment_map[2] == -1).all()
    assert not batched.mask_area[2].any() and not batched.won_area[2].any()
    for index in range(2):
        assert_same_scores(slot(batched, index),
                           ort[1].run(images[index:index + 1], contents[index], THRESHOLD))


def test_torch_batch_equals_single_runs_and_runs_any_batch():
    from tokenmask_ros.model import load_checkpoint
    from tokenmask_ros.runtime.backends.torch_backend import TorchBackend

    backend = TorchBackend(load_checkpoint(default_model_path()))
    assert backend.batch is None
    images, contents = letterboxed(scenes(), backend.input_size)
    batched = backend.run(images, contents, THRESHOLD)
    for index in range(3):
        single = backend.run(images[index:index + 1], contents[index], THRESHOLD)
        assert single.keep.any()
        for name in PanopticScores._fields:  # float noise of batched matmuls: near-equal
            a, e = getattr(slot(batched, index), name), getattr(single, name)
            if name == 'segment_map':
                assert np.mean(a != e) < 1e-3, f'slot {index}: {np.mean(a != e):.2%} differ'
            elif a.dtype.kind == 'f':
                np.testing.assert_allclose(a, e, atol=1e-4, err_msg=name)
            elif name in ('mask_area', 'won_area'):
                np.testing.assert_allclose(a, e, atol=max(1, int(0.001 * a.max())))
            else:
                np.testing.assert_array_equal(a, e, err_msg=name)


def test_backends_refuse_a_batch_that_does_not_fit_the_export_in_one_line(ort):
    images, contents = letterboxed(scenes(), ort[1].input_size)
    with pytest.raises(ValueError, match=r'runs images of shape \[3, 3, 240, 320\], got '
                                         r'\[2, 3, 240, 320\]'):
        ort[3].run(images[:2], contents[:2], THRESHOLD)
    with pytest.raises(ValueError, match=r'content_size must have shape \[3, 2\]'):
        ort[3].run(images, contents[:2], THRESHOLD)


def test_fit_content_size_reshapes_only_what_means_the_same():
    np.testing.assert_array_equal(fit_content_size([[4, 5]], (2,)), [4, 5])
    np.testing.assert_array_equal(fit_content_size([4, 5], (1, 2)), [[4, 5]])
    np.testing.assert_array_equal(fit_content_size([4, 5], (3, 2)), [[4, 5]] * 3)
    assert fit_content_size([4, 5], (2,)).dtype == np.int32
    with pytest.raises(ValueError, match=r'shape \[2\]'):
        fit_content_size([[4, 5], [6, 7]], (2,))


@pytest.mark.parametrize('backend', ['onnxruntime', 'torch'])
def test_segment_batch_equals_the_segmenter_frame_by_frame(tmp_path, backend):
    """4 frames of 3 sizes through a batch-3 export: one full call, then one padded call."""
    images = scenes([*SIZES, (90, 90)])
    with Segmenter(default_model_path(), backend, 'cpu', score_threshold=THRESHOLD,
                   cache_dir=tmp_path, batch=3) as batched, \
            Segmenter(default_model_path(), backend, 'cpu', score_threshold=THRESHOLD,
                      cache_dir=tmp_path) as single:
        assert batched.backend.batch == (3 if backend == 'onnxruntime' else None)
        predictions = batched.segment_batch(images)
        timing = batched.last_timing
        assert timing.preprocess > 0 and timing.inference > 0 and timing.postprocess > 0
        assert len(predictions) == len(images)
        for image, prediction in zip(images, predictions, strict=True):
            expected = single(image)
            assert expected.segments
            assert prediction.panoptic.shape == image.shape[:2]
            if backend == 'onnxruntime':  # the same kernels: the same answer
                np.testing.assert_array_equal(prediction.panoptic, expected.panoptic)
                assert [(s.id, s.class_id, s.bbox) for s in prediction.segments] == \
                       [(s.id, s.class_id, s.bbox) for s in expected.segments]
            else:
                assert np.mean(prediction.panoptic != expected.panoptic) < 2e-3
        with pytest.raises(InputError, match='at least one image'):
            batched.segment_batch([])
        with pytest.raises(InputError, match=r'shape \(H, W, 3\)'):
            batched.segment_batch([images[0], images[1][..., 0]])
