"""Hugging Face hub ids resolve from a local HF cache with downloads off, converting once.

Every test runs with ``HF_HUB_OFFLINE=1`` and its own ``HF_HOME`` / ``HF_HUB_CACHE`` /
``TOKENMASK_CACHE_DIR``: the cache entry is built here in huggingface_hub's layout
(``models--owner--name/refs/main`` + ``snapshots/<commit>/``), so nothing touches the network.
"""

import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import installed_executable, run_command

from tokenmask_ros import cli
from tokenmask_ros.bundled import resolve_model_path
from tokenmask_ros.model import load_checkpoint
from tokenmask_ros.model.hub import HubError, parse_hub_id, resolve_hub_model

transformers = pytest.importorskip('transformers')

REPO = 'tiny-org/eomt-tiny'
COMMIT = 'a1b2c3d4e5f60718293a4b5c6d7e8f9012345678'
SMALL = {'hidden_size': 64, 'num_hidden_layers': 4, 'num_attention_heads': 2, 'image_size': 64,
         'patch_size': 16, 'num_register_tokens': 2, 'num_blocks': 2, 'num_queries': 5}
ATOL = 1e-4


def save_tiny_hf_eomt(folder, seed=0, **changes):
    """A random small HF EoMT model saved with ``save_pretrained``, as a hub repo holds it."""
    torch.manual_seed(seed)
    config = {**SMALL, 'id2label': {0: 'person', 1: 'car', 2: 'road'}, **changes}
    hf = transformers.EomtForUniversalSegmentation(transformers.EomtConfig(**config)).eval()
    with torch.no_grad():
        for parameter in hf.parameters():  # HF's init has ones/zeros that hide swapped tensors
            parameter.add_(0.1 * torch.randn_like(parameter))
        hf.attn_mask_probs.zero_()
    hf.save_pretrained(folder)
    return hf


def place_in_hf_cache(cache, repo_id, folder, commit=COMMIT):
    """Copy ``folder`` into the HF hub cache layout under ``refs/main`` -> ``commit``."""
    entry = cache / f'models--{repo_id.replace("/", "--")}'
    shutil.copytree(folder, entry / 'snapshots' / commit)
    (entry / 'refs').mkdir(parents=True, exist_ok=True)
    (entry / 'refs' / 'main').write_text(commit)
    return entry / 'snapshots' / commit


def assert_same_outputs(hf, ours):
    mean = torch.tensor(ours.config.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(ours.config.pixel_std).view(1, 3, 1, 1)
    images = torch.rand(1, 3, *ours.config.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(pixel_values=(images - mean) / std)
        actual = ours.eval()(images)
    assert (actual.class_logits - expected.class_queries_logits).abs().max() <= ATOL
    assert (actual.mask_logits - expected.masks_queries_logits).abs().max() <= ATOL


def tmp_cache(env):
    return Path(env['TOKENMASK_CACHE_DIR']) / 'hub'


@pytest.fixture(scope='module')
def hf_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp('hf_repo')
    return save_tiny_hf_eomt(folder), folder


@pytest.fixture
def offline(tmp_path, monkeypatch, hf_source):
    """Downloads off, fresh HF and project caches, ``REPO`` in the HF cache."""
    hf_home = tmp_path / 'hf_home'
    env = {'HF_HUB_OFFLINE': '1', 'HF_HOME': str(hf_home),
           'HF_HUB_CACHE': str(hf_home / 'hub'), 'TOKENMASK_CACHE_DIR': str(tmp_path / 'tm')}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv('HUGGINGFACE_HUB_CACHE', raising=False)
    snapshot = place_in_hf_cache(hf_home / 'hub', REPO, hf_source[1])
    return env, snapshot


@pytest.mark.parametrize(('text', 'expected'), [
    ('tue-mps/coco_panoptic_eomt_large_640', ('tue-mps/coco_panoptic_eomt_large_640', None)),
    ('owner/name@v1.0', ('owner/name', 'v1.0')),
    ('owner/name-v1.5', ('owner/name-v1.5', None)),
    ('./owner/name', None), ('/owner/name', None), ('~/owner/name', None),
    ('owner/name.safetensors', None), ('models/x.onnx', None), ('a/b/c', None),
    ('owner--x/name', None), ('-owner/name', None), ('owner/name@', None), ('name', None),
])
def test_hub_ids_are_told_apart_from_paths(text, expected):
    assert parse_hub_id(text) == expected


def test_hub_id_resolves_from_the_cache_and_converts_once(offline, hf_source):
    env, snapshot = offline
    path = resolve_hub_model(REPO)
    assert path.parent == tmp_cache(env) and COMMIT in path.name and path.is_file()
    assert_same_outputs(hf_source[0], load_checkpoint(path))
    assert load_checkpoint(path).config.head == 'eomt'
    # Converted once: with the snapshot's weights gone, the converted file is still used.
    (snapshot / 'model.safetensors').unlink()
    mtime = path.stat().st_mtime_ns
    assert resolve_model_path(REPO) == path == resolve_model_path(f'{REPO}@{COMMIT}')
    assert path.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.name.endswith('.tmp')]


def test_offline_without_a_cached_copy_says_what_to_download(offline):
    env, _ = offline
    with pytest.raises(HubError) as error:
        resolve_model_path('tiny-org/not-cached')
    message = str(error.value)
    assert '\n' not in message
    assert 'not in the Hugging Face cache' in message and env['HF_HUB_CACHE'] in message
    assert 'hf download tiny-org/not-cached' in message and 'HF_HUB_OFFLINE' in message
    assert not tmp_cache(env).exists()


def test_an_existing_path_wins_over_a_hub_id(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / REPO
    local.parent.mkdir()
    local.write_bytes(b'a local file named like the repo')
    assert resolve_model_path(REPO) == local.relative_to(tmp_path)
    assert parse_hub_id(REPO) is None
    # A local HF folder with a hub-like name is imported from disk, not from the cache.
    local.unlink()
    save_tiny_hf_eomt(local, seed=3, num_queries=7)
    out = tmp_path / 'local.safetensors'
    assert cli.main(['import-eomt', REPO, '-o', str(out), '--quiet']) == 0
    assert load_checkpoint(out).config.num_queries == 7


def test_cli_imports_a_hub_id_from_the_cache(offline, hf_source, tmp_path):
    env, _ = offline
    out = tmp_path / 'x.safetensors'
    result = run_command([*installed_executable('tokenmask'), 'import-eomt', REPO, '-o',
                          str(out)], timeout=180, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert_same_outputs(hf_source[0], load_checkpoint(out))
    assert not tmp_cache(env).exists()  # -o OUT is the only file written

    missing = run_command([*installed_executable('tokenmask'), 'import-eomt', 'tiny-org/absent',
                           '-o', str(tmp_path / 'y.safetensors')], timeout=180,
                          env={**os.environ, **env})
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('tokenmask import-eomt: error: ')
    assert 'hf download tiny-org/absent' in lines[0]
    assert not (tmp_path / 'y.safetensors').exists()


@pytest.mark.dds
def test_segment_node_runs_a_hub_id_from_the_local_cache(offline, tmp_path):
    """`model:=owner/name` with downloads off: the node converts the cached snapshot once
    and reports ready with it (the done-when of a hub id running in the node)."""
    import signal
    import subprocess
    import time

    log = tmp_path / 'node.log'
    with log.open('w') as output:
        process = subprocess.Popen(
            [*installed_executable('segment_node'), '--ros-args', '-r', '__ns:=/t_hub',
             '-p', f'model:={REPO}', '-p', 'backend:=torch', '-p', 'device:=cpu'],
            stdout=output, stderr=subprocess.STDOUT,
            env=dict(os.environ, RCUTILS_LOGGING_BUFFERED_STREAM='0', PYTHONUNBUFFERED='1'))
        try:
            deadline = time.monotonic() + 120
            while 'ready:' not in log.read_text():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    assert 'eomt-tiny' in text and 'Traceback' not in text, text
    assert list(tmp_cache(offline[0]).glob('tiny-org--eomt-tiny-*.safetensors')), text
