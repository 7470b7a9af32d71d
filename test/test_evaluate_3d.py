"""3D centre evaluation: matching, the depth maths on ground truth, the script end to end."""

from __future__ import annotations

import sys

import numpy as np
from conftest import REPO_ROOT, run_command

from tokenmask_ros.synthetic_video import SequenceGenerator
from training.centres_3d import match_segments, model_errors, summarise, truth_errors


def test_match_segments_pairs_by_iou_at_least_one_half():
    truth = np.full((4, 8), 1000, np.int32)
    truth[:, :4] = 2001
    predicted = np.full((4, 8), 7, np.int32)
    predicted[:, :3] = 9          # 3 of 4 columns: IoU 0.75 with thing 2001
    predicted[:, 7] = -1          # void never matches
    assert match_segments(truth, predicted, [2001]) == {2001: 9}
    predicted[:, :1] = 9          # split: IoU 0.25 with 9 and 12/28 with 7, both < 0.5
    predicted[:, 1:7] = 7
    assert match_segments(truth, predicted, [2001]) == {}


def test_centres_from_ground_truth_masks_are_within_two_percent():
    frame = SequenceGenerator(seed=1, length=10).frame(4)
    errors = truth_errors(frame)
    assert len(errors) == len(frame.centres) > 0
    stats = summarise(errors)
    assert stats['median %'] < 1.0 and stats['within 2 %'] >= 90


def test_a_perfect_prediction_has_the_ground_truth_errors_and_a_wrong_one_none():
    frame = SequenceGenerator(seed=2, length=10).frame(0)
    exact = model_errors(frame, frame.panoptic)
    assert sorted(e.error for e in exact) == sorted(e.error for e in truth_errors(frame))
    assert model_errors(frame, np.roll(frame.panoptic, 120, axis=1)) == [] or all(
        e.error > 0.05 for e in model_errors(frame, np.roll(frame.panoptic, 120, axis=1)))
    assert summarise([]) == {'things': 0}


def test_script_without_model_prints_the_ground_truth_row(tmp_path):
    result = run_command([sys.executable, str(REPO_ROOT / 'training' / 'evaluate_3d.py'),
                          '--sequences', '1', '--length', '3', '--no-model', '--no-progress',
                          '--out', str(tmp_path)], timeout=120)
    assert result.returncode == 0, result.stderr
    assert '| ground truth masks |' in result.stdout and 'model masks' not in result.stdout
    assert (tmp_path / 'centres_3d.md').is_file()
    rows = (tmp_path / 'centres_3d.csv').read_text().splitlines()
    assert rows[0] == 'source,distance_m,error_m,relative_error' and len(rows) > 1
