"""The outputs of ``evaluate_tracking.py``: a markdown table, a CSV and a bar plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from training.tracking_metrics import TrackingScores

TABLE_COLUMNS = ('HOTA', 'DetA', 'AssA', 'IDF1', 'ID switches')
PLOT_COLUMNS = ('HOTA', 'DetA', 'AssA', 'IDF1')


def _cell(value) -> str:
    if isinstance(value, float):
        return '–' if math.isnan(value) else f'{value:.2f}'
    return str(value)


def format_table(scores: Mapping[str, TrackingScores],
                 descriptions: Mapping[str, str] | None = None) -> str:
    """One markdown row per run (its combined scores)."""
    descriptions = descriptions or {}
    lines = ['| run | ' + ' | '.join(TABLE_COLUMNS) + ' |',
             '|---|' + '---|' * len(TABLE_COLUMNS)]
    for run, score in scores.items():
        values = score.as_dict()
        name = f'{run} ({descriptions[run]})' if run in descriptions else run
        lines.append(f'| {name} | ' + ' | '.join(_cell(values[c]) for c in TABLE_COLUMNS) + ' |')
    return '\n'.join(lines)


def write_csv(path: Path, rows: Sequence[tuple[str, str, TrackingScores]]) -> None:
    """``rows``: (run, sequence or 'all', scores)."""
    columns = ['run', 'sequence', *TrackingScores(*(0,) * 9).as_dict()]
    with open(path, 'w', newline='') as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        for run, sequence, score in rows:
            values = {k: (round(v, 4) if isinstance(v, float) else v)
                      for k, v in score.as_dict().items()}
            writer.writerow({'run': run, 'sequence': sequence, **values})


def plot(path: Path, scores: Mapping[str, TrackingScores], title: str = '') -> None:
    """Grouped bars: HOTA / DetA / AssA / IDF1 of each run."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    runs = list(scores)
    width = 0.8 / max(1, len(runs))
    figure, axes = plt.subplots(figsize=(7, 4))
    for k, run in enumerate(runs):
        values = [scores[run].as_dict()[c] for c in PLOT_COLUMNS]
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(PLOT_COLUMNS))]
        bars = axes.bar(xs, values, width, label=run)
        axes.bar_label(bars, fmt='%.1f', fontsize=7)
    axes.set_xticks(range(len(PLOT_COLUMNS)), PLOT_COLUMNS)
    axes.set_ylim(0, 118)  # headroom for the legend above the bars
    axes.set_ylabel('%')
    axes.set_title(title or 'Tracking on masks (TrackEval)')
    axes.legend(loc='upper center', ncol=len(runs), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
