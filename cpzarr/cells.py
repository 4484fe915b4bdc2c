"""Cells of a screen: the ``/cells`` node, imported from location files or detected.

A cell is a nucleus centre. The ``/cells`` node (see ``docs/architecture.md``) lists every cell
along the ``cell`` dimension, sorted by plate, well and site (then y, x), with

- ``plate``, ``well``, ``site`` coordinates along ``cell``;
- ``x``, ``y`` (float64, pixel units, CellProfiler's convention: the centre of the top-left pixel
  is (0, 0), x is the column, y the row), optional ``area`` and ``object_id``;
- ``cell_start``, ``cell_count`` over (plate, well, site): the cells of a site are
  ``cell_start : cell_start + cell_count``.

xarray cannot hold both a ``plate`` coordinate along ``cell`` and one along ``plate`` in the same
node, so the (plate, well, site) dimensions of ``cell_start``/``cell_count`` carry no labels of their
own: they are positional and follow the order of the root node's ``plate``, ``well`` and ``site``
coordinates (the node's ``attrs`` repeat those labels for readers of the node alone).

Three ways to get the node:

- :func:`import_locations` reads DeepProfiler location files
  (``locations/<plate>/<well>-<site>-Nuclei.csv``) or CellProfiler object tables
  (``Nuclei.csv`` + ``Image.csv``);
- :func:`detect_nuclei` segments nuclei on the DNA channel with scikit-image;
- :func:`write_cells` writes either into the store.
"""

import json
import re
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.errors import InputError, StoreError

__all__ = ["import_locations", "detect_nuclei", "write_cells", "cells_table"]

_SITE_DIMS = ("plate", "well", "site")
_CELL_COLUMNS = ("plate", "well", "site", "x", "y")


# --------------------------------------------------------------------------------------------
# The screen and its parts
# --------------------------------------------------------------------------------------------


def screen_parts(screen, cells=None, *, need_cells=True):
    """Split a screen into its ``images`` array and its ``/cells`` node.

    Parameters
    ----------
    screen : DataTree or Dataset
        The whole store (``open_screen``) or a Dataset holding ``images``.
    cells : Dataset or pandas.DataFrame, optional
        A ``/cells`` node (or a table with plate, well, site, x, y columns) to use instead of the
        store's own.
    need_cells : bool
        Raise when no cells are found.

    Returns
    -------
    images : DataArray (plate, well, site, channel, y, x)
    cells : Dataset (cell) or None
    root : Dataset
        The root node (images, present, well metadata).
    """
    if isinstance(screen, xr.DataTree):
        root = screen.to_dataset(inherit=False)
        if cells is None and "cells" in screen.children:
            cells = screen["cells"].to_dataset(inherit=False)
    elif isinstance(screen, xr.Dataset):
        root = screen
    else:
        raise InputError(
            f"screen must be an xarray DataTree (cpzarr.open_screen) or a Dataset with 'images', "
            f"not {type(screen).__name__}"
        )
    if "images" not in root:
        raise StoreError("the screen has no 'images' variable; open a cpzarr store with open_screen")
    images = root["images"]
    missing = [d for d in (*_SITE_DIMS, "channel", "y", "x") if d not in images.dims]
    if missing:
        raise StoreError(f"'images' lacks the dimensions {missing}; expected {_SITE_DIMS + ('channel', 'y', 'x')}")
    images = images.transpose(*_SITE_DIMS, "channel", "y", "x")
    if isinstance(cells, pd.DataFrame):
        cells = cells_from_table(cells, images)
    if cells is None and need_cells:
        raise StoreError(
            "the screen has no /cells node: run cpzarr.cells.import_locations or "
            "cpzarr.cells.detect_nuclei and write_cells first, or pass cells="
        )
    return images, cells, root


def cells_table(cells):
    """The cells of a ``/cells`` node as a pandas DataFrame.

    Parameters
    ----------
    cells : Dataset (cell)
        A ``/cells`` node.

    Returns
    -------
    pandas.DataFrame
        One row per cell: plate, well, site, x, y (and area, object_id when present), indexed by
        the cell's position in the node.

    Examples
    --------
    >>> table = cells_table(screen["cells"].to_dataset())  # doctest: +SKIP
    """
    columns = {}
    for name in cells.variables:
        if cells[name].dims == ("cell",):
            columns[name] = np.asarray(cells[name].values)
    frame = pd.DataFrame(columns)
    for name in ("plate", "well"):
        if name in frame:
            frame[name] = frame[name].astype(str).astype(object)
    frame.index.name = "cell"
    return frame


def site_positions(table, images):
    """Positional (plate, well, site) indices of each cell in the ``images`` array.

    Parameters
    ----------
    table : pandas.DataFrame
        Cells with plate, well, site columns.
    images : DataArray (plate, well, site, channel, y, x)

    Returns
    -------
    ndarray (cell, 3) of int64

    Raises
    ------
    InputError
        Naming every (plate, well, site) of the table that the store does not have.
    """
    positions = []
    unknown = np.zeros(len(table), dtype=bool)
    for dim in _SITE_DIMS:
        labels = pd.Index(np.asarray(images[dim].values).astype(str if dim != "site" else np.int64))
        values = table[dim].to_numpy()
        values = values.astype(str) if dim != "site" else values.astype(np.int64)
        found = labels.get_indexer(values)
        unknown |= found < 0
        positions.append(found)
    if unknown.any():
        bad = table.loc[unknown, list(_SITE_DIMS)].drop_duplicates()
        raise InputError(
            f"{int(unknown.sum())} cells lie in {len(bad)} sites the store does not have",
            [f"plate {p}, well {w}, site {s}" for p, w, s in bad.itertuples(index=False)],
        )
    return np.stack(positions, axis=1).astype(np.int64)


def cells_from_table(table, images, *, attrs=None):
    """Build a ``/cells`` node from a table of cells.

    Parameters
    ----------
    table : pandas.DataFrame
        Columns plate, well, site, x, y and optionally area, object_id.
    images : DataArray (plate, well, site, channel, y, x)
        The store's images, whose plate/well/site order the offsets follow.
    attrs : dict, optional
        Attributes for the node (provenance).

    Returns
    -------
    Dataset (cell)
        Sorted by plate, well, site (in store order), then y, x, with ``cell_start`` and
        ``cell_count`` over (plate, well, site).

    Examples
    --------
    >>> table = pd.DataFrame({"plate": ["P1"], "well": ["A01"], "site": [1], "x": [5.0], "y": [7.0]})
    >>> cells = cells_from_table(table, screen["images"])  # doctest: +SKIP
    """
    missing = [c for c in _CELL_COLUMNS if c not in table]
    if missing:
        raise InputError(f"the cell table lacks the columns {missing}")
    table = table.reset_index(drop=True)
    pos = site_positions(table, images)
    order = np.lexsort((table["x"].to_numpy(), table["y"].to_numpy(), pos[:, 2], pos[:, 1], pos[:, 0]))
    table = table.iloc[order].reset_index(drop=True)
    pos = pos[order]
    shape = tuple(images.sizes[d] for d in _SITE_DIMS)
    flat = np.ravel_multi_index(pos.T, shape) if len(pos) else np.zeros(0, np.int64)
    count = np.bincount(flat, minlength=int(np.prod(shape))).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    data = {
        "x": ("cell", table["x"].to_numpy(np.float64)),
        "y": ("cell", table["y"].to_numpy(np.float64)),
        "cell_start": (_SITE_DIMS, start.reshape(shape)),
        "cell_count": (_SITE_DIMS, count.reshape(shape)),
    }
    if "area" in table:
        data["area"] = ("cell", table["area"].to_numpy(np.float64))
    if "object_id" in table:
        data["object_id"] = ("cell", table["object_id"].to_numpy(np.int64))
    coords = {
        "plate": ("cell", table["plate"].astype(str).to_numpy(object)),
        "well": ("cell", table["well"].astype(str).to_numpy(object)),
        "site": ("cell", table["site"].to_numpy(np.int64)),
    }
    node_attrs = {
        "offset_plates": json.dumps([str(v) for v in images["plate"].values]),
        "offset_wells": json.dumps([str(v) for v in images["well"].values]),
        "offset_sites": json.dumps([int(v) for v in images["site"].values]),
    }
    node_attrs.update(attrs or {})
    return xr.Dataset(data, coords=coords, attrs=node_attrs)
