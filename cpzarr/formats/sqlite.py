"""CellProfiler single-cell SQLite databases (LINCS, older JUMP): tables in, CSV-shaped frames out.

The format is what ``cytominer-database ingest`` (and CellProfiler's ExportToDatabase) write: one
table per compartment, ``Image``, ``Cells``, ``Cytoplasm``, ``Nuclei`` (also ``Per_Image``,
``Per_Cells`` …, any case), keyed by ``TableNumber`` (one value per CellProfiler run, so that
``ImageNumber`` is unique only together with it), ``ImageNumber`` and ``ObjectNumber``, with every
other column prefixed by its table's name (``Image_Metadata_Plate``, ``Cells_AreaShape_Area``,
``Cytoplasm_Parent_Cells``). ExportToDatabase names the object number ``<Comp>_Number_Object_Number``
instead; it is taken as ``ObjectNumber`` where that column is missing.

:func:`cellprofiler_table_sets` strips the prefixes and splits the tables by ``TableNumber``, so
each set looks exactly like the CSVs of one CellProfiler run and goes through the same join as
:func:`cpzarr.features.import_cellprofiler` gives CSVs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from cpzarr.errors import InputError

__all__ = ["is_sqlite", "cellprofiler_table_sets"]

_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_KEYS = ("TableNumber", "ImageNumber", "ObjectNumber")


def is_sqlite(path) -> bool:
    """True for a path to an existing file whose name ends in ``.sqlite``, ``.sqlite3`` or ``.db``.

    Examples
    --------
    >>> is_sqlite("SQ00015054.sqlite")
    False
    """
    if not isinstance(path, (str, Path)):
        return False
    path = Path(path)
    return path.suffix.lower() in _SUFFIXES and path.is_file()


def cellprofiler_table_sets(path, compartments=("Cells", "Cytoplasm", "Nuclei")) -> list:
    """Read a CellProfiler SQLite database as one set of CSV-shaped tables per ``TableNumber``.

    Parameters
    ----------
    path : str or Path
        The ``.sqlite`` file (opened read-only).
    compartments : sequence of str
        Compartment tables to read besides ``Image``.

    Returns
    -------
    list of (str, dict of str to DataFrame)
        ``(label, {"Image": frame, "Cells": frame, ...})`` per ``TableNumber`` (one set when the
        database has no ``TableNumber``), with the table-name prefixes removed, as
        ``import_cellprofiler`` takes them.

    Raises
    ------
    InputError
        The file is not an SQLite database, or lacks a table or a key column (named).

    Examples
    --------
    >>> sets = cellprofiler_table_sets("SQ00015054.sqlite")  # doctest: +SKIP
    >>> label, tables = sets[0]  # doctest: +SKIP
    """
    path = Path(path)
    try:
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            frames = {}
            for table in ("Image", *compartments):
                found = _table_name(names, table)
                if found is None:
                    raise InputError(
                        f"CellProfiler SQLite {path} has no {table} table (it has {', '.join(sorted(names)) or 'none'})"
                    )
                frame = pd.read_sql_query(f'SELECT * FROM "{found}"', connection)
                frames[table] = _unprefixed(_numeric(frame), table, f"{path}:{found}")
        finally:
            connection.close()
    except sqlite3.DatabaseError as err:
        raise InputError(f"CellProfiler SQLite {path} cannot be read: {err}") from None

    if not all("TableNumber" in f.columns for f in frames.values()):
        return [(str(path), {t: f.drop(columns="TableNumber", errors="ignore") for t, f in frames.items()})]
    groups = {t: dict(tuple(f.groupby("TableNumber", sort=True))) for t, f in frames.items()}
    sets = []
    for number in groups["Image"]:
        tables = {}
        for table, by_number in groups.items():
            frame = by_number.get(number, frames[table].iloc[:0])
            tables[table] = frame.drop(columns="TableNumber").reset_index(drop=True)
        if all(tables[c].empty for c in compartments):
            continue  # images of a run without objects
        sets.append((f"{path} TableNumber {number}", tables))
    return sets


def _table_name(names, table):
    wanted = {table.lower(), f"per_{table.lower()}"}
    for name in names:
        if name.lower() in wanted:
            return name
    return None


def _numeric(frame):
    """Columns SQLite returned as objects because every value is NULL or a number become float.

    ``read_sql_query`` does not read the schema's column types: a REAL column that is NULL in
    every row (a measurement CellProfiler could not make) comes back as objects; the CSV reader
    reads the same empty column as float NaN, and the import keeps only numeric columns.
    """
    out = {}
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object and values.map(lambda v: v is None or isinstance(v, (int, float))).all():
            out[column] = pd.to_numeric(values, errors="coerce").astype(np.float64)
    return frame.assign(**out) if out else frame


def _unprefixed(frame, table, where):
    prefix = f"{table}_"
    renames = {}
    for column in frame.columns:
        if column.startswith(prefix):
            renames[column] = column[len(prefix):]
    frame = frame.rename(columns=renames)
    if "ObjectNumber" not in frame.columns and "Number_Object_Number" in frame.columns and table != "Image":
        frame = frame.assign(ObjectNumber=frame["Number_Object_Number"])
    need = ["ImageNumber"] + (["ObjectNumber"] if table != "Image" else [])
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise InputError(f"CellProfiler SQLite table {where} lacks the key column(s) {', '.join(missing)}")
    dup = frame.columns[frame.columns.duplicated()].tolist()
    if dup:
        raise InputError(f"CellProfiler SQLite table {where} has the column(s) {dup} with and without "
                         f"the {prefix} prefix")
    return frame
