"""Errors the runtime raises when a backend cannot start, for callers to tell apart.

Standard library only (the engine cache, which is loaded on its own by tests and tools,
raises them too). Every one is a :class:`BackendUnavailable`: ``backend: auto`` moves on to
the next backend, and the CLI prints the message as one line instead of a traceback.
"""

from __future__ import annotations

__all__ = ['BackendUnavailable', 'CacheError', 'EngineBuildError', 'LoadError', 'one_line']


class BackendUnavailable(RuntimeError):  # noqa: N818 (reads as a state, like TimeoutError)
    """The requested backend cannot run here; the message is one sentence saying why."""


class CacheError(BackendUnavailable):
    """The cache folder cannot be used (not a folder, not writable) or a cache entry still
    fails to load after one rebuild; the message names the path and the fix."""


class EngineBuildError(BackendUnavailable):
    """TensorRT could not parse the ONNX file, build an engine or load it (parser, memory)."""


class LoadError(BackendUnavailable):
    """A model or engine file exists but its runtime refuses to load it (damaged, or made
    for another version); a cache entry that raises this is rebuilt once."""


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, to put a library's error into a sentence."""
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0]}' if text else type(error).__name__
