"""Training configuration: :class:`TrainConfig` (defaults < YAML file < ``a.b=value``
overrides) and the :class:`TokenMaskConfig` of the model it trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokenmask_ros.model.config import TokenMaskConfig


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

