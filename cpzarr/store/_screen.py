"""The screen store: open it as a lazy ``xarray.DataTree``, add nodes atomically, summarise it.

A store is one Zarr v3 directory per screen (layout in ``docs/architecture.md``). The root holds
``images[plate, well, site, channel, y, x]`` (one chunk per site, one shard per well, zstd inside Blosc),
``present[plate, well, site]`` (written after each well's images, so it is that well's completion
marker), the well metadata on ``(plate, well)`` and ``batch`` on ``plate``. Later stages add nodes
(``/cells``, ``/features/<model>``, ``/profiles/<model>/<level>``) with :func:`write_node`, which
writes the node beside the store and moves it in with one rename, so a crash never leaves a node
that looks finished; ``/features/<model>`` is written unit by unit, and every reader here refuses
a node whose units are not all marked complete (:func:`cpzarr.store.node_status`).

Root attributes: ``cpzarr_version``, ``created``, ``source``, ``complete`` (False until ingest has
written every well), ``ingest_fingerprint`` (what the store was made from, so a re-run resumes only
the same ingest) and ``provenance`` (a JSON string mapping each node to the record of what made it).

Every write holds the store's lock (:func:`cpzarr.store.store_lock`).

An ``xarray.DataTree`` child inherits the root's coordinates: a child variable along the
``plate``, ``well`` or ``site`` dimensions must use the root's labels (``/cells``'s
``cell_start[plate, well, site]`` does), and a child's own variable named like a root coordinate
(``/cells``'s ``plate`` along ``cell``) is read with ``to_dataset(inherit=False)``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np

from cpzarr.errors import StoreError
from cpzarr.store._location import Location, as_location, zarr_target
from cpzarr.store._provenance import read_provenance
from cpzarr.store._provenance import root_attrs as _root_attrs
from cpzarr.store._provenance import update_root_attrs as _update_root_attrs
from cpzarr.store._write import STORE_ATTRS, check_node, node_status

__all__ = [
    "open_screen",
    "open_node",
    "is_store",
    "node_exists",
    "write_node",
    "remove_node",
    "screen_info",
    "format_info",
]


def is_store(path) -> bool:
    """True when ``path`` is a directory holding a cpzarr screen store (complete or not).

    Examples
    --------
    >>> is_store("/nonexistent")
    False
    """
    path = as_location(path)
    attrs = _root_attrs(path)
    return attrs is not None and "cpzarr_version" in attrs and (path / "images" / "zarr.json").is_file()


def open_screen(path, *, node=None, allow_incomplete=False, storage_options=None):
    """Open a screen store as a lazy, dask-backed ``xarray.DataTree``.

    ``images`` has one dask chunk per site (all channels), so selecting one site reads one chunk;
    ``present`` is lazy too; the small well metadata and ``batch`` are loaded. String variables and
    coordinates are object arrays of ``str``.

    Parameters
    ----------
    path : str, Path or Location
        The store made by :func:`cpzarr.ingest`: a local path, or an fsspec URL
        (``s3://bucket/screen.zarr``).
    node : str, optional
        Return only this node and its children (``"cells"``, ``"features/efficientnet-lite0"``)
        as a tree of its own, so ``screen["plate"]`` of ``node="cells"`` is the cells' plate.
    allow_incomplete : bool
        Open a store whose ingest has not finished, with a warning, instead of raising.
    storage_options : dict, optional
        fsspec options of a URL store (``{"endpoint_url": ..., "key": ..., "secret": ...}`` for S3).

    Returns
    -------
    xarray.DataTree
        The whole store, or the node asked for. In the whole tree a child inherits the root's
        coordinates, and they win over the child's own variables of the same name:
        ``tree["cells"]["plate"]`` is the root's plate labels, so read a node's own variables
        with ``tree["cells"].to_dataset(inherit=False)`` (or ``open_screen(path, node="cells")``).

    Raises
    ------
    StoreError
        The path is not a cpzarr store, its ingest did not finish, or ``node`` does not exist.

    Examples
    --------
    >>> screen = open_screen("screen.zarr")  # doctest: +SKIP
    >>> site = screen["images"].sel(plate="P1", well="A01", site=1).values  # doctest: +SKIP
    """
    import xarray as xr

    path = as_location(path, storage_options)
    _check_store(path)
    attrs = _root_attrs(path)
    if not attrs.get("complete", False):
        message = (
            f"The ingest of {path} did not finish: some wells are not written. "
            "Re-run the same `cpzarr ingest` command to resume it."
        )
        if not allow_incomplete:
            raise StoreError(message)
        warnings.warn(message, stacklevel=2)
    groups = _nodes(path)
    if node is not None:
        node = node.strip("/")
        if node not in groups:
            raise StoreError(f"The store {path} has no node {node!r}; it has {', '.join(groups) or 'only the root'}.")
        check_node(path, node, allow_incomplete=allow_incomplete)
        groups = [node] + [g for g in groups if g.startswith(node + "/")]
    else:
        groups = [""] + groups
    unfinished = {g: node_status(path, g) for g in groups if g and g != node}
    unfinished = {g: s for g, s in unfinished.items() if not s.complete}
    if unfinished:
        # left out rather than refused: the stage that finishes them opens the screen too
        warnings.warn(
            "; ".join(f"{path} node {g!r} is {s.describe()} and is left out" for g, s in unfinished.items())
            + "; re-run the stage that writes it to finish it.", stacklevel=2)
        groups = [g for g in groups if not any(g == u or g.startswith(u + "/") for u in unfinished)]
    # Each group is opened on its own and assembled with from_dict: open_datatree drops a child's
    # data variables named like an inherited coordinate (/cells' plate, well and site along cell).
    datasets = {}
    target = zarr_target(path, read_only=True)
    for group in groups:
        ds = xr.open_dataset(target, group=group or None, engine="zarr", consolidated=False, chunks={}, zarr_format=3)
        relative = group[len(node):].lstrip("/") if node else group
        ds.attrs = {k: v for k, v in ds.attrs.items() if k not in STORE_ATTRS}
        if not group and "images" in ds and not isinstance(path, Location):
            from cpzarr.store._backend import backed_images

            ds["images"] = backed_images(ds["images"].variable, path / "images")
        datasets["/" + relative] = _tidy_dataset(ds)
    return xr.DataTree.from_dict(datasets, name=node.rsplit("/", 1)[-1] if node else None)


def open_node(store, group, *, allow_incomplete=False):
    """One node of a store as a standalone, lazy ``xarray.Dataset`` with its own variables.

    Unlike a node of :func:`open_screen`'s tree, the node's per-cell or per-sample ``plate``,
    ``well`` and ``site`` are kept as they are, not shadowed by the root's coordinates; strings
    come back as object arrays of ``str``.

    Parameters
    ----------
    store : str or Path
        A store (with or without images).
    group : str
        Node path, e.g. ``"features/efficientnet-lite0"`` or ``"cells"``.
    allow_incomplete : bool
        Open a node whose write did not finish (a features node with units not written), with a
        warning naming what is missing, instead of raising.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    StoreError
        The node does not exist, or is incomplete (its units are named).

    Examples
    --------
    >>> feats = open_node("screen.zarr", "features/efficientnet-lite0")  # doctest: +SKIP
    >>> feats["features"].coords["well"]  # doctest: +SKIP
    """
    import xarray as xr

    store = as_location(store)
    group = str(group).strip("/")
    if not node_exists(store, group):
        raise StoreError(f"The store {store} has no node {group!r}; run the stage that makes it.")
    check_node(store, group, allow_incomplete=allow_incomplete)
    ds = xr.open_zarr(zarr_target(store, read_only=True), group=group, zarr_format=3, consolidated=False)
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in STORE_ATTRS}
    if "features" in ds and not isinstance(store, Location):
        from cpzarr.store._backend import backed_features

        ds["features"] = backed_features(ds["features"].variable, store / group / "features")
    strings = {k: v.astype(object) for k, v in ds.coords.items() if v.dtype.kind == "T"}
    return ds.assign_coords(strings)


def node_exists(store, group) -> bool:
    """True when the node ``group`` (``"cells"``, ``"features/cnn"``) exists in ``store``.

    A node written by :func:`write_node` exists only once it is complete; a node written unit by
    unit (``/features/<model>``) exists from its start: :func:`cpzarr.store.node_status` says
    whether it is complete.

    Examples
    --------
    >>> node_exists("screen.zarr", "cells")  # doctest: +SKIP
    False
    """
    group = str(group).strip("/")
    return bool(group) and (as_location(store) / group / "zarr.json").is_file()


def write_node(store, group, dataset, *, encoding=None, provenance=None, overwrite=False, create=False):
    """Write ``dataset`` as the node ``group`` of ``store`` atomically, under the store's lock.

    The dataset is written (dask arrays computed chunk by chunk) to a hidden folder beside the
    store, its completion marker (node attribute ``cpzarr_complete``) set last, then moved into
    place with one rename: readers see either no node or the whole node, and a crash leaves no
    node that looks finished (:func:`cpzarr.store._write.write_node`). Parent groups are created
    as needed.

    Parameters
    ----------
    store : str or Path
        A store made by :func:`cpzarr.ingest` (or, with ``create``, a store of nodes only).
    group : str
        Node path inside the store, e.g. ``"cells"`` or ``"profiles/cnn/well"``.
    dataset : xarray.Dataset
        What to write. Strings should be object arrays of ``str``.
    encoding : dict, optional
        Per-variable Zarr encoding passed to ``Dataset.to_zarr`` (``chunks``, ``shards``,
        ``compressors``).
    provenance : dict, optional
        JSON-serialisable record of what made the node (stage, parameters, model, checksums);
        stored under ``group`` in the root's ``provenance`` attribute with the cpzarr version and
        time added.
    overwrite : bool
        Replace an existing node. Without it an existing node raises StoreError.
    create : bool
        Accept a store without images (imported features, profiles) and create its root group
        when ``store`` does not exist yet.

    Returns
    -------
    pathlib.Path
        The node's folder.

    Raises
    ------
    StoreError
        Not a cpzarr store; the node exists (without ``overwrite``); another process writes the
        store (the message names it).

    Examples
    --------
    >>> import xarray as xr, numpy as np
    >>> cells = xr.Dataset({"x": ("cell", np.array([1.5, 20.0]))})
    >>> write_node("screen.zarr", "cells", cells, provenance={"stage": "locate"})  # doctest: +SKIP
    """
    from cpzarr.store import _write
    from cpzarr.store._lock import store_lock

    store = as_location(store)
    with store_lock(store, f"write {group}"):
        if create:
            _require_node_store(store)
        else:
            _check_store(store)
        _write.sweep_scratch(store, partials=False)  # a killed write's folder
        return _write.write_node(store, group, dataset, encoding=encoding, provenance=provenance,
                                 overwrite=overwrite)


def remove_node(store, group) -> None:
    """Delete the node ``group`` of ``store`` (and its provenance record), if it exists.

    Examples
    --------
    >>> remove_node("screen.zarr", "features/cnn")  # doctest: +SKIP
    """
    from cpzarr.store._lock import store_lock
    from cpzarr.store._write import scratch_dir

    store = as_location(store)
    _check_store(store)
    group = str(group).strip("/")
    if not group or group in ("images", "present"):
        raise StoreError(f"{group or 'the root'!r} is part of the ingested screen and cannot be removed.")
    with store_lock(store, f"remove {group}"):
        if isinstance(store, Location):
            (store / group).rmtree()  # no rename on an object store: the node's objects go one by one
        elif node_exists(store, group):
            tmp_root = scratch_dir(store)
            tmp_root.mkdir(exist_ok=True)
            trash = tmp_root / f"old-{uuid.uuid4().hex}"
            os.replace(store / group, trash)  # one rename, so the node vanishes at once
            shutil.rmtree(trash, ignore_errors=True)
            _remove_if_empty(tmp_root)
        records = read_provenance(store)
        if records.pop(group, None) is not None:
            _update_root_attrs(store, {"provenance": json.dumps(records, sort_keys=True)})


def screen_info(path) -> dict:
    """Summarise a store: plates, wells, sites, channels, sizes and nodes.

    Parameters
    ----------
    path : str or Path
        The store.

    Returns
    -------
    dict
        ``path``, ``complete``, ``plates``, ``wells`` (names), ``sites`` (site numbers),
        ``sites_present``, ``sites_total`` (plates × wells × sites), ``wells_present``,
        ``channels``, ``dtype``, ``image_shape`` (y, x), ``raw_bytes`` (pixel bytes of the present
        sites), ``disk_bytes`` (the store folder), ``images_disk_bytes`` (the images array alone),
        ``nodes`` (every group below the root), ``incomplete_nodes`` (node → what is missing, for
        nodes whose write did not finish).

    Examples
    --------
    >>> screen_info("screen.zarr")["channels"]  # doctest: +SKIP
    ['DNA', 'ER', 'RNA', 'AGP', 'Mito']
    """
    import zarr

    path = as_location(path)
    _check_store(path)
    group = zarr.open_group(zarr_target(path, read_only=True), mode="r", zarr_format=3)
    images = group["images"]
    present = np.asarray(group["present"][...], dtype=bool)
    _, _, _, n_channels, ny, nx = images.shape
    itemsize = np.dtype(images.dtype).itemsize
    if isinstance(path, Location):
        disk, images_disk = path.du(), (path / "images").du()
    else:
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        # The pixels' own bytes, so that the ratio compares like with like (features nodes excluded).
        images_disk = sum(f.stat().st_size for f in (path / "images").rglob("*") if f.is_file())
    attrs = dict(group.attrs)
    return {
        "path": str(path),
        "complete": bool(attrs.get("complete", False)),
        "created": attrs.get("created", ""),
        "source": attrs.get("source", ""),
        "plates": [str(v) for v in group["plate"][...]],
        "wells": [str(v) for v in group["well"][...]],
        "sites": [int(v) for v in group["site"][...]],
        "channels": [str(v) for v in group["channel"][...]],
        "dtype": str(np.dtype(images.dtype)),
        "image_shape": (int(ny), int(nx)),
        "sites_present": int(present.sum()),
        "sites_total": int(present.size),
        "wells_present": int(present.any(axis=2).sum()),
        "raw_bytes": int(present.sum()) * n_channels * ny * nx * itemsize,
        "disk_bytes": int(disk),
        "images_disk_bytes": int(images_disk),
        "nodes": _nodes(path),
        "incomplete_nodes": {g: st.describe() for g in _nodes(path) if not (st := node_status(path, g)).complete},
    }


def format_info(info: dict) -> str:
    """Render :func:`screen_info`'s summary as the text ``cpzarr info`` prints.

    Examples
    --------
    >>> print(format_info(screen_info("screen.zarr")))  # doctest: +SKIP
    """
    plates = info["plates"]
    images = info.get("images_disk_bytes", info["disk_bytes"])
    ratio = images / info["raw_bytes"] if info["raw_bytes"] else float("nan")
    lines = [
        f"store      {info['path']}" + ("" if info["complete"] else "  (INCOMPLETE: re-run the ingest to finish it)"),
        f"plates     {len(plates)}: {_shorten(plates)}",
        f"wells      {len(info['wells'])} per plate, {info['wells_present']} acquired in all: {_shorten(info['wells'])}",
        f"sites      {info['sites_present']} present of {info['sites_total']} "
        f"({len(info['sites'])} per well: {_shorten([str(s) for s in info['sites']])})",
        f"channels   {', '.join(info['channels'])}",
        f"images     {info['dtype']}, {info['image_shape'][0]} x {info['image_shape'][1]} pixels",
        f"size       {_human(info['disk_bytes'])} on disk; images {_human(images)} for "
        f"{_human(info['raw_bytes'])} of raw pixels (ratio {ratio:.2f})",
        f"nodes      {', '.join(info['nodes']) if info['nodes'] else '(none besides the images)'}",
    ]
    for group, state in info.get("incomplete_nodes", {}).items():
        lines.append(f"           {group}: {state}; re-run the stage that writes it to finish it")
    return "\n".join(lines)


# --- internals -------------------------------------------------------------------------------


def _check_store(path) -> None:
    if not path.exists():
        raise StoreError(f"There is no store at {path}; make one with `cpzarr ingest TABLE {path}`.")
    if not is_store(path):
        raise StoreError(
            f"{path} is not a cpzarr screen store (no Zarr v3 group with cpzarr attributes and an "
            "images array); make one with `cpzarr ingest`."
        )


def _require_node_store(path: Path) -> None:
    """A store to hold nodes: a screen store, a store of nodes only, or a new one (created)."""
    import zarr

    if _root_attrs(path) is not None:
        return
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise StoreError(f"{path} exists and is not a Zarr store; refusing to write a node into it.")
    zarr.open_group(zarr_target(path), mode="a", zarr_format=3)


def _nodes(path: Path, prefix: str = "") -> list[str]:
    """Every group below ``path``, as ``a/b`` paths, sorted; array folders are not walked."""
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        try:
            kind = json.loads((child / "zarr.json").read_text()).get("node_type")
        except (OSError, ValueError):
            continue
        if kind == "group":
            name = f"{prefix}{child.name}"
            found.append(name)
            found.extend(_nodes(child, prefix=name + "/"))
    return found


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _tidy_dataset(ds):
    """Strings as object arrays (the store's contract); small metadata loaded into memory."""
    out = ds
    for name, var in ds.variables.items():
        if var.dtype.kind == "T" or var.dtype.kind == "U":
            out = out.assign({name: var.astype(object)}) if name in ds.data_vars else out.assign_coords({name: var.astype(object)})
    if "images" in out.data_vars:
        small = [n for n in out.data_vars if n not in ("images", "present")]
        first = [n for n in ("images", "present", "compound", "dose", "moa", "control", "batch") if n in out.data_vars]
        out = out.assign(out[small].compute().data_vars)  # one pass for all the small variables
        out = out[first + sorted(n for n in small if n not in first)]
    return out


def _shorten(items, n=6) -> str:
    items = list(items)
    if len(items) <= n:
        return ", ".join(items)
    return ", ".join(items[: n // 2]) + ", ..., " + ", ".join(items[-(n // 2):])


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
