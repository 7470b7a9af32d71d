"""The optional per-token class loss: targets, loss values, hooks, training and resume."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from test_train import TINY

from tokenmask_ros.model import TokenMaskConfig, build_model
from training.aux_semantic import (
    SemanticAuxiliary,
    soft_token_loss,
    token_class_fractions,
)
from training.train_config import load_train_config
from training.trainer import train


def test_token_fractions_count_pixels_per_class():
    masks = torch.zeros(2, 32, 48, dtype=torch.bool)
    masks[0, :16, :8] = True       # class 2 covers half of token (0, 0)
    masks[1, :16, 8:16] = True     # class 0 the other half
    masks[1, 16:, 32:] = True      # and all of token (1, 2)
    fractions = token_class_fractions(masks, torch.tensor([2, 0]), 3, 16)
    assert fractions.shape == (3, 2, 3)
    assert fractions[2, 0, 0] == pytest.approx(0.5) and fractions[0, 0, 0] == pytest.approx(0.5)
    assert fractions[0, 1, 2] == pytest.approx(1.0)
    assert float(fractions.sum()) == pytest.approx(2.0)  # two fully covered tokens in all
    empty = token_class_fractions(masks[:0], torch.zeros(0, dtype=torch.long), 3, 16)
    assert empty.shape == (3, 2, 3) and float(empty.sum()) == 0


def test_soft_loss_is_cross_entropy_and_skips_uncovered_tokens():
    fractions = torch.zeros(1, 3, 1, 2)
    fractions[0, 1, 0, 0] = 1.0          # token 0: class 1; token 1: padding (skipped)
    uniform = torch.zeros(1, 2, 3)
    assert float(soft_token_loss(uniform, fractions)) == pytest.approx(math.log(3))
    confident = torch.tensor([[[-9.0, 9.0, -9.0], [9.0, -9.0, -9.0]]])
    assert float(soft_token_loss(confident, fractions)) < 1e-6
    wrong = torch.tensor([[[9.0, -9.0, -9.0], [0.0, 0.0, 0.0]]])
    assert float(soft_token_loss(wrong, fractions)) > 10
    nothing = soft_token_loss(uniform.requires_grad_(), torch.zeros(1, 3, 1, 2))
    assert float(nothing.detach()) == 0 and nothing.requires_grad


def test_auxiliary_reads_tokens_through_hooks_and_learns():
    torch.manual_seed(0)
    model = build_model(TokenMaskConfig(backbone='vit_tiny_patch16_224', embed_dim=32, depth=4,
                                        num_heads=2, img_size=32, num_queries=4,
                                        num_query_blocks=2, num_classes=3))
    keys_before = set(model.state_dict())
    aux = SemanticAuxiliary(model, 3)
    assert set(model.state_dict()) == keys_before  # never saved with the model
    with pytest.raises(RuntimeError):
        aux.loss([])
    images = torch.rand(2, 3, 32, 32)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, :, :16] = True
    targets = [{'masks': torch.stack([m, ~m]), 'labels': torch.tensor([0, 2])} for m in masks]
    optimizer = torch.optim.AdamW([*model.parameters(), *aux.parameters()], lr=3e-3)
    losses = []
    for _ in range(25):
        model(images)
        loss = aux.loss(targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        model(images)  # an evaluation pass is not captured
    with pytest.raises(RuntimeError):
        aux.loss(targets)
    model.train()
    aux.remove()
    model(images)
    with pytest.raises(RuntimeError):
        aux.loss(targets)


def test_training_with_auxiliary_loss_logs_it_and_resumes_exactly(tmp_path):
    config = load_train_config(None, [*TINY, 'optim.lr=1e-3', 'optim.max_steps=4',
                                      'checkpoint_every=2', 'optim.aux_semantic_weight=1.0'])
    straight = train(config, tmp_path / 'a', progress=False)
    checkpoint = tmp_path / 'a/checkpoints/step_000002'
    assert set(load_file(str(checkpoint / 'aux_semantic.safetensors'))) >= {'heads.0.1.weight'}
    header = (tmp_path / 'a/metrics.csv').read_text().splitlines()[0].split(',')
    assert 'loss_aux' in header
    resumed = train(config, tmp_path / 'b', resume=str(checkpoint), progress=False)
    # deterministic=true holds for the run only (a leak once changed FLOP counts elsewhere)
    assert not torch.are_deterministic_algorithms_enabled()
    assert resumed['losses'] == pytest.approx(straight['losses'][2:], rel=1e-5)
    assert not (tmp_path / 'a/model.safetensors').read_bytes().count(b'heads.0')
