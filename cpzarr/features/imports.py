"""Import single-cell features computed elsewhere: DeepProfiler ``.npz`` and CellProfiler CSVs.

The readers live in :mod:`cpzarr.formats` (:mod:`~cpzarr.formats.deepprofiler`,
:mod:`~cpzarr.formats.cellprofiler`, :mod:`~cpzarr.formats.sqlite`,
:mod:`~cpzarr.formats.cytotable`) and return the layout of a ``/features/<name>`` node
(``docs/architecture.md``): an ``xarray.Dataset`` with ``features[cell, feature]`` float32, a
``feature`` coordinate of names, and ``plate``, ``well``, ``site``, ``x``, ``y`` coordinates along
``cell``, sorted by plate, well, site, then y, x as the ``/cells`` node. This module writes that
node: given a ``store`` the importers also write it (and ``/cells`` when the store has images but
no cells yet), so that features computed elsewhere flow into the downstream engine. Sources may be
local paths or fsspec URLs (``storage_options``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cpzarr.errors import StoreError
from cpzarr.formats._features import CELL_COORDS, features_dataset
# Old import paths of the readers' names (tests and users import them from here).
from cpzarr.formats.cellprofiler import EXCLUDE, read_objects
from cpzarr.formats.deepprofiler import _dp_site, _npz_metadata, _PlainUnpickler, read_npz  # noqa: F401

__all__ = ["import_deepprofiler", "import_cellprofiler", "write_imported", "EXCLUDE"]

_CELL_COORDS = CELL_COORDS
_dataset = features_dataset


def import_deepprofiler(path, *, channels=None, config=None, store=None, name="deepprofiler", storage_options=None):
    """Read DeepProfiler's single-cell feature files into a features Dataset (and a store).

    The reading is :func:`cpzarr.formats.deepprofiler.read_npz`; given a ``store`` the result is
    also written as ``/features/<name>`` (:func:`write_imported`).

    The files, their metadata and the feature names are described at that function.

    Parameters
    ----------
    path : str or Path
        DeepProfiler's ``features`` folder, one plate folder, or a single ``.npz`` file; a local
        path or an fsspec URL (``s3://bucket/features``).
    channels : sequence of str, optional
        Channel order of the feature blocks (e.g. ``["DNA", "RNA", "ER", "AGP", "Mito"]``).
    config : str or Path, optional
        DeepProfiler config JSON to take the channel order from.
    store : str or Path, optional
        Write the result as ``/features/<name>`` into this store (see :func:`write_imported`).
    name : str
        Node name under ``/features``.
    storage_options : dict, optional
        fsspec options of a URL ``path`` (credentials, ``endpoint_url``).

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
    ds = read_npz(path, channels=channels, config=config, storage_options=storage_options)
    if store is not None:
        write_imported(store, ds, name)
    return ds


def import_cellprofiler(
    path_or_tables,
    *,
    compartments=("Cells", "Cytoplasm", "Nuclei"),
    exclude=EXCLUDE,
    join="exact",
    store=None,
    name="cellprofiler",
    storage_options=None,
):
    """Read CellProfiler single-cell tables into a features Dataset (and a store).

    The reading is :func:`cpzarr.formats.cellprofiler.read_objects` (CytoTable Parquet:
    :func:`cpzarr.formats.cytotable.read_cytotable`); given a ``store`` the result is also written
    as ``/features/<name>`` (:func:`write_imported`).

    How table sets are joined and which columns are features is described at that function.

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
    store : str or Path, optional
        Write the result as ``/features/<name>`` into this store (see :func:`write_imported`).
    name : str
        Node name under ``/features``.
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
    >>> ds = import_cellprofiler("../shared/data/cellprofiler_single_cell_jump/BR00116991_cpg0043")  # doctest: +SKIP
    >>> ds.sizes["cell"]  # doctest: +SKIP
    109
    """
    ds = read_objects(path_or_tables, compartments=compartments, exclude=exclude, join=join,
                      storage_options=storage_options)
    if store is not None:
        write_imported(store, ds, name)
    return ds


# --------------------------------------------------------------------------------------------
# The node in the store
# --------------------------------------------------------------------------------------------


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
    table = pd.DataFrame({c: features[c].values for c in CELL_COORDS})
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
