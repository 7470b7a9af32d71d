"""Atomic file replacement, shared by checkpoints, ONNX exports and TensorRT engines.

Readers of a path written through :func:`atomic_path` see the old file or the new one,
whole, never a partial write: the content goes to a temp file in the same folder (same
file system), which is then renamed over the target. Standard library only, so any part
of the package may use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temp file name beside ``path``; on success it replaces ``path``.

    The writer fills the temp file (and may fsync it); on leaving the block it gets normal
    permissions (mkstemp creates 0600 files; we want what ``open`` would give under the
    umask) and is renamed over ``path``. On an exception it is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(handle)
    try:
        yield temp
        os.chmod(temp, 0o666 & ~current_umask())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
