"""The screen store: open it as a lazy ``xarray.DataTree``, add nodes atomically, summarise it.

A store is one Zarr v3 directory per screen (layout in ``docs/architecture.md``). The root holds
``images[plate, well, site, channel, y, x]`` (one chunk per site, one shard per well, zstd inside Blosc),
``present[plate, well, site]`` (written after each well's images, so it is that well's completion
marker), the well metadata on ``(plate, well)`` and ``batch`` on ``plate``. Later stages add nodes
(``/cells``, ``/features/<model>``, ``/profiles/<model>/<level>``) with :func:`write_node`, which
writes the node beside the store and moves it in with one rename, so a crash never leaves a node
that looks finished.

Root attributes: ``cpzarr_version``, ``created``, ``source``, ``complete`` (False until ingest has
written every well), ``ingest_fingerprint`` (what the store was made from, so a re-run resumes only
the same ingest) and ``provenance`` (a JSON string mapping each node to the record of what made it).

Stores are local directories: the atomic node write relies on renaming directories.

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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cpzarr.errors import StoreError

__all__ = [
    "open_screen",
    "open_node",
    "is_store",
    "node_exists",
    "write_node",
    "remove_node",
    "record_provenance",
    "read_provenance",
    "screen_info",
    "format_info",
    "IMAGE_DIMS",
]

#: Dimensions of the ``images`` variable, in order.
IMAGE_DIMS = ("plate", "well", "site", "channel", "y", "x")


def is_store(path) -> bool:
    """True when ``path`` is a directory holding a cpzarr screen store (complete or not).

    Examples
    --------
    >>> is_store("/nonexistent")
    False
    """
    attrs = _root_attrs(Path(path))
    return attrs is not None and "cpzarr_version" in attrs and (Path(path) / "images" / "zarr.json").is_file()


def open_screen(path, *, node=None, allow_incomplete=False):
    """Open a screen store as a lazy, dask-backed ``xarray.DataTree``.

    ``images`` has one dask chunk per site (all channels), so selecting one site reads one chunk;
    ``present`` is lazy too; the small well metadata and ``batch`` are loaded. String variables and
    coordinates are object arrays of ``str``.

    Parameters
    ----------
    path : str or Path
        The store directory made by :func:`cpzarr.ingest`.
    node : str, optional
        Return only this node and its children (``"cells"``, ``"features/efficientnet-lite0"``)
        as a tree of its own, so ``screen["plate"]`` of ``node="cells"`` is the cells' plate.
    allow_incomplete : bool
        Open a store whose ingest has not finished, with a warning, instead of raising.

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

    path = Path(path)
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
        groups = [node] + [g for g in groups if g.startswith(node + "/")]
    else:
        groups = [""] + groups
    # Each group is opened on its own and assembled with from_dict: open_datatree drops a child's
    # data variables named like an inherited coordinate (/cells' plate, well and site along cell).
    datasets = {}
    for group in groups:
        ds = xr.open_dataset(path, group=group or None, engine="zarr", consolidated=False, chunks={}, zarr_format=3)
        relative = group[len(node):].lstrip("/") if node else group
        datasets["/" + relative] = _tidy_dataset(ds)
    return xr.DataTree.from_dict(datasets, name=node.rsplit("/", 1)[-1] if node else None)


def open_node(store, group):
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

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> feats = open_node("screen.zarr", "features/efficientnet-lite0")  # doctest: +SKIP
    >>> feats["features"].coords["well"]  # doctest: +SKIP
    """
    import xarray as xr

    group = str(group).strip("/")
    if not node_exists(store, group):
        raise StoreError(f"The store {store} has no node {group!r}; run the stage that makes it.")
    ds = xr.open_zarr(store, group=group, zarr_format=3, consolidated=False)
    strings = {k: v.astype(object) for k, v in ds.coords.items() if v.dtype.kind == "T"}
    return ds.assign_coords(strings)


def node_exists(store, group) -> bool:
    """True when the node ``group`` (``"cells"``, ``"features/cnn"``) exists in ``store``.

    A node written by :func:`write_node` exists only once it is complete.

    Examples
    --------
    >>> node_exists("screen.zarr", "cells")  # doctest: +SKIP
    False
    """
    group = str(group).strip("/")
    return bool(group) and (Path(store) / group / "zarr.json").is_file()


def write_node(store, group, dataset, *, encoding=None, provenance=None, overwrite=False):
    """Write ``dataset`` as the node ``group`` of ``store`` atomically.

    The dataset is written (dask arrays computed chunk by chunk) to a hidden folder beside the
    store, then moved into place with one rename: readers see either no node or the whole node,
    and a crash leaves no node that looks finished. Parent groups are created as needed.

    Parameters
    ----------
    store : str or Path
        A store made by :func:`cpzarr.ingest`.
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

    Returns
    -------
    pathlib.Path
        The node's folder.

    Examples
    --------
    >>> import xarray as xr, numpy as np
    >>> cells = xr.Dataset({"x": ("cell", np.array([1.5, 20.0]))})
    >>> write_node("screen.zarr", "cells", cells, provenance={"stage": "locate"})  # doctest: +SKIP
    """
    store = Path(store)
    _check_store(store)
    group = str(group).strip("/")
    if not group:
        raise StoreError("write_node needs a node name such as 'cells'; the root is written by ingest.")
    target = store / group
    if node_exists(store, group) and not overwrite:
        raise StoreError(f"The node {group!r} already exists in {store}; pass overwrite=True to replace it.")
    tmp_root = _tmp_dir(store)
    tmp = tmp_root / uuid.uuid4().hex
    try:
        dataset.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding or {})
        _require_parents(store, group)
        old = None
        if target.exists():
            old = tmp_root / f"old-{uuid.uuid4().hex}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(tmp_root)
    if provenance is not None:
        record_provenance(store, group, provenance)
    return target


def remove_node(store, group) -> None:
    """Delete the node ``group`` of ``store`` (and its provenance record), if it exists.

    Examples
    --------
    >>> remove_node("screen.zarr", "features/cnn")  # doctest: +SKIP
    """
    store = Path(store)
    _check_store(store)
    group = str(group).strip("/")
    if not group or group in ("images", "present"):
        raise StoreError(f"{group or 'the root'!r} is part of the ingested screen and cannot be removed.")
    if node_exists(store, group):
        tmp_root = _tmp_dir(store)
        trash = tmp_root / f"old-{uuid.uuid4().hex}"
        os.replace(store / group, trash)  # one rename, so the node vanishes at once
        shutil.rmtree(trash, ignore_errors=True)
        _remove_if_empty(tmp_root)
    records = read_provenance(store)
    if records.pop(group, None) is not None:
        _update_root_attrs(store, {"provenance": json.dumps(records, sort_keys=True)})


def record_provenance(store, group, record) -> None:
    """Store ``record`` as the provenance of node ``group`` in the root's ``provenance`` attribute.

    ``cpzarr_version`` and ``time`` are added to the record. Writers of one store should not
    record provenance at the same moment from different processes (last writer wins).

    Examples
    --------
    >>> record_provenance("screen.zarr", "cells", {"stage": "locate", "method": "import"})  # doctest: +SKIP
    """
    from cpzarr import __version__

    store = Path(store)
    records = read_provenance(store)
    entry = dict(record)
    entry.setdefault("cpzarr_version", __version__)
    entry.setdefault("time", now_iso())
    records[str(group).strip("/") or "/"] = entry
    _update_root_attrs(store, {"provenance": json.dumps(records, sort_keys=True, default=str)})


def read_provenance(store) -> dict:
    """Return the store's provenance records, node name → record.

    Examples
    --------
    >>> read_provenance("screen.zarr")["/"]["stage"]  # doctest: +SKIP
    'ingest'
    """
    attrs = _root_attrs(Path(store)) or {}
    text = attrs.get("provenance") or "{}"
    return json.loads(text)


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
        ``nodes`` (every group below the root).

    Examples
    --------
    >>> screen_info("screen.zarr")["channels"]  # doctest: +SKIP
    ['DNA', 'ER', 'RNA', 'AGP', 'Mito']
    """
    import zarr

    path = Path(path)
    _check_store(path)
    group = zarr.open_group(path, mode="r", zarr_format=3)
    images = group["images"]
    present = np.asarray(group["present"][...], dtype=bool)
    _, _, _, n_channels, ny, nx = images.shape
    itemsize = np.dtype(images.dtype).itemsize
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
    return "\n".join(lines)


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string (seconds), for provenance records."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --- internals -------------------------------------------------------------------------------


def _check_store(path: Path) -> None:
    if not path.exists():
        raise StoreError(f"There is no store at {path}; make one with `cpzarr ingest TABLE {path}`.")
    if not is_store(path):
        raise StoreError(
            f"{path} is not a cpzarr screen store (no Zarr v3 group with cpzarr attributes and an "
            "images array); make one with `cpzarr ingest`."
        )


def _root_attrs(path: Path) -> dict | None:
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        return None
    return doc.get("attributes", {})


def _update_root_attrs(path: Path, updates: dict) -> None:
    import zarr

    group = zarr.open_group(path, mode="r+", zarr_format=3)
    group.attrs.update(updates)


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


def _require_parents(store: Path, group: str) -> None:
    import zarr

    parts = group.split("/")[:-1]
    if not parts:
        return
    root = zarr.open_group(store, mode="r+", zarr_format=3)
    node = root
    for part in parts:
        node = node.require_group(part)


def _tmp_dir(store: Path) -> Path:
    # Beside the store, not inside it: zarr warns about any foreign folder in a hierarchy, and a
    # rename within one file system is atomic.
    tmp = store.parent / f".{store.name}.cpzarr-tmp"
    tmp.mkdir(exist_ok=True)
    return tmp


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
