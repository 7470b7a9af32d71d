"""Synthetic RGB-D sequences: determinism, ground-truth track ids, depth, 3D truth, files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tokenmask_ros.defaults import LABEL_DIVISOR
from tokenmask_ros.sequence_io import read_mots, read_sequence, write_sequence
from tokenmask_ros.synthetic import FLOOR, RUG, WALL
from tokenmask_ros.synthetic_depth import WALL_DISTANCE
from tokenmask_ros.synthetic_video import SequenceGenerator

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope='module')
def sequences():
    """``(generator, frames)`` of a few default sequences (60 frames of 320x240)."""
    out = []
    for seed in SEEDS:
        generator = SequenceGenerator(seed=seed)
        out.append((generator, [generator.frame(i) for i in range(len(generator))]))
    return out


def visible_tracks(frame) -> dict[int, np.ndarray]:
    """track id -> visible mask of that thing in ``frame``."""
    return {track: frame.panoptic == pid for pid, track in frame.track_ids.items()}


def test_same_seed_gives_identical_frames_and_seeds_differ():
    a, b = SequenceGenerator(seed=5, length=8), SequenceGenerator(seed=5, length=8)
    for index in (0, 7):
        fa, fb = a.frame(index), b.frame(index)
        for name in ('image', 'semantic', 'panoptic', 'depth'):
            np.testing.assert_array_equal(getattr(fa, name), getattr(fb, name))
        assert fa.segments == fb.segments and fa.track_ids == fb.track_ids
    assert not np.array_equal(a.frame(0).image, SequenceGenerator(seed=6, length=8).frame(0).image)
    assert not np.array_equal(a.frame(0).panoptic, a.frame(7).panoptic)  # things move
    with pytest.raises(IndexError, match='out of range'):
        a.frame(8)


def test_frames_have_the_documented_types_and_numbering(sequences):
    generator, frames = sequences[0]
    for frame in frames[::10]:
        assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
        assert frame.panoptic.dtype == np.int32 and frame.depth.dtype == np.float32
        np.testing.assert_array_equal(frame.panoptic // LABEL_DIVISOR, frame.semantic)
        things = sorted(s.id for s in frame.segments if s.is_thing)
        assert sorted(t % LABEL_DIVISOR for t in things) == list(range(1, len(things) + 1))
        assert set(frame.track_ids) == set(things)
        assert frame.camera == generator.camera


def test_track_ids_are_unique_and_follow_one_physical_thing(sequences):
    for generator, frames in sequences:
        categories = {}
        for frame in frames:
            assert len(set(frame.track_ids.values())) == len(frame.track_ids)
            states = {s.track_id: s for s in generator.states(frame.index)}
            for pid, track in frame.track_ids.items():
                assert categories.setdefault(track, pid // LABEL_DIVISOR) == pid // LABEL_DIVISOR
                visible = frame.panoptic == pid
                full = generator.thing_mask(states[track])
                assert not (visible & ~full).any()  # the id's pixels are that thing's
        assert set(categories) == set(range(1, generator.num_things + 1))


def test_a_thing_that_leaves_the_frame_comes_back_with_its_id(sequences):
    for generator, frames in sequences:
        seen = [1 in f.track_ids.values() for f in frames]
        first_gone = seen.index(False)
        assert any(seen[:first_gone]) and any(seen[first_gone:])
        back = first_gone + seen[first_gone:].index(True)
        # Gone because it is outside the image (not hidden): its full mask is empty.
        state = generator.states(first_gone)[0]
        assert not generator.thing_mask(state).any()
        assert not (0 <= state.centre[0] < generator.width)
        # It returns on the side it left.
        left_side = generator.states(first_gone - 1)[0].centre[0] < generator.width / 2
        assert (generator.states(back)[0].centre[0] < generator.width / 2) == left_side
        assert 2 <= back - first_gone < 30  # gone for a while, back within a tracker's memory


def test_occlusion_agrees_with_depth(sequences):
    """Every pixel shows the nearest thing whose full mask covers it (a z-buffer)."""
    overlaps = 0
    for generator, frames in sequences:
        for frame in frames[::3]:
            states = generator.states(frame.index)
            full = np.stack([generator.thing_mask(s) for s in states])
            depths = np.array([s.depth for s in states], np.float32)
            z = np.where(full, depths[:, None, None], np.inf)
            covered = full.any(0)
            # Ties in depth: the later (higher) track id is drawn last.
            nearest = len(states) - 1 - np.argmin(z[::-1], axis=0)
            expected = np.where(covered, nearest + 1, 0)
            shown = np.zeros_like(expected)
            for track, mask in visible_tracks(frame).items():
                shown[mask] = track
            np.testing.assert_array_equal(shown, expected)
            np.testing.assert_array_equal(frame.depth[covered], z.min(0)[covered])
            overlaps += int((full.sum(0) > 1).sum() > 0)
    assert overlaps >= 10  # things really do occlude one another


def test_depth_is_finite_positive_and_the_floor_comes_closer_toward_the_bottom(sequences):
    for _, frames in sequences:
        for frame in frames[::20]:
            depth = frame.depth
            assert np.isfinite(depth).all() and (depth > 0).all()
            assert (depth <= WALL_DISTANCE).all()
            np.testing.assert_array_equal(depth[frame.semantic == WALL], WALL_DISTANCE)
            floor = np.isin(frame.semantic, (FLOOR, RUG))
            assert (depth[floor] < WALL_DISTANCE).any()
            # Down every column, floor depth falls strictly from one floor row to the next.
            below = floor[1:] & floor[:-1]
            assert (np.diff(depth, axis=0)[below] < 0).all()
            assert below.sum() > 0.2 * depth.size


def test_things_are_nearer_than_the_floor_behind_them_and_grow_when_near(sequences):
    generator, frames = sequences[0]
    for frame in frames[::15]:
        for state in generator.states(frame.index):
            u, v = state.foot
            expected = generator.room.standing_depth(u, v)
            assert state.depth == pytest.approx(expected)
            assert state.radius == pytest.approx(
                generator.things[state.track_id - 1].size_m * generator.camera.fx / state.depth)


def test_median_of_back_projected_gt_masks_lands_within_2_percent_of_the_true_centre(
        sequences):
    """The 3D truth the node's estimates are checked against, checked itself.

    Things less than half visible (occluded or cut by the border) are left out: their
    visible part's centre is not where the thing is.
    """
    errors = []
    for generator, frames in sequences:
        for frame in frames:
            states = {s.track_id: s for s in generator.states(frame.index)}
            for pid, track in frame.track_ids.items():
                mask = frame.panoptic == pid
                if mask.sum() < 0.5 * generator.thing_mask(states[track]).sum():
                    continue
                rows, cols = np.nonzero(mask)
                points = frame.camera.back_project(cols, rows, frame.depth[mask])
                estimate = np.median(points, axis=0)
                true = frame.centres[pid]
                assert true[2] == pytest.approx(states[track].depth)
                errors.append(np.linalg.norm(estimate - true) / np.linalg.norm(true))
    assert len(errors) > 500
    assert max(errors) < 0.02


def test_written_sequence_reads_back_and_gt_txt_decodes_to_the_masks(tmp_path):
    generator = SequenceGenerator(height=96, width=128, seed=2, length=6, num_things=4)
    gt = write_sequence(tmp_path / 'seq', generator)
    assert gt == tmp_path / 'seq' / 'gt.txt'
    frames = read_sequence(tmp_path / 'seq')
    assert len(frames) == 6
    mots = read_mots(gt)
    for frame, back in zip((generator.frame(i) for i in range(6)), frames, strict=True):
        np.testing.assert_array_equal(back.image, frame.image)
        np.testing.assert_array_equal(back.panoptic, frame.panoptic)
        np.testing.assert_array_equal(back.semantic, frame.semantic)
        assert back.segments == frame.segments and back.track_ids == frame.track_ids
        assert np.abs(back.depth - frame.depth).max() <= 0.0005 + 1e-6  # millimetres
        assert back.camera == frame.camera
        # gt.txt: one line per visible thing, decoded by pycocotools to its exact mask.
        lines = mots.get(frame.index, [])
        assert len(lines) == len(frame.track_ids)
        by_track = {track: pid for pid, track in frame.track_ids.items()}
        for object_id, class_id, rle in lines:
            pid = by_track[object_id % LABEL_DIVISOR]
            assert class_id == object_id // LABEL_DIVISOR == pid // LABEL_DIVISOR
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool),
                                          frame.panoptic == pid)


def test_trackeval_reads_the_written_ground_truth(tmp_path):
    """TrackEval's own KITTI MOTS reader takes the files (two sequences: TrackEval sniffs
    the seqmap's format from its second line on)."""
    trackeval = pytest.importorskip('trackeval')
    generators = [SequenceGenerator(height=96, width=128, seed=s, length=5, num_things=3)
                  for s in (1, 2)]
    (tmp_path / 'trackers' / 'copy').mkdir(parents=True)
    for i, generator in enumerate(generators):
        gt = write_sequence(tmp_path / 'gt' / f'{i:04d}', generator)
        shutil.copy(gt, tmp_path / 'trackers' / 'copy' / f'{i:04d}.txt')
    (tmp_path / 'gt' / 'seqmap.txt').write_text('0000 empty 000000 000004\n'
                                                '0001 empty 000000 000004\n')
    config = trackeval.datasets.KittiMOTS.get_default_dataset_config()
    config.update(GT_FOLDER=str(tmp_path / 'gt'), TRACKERS_FOLDER=str(tmp_path / 'trackers'),
                  GT_LOC_FORMAT='{gt_folder}/{seq}/gt.txt', TRACKER_SUB_FOLDER='',
                  SEQMAP_FILE=str(tmp_path / 'gt' / 'seqmap.txt'), TRACKERS_TO_EVAL=['copy'],
                  OUTPUT_FOLDER=str(tmp_path / 'out'), PRINT_CONFIG=False)
    dataset = trackeval.datasets.KittiMOTS(config)
    assert dataset.seq_lengths == {'0000': 5, '0001': 5}
    for i, generator in enumerate(generators):
        raw = dataset._load_raw_file('copy', f'{i:04d}', is_gt=True)
        for t in range(5):
            frame = generator.frame(t)
            expected = sorted(pid // LABEL_DIVISOR * LABEL_DIVISOR + track
                              for pid, track in frame.track_ids.items())
            assert sorted(raw['gt_ids'][t].tolist()) == expected
            if expected:
                area = mask_utils.decode(raw['gt_dets'][t]).sum()
                assert area == sum((frame.panoptic == pid).sum() for pid in frame.track_ids)


def test_make_synthetic_writes_sequences_and_a_seqmap(tmp_path):
    from training.make_synthetic import main as make_synthetic

    out = tmp_path / 'sequences'
    assert make_synthetic(['--out', str(out), '--sequences', '2', '--length', '3', '--size',
                           '64x48', '--things', '2', '--seed', '4', '--quiet']) == 0
    assert (out / 'seqmap.txt').read_text() == '0000 empty 000000 000002\n' \
                                               '0001 empty 000000 000002\n'
    for i in range(2):
        frames = read_sequence(out / f'{i:04d}')
        expected = SequenceGenerator(height=48, width=64, seed=4 + i, length=3, num_things=2)
        np.testing.assert_array_equal(frames[2].image, expected.frame(2).image)
        assert sorted(p.name for p in (out / f'{i:04d}' / 'depth').iterdir()) == [
            '000000.png', '000001.png', '000002.png']
    with pytest.raises(SystemExit):
        make_synthetic(['--out', str(out), '--sequences', '1', '--train', '3'])
