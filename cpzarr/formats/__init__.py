"""The field's file formats, each a module behind one small contract (:mod:`cpzarr.formats._contract`).

``formats(kind)`` lists the readers of a kind (``images``, ``locations``, ``features``,
``platemap``), ``find_format(path, kind)`` picks the one that recognises a path and
``get_format(name)`` looks one up; ``cpzarr.testing.check_reader`` is the conformance suite.

Examples
--------
>>> from cpzarr.formats import find_format
>>> sites, meta, channels, info = find_format("index.csv", "images").read("index.csv")  # doctest: +SKIP
"""

# One import per line, sorted: modules added on other branches merge as a union.
from cpzarr.formats import cellprofiler  # noqa: F401
from cpzarr.formats import cytotable  # noqa: F401
from cpzarr.formats import deepprofiler  # noqa: F401
from cpzarr.formats import lincs  # noqa: F401
from cpzarr.formats import load_data  # noqa: F401
from cpzarr.formats import ome_zarr  # noqa: F401
from cpzarr.formats import platemap  # noqa: F401
from cpzarr.formats import sqlite  # noqa: F401
from cpzarr.formats._contract import KINDS, Format, find_format, formats, get_format, register  # noqa: F401
