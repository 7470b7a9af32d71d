"""On-disk cache of serialized TensorRT engines, safe across processes.

A TensorRT engine only runs on the TensorRT version and GPU architecture that built it, and
building one takes from seconds to many minutes, so engines are built on the target at first
use and cached under a key of everything they depend on (:class:`EngineKey`). This module is
plain Python and filesystem: it never imports TensorRT, so it is tested on any machine.

Layout of the cache folder (:func:`default_engine_dir`), per key::

    <name>-<digest[:16]>.engine   the serialized engine
    <name>-<digest[:16]>.json     sidecar: the full key, the engine's size and SHA-256
    <name>-<digest[:16]>.lock     flock(2) target that serializes builders of this key

Promises:

- A stale or foreign engine is never returned: :meth:`EngineCache.lookup` returns a file
  only when its sidecar holds exactly the requested key and the engine's size and SHA-256
  match the sidecar. A missing, unreadable or mismatching sidecar counts as stale.
- Readers never see half-written files: engine and sidecar are each written to a temp file
  in the same folder, fsync'ed and moved into place with ``os.replace`` (atomic on POSIX),
  engine first, then sidecar. Between the two renames the new engine does not match the
  old sidecar, so a concurrent reader sees "stale" and waits for the lock, never a mix.
- Concurrent builders of one key (several nodes started by one launch file) build once:
  the first takes an exclusive ``flock`` on the ``.lock`` file, the others block on it and,
  once inside, find the fresh engine and reuse it. Lock files stay in place (deleting a lock
  file that another process may be waiting on would let two builders in at once).
- A folder that cannot be written (read-only, or a file in its place) is reported as a
  :class:`~tokenmask_ros.runtime.errors.CacheError` naming the folder, never as a raw OSError.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tokenmask_ros.atomic_file import atomic_path
from tokenmask_ros.runtime.errors import CacheError, one_line

SIDECAR_FORMAT = 'tokenmask-engine'
SIDECAR_VERSION = 2  # 2: FP32 engines are built without TF32, so version-1 engines are stale
TEMP_MAX_AGE_S = 3600.0  # prune() removes temp files of crashed writers older than this

log = logging.getLogger('tokenmask_ros.runtime')

__all__ = ['EngineCache', 'EngineKey', 'atomic_write', 'cache_root', 'default_engine_dir',
           'file_lock', 'file_sha256', 'prepare_cache_dir']


def cache_root() -> Path:
    """``$TOKENMASK_CACHE_DIR``, else ``~/.cache/tokenmask_ros``: ONNX exports and engines."""
    root = os.environ.get('TOKENMASK_CACHE_DIR') or Path.home() / '.cache' / 'tokenmask_ros'
    return Path(root).expanduser()


def default_engine_dir() -> Path:
    """The TensorRT engine folder: ``engines/`` under :func:`cache_root`."""
    return cache_root() / 'engines'


def prepare_cache_dir(folder: str | Path) -> Path:
    """``folder``, created if needed and checked writable (a probe file is made and removed),
    else :class:`CacheError`: root ignores permission bits, so only a real write tells."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.probe-', suffix='.tmp'):
            pass
    except OSError as error:
        raise cache_error(folder, error) from None
    return folder


def cache_error(folder: Path, error: OSError) -> CacheError:
    """The one-sentence error for a cache folder that cannot be written."""
    return CacheError(f'cache folder {folder} cannot be written ({one_line(error)}): point '
                      'engine_cache_dir (--cache-dir, or $TOKENMASK_CACHE_DIR) at a writable '
                      'folder')


@contextlib.contextmanager
def file_lock(path: Path, waiting_message: str = '') -> Iterator[None]:
    """Exclusive flock(2) on ``path`` (created if missing); released when the descriptor
    closes, also when the process dies. flock excludes separate open() calls even within one
    process, so threads are serialized too. Logs ``waiting_message`` when it has to wait."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise cache_error(path.parent, error) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                log.info(waiting_message)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (engines and ONNX files reach gigabytes)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; two engines are interchangeable iff their
    keys are equal.

    ``name`` (the ONNX file's stem) only makes file names readable and groups the engines a
    new build supersedes; it is part of the key like every other field.
    """

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # 'major.minor', e.g. '8.7' (Orin), '9.0' (H100)
    precision: str  # 'fp32' | 'fp16'
    input_shape: tuple[int, ...]  # the image input, e.g. (1, 3, 640, 640)
    name: str = 'model'

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == 'input_shape':
                shape = tuple(int(d) for d in value)
                if not shape or any(d < 1 for d in shape):
                    raise ValueError(f'input_shape must be positive dimensions, got {value!r}')
                object.__setattr__(self, 'input_shape', shape)
            elif not isinstance(value, str) or not value:
                raise ValueError(f'EngineKey.{field.name} must be a non-empty string, '
                                 f'got {value!r}')

    def to_dict(self) -> dict:
        values = asdict(self)
        values['input_shape'] = list(self.input_shape)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> EngineKey:
        """The key a sidecar stores; ValueError / TypeError / KeyError when it is not one."""
        names = {f.name for f in fields(cls)}
        if not isinstance(values, dict) or set(values) != names:
            raise ValueError(f'not an engine key: {values!r}')
        return cls(**values)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(',', ':'))

    def digest(self) -> str:
        """SHA-256 of :meth:`canonical_json`: the same on every machine and Python."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def filename(self) -> str:
        """``<name>-<digest[:16]>.engine`` (the name reduced to characters safe in a path)."""
        stem = re.sub(r'[^A-Za-z0-9._-]', '_', self.name).lstrip('.')[:96] or 'model'
        return f'{stem}-{self.digest()[:16]}.engine'


class EngineCache:
    """Serialized engines in ``cache_dir`` (created on the first build), keyed by
    :class:`EngineKey`; see this module's doc for the guarantees."""

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_engine_dir()

    # ------------------------------------------------------------------ paths

    def engine_path(self, key: EngineKey) -> Path:
        return self.cache_dir / key.filename()

    def sidecar_path(self, key: EngineKey) -> Path:
        return self.engine_path(key).with_suffix('.json')

    def lock_path(self, key: EngineKey) -> Path:
        return self.engine_path(key).with_suffix('.lock')

    # ------------------------------------------------------------------ reading

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for ``key``, or None when it is missing, stale or damaged.

        Reads the whole engine once to check its SHA-256 (a fraction of a second for
        typical engines, small next to deserializing it).
        """
        engine, sidecar = self.engine_path(key), self.sidecar_path(key)
        record = _read_sidecar(sidecar)
        if record is None:
            if engine.exists():
                log.info('engine cache: %s has no valid sidecar; treating it as stale',
                         engine.name)
            return None
        try:
            stored = EngineKey.from_dict(record['key'])
        except (KeyError, TypeError, ValueError):
            log.info('engine cache: %s holds no valid key; treating it as stale', sidecar.name)
            return None
        if stored != key:
            log.info('engine cache: %s was built for another key; not loading it',
                     engine.name)
            return None
        try:
            size = engine.stat().st_size
            if size != record['engine_size'] or file_sha256(engine) != record['engine_sha256']:
                log.warning('engine cache: %s does not match its sidecar (truncated or '
                            'altered); it will be rebuilt', engine.name)
                return None
        except (OSError, KeyError):
            return None
        return engine

    def entries(self) -> Iterator[tuple[Path, EngineKey]]:
        """(engine path, key) of every engine in the folder with a readable sidecar."""
        if not self.cache_dir.is_dir():
            return
        for sidecar in sorted(self.cache_dir.glob('*.json')):
            record = _read_sidecar(sidecar)
            if record is None:
                continue
            try:
                yield sidecar.with_suffix('.engine'), EngineKey.from_dict(record['key'])
            except (KeyError, TypeError, ValueError):
                continue

    # ------------------------------------------------------------------ building

    def get_or_build(self, key: EngineKey, build_fn: Callable[[], bytes],
                     force: bool = False) -> Path:
        """The engine for ``key``, built with ``build_fn()`` (serialized engine bytes) when
        it is missing, stale or ``force`` is set.

        Builders of one key are serialized by an exclusive lock; whoever waited re-checks
        the cache once inside, so N concurrent callers build once. With ``force`` a waiter
        reuses an engine only if its build started after this call (another forced build),
        so N concurrent forced callers also build once.

        After a successful build, engines this one supersedes are deleted: same ``name``,
        GPU, precision and input shape but another ONNX hash or TensorRT version (the model
        was re-exported or TensorRT upgraded). Engines for other GPUs or precisions sharing
        the folder are kept, so machines or nodes that share a cache do not evict each other.
        """
        requested_ns = time.time_ns()
        if not force:
            found = self.lookup(key)
            if found is not None:
                return found
        prepare_cache_dir(self.cache_dir)
        with self._locked(key):
            found = self.lookup(key)
            if found is not None and (not force or _build_started_ns(
                    self.sidecar_path(key)) >= requested_ns):
                log.info('engine cache: reusing %s built by another process', found.name)
                return found
            return self._build(key, build_fn)

    def _build(self, key: EngineKey, build_fn: Callable[[], bytes]) -> Path:
        started_ns = time.time_ns()
        data = build_fn()
        if not isinstance(data, bytes | bytearray | memoryview) or not len(data):
            raise RuntimeError(f'engine build for {key.name} returned no engine bytes')
        data = bytes(data)
        engine = self.engine_path(key)
        record = {'format': SIDECAR_FORMAT, 'version': SIDECAR_VERSION, 'key': key.to_dict(),
                  'engine_size': len(data), 'engine_sha256': hashlib.sha256(data).hexdigest(),
                  'build_started_ns': started_ns,
                  'build_seconds': round((time.time_ns() - started_ns) / 1e9, 3)}
        try:
            atomic_write(engine, data)
            atomic_write(self.sidecar_path(key), json.dumps(record, indent=1).encode())
        except OSError as error:  # disk full, folder made read-only meanwhile
            raise cache_error(self.cache_dir, error) from None
        log.info('engine cache: wrote %s (%.1f MB)', engine.name, len(data) / 1e6)
        self._remove_superseded(key)
        return engine

    def remove(self, key: EngineKey) -> None:
        """Delete the engine and sidecar of ``key`` (e.g. one TensorRT refuses to load)."""
        _remove_entry(self.engine_path(key))

    def _remove_superseded(self, key: EngineKey) -> None:
        for engine, other in self.entries():
            if other != key and (other.name, other.gpu_name, other.compute_capability,
                                 other.precision, other.input_shape) == (
                    key.name, key.gpu_name, key.compute_capability, key.precision,
                    key.input_shape):
                log.info('engine cache: removing superseded %s', engine.name)
                _remove_entry(engine)

    def prune(self, keep: Iterable[EngineKey]) -> list[Path]:
        """Delete every engine and sidecar not built for one of ``keep``, temp files of
        writers that died over an hour ago, and lock files of other keys that nobody holds;
        returns the deleted paths.

        A process that opened such a lock file just before it was deleted may then build
        its engine alongside another one: a wasted build at worst, never a damaged file.
        """
        if not self.cache_dir.is_dir():
            return []
        wanted = {k.filename() for k in keep}
        removed = []
        now = time.time()
        for path in sorted(self.cache_dir.iterdir()):
            if path.with_suffix('.engine').name in wanted:
                continue
            with contextlib.suppress(OSError):
                if path.suffix == '.tmp':
                    if now - path.stat().st_mtime > TEMP_MAX_AGE_S:
                        path.unlink()
                        removed.append(path)
                elif path.suffix in ('.engine', '.json'):
                    path.unlink()
                    removed.append(path)
                elif path.suffix == '.lock' and _unlink_if_unlocked(path):
                    removed.append(path)
        return removed

    @contextlib.contextmanager
    def _locked(self, key: EngineKey) -> Iterator[None]:
        """Exclusive :func:`file_lock` on the key's lock file."""
        with file_lock(self.lock_path(key), 'engine cache: waiting for another process '
                       f'building {key.filename()}'):
            yield


def _read_sidecar(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get('format') != SIDECAR_FORMAT
            or record.get('version') != SIDECAR_VERSION):
        return None
    return record


def _build_started_ns(sidecar: Path) -> int:
    record = _read_sidecar(sidecar) or {}
    value = record.get('build_started_ns')
    return value if isinstance(value, int) else 0


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    with atomic_path(path) as temp, open(temp, 'wb') as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (a power cut must not bring back the old file)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_entry(engine: Path) -> None:
    """Sidecar first, so that a concurrent reader sees "stale", never an unverified engine.
    The lock file stays (module doc)."""
    for path in (engine.with_suffix('.json'), engine):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _unlink_if_unlocked(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        path.unlink()
        return True
    finally:
        os.close(fd)
