"""training/node_benchmark.py's tracking and 3D cost table (host time per frame per size)."""

from __future__ import annotations

import csv
import sys

import pytest
from conftest import REPO_ROOT, run_command

pytest.importorskip('rclpy')
pytest.importorskip('vision_msgs.msg')


def test_cost_table_times_tracking_and_3d_beside_the_segmenter_at_each_size(tmp_path):
    result = run_command([sys.executable, 'training/node_benchmark.py', '--cost-only',
                          '--cost-sizes', '160x120', '96x64', '--cost-frames', '2',
                          '--warmup', '1', '--backend', 'torch', '--out', str(tmp_path)],
                         timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = (tmp_path / 'node_benchmark.md').read_text()
    assert 'PanopticTracker.update' in report and 'segment_boxes_3d' in report
    table = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
             for line in report.splitlines() if line.startswith('| ') and 'x' in line[:12]}
    assert list(table) == ['160x120', '96x64']
    for cells in table.values():
        assert float(cells[0]) > 0  # the Segmenter's median, ms
        for cell in cells[1:]:  # "ms (share %)", share = ms / Segmenter ms
            ms, share = cell.rstrip(' %)').split(' (')
            assert float(ms) > 0
            expected = 100 * float(ms) / float(cells[0])
            assert float(share) == pytest.approx(expected, rel=0.05, abs=0.06)
    rows = list(csv.DictReader((tmp_path / 'node_benchmark_cost.csv').read_text().splitlines()))
    assert [(r['size'], int(r['frame'])) for r in rows] == [
        ('160x120', 1), ('160x120', 2), ('96x64', 1), ('96x64', 2)]
    stages = ('segmenter_ms', 'tracking_ms', 'depth3d_ms', 'messages3d_ms')
    assert all(float(r[stage]) > 0 for r in rows for stage in stages)
    assert not (tmp_path / 'node_benchmark.csv').exists()  # no node run with --cost-only


def test_help_says_it_reports_tracking_and_3d_cost():
    result = run_command([sys.executable, 'training/node_benchmark.py', '--help'],
                         timeout=60, cwd=REPO_ROOT)
    text = ' '.join(result.stdout.split())
    assert result.returncode == 0
    assert 'PanopticTracker.update' in text and '--cost-sizes' in text and '10 %' in text
