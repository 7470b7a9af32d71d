"""TokenMask and the EoMT baseline in pure PyTorch (no ROS imports).

Public API::

    from tokenmask_ros.model import TokenMaskConfig, build_model, save_checkpoint, load_checkpoint
"""

from tokenmask_ros.model.checkpoint import (
    CheckpointError,
    load_backbone_weights,
    load_checkpoint,
    load_config,
    save_checkpoint,
)
from tokenmask_ros.model.config import PRESETS, BackbonePreset, ClassInfo, TokenMaskConfig
from tokenmask_ros.model.tokenmask import SegmentationOutput, TokenMask, build_model

__all__ = [
    'PRESETS',
    'BackbonePreset',
    'CheckpointError',
    'ClassInfo',
    'SegmentationOutput',
    'TokenMask',
    'TokenMaskConfig',
    'build_model',
    'load_backbone_weights',
    'load_checkpoint',
    'load_config',
    'save_checkpoint',
]
