"""The text table ``evaluate.py`` prints: headline numbers, then one line per class."""

from __future__ import annotations


def _number(value, width: int = 7) -> str:
    """A table cell: the value with 2 decimals, ``-`` for None and the -1 of "no AP"."""
    if value is None or value == -1.0:
        return f'{"-":>{width}}'
    return f'{value:{width}.2f}'


def format_table(metrics: dict) -> str:
    """A compact text table: the headline numbers, then per class PQ / SQ / RQ, IoU and AP
    (only the families ``metrics`` holds)."""
    panoptic, instance = 'pq' in metrics, 'ap' in metrics
    headline = [('mIoU', 'miou')]
    if panoptic:
        headline = [('PQ', 'pq'), ('PQ_th', 'pq_things'), ('PQ_st', 'pq_stuff'), ('SQ', 'sq'),
                    ('RQ', 'rq'), *headline]
    if instance:
        headline += [('AP', 'ap'), ('AP50', 'ap50'), ('AP75', 'ap75'), ('APs', 'ap_small'),
                     ('APm', 'ap_medium'), ('APl', 'ap_large')]
    lines = ['  '.join(f'{n:>7}' for n, _ in headline),
             '  '.join(_number(metrics[k]) for _, k in headline), '']
    width = max([5, *(len(n) for n in metrics['per_class'])])
    header = f'{"class":<{width}}  {"kind":<5}'
    header += f'  {"PQ":>6}  {"SQ":>6}  {"RQ":>6}' if panoptic else ''
    header += f'  {"IoU":>6}' + (f'  {"AP":>6}' if instance else '')
    header += f'  {"TP":>5}  {"FP":>5}  {"FN":>5}' if panoptic else ''
    lines.append(header)
    for name, c in metrics['per_class'].items():
        line = f'{name:<{width}}  {"thing" if c["is_thing"] else "stuff":<5}'
        if panoptic:
            line += f'  {c["pq"]:6.2f}  {c["sq"]:6.2f}  {c["rq"]:6.2f}'
        line += f'  {_number(c["iou"], 6)}'
        if instance:
            line += f'  {_number(c.get("ap"), 6)}'
        if panoptic:
            line += f'  {c["tp"]:5d}  {c["fp"]:5d}  {c["fn"]:5d}'
        lines.append(line)
    return '\n'.join(lines)

