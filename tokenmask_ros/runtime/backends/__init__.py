"""Backend selection. Optional dependencies (onnxruntime, openvino, tensorrt, pycuda) are
imported only when their backend is asked for, so this package imports on any machine.

``auto`` tries :data:`AUTO_ORDER` (TensorRT, OpenVINO, ONNX Runtime, PyTorch) and logs why it
skips each one. OpenVINO comes before ONNX Runtime only where it was measured faster: int8
on x86-64 CPUs, and Intel GPUs / NPUs, which only it drives
(:func:`~.openvino_backend.auto_skip_reason`, ``docs/backends.md``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from tokenmask_ros.defaults import AUTO_ORDER, BACKENDS, PRECISIONS
from tokenmask_ros.runtime.backends.base import Backend
from tokenmask_ros.runtime.errors import BackendUnavailable, CacheError, LoadError, one_line

log = logging.getLogger('tokenmask_ros.runtime')

__all__ = [
    'AUTO_ORDER',
    'BACKENDS',
    'Backend',
    'BackendUnavailable',
    'check_device',
    'check_threads',
    'create_backend',
    'open_cached_onnx',
    'resolve_device',
]


#: OpenVINO's accelerator names (Intel GPUs, NPUs), accepted in any case; openvino only.
OPENVINO_DEVICE = re.compile(r'^(GPU(\.\d+)?|NPU)$', re.IGNORECASE)


def check_device(device: str) -> None:
    """ValueError unless ``device`` is a device name any backend takes: 'auto', 'cpu',
    'cuda', 'cuda:N' or OpenVINO's 'GPU', 'GPU.N', 'NPU' (any case)."""
    if not isinstance(device, str) or not (
            device in ('auto', 'cpu', 'cuda') or OPENVINO_DEVICE.match(device)
            or (device.startswith('cuda:') and device[5:].isdigit())):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or, for openvino, "
                         f"'GPU', 'GPU.N' or 'NPU', got {device!r}")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; other values are checked
    (:func:`check_device`). OpenVINO's 'GPU', 'GPU.N' and 'NPU' come back upper-case."""
    check_device(device)
    if OPENVINO_DEVICE.match(device):
        return device.upper()
    if device == 'auto':
        import torch

        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


def _precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'auto':  # never int8: its accuracy change must be asked for
        return 'fp16' if device.startswith('cuda') else 'fp32'
    return precision


def check_threads(threads: int | None) -> None:
    """ValueError unless ``threads`` is None or an integer >= 0 (None / 0: the runtime's
    default)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 0):
        raise ValueError(f'threads must be an integer >= 0 (0: the runtime default), '
                         f'got {threads!r}')


def create_backend(name: str, model_path: str | Path, *, device: str = 'auto',
                   precision: str = 'auto', cache_dir: str | Path | None = None,
                   force_engine_update: bool = False, compile: bool = False,
                   batch: int = 1, calibration: str | Path | int | None = None,
                   threads: int | None = None) -> Backend:
    """The backend ``name`` ('auto' = the first of :data:`AUTO_ORDER` that works here).

    ``model_path``: a TokenMask ``.safetensors`` checkpoint (every backend; ONNX files are
    exported into ``cache_dir`` on first use) or an exported ``.onnx`` file (onnxruntime,
    tensorrt). Raises :class:`BackendUnavailable` with one sentence when it cannot run,
    including its subclasses :class:`~tokenmask_ros.runtime.errors.CacheError` (cache folder
    unusable), :class:`~tokenmask_ros.runtime.errors.EngineBuildError` (TensorRT could not
    build) and :class:`~tokenmask_ros.runtime.errors.LoadError`. A cached ONNX export that
    its runtime refuses to load is deleted and exported again once. ``batch``: images per
    call of a checkpoint's export (ONNX Runtime, TensorRT; an ``.onnx`` file keeps its own,
    PyTorch runs any batch). ``precision='int8'``: a calibrated QDQ export (onnxruntime,
    openvino; :mod:`~tokenmask_ros.runtime.quantize`) calibrated on ``calibration`` (a folder
    of images or ``'synthetic:N'``; default synthetic scenes), or an int8 ``.onnx`` file.
    ``threads``: CPU threads per inference (ONNX Runtime intra-op threads, OpenVINO
    ``INFERENCE_NUM_THREADS``, ``torch.set_num_threads`` for the whole process; TensorRT runs
    on the GPU and ignores it); None or 0 keeps each runtime's default.
    """
    check_threads(threads)
    device = resolve_device(device)
    if name == 'auto':
        options = {'device': device, 'precision': precision, 'cache_dir': cache_dir,
                   'force_engine_update': force_engine_update, 'compile': compile,
                   'batch': batch, 'calibration': calibration, 'threads': threads}
        return _first_that_starts(model_path, options)
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}")
    precision = _precision(precision, device)
    if precision != 'int8':
        calibration = None  # only int8 exports are calibrated
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f'model file not found: {path}')
    if OPENVINO_DEVICE.match(device) and name != 'openvino':
        raise BackendUnavailable(f'{name} backend: {device} is an OpenVINO device name; only '
                                 'the openvino backend runs on it')
    if precision == 'int8' and name in ('torch', 'tensorrt'):
        raise BackendUnavailable(f'{name} backend: int8 runs as a calibrated ONNX export on the '
                                 'onnxruntime and openvino backends only')
    if name == 'torch':
        if path.suffix == '.onnx':
            raise BackendUnavailable('the torch backend needs a .safetensors checkpoint, '
                                     f'not an ONNX file ({path.name})')
        from tokenmask_ros.model import load_checkpoint
        from tokenmask_ros.runtime.backends.torch_backend import TorchBackend

        return TorchBackend(load_checkpoint(path), device, precision, compile=compile,
                            threads=threads)
    if name == 'onnxruntime':
        from tokenmask_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return open_cached_onnx(path, precision, cache_dir, lambda onnx_path: (
            OnnxRuntimeBackend(onnx_path, device, cache_dir=cache_dir, threads=threads)),
            batch=batch,
            calibration=calibration)
    if name == 'openvino':
        from tokenmask_ros.runtime.backends.openvino_backend import OpenVINOBackend

        OpenVINOBackend.check_available(device)  # fail before spending time on an export
        return open_cached_onnx(path, precision, cache_dir, lambda onnx_path: (
            OpenVINOBackend(onnx_path, device, cache_dir=cache_dir, threads=threads)),
            batch=batch,
            calibration=calibration)
    from tokenmask_ros.runtime.backends.tensorrt_backend import TensorRTBackend

    TensorRTBackend.check_available(device)  # fail before spending time on an export
    return open_cached_onnx(path, precision, cache_dir, lambda onnx_path: TensorRTBackend(
        onnx_path, device, cache_dir=cache_dir, force_rebuild=force_engine_update),
        batch=batch, selection='fixed')  # TensorRT builds static shapes only


def _first_that_starts(model_path: str | Path, options: dict) -> Backend:
    """The first backend of :data:`AUTO_ORDER` that starts; each one skipped is logged with
    its reason (a warning when it is installed but failed: cache, engine build, memory)."""
    reasons = []
    for candidate in AUTO_ORDER:
        if candidate == 'openvino':
            from tokenmask_ros.runtime.backends.openvino_backend import auto_skip_reason

            skip = auto_skip_reason(options['device'],
                                    _precision(options['precision'], options['device']))
            if skip is not None:
                log.info('backend auto: not trying openvino (%s)', skip)
                reasons.append(f'openvino: {skip}')
                continue
        try:
            backend = create_backend(candidate, model_path, **options)
        except (BackendUnavailable, RuntimeError) as error:  # RuntimeError: CUDA OOM, drivers
            reason = str(error) if isinstance(error, BackendUnavailable) else one_line(error)
            failed = type(error) is not BackendUnavailable
            log.log(logging.WARNING if failed else logging.INFO,
                    'backend auto: %s %s (%s); trying the next backend', candidate,
                    'failed' if failed else 'is unavailable', reason)
            reasons.append(f'{candidate}: {reason}')
            continue
        log.info('backend auto: using %s%s', backend.describe(),
                 ''.join(f'; skipped {r}' for r in reasons))
        return backend
    raise BackendUnavailable('no backend can run here: ' + '; '.join(reasons))


def open_cached_onnx(model_path: Path, precision: str, cache_dir: str | Path | None,
                     open_backend: Callable[[Path], Backend], batch: int = 1,
                     calibration: str | Path | int | None = None,
                     selection: str = 'kept') -> Backend:
    """``open_backend(onnx)`` on the cached export of ``model_path`` (:func:`cached_onnx`).

    An export from the cache that the runtime refuses (:class:`LoadError`: a damaged node
    the checksum could not catch, an export from another version) is deleted and exported
    again once; failing again raises :class:`CacheError`. A user's own ``.onnx`` file is
    never deleted: its :class:`LoadError` is raised as it is.
    """
    from tokenmask_ros.runtime.export import cached_onnx

    onnx_path = cached_onnx(model_path, precision, cache_dir, batch=batch,
                            calibration=calibration, selection=selection)
    if model_path.suffix == '.onnx':
        return open_backend(onnx_path)
    try:
        return open_backend(onnx_path)
    except LoadError as error:
        log.warning('cached ONNX export %s does not load (%s); exporting it again',
                    onnx_path, error)
    onnx_path = cached_onnx(model_path, precision, cache_dir, force=True, batch=batch,
                            calibration=calibration, selection=selection)
    try:
        return open_backend(onnx_path)
    except LoadError as error:
        raise CacheError(f'{onnx_path} still does not load after exporting it again '
                         f'({error}): delete {onnx_path.parent} and retry, or run backend '
                         'torch') from None
