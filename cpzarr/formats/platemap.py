"""Platemaps: well metadata keyed by (plate, well) or by well alone (CSV or TSV).

The reader is :func:`cpzarr._tables.read_platemap`; this module puts it behind the
:mod:`cpzarr.formats` contract (kind ``platemap``). Column names are normalised (``Metadata_``
dropped, lower case, ``well_position`` becomes ``well``); a well listed twice is refused.
"""

from __future__ import annotations

from cpzarr import _tables
from cpzarr.formats._contract import Format, register
from cpzarr.formats._csv import columns

__all__ = ["FORMAT", "read_platemap"]


def _detect(path):
    names = {n[len("metadata_"):] if n.startswith("metadata_") else n for n in columns(path)}
    return bool(names & {"well", "well_position"}) and "site" not in names and not any(
        n.startswith("filename_orig") for n in names)


def read_platemap(path):
    """Read a platemap: ``(frame, source)``, see :func:`cpzarr._tables.read_platemap`."""
    return _tables.read_platemap(path)


FORMAT = register(Format(
    name="platemap", kind="platemap", description="platemap CSV/TSV keyed by (plate, well) or by well",
    detect=_detect, reader=read_platemap,
))
