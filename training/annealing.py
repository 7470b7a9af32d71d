"""EoMT's masked-attention annealing: when each query block stops masking its attention.

Why: masked attention helps early training, but the deployed model runs without masks, so
the mask probability of each query block is annealed from 1 to 0 in its own window.
Windows last T/6 steps and start at T/6 ... 4T/6 (evenly spread over the L2 blocks).
"""

from __future__ import annotations


def annealing_windows(total_steps: int, num_blocks: int, start: float = 1 / 6,
                      end: float = 5 / 6) -> list[tuple[int, int]]:
    """``(start, end)`` step of each query block's window, first query block first.

    The windows cover the fraction ``[start, end]`` of training, each a quarter of that span
    long, evenly staggered (EoMT's defaults give windows of T/6 starting at T/6 ... 4T/6). A
    later ``start`` keeps masked attention, which focuses each query on its own mask and so
    helps a from-scratch model learn classes, on for longer.
    """
    if not 0 <= start < end <= 1:
        raise ValueError(f'need 0 <= start < end <= 1, got {start}, {end}')
    span = (end - start) * total_steps
    length = span / 4
    if num_blocks == 1:
        starts = [start * total_steps]
    else:
        starts = [start * total_steps + i * (span - length) / (num_blocks - 1)
                  for i in range(num_blocks)]
    return [(round(s), round(s + length)) for s in starts]


def mask_probability(step: int, start: int, end: int, power: float = 0.9) -> float:
    """1 before ``start``, 0 from ``end`` on, ``(1 - progress)^power`` in between."""
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return (1.0 - (step - start) / (end - start)) ** power


def mask_probabilities(step: int, windows: list[tuple[int, int]],
                       power: float = 0.9) -> list[float]:
    return [mask_probability(step, start, end, power) for start, end in windows]
