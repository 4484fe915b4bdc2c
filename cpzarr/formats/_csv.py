"""CSV/TSV helpers shared by the readers: whole tables from a path or URL, and header sniffing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cpzarr.errors import InputError

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")


def read_table(table, *, what: str = "table", storage_options=None) -> tuple[pd.DataFrame, str]:
    """Read a CSV/TSV path or fsspec URL, or accept a DataFrame; return ``(frame, name for messages)``."""
    from cpzarr.store import is_url

    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True).copy(), f"the {what} DataFrame"
    if storage_options is None and getattr(table, "storage_options", None):  # a UPath carries its own
        storage_options = dict(table.storage_options)
    if is_url(table):
        return _read_url_table(str(table), what, storage_options)
    path = Path(str(table).removeprefix("file://")).resolve()
    if not path.is_file():
        raise InputError(f"The {what} {path} does not exist or is not a file.")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        frame = pd.read_csv(path, sep=sep, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"The {what} {path} cannot be read as a {sep!r}-separated table: {exc}") from exc
    return frame, str(path)


def _read_url_table(url, what, storage_options):
    import fsspec

    sep = "\t" if url.lower().endswith((".tsv", ".txt")) else ","
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            frame = pd.read_csv(f, sep=sep, low_memory=False)
    except FileNotFoundError as exc:
        raise InputError(f"The {what} {url} does not exist.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"The {what} {url} cannot be read as a {sep!r}-separated table: {exc}") from exc
    return frame, url


def head(path: Path, rows: int = 0):
    """The first ``rows`` rows (0: the header only) of a CSV/TSV, or None when unreadable."""
    from cpzarr.formats._fs import read_csv

    name = path.name.lower()
    if not path.is_file() or not name.endswith(CSV_SUFFIXES):
        return None
    sep = "\t" if name.endswith((".tsv", ".txt")) else ","
    try:
        return read_csv(path, sep=sep, nrows=rows)
    except Exception:  # a detector only says yes or no
        return None


def columns(path: Path) -> set:
    """Lower-cased column names of a CSV/TSV (empty when unreadable)."""
    frame = head(path)
    return set() if frame is None else {str(c).lower() for c in frame.columns}


# --- location tables (CellProfiler and DeepProfiler nuclei centres) ---

#: Column names of a nucleus centre, DeepProfiler's/CytoTable's first, CellProfiler's Nuclei.csv second.
X_COLUMNS = ("Nuclei_Location_Center_X", "Location_Center_X")
Y_COLUMNS = ("Nuclei_Location_Center_Y", "Location_Center_Y")


def pick_column(frame, names, path):
    """The first of ``names`` that ``frame`` has; InputError naming the file otherwise."""
    from cpzarr.errors import InputError

    for name in names:
        if name in frame:
            return frame[name]
    raise InputError(f"{path}: no column {' or '.join(names)}; columns are {list(frame.columns)[:12]}")


def read_location_csv(path):
    """A location (or Image) CSV, with unreadable files named instead of raw pandas errors."""
    from cpzarr.errors import InputError

    from cpzarr.formats._fs import read_csv

    try:
        return read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty (a site without cells still has a header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as err:
        raise InputError(f"{path}: not a readable CSV table ({type(err).__name__}: {err})") from None


def numbers(column, path):
    """A coordinate column as float64; non-numeric cells are refused naming their rows."""
    import numpy as np

    from cpzarr.errors import InputError

    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any():
        rows = [f"row {i + 2}: {column.iloc[i]!r}" for i in np.flatnonzero(bad.to_numpy())[:5]]
        raise InputError(f"{path}: column {column.name} holds non-numeric values", rows)
    return values.to_numpy(np.float64)
