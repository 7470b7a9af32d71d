"""training/node_benchmark.py --cameras: one node with N cameras vs N nodes, for real (real
segment_node and image_source processes over DDS), briefly."""

from __future__ import annotations

import csv
import os
import sys

import pytest
from conftest import REPO_ROOT, run_command

pytest.importorskip('rclpy')
pytest.importorskip('vision_msgs.msg')
pytestmark = pytest.mark.dds


def test_process_counters_read_this_process():
    sys.path.insert(0, str(REPO_ROOT / 'training'))
    from node_benchmark import process_cpu_seconds, process_memory_mb

    assert process_cpu_seconds(os.getpid()) > 0
    resident, peak = process_memory_mb(os.getpid())
    assert 0 < resident <= peak


def test_cameras_comparison_writes_one_row_per_setup(tmp_path):
    result = run_command([sys.executable, 'training/node_benchmark.py', '--cameras', '2',
                          '--backend', 'torch', '--size', '160x120', '--frames', '3',
                          '--warmup', '0', '--camera-rate', '2', '--settle', '3',
                          '--duration', '6', '--out', str(tmp_path)], timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader((tmp_path / 'node_benchmark_cameras.csv').open()))
    assert [(r['cameras'], r['setup'], r['processes']) for r in rows] == [
        ('2', 'one node', '1'), ('2', 'N nodes', '2')]
    for row in rows:
        assert int(row['answered']) > 0
        assert float(row['throughput_fps']) == pytest.approx(
            int(row['answered']) / float(row['seconds']), rel=1e-3)
        assert float(row['latency_p50_ms']) > 0 and float(row['cpu_percent']) > 0
        assert 0 < float(row['rss_mb']) <= float(row['peak_rss_mb'])
    report = (tmp_path / 'node_benchmark_cameras.md').read_text()
    assert '| 2 | one node | 1 |' in report and '| 2 | N nodes | 2 |' in report
