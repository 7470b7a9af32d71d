"""training/query_diagnostics.py: the best-overlapping query of each ground-truth thing, its
mask IoU and class, per size bin, on hand-built logits with known answers and end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training import query_diagnostics as qd
from training.query_stats import QueryDiagnostics, best_queries, format_summary

NAMES = ['floor', 'disc', 'box']


def _logits(*masks: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.where(m, 5.0, -5.0) for m in masks])


def test_best_query_iou_class_and_confusion_are_exact():
    big = torch.zeros(40, 40, dtype=torch.bool)
    big[:30, :30] = True                     # 900 px: bin 400-1200
    small = torch.zeros(40, 40, dtype=torch.bool)
    small[35:, 35:] = True                   # 25 px: bin 0-400
    half_small = torch.zeros(40, 40, dtype=torch.bool)
    half_small[35:, 35:38] = True            # 15 of its 25 px: IoU 0.6
    stuff = ~big
    # query 0: stuff; query 1: the big thing, says disc; query 2: part of the small thing,
    # says disc although it is a box.
    mask_logits = _logits(stuff, big, half_small)
    class_logits = torch.full((3, 4), -10.0)
    class_logits[0, 0] = 10.0
    class_logits[1, 1] = 10.0
    class_logits[2, 1], class_logits[2, 2] = 1.0, 0.0   # p(box | not no-object) = 1/(1+e)
    diagnostics = QueryDiagnostics(NAMES, thing_ids=[1, 2])
    gt_masks = torch.stack([stuff, big, small])
    diagnostics.add(class_logits, mask_logits, gt_masks, torch.tensor([0, 1, 2]))
    summary = diagnostics.summary()
    bins = {row['area']: row for row in summary['bins']}
    assert summary['things'] == 2
    assert bins['0-400']['things'] == 1 and bins['400-1200']['things'] == 1
    assert bins['0-400']['mask_iou_over_0.5'] == 1.0       # IoU 0.6
    assert bins['0-400']['class_accuracy'] == 0.0
    assert bins['0-400']['p_right_class'] == pytest.approx(1 / (1 + np.e), rel=1e-4)
    assert bins['400-1200']['class_accuracy'] == 1.0
    assert bins['>=3000']['things'] == 0 and bins['>=3000']['class_accuracy'] is None
    assert summary['classes'] == ['disc', 'box']
    assert summary['confusion'] == [[1, 0, 0], [1, 0, 0]]    # the box was called a disc
    table = format_summary(summary)
    assert 'confusion' in table and '400-1200' in table


def test_best_queries_picks_the_highest_iou():
    a = torch.zeros(8, 8, dtype=torch.bool)
    a[:4] = True
    b = torch.zeros(8, 8, dtype=torch.bool)
    b[:2] = True
    best, iou = best_queries(_logits(b, a), a[None])
    assert best.tolist() == [1] and iou.tolist() == [1.0]


def test_cli_on_a_checkpoint_counts_every_thing_of_the_scenes(tmp_path):
    from tokenmask_ros.model import TokenMaskConfig, build_model, save_checkpoint
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES, SceneGenerator

    classes = [{'name': c.name, 'is_thing': c.is_thing} for c in SYNTHETIC_CLASSES]
    torch.manual_seed(0)
    model = build_model(TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=(48, 64),
                                        num_queries=5, num_query_blocks=1, embed_dim=32,
                                        depth=2, num_heads=2, num_classes=len(classes),
                                        classes=classes))
    path = save_checkpoint(model, tmp_path / 'model.safetensors')
    out = tmp_path / 'diag.json'
    assert qd.main(['--checkpoint', str(path), '--synthetic', '3', '--seed', '4',
                    '--out', str(out), '--no-progress']) == 0
    summary = json.loads(out.read_text())
    scenes = SceneGenerator(48, 64, seed=4, stream=1)
    expected = sum(s.is_thing for i in range(3) for s in scenes.scene(i).segments)
    assert summary['things'] == expected > 0
    assert sum(row['things'] for row in summary['bins']) == expected
    assert np.sum(summary['confusion']) == expected


def test_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        qd.main(['--checkpoint', str(tmp_path / 'none.safetensors'), '--synthetic', '1'])
    assert error.value.code == 2
    assert 'does not exist' in capsys.readouterr().err
