"""safetensors checkpoints: bit-exact round trips and clear refusals of bad files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from tokenmask_ros.model import (
    CheckpointError,
    ClassInfo,
    TokenMaskConfig,
    build_model,
    load_checkpoint,
    load_config,
    save_checkpoint,
)
from tokenmask_ros.model.checkpoint import tensor_digest

CLASSES = (ClassInfo('floor', False, (128, 64, 128)), ClassInfo('wall', False, (70, 70, 70)),
           ClassInfo('disc', True, (220, 20, 60)))


@pytest.fixture(params=['tokenmask', 'eomt'])
def model(request):
    torch.manual_seed(4)
    head, upsample = (request.param, 'logit' if request.param == 'tokenmask' else 'feature')
    config = TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=(32, 48), embed_dim=32,
                             depth=2, num_heads=2, num_queries=4, num_query_blocks=1,
                             num_classes=3, classes=CLASSES, head=head, upsample=upsample)
    return build_model(config).eval()


@pytest.fixture()
def saved(model, tmp_path):
    return save_checkpoint(model, tmp_path / 'model.safetensors')


def test_round_trip_is_bit_exact_and_keeps_config_and_classes(model, saved):
    loaded = load_checkpoint(saved)
    assert loaded.config == model.config
    assert loaded.config.classes == CLASSES
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    images = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(images).mask_logits, loaded(images).mask_logits)
    assert load_config(saved) == model.config


def test_save_is_atomic_and_leaves_no_temporary_files(model, tmp_path):
    target = tmp_path / 'nested' / 'model.safetensors'
    save_checkpoint(model, target)
    save_checkpoint(model, target)  # overwriting is fine
    assert sorted(p.name for p in target.parent.iterdir()) == ['model.safetensors']


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint(tmp_path / 'nope.safetensors')


@pytest.mark.parametrize('keep', [0.0, 0.01, 0.5, 0.99])
def test_truncated_file_is_refused(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=str(saved.name)):
        load_checkpoint(saved)


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / 'other.safetensors'
    save_file({'weight': torch.zeros(3)}, str(path), metadata={'format': 'pt'})
    with pytest.raises(CheckpointError, match='not a tokenmask checkpoint'):
        load_checkpoint(path)


def test_pickle_file_is_refused_without_unpickling(tmp_path):
    path = tmp_path / 'model.pt'
    torch.save({'weight': torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match='not a readable safetensors file'):
        load_checkpoint(path)


def _rewrite_header(path, edit):
    """Apply ``edit`` to the JSON header of a safetensors file, keeping the data section."""
    data = path.read_bytes()
    (length,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b' ' * (-len(encoded) % 8)
    path.write_bytes(struct.pack('<Q', len(encoded)) + encoded + data[8 + length:])


def test_tampered_weights_are_detected_by_the_checksum(saved):
    data = bytearray(saved.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='checksum mismatch'):
        load_checkpoint(saved)


def test_tampered_config_is_refused(saved):
    def change_classes(header):
        config = json.loads(header['__metadata__']['config'])
        config['num_classes'] = 5
        config['classes'] = []
        header['__metadata__']['config'] = json.dumps(config)

    _rewrite_header(saved, change_classes)
    with pytest.raises(CheckpointError, match=r'wrong shape.*class_head'):
        load_checkpoint(saved)


def test_invalid_config_json_is_refused(saved):
    _rewrite_header(saved, lambda h: h['__metadata__'].update(config='{"head": "fpn"'))
    with pytest.raises(CheckpointError, match='unusable model config'):
        load_checkpoint(saved)


def test_newer_format_version_is_refused(saved):
    _rewrite_header(saved, lambda h: h['__metadata__'].update(format_version='99'))
    with pytest.raises(CheckpointError, match='format version'):
        load_checkpoint(saved)


def _save_with_config(model, path, **changes):
    """A real checkpoint (valid tensor checksum) whose metadata config carries ``changes``,
    as an attacker could write it without going through TokenMaskConfig."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = {**model.config.to_dict(), **changes}
    save_file(state, str(path), metadata={
        'format': 'tokenmask', 'format_version': '1', 'config': json.dumps(config),
        'sha256': tensor_digest(state)})
    return path


@pytest.mark.parametrize(('kwargs', 'named'), [
    ({'checkpoint_path': '/etc/passwd'}, 'checkpoint_path'),
    ({'pretrained_cfg_overlay': {'file': '/etc/passwd'}}, 'pretrained_cfg_overlay'),
    ({'reg_tokens': 0, 'pretrained': True}, 'pretrained'),
    ({'reg_tokens': '4'}, 'reg_tokens'),
])
def test_backbone_kwargs_outside_the_allow_list_are_refused(model, tmp_path, kwargs, named):
    path = _save_with_config(model, tmp_path / 'hostile.safetensors', backbone_kwargs=kwargs)
    with pytest.raises(CheckpointError, match=f"unusable model config.*'{named}'"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=f"'{named}'"):
        TokenMaskConfig(**{**model.config.__dict__, 'backbone_kwargs': kwargs})


@pytest.mark.parametrize('backbone', ['hf-hub:timm/vit_tiny_patch16_224', 'local-dir:/etc'])
def test_backbone_sources_other_than_the_timm_registry_are_refused(model, tmp_path, backbone):
    path = _save_with_config(model, tmp_path / 'hostile.safetensors', backbone=backbone)
    with pytest.raises(CheckpointError, match='not a timm model name'):
        load_checkpoint(path)


def test_allowed_backbone_kwargs_build_the_matching_vit(tmp_path):
    config = TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=(32, 32), embed_dim=32,
                             depth=2, num_heads=2, num_queries=4, num_query_blocks=1,
                             num_classes=3, backbone_kwargs={'reg_tokens': 2, 'mlp_ratio': 2.0})
    loaded = load_checkpoint(save_checkpoint(build_model(config), tmp_path / 'm.safetensors'))
    assert loaded.backbone.num_reg_tokens == 2
    assert loaded.backbone.blocks[0].mlp.fc1.out_features == 64
