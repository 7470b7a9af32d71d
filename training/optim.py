"""AdamW with layer-wise lr decay and EoMT's two-stage warm-up + poly schedule.

Why: EoMT fine-tunes a pretrained ViT, so early blocks move less than late ones (layer-wise
decay) and the randomly initialised head warms up alone while the backbone is held at lr 0,
then the backbone warms up linearly; afterwards every group decays polynomially per step.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

_BLOCK = re.compile(r'^backbone\.blocks\.(\d+)\.')


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     layer_decay: float) -> list[dict]:
    """One group per ViT block (lr * decay^(depth-1-i)), one for the embeddings
    (lr * decay^depth) and one ``head`` group at full lr (queries, heads, final norm).

    Every group carries ``kind`` (``backbone``/``head``) for the schedule and a ``name``.
    """
    depth = len(model.backbone.blocks)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = _BLOCK.match(name)
        if match:
            index = int(match.group(1))
            key, kind, scale = f'block{index}', 'backbone', layer_decay ** (depth - 1 - index)
        elif name.startswith('backbone.') and not name.startswith('backbone.norm.'):
            key, kind, scale = 'embed', 'backbone', layer_decay ** depth
        else:
            key, kind, scale = 'head', 'head', 1.0
        group = groups.setdefault(key, {'params': [], 'lr': lr * scale, 'name': key,
                                        'kind': kind, 'weight_decay': weight_decay})
        group['params'].append(param)
    order = ['embed', *(f'block{i}' for i in range(depth)), 'head']
    return [groups[key] for key in order if key in groups]


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.05,
                    layer_decay: float = 0.8, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, lr, weight_decay, layer_decay),
                             lr=lr, weight_decay=weight_decay, betas=tuple(betas))


def two_stage_factor(step: int, kind: str, total_steps: int, head_warmup: int,
                     backbone_warmup: int, power: float = 0.9) -> float:
    """The lr multiplier of a ``head`` or ``backbone`` group at ``step`` (EoMT's schedule).

    head: linear 0 -> 1 over ``head_warmup`` steps, then poly decay to the end.
    backbone: 0 for ``head_warmup`` steps (frozen), linear 0 -> 1 over ``backbone_warmup``
    steps, then poly decay to the end.
    """
    if kind == 'head':
        if head_warmup > 0 and step < head_warmup:
            return step / head_warmup
        done, span = step - head_warmup, total_steps - head_warmup
    else:
        if step < head_warmup:
            return 0.0
        if step < head_warmup + backbone_warmup:
            return (step - head_warmup) / backbone_warmup
        done, span = step - head_warmup - backbone_warmup, total_steps - head_warmup - \
            backbone_warmup
    progress = min(max(done, 0) / max(span, 1), 1.0)
    return (1.0 - progress) ** power


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, head_warmup: int,
                    backbone_warmup: int, power: float = 0.9
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` stepped once per optimizer step, one lambda per group by its ``kind``."""

    def factor(kind: str) -> Callable[[int], float]:
        return lambda step: two_stage_factor(step, kind, total_steps, head_warmup,
                                             backbone_warmup, power)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factor(group.get('kind', 'head')) for group in optimizer.param_groups])
