"""Tracking evaluation: TrackEval scores on hand-made id maps with exactly known answers,
MOTS files in and out, the association run with the real tracker, and the script end to end."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tokenmask_ros.defaults import LABEL_DIVISOR
from tokenmask_ros.image_io import write_rgb
from training.tracking_metrics import (
    FrameInstances,
    frame_from_panoptic,
    read_mots,
    score_sequences,
    write_mots,
)
from training.tracking_runs import ASSOCIATION, SequenceRuns, read_rgb, shuffled_panoptic

REPO = Path(__file__).resolve().parents[1]
H, W = 40, 60
DISC, BOX = 2, 3


def two_things(t: int) -> np.ndarray:
    """Frame t: thing A (class DISC) moving right, thing B (class DISC) moving left, on
    stuff (class 0). Panoptic ids 2001 / 2002 throughout."""
    panoptic = np.zeros((H, W), np.int32)  # class 0 stuff
    panoptic[5:15, t:t + 10] = DISC * LABEL_DIVISOR + 1
    panoptic[20:30, 30 - t:40 - t] = DISC * LABEL_DIVISOR + 2
    return panoptic


def sequence(instances_of_frame, frames: int = 10) -> list[FrameInstances]:
    return [frame_from_panoptic(two_things(t), instances_of_frame(t)) for t in range(frames)]


GT = sequence(lambda t: {2001: (1, DISC), 2002: (2, DISC)})


def test_perfect_tracking_scores_100_whatever_the_ids():
    pred = sequence(lambda t: {2001: (57, DISC), 2002: (9, DISC)})
    s = score_sequences([(GT, pred)])
    assert (s.hota, s.deta, s.assa, s.idf1, s.mota) == (100, 100, 100, 100, 100)
    assert (s.id_switches, s.gt_dets, s.pred_dets) == (0, 20, 20)


def test_ids_swapped_in_half_the_frames_lowers_association_only():
    pred = sequence(lambda t: {2001: (7, DISC), 2002: (9, DISC)} if t < 5
                    else {2001: (9, DISC), 2002: (7, DISC)})
    s = score_sequences([(GT, pred)])
    assert s.deta == 100
    # Each GT track shares 5 of its 10 detections with each predicted track:
    # AssA = 5 / (10 + 10 - 5) = 1/3; IDF1 keeps one half: 10 of 20.
    assert s.assa == pytest.approx(100 / 3)
    assert s.hota == pytest.approx(100 * math.sqrt(1 / 3))
    assert s.idf1 == pytest.approx(50)
    assert s.id_switches == 2


def test_per_frame_numbering_is_what_the_no_tracking_baseline_gets():
    # A new id every frame: every association is a single frame.
    pred = sequence(lambda t: {2001: (2 * t, DISC), 2002: (2 * t + 1, DISC)})
    s = score_sequences([(GT, pred)])
    assert s.deta == 100
    assert s.assa == pytest.approx(100 * 1 / 10)  # 1 / (10 + 1 - 1) per match
    assert s.idf1 == pytest.approx(100 * 2 / 20)  # one frame per GT track
    assert s.id_switches == 18


def test_wrong_class_is_a_miss_and_a_false_positive():
    pred = sequence(lambda t: {2001: (1, BOX), 2002: (2, DISC)})
    s = score_sequences([(GT, pred)])
    # DISC: 10 TP, 10 FN (thing A); BOX: 10 FP. Det-averaged: 10 / (10 + 10 + 10).
    assert s.deta == pytest.approx(100 / 3)
    assert s.assa == 100
    assert (s.gt_dets, s.pred_dets) == (20, 20)


def test_same_predicted_id_in_two_classes_is_two_tracks():
    # Class-aware: id 5 as a DISC and id 5 as a BOX are scored separately.
    gt = sequence(lambda t: {2001: (1, DISC), 2002: (2, BOX)})
    pred = sequence(lambda t: {2001: (5, DISC), 2002: (5, BOX)})
    s = score_sequences([(gt, pred)])
    assert (s.hota, s.idf1, s.id_switches) == (100, 100, 0)


def test_partial_overlap_counts_only_at_thresholds_it_reaches():
    gt_map = np.zeros((H, W), np.int32)
    gt_map[0:8, 0:8] = 2001
    pred_map = np.zeros((H, W), np.int32)
    pred_map[0:8, 0:5] = 2001  # IoU 40 / 64 = 0.625
    gt = [frame_from_panoptic(gt_map, {2001: (1, DISC)})] * 4
    pred = [frame_from_panoptic(pred_map, {2001: (3, DISC)})] * 4
    s = score_sequences([(gt, pred)])
    # Matched at the 12 of TrackEval's 19 thresholds 0.05..0.95 that are <= 0.625.
    assert s.deta == pytest.approx(100 * 12 / 19)
    assert s.hota == pytest.approx(100 * 12 / 19)
    assert s.idf1 == 100  # IoU >= 0.5


def test_no_prediction_scores_zero_and_counts_the_ground_truth():
    empty = [FrameInstances.empty((H, W))] * len(GT)
    s = score_sequences([(GT, empty)])
    assert (s.hota, s.deta, s.idf1) == (0, 0, 0)
    assert (s.gt_dets, s.pred_dets) == (20, 0)


def test_sequences_combine_detection_weighted():
    perfect = sequence(lambda t: {2001: (1, DISC), 2002: (2, DISC)})
    swapped = sequence(lambda t: {2001: (7, DISC), 2002: (9, DISC)} if t < 5
                       else {2001: (9, DISC), 2002: (7, DISC)})
    s = score_sequences([(GT, perfect), (GT, swapped)])
    assert s.assa == pytest.approx(100 * (1 + 1 / 3) / 2)  # equal TP counts
    assert s.idf1 == pytest.approx(100 * (20 + 10) / 40)


def test_frame_from_panoptic_keeps_only_the_named_ids_and_their_masks():
    panoptic = two_things(3)
    frame = frame_from_panoptic(panoptic, {2002: (8, DISC)})
    assert frame.ids.tolist() == [8] and frame.classes.tolist() == [DISC]
    np.testing.assert_array_equal(mask_utils.decode(frame.masks[0]), panoptic == 2002)
    with pytest.raises(ValueError, match='repeats'):
        frame_from_panoptic(panoptic, {2001: (1, DISC), 2002: (1, DISC)})


def test_mots_files_round_trip_with_empty_frames(tmp_path):
    empty = FrameInstances.empty((H, W))
    frames = [*GT[:3], empty, *GT[4:6], empty]
    path = tmp_path / 'gt.txt'
    write_mots(path, frames)
    first = path.read_text().splitlines()[0].split()
    assert first[:5] == ['0', '1', str(DISC), str(H), str(W)]
    back = read_mots(path, num_frames=len(frames))
    assert len(back) == len(frames)
    for a, b in zip(frames, back, strict=True):
        assert a.ids.tolist() == b.ids.tolist() and a.classes.tolist() == b.classes.tolist()
        assert b.size == (H, W)
        for ma, mb in zip(a.masks, b.masks, strict=True):
            np.testing.assert_array_equal(mask_utils.decode(ma), mask_utils.decode(mb))
    assert score_sequences([(frames, back)]).hota == 100
    assert len(read_mots(path)) == len(frames) - 1  # without num_frames: up to the last mask


def test_mots_reader_refuses_malformed_files(tmp_path):
    good = tmp_path / 'gt.txt'
    write_mots(good, GT[:1])
    line = good.read_text().splitlines()[0].split()
    cases = {
        'fields': ' '.join(line[:5]),
        'integers': ' '.join(['x', *line[1:]]),
        'overlap': '\n'.join([' '.join(line), ' '.join([line[0], '99', *line[2:]])]),
        'outside': ' '.join(['5', *line[1:]]),
    }
    for name, text in cases.items():
        path = tmp_path / f'{name}.txt'
        path.write_text(text + '\n')
        with pytest.raises(ValueError, match=str(path)):
            read_mots(path, num_frames=2)


def test_shuffled_panoptic_keeps_masks_and_classes_and_drops_track_ids():
    truth = GT[0]
    seen = set()
    for seed in range(8):
        panoptic = shuffled_panoptic(truth, np.random.default_rng(seed))
        assert set(np.unique(panoptic)) == {-1, 2001, 2002}
        seen.add(int(panoptic[10, 5]))
        back = frame_from_panoptic(panoptic, {2001: (1, DISC), 2002: (2, DISC)})
        both = score_sequences([([truth], [back])])
        assert both.deta == 100
    assert seen == {2001, 2002}  # the numbering really is shuffled


def test_association_run_with_the_real_tracker_keeps_ids_through_shuffling():
    images = []
    for t in range(10):  # colours per thing: the appearance cue has something to see
        image = np.full((H, W, 3), 90, np.uint8)
        panoptic = two_things(t)
        image[panoptic == 2001] = (230, 40, 40)
        image[panoptic == 2002] = (40, 40, 230)
        images.append(image)
    runs = SequenceRuns([ASSOCIATION], [False, False, True, True], seed=3)
    for image, truth in zip(images, GT, strict=True):
        runs.add(image, truth)
    s = score_sequences([(runs.truth, runs.predictions[ASSOCIATION])])
    assert (s.hota, s.idf1, s.id_switches) == (100, 100, 0)
    with pytest.raises(ValueError, match='segmenter'):
        SequenceRuns(['model'], [True])


def write_folder(folder: Path, frames: int = 6) -> None:
    """A sequence on disk as make_synthetic writes it: images/ and a MOTS gt.txt."""
    (folder / 'images').mkdir(parents=True)
    truth = []
    for t in range(frames):
        panoptic = two_things(t)
        image = np.full((H, W, 3), 90, np.uint8)
        image[panoptic == 2001] = (230, 40, 40)
        image[panoptic == 2002] = (40, 40, 230)
        write_rgb(folder / 'images' / f'{t:06d}.png', image)
        truth.append(frame_from_panoptic(panoptic, {2001: (1, DISC), 2002: (2, DISC)}))
    write_mots(folder / 'gt.txt', truth)


def test_script_end_to_end_on_a_sequence_folder(tmp_path):
    data = tmp_path / 'data'
    write_folder(data / 'seq_a')
    write_folder(data / 'seq_b', frames=4)
    out = tmp_path / 'out'
    result = subprocess.run(
        [sys.executable, str(REPO / 'training' / 'evaluate_tracking.py'), '--data', str(data),
         '--no-model', '--no-progress', '--mots', '--out', str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '| association' in result.stdout and 'HOTA' in result.stdout
    with open(out / 'tracking.csv') as file:
        rows = list(csv.DictReader(file))
    assert [(r['run'], r['sequence']) for r in rows] == [
        ('association', 'all'), ('association', 'seq_a'), ('association', 'seq_b')]
    assert float(rows[0]['HOTA']) == 100 and int(rows[0]['GT masks']) == 20
    assert (out / 'tracking.md').read_text().count('| association') == 1
    assert read_rgb(out / 'tracking.png').shape[2] == 3
    # The written tracker output scores the same when read back.
    gt = read_mots(out / 'mots' / 'gt' / 'seq_a.txt')
    pred = read_mots(out / 'mots' / 'association' / 'seq_a.txt')
    assert score_sequences([(gt, pred)]).hota == 100


def test_script_help_and_bad_data(tmp_path):
    script = str(REPO / 'training' / 'evaluate_tracking.py')
    help_text = subprocess.run([sys.executable, script, '--help'], capture_output=True,
                               text=True, timeout=60)
    assert help_text.returncode == 0 and '--no-model' in help_text.stdout
    missing = subprocess.run([sys.executable, script, '--data', str(tmp_path), '--no-model',
                              '--out', str(tmp_path / 'o')],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip().count('\n') == 0 and 'gt.txt' in missing.stderr


def test_synthetic_run_and_the_same_sequence_read_from_disk_score_the_same(tmp_path):
    """--sequences generates in memory; --data reads what sequence_io wrote (PNG, KITTI
    MOTS gt.txt): same frames, same shuffling seed, so the same scores."""
    from tokenmask_ros.sequence_io import write_sequence
    from tokenmask_ros.synthetic_video import SequenceGenerator

    write_sequence(tmp_path / 'data' / 'seq', SequenceGenerator(seed=5, length=4))
    script = str(REPO / 'training' / 'evaluate_tracking.py')
    tables = []
    for source in (['--sequences', '1', '--length', '4', '--seed', '5'],
                   ['--data', str(tmp_path / 'data'), '--seed', '5']):
        out = tmp_path / source[0].strip('-')
        result = subprocess.run([sys.executable, script, *source, '--no-model', '--no-progress',
                                 '--out', str(out)], capture_output=True, text=True,
                                timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        with open(out / 'tracking.csv') as file:
            rows = list(csv.DictReader(file))
        assert rows[0]['run'] == 'association' and rows[0]['sequence'] == 'all'
        tables.append(rows[0])
        assert int(rows[0]['GT masks']) > 0
    assert tables[0] == tables[1]
    assert float(tables[0]['DetA']) == 100  # the tracker keeps every ground-truth mask
