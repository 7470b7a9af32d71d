"""One habit of the benchmark scripts in one place: rows to ``<stem>.csv``, the same results as
a markdown table to ``<stem>.md``, and the table printed."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def write_table(out: Path, stem: str, columns: Sequence[str], rows: Sequence[dict],
                table: str) -> None:
    """Write ``out/<stem>.csv`` (``columns`` of ``rows``) and ``out/<stem>.md`` (``table``),
    creating ``out``; print ``table``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / f'{stem}.csv').open('w', newline='') as handle:
        writer = csv.DictWriter(handle, list(columns))
        writer.writeheader()
        writer.writerows(rows)
    (out / f'{stem}.md').write_text(table)
    print(table)
