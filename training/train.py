#!/usr/bin/env python3
"""Train TokenMask / EoMT with EoMT's recipe (training/README.md, eomt-facts "Training").

    python training/train.py --config training/configs/synthetic_tiny_tokenmask.yaml --out runs/t
    python training/train.py --config CFG --out runs/t --resume runs/t/checkpoints/step_000500
    torchrun --nproc-per-node 2 training/train.py --config CFG optim.batch_size=8

Configs are short YAML files over the defaults of :class:`TrainConfig`; ``section.key=value``
arguments override them (values parsed as YAML). Writes ``config.yaml``, ``metrics.csv``
(plus ``eval.csv`` with periodic validation PQ / mIoU when ``eval.every`` > 0, and
TensorBoard events when tensorboard is installed), ``checkpoints/step_N/`` (weights
``model.safetensors`` + pickle-free training state) and ``model.safetensors`` at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python training/train.py` from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch.utils.data import DataLoader, Dataset, DistributedSampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tokenmask_ros.model import (  # noqa: E402
    TokenMaskConfig,
    build_model,
    load_checkpoint,
    load_config,
    save_checkpoint,
)
from tokenmask_ros.model.backbone import fit_position_embedding  # noqa: E402
from tokenmask_ros.model.checkpoint import load_backbone_weights  # noqa: E402
from training.annealing import annealing_windows, mask_probabilities  # noqa: E402
from training.aux_semantic import SemanticAuxiliary  # noqa: E402
from training.datasets import collate  # noqa: E402
from training.datasets.transforms import TrainTransform  # noqa: E402
from training.losses import MaskClassificationLoss, count_masks  # noqa: E402
from training.optim import build_optimizer, build_scheduler  # noqa: E402
from training.train_state import (  # noqa: E402
    read_train_state,
    restore_train_state,
    save_train_state,
)


@dataclass
class DataConfig:
    """``synthetic``: generated scenes in memory (``root`` unset) or written by
    ``training/make_synthetic.py`` (``root`` set); ``coco_panoptic``: explicit paths
    (COCO, ADE20K panoptic; ``things_only`` keeps the thing classes: COCO instance);
    ``ade20k_semantic``: ``root`` (ADEChallengeData2016) + ``split``;
    ``cityscapes_semantic``: explicit paths to cityscapesscripts' panoptic output."""

    type: str = 'synthetic'
    root: str | None = None
    split: str = 'train'
    images_dir: str | None = None
    panoptic_dir: str | None = None
    json_file: str | None = None
    things_only: bool = False
    count: int = 1000
    width: int = 640
    height: int = 480
    seed: int = 0
    scale_range: tuple[float, float] = (0.1, 2.0)
    color_jitter: bool = False
    num_workers: int = 2


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05
    layer_decay: float = 0.8
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 16           # total over all processes and accumulation steps
    grad_accum: int = 1
    epochs: float = 12.0
    max_steps: int = 0             # > 0: overrides epochs
    head_warmup: int = 500
    backbone_warmup: int = 1000
    poly_power: float = 0.9
    grad_clip: float = 0.01        # max grad norm; <= 0 disables
    amp: str = 'fp16'              # fp16 | bf16 | none (CUDA only; CPU runs in fp32)
    mask_annealing: bool = True
    mask_annealing_start: float = 1 / 6  # fraction of training where the first window opens
    mask_annealing_end: float = 5 / 6    # ... and where the last one closes
    num_points: int = 12544
    aux_semantic_weight: float = 0.0  # > 0: per-token class loss (training/aux_semantic.py)


@dataclass
class EvalConfig:
    """Periodic evaluation during training (rank 0 only; ``every`` = 0 turns it off).

    Synthetic runs evaluate on ``images`` fresh validation-stream scenes of the training
    size (``seed``); COCO-panoptic-format runs (COCO, ADE20K, Cityscapes) on the first
    ``images`` of the split given by the three paths. Results go to eval.csv /
    TensorBoard as ``val_pq``, ``val_pq_things``, ``val_pq_stuff``, ``val_miou``.
    """

    every: int = 0
    images: int = 100
    seed: int = 12345
    images_dir: str | None = None
    panoptic_dir: str | None = None
    json_file: str | None = None


@dataclass
class TrainConfig:
    model: dict[str, Any] = field(default_factory=lambda: {'preset': 'small'})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = 'auto'
    log_every: int = 10
    checkpoint_every: int = 1000
    deterministic: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split('.')
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults < YAML file < ``a.b=value`` overrides; unknown keys are errors."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'config file not found: {path}')
        raw = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        if '=' not in item:
            raise ValueError(f'override {item!r} must look like section.key=value')
        key, value = item.split('=', 1)
        _set_dotted(raw, key, yaml.safe_load(value))
    unknown = set(raw) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f'unknown config section(s): {sorted(unknown)}')
    sections = {'data': DataConfig, 'optim': OptimConfig, 'eval': EvalConfig}
    config = TrainConfig(**{k: v for k, v in raw.items() if k not in (*sections, 'model')})
    config.model = {**config.model, **raw.get('model', {})} if 'preset' not in \
        raw.get('model', {}) else dict(raw['model'])
    for name, cls in sections.items():
        section = raw.get(name) or {}
        unknown = set(section) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f'unknown {name} key(s): {sorted(unknown)}')
        setattr(config, name, cls(**{k: _coerce(cls, k, v) for k, v in section.items()}))
    return config


def _coerce(cls, key: str, value: Any) -> Any:
    """YAML reads ``1e-4`` as a string (it wants ``1.0e-4``): make float fields floats."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == key)
    if isinstance(default, float) and isinstance(value, str | int) and \
            not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f'{key} must be a number, got {value!r}') from None
    return value


def model_config(config: TrainConfig, classes: list[dict] | None) -> TokenMaskConfig:
    """The TokenMaskConfig: optional ``preset`` plus fields; classes from the dataset."""
    values = dict(config.model)
    preset = values.pop('preset', None)
    if classes is not None and 'classes' not in values:
        values['classes'] = classes
        values['num_classes'] = len(classes)
    return TokenMaskConfig.from_preset(preset, **values) if preset else \
        TokenMaskConfig.from_dict(values)


# --- data ------------------------------------------------------------------------------


class SeededTransform(Dataset):
    """Applies the augmentation under a seed fixed by (seed, epoch, index).

    Why: augmentation then does not depend on worker count or on where a run was resumed,
    which makes resuming exact.
    """

    def __init__(self, dataset, transform, seed: int):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.transform(*sample)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (``skip`` samples per replica)."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return super().__len__() - self.skip


class ThingsOnly(Dataset):
    """Instance samples from a panoptic dataset: thing segments only, classes renumbered.

    Why: COCO instance segmentation is trained on COCO panoptic's thing segments (80
    classes) here, as no COCO instances-JSON reader exists; unlike instances_*.json, those
    masks never overlap (panoptic annotation resolved the overlaps).
    """

    def __init__(self, dataset):
        self.dataset = dataset
        things = [c for c in dataset.classes if c.is_thing]
        if not things:
            raise ValueError('data.things_only: the dataset has no thing classes')
        self.classes = [dataclasses.replace(c, index=i) for i, c in enumerate(things)]
        self.lookup = torch.full((len(dataset.classes),), -1, dtype=torch.int64)
        self.lookup[[c.index for c in things]] = torch.arange(len(things))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        from training.datasets.transforms import select_segments

        image, target = self.dataset[index]
        target = select_segments(target, self.lookup[target['labels']] >= 0)
        target['labels'] = self.lookup[target['labels']]
        return image, target


class SemanticTargets(Dataset):
    """Semantic samples from a panoptic dataset: one mask per class present (instances and
    crowd regions merged), ``is_crowd`` all false, ``target['semantic']`` (255 = void)."""

    def __init__(self, dataset):
        self.dataset, self.classes = dataset, dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        from training.datasets import masks_to_semantic

        image, target = self.dataset[index]
        labels = target['labels'].unique()
        masks = torch.stack([target['masks'][target['labels'] == label].any(0)
                             for label in labels]) if len(labels) else \
            torch.zeros((0, *target['masks'].shape[1:]), dtype=torch.bool)
        target = {k: v for k, v in target.items()
                  if k not in ('masks', 'labels', 'is_crowd', 'segment_ids')}
        target.update(masks=tv_tensors.Mask(masks), labels=labels,
                      is_crowd=torch.zeros(len(labels), dtype=torch.bool),
                      semantic=masks_to_semantic(masks, labels))
        return image, target


def build_dataset(data: DataConfig):
    """The raw training dataset and its classes as TokenMaskConfig ``classes`` dicts."""
    from training.datasets import ADE20KSemantic, CocoPanoptic, SyntheticPanoptic, open_split

    if data.type == 'synthetic':
        if data.root:
            if not Path(data.root).is_dir():
                raise FileNotFoundError(f'synthetic dataset folder not found: {data.root} '
                                        '(write one with training/make_synthetic.py or unset '
                                        'data.root to generate scenes in memory)')
            dataset = open_split(data.root, data.split)
        else:
            dataset = SyntheticPanoptic(data.count, data.width, data.height, data.seed,
                                        data.split)
            from tokenmask_ros.synthetic import SYNTHETIC_CLASSES
            return dataset, [{'name': c.name, 'is_thing': c.is_thing, 'color': tuple(c.color)}
                             for c in SYNTHETIC_CLASSES]
    elif data.type in ('coco_panoptic', 'cityscapes_semantic'):
        paths = {k: getattr(data, k) for k in ('images_dir', 'panoptic_dir', 'json_file')}
        missing = [k for k, v in paths.items() if not v]
        if missing:
            raise ValueError(f'data.type {data.type} needs data.{", data.".join(missing)}')
        dataset = CocoPanoptic(**paths)
        if data.type == 'cityscapes_semantic':
            # No Cityscapes reader: cityscapesscripts' createPanopticImgs writes COCO-panoptic
            # JSON/PNGs (19 categories, ids in trainId order) whose image_id is
            # <city>_<seq>_<frame>; the images stay in leftImg8bit/<split>/<city>/.
            for record in dataset.records:
                image_id = str(record['image_id'])
                record['image_file'] = f'{image_id.split("_")[0]}/{image_id}_leftImg8bit.png'
            dataset = SemanticTargets(dataset)
        elif data.things_only:
            dataset = ThingsOnly(dataset)
    elif data.type == 'ade20k_semantic':
        if not data.root:
            raise ValueError('data.type ade20k_semantic needs data.root (ADEChallengeData2016)')
        dataset = ADE20KSemantic(data.root, data.split)
        return dataset, [{'name': name, 'is_thing': False} for name in dataset.class_names]
    else:
        raise ValueError('data.type must be synthetic, coco_panoptic, ade20k_semantic or '
                         f'cityscapes_semantic, got {data.type!r}')
    return dataset, [{'name': c.name, 'is_thing': c.is_thing, 'color': tuple(c.color)}
                     for c in dataset.classes]


def batches(loader: DataLoader, sampler: ResumableSampler, dataset: SeededTransform,
            start: int):
    """Endless micro-batches starting at micro-batch ``start`` (epochs re-shuffled)."""
    per_epoch = len(loader)
    epoch, offset = divmod(start, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        dataset.epoch = epoch
        sampler.skip = offset * loader.batch_size
        yield from loader
        epoch, offset = epoch + 1, 0


# --- training --------------------------------------------------------------------------


def setup_distributed() -> tuple[int, int, int]:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    return world, rank, local_rank


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


class MetricLog:
    """CSV files in the run folder (``metrics.csv`` for training, ``eval.csv`` for periodic
    evaluation: one header each), plus TensorBoard when ``torch.utils.tensorboard`` imports."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled, self.writer = out, enabled, None
        self.files: dict[str, tuple[Any, csv.DictWriter]] = {}
        if not enabled:
            return
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out / 'tensorboard'))

    def log(self, step: int, values: dict[str, float], name: str = 'metrics.csv') -> None:
        if not self.enabled:
            return
        if name not in self.files:
            path = self.out / name
            new = not path.exists()
            file = path.open('a', newline='')
            writer = csv.DictWriter(file, ['step', *values], extrasaction='ignore')
            if new:
                writer.writeheader()
            self.files[name] = (file, writer)
        file, writer = self.files[name]
        writer.writerow({'step': step, **values})
        file.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        for file, _ in self.files.values():
            file.close()
        self.files.clear()
        if self.writer is not None:
            self.writer.close()


class PeriodicEvaluation:
    """PQ / mIoU of the model under training on a fixed validation set (training/evaluate.py's
    inference and metrics, so the numbers match a later ``evaluate.py`` run)."""

    def __init__(self, config: TrainConfig, model_config: TokenMaskConfig):
        from training import evaluate

        self._evaluate = evaluate
        settings = config.eval
        if settings.images < 1:
            raise ValueError(f'eval.images must be >= 1, got {settings.images}')
        paths = (settings.images_dir, settings.panoptic_dir, settings.json_file)
        if any(paths):
            if not all(paths):
                raise ValueError('eval needs all of images_dir, panoptic_dir and json_file')
            dataset, self.classes = evaluate.coco_dataset(*paths)
        elif config.data.type == 'synthetic':
            dataset, self.classes = evaluate.synthetic_dataset(
                settings.images, settings.seed, (config.data.height, config.data.width))
        else:
            raise ValueError(f'eval.every > 0 with data.type {config.data.type} needs '
                             'eval.images_dir, eval.panoptic_dir and eval.json_file')
        evaluate.check_classes(model_config, self.classes, 'validation')
        self.samples = [dataset[i] for i in range(min(settings.images, len(dataset)))]

    def __call__(self, model, device: torch.device) -> dict[str, float]:
        result = self._evaluate.evaluate_model(model, self.samples, self.classes, device)
        return {f'val_{k}': result[k] for k in ('pq', 'pq_things', 'pq_stuff', 'miou')}


def _previous_elapsed(path: Path, step: int) -> float:
    """``elapsed_s`` logged at ``step`` by an earlier run into ``path`` (0 if none)."""
    if step == 0 or not path.is_file():
        return 0.0
    with path.open(newline='') as file:
        rows = [r for r in csv.DictReader(file) if r.get('elapsed_s') and int(r['step']) <= step]
    return float(rows[-1]['elapsed_s']) if rows else 0.0


AUX_WEIGHTS = 'aux_semantic.safetensors'


def save_all(out: Path, step: int, model, optimizer, scheduler, scaler, config,
             aux: SemanticAuxiliary | None = None) -> Path:
    directory = out / 'checkpoints' / f'step_{step:06d}'
    save_checkpoint(model, directory / 'model.safetensors', {'step': step})
    if aux is not None:  # training-only weights, kept beside the train state for resume
        save_file({k: v.detach().cpu().contiguous() for k, v in aux.state_dict().items()},
                  str(directory / AUX_WEIGHTS))
    save_train_state(directory, step, optimizer, scheduler, scaler,
                     {'train_config': config.to_dict()})
    return directory


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
        return _train(config, out, resume, init, backbone_weights, progress)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _train(config: TrainConfig, out: Path | str, resume: str | None, init: str | None,
           backbone_weights: str | None, progress: bool) -> dict[str, Any]:
    world, rank, local_rank = setup_distributed()
    main = rank == 0
    out = Path(out)
    if config.device == 'auto':
        device = torch.device(f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu')
    else:
        device = torch.device(config.device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(config.seed + rank)

    optim = config.optim
    raw_dataset, classes = build_dataset(config.data)
    mconfig = model_config(config, classes)
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
    model.to(device).train()

    per_process = optim.batch_size // (world * optim.grad_accum)
    if per_process < 1 or per_process * world * optim.grad_accum != optim.batch_size:
        raise ValueError(f'optim.batch_size {optim.batch_size} must be a multiple of '
                         f'world size {world} x grad_accum {optim.grad_accum}')
    dataset = SeededTransform(raw_dataset, TrainTransform(
        mconfig.img_size, tuple(config.data.scale_range), color_jitter=config.data.color_jitter),
        config.seed)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                               seed=config.seed, drop_last=True)
    loader = DataLoader(dataset, per_process, sampler=sampler, collate_fn=collate,
                        num_workers=config.data.num_workers, drop_last=True,
                        pin_memory=device.type == 'cuda',
                        # its own generator: starting an epoch must not draw from the global
                        # RNG, or a resumed run would diverge from a straight one
                        generator=torch.Generator().manual_seed(config.seed))
    micro_per_epoch = len(sampler) // per_process
    if micro_per_epoch < 1:
        raise ValueError(f'dataset of {len(raw_dataset)} samples gives no full batch of '
                         f'{per_process} per process')
    total = optim.max_steps or math.ceil(optim.epochs * micro_per_epoch / optim.grad_accum)

    optimizer = build_optimizer(model, optim.lr, optim.weight_decay, optim.layer_decay,
                                optim.betas)
    aux = None
    if optim.aux_semantic_weight > 0:
        aux = SemanticAuxiliary(model, len(mconfig.classes)).to(device)
        optimizer.add_param_group({'params': list(aux.parameters()), 'lr': optim.lr,
                                   'name': 'aux', 'kind': 'head',
                                   'weight_decay': optim.weight_decay})
    scheduler = build_scheduler(optimizer, total, optim.head_warmup, optim.backbone_warmup,
                                optim.poly_power)
    amp = optim.amp if device.type == 'cuda' else 'none'
    if amp not in ('fp16', 'bf16', 'none'):
        raise ValueError(f'optim.amp must be fp16, bf16 or none, got {optim.amp!r}')
    scaler = torch.amp.GradScaler('cuda', enabled=amp == 'fp16')
    start = 0
    if resume:
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
        start = restore_train_state(data, tensors, optimizer, scheduler, scaler)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == 'cuda' else None)

    criterion = MaskClassificationLoss(num_points=optim.num_points)
    windows = annealing_windows(total, mconfig.num_query_blocks, optim.mask_annealing_start,
                                optim.mask_annealing_end)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / 'config.yaml').write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    log = MetricLog(out, main)
    evaluation = PeriodicEvaluation(config, mconfig) if main and config.eval.every > 0 else None
    stream = batches(loader, sampler, dataset, start * optim.grad_accum)
    dtype = torch.bfloat16 if amp == 'bf16' else torch.float16
    losses: list[float] = []
    # Wall-clock training time, carried over a resume (for PQ-versus-time curves).
    elapsed = _previous_elapsed(out / 'metrics.csv', start) if main else 0.0
    started = time.monotonic()
    bar = tqdm(range(start, total), initial=start, total=total, disable=not (main and progress),
               dynamic_ncols=True, desc='train')
    for step in bar:
        probs = mask_probabilities(step, windows, optim.poly_power) if optim.mask_annealing \
            else [0.0] * mconfig.num_query_blocks
        model.set_attention_mask_probs(probs)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        parts: dict[str, float] = {}
        for micro in range(optim.grad_accum):
            images, targets = next(stream)
            images = images.to(device, non_blocking=True).float() / 255
            targets = [{'labels': t['labels'].to(device),
                        'masks': t['masks'].as_subclass(torch.Tensor).to(device)}
                       for t in targets]
            num_masks = count_masks(targets, device)
            if world > 1:
                dist.all_reduce(num_masks)
                num_masks = num_masks / world
            sync = contextlib.nullcontext() if world == 1 or micro == optim.grad_accum - 1 \
                else ddp_model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=dtype, enabled=amp != 'none'):
                    outputs = ddp_model(images, return_intermediate=True)
                result = criterion(outputs, targets, num_masks)
                loss = result['loss']
                if aux is not None:
                    aux_loss = optim.aux_semantic_weight * aux.loss(targets)
                    loss = loss + aux_loss
                    result['loss_aux'] = aux_loss.detach()
                scaler.scale(loss / optim.grad_accum).backward()
            step_loss += loss.item() / optim.grad_accum
            for key in ('loss_class', 'loss_mask', 'loss_dice', 'loss_aux'):
                if key in result:
                    parts[key] = parts.get(key, 0.0) + float(result[key]) / optim.grad_accum
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), optim.grad_clip if optim.grad_clip > 0 else float('inf'))
        lrs = {g['name']: g['lr'] for g in optimizer.param_groups}  # the lrs of this step
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(step_loss)
        done = step + 1
        if main:
            bar.set_postfix(loss=f'{step_loss:.3f}', lr=f'{lrs["head"]:.2e}')
            if done % config.log_every == 0 or done == total or done == start + 1:
                log.log(done, {'loss': step_loss, **parts, 'grad_norm': float(grad_norm),
                               'lr_head': lrs['head'],
                               'lr_backbone': lrs.get(f'block{len(model.backbone.blocks) - 1}',
                                                      0.0),
                               **{f'attn_mask_prob_{i}': p for i, p in enumerate(probs)},
                               'elapsed_s': elapsed + time.monotonic() - started})
            if evaluation is not None and (done % config.eval.every == 0 or done == total):
                scores = evaluation(model, device)  # eval mode: no attention masks
                log.log(done, {**scores, 'elapsed_s': elapsed + time.monotonic() - started},
                        'eval.csv')
                bar.write(f'step {done}: ' + ', '.join(f'{k} {v:.2f}' for k, v in scores.items()))
            if config.checkpoint_every > 0 and done % config.checkpoint_every == 0 \
                    and done != total:
                save_all(out, done, model, optimizer, scheduler, scaler, config, aux)
    bar.close()
    if main and total > start:
        save_all(out, total, model, optimizer, scheduler, scaler, config, aux)
        save_checkpoint(model, out / 'model.safetensors', {'step': total})
    log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {'step': max(total, start), 'losses': losses, 'out': out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', required=True, help='YAML training config')
    parser.add_argument('--out', default=None, help='output folder (default runs/<config>)')
    parser.add_argument('--resume', default=None,
                        help='checkpoint folder (checkpoints/step_N) to continue from')
    parser.add_argument('--init', default=None,
                        help='tokenmask checkpoint to start from (config must match except '
                             'img_size; the position embedding is cropped or resampled)')
    parser.add_argument('--backbone-weights', default=None,
                        help='local safetensors file with pretrained timm/DINOv2 ViT weights, '
                             'or a TokenMask checkpoint whose backbone only is used (other '
                             'classes, head or input size are fine)')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm bar')
    parser.add_argument('overrides', nargs='*', help='section.key=value (YAML values)')
    args = parser.parse_args(argv)
    try:
        config = load_train_config(args.config, args.overrides)
        out = args.out or str(Path('runs') / Path(args.config).stem)
        train(config, out, args.resume, args.init, args.backbone_weights,
              progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
