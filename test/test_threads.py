"""The CPU thread setting reaches each runtime (real sessions on the bundled model) and bad
values are refused before anything is loaded."""

from __future__ import annotations

import pytest
import torch

from tokenmask_ros import cli
from tokenmask_ros.bundled import default_model_path
from tokenmask_ros.runtime import Segmenter

MODEL = default_model_path()


def test_onnxruntime_session_runs_with_the_requested_threads(tmp_path):
    pytest.importorskip('onnxruntime')
    with Segmenter(MODEL, 'onnxruntime', 'cpu', 'fp32', cache_dir=tmp_path, threads=1) as one:
        assert one.backend.session.get_session_options().intra_op_num_threads == 1
    with Segmenter(MODEL, 'onnxruntime', 'cpu', 'fp32', cache_dir=tmp_path) as default:
        assert default.backend.session.get_session_options().intra_op_num_threads == 0


def test_openvino_compiles_with_the_requested_threads(tmp_path):
    pytest.importorskip('openvino')
    with Segmenter(MODEL, 'openvino', 'cpu', 'fp32', cache_dir=tmp_path, threads=1) as one:
        assert int(one.backend.compiled.get_property('INFERENCE_NUM_THREADS')) == 1


def test_torch_threads_are_set_for_the_process(tmp_path):
    before = torch.get_num_threads()
    try:
        with Segmenter(MODEL, 'torch', 'cpu', 'fp32', threads=1):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('threads', [-1, True, 1.5, '2'])
def test_bad_thread_counts_are_refused_by_name(threads):
    with pytest.raises(ValueError, match='threads must be an integer >= 0'):
        Segmenter(MODEL, 'onnxruntime', 'cpu', 'fp32', threads=threads)


def test_bench_refuses_negative_threads(tmp_path, capsys):
    assert cli.main(['bench', '--threads', '-1', '-o', str(tmp_path / 'out')]) == 2
    assert '--threads >= 0' in capsys.readouterr().err
