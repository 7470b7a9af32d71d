"""The installed ``tokenmask`` command."""

import cv2
import numpy as np
import pytest
import torch
from conftest import installed_executable, run_command

from tokenmask_ros.synthetic import SceneGenerator


def test_help_lists_the_commands_and_each_command_has_help():
    result = run_command([*installed_executable('tokenmask'), '--help'])
    assert result.returncode == 0
    assert 'synth' in result.stdout
    result = run_command([*installed_executable('tokenmask'), 'synth', '--help'])
    assert result.returncode == 0
    assert '--preview' in result.stdout


def test_synth_writes_the_generator_scenes_and_previews(tmp_path):
    out = tmp_path / 'scenes'
    result = run_command([*installed_executable('tokenmask'), 'synth', str(out), '--count', '3',
                          '--size', '96x64', '--seed', '5', '--preview'])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f'scene_0000{i}{suffix}.png' for i in range(3) for suffix in ('', '_preview')]
    expected = SceneGenerator(height=64, width=96, seed=5).scene(1).image
    written = cv2.imread(str(out / 'scene_00001.png'))[..., ::-1]
    np.testing.assert_array_equal(written, expected)
    assert cv2.imread(str(out / 'scene_00001_preview.png')).shape == (64, 192, 3)


def test_bad_arguments_fail_with_usage_errors(tmp_path):
    result = run_command([*installed_executable('tokenmask'), 'synth', str(tmp_path),
                          '--size', '64by48'])
    assert result.returncode == 2
    assert 'expected WIDTHxHEIGHT' in result.stderr
    result = run_command([*installed_executable('tokenmask')])
    assert result.returncode == 2


def test_import_eomt_help_names_hub_ids_label_sets_and_verify():
    result = run_command([*installed_executable('tokenmask'), 'import-eomt', '--help'])
    assert result.returncode == 0
    for text in ('owner/name[@revision]', '--label-set', '--verify', 'HF_HUB_OFFLINE'):
        assert text in ' '.join(result.stdout.split())


def test_import_eomt_verify_compares_with_transformers(tmp_path):
    pytest.importorskip('transformers')
    from test_hub import save_tiny_hf_eomt

    from tokenmask_ros.cli import _verify_against_transformers
    from tokenmask_ros.model import load_checkpoint

    folder = tmp_path / 'hf'
    save_tiny_hf_eomt(folder)
    out = tmp_path / 'verified.safetensors'
    result = run_command([*installed_executable('tokenmask'), 'import-eomt', str(folder), '-o',
                          str(out), '--verify'], timeout=180)
    assert result.returncode == 0, result.stderr
    assert 'max abs difference vs transformers: class logits' in result.stdout
    # A model that differs from the folder's is caught, not reported as equal.
    model = load_checkpoint(out)
    with torch.no_grad():
        model.class_head.bias.add_(0.5)
    with pytest.raises(ValueError, match='differs from transformers'):
        _verify_against_transformers(model, folder)


def test_import_eomt_label_set_gives_flags_and_colours(tmp_path, capsys):
    pytest.importorskip('transformers')
    import json

    from test_hub import save_tiny_hf_eomt

    from tokenmask_ros import cli
    from tokenmask_ros.model import label_sets, load_checkpoint

    # The CLI keeps its own copy of these names so that --help needs no PyTorch.
    assert cli.PUBLISHED_LABEL_SETS == label_sets.LABEL_SETS
    assert cli.AUTO_LABEL_SET == label_sets.AUTO
    folder = tmp_path / 'hf'
    save_tiny_hf_eomt(folder)  # classes person, car, road
    names = tmp_path / 'labels.json'
    names.write_text(json.dumps([{'name': 'person', 'isthing': 1, 'color': [220, 20, 60]},
                                 {'name': 'car', 'isthing': 1},
                                 {'name': 'road', 'isthing': 0, 'color': [128, 64, 128]}]))
    out = tmp_path / 'labelled.safetensors'
    assert cli.main(['import-eomt', str(folder), '-o', str(out), '--label-set', str(names),
                     '--quiet']) == 0
    classes = load_checkpoint(out).config.classes
    assert [(c.name, c.is_thing) for c in classes] == [('person', True), ('car', True),
                                                       ('road', False)]
    assert classes[2].color == (128, 64, 128)

    capsys.readouterr()  # save_pretrained's progress bar
    assert cli.main(['import-eomt', str(folder), '-o', str(out), '--label-set',
                     'cityscapes']) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and 'cityscapes' in stderr
