"""LINCS-style platemaps: ``barcode_platemap.csv`` naming each plate's layout, one file per layout.

The layout of the LINCS Cell Painting (and many Broad) batches::

    platemaps/<batch>/barcode_platemap.csv       Assay_Plate_Barcode, Plate_Map_Name[, Batch_Number, ...]
    platemaps/<batch>/platemap/<Plate_Map_Name>.txt   tab-separated: plate_map_name, well_position,
                                                       broad_sample, mg_per_ml, mmoles_per_liter, ...

:func:`read_lincs_platemap` joins them into one platemap keyed by (plate, well), as
``cpzarr ingest --platemap barcode_platemap.csv`` takes it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cpzarr.errors import InputError

__all__ = ["is_lincs_platemap", "read_lincs_platemap"]

BARCODE_FILE = "barcode_platemap.csv"
_BARCODE, _MAP = "Assay_Plate_Barcode", "Plate_Map_Name"


def is_lincs_platemap(path) -> bool:
    """True for a ``barcode_platemap.csv`` (or a folder holding one) beside a ``platemap`` folder.

    Examples
    --------
    >>> is_lincs_platemap("platemaps/2016_04_01_a549_48hr_batch1/barcode_platemap.csv")  # doctest: +SKIP
    True
    """
    if not isinstance(path, (str, Path)):
        return False
    path = Path(path)
    if path.is_dir():
        path = path / BARCODE_FILE
    return path.name == BARCODE_FILE and path.is_file() and (path.parent / "platemap").is_dir()


def read_lincs_platemap(path) -> pd.DataFrame:
    """Join ``barcode_platemap.csv`` with the platemap file of each plate.

    Parameters
    ----------
    path : str or Path
        ``barcode_platemap.csv``, or the batch folder holding it and the ``platemap`` folder.

    Returns
    -------
    DataFrame
        One row per (plate, well): ``Metadata_Plate`` (the barcode), the barcode file's other
        columns (``Batch_Number``, ``Batch_Date``; its ``Plate_Map_Name`` only where the layout
        file has no ``plate_map_name`` of its own), then the layout file's columns as written
        (``well_position``, ``broad_sample``, ``mmoles_per_liter`` …).

    Raises
    ------
    InputError
        A missing column or layout file (every missing file is named).

    Examples
    --------
    >>> pm = read_lincs_platemap("platemaps/2016_04_01_a549_48hr_batch1")  # doctest: +SKIP
    >>> pm.loc[0, ["Metadata_Plate", "well_position"]].tolist()  # doctest: +SKIP
    ['SQ00014812', 'A01']
    """
    path = Path(path)
    if path.is_dir():
        path = path / BARCODE_FILE
    try:
        barcodes = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"The barcode platemap {path} cannot be read: {err}") from None
    missing = [c for c in (_BARCODE, _MAP) if c not in barcodes.columns]
    if missing:
        raise InputError(f"The barcode platemap {path} lacks the column(s) {', '.join(missing)}")
    folder = path.parent / "platemap"
    layouts, problems = {}, []
    for name in barcodes[_MAP].unique():
        found = [folder / f"{name}{suffix}" for suffix in (".txt", ".tsv", ".csv")
                 if (folder / f"{name}{suffix}").is_file()]
        if not found:
            problems.append(f"{folder / (name + '.txt')} does not exist (Plate_Map_Name of "
                            f"{', '.join(barcodes.loc[barcodes[_MAP] == name, _BARCODE])})")
            continue
        sep = "," if found[0].suffix == ".csv" else "\t"
        layout = pd.read_csv(found[0], sep=sep)
        if "well_position" not in layout.columns:
            problems.append(f"{found[0]} has no well_position column")
            continue
        layouts[name] = layout
    if problems:
        raise InputError(f"The LINCS platemap {path} is incomplete.", problems)
    frames = []
    for record in barcodes.to_dict("records"):
        layout = layouts[record[_MAP]]
        plate_columns = {"Metadata_Plate": record[_BARCODE]}
        for column, value in record.items():
            if column == _BARCODE or (column == _MAP and "plate_map_name" in layout.columns):
                continue
            plate_columns[column] = value
        frames.append(layout.assign(**plate_columns)[[*plate_columns, *layout.columns]])
    return pd.concat(frames, ignore_index=True)
