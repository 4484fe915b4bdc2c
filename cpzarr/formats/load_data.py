"""CellProfiler ``load_data`` CSVs: one row per site, ``FileName_Orig<Ch>`` / ``PathName_Orig<Ch>``.

This module reads the path columns (:func:`load_data_paths`); what load_data shares with the
DeepProfiler index (site keys, well metadata, channel order) is
:func:`cpzarr.formats._image_table.read_image_table`. Kind ``images`` of the :mod:`cpzarr.formats`
contract.

Examples
--------
>>> from cpzarr.formats import load_data
>>> sites, meta, channels, info = load_data.FORMAT.read("load_data.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from cpzarr._tables import is_blank
from cpzarr.errors import InputError
from cpzarr.formats._contract import Format, register
from cpzarr.formats._csv import columns

__all__ = ["FORMAT", "read_load_data", "load_data_paths"]

_KEYS = {"metadata_plate", "metadata_well", "metadata_site"}


def _detect(path):
    names = columns(path)
    return _KEYS <= names and any(c.startswith("filename_orig") for c in names)


def read_load_data(path, channels=None, storage_options=None):
    """Read a load_data CSV (path or URL): see :func:`cpzarr.formats._image_table.read_image_table`."""
    from cpzarr.formats._image_table import read_image_table

    result = read_image_table(path, channels, storage_options=storage_options)
    if result[3]["format"] != "load_data":
        raise InputError(f"{path} is not a load_data CSV (no FileName_Orig<Channel> columns); "
                         "a DeepProfiler index.csv is read by the 'deepprofiler_index' format")
    return result


def load_data_paths(frame, filename_cols, base, source):
    """``{channel: [absolute path or None per row]}`` and the channels, from FileName/PathName pairs.

    A relative ``PathName_Orig<Ch>`` is taken relative to ``base`` (the CSV's folder or URL).
    """
    from cpzarr.formats._image_table import absolute

    paths, found, problems = {}, [], []
    for ch, fcol in filename_cols.items():
        pcol = f"PathName_Orig{ch}"
        if pcol not in frame.columns:
            problems.append(f"{fcol} has no matching {pcol} column")
            continue
        found.append(ch)
        paths[ch] = [
            None if is_blank(f) or is_blank(p) else str(absolute(base, str(p)) / str(f))
            for f, p in zip(frame[fcol], frame[pcol])
        ]
    if problems:
        raise InputError(f"The load_data CSV {source} is incomplete.", problems)
    return paths, found


FORMAT = register(Format(
    name="load_data", kind="images", description="CellProfiler load_data CSV (FileName_Orig<Ch>/PathName_Orig<Ch>)",
    detect=_detect, reader=read_load_data,
))
