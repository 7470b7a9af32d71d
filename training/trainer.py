"""The training run behind ``train.py``: :func:`train` builds a :class:`Run`, loops over its
steps (each logged, periodically validated and checkpointed) and saves the final model.

Everything the loop needs is built once, in a fixed order (the RNG draws of model and
auxiliary-head initialisation depend on it), so a resumed run continues exactly where a
straight run would be.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from tokenmask_ros.model import build_model, load_checkpoint, save_checkpoint
from tokenmask_ros.model.backbone import fit_position_embedding
from tokenmask_ros.model.checkpoint import load_backbone_weights
from training.annealing import annealing_windows, mask_probabilities
from training.aux_semantic import SemanticAuxiliary
from training.datasets.build import build_dataset
from training.datasets.loader import batches, build_loader
from training.losses import MaskClassificationLoss, count_masks
from training.optim import build_optimizer, build_scheduler
from training.run_checkpoints import check_init_config, load_resume, save_all
from training.run_log import MetricLog, previous_elapsed
from training.train_config import TrainConfig, model_config

LOSS_PARTS = ('loss_class', 'loss_mask', 'loss_dice', 'loss_aux')


def setup_distributed() -> tuple[int, int, int]:
    """World size, rank and local rank; joins the process group under torchrun."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    return world, rank, local_rank


@dataclass
class Run:
    """One training run's parts, built by :func:`build_run`."""

    config: TrainConfig
    out: Path
    world: int
    rank: int
    local_rank: int
    device: torch.device
    model: Any = None
    mconfig: Any = None
    raw_dataset: Any = None
    dataset: Any = None
    sampler: Any = None
    loader: Any = None
    total: int = 0
    start: int = 0
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    amp: str = 'none'
    aux: SemanticAuxiliary | None = None
    ddp_model: Any = None
    criterion: Any = None
    windows: Any = None
    log: Any = None
    evaluation: Any = None
    elapsed: float = 0.0  # training time logged before a resume
    started: float = field(default_factory=time.monotonic)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def elapsed_s(self) -> float:
        """Wall-clock training time, carried over a resume (for PQ-versus-time curves)."""
        return self.elapsed + time.monotonic() - self.started


def train(config: TrainConfig, out: str | Path, resume: str | None = None,
          init: str | None = None, backbone_weights: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run training; returns ``{'step', 'losses', 'out'}`` (per-step losses of this run).

    ``config.deterministic`` switches torch's process-wide deterministic mode on for the run
    only: the caller's setting is restored afterwards (it changes how other code in the
    same process dispatches ops).
    """
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        run = build_run(config, Path(out), resume, init, backbone_weights)
        losses = training_loop(run, progress)
        finish(run)
        return {'step': max(run.total, run.start), 'losses': losses, 'out': run.out}
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


# --------------------------------------------------------------------------- build


def select_device(config: TrainConfig, local_rank: int) -> torch.device:
    """``config.device``, ``auto`` = this process's GPU if there is one; seeds torch."""
    if config.device == 'auto':
        device = torch.device(f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu')
    else:
        device = torch.device(config.device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def build_run(config: TrainConfig, out: Path, resume: str | None, init: str | None,
              backbone_weights: str | None) -> Run:
    """Device, data, model, optimisation, resumed state and logs, in that order."""
    world, rank, local_rank = setup_distributed()
    run = Run(config, out, world, rank, local_rank, select_device(config, local_rank))
    torch.manual_seed(config.seed + rank)
    run.raw_dataset, classes = build_dataset(config.data)
    run.mconfig = model_config(config, classes)
    run.model = initial_model(run.mconfig, init, backbone_weights).to(run.device).train()
    build_data(run)
    build_optimization(run)
    if resume:
        run.start = load_resume(resume, run.model, run.mconfig, run.optimizer, run.scheduler,
                                run.scaler, run.aux, run.device)
    run.ddp_model = run.model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        run.model, device_ids=[local_rank] if run.device.type == 'cuda' else None)
    run.criterion = MaskClassificationLoss(num_points=config.optim.num_points)
    run.windows = annealing_windows(run.total, run.mconfig.num_query_blocks,
                                    config.optim.mask_annealing_start,
                                    config.optim.mask_annealing_end)
    open_outputs(run)
    return run


def initial_model(mconfig, init: str | None, backbone_weights: str | None):
    """A fresh model, started from ``--init`` and / or ``--backbone-weights`` if given."""
    model = build_model(mconfig)
    if init:
        check_init_config(init, mconfig, ignore=('img_size',))
        source = load_checkpoint(init)
        model.load_state_dict(fit_position_embedding(source.state_dict(), source.config,
                                                     mconfig))
    if backbone_weights:
        if not Path(backbone_weights).is_file():
            raise FileNotFoundError(f'--backbone-weights file not found: {backbone_weights}')
        load_backbone_weights(model.backbone, backbone_weights)
    return model


def build_data(run: Run) -> None:
    """The loader of this process's share of each batch, and the run's length in steps."""
    config, optim = run.config, run.config.optim
    per_process = optim.batch_size // (run.world * optim.grad_accum)
    if per_process < 1 or per_process * run.world * optim.grad_accum != optim.batch_size:
        raise ValueError(f'optim.batch_size {optim.batch_size} must be a multiple of '
                         f'world size {run.world} x grad_accum {optim.grad_accum}')
    run.dataset, run.sampler, run.loader = build_loader(
        run.raw_dataset, run.mconfig.img_size, config.data, config.seed, run.world, run.rank,
        per_process, pin_memory=run.device.type == 'cuda')
    micro_per_epoch = len(run.sampler) // per_process
    if micro_per_epoch < 1:
        raise ValueError(f'dataset of {len(run.raw_dataset)} samples gives no full batch of '
                         f'{per_process} per process')
    run.total = optim.max_steps or math.ceil(optim.epochs * micro_per_epoch / optim.grad_accum)


def build_optimization(run: Run) -> None:
    """Optimizer (with the auxiliary head's group if any), schedule and AMP scaler."""
    optim = run.config.optim
    run.optimizer = build_optimizer(run.model, optim.lr, optim.weight_decay, optim.layer_decay,
                                    optim.betas)
    if optim.aux_semantic_weight > 0:
        run.aux = SemanticAuxiliary(run.model, len(run.mconfig.classes)).to(run.device)
        run.optimizer.add_param_group({'params': list(run.aux.parameters()), 'lr': optim.lr,
                                       'name': 'aux', 'kind': 'head',
                                       'weight_decay': optim.weight_decay})
    run.scheduler = build_scheduler(run.optimizer, run.total, optim.head_warmup,
                                    optim.backbone_warmup, optim.poly_power)
    run.amp = optim.amp if run.device.type == 'cuda' else 'none'
    if run.amp not in ('fp16', 'bf16', 'none'):
        raise ValueError(f'optim.amp must be fp16, bf16 or none, got {optim.amp!r}')
    run.scaler = torch.amp.GradScaler('cuda', enabled=run.amp == 'fp16')


def open_outputs(run: Run) -> None:
    """The run folder with config.yaml, the metric logs and the periodic evaluation."""
    config = run.config
    if run.main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / 'config.yaml').write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    run.log = MetricLog(run.out, run.main)
    if run.main and config.eval.every > 0:
        from training.periodic_eval import PeriodicEvaluation  # pycocotools etc. only if used

        run.evaluation = PeriodicEvaluation(config, run.mconfig)
    run.elapsed = previous_elapsed(run.out / 'metrics.csv', run.start) if run.main else 0.0


# --------------------------------------------------------------------------- loop


def training_loop(run: Run, progress: bool) -> list[float]:
    """Steps ``start`` to ``total``: train, log, validate, checkpoint; the per-step losses."""
    optim = run.config.optim
    stream = batches(run.loader, run.sampler, run.dataset, run.start * optim.grad_accum)
    run.started = time.monotonic()
    losses: list[float] = []
    bar = tqdm(range(run.start, run.total), initial=run.start, total=run.total,
               disable=not (run.main and progress), dynamic_ncols=True, desc='train')
    for step in bar:
        probs = mask_probabilities(step, run.windows, optim.poly_power) \
            if optim.mask_annealing else [0.0] * run.mconfig.num_query_blocks
        run.model.set_attention_mask_probs(probs)
        loss, values = train_step(run, stream)
        losses.append(loss)
        if run.main:
            bar.set_postfix(loss=f'{loss:.3f}', lr=f'{values["lr_head"]:.2e}')
            after_step(run, step + 1, {**values, **{f'attn_mask_prob_{i}': p
                                                    for i, p in enumerate(probs)}}, bar)
    bar.close()
    return losses


def train_step(run: Run, stream) -> tuple[float, dict[str, float]]:
    """One optimizer step over ``grad_accum`` micro-batches; its loss and logged values."""
    optim, optimizer = run.config.optim, run.optimizer
    optimizer.zero_grad(set_to_none=True)
    step_loss, parts = 0.0, {}
    for micro in range(optim.grad_accum):
        result = micro_step(run, next(stream), last=micro == optim.grad_accum - 1)
        step_loss += result['loss'].item() / optim.grad_accum
        for key in LOSS_PARTS:
            if key in result:
                parts[key] = parts.get(key, 0.0) + float(result[key]) / optim.grad_accum
    run.scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        run.model.parameters(), optim.grad_clip if optim.grad_clip > 0 else float('inf'))
    lrs = {g['name']: g['lr'] for g in optimizer.param_groups}  # the lrs of this step
    run.scaler.step(optimizer)
    run.scaler.update()
    run.scheduler.step()
    last_block = f'block{len(run.model.backbone.blocks) - 1}'
    return step_loss, {'loss': step_loss, **parts, 'grad_norm': float(grad_norm),
                       'lr_head': lrs['head'], 'lr_backbone': lrs.get(last_block, 0.0)}


def micro_step(run: Run, batch, last: bool) -> dict:
    """Forward, loss and backward of one micro-batch (gradients synced on the ``last``)."""
    optim, device = run.config.optim, run.device
    images, targets = batch
    images = images.to(device, non_blocking=True).float() / 255
    targets = [{'labels': t['labels'].to(device),
                'masks': t['masks'].as_subclass(torch.Tensor).to(device)} for t in targets]
    num_masks = count_masks(targets, device)
    if run.world > 1:
        dist.all_reduce(num_masks)
        num_masks = num_masks / run.world
    sync = contextlib.nullcontext() if run.world == 1 or last else run.ddp_model.no_sync()
    dtype = torch.bfloat16 if run.amp == 'bf16' else torch.float16
    with sync:
        with torch.autocast(device.type, dtype=dtype, enabled=run.amp != 'none'):
            outputs = run.ddp_model(images, return_intermediate=True)
        result = run.criterion(outputs, targets, num_masks)
        loss = result['loss']
        if run.aux is not None:
            aux_loss = optim.aux_semantic_weight * run.aux.loss(targets)
            loss = loss + aux_loss
            result['loss_aux'] = aux_loss.detach()
        run.scaler.scale(loss / optim.grad_accum).backward()
    result['loss'] = loss
    return result


def after_step(run: Run, done: int, values: dict[str, float], bar) -> None:
    """Rank 0 after step ``done``: log, validate and checkpoint when they are due."""
    config = run.config
    if done % config.log_every == 0 or done == run.total or done == run.start + 1:
        run.log.log(done, {**values, 'elapsed_s': run.elapsed_s()})
    if run.evaluation is not None and (done % config.eval.every == 0 or done == run.total):
        validate(run, done, bar)
    if config.checkpoint_every > 0 and done % config.checkpoint_every == 0 \
            and done != run.total:
        save_all(run.out, done, run.model, run.optimizer, run.scheduler, run.scaler, config,
                 run.aux)


def validate(run: Run, done: int, bar) -> None:
    """Periodic evaluation (eval mode: no attention masks) into eval.csv and the bar."""
    scores = run.evaluation(run.model, run.device)
    run.log.log(done, {**scores, 'elapsed_s': run.elapsed_s()}, 'eval.csv')
    bar.write(f'step {done}: ' + ', '.join(f'{k} {v:.2f}' for k, v in scores.items()))


def finish(run: Run) -> None:
    """The last checkpoint and ``model.safetensors``; close logs and the process group."""
    if run.main and run.total > run.start:
        save_all(run.out, run.total, run.model, run.optimizer, run.scheduler, run.scaler,
                 run.config, run.aux)
        save_checkpoint(run.model, run.out / 'model.safetensors', {'step': run.total})
    run.log.close()
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def run_outputs(out: Path, step: int) -> dict[str, Path]:
    """The files a finished run left in ``out`` (by role), for the end-of-run report."""
    candidates = {'model': out / 'model.safetensors',
                  'checkpoint': out / 'checkpoints' / f'step_{step:06d}',
                  'metrics': out / 'metrics.csv', 'validation': out / 'eval.csv',
                  'config': out / 'config.yaml', 'tensorboard': out / 'tensorboard'}
    return {role: path for role, path in candidates.items() if path.exists()}
