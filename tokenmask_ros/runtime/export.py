"""ONNX export of the deployed graph (:mod:`.graph`), FP32 or strongly typed FP16.

The exported file describes itself: its ``metadata_props`` hold the model config (class
names, thing flags, colours), the precision, the fixed input size and batch, so the
onnxruntime and TensorRT backends and :class:`~tokenmask_ros.runtime.Segmenter` need nothing
else. Files are written atomically (temp file in the same folder + ``os.replace``), so
concurrent exports of the same checkpoint into the cache never expose a partial file.

FP16 (``fp16=True``) follows the portable TensorRT recipe (``docs/architecture.md``,
"Precision"): the graph itself carries the types (TensorRT 11 is strongly typed and has no
FP16 flag). Weights and activations are float16, except for three FP32 islands made by
module replacements on a deep copy of the model (:func:`fp16_model`):

1. every LayerNorm (``nn.LayerNorm`` and timm's ``LayerNorm`` / ``LayerNorm2d``): input cast
   to FP32, statistics and affine in FP32 (its ``2 * D`` parameters stay FP32), output cast
   back;
2. every timm ``Attention``: q @ k^T (scaled in FP32) and the softmax in FP32, probabilities
   cast back to FP16 for the product with v; FP16 scores overflow and give NaNs, as public
   EoMT TensorRT exports show;
3. the decoding: :class:`~tokenmask_ros.runtime.graph.DeployGraph` casts the class and mask
   logits to FP32 before the class softmax, mask sigmoid and argmax.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenmask_ros.atomic_file import atomic_path
from tokenmask_ros.defaults import DECODED_QUERIES, SELECTIONS
from tokenmask_ros.model.config import TokenMaskConfig
from tokenmask_ros.runtime.engine_cache import (
    atomic_write,
    cache_error,
    cache_root,
    file_lock,
    file_sha256,
    prepare_cache_dir,
)

FORMAT = 'tokenmask-onnx'
FORMAT_VERSION = '1'
OPSETS = (18, 19, 20)  # what TensorRT 10/11 and ONNX Runtime both parse
PROTOBUF_LIMIT = 2**31 - 1  # a single ONNX protobuf file cannot exceed 2 GiB
RECORD_FORMAT = 'tokenmask-onnx-export'  # the checksum sidecar of a cached export
# 2: the graph decodes only the best queries; 3: only the kept ones (selection 'kept');
# 4: won areas by scatter-add in 'kept' graphs; 5: attention written out with one constant
# scale (what ONNX Runtime's CPU backend fuses). Exports of an older version are made again.
RECORD_VERSION = 5

log = logging.getLogger('tokenmask_ros.runtime')

__all__ = ['FORMAT', 'FORMAT_VERSION', 'OPSETS', 'ExportError', 'cached_onnx',
           'default_export_dir', 'export_module', 'export_onnx', 'fp16_model', 'parse_metadata',
           'read_onnx_config', 'read_onnx_metadata']


class ExportError(ValueError):
    """An ONNX file is not a usable tokenmask export; the message names the file and why."""


# --------------------------------------------------------------------------- FP16 islands


class Fp32LayerNorm(nn.Module):
    """Runs a LayerNorm over the last dimension (``nn.LayerNorm``, timm's ``LayerNorm``) in FP32
    between casts: mean and variance of FP16 activations lose too much precision."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.float()).to(x.dtype)


class Fp32LayerNorm2d(nn.Module):
    """timm's ``LayerNorm2d`` (over channels of NCHW maps) with the same FP32 island; the
    transposes stay in FP16 so that only the normalisation itself moves FP32 data."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: Tensor) -> Tensor:
        norm = self.norm
        y = F.layer_norm(x.permute(0, 2, 3, 1).float(), norm.normalized_shape, norm.weight,
                         norm.bias, norm.eps)
        return y.to(x.dtype).permute(0, 3, 1, 2)


class Fp32ScoresAttention(nn.Module):
    """timm ``Attention`` written out for export: q @ k^T (scaled by a constant) and its
    softmax in FP32, as one plain MatMul-Softmax-MatMul chain.

    In FP16 models, scores beyond 65504 are inf and the softmax then NaN, so the scores are
    cast to FP32; everything else (qkv and output projections, the product of the
    probabilities with v) stays in the model's dtype. FP32 exports use it too (no casts
    there): it gives every export the same attention pattern with the scale as one
    constant, which ONNX Runtime's CPU backend fuses into its attention kernel
    (:mod:`tokenmask_ros.runtime.ort_attention`). It reuses the wrapped module's parameters
    and computes the same function (unfused).
    """

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, x: Tensor, attn_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        attn = self.attn
        if is_causal or getattr(attn, 'gate', None) is not None:
            raise NotImplementedError('Fp32ScoresAttention supports plain ViT attention only')
        batch, tokens, _ = x.shape
        qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if q.dtype != torch.float32:  # no Cast nodes in FP32 graphs
            q, k = q.float(), k.float()
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            scores = (scores.masked_fill(~attn_mask, float('-inf')) if attn_mask.dtype == torch.bool
                      else scores + attn_mask.float())
        probs = scores.softmax(dim=-1)
        if probs.dtype != v.dtype:
            probs = probs.to(v.dtype)
        x = (probs @ v).transpose(1, 2).reshape(batch, tokens, attn.attn_dim)
        return attn.proj(attn.norm(x))


def _write_out_attention(root: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every timm ``Attention`` under ``root`` by :class:`Fp32ScoresAttention`, in
    place; returns ``(parent, name, original)`` for :func:`_restore`."""
    from timm.models.vision_transformer import Attention

    replaced = []
    for parent in list(root.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Attention):
                setattr(parent, name, Fp32ScoresAttention(child))
                replaced.append((parent, name, child))
    return replaced


def _restore(replaced: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, name, original in replaced:
        setattr(parent, name, original)


def fp16_model(model: nn.Module) -> nn.Module:
    """A half-precision deep copy of ``model`` with the FP32 islands of this module's doc.

    Raises ``NotImplementedError`` for normalisation or attention modules it does not know
    how to keep safe in FP16, rather than exporting a graph that may overflow.
    """
    from timm.layers import LayerNorm2d
    from timm.models.vision_transformer import Attention

    copied = copy.deepcopy(model).eval().half()
    unknown = sorted({type(m).__name__ for m in copied.modules()
                      if ('Norm' in type(m).__name__ and not isinstance(m, nn.LayerNorm))
                      or (hasattr(m, 'fused_attn') and not isinstance(m, Attention))})
    if unknown:
        raise NotImplementedError(f'no FP16 recipe for {unknown}: export in FP32')
    for parent in list(copied.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LayerNorm2d):
                setattr(parent, name, Fp32LayerNorm2d(child))
            elif isinstance(child, nn.LayerNorm):
                setattr(parent, name, Fp32LayerNorm(child))
    _write_out_attention(copied)
    return copied


# --------------------------------------------------------------------------- export


def export_module(module: nn.Module, inputs: Sequence[Tensor], path: str | Path, *,
                  input_names: Sequence[str], output_names: Sequence[str], opset: int = 18,
                  metadata: dict[str, str] | None = None) -> Path:
    """Export ``module`` (traced on ``inputs``, fixed shapes) to ``path``, checked, atomically.

    Uses PyTorch's TorchScript-based exporter (``dynamo=False``). The dynamo exporter, the
    default since torch 2.9, fails here at once: it needs the ``onnxscript`` package, which
    is not among this project's dependencies. For a fixed-shape ViT without control flow the
    tracer gives a clean, deterministic graph (SDPA decomposed into MatMul + Softmax,
    LayerNorm as ``LayerNormalization``, shapes constant-folded). Switch to ``dynamo=True``
    if onnxscript becomes a dependency or torch drops the tracer.
    """
    if opset not in OPSETS:
        raise ValueError(f'opset must be one of {OPSETS}, got {opset}: LayerNormalization '
                         'needs 17, the torch exporters 18, and from 23 on attention becomes '
                         'an ONNX op that TensorRT < 10.14 cannot parse')
    path = Path(path)
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if size > 0.95 * PROTOBUF_LIMIT:
        raise ValueError(f'{size / 2**30:.1f} GiB of weights exceed the 2 GiB limit of a '
                         'single ONNX file')
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about timm's input-size asserts (frozen at the fixed size, as
        # intended) and that it is the legacy exporter.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(module.eval(), tuple(inputs), buffer, input_names=list(input_names),
                          output_names=list(output_names), opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    import onnx

    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as temp:
        onnx.save(proto, temp)
    return path


def export_onnx(model: nn.Module, path: str | Path, *, fp16: bool = False, opset: int = 18,
                batch: int = 1, decoded_queries: int | None = DECODED_QUERIES,
                selection: str = 'kept') -> Path:
    """Export ``DeployGraph(model, decoded_queries, selection)`` at the model's fixed
    ``img_size`` to ``path`` (``selection='fixed'`` for TensorRT: static shapes only).

    Inputs / outputs as :mod:`tokenmask_ros.runtime.graph` documents (``batch`` images per
    call, fixed). ``fp16``: the strongly typed FP16 graph of this module's doc. ``model`` is
    left as it was (it is copied when it is not an FP32 CPU model or for FP16).
    """
    from tokenmask_ros.runtime.graph import INPUT_NAMES, OUTPUT_NAMES, DeployGraph, example_inputs

    if batch < 1:
        raise ValueError(f'batch must be >= 1, got {batch}')
    config: TokenMaskConfig = model.config
    if any(t.device.type != 'cpu' or t.dtype != torch.float32
           for t in model.state_dict().values() if t.is_floating_point()):
        model = copy.deepcopy(model).to('cpu', torch.float32)
    was_training = model.training
    # FP32: timm's attention written out in place (put back below), FP16: on the copy.
    replaced = [] if fp16 else _write_out_attention(model)
    try:
        graph = DeployGraph(fp16_model(model) if fp16 else model, decoded_queries, selection)
        height, width = graph.input_size
        metadata = {
            'format': FORMAT,
            'format_version': FORMAT_VERSION,
            'config': json.dumps(config.to_dict()),
            'precision': 'fp16' if fp16 else 'fp32',
            'input_size': f'{height}x{width}',
            'batch': str(batch),
            'decoded_queries': str(graph.decoded_queries),
            'selection': graph.selection,
            'opset': str(opset),
            'torch_version': torch.__version__,
        }
        return export_module(graph, example_inputs(graph.input_size, batch), path,
                             input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, opset=opset,
                             metadata=metadata)
    finally:
        _restore(replaced)
        model.train(was_training)


# --------------------------------------------------------------------------- reading


def _metadata_props(path: str | Path) -> dict[str, str]:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'ONNX file not found: {path}')
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ExportError(f'{path} is not a readable ONNX file: {error}') from None
    return check_metadata({p.key: p.value for p in proto.metadata_props}, path)


def check_metadata(props: dict[str, str], path: str | Path) -> dict[str, str]:
    """``props`` (an ONNX file's ``metadata_props``) if they are a tokenmask export's of this
    format version, else :class:`ExportError` naming ``path``."""
    if props.get('format') != FORMAT:
        raise ExportError(f'{path} is an ONNX file but not a tokenmask export (no '
                          f'format={FORMAT!r} metadata; write one with export_onnx)')
    if props.get('format_version') != FORMAT_VERSION:
        raise ExportError(f'{path} has tokenmask ONNX format version '
                          f'{props.get("format_version")!r}; this code reads {FORMAT_VERSION}')
    return props


def parse_metadata(props: dict[str, str], path: str | Path) -> dict:
    """:func:`read_onnx_metadata` from already loaded ``metadata_props`` (e.g. those an
    onnxruntime session reports), so a backend need not parse the file twice."""
    props = check_metadata(props, path)
    try:
        height, width = (int(v) for v in props['input_size'].split('x'))
        decoded = props.get('decoded_queries')
        if decoded is None:  # exports made before query selection decode every query
            decoded = json.loads(props.get('config', '{}')).get('num_queries', 0)
        decoded = int(decoded)
        # Exports made before selection 'kept' decode a fixed number of queries.
        selection = props.get('selection', 'fixed')
        if selection not in SELECTIONS:
            raise ValueError(f'selection {selection!r}')
        return {'format_version': props['format_version'], 'precision': props['precision'],
                'input_size': (height, width), 'batch': int(props['batch']),
                'decoded_queries': decoded, 'selection': selection,
                'opset': int(props['opset']), 'torch_version': props.get('torch_version')}
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(f'{path} has unusable tokenmask metadata: {error!r}') from None


def read_onnx_metadata(path: str | Path) -> dict:
    """``{'format_version', 'precision', 'input_size': (H, W), 'batch', 'decoded_queries',
    'selection', 'opset', 'torch_version'}`` of a tokenmask export; :class:`ExportError` for
    any other file."""
    return parse_metadata(_metadata_props(path), path)


def read_onnx_config(path: str | Path) -> TokenMaskConfig:
    """The model config stored in a tokenmask ONNX export; :class:`ExportError` otherwise."""
    props = _metadata_props(path)
    try:
        return TokenMaskConfig.from_dict(json.loads(props['config']))
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(f'{path} has an unusable model config: {error}') from None


# --------------------------------------------------------------------------- cache


def default_export_dir() -> Path:
    """Where ONNX exports of checkpoints are cached: the cache root itself
    (:func:`~tokenmask_ros.runtime.engine_cache.cache_root`; engines go to ``engines/``)."""
    return cache_root()


def cached_onnx(checkpoint_path: str | Path, precision: str,
                cache_dir: str | Path | None = None, *, force: bool = False,
                batch: int = 1, calibration: str | Path | int | None = None,
                selection: str = 'kept') -> Path:
    """An ONNX export of ``checkpoint_path`` at ``precision`` ('fp32' | 'fp16' | 'int8'), from
    the cache; ``selection`` as :mod:`~tokenmask_ros.runtime.graph` documents ('fixed', for
    TensorRT, adds ``-fixed`` to the name).

    A ``.safetensors`` checkpoint is exported once to
    ``<cache_dir>/<stem>-<sha256[:16]>-<H>x<W>-<precision>[-b<batch>].onnx`` (``batch``
    images per call, the suffix only above 1; the hash is over the
    checkpoint file, so a changed checkpoint gets a new file) with a ``.json`` sidecar
    holding the export's size and SHA-256, like cached engines. It is reused only while it
    matches its sidecar and is a readable export of this format version; otherwise (flipped
    bytes, truncation, no sidecar) a warning is logged and it is exported again. ``force``:
    export again anyway (used when a verified export still fails to load). Concurrent
    callers export once (a lock file beside the export). ``cache_dir`` defaults to
    :func:`default_export_dir`; one that cannot be written raises
    :class:`~tokenmask_ros.runtime.errors.CacheError`.

    ``int8``: the calibrated QDQ quantization (:func:`~tokenmask_ros.runtime.quantize.
    quantize_int8`) of the cached fp32 export, named
    ``<stem>-<sha256[:16]>-<H>x<W>-int8-<calibration key>[-b<batch>].onnx`` (e.g.
    ``...-int8-synthetic32.onnx``, ``...-int8-images-<sha256[:12]>.onnx``: see
    :func:`~tokenmask_ros.runtime.quantize.calibration_key`), so exports calibrated on
    different data never replace each other or an fp32 one. ``calibration``: a folder of
    images, ``'synthetic:N'`` or N, default
    :data:`~tokenmask_ros.runtime.quantize.DEFAULT_CALIBRATION`; int8 only.

    An ``.onnx`` path is returned as it is, after checking it is a tokenmask export: its
    precision is fixed in the graph and wins. Callers resolve 'auto' before asking, so a
    different ``precision`` is only logged as a warning, not an error.
    """
    path = Path(checkpoint_path)
    if precision not in ('fp32', 'fp16', 'int8'):
        raise ValueError(f"precision must be 'fp32', 'fp16' or 'int8', got {precision!r}")
    if calibration is not None and precision != 'int8':
        raise ValueError(f'a calibration source only applies to int8 exports, not {precision}')
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f'batch must be an integer >= 1, got {batch!r}')
    if path.suffix == '.onnx':
        actual = read_onnx_metadata(path)['precision']
        if actual != precision:
            log.warning('%s is a %s export; running it in %s (not %s)', path.name, actual,
                        actual, precision)
        return path
    from tokenmask_ros.model import load_checkpoint, load_config

    config = load_config(path)
    height, width = config.img_size
    cache = Path(cache_dir) if cache_dir is not None else default_export_dir()
    if selection not in SELECTIONS:
        raise ValueError(f'selection must be one of {SELECTIONS}, got {selection!r}')
    batched = f'-b{batch}' if batch != 1 else ''  # batch-1 names as before
    batched += '-fixed' if selection == 'fixed' else ''
    tag, recipe = precision, {}
    if precision == 'int8':
        from tokenmask_ros.runtime.quantize import (
            DEFAULT_CALIBRATION,
            RECIPE_VERSION,
            calibration_key,
        )

        recipe = {'quantize_recipe': RECIPE_VERSION}  # a changed recipe quantizes again

        if calibration is None:
            calibration = DEFAULT_CALIBRATION
        tag = f'int8-{calibration_key(calibration)}'
    target = cache / (f'{path.stem}-{file_sha256(path)[:16]}-{height}x{width}-{tag}'
                      f'{batched}.onnx')
    if not force and _verified_export(target, warn=True, **recipe):
        return target
    prepare_cache_dir(cache)
    with file_lock(target.with_suffix('.lock'),
                   f'waiting for another process exporting {target.name}'):
        if not force and _verified_export(target, warn=False, **recipe):  # meanwhile
            return target
        if precision == 'int8':  # quantized from the (cached) fp32 export
            from tokenmask_ros.runtime.quantize import quantize_int8

            fp32 = cached_onnx(path, 'fp32', cache, batch=batch, selection=selection)
        else:
            model = load_checkpoint(path)
        log.info('exporting %s to %s (%s%s)', path.name, target, precision,
                 f', calibrated on {calibration}' if precision == 'int8' else '')
        try:
            _remove_export(target)
            if precision == 'int8':
                quantize_int8(fp32, target, calibration)
            else:
                export_onnx(model, target, fp16=precision == 'fp16', batch=batch,
                            selection=selection)
            record = {'format': RECORD_FORMAT, 'version': RECORD_VERSION, **recipe,
                      'onnx_size': target.stat().st_size, 'onnx_sha256': file_sha256(target)}
            atomic_write(target.with_suffix('.json'), json.dumps(record, indent=1).encode())
        except OSError as error:  # disk full, folder made read-only meanwhile
            raise cache_error(cache, error) from None
    return target


def _verified_export(target: Path, warn: bool, **expected) -> bool:
    """Whether ``target`` matches its checksum sidecar and is a tokenmask export (and the
    sidecar holds the ``expected`` entries, e.g. the int8 recipe version); a damaged or
    outdated one is logged (when ``warn``) and left for the caller to replace."""
    if not target.is_file():
        return False
    problem = _export_problem(target, expected)
    if problem is not None and warn:
        log.warning('cached ONNX export %s %s; deleting it and exporting again', target,
                    problem)
    return problem is None


def _export_problem(target: Path, expected: dict | None = None) -> str | None:
    """Why the cached export ``target`` cannot be trusted, or None when it can."""
    try:
        record = json.loads(target.with_suffix('.json').read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return 'has no readable checksum sidecar'
    if (not isinstance(record, dict) or record.get('format') != RECORD_FORMAT
            or record.get('version') != RECORD_VERSION):
        return 'has no checksum sidecar of this version'
    for key, value in (expected or {}).items():
        if record.get(key) != value:
            return f'was made with {key} {record.get(key)!r}, not {value!r}'
    try:
        if (target.stat().st_size != record.get('onnx_size')
                or file_sha256(target) != record.get('onnx_sha256')):
            return 'does not match the SHA-256 in its sidecar (damaged or altered)'
        read_onnx_metadata(target)
    except (OSError, ExportError) as error:
        return f'is unusable ({error})'
    return None


def _remove_export(target: Path) -> None:
    """Sidecar first, so a concurrent reader never trusts a half-replaced export."""
    for path in (target.with_suffix('.json'), target):
        path.unlink(missing_ok=True)
