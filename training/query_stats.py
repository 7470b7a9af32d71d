"""The statistics behind ``query_diagnostics.py``: for every ground-truth thing, the query
whose mask overlaps it best, that mask's IoU and its class, summarised per object size,
plus the thing-class confusion matrix. No score threshold is involved."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from tqdm import tqdm

from tokenmask_ros.model.postprocess import resize_logits
from training.letterbox import forward_padded, plain_image

# Object areas in pixels at the evaluated size: under 20x20, 20-35 px, 35-55 px, larger.
AREA_BINS = (0, 400, 1200, 3000)


def best_queries(mask_logits: torch.Tensor, gt_masks: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per ground-truth mask [G, H, W] (bool): the index of the query mask [K, H, W]
    (logits, same size) that overlaps it best, and that IoU. One matrix product, no loops."""
    predicted = (mask_logits > 0).flatten(1).float()
    wanted = gt_masks.flatten(1).float()
    intersection = wanted @ predicted.T
    union = wanted.sum(1, keepdim=True) + predicted.sum(1) - intersection
    iou = intersection / union.clamp(min=1)
    best_iou, best = iou.max(1)
    return best, best_iou


class QueryDiagnostics:
    """Accumulates per-thing records (area, IoU, right class?, p(right class)) and the
    confusion matrix over images; :meth:`summary` turns them into the tables."""

    def __init__(self, class_names: list[str], thing_ids: list[int]):
        self.class_names = class_names
        self.thing_ids = list(thing_ids)
        self.confusion = np.zeros((len(class_names), len(class_names)), np.int64)
        self.records: list[np.ndarray] = []

    def add(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
            gt_masks: torch.Tensor, gt_labels: torch.Tensor) -> None:
        """One image: class logits [K, C+1], mask logits [K, H, W] at the image's size,
        ground truth masks [G, H, W] and labels [G]; only thing segments are scored."""
        things = torch.isin(gt_labels, torch.tensor(self.thing_ids))
        if not things.any():
            return
        masks, labels = gt_masks[things], gt_labels[things]
        best, iou = best_queries(mask_logits, masks)
        probs = class_logits.softmax(-1)[best, :-1]  # no-object left out: which class?
        predicted = probs.argmax(1)
        np.add.at(self.confusion, (labels.numpy(), predicted.numpy()), 1)
        self.records.append(np.stack([
            masks.flatten(1).sum(1).numpy().astype(np.float64), iou.numpy(),
            (predicted == labels).numpy(), probs.gather(1, labels[:, None])[:, 0].numpy()], 1))

    def summary(self) -> dict:
        records = np.concatenate(self.records) if self.records else np.zeros((0, 4))
        area, iou, right, p_right = records.T
        edges = [*AREA_BINS, np.inf]
        bins = []
        for low, high in itertools.pairwise(edges):
            inside = (area >= low) & (area < high)
            count = int(inside.sum())
            bins.append({'area': f'{low}-{high}' if np.isfinite(high) else f'>={low}',
                         'things': count,
                         'mask_iou_over_0.5': float((iou[inside] > 0.5).mean()) if count else None,
                         'class_accuracy': float(right[inside].mean()) if count else None,
                         'p_right_class': float(p_right[inside].mean()) if count else None})
        things = self.thing_ids
        stuff = [i for i in range(len(self.class_names)) if i not in things]
        # Columns: each thing class, then any stuff class (a thing taken for background).
        confusion = np.concatenate([self.confusion[np.ix_(things, things)],
                                    self.confusion[np.ix_(things, stuff)].sum(1, keepdims=True)],
                                   axis=1)
        return {'bins': bins, 'classes': [self.class_names[i] for i in things],
                'confusion': confusion.tolist(), 'things': len(area)}


def format_summary(summary: dict) -> str:
    def pct(value):
        return '     -' if value is None else f'{100 * value:6.1f}'

    lines = ['best-overlapping query per ground-truth thing', '',
             f'{"area px":>12} {"things":>7} {"IoU>0.5 %":>10} {"class ok %":>10} '
             f'{"p(class) %":>10}']
    for row in summary['bins']:
        lines.append(f'{row["area"]:>12} {row["things"]:7d} {pct(row["mask_iou_over_0.5"]):>10} '
                     f'{pct(row["class_accuracy"]):>10} {pct(row["p_right_class"]):>10}')
    names = summary['classes']
    width = max(8, *(len(n) for n in names))
    lines += ['', 'confusion (rows: true class, columns: predicted class)',
              ' ' * width + ''.join(f'{n:>{width}}' for n in [*names, 'stuff'])]
    for name, row in zip(names, summary['confusion'], strict=True):
        lines.append(f'{name:>{width}}' + ''.join(f'{v:>{width}d}' for v in row))
    return '\n'.join(lines)


@torch.inference_mode()
def diagnose(model, samples, classes, batch_size: int = 4, progress: bool = True) -> dict:
    """Run the model over ``samples`` (image, target) and summarise its things."""
    diagnostics = QueryDiagnostics([c.name for c in classes],
                                   [i for i, c in enumerate(classes) if c.is_thing])
    for start in tqdm(range(0, len(samples), batch_size), disable=not progress,
                      desc='diagnose', unit='batch'):
        batch = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        output, boxes = forward_padded(model, [plain_image(image) for image, _ in batch], 'cpu')
        for index, ((_, target), letterbox) in enumerate(zip(batch, boxes, strict=True)):
            masks = resize_logits(output.mask_logits[index:index + 1], letterbox)[0]
            diagnostics.add(output.class_logits[index], masks,
                            target['masks'].as_subclass(torch.Tensor).bool(), target['labels'])
    return diagnostics.summary()

