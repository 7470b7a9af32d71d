"""FLOP and activation-memory counting for TokenMask / EoMT models (pure PyTorch, no ROS).

Counting runs on PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode` with our
formulas passed as ``custom_mapping``. It works on the ``meta`` device, so a ViT-L costs no
memory and about a second to count::

    with torch.device('meta'):
        model = build_model(TokenMaskConfig.from_preset('large', num_classes=150))
    count_flops(model, convention='paper').gflops     # the paper's tables
    count_flops(model, convention='deploy').gflops    # what one inference executes

The unit is one *multiply-add* (MAC) for matrix products and convolutions, in both
conventions. "GFLOPs" in this project (as in EoMT's and the TokenMask paper's tables) means
1e9 of those units.

Convention ``'paper'`` (:data:`PAPER`): fvcore's rules, which EoMT and the paper used

* ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` (so ``nn.Linear`` and ``einsum``) and
  ``convolution`` (incl. transposed): one per multiply-add; bias adds are not counted.
* layer norm / group norm: 5 per input element with an affine weight, 4 without.
* bilinear upsampling: 4 per *output* element; nearest upsampling: 1 per output element.
* fused attention (``F.scaled_dot_product_attention``): **not counted** (fvcore does not
  know the op). Element-wise ops (GELU, softmax, residual adds, LayerScale) are not counted.
* the head is evaluated before each of the last L2 query blocks and after the final one
  (``return_intermediate=True``: L2+1 head calls, EoMT's deep-supervision forward).

The paper's numbers pin these rules down: its Logit-vs-None gap (0.10 G for every backbone)
and its stride table (Table 7) are exactly 4 x K x (H/s x W/s) x (L2+1) with L2=4, i.e.
interpolation counted at 4 per output element over five head calls; with these rules and
L2=4 its TokenMask GFLOPs are reproduced to 0.01 G (training/README.md, "Cost benchmark").

Convention ``'deploy'`` (:data:`DEPLOY`): everything one inference executes, final head
only (``return_intermediate=False``). Costs in MAC-equivalent operations:

* matrix products and convolutions: one per multiply-add, plus 1 per output element for a
  bias (``addmm``, biased convolution) or the added matrix of ``baddbmm``.
* attention ``softmax(q k^T * scale + mask) v``: the two batched products as MACs, plus 6
  per attention score (1 scale, 5 softmax) and 1 per score for an ``attn_mask``.
* add / sub / mul / div / neg / max / min / clamp / where / relu (in place too): 1 per
  output element; exp, log, sqrt, rsqrt, reciprocal, erf, tanh, pow: 1 per output element
  (one special-function evaluation); sigmoid 3 (exp, add, reciprocal); SiLU 4;
  GELU 4 (scale by 1/sqrt(2), erf, add 1, multiply by x/2).
* softmax / log-softmax: 5 per element (max, subtract, exp, sum, normalise).
* layer / group norm: 5 per input element with affine (mean, centre, square-accumulate,
  normalise, affine multiply-add), 4 without; inference batch norm: 1 (folded scale+shift).
* bilinear upsampling: 4 per output element (four taps, one multiply-add each);
  nearest upsampling 0 (a gather).
* sum / mean reductions: 1 per input element.
* data movement (copies, ``cat``, views, ``contiguous``, indexing): 0.

Attention runs through a private custom op (``tokenmask_flops::sdpa``) while counting, so
it is counted once per call on every device: on ``meta`` PyTorch would otherwise decompose
it into the unfused math path (whose matmuls FlopCounterMode counts), and on CPU the flash
kernel has no formula at all (counted as 0). timm modules are switched to their fused
attention path for the count and restored afterwards.

:func:`count_activation_memory` counts the peak bytes of tensors alive during one forward
(a :class:`~torch.utils._python_dispatch.TorchDispatchMode` tracking every allocation and
its release); it works on ``meta`` too, and models a fused attention kernel (the attention
matrix is never materialised). :func:`measure_cuda_memory` is the measured CUDA counterpart.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

aten = torch.ops.aten

# Prediction modules of TokenMask / EoMT (``TokenMask._predict``): the backbone's final norm
# runs once per head call, so it is billed to the head.
HEAD_MODULES = ('mask_head', 'mask_mlp', 'class_head', 'backbone.norm')


# --- attention as one countable op -----------------------------------------------------

_SDPA_PARAMS = ('query', 'key', 'value', 'attn_mask', 'dropout_p', 'is_causal', 'scale',
                'enable_gqa')


def _sdpa_impl(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attn_mask: torch.Tensor | None, dropout_p: float, is_causal: bool,
               scale: float | None) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                          dropout_p=dropout_p, is_causal=is_causal, scale=scale)


def _sdpa_fake(query, key, value, attn_mask, dropout_p, is_causal, scale):
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


def _register_sdpa_op():
    try:  # already registered (e.g. a second copy of this module in the process)
        return torch.ops.tokenmask_flops.sdpa
    except (AttributeError, RuntimeError):
        pass
    op = torch.library.custom_op('tokenmask_flops::sdpa', _sdpa_impl, mutates_args=())
    op.register_fake(_sdpa_fake)
    return torch.ops.tokenmask_flops.sdpa


SDPA_OP = _register_sdpa_op()


class _AttentionAsOneOp(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` through :data:`SDPA_OP`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            bound = dict(zip(_SDPA_PARAMS, args, strict=False)) | kwargs
            if set(bound) <= set(_SDPA_PARAMS) and not bound.get('enable_gqa', False):
                return SDPA_OP(bound['query'], bound['key'], bound['value'],
                               bound.get('attn_mask'), float(bound.get('dropout_p', 0.0)),
                               bool(bound.get('is_causal', False)), bound.get('scale'))
        return func(*args, **kwargs)


@contextlib.contextmanager
def _fused_attention(module: Any) -> Iterator[None]:
    """Make timm attention modules take their ``F.scaled_dot_product_attention`` path."""
    changed = []
    if isinstance(module, nn.Module):
        for sub in module.modules():
            if getattr(sub, 'fused_attn', True) is False:
                sub.fused_attn = True
                changed.append(sub)
    try:
        yield
    finally:
        for sub in changed:
            sub.fused_attn = False


# --- conventions ----------------------------------------------------------------------

def _numel(shape) -> int:
    if shape is None:
        return 0
    if len(shape) and not isinstance(shape[0], int):  # several outputs: the first one
        shape = shape[0]
    return math.prod(shape)


@dataclass(frozen=True)
class FlopConvention:
    """How each op is counted; see the module docstring for the two named conventions.

    ``elementwise``: cost per output element, ``per_input``: cost per element of the first
    input, both keyed by aten op name (``'gelu'``, ``'native_layer_norm'``...). ``norm_affine``
    and ``norm_plain``: per-element cost of layer/group norm with and without an affine
    weight (0 leaves norms out). ``attention``: ``'none'`` (fused attention not counted),
    ``'matmul'`` (its two batched products, as MACs) or ``'full'`` (products plus scale,
    softmax and mask). ``bias``: count bias adds of ``addmm``/convolutions.
    ``intermediate``: call the model with ``return_intermediate=True`` (L2+1 head calls).
    """

    name: str
    attention: str = 'none'
    bias: bool = False
    norm_affine: float = 5.0
    norm_plain: float = 4.0
    elementwise: Mapping[str, float] = field(default_factory=dict)
    per_input: Mapping[str, float] = field(default_factory=dict)
    intermediate: bool = True

    def replace(self, **changes) -> FlopConvention:
        return replace(self, **changes)


PAPER = FlopConvention(
    'paper', attention='none', bias=False,
    elementwise={'upsample_bilinear2d': 4, 'upsample_nearest2d': 1},
    per_input={'_native_batch_norm_legit_no_training': 2},  # fvcore, affine, eval mode
    intermediate=True)

_UNARY = ('exp', 'log', 'sqrt', 'rsqrt', 'reciprocal', 'erf', 'tanh', 'pow', 'sin', 'cos')
_BINARY = ('add', 'sub', 'mul', 'div', 'rsub', 'neg', 'maximum', 'minimum', 'clamp',
           'clamp_min', 'clamp_max', 'where', 'relu', 'abs', 'hardtanh')
DEPLOY = FlopConvention(
    'deploy', attention='full', bias=True,
    elementwise={
        **dict.fromkeys(_BINARY + _UNARY, 1),
        **{op + '_': 1 for op in _BINARY + _UNARY if op != 'where'},
        'sigmoid': 3, 'sigmoid_': 3, 'silu': 4, 'silu_': 4, 'gelu': 4, 'gelu_': 4,
        '_softmax': 5, '_safe_softmax': 5, '_log_softmax': 5,
        'upsample_bilinear2d': 4, 'upsample_nearest2d': 0,
    },
    per_input={'sum': 1, 'mean': 1, '_native_batch_norm_legit_no_training': 1},
    intermediate=False)

CONVENTIONS = {'paper': PAPER, 'deploy': DEPLOY}


def _resolve(convention: str | FlopConvention) -> FlopConvention:
    if isinstance(convention, FlopConvention):
        return convention
    try:
        return CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f'unknown FLOP convention {convention!r}; choose from '
                         f'{sorted(CONVENTIONS)} or pass a FlopConvention') from None


def _packet(name: str):
    return getattr(aten, name, None)


def _formulas(conv: FlopConvention) -> dict[Any, Callable[..., int]]:
    """FlopCounterMode ``custom_mapping`` for one convention (formulas take shapes)."""
    bias = conv.bias

    def mm(a, b, *args, out_shape=None, **kwargs):
        return a[0] * a[1] * b[1]

    def addmm(c, a, b, *args, out_shape=None, **kwargs):
        return a[0] * a[1] * b[1] + (_numel(out_shape) if bias else 0)

    def bmm(a, b, *args, out_shape=None, **kwargs):
        return a[0] * a[1] * a[2] * b[2]

    def baddbmm(c, a, b, *args, out_shape=None, **kwargs):
        return a[0] * a[1] * a[2] * b[2] + (_numel(out_shape) if bias else 0)

    def convolution(x, w, b, stride, padding, dilation, transposed, *args, out_shape=None,
                    **kwargs):
        # Each weight element meets every input (transposed) or output position once.
        positions = math.prod(x[2:]) if transposed else math.prod(out_shape[2:])
        macs = x[0] * math.prod(w) * positions
        return macs + (_numel(out_shape) if bias and b is not None else 0)

    def attention(q, k, v, *args, out_shape=None, **kwargs):
        # Our op and the efficient kernel take the mask 4th; flash-for-CPU as a keyword.
        if conv.attention == 'none':
            return 0
        mask = kwargs.get('attn_mask', args[0] if args else None)
        batch = math.prod(q[:-2])
        scores = batch * q[-2] * k[-2]
        macs = scores * q[-1] + scores * v[-1]
        if conv.attention == 'matmul':
            return macs
        return macs + 6 * scores + (scores if isinstance(mask, tuple) else 0)

    def per_output(cost):
        return lambda *args, out_shape=None, **kwargs: cost * _numel(out_shape)

    def per_input(cost):
        return lambda x, *args, out_shape=None, **kwargs: cost * _numel(x)

    # Every formula PyTorch ships (2 FLOPs per MAC) is replaced: zero unless defined here.
    mapping: dict[Any, Callable[..., int]] = dict.fromkeys(flop_registry, _zero)
    mapping |= {
        aten.mm: mm, aten.addmm: addmm, aten.bmm: bmm, aten.baddbmm: baddbmm,
        aten.convolution: convolution,
        aten.native_layer_norm: _layer_norm(conv), aten.native_group_norm: _group_norm(conv),
        SDPA_OP: attention,
        # Attention kernels PyTorch knows: reached only without our op (direct aten calls).
        aten._scaled_dot_product_efficient_attention: attention,
        aten._scaled_dot_product_flash_attention: attention,
        aten._scaled_dot_product_cudnn_attention: attention,
        aten._scaled_dot_product_flash_attention_for_cpu: attention,
    }
    for name, cost in conv.elementwise.items():
        if _packet(name) is not None:
            mapping[_packet(name)] = per_output(cost)
    for name, cost in conv.per_input.items():
        if _packet(name) is not None:
            mapping[_packet(name)] = per_input(cost)
    # FlopCounterMode looks an OpOverload up before trying its Python decomposition, but
    # keys formulas by packet: listing the overloads too stops, e.g., bilinear upsampling
    # from being decomposed into element-wise ops and counted as those.
    full = {}
    for packet, formula in mapping.items():
        formula = _integral(formula)
        full[packet] = formula
        if isinstance(packet, torch._ops.OpOverloadPacket):
            full |= {getattr(packet, name): formula for name in packet.overloads()}
    return full


def _zero(*args, **kwargs) -> int:
    return 0


def _layer_norm(conv: FlopConvention):
    def formula(x, normalized_shape, weight=None, *args, out_shape=None, **kwargs):
        return _numel(x) * (conv.norm_affine if weight is not None else conv.norm_plain)
    return formula


def _group_norm(conv: FlopConvention):
    def formula(x, weight=None, *args, out_shape=None, **kwargs):
        return _numel(x) * (conv.norm_affine if weight is not None else conv.norm_plain)
    return formula


def _integral(formula):
    def wrapped(*args, **kwargs):
        return round(formula(*args, **kwargs))
    return wrapped


# --- counting -------------------------------------------------------------------------

@dataclass(frozen=True)
class FlopCount:
    """Totals in MAC-equivalent operations (divide by 1e9 for the tables' "GFLOPs").

    ``parts``: ``{'backbone': ..., 'head': ...}`` where the head is everything in
    :data:`HEAD_MODULES` (all head calls) and the backbone the rest (patch embedding, blocks,
    input normalisation); empty for a model without those modules. ``ops``: total per op.
    """

    convention: str
    total: int
    parts: dict[str, int]
    ops: dict[str, int]
    intermediate: bool

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def part_gflops(self, part: str) -> float:
        return self.parts.get(part, 0) / 1e9


def count_function(fn: Callable[[], Any], convention: str | FlopConvention = 'paper',
                   ) -> tuple[int, dict[str, dict[str, int]]]:
    """Count ``fn()`` (no arguments); returns the total and FlopCounterMode's per-module
    ``{module: {op: count}}`` table (op names as strings; ``'Global'`` holds everything)."""
    conv = _resolve(convention)
    counter = FlopCounterMode(display=False, custom_mapping=_formulas(conv))
    with counter, _AttentionAsOneOp(), torch.inference_mode():
        fn()
    table = {module: {str(op).removeprefix('aten.'): n for op, n in ops.items() if n}
             for module, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), table


def _accepts_intermediate(model: nn.Module) -> bool:
    try:
        return 'return_intermediate' in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def default_images(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """Zeros of the model's configured input size, on the model's device."""
    height, width = model.config.img_size
    device = next(iter(model.parameters())).device
    return torch.zeros(batch, 3, height, width, device=device)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, images: torch.Tensor | None = None, *,
                convention: str | FlopConvention = 'paper', intermediate: bool | None = None,
                head_modules: tuple[str, ...] = HEAD_MODULES) -> FlopCount:
    """FLOPs of one forward pass of ``model`` on ``images`` (default: one zero image of the
    config's size on the model's device; build the model on ``meta`` for a free count).

    ``intermediate`` overrides the convention's choice of L2+1 head calls vs the final one;
    it is ignored for modules whose ``forward`` has no ``return_intermediate``. The model is
    counted in eval mode and left in the mode it was in.
    """
    conv = _resolve(convention)
    if images is None:
        images = default_images(model)
    intermediate = conv.intermediate if intermediate is None else intermediate
    kwargs = {'return_intermediate': intermediate} if _accepts_intermediate(model) else {}
    with _eval_mode(model), _fused_attention(model):
        total, table = count_function(lambda: model(images, **kwargs), conv)
    root = type(model).__name__
    parts = {}
    names = {f'{root}.{name}' for name in head_modules}
    if names & set(table):
        head = sum(sum(table.get(name, {}).values()) for name in names)
        parts = {'backbone': total - head, 'head': head}
    return FlopCount(conv.name, total, parts, table.get('Global', {}),
                     bool(kwargs.get('return_intermediate', False)))


# --- activation memory ----------------------------------------------------------------

@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one forward pass, in bytes.

    ``activations``: peak bytes of tensors created during the forward (outputs included);
    ``weights``: parameters and buffers; ``inputs``: the images; ``total``: their sum for the
    ``'dispatch'`` method, the allocator's peak for ``'cuda'`` (which also holds allocator
    rounding and kernel workspaces).
    """

    method: str
    activations: int
    weights: int
    inputs: int
    total: int

    @property
    def total_mb(self) -> float:
        return self.total / 2**20

    @property
    def activations_mb(self) -> float:
        return self.activations / 2**20


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of storages allocated while active (released when their last tensor is
    garbage-collected; views and in-place results share their base's storage)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage key -> [bytes, tensors alive]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            key = _storage_key(tensor)
            if key not in self.live:
                if key in inputs:  # a view of a weight or of the input images
                    continue
                self.live[key] = [tensor.untyped_storage().nbytes(), 0]
                self.current += self.live[key][0]
                self.peak = max(self.peak, self.current)
            self.live[key][1] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def count_activation_memory(model: nn.Module, images: torch.Tensor | None = None, *,
                            intermediate: bool = False) -> MemoryEstimate:
    """Peak live bytes of one inference forward, counted from tensor allocations.

    Works on any device including ``meta``. Attention is counted as a fused kernel (its
    output only), like FlashAttention / memory-efficient SDPA on a GPU; other kernels'
    private workspaces are not seen.
    """
    if images is None:
        images = default_images(model)
    kwargs = {'return_intermediate': intermediate} if _accepts_intermediate(model) else {}
    tracker = _LiveBytes()
    with _eval_mode(model), _fused_attention(model), torch.inference_mode():
        with _AttentionAsOneOp(), tracker:
            output = model(images, **kwargs)
        del output
    weights = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
    inputs = _tensor_bytes([images])
    return MemoryEstimate('dispatch', tracker.peak, weights, inputs,
                          weights + inputs + tracker.peak)


def measure_cuda_memory(model: nn.Module, images: torch.Tensor | None = None, *,
                        intermediate: bool = False) -> MemoryEstimate:
    """Peak CUDA memory of one inference forward (``torch.cuda.max_memory_allocated``);
    ``model`` and ``images`` must already be on the GPU."""
    if images is None:
        images = default_images(model)
    if images.device.type != 'cuda':
        raise ValueError(f'measure_cuda_memory needs CUDA tensors, got {images.device}')
    kwargs = {'return_intermediate': intermediate} if _accepts_intermediate(model) else {}
    device = images.device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    with _eval_mode(model), torch.inference_mode():
        output = model(images, **kwargs)
        torch.cuda.synchronize(device)
        del output
    peak = torch.cuda.max_memory_allocated(device)
    weights = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
    return MemoryEstimate('cuda', peak - baseline, weights, _tensor_bytes([images]), peak)
