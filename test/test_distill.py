"""Label-free distillation of an EoMT-head teacher into a TokenMask student (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tokenmask_ros.image_io import write_rgb
from tokenmask_ros.model import (
    SegmentationOutput,
    TokenMaskConfig,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from training.distill import main as distill_main
from training.distiller import DistillConfig, distill, distill_loss, student_from_teacher


def tiny_teacher(output_stride: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    config = TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=32, embed_dim=32,
                             depth=2, num_heads=2, num_queries=4, num_query_blocks=1,
                             num_classes=3, head='eomt', upsample='feature',
                             output_stride=output_stride)
    return build_model(config).eval()


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):  # different sizes: the letterbox must fit them to 32x32
        write_rgb(folder / f'img{index}.png',
                  rng.integers(0, 256, (24 + 8 * index, 40, 3), dtype=np.uint8))
    return folder


def test_student_starts_from_the_teacher_without_upscale_blocks():
    teacher = tiny_teacher()
    assert any('upscale' in k for k in teacher.state_dict())
    student = student_from_teacher(teacher)
    assert student.config.head == 'tokenmask' and student.config.upsample == 'logit'
    assert student.config.output_stride == teacher.config.output_stride
    state, source = student.state_dict(), teacher.state_dict()
    assert not any('upscale' in k or k.startswith('mask_head.') for k in state)
    assert set(state) == {k for k in source if not k.startswith('mask_head.')}
    for key in state:
        assert torch.equal(state[key], source[key]), key
    assert {'queries.weight', 'class_head.weight', 'mask_mlp.0.weight',
            'backbone.pos_embed'} <= set(state)


def test_loss_is_zero_where_the_heads_agree_and_positive_otherwise():
    images = torch.rand(2, 3, 32, 32)
    # Stride 16 = patch size: EoMT has no ScaleBlocks, so both heads compute the same logits.
    same = tiny_teacher(output_stride=16)
    with torch.no_grad():
        parts = distill_loss(student_from_teacher(same)(images), same(images))
    assert abs(float(parts['loss'])) < 1e-5
    teacher = tiny_teacher(output_stride=4)
    with torch.no_grad():
        parts = distill_loss(student_from_teacher(teacher)(images), teacher(images))
        other = distill_loss(tiny_teacher(16, seed=1)(images), same(images))
    assert float(parts['loss_mask']) > 1e-4 and float(parts['loss_class']) < 1e-6
    assert float(other['loss_class']) > 1e-4 and float(other['loss_mask']) > 1e-4


def test_class_weight_scales_only_the_class_term():
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        student, teacher = tiny_teacher(16, seed=1)(images), tiny_teacher(16)(images)
    plain, heavy = distill_loss(student, teacher), distill_loss(student, teacher,
                                                                class_weight=5.0)
    assert torch.equal(plain['loss_class'], heavy['loss_class'])
    assert torch.equal(plain['loss_mask'], heavy['loss_mask'])
    assert torch.allclose(heavy['loss'], 5 * heavy['loss_class'] + heavy['loss_mask'])
    assert float(heavy['loss'] - plain['loss']) > 1e-4


def test_dice_term_weighs_a_small_object_like_a_large_one():
    """A student that misses a small object entirely: the pixel-mean BCE barely notices
    (few pixels), the Dice term counts that query fully."""
    classes = torch.zeros(1, 2, 3)
    classes[..., 0] = 5.0  # both queries confidently an object
    teacher = torch.full((1, 2, 32, 32), -12.0)
    teacher[0, 0, :, :16] = 12.0   # a large region
    teacher[0, 1, 2:4, 2:4] = 12.0  # a 2x2 object
    student = teacher.clone()
    student[0, 1] = -12.0  # misses the small object
    target, guess = SegmentationOutput(classes, teacher), SegmentationOutput(classes, student)
    plain = distill_loss(guess, target)
    dice = distill_loss(guess, target, dice_weight=1.0)
    assert float(plain['loss_mask']) < 0.05
    assert float(dice['loss_mask']) > 0.3  # the missed query's 1 - 1/5, halved over 2 queries
    assert float(distill_loss(target, target, dice_weight=1.0)['loss_mask']) < 0.01


def test_loss_resizes_teacher_mask_logits_to_the_student():
    classes, small = torch.randn(1, 4, 4), torch.randn(1, 4, 4, 4)
    student = SegmentationOutput(torch.randn(1, 4, 4), torch.randn(1, 4, 8, 8))
    resized = torch.nn.functional.interpolate(small, (8, 8), mode='bilinear',
                                              align_corners=False)
    parts = distill_loss(student, SegmentationOutput(classes, small))
    expected = distill_loss(student, SegmentationOutput(classes, resized))
    assert torch.allclose(parts['loss'], expected['loss'])


def config(images, steps, **changes):
    values = {'teacher': 'teacher.safetensors', 'images': str(images), 'steps': steps,
              'batch_size': 2, 'lr': 1e-3, 'grad_clip': 0.0, 'checkpoint_every': 3,
              'log_every': 1, 'device': 'cpu'}
    return DistillConfig(**{**values, **changes})


def test_distillation_moves_the_student_toward_the_teacher(images, tmp_path):
    teacher = tiny_teacher()
    probe = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        target = teacher(probe)
        before = float(distill_loss(student_from_teacher(teacher)(probe), target)['loss'])
        start_masks = student_from_teacher(teacher)(probe).mask_logits
    result = distill(config(images, 25), teacher, tmp_path / 'run', progress=False)
    losses = result['losses']
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    student = load_checkpoint(tmp_path / 'run' / 'model.safetensors')
    assert student.config.head == 'tokenmask'
    with torch.no_grad():
        out = student(probe)
        after = float(distill_loss(out, target)['loss'])
    assert after < before
    assert (out.mask_logits - target.mask_logits).abs().mean() < \
        (start_masks - target.mask_logits).abs().mean()
    assert (tmp_path / 'run' / 'metrics.csv').is_file()


def test_resume_is_exact(images, tmp_path):
    teacher = tiny_teacher()
    # The straight run's step-3 checkpoint is what a run interrupted after step 3 left.
    straight = distill(config(images, 6), teacher, tmp_path / 'a', progress=False)
    resumed = distill(config(images, 6), teacher, tmp_path / 'b',
                      resume=str(tmp_path / 'a' / 'checkpoints' / 'step_000003'),
                      progress=False)
    assert len(resumed['losses']) == 3
    assert resumed['losses'] == straight['losses'][3:]
    a = load_file(str(tmp_path / 'a' / 'model.safetensors'))
    b = load_file(str(tmp_path / 'b' / 'model.safetensors'))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cli_writes_the_student_and_names_bad_input(images, tmp_path, capsys):
    teacher = save_checkpoint(tiny_teacher(), tmp_path / 'teacher.safetensors')
    code = distill_main(['--teacher', str(teacher), '--images', str(images), '--out',
                         str(tmp_path / 'run'), '--steps', '2', '--batch-size', '2',
                         '--device', 'cpu', '--no-progress'])
    assert code == 0
    assert load_checkpoint(tmp_path / 'run' / 'model.safetensors').config.head == 'tokenmask'
    code = distill_main(['--teacher', str(teacher), '--images', str(tmp_path / 'none'),
                         '--out', str(tmp_path / 'r2'), '--steps', '1', '--no-progress'])
    assert code == 2 and 'does not exist' in capsys.readouterr().err


def test_video_frames_are_used(images, tmp_path):
    import cv2

    path = images / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 5, (40, 24))
    for value in range(6):
        writer.write(np.full((24, 40, 3), 40 * value, dtype=np.uint8))
    writer.release()
    from training.distiller import UnlabelledImages

    data = UnlabelledImages(images, (32, 32), video_stride=2)
    frames = [i for i, (p, f) in enumerate(data.items) if f is not None]
    assert len(frames) == 3 and len(data) == 7
    assert data.read(frames[-1]).shape == (3, 32, 32)


def test_ddp_run_equals_one_process_with_the_whole_batch(images, tmp_path):
    """torchrun with 2 CPU processes (gloo): each distils half of every batch; the student
    ends where one process with the whole batch ends."""
    import subprocess
    import sys
    from pathlib import Path

    teacher = save_checkpoint(tiny_teacher(), tmp_path / 'teacher.safetensors')
    options = ['--teacher', str(teacher), '--images', str(images), '--steps', '3',
               '--batch-size', '4', '--lr', '1e-3', '--device', 'cpu', '--no-progress']
    assert distill_main([*options, '--out', str(tmp_path / 'one')]) == 0
    script = Path(__file__).resolve().parents[1] / 'training' / 'distill.py'
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node',
         '2', str(script), *options, '--out', str(tmp_path / 'two')],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one = load_file(str(tmp_path / 'one' / 'model.safetensors'))
    two = load_file(str(tmp_path / 'two' / 'model.safetensors'))
    start = student_from_teacher(load_checkpoint(teacher)).state_dict()
    moved = [k for k in one if not torch.equal(one[k], start[k])]
    assert moved  # the run changed the student
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert len((tmp_path / 'two' / 'metrics.csv').read_text().splitlines()) > 1


def test_validation_logs_student_pq_at_each_checkpoint(images, tmp_path):
    from tokenmask_ros.model import ClassInfo
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES

    torch.manual_seed(0)
    classes = tuple(ClassInfo(c.name, c.is_thing, tuple(c.color)) for c in SYNTHETIC_CLASSES)
    teacher = build_model(TokenMaskConfig(
        backbone='vit_tiny_patch16_224', img_size=32, embed_dim=32, depth=2, num_heads=2,
        num_queries=4, num_query_blocks=1, num_classes=len(classes), classes=classes,
        head='eomt', upsample='feature', output_stride=4)).eval()
    run = DistillConfig(teacher='t', images=str(images), steps=4, batch_size=2,
                        checkpoint_every=2, device='cpu', eval_synthetic=2)
    distill(run, teacher, tmp_path / 'run', progress=False)
    rows = (tmp_path / 'run' / 'eval.csv').read_text().splitlines()
    assert rows[0].split(',') == ['step', 'val_pq', 'val_pq_things', 'val_pq_stuff',
                                  'val_miou']
    assert [int(r.split(',')[0]) for r in rows[1:]] == [2, 4]
    assert all(0.0 <= float(v) <= 100.0 for r in rows[1:] for v in r.split(',')[1:])
    # A teacher with other classes than the validation set is refused before distilling.
    with pytest.raises(Exception, match='class'):
        distill(DistillConfig(teacher='t', images=str(images), steps=1, batch_size=2,
                              device='cpu', eval_synthetic=2),
                tiny_teacher(), tmp_path / 'bad', progress=False)


def test_mask_stage_keeps_the_teacher_classes_and_a_later_stage_continues_it(images,
                                                                             tmp_path):
    teacher = tiny_teacher()
    mask_stage = distill(DistillConfig(teacher='t', images=str(images), steps=3, batch_size=2,
                                       lr=1e-2, device='cpu', train='mask'),
                         teacher, tmp_path / 'mask', progress=False)['student']
    start = student_from_teacher(teacher).state_dict()
    after = mask_stage.state_dict()
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed and all(k.startswith('mask_mlp.') for k in changed)
    probe = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mask_stage.eval()(probe).class_logits,
                                   teacher(probe).class_logits)
    later = distill(DistillConfig(teacher='t', images=str(images), steps=1, batch_size=2,
                                  lr=0.0, device='cpu',
                                  student_init=str(tmp_path / 'mask' / 'model.safetensors')),
                    teacher, tmp_path / 'all', progress=False)['student']
    for key, value in after.items():  # lr 0: the later stage starts exactly there
        torch.testing.assert_close(later.state_dict()[key], value, msg=key)
    with pytest.raises(ValueError, match='not a student of this teacher'):
        distill(DistillConfig(teacher='t', images=str(images), steps=1, batch_size=2,
                              device='cpu', student_init=str(tmp_path / 'mask' /
                                                             'model.safetensors')),
                tiny_teacher(output_stride=8), tmp_path / 'bad', progress=False)


def test_subpatch_student_shares_the_teacher_and_its_mask_stage_trains_the_sub_queries(
        images, tmp_path):
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, 'subpatch')
    assert student.config.upsample == 'subpatch'
    source, state = teacher.state_dict(), student.state_dict()
    assert {k for k in state if k.startswith('mask_head.')} == {'mask_head.subpatch.weight'}
    for key in (k for k in state if not k.startswith('mask_head.')):
        assert torch.equal(state[key], source[key]), key
    mask_stage = distill(DistillConfig(teacher='t', images=str(images), steps=3, batch_size=2,
                                       lr=1e-2, device='cpu', train='mask',
                                       student_upsample='subpatch'),
                         teacher, tmp_path / 'mask', progress=False)['student']
    after = mask_stage.state_dict()
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    assert 'mask_head.subpatch.weight' in changed
    assert all(k.startswith(('mask_mlp.', 'mask_head.')) for k in changed)
    from tokenmask_ros.model import load_checkpoint

    saved = load_checkpoint(tmp_path / 'mask' / 'model.safetensors')
    assert saved.config.upsample == 'subpatch'
    assert torch.equal(saved.state_dict()['mask_head.subpatch.weight'],
                       after['mask_head.subpatch.weight'])
    with pytest.raises(ValueError, match="student_upsample must be 'logit' or 'subpatch'"):
        distill(DistillConfig(teacher='t', images=str(images), steps=1, batch_size=2,
                              device='cpu', student_upsample='none'),
                teacher, tmp_path / 'bad', progress=False)
