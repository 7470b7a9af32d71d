"""Pretrained ViT weights from a local safetensors file load into the patch-16 grid."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from tokenmask_ros.model import TokenMaskConfig, build_model
from tokenmask_ros.model.checkpoint import load_backbone_weights

SIZES = {'embed_dim': 32, 'depth': 2, 'num_heads': 2}


def test_dinov2_patch14_weights_are_resampled_to_patch16_once(tmp_path):
    """A DINOv2-layout file (patch 14, 5x5 grid) loads into a 64x64 patch-16 model (4x4)."""
    torch.manual_seed(5)
    source = timm.create_model('vit_small_patch14_reg4_dinov2', pretrained=False, img_size=70,
                               num_classes=0, **SIZES)
    path = tmp_path / 'dinov2.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_model(TokenMaskConfig(backbone='vit_small_patch14_reg4_dinov2', img_size=64,
                                        num_queries=4, num_query_blocks=1, num_classes=3,
                                        **SIZES))
    load_backbone_weights(model.backbone, path)
    backbone = model.backbone
    assert backbone.patch_embed.proj.weight.shape == (32, 3, 16, 16)
    assert backbone.pos_embed.shape == (1, 16, 32)
    assert torch.equal(backbone.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert torch.equal(backbone.reg_token, source.reg_token)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(1, 3, 64, 64)).mask_logits).all()


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / 'resnet.safetensors'
    save_file({'conv1.weight': torch.zeros(8, 3, 7, 7)}, str(path))
    model = build_model(TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=32,
                                        num_queries=2, num_query_blocks=1, num_classes=2,
                                        **SIZES))
    with pytest.raises(ValueError, match='do not fit'):
        load_backbone_weights(model.backbone, path)


def test_backbone_of_a_tokenmask_checkpoint_loads_into_another_grid_and_head(tmp_path):
    """A trained 48x64 TokenMask checkpoint (3x4 grid) gives its backbone to a 64x64 EoMT
    model with other classes: the blocks are copied, the position embedding is resampled
    from the non-square grid, and nothing of the old heads is used."""
    from tokenmask_ros.model import save_checkpoint

    torch.manual_seed(2)
    common = {'backbone': 'vit_tiny_patch16_224', 'num_query_blocks': 1, **SIZES}
    source = build_model(TokenMaskConfig(img_size=(48, 64), num_queries=3, num_classes=4,
                                         **common))
    path = save_checkpoint(source, tmp_path / 'trained.safetensors')
    target = build_model(TokenMaskConfig(img_size=64, num_queries=5, num_classes=2,
                                         head='eomt', upsample='feature', **common))
    load_backbone_weights(target.backbone, path)
    assert torch.equal(target.backbone.blocks[1].attn.qkv.weight,
                       source.backbone.blocks[1].attn.qkv.weight)
    assert target.backbone.pos_embed.shape == (1, 1 + 16, 32)
    # The class token's embedding is kept; the grid part is a resampling, not a copy.
    assert torch.equal(target.backbone.pos_embed[:, 0], source.backbone.pos_embed[:, 0])
    grid = source.backbone.pos_embed[0, 1:].reshape(3, 4, 32)
    resampled = target.backbone.pos_embed[0, 1:].reshape(4, 4, 32)
    assert not torch.equal(resampled[:3], grid)
    assert torch.allclose(resampled.mean((0, 1)), grid.mean((0, 1)), atol=0.05)


def test_tokenmask_checkpoint_of_another_width_is_refused(tmp_path):
    from tokenmask_ros.model import save_checkpoint

    source = build_model(TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=32,
                                         num_queries=2, num_query_blocks=1, num_classes=2,
                                         embed_dim=48, depth=2, num_heads=2))
    path = save_checkpoint(source, tmp_path / 'wide.safetensors')
    model = build_model(TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=32,
                                        num_queries=2, num_query_blocks=1, num_classes=2,
                                        **SIZES))
    with pytest.raises(ValueError, match='do not fit'):
        load_backbone_weights(model.backbone, path)
