"""The image tables of the field, read into one per-site frame (shared by two formats).

Two image-table formats are recognised from their columns:

* a CellProfiler ``load_data`` CSV (:mod:`cpzarr.formats.load_data`): ``Metadata_Plate``,
  ``Metadata_Well``, ``Metadata_Site`` and a ``FileName_Orig<Channel>`` / ``PathName_Orig<Channel>``
  pair per channel (a relative ``PathName`` is taken relative to the CSV's folder);
* a DeepProfiler ``index.csv`` (:mod:`cpzarr.formats.deepprofiler`): the same three metadata
  columns and one column per channel, named by the channel, holding each image's path relative to
  the index file's folder.

Both become one frame with a row per site (``plate``, ``well``, ``site``, ``line`` — the line of the
source file, for error messages — and one absolute path column per channel) plus the well
metadata found in the table's other ``Metadata_*`` columns (names normalised as
:func:`cpzarr._tables.normalize_columns` says). Each format module owns how its path columns are
read; this module owns what they share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cpzarr._tables import (  # noqa: F401  (IMAGE_SUFFIXES: re-exported)
    _KEY_COLUMNS, IMAGE_SUFFIXES, CELL_PAINTING_CHANNELS, _constant_within_wells, is_blank, normalize_columns, normalize_well,
)
from cpzarr.errors import InputError
from cpzarr.formats._csv import read_table

__all__ = ["IMAGE_SUFFIXES", "read_image_table", "absolute"]

def read_image_table(table, channels=None, storage_options=None) -> tuple[pd.DataFrame, pd.DataFrame, list[str], dict]:
    """Read a load_data CSV or a DeepProfiler index.csv into a per-site frame.

    Parameters
    ----------
    table : str, Path or DataFrame
        The image table, a path or an fsspec URL (``s3://…``; its relative image paths are then
        relative to the URL's folder). A DataFrame's relative paths are taken relative to the
        working directory.
    channels : sequence of str, optional
        Channels to keep, in this order. Default: every channel of the table, Cell Painting
        channels first in the order DNA, ER, RNA, AGP, Mito.

    Returns
    -------
    sites : DataFrame
        One row per site: ``plate``, ``well``, ``site``, ``line`` and one absolute path column per
        channel.
    well_metadata : DataFrame
        ``Metadata_*`` columns constant within each (plate, well), normalised names, keyed by
        ``plate`` and ``well``.
    channels : list of str
        The channels, in store order.
    info : dict
        ``format`` (``"load_data"`` or ``"index"``), ``source`` (path or description),
        ``found_channels`` (every channel of the table) and ``unknown_channels`` (channels asked
        for that the table lacks; they are left out of ``channels``).

    Examples
    --------
    >>> sites, meta, channels, info = read_image_table("index.csv")  # doctest: +SKIP
    """
    from cpzarr.store import is_url

    frame, source = read_table(table, what="image table", storage_options=storage_options)
    if isinstance(table, pd.DataFrame):
        base = Path.cwd()
    elif is_url(table):
        base = str(table).rsplit("/", 1)[0]
    else:
        base = Path(source).parent
    lower = {c.lower(): c for c in frame.columns}
    missing = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if c.lower() not in lower]
    if missing:
        raise InputError(
            f"The image table {source} lacks the column(s) {', '.join(missing)}; a load_data CSV or "
            "DeepProfiler index.csv names each site by Metadata_Plate, Metadata_Well and Metadata_Site."
        )
    filename_cols = {c[len("FileName_Orig"):]: c for c in frame.columns if c.startswith("FileName_Orig")}
    if filename_cols:
        fmt = "load_data"
        paths, found = load_data_paths(frame, filename_cols, base, source)
    else:
        fmt = "index"
        paths, found = index_paths(frame, base, source)
    if channels is None:
        order = [c for c in CELL_PAINTING_CHANNELS if c in found] + [c for c in found if c not in CELL_PAINTING_CHANNELS]
    else:
        if len(set(channels)) != len(list(channels)):
            raise InputError(f"channels lists a channel twice: {list(channels)}")
        order = [c for c in channels if c in found]

    keys = {name: frame[lower[col]] for col, name in _KEY_COLUMNS.items()}
    sites = pd.DataFrame(
        {
            "plate": keys["plate"].map(lambda v: "" if is_blank(v) else str(v).strip()),
            "well": keys["well"].map(lambda v: "" if is_blank(v) else normalize_well(v)),
            "site": pd.to_numeric(keys["site"], errors="coerce"),
            "line": np.arange(len(frame)) + 2,
        }
    )
    for ch in order:
        sites[ch] = paths[ch]

    meta_cols = [
        c for c in frame.columns
        if c.lower().startswith("metadata_") and c.lower() not in _KEY_COLUMNS
    ]
    raw = frame[meta_cols].copy()
    raw.columns = [c[len("Metadata_"):] for c in meta_cols]
    raw["plate"] = sites["plate"].values
    raw["well"] = sites["well"].values
    well_metadata = _constant_within_wells(raw, source)
    well_metadata.attrs["source_names"] = normalize_columns(raw).attrs["source_names"]
    unknown = [c for c in (channels or ()) if c not in found]
    return sites, well_metadata, order, {"format": fmt, "source": source, "unknown_channels": unknown, "found_channels": found}


def load_data_paths(frame, filename_cols, base, source):
    """The load_data format's path columns (:func:`cpzarr.formats.load_data.load_data_paths`)."""
    from cpzarr.formats.load_data import load_data_paths as paths

    return paths(frame, filename_cols, base, source)


def index_paths(frame, base, source):
    """The index.csv format's path columns (:func:`cpzarr.formats.deepprofiler.index_paths`)."""
    from cpzarr.formats.deepprofiler import index_paths as paths

    return paths(frame, base, source)


def absolute(base, path: str):
    """``path`` relative to ``base`` (a folder or a URL prefix) unless absolute or a URL."""
    from cpzarr.store import join_input, is_url

    if is_url(base) or is_url(path):
        return _Joined(join_input(base, path))
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base) / p


class _Joined(str):
    """A URL that, like a Path, takes ``/ name`` (load_data's PathName / FileName)."""

    def __truediv__(self, name):
        return _Joined(f"{self.rstrip('/')}/{name}")


_absolute = absolute  # the name under which cpzarr._tables had it
