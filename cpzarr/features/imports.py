"""Import single-cell features computed elsewhere: DeepProfiler ``.npz`` and CellProfiler CSVs.

Both importers return the layout of a ``/features/<name>`` node (``docs/architecture.md``): an
``xarray.Dataset`` with ``features[cell, feature]`` float32, a ``feature`` coordinate of names, and
``plate``, ``well``, ``site``, ``x``, ``y`` coordinates along ``cell``, sorted by plate, well, site,
then y, x as the ``/cells`` node. Given a ``store`` they also write the node (and ``/cells`` when the
store has images but no cells yet), so that features computed elsewhere flow into the downstream
engine.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.errors import InputError, StoreError

__all__ = ["import_deepprofiler", "import_cellprofiler", "write_imported"]

_CELL_COORDS = ("plate", "well", "site", "x", "y")


# --------------------------------------------------------------------------------------------
# DeepProfiler
# --------------------------------------------------------------------------------------------

_SITE_FILE = re.compile(r"^(?P<well>[A-Za-z]+\d+)_(?P<site>[^/]+)$")


def import_deepprofiler(path, *, channels=None, config=None, store=None, name="deepprofiler"):
    """Read DeepProfiler's single-cell feature files into a features Dataset.

    DeepProfiler's ``profile`` step writes one file per site, ``<plate>/<well>_<site>.npz`` (or
    ``<plate>/<well>/<site>.npz``) under its ``features`` folder, holding ``features`` (cell ×
    feature), ``locations`` (cell × 2: x, y) and a pickled ``metadata`` dict
    (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, the channel file names,
    ``Metadata_Model`` …). The dict is read with an unpickler that only rebuilds plain values and
    numpy arrays, so a crafted file cannot run code.

    Plate, well and site come from the metadata (the path when a key is missing); sites such as
    ``s1`` become 1. Feature names: ``<channel>_<i:04d>`` when the channel order is known
    (``channels``, or ``dataset.images.channels`` of the DeepProfiler ``config`` that made the
    files); otherwise Pycytominer's ``<Metadata_Model>_<i>`` (``efficientnet_0`` …), because the
    metadata lists channel file names in the index table's column order, not in the order the
    model saw them.

    Parameters
    ----------
    path : str or Path
        DeepProfiler's ``features`` folder, one plate folder, or a single ``.npz`` file.
    channels : sequence of str, optional
        Channel order of the feature blocks (e.g. ``["DNA", "RNA", "ER", "AGP", "Mito"]``).
    config : str or Path, optional
        DeepProfiler config JSON to take the channel order from.
    store : str or Path, optional
        Write the result as ``/features/<name>`` into this store (see :func:`write_imported`).
    name : str
        Node name under ``/features``.

    Returns
    -------
    Dataset (cell, feature)
        ``features`` float32 with coordinates plate, well, site, x, y along ``cell``.

    Raises
    ------
    InputError
        No files; unreadable files or missing arrays; feature widths that differ between files
        or do not split into the given channels; every offending file is named.

    Examples
    --------
    >>> ds = import_deepprofiler("../shared/data/deepprofiler_single_cell_lincs/features")  # doctest: +SKIP
    >>> ds.sizes["feature"]  # doctest: +SKIP
    6400
    """
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(set(root.glob("**/*.npz")))
    else:
        raise InputError(f"DeepProfiler features: {root} does not exist")
    if not files:
        raise InputError(f"DeepProfiler features: no .npz files under {root}")
    if config is not None and channels is None:
        channels = _config_channels(config)

    frames, blocks, problems, model, seen = [], [], [], None, {}
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as npz:
                missing = [k for k in ("features", "locations") if k not in npz.files]
                if missing:
                    problems.append(f"{file}: no {' or '.join(missing)} array")
                    continue
                features = np.asarray(npz["features"], np.float32)
                locations = np.asarray(npz["locations"], np.float64)
            metadata = _npz_metadata(file)
        except (OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
            problems.append(f"{file}: unreadable ({err})")
            continue
        if features.size == 0 and locations.size == 0:
            continue  # a site without cells
        if features.ndim != 2 or locations.shape != (features.shape[0], 2):
            problems.append(f"{file}: features {features.shape} and locations {locations.shape} do not pair up")
            continue
        try:
            plate, well, site = _dp_site(file, root, metadata)
        except ValueError as err:
            problems.append(f"{file}: {err}")
            continue
        if (plate, well, site) in seen:
            first = seen[plate, well, site]
            problems.append(f"{file}: plate {plate}, well {well}, site {site} again (also in {first})")
            continue
        seen[plate, well, site] = file
        model = model or metadata.get("Metadata_Model")
        frames.append(
            pd.DataFrame(
                {"plate": plate, "well": well, "site": site, "x": locations[:, 0], "y": locations[:, 1]}
            )
        )
        blocks.append(features)
    if not problems:
        widths = {b.shape[1] for b in blocks}
        if len(widths) > 1:
            common = max(widths, key=[b.shape[1] for b in blocks].count)
            problems += [
                f"{f}: {b.shape[1]} features, most files have {common}"
                for f, b in zip(seen.values(), blocks)
                if b.shape[1] != common
            ]
    if problems:
        raise InputError("DeepProfiler features: some files cannot be imported", problems)
    if not blocks:
        raise InputError(f"DeepProfiler features: the files under {root} hold no cells")

    width = blocks[0].shape[1]
    if channels is not None:
        channels = [str(c) for c in channels]
        if width % len(channels):
            raise InputError(
                f"DeepProfiler features: {width} features do not split into {len(channels)} channels {channels}"
            )
        per = width // len(channels)
        names = [f"{ch}_{i:04d}" for ch in channels for i in range(per)]
    else:
        names = [f"{model or 'DP'}_{i}" for i in range(width)]
    table = pd.concat(frames, ignore_index=True)
    ds = _dataset(table, np.concatenate(blocks), names, {"source": str(root), "importer": "deepprofiler"})
    if store is not None:
        write_imported(store, ds, name)
    return ds


def _config_channels(config):
    try:
        value = json.loads(Path(config).read_text())["dataset"]["images"]["channels"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"DeepProfiler config {config}: cannot read dataset.images.channels ({err})") from None
    return list(value)


class _PlainUnpickler(pickle.Unpickler):
    """Rebuilds plain Python values and numpy arrays/scalars, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the metadata")


def _npz_metadata(file):
    """The ``metadata`` dict of a DeepProfiler npz, read without trusting the pickle."""
    with zipfile.ZipFile(file) as archive:
        if "metadata.npy" not in archive.namelist():
            return {}
        stream = io.BytesIO(archive.read("metadata.npy"))
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        _, _, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype != object:
        return {}
    value = _PlainUnpickler(stream).load()
    value = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    if not isinstance(value, dict):
        raise ValueError(f"metadata is a {type(value).__name__}, not a dict")
    return value


def _dp_site(file, root, metadata):
    """(plate, well, site) of a DeepProfiler file, from its metadata or else its path."""
    from cpzarr.cells import normalize_well

    parts = file.relative_to(root).with_suffix("").parts if file != root else (file.stem,)
    match = _SITE_FILE.match(parts[-1])
    if match:
        from_path = {"plate": parts[-2] if len(parts) > 1 else None, "well": match["well"], "site": match["site"]}
    else:  # <plate>/<well>/<site>.npz
        from_path = {
            "plate": parts[-3] if len(parts) > 2 else None,
            "well": parts[-2] if len(parts) > 1 else None,
            "site": parts[-1],
        }
    plate = metadata.get("Metadata_Plate", from_path["plate"])
    well = metadata.get("Metadata_Well", from_path["well"])
    site = metadata.get("Metadata_Site", from_path["site"])
    if plate is None or well is None:
        raise ValueError("no plate/well in the metadata and none in the path (<plate>/<well>_<site>.npz)")
    digits = re.fullmatch(r"\D*(\d+)", str(site))
    if not digits:
        raise ValueError(f"site {site!r} is not a site number")
    return str(plate), normalize_well(well), int(digits.group(1))


# --------------------------------------------------------------------------------------------
# CellProfiler
# --------------------------------------------------------------------------------------------

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


def import_cellprofiler(
    path_or_tables,
    *,
    compartments=("Cells", "Cytoplasm", "Nuclei"),
    exclude=EXCLUDE,
    join="exact",
    store=None,
    name="cellprofiler",
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
        A folder holding the CSVs, a folder of such folders (one per site or per run, as
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
    store : str or Path, optional
        Write the result as ``/features/<name>`` into this store (see :func:`write_imported`).
    name : str
        Node name under ``/features``.

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
    >>> ds = import_cellprofiler("../shared/data/cellprofiler_single_cell_jump/BR00116991_cpg0043")  # doctest: +SKIP
    >>> ds.sizes["cell"]  # doctest: +SKIP
    109
    """
    compartments = [c.capitalize() for c in compartments]
    if not compartments:
        raise InputError("import_cellprofiler: no compartments to import")
    if _is_parquet(path_or_tables):
        from cpzarr.formats.cytotable import import_cytotable

        return import_cytotable(path_or_tables, compartments=compartments, exclude=exclude, store=store, name=name)
    from cpzarr.formats.sqlite import cellprofiler_table_sets, is_sqlite

    if is_sqlite(path_or_tables):
        sets, skipped = cellprofiler_table_sets(path_or_tables, compartments), []
    else:
        sets, skipped = _table_sets(path_or_tables, compartments)
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
        feats = [c for c in merged.columns if c not in _CELL_COORDS and c != "object_id"]
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
    ds = _dataset(table[[*_CELL_COORDS, "object_id"]], values, columns, {"source": source, "importer": "cellprofiler"})
    if store is not None:
        write_imported(store, ds, name)
    return ds


def _is_parquet(source):
    return isinstance(source, (str, Path)) and str(source).lower().endswith((".parquet", ".pq"))


def _find_table(folder, stem):
    for suffix in (".csv", ".csv.gz"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _table_sets(source, compartments):
    """List of (label, {table: DataFrame or Path}) and the folders skipped for lack of objects."""
    if isinstance(source, dict):
        return [("tables", source)], []
    if isinstance(source, (list, tuple)):
        sets, skipped = [], []
        for item in source:
            s, k = _table_sets(item, compartments)
            sets += s
            skipped += k
        return sets, skipped
    folder = Path(source)
    if not folder.is_dir():
        raise InputError(f"CellProfiler import: {folder} is not a folder of CellProfiler CSVs")
    found = {t: _find_table(folder, t) for t in ("Image", *compartments)}
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
    frame = value if isinstance(value, pd.DataFrame) else pd.read_csv(value, low_memory=False)
    return frame, where


def _need(frame, where, columns):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"CellProfiler import: {where} lacks the columns {missing}")


def _join(label, tables, compartments, exclude):
    """One table set → DataFrame of plate, well, site, x, y, object_id and prefixed features."""
    from cpzarr.cells import normalize_well

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


# --------------------------------------------------------------------------------------------
# The Dataset and its node in the store
# --------------------------------------------------------------------------------------------


def _dataset(table, values, names, attrs):
    """Features Dataset sorted by plate, well, site, then y, x."""
    table = table.reset_index(drop=True)
    order = np.lexsort(
        (
            table["x"].to_numpy(),
            table["y"].to_numpy(),
            table["site"].to_numpy(),
            table["well"].to_numpy(str),
            table["plate"].to_numpy(str),
        )
    )
    table = table.iloc[order].reset_index(drop=True)
    coords = {
        "plate": ("cell", table["plate"].astype(str).to_numpy(object)),
        "well": ("cell", table["well"].astype(str).to_numpy(object)),
        "site": ("cell", table["site"].to_numpy(np.int64)),
        "x": ("cell", table["x"].to_numpy(np.float64)),
        "y": ("cell", table["y"].to_numpy(np.float64)),
        "feature": np.asarray(names, dtype=object),
    }
    if "object_id" in table:
        coords["object_id"] = ("cell", table["object_id"].to_numpy(np.int64))
    features = np.ascontiguousarray(values[order], dtype=np.float32)
    return xr.Dataset({"features": (("cell", "feature"), features)}, coords=coords, attrs=attrs)


def write_imported(store, features, name, *, chunk=1024):
    """Write imported features as ``/features/<name>`` (and ``/cells`` when the store has none).

    The cells are put in store order (plate, well and site as the root lists them, then y, x);
    every cell must lie in a site the store has. Without a ``/cells`` node one is built from the
    features' coordinates (with ``object_id`` when imported from CellProfiler); with one, it must
    list the same cells (plate, well, site per cell), so rows of ``/features/<name>`` and ``/cells``
    stay aligned. Nodes are written atomically by :func:`cpzarr.store.write_node` (overwriting an
    older ``/features/<name>``).

    Parameters
    ----------
    store : str or Path
        A store made by :func:`cpzarr.ingest`.
    features : Dataset (cell, feature)
        From :func:`import_deepprofiler` or :func:`import_cellprofiler`.
    name : str
        Node name under ``/features``.
    chunk : int
        Cells per chunk along ``cell``.

    Returns
    -------
    Dataset (cell, feature)
        ``features`` in the order written.

    Raises
    ------
    StoreError
        Not a store, or its ``/cells`` lists other cells than the features.
    InputError
        Cells in sites that the store does not have (every such site is named).

    Examples
    --------
    >>> write_imported("screen.zarr", import_deepprofiler("features"), "deepprofiler")  # doctest: +SKIP
    """
    from cpzarr.cells import cells_from_table, site_positions, write_cells
    from cpzarr.features.cnn import feature_compressor
    from cpzarr.store import node_exists, open_screen, write_node

    screen = open_screen(store, allow_incomplete=True)
    images = screen["images"]
    table = pd.DataFrame({c: features[c].values for c in _CELL_COORDS})
    pos = site_positions(table, images)
    order = np.lexsort((table["x"].to_numpy(), table["y"].to_numpy(), pos[:, 2], pos[:, 1], pos[:, 0]))
    features = features.isel(cell=order)
    if node_exists(store, "cells"):
        cells = screen["cells"].to_dataset(inherit=False)
        same = cells.sizes.get("cell") == features.sizes["cell"] and all(
            np.array_equal(np.asarray(cells[c].values, dtype=object), np.asarray(features[c].values, dtype=object))
            for c in ("plate", "well", "site")
        )
        if not same:
            raise StoreError(
                f"{store}/cells lists other cells ({cells.sizes.get('cell')}) than the imported features "
                f"({features.sizes['cell']}): the rows of /features/{name} would not match /cells. Import "
                "the locations from the same source, or use a store without /cells."
            )
    else:
        cells_table = table.iloc[order].reset_index(drop=True)
        if "object_id" in features.coords:
            cells_table["object_id"] = features["object_id"].values
        provenance = {"function": f"cpzarr.features.import_{features.attrs.get('importer', '')}",
                      "source": features.attrs.get("source", "")}
        write_cells(store, cells_from_table(cells_table, images, attrs={"provenance": json.dumps(provenance)}))
    node = features.assign(features=features["features"].chunk({"cell": chunk, "feature": -1}))
    provenance = {
        "stage": "features",
        "function": f"cpzarr.features.import_{features.attrs.get('importer', '')}",
        "source": features.attrs.get("source", ""),
        "cells": int(features.sizes["cell"]),
        "features": int(features.sizes["feature"]),
    }
    write_node(store, f"features/{name}", node, provenance=provenance, overwrite=True,
               encoding={"features": {"compressors": feature_compressor()}})
    return features
