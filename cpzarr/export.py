"""Export a store's contents for other tools: tables (Parquet, CSV, AnnData) and images (OME-Zarr).

- :func:`export_table` writes single-cell features (``/features/<model>``) or profiles
  (``/profiles/<model>/<level>``) as a Pycytominer table (``.parquet``, ``.csv``, ``.csv.gz``) or
  an AnnData file (``.h5ad``): metadata first, named as Pycytominer names them (``Metadata_Plate``,
  ``Metadata_Well``, ``Metadata_Site``, and every platemap column under the name the platemap
  wrote, ``Metadata_broad_sample``, ``Metadata_control_type``), then the features.
- :func:`export_ome_zarr` writes the images as an OME-NGFF 0.5 HCS plate
  (:mod:`cpzarr.formats.ome_zarr`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cpzarr.errors import InputError
from cpzarr.formats.ome_zarr import export_ome_zarr

__all__ = ["export_table", "export_ome_zarr", "single_cells", "attach_metadata", "metadata_names", "root_metadata"]

#: Pycytominer's (and DeepProfiler's) names for the per-cell coordinates of a features node.
CELL_NAMES = {"x": "Location_Center_X", "y": "Location_Center_Y", "object_id": "ObjectNumber"}


def metadata_names(root) -> dict:
    """Well metadata name → the column name its platemap or image table wrote, where they differ.

    Parameters
    ----------
    root : Dataset
        The store's root (``open_screen(store).to_dataset()``).

    Examples
    --------
    >>> metadata_names(open_screen("screen.zarr").to_dataset())  # doctest: +SKIP
    {'control': 'control_type', 'plate_map_name': 'Plate_Map_Name'}
    """
    return {name: var.attrs["source_name"] for name, var in root.data_vars.items() if "source_name" in var.attrs}


def attach_metadata(profiles, root):
    """Add the store's well metadata to profiles (or cells) as coordinates along ``sample``.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        With ``plate`` and ``well`` coordinates.
    root : Dataset
        The store's root (``open_screen(store).to_dataset()``).

    Returns
    -------
    DataArray (sample, feature)
        With every ``(plate, well)`` and ``(plate,)`` variable of the root (compound, dose, moa,
        control, batch, platemap columns) that it lacked, and ``attrs["pycytominer_names"]``
        recording the names the platemap wrote (see :func:`metadata_names`).

    Examples
    --------
    >>> well = attach_metadata(aggregate(features), open_screen("screen.zarr").to_dataset())  # doctest: +SKIP
    """
    import pandas as pd

    plates = np.asarray(profiles["plate"].values).astype(str)
    wells = np.asarray(profiles["well"].values).astype(str)
    pi = pd.Index(root["plate"].values.astype(str)).get_indexer(plates)
    wi = pd.Index(root["well"].values.astype(str)).get_indexer(wells)
    coords = {}
    for name, var in root.data_vars.items():
        if name in profiles.coords:
            continue
        if var.dims == ("plate", "well"):
            coords[name] = ("sample", np.asarray(var.values)[pi, wi])
        elif var.dims == ("plate",):
            coords[name] = ("sample", np.asarray(var.values)[pi])
    out = profiles.assign_coords(coords)
    names = {**json.loads(profiles.attrs.get("pycytominer_names", "{}")), **metadata_names(root)}
    out.attrs["pycytominer_names"] = json.dumps(names)
    return out


def single_cells(store, model, *, metadata=True):
    """A features node as a profile DataArray over cells, with the wells' metadata as coordinates.

    Parameters
    ----------
    store : str or Path
        The store.
    model : str
        The node under ``/features``.
    metadata : bool
        Add the store's well metadata (compound, dose, moa, control, batch, platemap columns).

    Returns
    -------
    DataArray (sample, feature)
        One sample per cell, coordinates plate, well, site, x, y (object_id) and the metadata;
        ``attrs["pycytominer_names"]`` holds the names the tables wrote.

    Examples
    --------
    >>> cells = single_cells("screen.zarr", "efficientnet-lite0")  # doctest: +SKIP
    """
    from cpzarr.store import is_store, open_node

    node = open_node(store, f"features/{model}")
    features = node["features"].rename({"cell": "sample"}).drop_vars("sample", errors="ignore")
    features.attrs = {"pycytominer_names": json.dumps(CELL_NAMES)}
    if metadata and is_store(store):
        features = attach_metadata(features, root_metadata(store))
    return features.rename("profiles")


def root_metadata(store):
    """The store root's coordinates and well metadata (no images), strings as object arrays.

    Read from the root group alone, so that child nodes (whatever their names) do not matter.

    Examples
    --------
    >>> root_metadata("screen.zarr")["compound"].dims  # doctest: +SKIP
    ('plate', 'well')
    """
    import xarray as xr

    ds = xr.open_zarr(store, zarr_format=3, consolidated=False).drop_vars(["images", "present"], errors="ignore")
    ds = ds.compute()
    strings = {k: v.astype(object) for k, v in ds.variables.items() if v.dtype.kind in "TU"}
    return ds.assign({k: v for k, v in strings.items() if k in ds.data_vars}).assign_coords(
        {k: v for k, v in strings.items() if k in ds.coords})


def export_table(store, node, path, *, names=None):
    """Write a store node as a Pycytominer table (Parquet, CSV) or an AnnData ``.h5ad`` file.

    Parameters
    ----------
    store : str or Path
        The store.
    node : str
        ``features/<model>`` (one row per cell) or ``profiles/<model>/<level>`` (one per sample).
    path : str or Path
        ``.parquet``, ``.csv``, ``.csv.gz`` or ``.h5ad``.
    names : dict, optional
        Coordinate → column name (without ``Metadata_``) overriding the defaults.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        ``path`` has another suffix, or ``node`` is neither features nor profiles.

    Examples
    --------
    >>> export_table("screen.zarr", "profiles/efficientnet-lite0/well", "well.parquet")  # doctest: +SKIP
    """
    from cpzarr.profiles import read_profiles, write_profiles
    from cpzarr.profiles._io import _kind

    path = Path(path)
    if _kind(path) == "zarr":
        raise InputError(f"export {node}: {path} should end in .parquet, .csv, .csv.gz or .h5ad")
    node = str(node).strip("/")
    if node.startswith("features/"):
        table = single_cells(store, node[len("features/"):])
    elif node.startswith("profiles/"):
        table = read_profiles(store, node=node)
    else:
        raise InputError(f"export: {node!r} is neither features/<model> nor profiles/<model>/<level>")
    if names:
        table.attrs["pycytominer_names"] = json.dumps({**json.loads(table.attrs.get("pycytominer_names", "{}")),
                                                       **names})
    return write_profiles(table.compute(), path)
