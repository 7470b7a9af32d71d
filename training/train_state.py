"""Training state (optimizer, scheduler, AMP scaler, RNGs, step) saved without pickle.

Why: ``torch.save`` pickles, and unpickling runs code. Tensors go to a safetensors file,
everything else (hyper-parameters, counters, Python's RNG) to JSON; both are plain data.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TENSORS = 'train_state.safetensors'
JSON = 'train_state.json'
FORMAT = 'tokenmask-train-state/1'


def _atomic_write(path: Path, write) -> None:
    temp = path.with_name(f'.{path.name}.tmp')
    write(temp)
    os.replace(temp, path)


def save_train_state(directory: str | Path, step: int, optimizer: torch.optim.Optimizer,
                     scheduler, scaler: torch.amp.GradScaler | None,
                     extra: dict[str, Any] | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    optim_state = optimizer.state_dict()
    for index, state in optim_state['state'].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f'optim.{index}.{key}'] = value.detach().to('cpu').contiguous()
            else:
                scalars[f'optim.{index}.{key}'] = value
    tensors['rng.torch'] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors['rng.cuda'] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    tensors['rng.numpy'] = torch.from_numpy(np_state[1].astype(np.int64))
    data = {
        'format': FORMAT,
        'step': int(step),
        'param_groups': optim_state['param_groups'],
        'optim_scalars': scalars,
        'scheduler': {k: v for k, v in scheduler.state_dict().items() if k != 'lr_lambdas'},
        'scaler': scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        'rng_python': random.getstate(),
        'rng_numpy': [np_state[0], *np_state[2:]],
        'extra': extra or {},
    }
    _atomic_write(directory / TENSORS, lambda p: save_file(tensors, str(p)))
    _atomic_write(directory / JSON, lambda p: p.write_text(json.dumps(data, indent=1)))


def read_train_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    directory = Path(directory)
    for name in (TENSORS, JSON):
        if not (directory / name).is_file():
            raise FileNotFoundError(f'cannot resume: {directory / name} is missing '
                                    '(pass a checkpoint folder written by training/train.py)')
    data = json.loads((directory / JSON).read_text())
    if data.get('format') != FORMAT:
        raise ValueError(f'{directory / JSON}: unknown training-state format '
                         f'{data.get("format")!r}')
    return data, load_file(str(directory / TENSORS))


def restore_train_state(data: dict[str, Any], tensors: dict[str, torch.Tensor],
                        optimizer: torch.optim.Optimizer, scheduler,
                        scaler: torch.amp.GradScaler | None) -> int:
    """Load everything back into the live objects; returns the step to continue from."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith('optim.'):
            _, index, name = key.split('.', 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in data['optim_scalars'].items():
        _, index, name = key.split('.', 2)
        state.setdefault(int(index), {})[name] = value
    groups = []
    for group in data['param_groups']:
        group = dict(group)
        if isinstance(group.get('betas'), list):
            group['betas'] = tuple(group['betas'])
        groups.append(group)
    if len(groups) != len(optimizer.param_groups) or any(
            len(a['params']) != len(b['params']) for a, b in zip(groups, optimizer.param_groups,
                                                                   strict=True)):
        raise ValueError('cannot resume: the saved optimizer has different parameter groups '
                         '(was the model config changed?)')
    optimizer.load_state_dict({'state': state, 'param_groups': groups})
    scheduler.load_state_dict(dict(data['scheduler'], lr_lambdas=[None] * len(groups)))
    if scaler is not None and scaler.is_enabled() and data.get('scaler'):
        scaler.load_state_dict(data['scaler'])
    torch.set_rng_state(tensors['rng.torch'])
    if 'rng.cuda' in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors['rng.cuda'])
    version, internal, gauss = data['rng_python']
    random.setstate((version, tuple(internal), gauss))
    name, *rest = data['rng_numpy']
    np.random.set_state((name, tensors['rng.numpy'].numpy().astype(np.uint32), *rest))
    return int(data['step'])
