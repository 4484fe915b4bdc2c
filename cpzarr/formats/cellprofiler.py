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

import numpy as np
import pandas as pd

from cpzarr._tables import normalize_well
from cpzarr.errors import InputError
from cpzarr.formats._contract import Format, register
from cpzarr.formats._csv import X_COLUMNS, Y_COLUMNS, numbers, pick_column, read_location_csv

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


def _metadata_column(frame, name, path):
    for candidate in (f"Metadata_{name}", f"Image_Metadata_{name}"):
        if candidate in frame:
            return frame[candidate]
    raise InputError(f"{path}: no column Metadata_{name} (needed to map ImageNumber to the {name.lower()})")


def _read_cellprofiler_folder(nuclei_path, image_path):
    nuclei = read_location_csv(nuclei_path)
    image = read_location_csv(image_path)
    for frame, path, needed in ((nuclei, nuclei_path, ("ImageNumber", "ObjectNumber")), (image, image_path, ("ImageNumber",))):
        missing = [c for c in needed if c not in frame]
        if missing:
            raise InputError(f"{path}: no column {missing[0]}")
    sites = pd.DataFrame({
        "ImageNumber": image["ImageNumber"],
        "plate": _metadata_column(image, "Plate", image_path).astype(str),
        "well": _metadata_column(image, "Well", image_path).map(normalize_well),
        "site": _metadata_column(image, "Site", image_path).astype(np.int64),
    })
    table = pd.DataFrame({
        "ImageNumber": nuclei["ImageNumber"],
        "object_id": nuclei["ObjectNumber"].astype(np.int64),
        "x": numbers(pick_column(nuclei, X_COLUMNS, nuclei_path), nuclei_path),
        "y": numbers(pick_column(nuclei, Y_COLUMNS, nuclei_path), nuclei_path),
        "file": str(nuclei_path), "row": np.arange(len(nuclei)) + 2,
    })
    table = table.merge(sites, on="ImageNumber", how="left")
    orphans = table[table["plate"].isna()]
    if len(orphans):
        raise InputError(
            f"{nuclei_path}: {len(orphans)} objects have an ImageNumber missing from {image_path}",
            [f"row {r}: ImageNumber {n}" for r, n in zip(orphans["row"], orphans["ImageNumber"])],
        )
    return table.drop(columns="ImageNumber")


def read_locations(path):
    """Nucleus centres of CellProfiler tables: a DataFrame of the ``locations`` contract.

    Rows from a Nuclei table and its Image table (or one folder of them per site).
    """
    source = Path(path)
    if source.is_file():
        folders = [(source, _table(source.parent, "Image"))]
    elif _table(source, "Nuclei"):
        folders = [(_table(source, "Nuclei"), _table(source, "Image"))]
    else:
        folders = [(_table(d, "Nuclei"), _table(d, "Image")) for d in sorted(source.iterdir()) if d.is_dir()]
        folders = [f for f in folders if f[0] is not None]
    if not folders:
        raise InputError(f"no Nuclei.csv (or Nuclei.csv.gz) in {source} or its sub-folders")
    lacking = [str(n) for n, i in folders if i is None]
    if lacking:
        raise InputError("Image.csv must sit beside each Nuclei.csv (it maps ImageNumber to plate, well, site)", lacking)
    return pd.concat([_read_cellprofiler_folder(n, i) for n, i in folders], ignore_index=True)


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
