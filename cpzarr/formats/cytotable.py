"""CytoTable's joined single-cell Parquet (its ``cellprofiler_csv`` / ``cellprofiler_sqlite`` presets).

CytoTable joins the Image, Cytoplasm, Cells and Nuclei tables of CellProfiler into one row per
cell and renames the columns: measurements keep their compartment prefix (``Cells_AreaShape_Area``,
``Nuclei_Location_Center_X``), image columns get ``Image_`` (``Image_Metadata_Well``) and keys get
``Metadata_`` (``Metadata_ImageNumber``, ``Metadata_Cytoplasm_Parent_Cells``,
``Metadata_Nuclei_Number_Object_Number``). :func:`read_cytotable` reads such a file into the
layout of a ``/features/<name>`` node, with the same feature names and values as
:func:`cpzarr.features.import_cellprofiler` gives the CSVs the Parquet was made from.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cpzarr._tables import normalize_well
from cpzarr.errors import InputError
from cpzarr.formats._features import features_dataset
from cpzarr.formats._fs import as_path

__all__ = ["read_cytotable", "import_cytotable"]

_PLATE = ("Image_Metadata_Plate", "Metadata_Plate")
_WELL = ("Image_Metadata_Well", "Metadata_Well")
_SITE = ("Image_Metadata_Site", "Metadata_Site")
_IMAGE = ("Metadata_ImageNumber", "ImageNumber")
_TABLE = ("Metadata_TableNumber", "TableNumber")


def read_cytotable(path, *, compartments=("Cells", "Cytoplasm", "Nuclei"), exclude=None, storage_options=None):
    """Read CytoTable's single-cell Parquet into a features Dataset.

    Plate and well come from ``Image_Metadata_Plate``/``Image_Metadata_Well`` (or
    ``Metadata_Plate``/``Metadata_Well``), the site from ``Image_Metadata_Site`` (or
    ``Metadata_Site``); CytoTable's presets keep no site column, so without one the sites of each
    well are numbered 1, 2, … in the order of ``Metadata_ImageNumber`` (with a warning). The nucleus
    centre ``Nuclei_Location_Center_X/Y`` gives x and y. Features are the numeric columns of the
    compartments, named as CytoTable names them (which is how ``import_cellprofiler`` names them),
    minus the same bookkeeping columns (``exclude``).

    Parameters
    ----------
    path : str or Path
        The ``.parquet`` file, a local path or an fsspec URL.
    compartments : sequence of str
        Compartments whose columns are features, in this order.
    exclude : sequence of str, optional
        Column-name prefixes (after the compartment prefix) that are not features; default
        :data:`cpzarr.formats.cellprofiler.EXCLUDE`.
    storage_options : dict, optional
        fsspec options of a URL ``path``.

    Returns
    -------
    Dataset (cell, feature)
        ``features`` float32, coordinates plate, well, site, x, y (and ``object_id`` when the
        nuclei's object number is there) along ``cell``.

    Raises
    ------
    InputError
        The file is missing or unreadable, or lacks a plate, well or location column (named).

    Examples
    --------
    >>> ds = read_cytotable("BR00116991.parquet")  # doctest: +SKIP
    >>> ds.sizes["cell"]  # doctest: +SKIP
    109
    """
    from cpzarr.formats.cellprofiler import EXCLUDE

    exclude = tuple(EXCLUDE if exclude is None else exclude)
    compartments = [c.capitalize() for c in compartments]
    path = as_path(path, storage_options)
    if not path.is_file():
        raise InputError(f"CytoTable Parquet {path} does not exist")
    try:
        with path.open("rb") as handle:
            frame = pd.read_parquet(handle)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"CytoTable Parquet {path} cannot be read: {err}") from None

    def pick(options, what, required=True):
        for column in options:
            if column in frame.columns:
                return column
        if required:
            raise InputError(f"CytoTable Parquet {path} has no {what} column ({' or '.join(options)})")
        return None

    plate, well = pick(_PLATE, "plate"), pick(_WELL, "well")
    loc = next((c for c in ("Nuclei", *compartments) if f"{c}_Location_Center_X" in frame.columns), None)
    if loc is None or f"{loc}_Location_Center_Y" not in frame.columns:
        raise InputError(f"CytoTable Parquet {path} has no <Compartment>_Location_Center_X/Y columns")
    site_column = pick(_SITE, "site", required=False)
    if site_column is not None:
        site = pd.to_numeric(frame[site_column], errors="coerce")
        if site.isna().any():
            raise InputError(f"CytoTable Parquet {path}: {site_column} is empty or not a number in "
                             f"{int(site.isna().sum())} rows")
        site = site.astype(np.int64).to_numpy()
    else:
        site = _site_numbers(frame, plate, well, pick(_IMAGE, "ImageNumber"), pick(_TABLE, "", required=False))
        warnings.warn(f"CytoTable Parquet {path} has no site column ({' or '.join(_SITE)}): sites numbered "
                      "1, 2, ... per well in ImageNumber order", stacklevel=2)

    names = []
    for comp in compartments:
        prefix = f"{comp}_"
        for column in frame.columns:
            rest = column[len(prefix):]
            if (column.startswith(prefix) and not rest.startswith(exclude)
                    and pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column])):
                names.append(column)
    if not names:
        raise InputError(f"CytoTable Parquet {path} has no numeric {'/'.join(compartments)} feature columns")
    table = pd.DataFrame({
        "plate": frame[plate].astype(str).to_numpy(object),
        "well": [normalize_well(w) for w in frame[well]],
        "site": site,
        "x": frame[f"{loc}_Location_Center_X"].to_numpy(np.float64),
        "y": frame[f"{loc}_Location_Center_Y"].to_numpy(np.float64),
    })
    object_column = pick((f"Metadata_{loc}_Number_Object_Number", f"{loc}_Number_Object_Number"), "", required=False)
    if object_column is not None:
        table["object_id"] = frame[object_column].to_numpy(np.int64)
    values = frame[names].to_numpy(np.float32)
    return features_dataset(table, values, names, {"source": str(path), "importer": "cytotable"})


def import_cytotable(path, *, compartments=("Cells", "Cytoplasm", "Nuclei"), exclude=None, store=None,
                     name="cellprofiler", storage_options=None):
    """:func:`read_cytotable`, and with a ``store`` the result written as ``/features/<name>``.

    See :func:`cpzarr.features.imports.write_imported` for the writing.

    Examples
    --------
    >>> ds = import_cytotable("BR00116991.parquet", store="screen.zarr")  # doctest: +SKIP
    """
    ds = read_cytotable(path, compartments=compartments, exclude=exclude, storage_options=storage_options)
    if store is not None:
        from cpzarr.features.imports import write_imported

        write_imported(store, ds, name)
    return ds


def _site_numbers(frame, plate, well, image, table):
    keys = [plate, well] + ([table] if table else [])
    images = frame[keys + [image]].drop_duplicates().sort_values(keys + [image])
    images["site"] = images.groupby([plate, well]).cumcount() + 1
    return frame[keys + [image]].merge(images, on=keys + [image], how="left")["site"].to_numpy(np.int64)
