"""Header sniffing shared by the CSV detectors (never raises, reads a few rows only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")


def head(path: Path, rows: int = 0):
    """The first ``rows`` rows (0: the header only) of a CSV/TSV, or None when unreadable."""
    name = path.name.lower()
    if not path.is_file() or not name.endswith(CSV_SUFFIXES):
        return None
    sep = "\t" if name.endswith((".tsv", ".txt")) else ","
    try:
        return pd.read_csv(path, sep=sep, nrows=rows)
    except Exception:  # a detector only says yes or no
        return None


def columns(path: Path) -> set:
    """Lower-cased column names of a CSV/TSV (empty when unreadable)."""
    frame = head(path)
    return set() if frame is None else {str(c).lower() for c in frame.columns}
