"""CellProfiler object tables: ``Image.csv`` with ``Nuclei.csv`` (and ``Cells``, ``Cytoplasm``).

Two readers over the same tables, behind the :mod:`cpzarr.formats` contract:

* ``cellprofiler_locations`` (kind ``locations``): nucleus centres, ``ImageNumber`` mapped to
  plate, well and site through ``Image.csv`` (:func:`cpzarr.cells.import_locations` uses it);
* ``cellprofiler_objects`` (kind ``features``): the compartment tables joined as Pycytominer does
  (:func:`cpzarr.features.import_cellprofiler`).

Either takes a ``Nuclei.csv`` file, a folder of the tables, or a folder of such folders.
"""

from __future__ import annotations

from pathlib import Path

from cpzarr.formats._contract import Format, register

__all__ = ["LOCATIONS", "OBJECTS", "read_locations", "read_objects"]


def _table(folder: Path, stem: str):
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _folders(path: Path):
    if path.is_file():
        return [path.parent]
    if _table(path, "Image"):
        return [path]
    return [d for d in sorted(path.iterdir()) if d.is_dir() and _table(d, "Image")]


def _detect_locations(path):
    if path.is_file():
        return path.name.startswith("Nuclei.csv") and _table(path.parent, "Image") is not None
    return any(_table(f, "Nuclei") for f in _folders(path))


def _detect_objects(path):
    if path.is_file():
        return False
    return any(_table(f, c) for f in _folders(path) for c in ("Cells", "Cytoplasm", "Nuclei"))


def read_locations(path):
    """Nucleus centres of CellProfiler tables: a DataFrame of the ``locations`` contract."""
    from cpzarr.cells import _read_cellprofiler

    return _read_cellprofiler(Path(path))


def read_objects(path, **options):
    """Single-cell features of CellProfiler tables; options as :func:`cpzarr.features.import_cellprofiler`."""
    from cpzarr.features.imports import import_cellprofiler

    return import_cellprofiler(path, **options)


LOCATIONS = register(Format(
    name="cellprofiler_locations", kind="locations",
    description="CellProfiler Nuclei.csv with Image.csv (a file, a folder, or a folder of folders)",
    detect=_detect_locations, reader=read_locations,
))
OBJECTS = register(Format(
    name="cellprofiler_objects", kind="features",
    description="CellProfiler Image.csv with Cells/Cytoplasm/Nuclei tables (a folder, or a folder of folders)",
    detect=_detect_objects, reader=read_objects,
))
