"""What a training run logs: ``metrics.csv`` / ``eval.csv`` in the run folder (plus
TensorBoard when it imports), and the training time an earlier run logged before a resume."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Any


class MetricLog:
    """CSV files in the run folder (``metrics.csv`` for training, ``eval.csv`` for periodic
    evaluation: one header each), plus TensorBoard when ``torch.utils.tensorboard`` imports."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled, self.writer = out, enabled, None
        self.files: dict[str, tuple[Any, csv.DictWriter]] = {}
        if not enabled:
            return
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out / 'tensorboard'))

    def log(self, step: int, values: dict[str, float], name: str = 'metrics.csv') -> None:
        if not self.enabled:
            return
        if name not in self.files:
            path = self.out / name
            new = not path.exists()
            file = path.open('a', newline='')
            writer = csv.DictWriter(file, ['step', *values], extrasaction='ignore')
            if new:
                writer.writeheader()
            self.files[name] = (file, writer)
        file, writer = self.files[name]
        writer.writerow({'step': step, **values})
        file.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        for file, _ in self.files.values():
            file.close()
        self.files.clear()
        if self.writer is not None:
            self.writer.close()



def previous_elapsed(path: Path, step: int) -> float:
    """``elapsed_s`` logged at ``step`` by an earlier run into ``path`` (0 if none)."""
    if step == 0 or not path.is_file():
        return 0.0
    with path.open(newline='') as file:
        rows = [r for r in csv.DictReader(file) if r.get('elapsed_s') and int(r['step']) <= step]
    return float(rows[-1]['elapsed_s']) if rows else 0.0

