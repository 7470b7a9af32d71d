"""OpenVINO backend: the same tokenmask ONNX export (:mod:`..export`) that ONNX Runtime runs,
compiled by OpenVINO for the CPU, or for an Intel GPU / NPU where OpenVINO finds one.

Why a second CPU runtime: robots mostly carry x86 CPUs (Intel NUCs, AMD embedded boards)
without a CUDA GPU, and OpenVINO's CPU plugin runs a QDQ (int8) export with int8 kernels
(:mod:`..quantize`), where ONNX Runtime's CPU provider was slower than at fp32 on the
machines measured (``docs/backends.md`` has the numbers and commands). At fp32 both give
the same outputs, and ONNX Runtime ran the graph faster (it gains more from the graph's
data-dependent number of decoded queries), so ``auto`` picks OpenVINO on CPUs for int8.

Precision: an fp32 or int8 export runs with ``INFERENCE_PRECISION_HINT=f32``. OpenVINO's
own default on CPUs with AVX512-BF16 or AMX is bf16 for every float op, which is faster but
no longer equal to ONNX Runtime (about 3 pixels in 10 000 differ); the float islands of the
int8 graph (softmax, LayerNorm, the decoding) must stay float32 as well. An fp16 export
keeps the device's default (f16 on GPUs, f32 or bf16 on CPUs).

Devices: ``'cpu'`` is OpenVINO's ``CPU``; OpenVINO's own names ``GPU``, ``GPU.N`` and
``NPU`` (any case) reach Intel accelerators; ``cuda`` devices are refused (OpenVINO does not
drive NVIDIA GPUs). Compiled models are cached by OpenVINO itself (``CACHE_DIR``) in
``openvino/`` under the runtime's cache folder; OpenVINO keys each blob by a hash of the
model, the device, the compile options and its own version, so fp32 and int8 exports, devices
and OpenVINO upgrades never share an entry, and a blob it cannot import is compiled again.
"""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path

import numpy as np

from tokenmask_ros.model.postprocess import PanopticScores
from tokenmask_ros.runtime.backends.base import Backend, graph_feed
from tokenmask_ros.runtime.engine_cache import cache_root, prepare_cache_dir
from tokenmask_ros.runtime.errors import BackendUnavailable, CacheError, LoadError, one_line
from tokenmask_ros.runtime.graph import INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger('tokenmask_ros.runtime')

__all__ = ['OpenVINOBackend', 'auto_skip_reason', 'openvino_device']

_ACCELERATOR = re.compile(r'^(GPU(\.\d+)?|NPU)$')
#: CPU architectures where ``auto`` prefers OpenVINO to ONNX Runtime (measured; see
#: :func:`auto_skip_reason`).
AUTO_ARCHITECTURES = ('x86_64', 'amd64')


def openvino_device(device: str) -> str:
    """OpenVINO's name for one of our device names: 'cpu' -> 'CPU'; 'GPU', 'GPU.N', 'NPU'
    (any case) are passed on; CUDA devices raise :class:`BackendUnavailable`."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu', got {device!r}")
    if device == 'cpu':
        return 'CPU'
    if device == 'auto' or device.startswith('cuda'):
        raise BackendUnavailable(f'openvino backend: device {device!r} is a CUDA GPU, which '
                                 "OpenVINO does not drive (use device 'cpu', an Intel 'GPU' "
                                 "or 'NPU', or the tensorrt / onnxruntime backend)")
    if _ACCELERATOR.match(device.upper()):
        return device.upper()
    raise ValueError(f"openvino device must be 'cpu', 'GPU', 'GPU.N' or 'NPU', got {device!r}")


def _core():
    """An OpenVINO ``Core``, or :class:`BackendUnavailable` when openvino is not installed."""
    try:
        import openvino as ov
    except ImportError as error:
        raise BackendUnavailable(f'openvino backend: openvino is not importable ({error}); '
                                 'pip install openvino') from None
    return ov.Core()


def _check_present(core, name: str) -> None:
    available = list(core.available_devices)
    if not any(d == name or d.startswith(name + '.') for d in available):
        raise BackendUnavailable(f'openvino backend: OpenVINO finds no {name} device here '
                                 f'(it finds {", ".join(available) or "none"})')


def auto_skip_reason(device: str, precision: str = 'fp32') -> str | None:
    """Why ``auto`` should not pick OpenVINO for ``device`` and ``precision`` here, or None
    when it should.

    The rule: int8 with ``device == 'cpu'`` on an x86-64 CPU with OpenVINO's CPU plugin,
    where OpenVINO ran the int8 export at 0.54-0.71x ONNX Runtime's fp32 time with PQ
    within 0.15 (ONNX Runtime's own int8 was slower than its fp32). At fp32 OpenVINO was
    never clearly faster on the graph that decodes only the kept queries (graph alone 54.9
    vs 36.8 ms for the bundled model; whole calls 0.7-1.2x between runs,
    ``docs/backends.md``), with equal outputs, so ``auto`` leaves fp32 on CPUs to ONNX
    Runtime. Elsewhere OpenVINO is not preferred: on CUDA
    machines TensorRT or ONNX Runtime's CUDA provider run on the GPU, and on ARM CPUs
    (Jetson, Raspberry Pi) nobody has measured it against ONNX Runtime yet. Intel GPUs / NPUs
    are OpenVINO's alone. ``--backend openvino`` still selects it explicitly anywhere it runs.
    """
    if _ACCELERATOR.match(device):
        return None  # an Intel GPU / NPU: only OpenVINO runs there
    if device != 'cpu':
        return f'auto uses openvino only on the CPU, not on {device!r}'
    machine = platform.machine().lower()
    if machine not in AUTO_ARCHITECTURES:
        return (f'auto prefers openvino only on x86-64 CPUs (measured there), not on '
                f'{machine}; choose --backend openvino to use it')
    if precision != 'int8':
        return (f'auto prefers openvino on CPUs for int8 only (onnxruntime measured faster '
                f'at {precision}); choose --backend openvino to use it')
    return None


class OpenVINOBackend(Backend):
    name = 'openvino'

    def __init__(self, onnx_path: str | Path, device: str = 'cpu',
                 cache_dir: str | Path | None = None, threads: int | None = None):
        """``cache_dir``: the runtime's cache folder; compiled models go to its
        ``openvino/`` subfolder (compiled without a cache, with a warning, when it cannot be
        written). ``threads``: ``INFERENCE_NUM_THREADS`` (None / 0: OpenVINO's default). A
        file OpenVINO refuses to read or compile raises :class:`LoadError`."""
        from tokenmask_ros.runtime.export import read_onnx_metadata

        self.path = Path(onnx_path)
        target = openvino_device(device)
        core = _core()
        _check_present(core, target.partition('.')[0])
        if not self.path.is_file():
            raise FileNotFoundError(f'ONNX file not found: {self.path}')
        metadata = read_onnx_metadata(self.path)
        self.device = 'cpu' if target == 'CPU' else target
        self.batch = metadata['batch']
        self.precision = metadata['precision']
        self.input_size = tuple(metadata['input_size'])
        self.decoded_queries = metadata['decoded_queries']
        config = {'PERFORMANCE_HINT': 'LATENCY'}
        if self.precision != 'fp16':
            config['INFERENCE_PRECISION_HINT'] = 'f32'  # the module doc says why
        if threads:
            config['INFERENCE_NUM_THREADS'] = threads
        self.cache_folder = self._cache_folder(cache_dir)
        if self.cache_folder is not None:
            core.set_property({'CACHE_DIR': str(self.cache_folder)})
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, target, config)
        except Exception as error:  # OpenVINO raises RuntimeError subclasses for everything
            raise LoadError(f'openvino cannot compile {self.path} for {target} '
                            f'({one_line(error)}); export it again') from None
        # A port has a set of tensor names (OpenVINO merges those of folded Casts into it).
        inputs = {n for i in self.compiled.inputs for n in i.get_names()}
        names = {n for o in self.compiled.outputs for n in o.get_names()}
        if not (set(INPUT_NAMES) <= inputs and set(OUTPUT_NAMES) <= names):
            raise ValueError(f'{self.path}: inputs {sorted(inputs)} / outputs {sorted(names)} '
                             'are not those of a tokenmask export')
        self._content_shape = tuple(self.compiled.input('content_size').get_shape())
        self._outputs = [self.compiled.output(name) for name in OUTPUT_NAMES]
        self.request = self.compiled.create_infer_request()
        self.execution_device = ', '.join(self.compiled.get_property('EXECUTION_DEVICES'))
        log.info('openvino: %s on %s (%s)', self.path.name, self.execution_device,
                 core.get_property(target.partition('.')[0], 'FULL_DEVICE_NAME'))

    @staticmethod
    def check_available(device: str) -> None:
        """:class:`BackendUnavailable` (one sentence) unless OpenVINO can run on ``device``
        here; cheap, so callers fail before spending time on an ONNX export."""
        target = openvino_device(device)
        core = _core()
        _check_present(core, target.partition('.')[0])

    @staticmethod
    def _cache_folder(cache_dir: str | Path | None) -> Path | None:
        folder = (Path(cache_dir) if cache_dir is not None else cache_root()) / 'openvino'
        try:
            return prepare_cache_dir(folder)
        except CacheError as error:
            log.warning('openvino: compiling without a model cache: %s', error)
            return None

    def run(self, image: np.ndarray, content_size: np.ndarray,
            score_threshold: float) -> PanopticScores:
        self.check_batch(image)
        feed = graph_feed(image, content_size, score_threshold, self._content_shape)
        results = self.request.infer(feed)
        return PanopticScores(*(results[output] for output in self._outputs))

    def close(self) -> None:
        self.request = None
        self.compiled = None

    def describe(self) -> str:
        where = self.execution_device if self.compiled is not None else 'closed'
        return f'{self.name} ({self.device}, {self.precision}, {where})'
