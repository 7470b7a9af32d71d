"""`tokenmask predict` and `tokenmask bench` on real files and models.

predict runs (as the installed command) on a folder with two PNGs and a short MJPG video;
its COCO-panoptic PNGs must decode to exactly what the Segmenter returns for the same
frames. bench runs with tiny repeats; combinations that cannot run here must be rows with
a reason, not crashes. Checks that need no fresh process call ``cli.main`` in-process
(torch is imported once), to keep the file fast.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, installed_executable, run_command

from tokenmask_ros import cli
from tokenmask_ros.coco_panoptic_io import rgb2id
from tokenmask_ros.model import ClassInfo, TokenMaskConfig, build_model, save_checkpoint
from tokenmask_ros.runtime import Segmenter
from tokenmask_ros.synthetic import SceneGenerator

CLASSES = (ClassInfo('car', True, (200, 30, 30)), ClassInfo('road', False, (90, 90, 90)),
           ClassInfo('person', True), ClassInfo('sky', False))
THRESHOLDS = ['--score-threshold', '0', '--overlap-threshold', '0']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=(64, 96), embed_dim=32,
                             depth=2, num_heads=2, num_queries=6, num_query_blocks=1,
                             num_classes=len(CLASSES), classes=CLASSES)
    return save_checkpoint(build_model(config),
                           tmp_path_factory.mktemp('model') / 'tiny.safetensors')


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    """A folder with two PNGs of different sizes and a 3-frame MJPG video."""
    root = tmp_path_factory.mktemp('inputs')
    folder = root / 'images'
    folder.mkdir()
    for index, (width, height) in enumerate(((160, 120), (90, 130))):
        image = SceneGenerator(height=height, width=width, seed=index).scene(0).image
        cv2.imwrite(str(folder / f'img{index + 1}.png'), image[..., ::-1])
    video = root / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 5, (112, 80))
    assert writer.isOpened(), 'OpenCV cannot write MJPG video here'
    generator = SceneGenerator(height=80, width=112, seed=7)
    for index in range(3):
        writer.write(generator.scene(index).image[..., ::-1].copy())
    writer.release()
    return folder, video


def tokenmask(*args: str, timeout: float = 120):
    return run_command([*installed_executable('tokenmask'), *args], timeout=timeout,
                       cwd=REPO_ROOT)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``tokenmask ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_video_rgb(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def test_defaults_module_is_torch_free():
    """The shared defaults are read by --help and the node: importing them loads no torch."""
    code = ('import sys, tokenmask_ros.defaults, tokenmask_ros.cli; '
            'print("torch" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == 'False'


# --- predict ---------------------------------------------------------------------------

def test_predict_writes_coco_panoptic_equal_to_the_segmenter(checkpoint, inputs, tmp_path):
    folder, video = inputs
    out = tmp_path / 'out'
    result = tokenmask('predict', '--model', str(checkpoint), '--backend', 'torch',
                       '--device', 'cpu', *THRESHOLDS, str(folder), str(video), '-o', str(out))
    assert result.returncode == 0, result.stderr
    assert 'segmented 5 frame(s)' in result.stdout

    data = json.loads((out / 'predictions.json').read_text())
    names = ['img1', 'img2', 'clip_000000', 'clip_000001', 'clip_000002']
    assert [a['file_name'] for a in data['annotations']] == [f'{n}.png' for n in names]

    # COCO-panoptic structure (panopticapi's fields).
    categories = {c['id']: c for c in data['categories']}
    assert list(categories) == [0, 1, 2, 3]
    assert [c['name'] for c in data['categories']] == [c.name for c in CLASSES]
    assert [c['isthing'] for c in data['categories']] == [1, 0, 1, 0]
    assert data['categories'][0]['color'] == [200, 30, 30]
    assert all(len(c['color']) == 3 for c in data['categories'])
    images = {i['id']: i for i in data['images']}
    assert len(images) == 5 and set(images) == {a['image_id'] for a in data['annotations']}
    assert images[0]['file_name'] == 'img1.png' and images[2]['frame'] == 0
    assert (images[1]['width'], images[1]['height']) == (90, 130)

    # The frames as the Segmenter sees them: PNGs exactly, video frames as OpenCV decodes.
    frames = [cv2.imread(str(folder / f'img{i}.png'))[..., ::-1] for i in (1, 2)]
    frames += read_video_rgb(video)
    assert len(frames) == 5
    with Segmenter(checkpoint, 'torch', 'cpu', score_threshold=0.0,
                   overlap_threshold=0.0) as segmenter:
        expected = [segmenter(np.ascontiguousarray(f)) for f in frames]

    found_segments = 0
    for name, annotation, rgb, prediction in zip(names, data['annotations'], frames, expected,
                                                 strict=True):
        png = cv2.imread(str(out / 'panoptic' / f'{name}.png'), cv2.IMREAD_COLOR)
        file_ids = rgb2id(png[..., ::-1])
        assert file_ids.shape == rgb.shape[:2] == (images[annotation['image_id']]['height'],
                                                    images[annotation['image_id']]['width'])
        info = annotation['segments_info']
        assert [s['id'] for s in info] == list(range(1, len(info) + 1))
        assert set(np.unique(file_ids)) - {0} == {s['id'] for s in info}
        lookup = np.full(len(info) + 1, -1, np.int64)
        for segment in info:
            lookup[segment['id']] = segment['panoptic_id']
            mask = file_ids == segment['id']
            assert segment['area'] == int(mask.sum())
            ys, xs = np.nonzero(mask)
            assert segment['bbox'] == [int(xs.min()), int(ys.min()),
                                       int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            assert segment['category_id'] == segment['panoptic_id'] // 1000
            assert segment['iscrowd'] == 0 and 0.0 <= segment['score'] <= 1.0
        np.testing.assert_array_equal(lookup[file_ids], prediction.panoptic)
        assert [s['panoptic_id'] for s in info] == [s.id for s in prediction.segments]
        found_segments += len(info)

        overlay = cv2.imread(str(out / 'overlay' / f'{name}.jpg'))
        assert overlay is not None and overlay.shape == rgb.shape
    assert found_segments > 0


def test_predict_without_overlays_and_with_duplicate_stems(checkpoint, inputs, tmp_path,
                                                          capsys):
    folder, _ = inputs
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'img1.png').write_bytes((folder / 'img1.png').read_bytes())
    out = tmp_path / 'out'
    code, stdout, stderr = run_main(
        capsys, 'predict', '--model', str(checkpoint), '--backend', 'torch', '--device', 'cpu',
        '--no-overlay', '--quiet', str(folder / 'img1.png'), str(other / 'img1.png'),
        '-o', str(out))
    assert code == 0, stderr
    assert stdout == ''
    assert sorted(p.name for p in (out / 'panoptic').iterdir()) == ['img1.png', 'img1_2.png']
    assert not (out / 'overlay').exists()


def test_predict_input_errors_are_one_line_with_exit_status_2(checkpoint, inputs, tmp_path):
    """Checked before the model loads, in a real process (stderr holds nothing else)."""
    folder, _ = inputs
    empty = tmp_path / 'empty'
    empty.mkdir()
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png at all')
    (tmp_path / 'notes.txt').write_text('neither an image nor a video')
    cases = [
        ([str(tmp_path / 'missing.png')], checkpoint, 'input not found'),
        ([str(empty)], checkpoint, 'has no images'),
        ([str(broken)], checkpoint, 'cannot read image'),
        ([str(tmp_path / 'notes.txt')], checkpoint, 'cannot open video file'),
        ([str(folder)], tmp_path / 'none.safetensors', 'model file not found'),
    ]
    for paths, model, message in cases:
        result = tokenmask('predict', '--model', str(model), *paths, '-o', str(tmp_path / 'o'))
        assert result.returncode == 2, (paths, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert lines[0].startswith('tokenmask predict: error: ')
    assert not (tmp_path / 'o').exists()


def test_predict_model_and_decoding_errors_exit_2(checkpoint, inputs, tmp_path, capsys):
    folder, _ = inputs
    code, _, stderr = run_main(capsys, 'predict', '--model', str(checkpoint), '--backend',
                               'torch', '--score-threshold', '2', str(folder), '-o',
                               str(tmp_path / 'out'))
    assert code == 2 and 'score_threshold must be' in stderr and 'got 2.0' in stderr
    # A PNG cut short passes the header check and fails while decoding, after the model
    # loaded (a progress bar may precede the error): still exit 2, error on the last line.
    truncated = tmp_path / 'truncated.png'
    truncated.write_bytes((folder / 'img1.png').read_bytes()[:200])
    code, _, stderr = run_main(capsys, 'predict', '--model', str(checkpoint), '--backend',
                               'torch', '--device', 'cpu', str(truncated), '-o',
                               str(tmp_path / 'out'))
    assert code == 2
    assert 'cannot read image' in stderr.strip().splitlines()[-1]


def test_predict_with_an_unusable_cache_folder(checkpoint, inputs, tmp_path, capsys):
    """--cache-dir naming a file: onnxruntime ends in one line (exit 1, no traceback); auto
    says why it moves on and segments with the next backend (torch needs no cache)."""
    folder, _ = inputs
    not_a_folder = tmp_path / 'cache_is_a_file'
    not_a_folder.write_text('')
    result = tokenmask('predict', '--model', str(checkpoint), '--backend', 'onnxruntime',
                       '--cache-dir', str(not_a_folder), '--quiet', str(folder), '-o',
                       str(tmp_path / 'ort'))
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert str(not_a_folder) in line and 'writable folder' in line, line
    result = tokenmask('predict', '--model', str(checkpoint), '--device', 'cpu', '--quiet',
                       '--cache-dir', str(not_a_folder), str(folder), '-o', str(tmp_path / 'auto'))
    assert result.returncode == 0, result.stderr
    assert 'onnxruntime failed' in result.stderr and 'trying the next backend' in result.stderr
    assert 'Traceback' not in result.stderr
    assert (tmp_path / 'auto' / 'predictions.json').is_file()


def png_declaring(path, width: int, height: int):
    """A small real PNG whose IHDR declares ``width`` x ``height`` (CRC recomputed): a
    decompression bomb's header, a few hundred bytes on disk."""
    data = bytearray(cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    assert data[12:16] == b'IHDR'
    data[16:24] = struct.pack('>II', width, height)
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_predict_skips_unreadable_and_oversized_files_and_writes_the_rest(
        checkpoint, inputs, tmp_path):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    for name in ('img1.png', 'img2.png'):
        (folder / name).write_bytes((inputs[0] / name).read_bytes())
    png_declaring(folder / 'big.png', 16384, 16384)
    (folder / 'x.png').write_text('not an image, despite its name')
    out = tmp_path / 'out'
    result = tokenmask('predict', '--model', str(checkpoint), '--backend', 'torch',
                       '--device', 'cpu', '--quiet', str(folder), '-o', str(out))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 'Traceback' not in result.stderr and len(lines) == 3, result.stderr
    big = next(line for line in lines if 'big.png' in line)
    assert big.startswith('tokenmask predict: warning: skipped: ')
    assert '16384x16384' in big and '--max-pixels' in big
    assert any('x.png' in line and 'cannot read image' in line for line in lines)
    assert lines[-1].startswith('tokenmask predict: error: 2 of 4 inputs skipped')
    data = json.loads((out / 'predictions.json').read_text())
    assert [i['file_name'] for i in data['images']] == ['img1.png', 'img2.png']
    assert sorted(p.name for p in (out / 'panoptic').iterdir()) == ['img1.png', 'img2.png']


def test_predict_max_pixels_applies_to_images_and_video_headers(checkpoint, inputs, tmp_path,
                                                                capsys):
    folder, video = inputs  # img1 160x120 = 19200, img2 90x130 = 11700, video 112x80 = 8960
    code, _, stderr = run_main(capsys, 'predict', '--model', str(checkpoint), '--backend',
                               'torch', '--device', 'cpu', '--quiet', '--max-pixels', '12000',
                               str(folder), str(video), '-o', str(tmp_path / 'out'))
    assert code == 1
    assert 'img1.png' in stderr and '160x120' in stderr and 'img2.png' not in stderr
    assert stderr.strip().splitlines()[-1].startswith(
        'tokenmask predict: error: 1 of 3 inputs skipped')
    data = json.loads((tmp_path / 'out' / 'predictions.json').read_text())
    assert [i['file_name'] for i in data['images']] == [
        'img2.png', 'clip_000000.png', 'clip_000001.png', 'clip_000002.png']
    # The video alone, over the limit: refused from its capture properties, before the
    # model loads; a lone input's problem is the run's error (exit 2, one line).
    result = tokenmask('predict', '--model', str(checkpoint), '--max-pixels', '8000',
                       str(video), '-o', str(tmp_path / 'video_out'))
    assert result.returncode == 2
    assert result.stderr.count('\n') == 1 and '112x80 frames' in result.stderr
    assert '--max-pixels' in result.stderr
    code, _, stderr = run_main(capsys, 'predict', '--model', str(checkpoint), '--max-pixels',
                               '100', str(folder), '-o', str(tmp_path / 'none'))
    assert code == 2 and 'error: 2 of 2 inputs skipped' in stderr
    assert not (tmp_path / 'none' / 'predictions.json').exists()


def test_predict_refuses_a_checkpoint_whose_metadata_reaches_for_a_file(checkpoint, inputs,
                                                                        tmp_path):
    """backend_kwargs {'checkpoint_path': ...} would make timm load that file: refused."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(checkpoint), framework='pt') as handle:
        metadata = handle.metadata()
        state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    config = json.loads(metadata['config'])
    config['backbone_kwargs'] = {'checkpoint_path': '/etc/passwd'}
    hostile = tmp_path / 'hostile.safetensors'
    save_file(state, str(hostile), metadata={**metadata, 'config': json.dumps(config)})
    result = tokenmask('predict', '--model', str(hostile), '--backend', 'torch', '--device',
                       'cpu', str(inputs[0]), '-o', str(tmp_path / 'out'))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert lines[0].startswith('tokenmask predict: error: ')
    assert "'checkpoint_path' is not allowed" in lines[0]


def test_predict_and_bench_default_to_the_bundled_model(inputs, tmp_path, capsys, monkeypatch):
    from tokenmask_ros.bundled import BUNDLED_MODELS, default_model_path

    monkeypatch.chdir(tmp_path)  # the bare file name must not depend on the folder
    image = str(inputs[0] / 'img1.png')
    code, _, stderr = run_main(capsys, 'predict', '--backend', 'torch', '--device', 'cpu',
                               '--quiet', image, '-o', 'default')
    assert code == 0, stderr
    code, _, stderr = run_main(capsys, 'predict', '--model', BUNDLED_MODELS[0], '--backend',
                               'torch', '--device', 'cpu', '--quiet', image, '-o', 'named')
    assert code == 0, stderr
    for out in ('default', 'named'):
        info = json.loads((tmp_path / out / 'predictions.json').read_text())['info']
        assert info['model'] == str(default_model_path())
    code, _, stderr = run_main(capsys, 'bench', '--device', 'cpu', '--backends', 'torch',
                               '--precisions', 'fp32', '--size', '64x48', '--warmup', '0',
                               '--repeats', '1', '--quiet', '-o', 'bench')
    assert code == 0, stderr
    with (tmp_path / 'bench' / 'bench.csv').open() as handle:
        assert [r['status'] for r in csv.DictReader(handle)] == ['ok']
    code, _, stderr = run_main(capsys, 'predict', '--model', './' + BUNDLED_MODELS[0], image,
                               '-o', 'x')
    assert code == 2 and 'model file not found: ' in stderr  # a path is taken literally


# --- predict --track --------------------------------------------------------------------

def shifted(image: np.ndarray, dx: int) -> np.ndarray:
    """``image`` moved ``dx`` pixels right (edges reflected): its things move with it."""
    warp = np.float32([[1, 0, dx], [0, 1, 0]])
    return cv2.warpAffine(image, warp, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope='module')
def cut_clip(tmp_path_factory):
    """Six 320x240 frames: synthetic scene 2 drifting right (the bundled model finds a
    class-4 thing in it), then a cut to scene 1 drifting (another class-4 thing, elsewhere),
    as an MJPG video and as a folder of PNGs named so that only a natural sort orders them."""
    root = tmp_path_factory.mktemp('clip')
    generator = SceneGenerator(height=240, width=320, seed=0)
    frames = [shifted(generator.scene(2).image, 3 * i) for i in range(3)]
    frames += [shifted(generator.scene(1).image, 3 * i) for i in range(3)]
    video = root / 'cut.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 5, (320, 240))
    assert writer.isOpened(), 'OpenCV cannot write MJPG video here'
    folder = root / 'frames'
    folder.mkdir()
    for index, frame in enumerate(frames):
        writer.write(frame[..., ::-1].copy())
        cv2.imwrite(str(folder / f'f{2 * index + 8}.png'), frame[..., ::-1])  # f8 .. f18
    writer.release()
    return video, folder


def panoptic_maps(out, names) -> list[np.ndarray]:
    """Our panoptic ids per frame, from the COCO PNGs through segments_info's panoptic_id."""
    annotations = {a['file_name']: a for a in
                   json.loads((out / 'predictions.json').read_text())['annotations']}
    maps = []
    for name in names:
        file_ids = rgb2id(cv2.imread(str(out / 'panoptic' / f'{name}.png'))[..., ::-1])
        lookup = np.full(file_ids.max() + 1, -1, np.int64)
        for segment in annotations[f'{name}.png']['segments_info']:
            lookup[segment['id']] = segment['panoptic_id']
        maps.append(lookup[file_ids])
    return maps


def class_ids(panoptic: np.ndarray, class_id: int) -> set[int]:
    ids = np.unique(panoptic)
    return {int(i) for i in ids if i // 1000 == class_id and i % 1000}


def test_predict_track_keeps_ids_over_a_video_and_never_hands_a_live_number_on(
        cut_clip, tmp_path, capsys):
    video, folder = cut_clip
    names = [f'cut_{i:06d}' for i in range(6)]
    maps = {}
    for mode in ('per-frame', 'track'):
        out = tmp_path / mode
        extra = ['--track'] if mode == 'track' else []
        code, _, stderr = run_main(capsys, 'predict', '--backend', 'torch', '--device', 'cpu',
                                   '--quiet', *extra, str(video), str(folder), '-o', str(out))
        assert code == 0, stderr
        maps[mode] = panoptic_maps(out, names)
        info = json.loads((out / 'predictions.json').read_text())['info']
        assert info['tracking'] is (mode == 'track')

    plain, tracked = maps['per-frame'], maps['track']
    # The pixels are segmented alike; only the numbering of things differs.
    for a, b in zip(plain, tracked, strict=True):
        np.testing.assert_array_equal(a // 1000, b // 1000)
        np.testing.assert_array_equal(a % 1000 == 0, b % 1000 == 0)
    before = set().union(*(class_ids(m, 4) for m in tracked[:3]))
    after = set().union(*(class_ids(m, 4) for m in tracked[3:]))
    assert before and after
    # The drifting thing keeps its id: where frame 0's thing was, later frames say the same.
    first = sorted(class_ids(tracked[0], 4))[0]
    for panoptic in tracked[1:3]:
        ids, counts = np.unique(panoptic[tracked[0] == first], return_counts=True)
        assert ids[counts.argmax()] == first
    # After the cut the earlier tracks are still alive (max age 30): new things get new
    # numbers, where per-frame numbering starts again from 1.
    assert not before & after
    assert 4001 in set().union(*(class_ids(m, 4) for m in plain[3:]))
    # Overlays label things "class #N": the same pixels as per-frame overlays but the labels.
    labelled = [cv2.imread(str(tmp_path / mode / 'overlay' / 'cut_000000.jpg')).astype(int)
                for mode in ('per-frame', 'track')]
    assert labelled[0].shape == (240, 320, 3)
    assert (np.abs(labelled[0] - labelled[1]).max(-1) > 60).sum() > 20


def test_predict_track_numbers_each_input_on_its_own_and_labels_overlays(
        cut_clip, tmp_path, capsys):
    video, folder = cut_clip
    out = tmp_path / 'out'
    code, _, stderr = run_main(capsys, 'predict', '--backend', 'torch', '--device', 'cpu',
                               '--quiet', '--track', str(video), str(folder), '-o', str(out))
    assert code == 0, stderr
    data = json.loads((out / 'predictions.json').read_text())
    sources = [(image['file_name'], image['source']) for image in data['images']]
    # The folder's frames come in natural order (f8 before f10), after the video's.
    assert [name for name, _ in sources[6:]] == [f'f{n}.png' for n in range(8, 20, 2)]
    folder_maps = panoptic_maps(out, [f'f{n}' for n in range(8, 20, 2)])
    video_maps = panoptic_maps(out, [f'cut_{i:06d}' for i in range(6)])
    # The folder's tracker starts afresh: its first frame numbers each class from 1.
    for class_id in {int(i) // 1000 for i in np.unique(folder_maps[0]) if i >= 0}:
        numbers = sorted(i % 1000 for i in class_ids(folder_maps[0], class_id))
        assert numbers == list(range(1, len(numbers) + 1))
    # Each input's tracks live on over its own cut, whichever input came first.
    for maps in (video_maps, folder_maps):
        before = set().union(*(class_ids(m, 4) for m in maps[:3]))
        assert before and not before & set().union(*(class_ids(m, 4) for m in maps[3:]))


def test_predict_track_options_are_checked(cut_clip, tmp_path, capsys):
    video, _ = cut_clip
    for option in (['--track-max-age', '-1'], ['--track-min-iou', '1.5']):
        code, _, stderr = run_main(capsys, 'predict', '--track', *option, str(video),
                                   '-o', str(tmp_path))
        assert code == 2 and stderr.startswith('tokenmask predict: error: --track-max-age')


# --- bench -----------------------------------------------------------------------------

def test_bench_writes_table_csv_and_plot_with_skipped_rows(checkpoint, tmp_path, capsys):
    out = tmp_path / 'bench'
    code, stdout, stderr = run_main(
        capsys, 'bench', '--model', str(checkpoint), '--device', 'cpu',
        '--backends', 'torch', 'onnxruntime', 'tensorrt', '--precisions', 'fp32', 'fp16',
        '--size', '96x64', '50x40', '--warmup', '0', '--repeats', '2',
        '--cache-dir', str(tmp_path / 'cache'), '-o', str(out))
    assert code == 0, stderr
    with (out / 'bench.csv').open() as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) >= {'backend', 'precision', 'device', 'width', 'height', 'status',
                            'reason', 'total_ms_median', 'total_ms_p90', 'total_ms_p99',
                            'preprocess_ms_median', 'inference_ms_median',
                            'postprocess_ms_median', 'fps', 'peak_mem_mb', 'mem_method'}
    assert len(rows) == 3 * 2 * 2
    by_key = {(r['backend'], r['precision'], r['width']): r for r in rows}

    def check_ok(row):
        assert row['status'] == 'ok', row
        assert row['device'] == 'cpu' and row['input_size'] == '96x64'
        for stage in ('total', 'preprocess', 'inference', 'postprocess'):
            assert float(row[f'{stage}_ms_median']) > 0
        assert float(row['total_ms_p99']) >= float(row['total_ms_median'])
        assert float(row['fps']) > 0 and float(row['peak_mem_mb']) >= 0
        assert row['mem_method'] in ('rss_hwm', 'ru_maxrss')

    for width in ('96', '50'):
        check_ok(by_key['torch', 'fp32', width])
        skipped = by_key['torch', 'fp16', width]
        assert skipped['status'] == 'skipped' and 'CUDA' in skipped['reason']
        tensorrt = by_key['tensorrt', 'fp32', width]
        assert tensorrt['status'] == 'skipped' and tensorrt['reason']
        check_ok(by_key['onnxruntime', 'fp32', width])

    table = (out / 'bench.md').read_text()
    assert '| torch | fp32 | cpu | 96x64 |' in table and 'skipped: torch backend: fp16' in table
    assert '| Median (ms) | p90 (ms) | p99 (ms) |' in stdout
    assert '`tokenmask bench --model' in table
    png = (out / 'bench.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 1000


def test_bench_rejects_a_missing_model(tmp_path):
    result = tokenmask('bench', '--model', str(tmp_path / 'nope.safetensors'))
    assert result.returncode == 2
    assert result.stderr.strip() == (f'tokenmask bench: error: model file not found: '
                                     f'{tmp_path / "nope.safetensors"}')


def test_cost_benchmark_times_the_segmenter_per_backend(tmp_path, capsys):
    """training/benchmark.py --backends: the same measurement, one column group per backend."""
    from training import benchmark

    out = tmp_path / 'costs'
    code = benchmark.main(['--backbones', 'tiny', '--heads', 'tokenmask', '--upsampling',
                           'logit', '--strides', '16', '--img-size', '64', '--repeats', '1',
                           '--warmup', '0', '--no-memory', '--backends', 'torch', 'tensorrt',
                           '--frame-size', '80x60', '--out', str(out)])
    assert code == 0, capsys.readouterr().err
    with (out / 'costs.csv').open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    row = rows[0]
    assert row['frame_size'] == '80x60' and row['torch_status'] == 'ok'
    assert float(row['torch_ms_median']) > 0 and float(row['torch_fps']) > 0
    assert row['tensorrt_status'].startswith('skipped: ') and row['tensorrt_ms_median'] == ''
    table = (out / 'costs.md').read_text()
    assert 'Segmenter torch (ms, median / p90)' in table and '| skipped |' in table


def test_export_writes_a_checked_onnx_at_the_requested_size(checkpoint, tmp_path, capsys):
    """`tokenmask export --size WxH`: the graph takes that size, keeps the model's classes,
    and runs in onnxruntime with the checkpoint's predictions on a full-size frame."""
    out = tmp_path / 'model.onnx'
    assert cli.main(['export', str(checkpoint), '-o', str(out), '--size', '96x64']) == 0
    assert 'input 96x64' in capsys.readouterr().out
    from tokenmask_ros.runtime import read_onnx_config, read_onnx_metadata
    assert read_onnx_metadata(out)['precision'] == 'fp32'
    assert [c.name for c in read_onnx_config(out).classes] == [c.name for c in CLASSES]
    frame = SceneGenerator(height=64, width=96, seed=3).scene(0).image
    torch_result = Segmenter(checkpoint, 'torch', 'cpu', score_threshold=0)(frame)
    onnx_result = Segmenter(out, 'onnxruntime', 'cpu', score_threshold=0)(frame)
    assert (torch_result.panoptic == onnx_result.panoptic).mean() >= 0.999

    resized = tmp_path / 'resized.onnx'
    assert cli.main(['export', str(checkpoint), '-o', str(resized), '--size', '128x96']) == 0
    assert read_onnx_config(resized).img_size == (96, 128)
    assert Segmenter(resized, 'onnxruntime', 'cpu')(frame).panoptic.shape == (64, 96)


def test_export_and_build_engine_errors(checkpoint, tmp_path, capsys):
    assert cli.main(['export', str(tmp_path / 'nope.safetensors'), '-o', 'x.onnx']) == 2
    assert 'checkpoint not found' in capsys.readouterr().err
    assert cli.main(['export', str(checkpoint), '-o', str(tmp_path / 'x.onnx'),
                     '--size', '96x60']) == 2
    assert 'multiples of 16 (the patch size), e.g. 640x480' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # the old `--size H W` form
        cli.main(['export', str(checkpoint), '-o', str(tmp_path / 'x.onnx'), '--size', '64',
                  '96'])
    assert exit_info.value.code == 2
    assert "expected WIDTHxHEIGHT, e.g. 640x480, got '64'" in capsys.readouterr().err
    # No TensorRT / GPU here: one clear line, exit 1 (on a GPU host this builds the engine).
    if importlib.util.find_spec('tensorrt') is None:
        assert cli.main(['build-engine', str(checkpoint)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('tokenmask build-engine: error:') and len(err.splitlines()) == 1
