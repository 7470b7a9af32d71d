"""Mask-classification training loss: Hungarian matching + class CE + point-sampled mask losses.

The recipe is Mask2Former's, as EoMT trains with it (see the "Training" facts): every query
predicts a class (``C`` classes + one "no object") and a mask logit map; each image's targets
are matched one-to-one to queries by the Hungarian algorithm on a class + BCE + dice cost;
matched queries learn their target's class and mask, all other queries learn "no object".

Hand-written on purpose: neither torchvision nor scipy has a set-matching segmentation loss
(scipy only solves the assignment, ``linear_sum_assignment``), so the matcher costs, the
point sampling with uncertainty-based importance and the dice/BCE point losses live here.

Masks are compared at points, never densely. A point is a normalised coordinate in
``[0, 1]^2`` of the *image*; it is read from the low-resolution mask logits (bilinear) and
from the full-resolution targets (nearest: the label of the pixel it falls in) with
``grid_sample(align_corners=False)``, so the logits never need upsampling. With
``padding_mode='border'`` the logit values are exactly those of
``F.interpolate(logits, scale_factor=s, mode='bilinear')`` at the upsampled pixel centres
(and at every point for odd ``s``), including the outer half-pixel band where the default
zero padding would pull the logits towards 0.

Targets: a list with one dict per image, ``{'masks': [N, H, W] bool/float, 'labels': [N]
long}`` at the (padded) input resolution. ``N`` may be 0 (the image then contributes to the
class loss only, every query "no object"). Crowd regions are *not* passed in: the dataset
drops crowd segments before they reach the loss (the facts' augmentation starts with "drop
crowd"), so they are neither matched nor penalised as background beyond their pixels
belonging to no target.

Everything runs in float32 (half-precision inputs are upcast and autocast is disabled), on
whatever device the predictions are on.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

Target = dict[str, torch.Tensor]
# Per image: (query indices, target indices) of the matched pairs, both long, same length.
Match = tuple[torch.Tensor, torch.Tensor]

CLASS_WEIGHT = 2.0
MASK_WEIGHT = 5.0
DICE_WEIGHT = 5.0
NO_OBJECT_WEIGHT = 0.1
NUM_POINTS = 12544  # 112 x 112
OVERSAMPLE_RATIO = 3.0
IMPORTANCE_SAMPLE_RATIO = 0.75
# Targets are hard labels: a point takes the value of the target pixel it falls in. (Bilinear
# reading, as Mask2Former does, turns a 1-pixel band along every boundary into soft labels
# that even a perfect, confident prediction pays for, linearly in its logit magnitude.)
TARGET_MODE = 'nearest'


# --- helpers ------------------------------------------------------------------------------

def _full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32/float64 are kept (tests use float64)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _autocast_off(device: torch.device):
    """Disable autocast on ``device`` so matmuls and sampling stay in full precision."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def point_sample(maps: torch.Tensor, points: torch.Tensor, mode: str = 'bilinear') -> torch.Tensor:
    """Values of ``maps`` [N, C, H, W] at ``points`` [N, P, 2] -> [N, C, P].

    ``points`` are ``(x, y)`` in ``[0, 1]``, relative to the whole map, so the same points
    address a low-resolution logit map and its full-resolution target alike. ``mode`` is
    ``'bilinear'`` for logits, ``'nearest'`` for label masks (the pixel containing the point).
    """
    grid = (2.0 * points - 1.0).unsqueeze(2)  # [N, P, 1, 2] in grid_sample's [-1, 1]
    values = F.grid_sample(maps, grid.to(maps.dtype), mode=mode, padding_mode='border',
                           align_corners=False)
    return values.squeeze(3)


def uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                     importance_sample_ratio: float) -> torch.Tensor:
    """Point coordinates [M, P, 2] for mask logits [M, h, w], favouring uncertain points.

    Draw ``oversample_ratio * P`` uniform candidates, keep the
    ``importance_sample_ratio * P`` whose logits are closest to 0 (uncertainty = -|logit|)
    and fill the rest with fresh uniform points (PointRend / Mask2Former sampling).
    """
    num_masks = logits.shape[0]
    num_candidates = max(int(num_points * oversample_ratio), num_points)
    num_important = int(num_points * importance_sample_ratio)
    options = {'device': logits.device, 'dtype': logits.dtype}
    with torch.no_grad():
        candidates = torch.rand(num_masks, num_candidates, 2, **options)
        uncertainty = -point_sample(logits.detach().unsqueeze(1), candidates).squeeze(1).abs()
        chosen = uncertainty.topk(num_important, dim=1).indices  # [M, important]
        important = candidates.gather(1, chosen.unsqueeze(-1).expand(-1, -1, 2))
        uniform = torch.rand(num_masks, num_points - num_important, 2, **options)
    return torch.cat((important, uniform), dim=1)


def _sample_targets(targets: Sequence[Target], matches: Sequence[Match],
                    points: torch.Tensor) -> torch.Tensor:
    """Matched target masks at ``points`` [M, P, 2] -> [M, P] (one grid_sample per image).

    Per image because images in a batch may carry targets of different sizes.
    """
    sampled, start = [], 0
    for target, (_, target_index) in zip(targets, matches, strict=True):
        count = len(target_index)
        if count:
            masks = target['masks'][target_index.to(target['masks'].device)]
            masks = masks.to(points.device, points.dtype).unsqueeze(1)  # [n, 1, H, W]
            sampled.append(point_sample(masks, points[start:start + count], TARGET_MODE)
                           .squeeze(1))
            start += count
    return torch.cat(sampled) if sampled else points.new_zeros(0, points.shape[1])


def pairwise_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE of every prediction [Q, P] against every target [N, P] -> [Q, N]."""
    # BCE(x, t) = softplus(-x) t + softplus(x) (1 - t): two matmuls cover all pairs.
    positive = F.softplus(-logits) @ targets.T
    negative = F.softplus(logits) @ (1 - targets).T
    return (positive + negative) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothed) of every prediction [Q, P] against every target [N, P]."""
    probs = logits.sigmoid()
    overlap = 2 * probs @ targets.T
    total = probs.sum(1, keepdim=True) + targets.sum(1).unsqueeze(0)
    return 1 - (overlap + 1) / (total + 1)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: torch.Tensor) -> torch.Tensor:
    """Point-averaged BCE per mask [M, P], summed over masks and divided by ``num_masks``."""
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    return losses.mean(1).sum() / num_masks


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothed) of each mask [..., P] against its target [..., P] (hard or
    soft) -> [...]: every mask counts alike whatever its size, unlike a mean over pixels."""
    probs = logits.sigmoid()
    overlap = 2 * (probs * targets).sum(-1)
    total = probs.sum(-1) + targets.sum(-1)
    return 1 - (overlap + 1) / (total + 1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: torch.Tensor) -> torch.Tensor:
    """Dice loss per mask [M, P] (+1 smoothed), summed over masks and divided by ``num_masks``."""
    return dice_per_mask(logits, targets).sum() / num_masks


def count_masks(targets: Sequence[Target], device: torch.device | str = 'cpu') -> torch.Tensor:
    """Number of target masks in this batch as a float tensor (all-reduce it across ranks,
    divide by the world size and pass it as ``num_masks``; the criterion clamps it to >= 1)."""
    return torch.tensor(float(sum(len(target['labels']) for target in targets)), device=device)


# --- matching -----------------------------------------------------------------------------

class HungarianMatcher(nn.Module):
    """One-to-one query <-> target assignment minimising a class + mask + dice cost.

    Per image, the costs are computed on one shared set of ``num_points`` uniformly random
    points (the same points for every query and target): class cost = -softmax probability
    of the target's class, mask cost = mean sigmoid BCE, dice cost = 1 - dice. Weighted by
    ``class_weight``, ``mask_weight`` and ``dice_weight``, then solved with
    ``scipy.optimize.linear_sum_assignment`` on the CPU.
    """

    def __init__(self, class_weight: float = CLASS_WEIGHT, mask_weight: float = MASK_WEIGHT,
                 dice_weight: float = DICE_WEIGHT, num_points: int = NUM_POINTS):
        super().__init__()
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
                targets: Sequence[Target]) -> list[Match]:
        """``class_logits`` [B, K, C+1], ``mask_logits`` [B, K, h, w] -> one match per image.

        Each match is ``(query_index, target_index)`` (long, on the CPU), sorted by query;
        ``min(K, N)`` pairs, none for an image without targets.
        """
        if len(targets) != class_logits.shape[0]:
            raise ValueError(f'{len(targets)} targets for a batch of {class_logits.shape[0]}')
        matches = []
        with _autocast_off(class_logits.device):
            probs = _full_precision(class_logits).softmax(-1)
            mask_logits = _full_precision(mask_logits)
            for image, target in enumerate(targets):
                labels = target['labels'].to(class_logits.device)
                if len(labels) == 0:
                    empty = torch.zeros(0, dtype=torch.long)
                    matches.append((empty, empty.clone()))
                    continue
                masks = target['masks'].to(mask_logits.device, mask_logits.dtype)
                points = torch.rand(1, self.num_points, 2, device=mask_logits.device,
                                    dtype=mask_logits.dtype)
                # All K query maps / N target maps as channels of one image: one call each.
                predicted = point_sample(mask_logits[image].unsqueeze(0), points)[0]  # [K, P]
                wanted = point_sample(masks.unsqueeze(0), points, TARGET_MODE)[0]  # [N, P]
                cost = (self.class_weight * -probs[image][:, labels]
                        + self.mask_weight * pairwise_bce(predicted, wanted)
                        + self.dice_weight * pairwise_dice(predicted, wanted))
                query_index, target_index = linear_sum_assignment(cost.cpu().numpy())
                matches.append((torch.as_tensor(query_index, dtype=torch.long),
                                torch.as_tensor(target_index, dtype=torch.long)))
        return matches


# --- the criterion ------------------------------------------------------------------------

class MaskClassificationLoss(nn.Module):
    """Hungarian-matched class CE + point-sampled mask BCE and dice, with deep supervision.

    ``criterion(outputs, targets, num_masks=None)`` takes the list of L2+1 predictions of
    ``TokenMask(..., return_intermediate=True)`` (a single ``SegmentationOutput`` or any
    ``(class_logits, mask_logits)`` pair works too), matches each one separately against
    ``targets`` and sums their losses with equal weights. Per prediction:

    - class: cross-entropy over all B x K queries, unmatched ones target "no object" (last
      class) with weight ``no_object_weight``; the weighted mean of ``F.cross_entropy``;
    - mask: BCE averaged over ``num_points`` importance-sampled points per matched mask;
    - dice: 1 - dice on the same points;

    mask and dice summed over matched masks and divided by ``num_masks`` (default: the number
    of target masks in the batch; pass the all-reduced count under DDP, see ``count_masks``),
    clamped to >= 1.

    Returns a dict: ``loss`` (weighted total, the one to back-propagate), ``loss_class`` /
    ``loss_mask`` / ``loss_dice`` (weighted, summed over predictions; they add up to
    ``loss``) and ``loss_{class,mask,dice}_{i}`` for prediction ``i`` (0 = before the first
    query block, L2 = final output; weighted). All but ``loss`` are detached, for logging.
    """

    def __init__(self, class_weight: float = CLASS_WEIGHT, mask_weight: float = MASK_WEIGHT,
                 dice_weight: float = DICE_WEIGHT, no_object_weight: float = NO_OBJECT_WEIGHT,
                 num_points: int = NUM_POINTS, oversample_ratio: float = OVERSAMPLE_RATIO,
                 importance_sample_ratio: float = IMPORTANCE_SAMPLE_RATIO,
                 matcher: HungarianMatcher | None = None):
        super().__init__()
        if not 0 <= importance_sample_ratio <= 1 or oversample_ratio < 1:
            raise ValueError('need 0 <= importance_sample_ratio <= 1 and oversample_ratio >= 1')
        self.weights = {'class': class_weight, 'mask': mask_weight, 'dice': dice_weight}
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.matcher = matcher or HungarianMatcher(class_weight, mask_weight, dice_weight,
                                                   num_points)

    def forward(self, outputs, targets: Sequence[Target],
                num_masks: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if isinstance(outputs, tuple) and len(outputs) == 2 and torch.is_tensor(outputs[0]):
            outputs = [outputs]  # one SegmentationOutput, no deep supervision
        if not outputs:
            raise ValueError('no predictions to compute a loss for')
        device = outputs[-1][0].device
        if num_masks is None:
            num_masks = count_masks(targets, device)
        num_masks = torch.as_tensor(num_masks, dtype=torch.float32, device=device).clamp(min=1)

        losses: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=device)
        for layer, (class_logits, mask_logits) in enumerate(outputs):
            matches = self.matcher(class_logits, mask_logits, targets)
            terms = self.layer_losses(class_logits, mask_logits, targets, matches, num_masks)
            for name, value in terms.items():
                weighted = self.weights[name] * value
                total = total + weighted
                losses[f'loss_{name}_{layer}'] = weighted.detach()
                losses[f'loss_{name}'] = losses.get(f'loss_{name}', 0) + weighted.detach()
        losses['loss'] = total
        return losses

    def layer_losses(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
                     targets: Sequence[Target], matches: Sequence[Match],
                     num_masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted ``class``, ``mask`` and ``dice`` losses of one prediction, given its match."""
        with _autocast_off(class_logits.device):
            class_logits = _full_precision(class_logits)
            mask_logits = _full_precision(mask_logits)
            device = class_logits.device
            batch, queries, num_labels = class_logits.shape  # num_labels = C + 1

            image_index = torch.cat([torch.full_like(query, image)
                                     for image, (query, _) in enumerate(matches)]).to(device)
            query_index = torch.cat([query for query, _ in matches]).to(device)
            matched_labels = torch.cat([target['labels'].to(device)[index.to(device)]
                                        for target, (_, index) in zip(targets, matches,
                                                                      strict=True)])

            # Class: every query; the unmatched ones are "no object" (the last class).
            wanted_classes = torch.full((batch, queries), num_labels - 1, dtype=torch.long,
                                        device=device)
            wanted_classes[image_index, query_index] = matched_labels.long()
            class_weights = torch.ones(num_labels, dtype=class_logits.dtype, device=device)
            class_weights[-1] = self.no_object_weight
            loss_class = F.cross_entropy(class_logits.transpose(1, 2), wanted_classes,
                                         class_weights)

            if len(query_index) == 0:
                # Nothing matched: no mask terms, but keep the graph connected (DDP-safe).
                zero = mask_logits.sum() * 0
                return {'class': loss_class, 'mask': zero, 'dice': zero}

            # Masks: points picked on the low-resolution logits, targets read at full size.
            matched_logits = mask_logits[image_index, query_index]  # [M, h, w]
            points = uncertain_points(matched_logits, self.num_points, self.oversample_ratio,
                                      self.importance_sample_ratio)
            predicted = point_sample(matched_logits.unsqueeze(1), points).squeeze(1)  # [M, P]
            wanted = _sample_targets(targets, matches, points)  # [M, P]
            num_masks = num_masks.to(predicted.dtype)
            return {'class': loss_class,
                    'mask': bce_loss(predicted, wanted, num_masks),
                    'dice': dice_loss(predicted, wanted, num_masks)}


SetCriterion = MaskClassificationLoss
