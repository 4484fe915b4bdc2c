"""CellProfiler ``load_data`` CSVs: one row per site, ``FileName_Orig<Ch>`` / ``PathName_Orig<Ch>``.

The reader is :func:`cpzarr._tables.read_image_table` (shared with the DeepProfiler index); this
module puts it behind the :mod:`cpzarr.formats` contract (kind ``images``).

Examples
--------
>>> from cpzarr.formats import load_data
>>> sites, meta, channels, info = load_data.FORMAT.read("load_data.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from cpzarr import _tables
from cpzarr.errors import InputError
from cpzarr.formats._contract import Format, register
from cpzarr.formats._csv import columns

__all__ = ["FORMAT", "read_load_data"]

_KEYS = {"metadata_plate", "metadata_well", "metadata_site"}


def _detect(path):
    names = columns(path)
    return _KEYS <= names and any(c.startswith("filename_orig") for c in names)


def read_load_data(path, channels=None):
    """Read a load_data CSV: see :func:`cpzarr._tables.read_image_table` for the result."""
    result = _tables.read_image_table(path, channels)
    if result[3]["format"] != "load_data":
        raise InputError(f"{path} is not a load_data CSV (no FileName_Orig<Channel> columns); "
                         "a DeepProfiler index.csv is read by the 'deepprofiler_index' format")
    return result


FORMAT = register(Format(
    name="load_data", kind="images", description="CellProfiler load_data CSV (FileName_Orig<Ch>/PathName_Orig<Ch>)",
    detect=_detect, reader=read_load_data,
))
