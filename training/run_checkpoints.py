"""Checkpoints of a training run: ``checkpoints/step_N/`` (weights, auxiliary head, train
state) written during the run, and the checks and loading behind ``--init`` / ``--resume``."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from tokenmask_ros.model import TokenMaskConfig, load_checkpoint, load_config, save_checkpoint
from training.aux_semantic import SemanticAuxiliary
from training.train_state import read_train_state, restore_train_state, save_train_state

AUX_WEIGHTS = 'aux_semantic.safetensors'


def check_init_config(path: str | Path, expected: TokenMaskConfig, option: str = '--init',
                      ignore: tuple[str, ...] = ()) -> None:
    """Refuse an ``--init``/``--resume`` checkpoint whose model differs from the config.

    Keys in ``ignore`` may differ (``--init`` accepts another ``img_size``).
    """
    found = json.loads(json.dumps(load_config(path).to_dict()))
    wanted = json.loads(json.dumps(expected.to_dict()))
    diffs = [f'{k}: checkpoint {found.get(k)!r} != config {wanted.get(k)!r}'
             for k in sorted(set(found) | set(wanted))
             if k not in ignore and found.get(k) != wanted.get(k)]
    if diffs:
        raise ValueError(f'{option} {path}: its model config does not match the training '
                         'config:\n  ' + '\n  '.join(d[:300] for d in diffs))


def save_all(out: Path, step: int, model, optimizer, scheduler, scaler, config,
             aux: SemanticAuxiliary | None = None) -> Path:
    """``checkpoints/step_N/``: everything ``--resume`` needs to continue exactly."""
    directory = out / 'checkpoints' / f'step_{step:06d}'
    save_checkpoint(model, directory / 'model.safetensors', {'step': step})
    if aux is not None:  # training-only weights, kept beside the train state for resume
        save_file({k: v.detach().cpu().contiguous() for k, v in aux.state_dict().items()},
                  str(directory / AUX_WEIGHTS))
    save_train_state(directory, step, optimizer, scheduler, scaler,
                     {'train_config': config.to_dict()})
    return directory


def load_resume(resume: str | Path, model, mconfig: TokenMaskConfig, optimizer, scheduler,
                scaler, aux: SemanticAuxiliary | None, device) -> int:
    """Load ``--resume``'s weights and train state into the run; returns its step."""
    directory = Path(resume)
    if directory.is_file():
        directory = directory.parent
    if not (directory / 'model.safetensors').is_file():
        raise FileNotFoundError(f'--resume: {directory / "model.safetensors"} not found')
    check_init_config(directory / 'model.safetensors', mconfig, '--resume')
    model.load_state_dict(load_checkpoint(directory / 'model.safetensors').state_dict())
    if aux is not None and (directory / AUX_WEIGHTS).is_file():
        aux.load_state_dict(load_file(str(directory / AUX_WEIGHTS), device=str(device)))
    data, tensors = read_train_state(directory)
    return restore_train_state(data, tensors, optimizer, scheduler, scaler)
