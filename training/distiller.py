"""Label-free distillation of an EoMT (or any TokenMask-format) teacher into a TokenMask student.

Why: TokenMask is EoMT without the learned upscaling blocks, so the student can start from
the teacher's backbone, queries, class head and mask MLP and only has to learn to score
masks in token space. Query i of the student learns query i of the teacher (soft classes,
mask probabilities at the student's stride), so any folder of images or videos will do: no
annotations. The run reuses ``train.py``'s machinery: the optimizer and schedule of
:mod:`training.optim`, pickle-free checkpoints of :mod:`training.run_checkpoints` (exact
``--resume``), the CSV / TensorBoard log of :mod:`training.run_log`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tokenmask_ros.defaults import MAX_IMAGE_PIXELS
from tokenmask_ros.image_io import read_image_file
from tokenmask_ros.model import SegmentationOutput, TokenMask, build_model, save_checkpoint
from tokenmask_ros.sources import IMAGE_SUFFIXES
from training.letterbox import preprocess
from training.losses import dice_per_mask
from training.optim import build_optimizer, build_scheduler
from training.run_checkpoints import load_resume, save_all
from training.run_log import MetricLog, previous_elapsed

VIDEO_SUFFIXES = frozenset({'.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v'})


# --------------------------------------------------------------------------- student


def student_from_teacher(teacher: TokenMask, upsample: str = 'logit') -> TokenMask:
    """A ``head='tokenmask'`` student (``upsample`` 'logit', or 'subpatch' for sub-patch
    masks) at the teacher's output stride, holding the teacher's weights for everything but
    the mask head (EoMT's ScaleBlocks are dropped; the 'logit' head has no parameters, the
    'subpatch' one starts as nearest upsampling)."""
    config = teacher.config.replace(head='tokenmask', upsample=upsample)
    student = build_model(config)
    shared = {k: v for k, v in teacher.state_dict().items() if not k.startswith('mask_head.')}
    expected = {k: v for k, v in student.state_dict().items() if not k.startswith('mask_head.')}
    missing = sorted(set(expected) - set(shared))
    wrong = sorted(k for k in set(expected) & set(shared) if expected[k].shape != shared[k].shape)
    if missing or wrong or set(shared) - set(expected):
        extra = sorted(set(shared) - set(expected))
        raise ValueError(f'teacher and student do not share their weights: missing '
                         f'{missing[:5]}, wrong shape {wrong[:5]}, extra {extra[:5]}')
    student.load_state_dict(shared, strict=False)  # the student's own head stays as built
    return student.to(next(teacher.parameters()).device)


# --------------------------------------------------------------------------- loss


def distill_loss(student_out: SegmentationOutput, teacher_out: SegmentationOutput,
                 temperature: float = 1.0, class_weight: float = 1.0,
                 dice_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Query-by-query distillation loss: ``{'loss', 'loss_class', 'loss_mask'}``.

    Class: KL(teacher || student) of the softmax at ``temperature`` (times T^2, Hinton's
    scaling), mean over queries, times ``class_weight`` (larger holds the shared backbone to
    the teacher's classes while the masks learn). Mask: binary cross-entropy of the student's
    mask logits against the teacher's probabilities at the student's resolution, minus the
    teacher's own entropy (the same gradient as BCE, but 0 when the student matches),
    averaged over pixels, weighted per query by the teacher's probability that the query is
    an object, and averaged over the queries: the masks of no-object queries are never used,
    and matching them only pulls the shared backbone away from the classes. ``dice_weight``
    adds that many times the Dice loss against the teacher's probabilities, weighted the
    same way: a mean over pixels lets large stuff regions dominate, Dice counts a small
    object's mask as much as a wall's (as Mask2Former / EoMT train with BCE + Dice).
    """
    t_class = teacher_out.class_logits.detach().float() / temperature
    s_class = student_out.class_logits.float() / temperature
    kl = F.kl_div(F.log_softmax(s_class, -1), F.log_softmax(t_class, -1), log_target=True,
                  reduction='none').sum(-1).mean() * temperature ** 2
    t_mask = teacher_out.mask_logits.detach().float()
    s_mask = student_out.mask_logits.float()
    if t_mask.shape[-2:] != s_mask.shape[-2:]:
        t_mask = F.interpolate(t_mask, s_mask.shape[-2:], mode='bilinear', align_corners=False)
    target = torch.sigmoid(t_mask)
    bce = F.binary_cross_entropy_with_logits(s_mask, target, reduction='none')
    entropy = F.binary_cross_entropy_with_logits(t_mask, target, reduction='none')
    per_query = (bce - entropy).flatten(2).mean(-1)  # [B, K]
    if dice_weight:
        per_query = per_query + dice_weight * dice_per_mask(s_mask.flatten(2),
                                                            target.flatten(2))
    objectness = 1 - teacher_out.class_logits.detach().float().softmax(-1)[..., -1]
    mask = (per_query * objectness).mean()  # a plain mean: DDP shards average to the batch's
    return {'loss': class_weight * kl + mask, 'loss_class': kl, 'loss_mask': mask}


# --------------------------------------------------------------------------- data


class UnlabelledImages:
    """The images of a folder (recursively) and every ``video_stride``-th frame of its videos,
    letterboxed to the model input as evaluation does (resize to fit, pad bottom/right).

    Items are (path, frame or None); batches are drawn from per-epoch permutations seeded by
    (seed, epoch), so batch k is the same whether or not the run was resumed before it.
    """

    def __init__(self, folder: str | Path, img_size: tuple[int, int], seed: int = 0,
                 video_stride: int = 10):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f'image folder {folder} does not exist')
        self.items: list[tuple[Path, int | None]] = []
        for path in sorted(p for p in folder.rglob('*') if p.is_file()):
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                self.items.append((path, None))
            elif suffix in VIDEO_SUFFIXES:
                capture = cv2.VideoCapture(str(path))
                count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
                capture.release()
                self.items.extend((path, f) for f in range(0, count, max(video_stride, 1)))
        if not self.items:
            raise ValueError(f'{folder} has no images or videos '
                             f'({", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})')
        self.img_size, self.seed = tuple(img_size), seed
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> torch.Tensor:
        """Item ``index`` as a float [3, H, W] network input in [0, 1]."""
        path, frame = self.items[index]
        if frame is None:
            bgr = read_image_file(path, MAX_IMAGE_PIXELS)
        else:
            capture = cv2.VideoCapture(str(path))
            capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
            ok, bgr = capture.read()
            capture.release()
            if not ok:
                raise ValueError(f'{path}: cannot read frame {frame}')
        rgb = torch.from_numpy(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        return preprocess(rgb.permute(2, 0, 1), self.img_size)[0]

    def batch(self, step: int, size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Process ``rank``'s share (``size // world`` images) of the ``size`` images of
        optimizer step ``step``, as [size // world, 3, H, W]."""
        indices = []
        share = size // world
        first = step * size + rank * share
        for position in range(first, first + share):
            epoch, offset = divmod(position, len(self.items))
            if epoch not in self._orders:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._orders = {epoch: torch.randperm(len(self.items), generator=generator)}
            indices.append(int(self._orders[epoch][offset]))
        return torch.stack([self.read(i) for i in indices])


# --------------------------------------------------------------------------- run


@dataclass
class DistillConfig:
    """The options of a distillation run (saved with every checkpoint)."""

    teacher: str
    images: str
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    warmup: int = 0
    temperature: float = 1.0
    class_weight: float = 1.0  # weight of the class KL against the mask loss
    dice_weight: float = 0.0  # weight of a per-query Dice term in the mask loss
    grad_clip: float = 0.01
    video_stride: int = 10
    checkpoint_every: int = 500
    log_every: int = 10
    amp: str = 'none'
    device: str = 'auto'
    seed: int = 0
    train: str = 'all'  # 'mask': only the mask MLP (and head) learn; classes stay the teacher's
    student_upsample: str = 'logit'  # or 'subpatch': sub-patch masks in token space
    student_init: str | None = None  # start from this student (e.g. a --train mask stage)
    eval_synthetic: int = 0  # > 0: PQ on that many synthetic validation scenes per checkpoint
    eval_coco: tuple[str, str, str] | None = None  # or on a COCO-panoptic set (images, pngs, json)
    eval_images: int = 200  # at most this many images of eval_coco
    eval_seed: int = 12345

    def to_dict(self) -> dict:
        return asdict(self)


def distill(config: DistillConfig, teacher: TokenMask, out: str | Path,
            resume: str | None = None, progress: bool = True) -> dict:
    """Distil ``teacher`` into a fresh student for ``config.steps`` steps in ``out``.

    Returns ``{'step', 'losses', 'out', 'student'}`` (the per-step losses of this call).
    Under ``torchrun`` each process distils its share of every batch (DDP averages the
    gradients, so the run equals one process with the whole batch) and process 0 writes;
    AMP (``bf16``/``fp16``) on CUDA only. With ``eval_synthetic`` / ``eval_coco`` the
    student's PQ is logged to ``eval.csv`` at every checkpoint and at the end.
    """
    from training.trainer import setup_distributed

    if config.amp not in ('none', 'bf16', 'fp16'):
        raise ValueError(f'amp must be none, bf16 or fp16, got {config.amp!r}')
    if config.train not in ('all', 'mask'):
        raise ValueError(f"train must be 'all' or 'mask', got {config.train!r}")
    if config.student_upsample not in ('logit', 'subpatch'):
        raise ValueError(f"student_upsample must be 'logit' or 'subpatch', got "
                         f'{config.student_upsample!r}')
    if min(config.class_weight, config.dice_weight) < 0:
        raise ValueError(f'class_weight and dice_weight must be >= 0, got '
                         f'{config.class_weight}, {config.dice_weight}')
    world, rank, local_rank = setup_distributed()
    if config.batch_size % world:
        raise ValueError(f'batch size {config.batch_size} is not a multiple of the world '
                         f'size {world}')
    out = Path(out)
    device = torch.device((f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu')
                          if config.device == 'auto' else config.device)
    torch.manual_seed(config.seed)
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = student_from_teacher(teacher, config.student_upsample).to(device).train()
    if config.student_init:
        _load_student(student, config.student_init)
    if config.train == 'mask':  # the student's class path is the teacher's: keep it exact
        student.requires_grad_(False)
        student.mask_mlp.requires_grad_(True)
        student.mask_head.requires_grad_(True)  # the sub-queries of a 'subpatch' head
    forward = student if world == 1 else torch.nn.parallel.DistributedDataParallel(
        student, device_ids=[local_rank] if device.type == 'cuda' else None)
    wants_validation = config.eval_synthetic > 0 or bool(config.eval_coco)
    validation = None
    if rank == 0 and wants_validation:
        from training.periodic_eval import ValidationSet

        validation = ValidationSet(
            student.config, config.eval_images if config.eval_coco else config.eval_synthetic,
            coco_paths=config.eval_coco, seed=config.eval_seed,
            size=tuple(student.config.img_size))
    data = UnlabelledImages(config.images, student.config.img_size, config.seed,
                            config.video_stride)
    optimizer = build_optimizer(student, config.lr, config.weight_decay, config.layer_decay)
    scheduler = build_scheduler(optimizer, config.steps, config.warmup, 0)
    amp = config.amp if device.type == 'cuda' else 'none'
    scaler = torch.amp.GradScaler('cuda', enabled=amp == 'fp16')
    start = 0
    if resume:
        start = load_resume(resume, student, student.config, optimizer, scheduler, scaler,
                            None, device)
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    log = MetricLog(out, main)
    elapsed, started = previous_elapsed(out / 'metrics.csv', start), time.monotonic()
    dtype = torch.float16 if amp == 'fp16' else torch.bfloat16
    losses: list[float] = []
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps,
               disable=not (progress and main), dynamic_ncols=True, desc='distill')
    for step in bar:
        images = data.batch(step, config.batch_size, rank, world).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=amp != 'none'):
            with torch.no_grad():
                target = teacher(images)
            parts = distill_loss(forward(images), target, config.temperature,
                                 config.class_weight, config.dice_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts['loss']).backward()  # parts become floats below
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            student.parameters(), config.grad_clip if config.grad_clip > 0 else float('inf'))
        lr = optimizer.param_groups[-1]['lr']
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        parts = _mean_over_processes(parts, world)
        loss = parts['loss']
        losses.append(loss)
        bar.set_postfix(loss=f'{loss:.4f}')
        done = step + 1
        checkpoint = config.checkpoint_every > 0 and done % config.checkpoint_every == 0
        if done % config.log_every == 0 or done in (config.steps, start + 1) or checkpoint:
            log.log(done, {**parts,
                           'grad_norm': float(grad_norm), 'lr_head': lr,
                           'elapsed_s': elapsed + time.monotonic() - started})
        if checkpoint and done != config.steps and main:
            save_all(out, done, student, optimizer, scheduler, scaler, config)
            if validation is not None:
                log.log(done, validation(student, device), 'eval.csv')
    bar.close()
    if config.steps > start and main:
        save_all(out, config.steps, student, optimizer, scheduler, scaler, config)
        save_checkpoint(student, out / 'model.safetensors',
                        {'step': config.steps, 'distilled_from': config.teacher})
        if validation is not None:
            log.log(config.steps, validation(student, device), 'eval.csv')
    log.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {'step': max(start, config.steps), 'losses': losses, 'out': out, 'student': student}


def _load_student(student: TokenMask, path: str) -> None:
    """The weights of an earlier student of this teacher (same config), e.g. to continue a
    ``--train mask`` stage with ``--train all``."""
    from tokenmask_ros.model import load_checkpoint

    earlier = load_checkpoint(path)
    if earlier.config.to_dict() != student.config.to_dict():
        raise ValueError(f'--student-init {path}: not a student of this teacher (its model '
                         'config differs from the student the teacher makes)')
    student.load_state_dict(earlier.state_dict())


def _mean_over_processes(parts: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """The loss parts as floats, averaged over the processes of a DDP run (for the log)."""
    values = torch.stack([v.detach().float() for v in parts.values()])
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    return dict(zip(parts, values.tolist(), strict=True))
