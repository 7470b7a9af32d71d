"""Training loss: Hungarian matching, point-sampled mask losses, no-object weighting, deep
supervision, and that sampling low-resolution logits is sampling their bilinear upsampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenmask_ros.model import TokenMaskConfig, build_model
from tokenmask_ros.model.tokenmask import SegmentationOutput
from training.losses import (
    TARGET_MODE,
    HungarianMatcher,
    MaskClassificationLoss,
    SetCriterion,
    point_sample,
    uncertain_points,
)

NUM_CLASSES = 3
LOW, SCALE = 16, 4  # 16x16 mask logits against 64x64 targets (output stride 4)

# Rectangles on the 16x16 logit grid: (top, left, bottom, right), disjoint.
BOXES = [(0, 0, 8, 8), (0, 8, 6, 16), (8, 2, 16, 10), (10, 11, 15, 15)]
# Full-width / full-height bands: no corners, which bilinearly interpolated low-resolution
# logits round off (their zero level set is a hyperbola there), so a low-resolution
# prediction of a band can be perfect at full resolution.
ROWS = [(0, 0, 5, 16), (5, 0, 9, 16), (9, 0, 16, 16)]
COLUMNS = [(0, 0, 16, 6), (0, 6, 16, 16)]


def low_res_masks(boxes) -> torch.Tensor:
    masks = torch.zeros(len(boxes), LOW, LOW, dtype=torch.bool)
    for mask, (top, left, bottom, right) in zip(masks, boxes, strict=True):
        mask[top:bottom, left:right] = True
    return masks


def make_target(boxes, labels) -> dict[str, torch.Tensor]:
    """Full-resolution bool masks: the low-res rectangles scaled by SCALE (pixel-exact)."""
    masks = low_res_masks(boxes).repeat_interleave(SCALE, 1).repeat_interleave(SCALE, 2)
    return {'masks': masks, 'labels': torch.tensor(labels, dtype=torch.long)}


def make_prediction(targets, assignments, num_queries=6, magnitude=50.0, wrong=False):
    """Queries ``assignments[b][i]`` predict target i of image b exactly (or, with ``wrong``,
    its complement and another class); the others predict "no object" with a random mask."""
    generator = torch.Generator().manual_seed(0)
    batch = len(targets)
    class_logits = torch.zeros(batch, num_queries, NUM_CLASSES + 1)
    class_logits[..., -1] = magnitude
    mask_logits = torch.randn(batch, num_queries, LOW, LOW, generator=generator)
    for image, (target, queries) in enumerate(zip(targets, assignments, strict=True)):
        low = F.avg_pool2d(target['masks'].float().unsqueeze(1), SCALE).squeeze(1) > 0.5
        for index, query in enumerate(queries):
            label = int(target['labels'][index])
            if wrong:
                label = (label + 1) % NUM_CLASSES
            class_logits[image, query] = 0
            class_logits[image, query, label] = magnitude
            sign = -1.0 if wrong else 1.0
            mask_logits[image, query] = sign * magnitude * (2 * low[index].float() - 1)
    return SegmentationOutput(class_logits, mask_logits)


@pytest.fixture()
def batch():
    """Two images (3 and 2 targets, a repeated label) and the queries predicting them."""
    targets = [make_target(ROWS, [1, 1, 2]), make_target(COLUMNS, [0, 2])]
    assignments = [[4, 0, 2], [5, 1]]
    return targets, assignments


# --- matching -------------------------------------------------------------------------

def test_matcher_recovers_the_permutation(batch):
    targets, assignments = batch
    torch.manual_seed(0)
    output = make_prediction(targets, assignments)
    matches = HungarianMatcher()(output.class_logits, output.mask_logits, targets)
    for (query_index, target_index), expected in zip(matches, assignments, strict=True):
        assert len(query_index) == len(expected)
        # Sorted by query; labels 1, 1 of image 0 are told apart by their masks only.
        assert torch.equal(query_index, query_index.sort().values)
        assert dict(zip(target_index.tolist(), query_index.tolist(), strict=True)) == dict(
            enumerate(expected))


def test_matcher_handles_empty_images_and_more_targets_than_queries():
    torch.manual_seed(1)
    targets = [make_target([], []), make_target(BOXES, [0, 1, 2, 0])]
    output = SegmentationOutput(torch.randn(2, 3, NUM_CLASSES + 1), torch.randn(2, 3, LOW, LOW))
    matches = HungarianMatcher(num_points=256)(*output, targets)
    assert [len(query) for query, _ in matches] == [0, 3]
    assert len(set(matches[1][1].tolist())) == 3


# --- the loss -------------------------------------------------------------------------

def test_loss_is_near_zero_for_a_perfect_prediction_and_large_for_a_wrong_one(batch):
    targets, assignments = batch
    criterion = MaskClassificationLoss()
    torch.manual_seed(0)
    perfect = criterion(make_prediction(targets, assignments, magnitude=200.0), targets)
    torch.manual_seed(0)
    wrong = criterion(make_prediction(targets, assignments, wrong=True), targets)
    assert perfect['loss'] < 0.02
    assert perfect['loss_class'] < 1e-6
    # Wrong: the matcher falls back on the random-mask queries, still a costly match.
    assert wrong['loss'] > 20 and wrong['loss'] > 1000 * perfect['loss']
    for term in ('class', 'mask', 'dice'):
        assert wrong[f'loss_{term}'] > 1 and wrong[f'loss_{term}'] > 100 * perfect[f'loss_{term}']
    for losses in (perfect, wrong):
        total = losses['loss_class'] + losses['loss_mask'] + losses['loss_dice']
        torch.testing.assert_close(total, losses['loss'].detach())


def test_empty_targets_give_the_class_loss_only_with_no_object_targets():
    torch.manual_seed(2)
    class_logits = torch.randn(2, 5, NUM_CLASSES + 1, requires_grad=True)
    mask_logits = torch.randn(2, 5, LOW, LOW, requires_grad=True)
    targets = [make_target([], []), make_target([], [])]
    losses = MaskClassificationLoss()(SegmentationOutput(class_logits, mask_logits), targets)
    assert losses['loss_mask'] == 0 and losses['loss_dice'] == 0
    # Every query targets "no object"; its 0.1 weight cancels in the weighted mean.
    no_object = torch.full((2, 5), NUM_CLASSES)
    expected = 2.0 * F.cross_entropy(class_logits.transpose(1, 2), no_object)
    torch.testing.assert_close(losses['loss'], expected)
    losses['loss'].backward()
    assert class_logits.grad.abs().sum() > 0
    assert mask_logits.grad is not None and mask_logits.grad.abs().sum() == 0


def test_unmatched_queries_weigh_a_tenth(batch):
    targets, assignments = batch
    output = make_prediction(targets, assignments, magnitude=2.0)
    criterion = MaskClassificationLoss(num_points=256)
    matches = criterion.matcher(*output, targets)
    terms = criterion.layer_losses(*output, targets, matches, torch.tensor(5.0))
    wanted = torch.full((2, 6), NUM_CLASSES)
    for image, queries in enumerate(assignments):
        wanted[image, queries] = targets[image]['labels']
    per_query = F.cross_entropy(output.class_logits.transpose(1, 2), wanted, reduction='none')
    weights = torch.where(wanted == NUM_CLASSES, 0.1, 1.0)
    torch.testing.assert_close(terms['class'], (weights * per_query).sum() / weights.sum())


def test_mask_losses_are_normalised_by_the_given_number_of_masks(batch):
    targets, assignments = batch
    output = make_prediction(targets, assignments, magnitude=1.0)
    criterion = MaskClassificationLoss(num_points=512)
    results = []
    for num_masks in (None, 10.0, 0.0):
        torch.manual_seed(3)
        results.append(criterion(output, targets, num_masks=num_masks))
    default, ten, zero = results
    torch.testing.assert_close(ten['loss_mask'] * 2, default['loss_mask'])  # 5 masks here
    torch.testing.assert_close(zero['loss_dice'], default['loss_dice'] * 5)  # clamped to 1
    torch.testing.assert_close(ten['loss_class'], default['loss_class'])


def test_deep_supervision_sums_each_prediction_matched_separately(batch):
    targets, assignments = batch
    outputs = [make_prediction(targets, assignments, wrong=True),
               make_prediction(targets, [[0, 1, 2], [3, 4]], magnitude=3.0),
               make_prediction(targets, assignments)]
    criterion = MaskClassificationLoss(num_points=1024)
    torch.manual_seed(4)
    summed = criterion(outputs, targets)
    torch.manual_seed(4)  # same random stream, consumed in the same order
    singles = [criterion(output, targets) for output in outputs]
    torch.testing.assert_close(summed['loss'], sum(single['loss'] for single in singles))
    for layer, single in enumerate(singles):
        for term in ('class', 'mask', 'dice'):
            torch.testing.assert_close(summed[f'loss_{term}_{layer}'], single[f'loss_{term}'])
    assert f'loss_class_{len(outputs)}' not in summed
    assert summed['loss_mask_0'] > 100 * summed['loss_mask_2']  # wrong vs perfect layer


def test_a_few_steps_on_a_learnable_tensor_decrease_the_loss(batch):
    targets, _ = batch
    torch.manual_seed(5)
    class_logits = torch.zeros(2, 6, NUM_CLASSES + 1, requires_grad=True)
    mask_logits = (0.1 * torch.randn(2, 6, LOW, LOW)).requires_grad_()
    optimiser = torch.optim.Adam([class_logits, mask_logits], lr=0.2)
    criterion = MaskClassificationLoss(num_points=2048)
    history = []
    for _ in range(30):
        loss = criterion(SegmentationOutput(class_logits, mask_logits), targets)['loss']
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert history[-1] < 0.25 * history[0]


def test_a_few_steps_of_the_tiny_model_decrease_the_loss():
    torch.manual_seed(6)
    config = TokenMaskConfig(backbone='vit_tiny_patch16_224', img_size=64, embed_dim=32,
                             depth=2, num_heads=2, num_queries=6, num_query_blocks=1,
                             num_classes=NUM_CLASSES)
    model = build_model(config).train()
    images = torch.rand(2, 3, 64, 64)
    targets = [make_target(BOXES[:2], [0, 1]), make_target(BOXES[1:], [2, 0, 1])]
    criterion = MaskClassificationLoss(num_points=2048)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(25):
        outputs = model(images, return_intermediate=True)
        assert len(outputs) == config.num_query_blocks + 1
        losses = criterion(outputs, targets)
        optimiser.zero_grad()
        losses['loss'].backward()
        optimiser.step()
        history.append(losses['loss'].item())
    assert sum(history[-3:]) < 0.5 * sum(history[:3])


def test_half_precision_inputs_are_computed_in_float32(batch):
    targets, assignments = batch
    output = make_prediction(targets, assignments, magnitude=3.0)
    criterion = MaskClassificationLoss(num_points=1024)
    torch.manual_seed(7)
    reference = criterion(output, targets)
    torch.manual_seed(7)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        half = criterion(SegmentationOutput(*(t.bfloat16() for t in output)), targets)
    assert half['loss'].dtype == torch.float32
    torch.testing.assert_close(half['loss'], reference['loss'], rtol=0.05, atol=0.05)


# --- point sampling on low-resolution logits ------------------------------------------

@pytest.mark.parametrize('scale', [1, 2, 3, 4, 16])
def test_sampling_at_pixel_centres_equals_bilinear_upsampling(scale):
    torch.manual_seed(8)
    low = torch.randn(3, 1, 5, 7, dtype=torch.float64)
    height, width = 5 * scale, 7 * scale
    ys, xs = torch.meshgrid((torch.arange(height, dtype=torch.float64) + 0.5) / height,
                            (torch.arange(width, dtype=torch.float64) + 0.5) / width,
                            indexing='ij')
    centres = torch.stack((xs, ys), -1).reshape(1, -1, 2).expand(3, -1, -1)
    upsampled = F.interpolate(low, scale_factor=scale, mode='bilinear', align_corners=False)
    torch.testing.assert_close(point_sample(low, centres), upsampled.flatten(2))


@pytest.mark.parametrize('scale', [3, 5])
def test_sampling_low_res_equals_sampling_the_upsampled_map_anywhere(scale):
    """For odd factors the upsampled map is the low-res bilinear surface, sampled exactly."""
    torch.manual_seed(9)
    low = torch.randn(4, 1, 6, 5, dtype=torch.float64)
    points = torch.rand(4, 1000, 2, dtype=torch.float64)
    upsampled = F.interpolate(low, scale_factor=scale, mode='bilinear', align_corners=False)
    torch.testing.assert_close(point_sample(low, points), point_sample(upsampled, points))


def test_loss_on_low_res_logits_equals_loss_on_upsampled_logits(batch):
    targets, _ = batch
    torch.manual_seed(10)  # smooth random logits: no plateaus, so no ties in the top-k
    low = SegmentationOutput(torch.randn(2, 6, NUM_CLASSES + 1, dtype=torch.float64),
                             torch.randn(2, 6, LOW, LOW, dtype=torch.float64))
    # 16x16 -> 48x48 (odd factor 3): both maps are the same surface over the 64x64 targets.
    upsampled = SegmentationOutput(low.class_logits, F.interpolate(
        low.mask_logits, scale_factor=3, mode='bilinear', align_corners=False))
    criterion = MaskClassificationLoss(num_points=4096)
    torch.manual_seed(10)
    from_low = criterion(low, targets)
    torch.manual_seed(10)
    from_upsampled = criterion(upsampled, targets)
    for key in ('loss', 'loss_class', 'loss_mask', 'loss_dice'):
        torch.testing.assert_close(from_low[key], from_upsampled[key])


def test_targets_are_read_as_the_label_of_the_pixel_under_each_point():
    torch.manual_seed(12)
    masks = torch.rand(3, 1, 40, 24) > 0.5
    points = torch.rand(3, 500, 2, dtype=torch.float64)
    rows, columns = (points[..., 1] * 40).long(), (points[..., 0] * 24).long()
    expected = masks[torch.arange(3)[:, None], 0, rows, columns].double()
    torch.testing.assert_close(point_sample(masks.double(), points, TARGET_MODE)[:, 0], expected)


def test_importance_sampling_favours_uncertain_points():
    """Logits grow from 0 at the left edge: the important 3/4 of the points are the quarter
    of the candidates closest to it, so about 0.75 + 0.25 * 0.25 of them land in x < 1/4."""
    logits = (10.0 * torch.arange(8.0)).expand(2, 8, 8)
    torch.manual_seed(11)
    points = uncertain_points(logits, 1000, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert points.shape == (2, 1000, 2)
    assert ((points >= 0) & (points <= 1)).all()
    near_left = (points[..., 0] < 2 / 8).float().mean()
    assert near_left > 0.75  # uniform sampling: 0.25


def test_set_criterion_is_the_same_loss():
    assert SetCriterion is MaskClassificationLoss
