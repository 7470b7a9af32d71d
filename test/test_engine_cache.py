"""runtime/engine_cache.py: keys, verified lookups, atomic writes, one build per key across
processes. Real filesystem (tmp_path), no TensorRT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tokenmask_ros.runtime.engine_cache import (
    TEMP_MAX_AGE_S,
    EngineCache,
    EngineKey,
    default_engine_dir,
    file_sha256,
)

MODULE = Path(__file__).resolve().parents[1] / 'tokenmask_ros' / 'runtime' / 'engine_cache.py'

KEY = EngineKey(onnx_sha256='ab' * 32, tensorrt_version='10.3.0', gpu_name='NVIDIA H100',
                compute_capability='9.0', precision='fp16', input_shape=(1, 3, 64, 64),
                name='tiny-64x64-fp16')
OTHER_VALUES = {'onnx_sha256': 'cd' * 32, 'tensorrt_version': '11.0.0',
                'gpu_name': 'Orin (nvgpu)', 'compute_capability': '8.7', 'precision': 'fp32',
                'input_shape': (1, 3, 64, 96), 'name': 'other'}


class Builder:
    """A build_fn that counts its calls and returns fixed bytes."""

    def __init__(self, data: bytes = b'serialized engine' * 64):
        self.data, self.calls = data, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.data


# --- keys ----------------------------------------------------------------------------


def test_digest_is_deterministic_and_changes_with_every_field():
    same = EngineKey(**{**KEY.to_dict(), 'input_shape': [1, 3, 64, 64]})
    assert same == KEY and same.digest() == KEY.digest()
    digests = {KEY.digest()}
    for field, value in OTHER_VALUES.items():
        digests.add(replace(KEY, **{field: value}).digest())
    assert len(digests) == 1 + len(OTHER_VALUES)
    assert json.loads(KEY.canonical_json()) == KEY.to_dict()
    assert KEY.filename() == f'tiny-64x64-fp16-{KEY.digest()[:16]}.engine'


def test_key_validation_and_round_trip():
    assert EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY
    with pytest.raises(ValueError):
        replace(KEY, gpu_name='')
    with pytest.raises(ValueError):
        replace(KEY, input_shape=(1, -1, 64, 64))
    with pytest.raises(ValueError):
        EngineKey.from_dict({**KEY.to_dict(), 'extra': 1})
    assert replace(KEY, name='../../etc/passwd').filename().startswith('_.._etc_passwd-')


def test_default_engine_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('TOKENMASK_CACHE_DIR', str(tmp_path))
    assert default_engine_dir() == tmp_path / 'engines'
    monkeypatch.delenv('TOKENMASK_CACHE_DIR')
    assert default_engine_dir() == Path.home() / '.cache' / 'tokenmask_ros' / 'engines'


# --- lookups ---------------------------------------------------------------------------


def test_builds_once_then_hits(tmp_path):
    cache, build = EngineCache(tmp_path / 'engines'), Builder()
    assert cache.lookup(KEY) is None
    path = cache.get_or_build(KEY, build)
    assert path == cache.engine_path(KEY) and path.read_bytes() == build.data
    assert cache.get_or_build(KEY, build) == path and build.calls == 1
    assert cache.lookup(KEY) == path
    record = json.loads(cache.sidecar_path(KEY).read_text())
    assert record['key'] == KEY.to_dict() and record['engine_sha256'] == file_sha256(path)
    assert [key for _, key in cache.entries()] == [KEY]


@pytest.mark.parametrize('field', sorted(OTHER_VALUES))
def test_foreign_engine_under_the_right_name_is_never_loaded(tmp_path, field):
    """An engine built for another TensorRT, GPU, ONNX, precision or shape is not returned,
    even when its files sit where the requested key's would."""
    cache = EngineCache(tmp_path)
    cache.get_or_build(KEY, Builder())
    other = replace(KEY, **{field: OTHER_VALUES[field]})
    assert cache.lookup(other) is None
    cache.engine_path(KEY).rename(cache.engine_path(other))
    cache.sidecar_path(KEY).rename(cache.sidecar_path(other))
    assert cache.lookup(other) is None
    rebuilt = Builder(b'the right engine')
    assert cache.get_or_build(other, rebuilt).read_bytes() == b'the right engine'
    assert rebuilt.calls == 1 and cache.lookup(other) is not None


def _truncate(cache, key):
    engine = cache.engine_path(key)
    engine.write_bytes(engine.read_bytes()[:-7])


def _flip_a_byte(cache, key):
    data = bytearray(cache.engine_path(key).read_bytes())
    data[len(data) // 2] ^= 0xFF
    cache.engine_path(key).write_bytes(bytes(data))


def _delete_sidecar(cache, key):
    cache.sidecar_path(key).unlink()


def _corrupt_sidecar(cache, key):
    cache.sidecar_path(key).write_text('{"format": "tokenmask-engine", "vers')


def _old_sidecar_version(cache, key):
    sidecar = cache.sidecar_path(key)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), 'version': 0}))


@pytest.mark.parametrize('damage', [_truncate, _flip_a_byte, _delete_sidecar, _corrupt_sidecar,
                                    _old_sidecar_version])
def test_damaged_or_unverifiable_engine_is_rebuilt_not_loaded(tmp_path, damage):
    cache, build = EngineCache(tmp_path), Builder()
    cache.get_or_build(KEY, build)
    damage(cache, KEY)
    assert cache.lookup(KEY) is None
    path = cache.get_or_build(KEY, build)
    assert build.calls == 2 and path.read_bytes() == build.data
    assert cache.lookup(KEY) == path


def test_force_rebuilds_a_valid_engine(tmp_path):
    cache = EngineCache(tmp_path)
    first = cache.get_or_build(KEY, Builder(b'first build'))
    inode = first.stat().st_ino
    again = Builder(b'second build')
    assert cache.get_or_build(KEY, again, force=True).read_bytes() == b'second build'
    assert again.calls == 1 and first.stat().st_ino != inode  # replaced, not rewritten
    assert cache.lookup(KEY) == first


def test_failed_or_empty_build_leaves_nothing_behind(tmp_path):
    cache = EngineCache(tmp_path)

    def fail():
        raise RuntimeError('builder exploded')

    with pytest.raises(RuntimeError, match='exploded'):
        cache.get_or_build(KEY, fail)
    with pytest.raises(RuntimeError, match='no engine bytes'):
        cache.get_or_build(KEY, lambda: b'')
    assert sorted(p.suffix for p in tmp_path.iterdir()) == ['.lock']
    assert cache.lookup(KEY) is None


# --- writes ----------------------------------------------------------------------------


def test_readers_never_see_a_partial_engine(tmp_path):
    """A writer replaces a 4 MB engine over and over; a reader reading the file directly
    only ever sees one complete version (os.replace of a fsync'ed temp file)."""
    cache = EngineCache(tmp_path)
    versions = [bytes([i]) * (4 << 20) for i in (1, 2)]
    cache.get_or_build(KEY, lambda: versions[0])
    path, seen, done = cache.engine_path(KEY), [], threading.Event()

    def read_continuously():
        while not done.is_set():
            data = path.read_bytes()
            seen.append(data in versions)

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for i in range(12):
            cache.get_or_build(KEY, lambda i=i: versions[i % 2], force=True)
    finally:
        done.set()
        reader.join()
    assert seen and all(seen)
    assert path.read_bytes() == versions[1] and cache.lookup(KEY) == path
    assert not list(tmp_path.glob('*.tmp')) and not list(tmp_path.glob('.*.tmp'))


def test_new_build_removes_only_the_engines_it_supersedes(tmp_path):
    cache = EngineCache(tmp_path)
    old_trt = cache.get_or_build(replace(KEY, tensorrt_version='10.2.0'), Builder())
    old_onnx = cache.get_or_build(replace(KEY, onnx_sha256='00' * 32), Builder())
    other_gpu = cache.get_or_build(replace(KEY, gpu_name='Orin', compute_capability='8.7'),
                                   Builder())
    other_precision = cache.get_or_build(replace(KEY, precision='fp32'), Builder())
    other_model = cache.get_or_build(replace(KEY, name='another-model'), Builder())
    current = cache.get_or_build(KEY, Builder())
    assert not old_trt.exists() and not old_trt.with_suffix('.json').exists()
    assert not old_onnx.exists()
    for kept in (other_gpu, other_precision, other_model, current):
        assert kept.exists() and kept.with_suffix('.json').exists()


def test_prune_keeps_the_given_keys_and_fresh_temp_files(tmp_path):
    cache = EngineCache(tmp_path)
    other = replace(KEY, name='another-model')
    kept, dropped = cache.get_or_build(KEY, Builder()), cache.get_or_build(other, Builder())
    stale_temp, fresh_temp = tmp_path / '.x.engine.a.tmp', tmp_path / '.x.engine.b.tmp'
    stale_temp.write_bytes(b'half')
    fresh_temp.write_bytes(b'half')
    old = time.time() - TEMP_MAX_AGE_S - 60
    os.utime(stale_temp, (old, old))
    removed = cache.prune({KEY})
    assert set(removed) == {dropped, dropped.with_suffix('.json'), dropped.with_suffix('.lock'),
                            stale_temp}
    assert kept.exists() and cache.lookup(KEY) == kept and fresh_temp.exists()


# --- concurrent builders ---------------------------------------------------------------

# Loads engine_cache.py by path (stdlib only), so each process starts in a blink without
# importing the tokenmask_ros package (torch).
BUILDER_SCRIPT = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location('engine_cache_under_test', sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
cache_dir, counter, start = sys.argv[2], sys.argv[3], float(sys.argv[4])
key = module.EngineKey.from_dict({key})

def build():
    with open(counter, 'a') as out:
        out.write('built\\n')
    time.sleep(0.5)
    return b'engine built once' * 4096

while time.time() < start:
    time.sleep(0.002)
print(module.EngineCache(cache_dir).get_or_build(key, build))
"""


def test_concurrent_processes_build_once_and_share_the_engine(tmp_path):
    counter = tmp_path / 'builds.txt'
    script = BUILDER_SCRIPT.replace('{key}', repr(KEY.to_dict()))
    start = time.time() + 1.5  # all four are waiting to call get_or_build by then
    processes = [subprocess.Popen([sys.executable, '-c', script, str(MODULE),
                                   str(tmp_path / 'engines'), str(counter), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    results = [p.communicate(timeout=60) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err for _, err in results]
    assert counter.read_text().splitlines() == ['built']
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert path.read_bytes() == b'engine built once' * 4096
    assert EngineCache(tmp_path / 'engines').lookup(KEY) == path


def test_concurrent_threads_build_once(tmp_path):
    """flock(2) also excludes threads of one process (each opens the lock file itself)."""
    cache, lock, calls = EngineCache(tmp_path), threading.Lock(), []
    barrier = threading.Barrier(4)

    def build():
        with lock:
            calls.append(1)
        time.sleep(0.3)
        return b'engine'

    results = []

    def worker():
        barrier.wait()
        results.append(cache.get_or_build(KEY, build))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 4
