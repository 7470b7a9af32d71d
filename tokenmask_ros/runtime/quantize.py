"""Calibrated INT8 exports: post-training static quantization of an fp32 tokenmask export.

Uses ONNX Runtime's QDQ quantizer (``onnxruntime.quantization.quantize_static``,
``QuantFormat.QDQ``): QuantizeLinear / DequantizeLinear pairs are inserted around the
quantized ops, so the result is still a plain ONNX graph that ONNX Runtime, OpenVINO (which
runs QDQ graphs with its int8 kernels) and TensorRT read. What is quantized, and why:

- only the inputs of the MatMul / Gemm / Conv nodes with constant weights
  (:func:`weighted_nodes`): the patch embedding, qkv / projection / MLP layers, the class
  head and the mask MLP, about 80 % of a ViT's FLOPs at these token counts. Weights int8
  symmetric per output channel, input activations uint8 per tensor (MinMax over the
  calibration frames); the layers' outputs, biases and residual sums stay float.
- float stays everything else: the attention score and attention-times-values products and
  their softmax (probabilities in [0, 1] lose most of their resolution in 8 bits), every
  LayerNormalization, the mask head's query-patch product, and the whole decoding after it
  (Resize, Sigmoid, class Softmax, TopK, ArgMax, areas), whose integer outputs must not
  flicker with quantization noise.

Calibration frames are letterboxed exactly as the runtime letterboxes camera frames
(:func:`~tokenmask_ros.runtime.preprocess.letterbox`), from a folder of images like the
robot's or from synthetic scenes (:class:`~tokenmask_ros.synthetic.SceneGenerator`, which
only suits models trained on them, such as the bundled one). The result keeps the export's
``metadata_props`` with ``precision`` set to ``int8`` and the calibration source recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tokenmask_ros.atomic_file import atomic_path

log = logging.getLogger('tokenmask_ros.runtime')

__all__ = ['DEFAULT_CALIBRATION', 'QUANTIZED_OP_TYPES', 'RECIPE_VERSION', 'CalibrationError',
           'calibration_feeds', 'calibration_key', 'parse_calibration', 'quantize_int8',
           'weighted_nodes']

#: Version of the recipe below, kept in cached int8 exports' sidecars: raising it makes
#: every cached int8 export be quantized again. 2: the layers' outputs stay float.
RECIPE_VERSION = 2
#: The calibration used when none is named (``Segmenter(precision='int8')`` on a checkpoint).
DEFAULT_CALIBRATION = 'synthetic:32'
QUANTIZED_OP_TYPES = ('MatMul', 'Gemm', 'Conv')
#: Synthetic calibration scenes: camera-sized frames from their own stream (evaluation and
#: the benchmark draw stream 0), so calibration never sees the frames it is judged on.
SYNTHETIC_SIZE = (480, 640)
SYNTHETIC_STREAM = 7
MAX_CALIBRATION_IMAGES = 1000


class CalibrationError(ValueError):
    """A calibration source that cannot be used; the message says which and why."""


def parse_calibration(source: str | Path | int) -> tuple[str, object]:
    """``('synthetic', N)`` for ``'synthetic:N'`` or an int N, ``('folder', Path)`` for a
    folder of images; :class:`CalibrationError` otherwise."""
    if isinstance(source, int) and not isinstance(source, bool):
        count = source
    elif isinstance(source, str) and source.startswith('synthetic:'):
        try:
            count = int(source.partition(':')[2])
        except ValueError:
            raise CalibrationError(f"calibration {source!r}: expected 'synthetic:N' with an "
                                   'integer N') from None
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise CalibrationError(f'calibration folder not found: {folder}')
        return 'folder', folder
    if not 1 <= count <= MAX_CALIBRATION_IMAGES:
        raise CalibrationError(f'synthetic calibration needs 1 to {MAX_CALIBRATION_IMAGES} '
                               f'scenes, got {count}')
    return 'synthetic', count


def _folder_images(folder: Path) -> list[Path]:
    from tokenmask_ros.sources import FolderSource, SourceError

    try:
        paths = list(FolderSource(folder, loop=False).paths)
    except SourceError as error:
        raise CalibrationError(f'calibration folder {folder}: {error}') from None
    if not paths:
        raise CalibrationError(f'calibration folder {folder} holds no images')
    return paths[:MAX_CALIBRATION_IMAGES]


def calibration_key(source: str | Path | int) -> str:
    """A short name of ``source`` for cache file names: ``synthetic32``, or ``images-`` and
    the first 12 hex digits of a SHA-256 over the folder's image names and contents (so a
    changed image gives another int8 export)."""
    kind, value = parse_calibration(source)
    if kind == 'synthetic':
        return f'synthetic{value}'
    from tokenmask_ros.runtime.engine_cache import file_sha256

    digest = hashlib.sha256()
    for path in _folder_images(value):
        digest.update(f'{path.name}\0{file_sha256(path)}\n'.encode())
    return f'images-{digest.hexdigest()[:12]}'


def calibration_feeds(source: str | Path | int, input_size: tuple[int, int],
                      batch: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """The deploy graph's inputs for every calibration frame, letterboxed like the runtime
    does (``batch`` frames per feed, the last batch filled up by repeating frames)."""
    from tokenmask_ros.runtime.preprocess import letterbox

    kind, value = parse_calibration(source)
    if kind == 'synthetic':
        from tokenmask_ros.synthetic import SceneGenerator

        generator = SceneGenerator(*SYNTHETIC_SIZE, seed=0, stream=SYNTHETIC_STREAM)
        frames = (generator.scene(i).image for i in range(value))
        count = value
    else:
        from tokenmask_ros.defaults import MAX_IMAGE_PIXELS
        from tokenmask_ros.image_io import read_image_file

        paths = _folder_images(value)
        count = len(paths)

        def read(path: Path) -> np.ndarray:
            try:  # OpenCV decodes BGR; the runtime takes RGB
                return np.ascontiguousarray(read_image_file(path, MAX_IMAGE_PIXELS)[..., ::-1])
            except (ValueError, OSError) as error:
                raise CalibrationError(f'calibration image {path}: {error}') from None

        frames = (read(path) for path in paths)
    canvases, contents = [], []
    for index, frame in enumerate(frames):
        canvas, box = letterbox(frame, input_size)
        canvases.append(canvas.copy())
        contents.append(box.content_size)
        if len(canvases) == batch or index == count - 1:
            while len(canvases) < batch:
                canvases.append(canvases[-1])
                contents.append(contents[-1])
            content = np.array(contents, np.int32)
            yield {'image': np.concatenate(canvases),
                   'content_size': content[0] if batch == 1 else content,
                   'score_threshold': np.array([0.5], np.float32)}
            canvases, contents = [], []


def weighted_nodes(model) -> list[str]:
    """Names of the MatMul / Gemm / Conv nodes of ``model`` (an ``onnx.ModelProto``) whose
    second input is a constant (an initializer or a Constant node's output): the layers with
    weights. Products of two activations (attention, the mask head) are left out."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == 'Constant' for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in QUANTIZED_OP_TYPES and len(n.input) > 1 and n.input[1] in constants]


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    """Silence the root logger's warnings while quantizing: onnxruntime.quantization logs
    "consider pre-processing" on every call. That pre-processing (``quant_pre_process``:
    shape inference, constant folding) adds nothing here: the export has fixed shapes and is
    constant-folded already."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_path: str | Path, output: str | Path,
                  calibration: str | Path | int = DEFAULT_CALIBRATION) -> Path:
    """Write the calibrated INT8 (QDQ) version of the fp32 tokenmask export ``fp32_path`` to
    ``output`` (atomically) and return it; see the module doc for what is quantized.

    :class:`CalibrationError` for an unusable calibration source, ``ExportError`` for a file
    that is not an fp32 tokenmask export, ``BackendUnavailable`` without onnxruntime.
    """
    import onnx

    from tokenmask_ros.runtime.errors import BackendUnavailable
    from tokenmask_ros.runtime.export import ExportError, read_onnx_metadata

    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as error:
        raise BackendUnavailable(f'int8 export needs onnxruntime ({error})') from None
    fp32_path, output = Path(fp32_path), Path(output)
    metadata = read_onnx_metadata(fp32_path)
    if metadata['precision'] != 'fp32':
        raise ExportError(f'{fp32_path} is a {metadata["precision"]} export; int8 is '
                          'quantized from an fp32 export')
    key = calibration_key(calibration)  # checks the source before any work
    source = onnx.load(str(fp32_path))
    nodes = weighted_nodes(source)
    feeds = calibration_feeds(calibration, metadata['input_size'], metadata['batch'])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    log.info('quantizing %s to int8 (%d layers, calibration %s)', fp32_path.name, len(nodes),
             key)
    with tempfile.TemporaryDirectory(prefix='tokenmask-int8-') as scratch, _quiet_root():
        quantized = Path(scratch) / 'int8.onnx'
        quantize_static(
            str(fp32_path), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_quantize=nodes,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={'WeightSymmetric': True, 'ActivationSymmetric': False,
                           # The layers' inputs only: a Q/DQ pair on their outputs (the
                           # quantizer's default) adds a rounding step before each bias and
                           # residual; without it 99.5-99.9 % instead of 96.6-99.9 % of the
                           # bundled model's pixels kept their fp32 ids, at the same
                           # OpenVINO speed.
                           'OpTypesToExcludeOutputQuantization': list(QUANTIZED_OP_TYPES)})
        proto = onnx.load(str(quantized))
    props = {p.key: p.value for p in source.metadata_props}
    import onnxruntime

    props.update(precision='int8', calibration=key,
                 quantization=f'onnxruntime {onnxruntime.__version__} QDQ static: int8 '
                 'per-channel symmetric weights, uint8 per-tensor activations (MinMax), '
                 f'{len(nodes)} MatMul/Gemm/Conv layers')
    del proto.metadata_props[:]
    for name, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = name, value
    onnx.checker.check_model(proto)
    with atomic_path(output) as temp:
        onnx.save(proto, temp)
    return output
