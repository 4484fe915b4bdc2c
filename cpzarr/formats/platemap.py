"""Platemaps: well metadata keyed by (plate, well) or by well alone (CSV or TSV).

Kind ``platemap`` of the :mod:`cpzarr.formats` contract; a path or an fsspec URL (LINCS'
``barcode_platemap.csv`` with its ``platemap/`` folder is read by :mod:`cpzarr.formats.lincs`).
Column names are normalised (``Metadata_`` dropped, lower case, ``well_position`` becomes
``well``); a well listed twice is refused.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cpzarr._tables import is_blank, normalize_columns, normalize_well
from cpzarr.errors import InputError
from cpzarr.formats import _csv
from cpzarr.formats._contract import Format, register
from cpzarr.formats._csv import columns

__all__ = ["FORMAT", "read_platemap"]


def _detect(path):
    names = {n[len("metadata_"):] if n.startswith("metadata_") else n for n in columns(path)}
    return bool(names & {"well", "well_position"}) and "site" not in names and not any(
        n.startswith("filename_orig") for n in names)


def read_platemap(platemap, storage_options=None) -> tuple[pd.DataFrame, str]:
    """Read a platemap (CSV/TSV path or DataFrame) and normalise its column names.

    Parameters
    ----------
    platemap : str, Path or DataFrame
        Keyed by (plate, well), or by well only when one layout serves every plate
        (``well_position`` is accepted for ``well``, ``Metadata_`` prefixes are dropped).

    Returns
    -------
    frame : DataFrame
        Normalised columns; ``plate`` only when the platemap has one.
    source : str
        The path or a description, for messages.

    Examples
    --------
    >>> frame, source = read_platemap("platemap.csv")  # doctest: +SKIP
    """
    from cpzarr.formats.lincs import is_lincs_platemap, read_lincs_platemap
    from cpzarr.store import is_url

    if not is_url(platemap) and is_lincs_platemap(platemap):  # barcode_platemap.csv + platemap/<name>.txt
        frame, source = read_lincs_platemap(platemap), str(Path(platemap).resolve())
    else:
        frame, source = _csv.read_table(platemap, what="platemap", storage_options=storage_options)
    frame = normalize_columns(frame)
    names = frame.attrs["source_names"]
    if "well" not in frame.columns:
        raise InputError(f"The platemap {source} has no well column (well, well_position or Metadata_Well).")
    frame["well"] = frame["well"].map(normalize_well)
    if "plate" in frame.columns:
        frame["plate"] = frame["plate"].map(lambda v: "" if is_blank(v) else str(v).strip())
    keys = ["plate", "well"] if "plate" in frame.columns else ["well"]
    dup = frame[frame.duplicated(keys, keep=False)]
    if len(dup):
        rows = sorted({tuple(r) for r in dup[keys].itertuples(index=False)})
        raise InputError(
            f"The platemap {source} lists some wells more than once.",
            [f"{'/'.join(r)} appears {int((frame[keys].apply(tuple, axis=1) == r).sum())} times" for r in rows],
        )
    frame.attrs["source_names"] = names
    return frame, source

FORMAT = register(Format(
    name="platemap", kind="platemap", description="platemap CSV/TSV keyed by (plate, well) or by well",
    detect=_detect, reader=read_platemap,
))
