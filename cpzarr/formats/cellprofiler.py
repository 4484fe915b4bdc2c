"""CellProfiler object tables: ``Image.csv`` with ``Nuclei.csv`` (and ``Cells``, ``Cytoplasm``).

Two readers over the same tables, behind the :mod:`cpzarr.formats` contract:

* ``cellprofiler_locations`` (kind ``locations``): nucleus centres, ``ImageNumber`` mapped to
  plate, well and site through ``Image.csv`` (:func:`cpzarr.cells.import_locations` uses it);
* ``cellprofiler_objects`` (kind ``features``): the compartment tables joined as Pycytominer does
  (:func:`read_objects`; :func:`cpzarr.features.import_cellprofiler` also writes the result into
  a store).

Either takes a ``Nuclei.csv`` file, a folder of the tables, or a folder of such folders, as a
local path or an fsspec URL (``storage_options`` for its credentials).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cpzarr._tables import normalize_well
from cpzarr.errors import InputError
from cpzarr.formats._contract import Format, register
from cpzarr.formats._csv import X_COLUMNS, Y_COLUMNS, numbers, pick_column, read_location_csv
from cpzarr.formats._features import CELL_COORDS, features_dataset
from cpzarr.formats._fs import as_path, read_csv

__all__ = ["EXCLUDE", "LOCATIONS", "OBJECTS", "read_locations", "read_objects"]


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


def locations_kind(path) -> str:
    """``"cellprofiler"`` when ``path`` is a file or holds a Nuclei table (in it or a sub-folder),
    else ``"deepprofiler"``: how :func:`cpzarr.cells.import_locations` picks a reader."""
    if path.is_file():
        return "cellprofiler"
    if _table(path, "Nuclei") or any(_table(d, "Nuclei") for d in path.iterdir() if d.is_dir()):
        return "cellprofiler"
    return "deepprofiler"


def read_locations(path, storage_options=None):
    """Nucleus centres of CellProfiler tables: a DataFrame of the ``locations`` contract.

    Rows from a Nuclei table and its Image table (or one folder of them per site); ``path`` is a
    local path or an fsspec URL (with ``storage_options``).
    """
    source = as_path(path, storage_options)
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


#: Column prefixes of a compartment table that are bookkeeping (object numbers, links) or
#: position in the image, not phenotype.
EXCLUDE = (
    "ImageNumber",
    "ObjectNumber",
    "Number_Object_Number",
    "Parent_",
    "Children_",
    "Location_",
    "Metadata_",
    "AreaShape_Center_",
    "AreaShape_BoundingBoxMinimum_",
    "AreaShape_BoundingBoxMaximum_",
    "Neighbors_FirstClosestObjectNumber_",
    "Neighbors_SecondClosestObjectNumber_",
)
_TABLES = ("Image", "Nuclei", "Cells", "Cytoplasm")


def read_objects(
    path_or_tables,
    *,
    compartments=("Cells", "Cytoplasm", "Nuclei"),
    exclude=EXCLUDE,
    join="exact",
    storage_options=None,
):
    """Read CellProfiler single-cell tables into a features Dataset.

    Each table set (a folder with ``Image.csv`` and the compartment CSVs, optionally gzipped, a
    dict of DataFrames, or the tables of one ``TableNumber`` of a CellProfiler SQLite database,
    see :mod:`cpzarr.formats.sqlite`) is joined as Pycytominer does: the cytoplasm is the hub, its
    ``Parent_Cells`` and ``Parent_Nuclei`` matching the ``ObjectNumber`` of the cells and nuclei of
    the same ``ImageNumber``; without a cytoplasm table, ``Cells.Parent_Nuclei`` links cells to
    nuclei. Objects without a partner are dropped (an inner join). ``Image.csv`` gives
    ``Metadata_Plate``, ``Metadata_Well`` and ``Metadata_Site``; the nucleus centre
    (``Location_Center_X/Y`` of the nuclei, else of the first compartment) gives x and y.

    Features are every numeric column of the compartment tables, prefixed with the compartment
    (``Cells_AreaShape_Area``), except those starting with an ``exclude`` entry: object numbers,
    parent/child links and positions are bookkeeping, not phenotype. ImageNumber is only unique
    within one CellProfiler run, so table sets are joined one at a time.

    Parameters
    ----------
    path_or_tables : str, Path, dict of DataFrame, or a list of them
        A folder (local path or fsspec URL) holding the CSVs, a folder of such folders (one per site or per run, as
        ``BR00121431_Target2/<well>-<site>/``), ``{"Image": df, "Nuclei": df, ...}``, a
        CellProfiler ``.sqlite`` database (``Image``, ``Cells``, ``Cytoplasm``, ``Nuclei`` tables
        keyed by ``TableNumber``/``ImageNumber``/``ObjectNumber``), or CytoTable's joined
        ``.parquet`` output (read by :func:`cpzarr.formats.cytotable.import_cytotable`). Folders
        with only ``Image.csv`` (sites whose objects were not exported) are skipped with a warning.
    compartments : sequence of str
        Compartment tables to join, in the order their features appear.
    exclude : sequence of str
        Column-name prefixes (before the compartment prefix) that are not features.
    join : {"exact", "inner"}
        When table sets come from different pipelines and measure different columns: raise
        (``"exact"``), or keep the columns all of them have (``"inner"``, with a warning).
    storage_options : dict, optional
        fsspec options when the tables are at a URL (``s3://bucket/BR00116991``).

    Returns
    -------
    Dataset (cell, feature)
        ``features`` float32 with coordinates plate, well, site, x, y and ``object_id`` (the
        nucleus's ObjectNumber) along ``cell``.

    Raises
    ------
    InputError
        A missing table or column, a failed join, or compartments whose feature columns differ
        between table sets; the file and column are named.

    Examples
    --------
    >>> ds = read_objects("../shared/data/cellprofiler_single_cell_jump/BR00116991_cpg0043")  # doctest: +SKIP
    >>> ds.sizes["cell"]  # doctest: +SKIP
    109
    """
    compartments = [c.capitalize() for c in compartments]
    if not compartments:
        raise InputError("import_cellprofiler: no compartments to import")
    if _is_parquet(path_or_tables):
        from cpzarr.formats.cytotable import read_cytotable

        return read_cytotable(path_or_tables, compartments=compartments, exclude=exclude,
                              storage_options=storage_options)
    from cpzarr.formats.sqlite import _SUFFIXES, cellprofiler_table_sets, is_sqlite
    from cpzarr.store import is_url, local_copy

    database = path_or_tables
    if isinstance(database, str) and is_url(database) and database.lower().endswith(_SUFFIXES):
        try:  # sqlite reads files on disk only: a URL's database is copied into cpzarr's cache
            database = local_copy(database, storage_options)
        except FileNotFoundError as err:
            raise InputError(f"CellProfiler import: {err}") from None
    if is_sqlite(database):
        sets, skipped = cellprofiler_table_sets(database, compartments), []
    else:
        sets, skipped = _table_sets(path_or_tables, compartments, storage_options)
    if skipped:
        warnings.warn(
            f"CellProfiler import: {len(skipped)} folders hold no object tables and were skipped: "
            + ", ".join(map(str, skipped)),
            stacklevel=2,
        )
    if not sets:
        raise InputError(f"CellProfiler import: no table set with {', '.join(compartments)} under {path_or_tables}")
    if join not in ("exact", "inner"):
        raise InputError(f"import_cellprofiler: join must be 'exact' or 'inner', not {join!r}")
    frames, columns = [], None
    for label, tables in sets:
        merged = _join(label, tables, compartments, exclude)
        feats = [c for c in merged.columns if c not in CELL_COORDS and c != "object_id"]
        if columns is None:
            columns, first = feats, label
        elif feats != columns:
            gone, extra = sorted(set(columns) - set(feats)), sorted(set(feats) - set(columns))
            if join == "exact":
                raise InputError(
                    f"CellProfiler import: {label} lacks {len(gone)} and adds {len(extra)} feature columns "
                    f"compared with {first} (a different pipeline?); pass join='inner' to keep the common ones",
                    [f"missing: {c}" for c in gone[:10]] + [f"extra: {c}" for c in extra[:10]],
                )
            warnings.warn(
                f"CellProfiler import: {label} and {first} differ in {len(gone) + len(extra)} feature columns; "
                "keeping the common ones",
                stacklevel=2,
            )
            kept = set(feats)
            columns = [c for c in columns if c in kept]
        frames.append(merged)
    table = pd.concat(frames, ignore_index=True)
    values = table[columns].to_numpy(np.float32)
    source = "tables" if isinstance(path_or_tables, dict) else str(path_or_tables)
    return features_dataset(table[[*CELL_COORDS, "object_id"]], values, columns,
                            {"source": source, "importer": "cellprofiler"})


def _is_parquet(source):
    return (isinstance(source, (str, Path)) or hasattr(source, "storage_options")) and str(source).lower().endswith(
        (".parquet", ".pq"))


def _table_sets(source, compartments, storage_options=None):
    """List of (label, {table: DataFrame or Path}) and the folders skipped for lack of objects."""
    if isinstance(source, dict):
        return [("tables", source)], []
    if isinstance(source, (list, tuple)):
        sets, skipped = [], []
        for item in source:
            s, k = _table_sets(item, compartments, storage_options)
            sets += s
            skipped += k
        return sets, skipped
    folder = as_path(source, storage_options)
    if not folder.is_dir():
        raise InputError(f"CellProfiler import: {folder} is not a folder of CellProfiler CSVs")
    found = {t: _table(folder, t) for t in ("Image", *compartments)}
    if found["Image"] is not None:
        if all(found[c] is None for c in compartments):
            return [], [folder]
        return [(str(folder), found)], []
    sets, skipped = [], []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        s, k = _table_sets(child, compartments)
        sets += s
        skipped += k
    return sets, skipped


def _read(label, tables, table):
    value = tables.get(table)
    where = f"{label}/{table}" if isinstance(value, pd.DataFrame) or value is None else str(value)
    if value is None:
        raise InputError(f"CellProfiler import: {label} has no {table} table")
    frame = value if isinstance(value, pd.DataFrame) else read_csv(value, low_memory=False)
    return frame, where


def _need(frame, where, columns):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"CellProfiler import: {where} lacks the columns {missing}")


def _join(label, tables, compartments, exclude):
    """One table set → DataFrame of plate, well, site, x, y, object_id and prefixed features."""
    image, image_where = _read(label, tables, "Image")
    _need(image, image_where, ["ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site"])
    frames = {}
    for comp in compartments:
        frame, where = _read(label, tables, comp)
        _need(frame, where, ["ImageNumber", "ObjectNumber"])
        frames[comp] = (frame, where)

    def prefixed(comp, keep=()):
        frame, _ = frames[comp]
        numeric = [
            c
            for c, dtype in frame.dtypes.items()
            if not str(c).startswith(tuple(exclude)) and pd.api.types.is_numeric_dtype(dtype)
        ]
        out = frame[["ImageNumber", "ObjectNumber", *keep, *numeric]].copy()
        return out.rename(columns={c: f"{comp}_{c}" for c in ["ObjectNumber", *keep, *numeric]})

    # The centre of each cell, taken from the nuclei where available.
    loc_comp = "Nuclei" if "Nuclei" in frames else compartments[0]
    loc_frame, loc_where = frames[loc_comp]
    _need(loc_frame, loc_where, ["Location_Center_X", "Location_Center_Y"])

    links = []
    if "Cytoplasm" in frames and len(frames) > 1:
        hub = "Cytoplasm"
        for other in [c for c in ("Cells", "Nuclei") if c in frames]:
            links.append((other, f"Parent_{other}"))
    elif "Cells" in frames and "Nuclei" in frames:
        hub = "Cells"
        links.append(("Nuclei", "Parent_Nuclei"))
    elif len(frames) == 1:
        hub = compartments[0]
    else:
        raise InputError(f"CellProfiler import: cannot link the compartments {compartments} of {label}")
    hub_frame, hub_where = frames[hub]
    _need(hub_frame, hub_where, [col for _, col in links])
    merged = prefixed(hub, keep=[col for _, col in links])
    for other, col in links:
        right = prefixed(other)
        before = len(merged)
        try:
            merged = merged.merge(
                right,
                left_on=["ImageNumber", f"{hub}_{col}"],
                right_on=["ImageNumber", f"{other}_ObjectNumber"],
                how="inner",
                validate="many_to_one",
            )
        except pd.errors.MergeError:
            raise InputError(
                f"CellProfiler import: {frames[other][1]} repeats an (ImageNumber, ObjectNumber) pair, "
                f"so {hub_where}'s column {col} cannot pick one {other} object"
            ) from None
        if before and merged.empty:
            raise InputError(
                f"CellProfiler import: no {hub} object of {hub_where} has its {col} among the "
                f"{other} ObjectNumbers of {frames[other][1]} (same ImageNumber)"
            )
    loc = loc_frame[["ImageNumber", "ObjectNumber", "Location_Center_X", "Location_Center_Y"]].rename(
        columns={"ObjectNumber": f"{loc_comp}_ObjectNumber", "Location_Center_X": "x", "Location_Center_Y": "y"}
    )
    merged = merged.merge(loc, on=["ImageNumber", f"{loc_comp}_ObjectNumber"], how="left")
    sites = image[["ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]]
    unknown = sorted(set(merged["ImageNumber"]) - set(sites["ImageNumber"]))
    if unknown:
        raise InputError(
            f"CellProfiler import: ImageNumber {unknown[:10]} of {label} not found in {image_where}"
        )
    merged = merged.merge(sites, on="ImageNumber", how="left")
    out = pd.DataFrame(
        {
            "plate": merged["Metadata_Plate"].astype(str).to_numpy(object),
            "well": [normalize_well(w) for w in merged["Metadata_Well"]],
            "site": merged["Metadata_Site"].astype(np.int64).to_numpy(),
            "x": merged["x"].to_numpy(np.float64),
            "y": merged["y"].to_numpy(np.float64),
            "object_id": merged[f"{loc_comp}_ObjectNumber"].to_numpy(np.int64),
        }
    )
    drop = {"ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "x", "y"}
    drop |= {f"{c}_ObjectNumber" for c in frames} | {f"{hub}_{col}" for _, col in links}
    feats = merged[[c for comp in compartments for c in merged.columns if c not in drop and c.startswith(f"{comp}_")]]
    return pd.concat([out, feats.reset_index(drop=True)], axis=1)

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
