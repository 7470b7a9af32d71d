"""``make demo``: its outputs, and whole runs on synthetic scenes and on user input."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT, run_command

pytest.importorskip('rclpy')
pytest.importorskip('vision_msgs.msg')

from tokenmask_ros.ros.demo import contact_sheet, letterbox, write_video
from tokenmask_ros.synthetic import SYNTHETIC_CLASSES, SceneGenerator


def run_demo(out, *extra, frames=5, rate=4):
    result = run_command([sys.executable, '-m', 'tokenmask_ros.ros.demo', '--frames',
                          str(frames), '--rate', str(rate), '--backend', 'torch',
                          '--output-dir', str(out), *extra], timeout=240, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = dict(line.strip('|').split('|')[:2] for line in
                (out / 'summary.md').read_text().splitlines()[2:])
    return {name.strip(): value.strip() for name, value in rows.items()}


def test_demo_writes_a_readable_video_even_from_frames_of_several_sizes(tmp_path):
    frames = [np.full((24, 32, 3), 10 * i, np.uint8) for i in range(14)]
    frames[5] = np.full((40, 30, 3), 200, np.uint8)  # a portrait image in a folder
    video = write_video(tmp_path, frames, 5.0)
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 14
    capture.release()


def test_letterbox_keeps_the_aspect_and_centres_the_image():
    image = np.full((40, 30, 3), 200, np.uint8)
    boxed = letterbox(image, 32, 24)
    assert boxed.shape == (24, 32, 3)
    bright = np.flatnonzero(boxed[12, :, 0] > 100)
    assert 16 <= len(bright) <= 19 and abs((bright[0] + bright[-1]) / 2 - 15.5) <= 1
    assert (boxed[:, :bright[0]] == 0).all()


def test_contact_sheet_pairs_each_sampled_input_with_its_overlay():
    overlays = [np.full((24, 32, 3), 100 + i, np.uint8) for i in range(14)]
    inputs = [np.full((24, 32, 3), i, np.uint8) for i in range(14)]
    inputs[13] = None  # its input never arrived: a black tile, not a crash
    sheet = contact_sheet(inputs, overlays, count=12, columns=2)
    assert sheet.shape == (6 * 24, 2 * 2 * 32, 3)
    picks = np.unique(np.linspace(0, 13, 12).round()).astype(int)
    for cell, index in enumerate(picks):
        row, column = divmod(cell, 2)
        pair = sheet[row * 24:(row + 1) * 24, column * 64:(column + 1) * 64]
        expected_input = 0 if index == 13 else index
        assert np.median(pair[:, :32]) == expected_input, index  # (the number is drawn here)
        assert (pair[:, 32:] == 100 + index).all()


def test_contact_sheet_shrinks_large_frames_to_tiles():
    overlays = [np.zeros((480, 640, 3), np.uint8)] * 3
    inputs = [np.zeros((240, 320, 3), np.uint8)] * 3  # thumbnails, as the collector keeps
    sheet = contact_sheet(inputs, overlays, columns=2, tile_width=320)
    assert sheet.shape == (2 * 240, 2 * 2 * 320, 3)


def test_demo_runs_end_to_end_and_reports_every_row(tmp_path):
    """``make demo``'s entry point in its own process: camera, node, collector, outputs."""
    out = tmp_path / 'demo'
    rows = run_demo(out)
    assert rows['camera'].startswith('synthetic RGB-D video 320x240')
    assert rows['frames published (in)'] == '5'
    assert rows['frames lost in transport'] == '0'
    segmented = int(rows['frames segmented (out)'])
    assert 1 <= segmented == len(list(out.glob('overlay_*.png')))
    gap_ms, period = rows['longest gap between camera frames (ms)'].split(' (period ')
    assert period == '250)' and int(gap_ms) >= 200  # a 4 Hz camera cannot publish faster
    assert float(rows['demo process CPU time (s)'].split()[0]) > 0
    stolen = rows['CPU time stolen by the hypervisor (s)']
    assert stolen == 'n/a' or float(stolen) >= 0.0
    sheet = cv2.imread(str(out / 'contact_sheet.png'))
    assert sheet is not None and sheet.shape[1] == 2 * 320 * min(2, segmented)
    assert {p.name for p in out.glob('overlay.*')} & {'overlay.mp4', 'overlay.avi'}
    # Tracking and 3D: the synthetic sequence comes with depth and camera_info.
    assert rows['tracking'] == 'on'
    assert int(rows['tracks seen (distinct thing ids)']) >= 1
    per_frame, rest = rows['3D segments per frame (mean)'].split(' (', 1)
    assert float(per_frame) >= 1 and rest.endswith(f'over {segmented} frames')
    clouds, markers = rows['labelled clouds / marker arrays received'].split(' / ')
    assert int(clouds) == int(markers) == segmented
    assert 'bad 3D messages' not in rows
    assert 'snapshot_3d.png' in rows['files']
    snapshot = cv2.imread(str(out / 'snapshot_3d.png'))[..., ::-1]
    assert snapshot.shape == (480, 480, 3)
    floor = (snapshot == SYNTHETIC_CLASSES[0].color).all(-1)  # the floor's class colour
    assert floor.sum() > 200  # a top view of the floor: many points in front of the camera
    rows_with_floor = np.flatnonzero(floor.any(1))
    assert rows_with_floor.max() < 470  # in front of the camera (which is at the bottom)


def test_demo_segments_a_folder_of_images_of_several_sizes(tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    sizes = [(200, 150), (200, 150), (180, 240)]  # (width, height): one portrait image
    for index, (width, height) in enumerate(sizes):
        image = SceneGenerator(height=height, width=width, seed=index).scene(0).image
        assert cv2.imwrite(str(folder / f'img{index}.png'), image[..., ::-1])
    out = tmp_path / 'demo'
    rows = run_demo(out, '--source', str(folder), frames=3)
    assert rows['camera'].startswith(f'3 images in {folder}')
    assert rows['frames published (in)'] == '3'
    shapes = {cv2.imread(str(p)).shape[:2] for p in out.glob('overlay_*.png')}
    assert shapes and shapes <= {(150, 200), (240, 180)}  # overlays keep each input's size
    capture = cv2.VideoCapture(str(next(out.glob('overlay.*'))))
    assert capture.read()[0]
    capture.release()
    assert cv2.imread(str(out / 'contact_sheet.png')) is not None
    # No depth from an image folder: the 2D outputs are complete, the 3D ones absent.
    assert rows['3D segments per frame (mean)'].startswith('n/a (no depth')
    assert not (out / 'snapshot_3d.png').exists() and 'snapshot_3d' not in rows['files']


def test_demo_segments_a_video_file_with_the_model_named_by_its_bare_file_name(tmp_path):
    video = tmp_path / 'clip.avi'
    scenes = SceneGenerator(height=144, width=176, seed=7)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10, (176, 144))
    assert writer.isOpened()
    for index in range(4):
        writer.write(scenes.scene(index).image[..., ::-1].copy())
    writer.release()
    out = tmp_path / 'demo'
    name = 'tokenmask_vit_tiny_synthetic.safetensors'  # not in the working directory
    assert not (REPO_ROOT / name).exists()
    rows = run_demo(out, '--source', str(video), '--model', name, frames=3)
    assert rows['model'] == name
    assert rows['camera'].startswith(f'video {video}')
    assert rows['frames published (in)'] == '3'
    overlay = cv2.imread(str(next(out.glob('overlay_*.png'))))
    assert overlay.shape == (144, 176, 3)


def test_demo_names_a_source_it_cannot_open(tmp_path):
    result = run_command([sys.executable, '-m', 'tokenmask_ros.ros.demo', '--backend', 'torch',
                          '--source', str(tmp_path / 'missing'), '--output-dir',
                          str(tmp_path / 'demo')], timeout=240, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert 'cannot open --source' in result.stderr and 'missing' in result.stderr
