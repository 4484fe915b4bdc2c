"""The one atomic writer: whole nodes, units of work (a well, a range of cells), and the store.

A store is written in two kinds of pieces, and each has one writer here:

- a **node** (``/cells``, ``/profiles/<name>/<level>``, an imported ``/features/<name>``) is
  written whole by :func:`write_node`: into a hidden folder beside the store, its attribute
  ``cpzarr_complete`` false while data go in and set true last, then moved into place with one
  rename. A reader sees no node or the whole node; :func:`node_status` refuses a node whose
  marker is false.
- a **unit of work** (one well's shard of ``images`` then its ``present`` chunk; a range of
  cells of ``/features/<name>`` then its ``unit_complete`` flag) is written by
  :func:`write_unit`: its blocks first, each written beside its file and renamed in
  (:class:`cpzarr._shards.ShardWriter`), then its marker. A unit without its marker is
  redone by a re-run; :func:`node_status` lists the units of a node not yet marked.

:func:`create_store` writes a store's skeleton beside the target and renames it in;
:func:`sweep_scratch` removes what killed writers left (``*.partial`` files, scratch folders).
On an object store (a :class:`~cpzarr.store.Location`), where rename is not atomic, the same
writers write in place: a node's marker attribute is false from its first object and set true
last, a unit's marker is written after its blocks, and readers go by the markers alone.

All of them run under the store's lock (:func:`cpzarr.store.store_lock`), taken by the caller
that plans the work, never by a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cpzarr.errors import StoreError
from cpzarr.store._layout import COMPLETE_ATTR, UNIT_MARKER, UNITS_ATTR
from cpzarr.store._location import Location, as_location, zarr_target

__all__ = [
    "write_node",
    "create_store",
    "create_unit_node",
    "write_block",
    "write_unit",
    "sweep_scratch",
    "node_status",
    "check_node",
    "NodeStatus",
    "scratch_dir",
    "STORE_ATTRS",
]

#: Attributes the store keeps on a node for itself, not part of the data read back.
STORE_ATTRS = (COMPLETE_ATTR, UNITS_ATTR)


def scratch_dir(store) -> Path:
    """The hidden folder beside ``store`` where nodes are written before their rename.

    Beside the store, not inside it: zarr warns about any foreign folder in a hierarchy, and a
    rename within one file system is atomic.
    """
    store = as_location(store)
    return store.parent / f".{store.name}.cpzarr-tmp"


def write_node(store, group, dataset, *, encoding=None, provenance=None, overwrite=False):
    """Write ``dataset`` as the node ``group`` of ``store`` atomically.

    The dataset is written (dask arrays computed chunk by chunk) to a hidden folder beside the
    store, with the node attribute ``cpzarr_complete`` false; that attribute is set true once
    every array is written, and the folder is moved into place with one rename: readers see no
    node or the whole node, and a crash leaves no node that looks finished. Parent groups are
    created as needed. The caller holds the store's lock (:func:`cpzarr.store.write_node` does).

    Parameters
    ----------
    store : str or Path
        A store (its root group must exist).
    group : str
        Node path inside the store, e.g. ``"cells"`` or ``"profiles/cnn/well"``.
    dataset : xarray.Dataset
        What to write. Strings should be object arrays of ``str``.
    encoding : dict, optional
        Per-variable Zarr encoding passed to ``Dataset.to_zarr``.
    provenance : dict, optional
        Recorded under ``group`` in the root's ``provenance`` attribute.
    overwrite : bool
        Replace an existing node. Without it an existing node raises StoreError.

    Returns
    -------
    pathlib.Path
        The node's folder.
    """
    from cpzarr.store._provenance import record_provenance

    store = as_location(store)
    group = str(group).strip("/")
    if not group:
        raise StoreError("write_node needs a node name such as 'cells'; the root is written by ingest.")
    target = store / group
    if (target / "zarr.json").is_file() and not overwrite:
        raise StoreError(f"The node {group!r} already exists in {store}; pass overwrite=True to replace it.")
    if isinstance(store, Location):
        target.rmtree()  # the old node's objects, so that none outlives the new write
        _require_parents(store, group)
        _write_marked(dataset, store, encoding, group=group)
        if provenance is not None:
            record_provenance(store, group, provenance)
        return target
    tmp_root = scratch_dir(store)
    tmp_root.mkdir(exist_ok=True)
    tmp = tmp_root / uuid.uuid4().hex
    old = None
    try:
        _write_marked(dataset, tmp, encoding)
        _require_parents(store, group)
        if target.exists():
            old = tmp_root / f"old-{uuid.uuid4().hex}"
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _remove_if_empty(tmp_root)
    if provenance is not None:
        record_provenance(store, group, provenance)
    return target


def _write_marked(dataset, path, encoding, group=None):
    """``dataset`` to ``path`` (its ``group``) with its completion marker false, then true once
    it is all there."""
    import zarr

    ds = dataset.copy(deep=False)
    ds.attrs = {k: v for k, v in dataset.attrs.items() if k not in STORE_ATTRS}
    ds.attrs[COMPLETE_ATTR] = False
    target = zarr_target(as_location(path))
    ds.to_zarr(target, group=group, mode="w", zarr_format=3, consolidated=False, encoding=encoding or {})
    node = zarr.open_group(target, mode="r+", zarr_format=3)
    if group:
        node = node[group]
    node.attrs[COMPLETE_ATTR] = True


def create_unit_node(store, group, skeleton, *, encoding=None, marker=UNIT_MARKER):
    """Create a node written unit by unit: its skeleton beside the store, renamed in (replacing).

    ``skeleton`` holds the node's coordinates, its lazy (dask) data variables, of which only the
    metadata is written, and ``marker``, a bool variable along ``unit``, all False. Each unit is
    then written by :func:`write_unit`, its flag in ``marker`` last; :func:`node_status` lists
    the units not flagged. The caller holds the store's lock.

    Returns
    -------
    pathlib.Path
        The node's folder.
    """
    store = as_location(store)
    group = str(group).strip("/")
    if marker not in skeleton or skeleton[marker].dims != ("unit",):
        raise ValueError(f"a unit-written node needs a bool {marker!r} variable along 'unit'")
    ds = skeleton.copy(deep=False)
    ds.attrs = {**{k: v for k, v in skeleton.attrs.items() if k not in STORE_ATTRS}, UNITS_ATTR: marker}
    if isinstance(store, Location):
        # in place: every unit's flag is False from the start, so no unit looks written
        (store / group).rmtree()
        _require_parents(store, group)
        ds.to_zarr(zarr_target(store), group=group, mode="w", compute=False, consolidated=False, zarr_format=3,
                   encoding=encoding or {})
        return store / group
    tmp_root = scratch_dir(store)
    tmp_root.mkdir(exist_ok=True)
    token = uuid.uuid4().hex
    tmp, old = tmp_root / token, tmp_root / f"old-{token}"
    target = store / group
    try:
        ds.to_zarr(tmp, mode="w", compute=False, consolidated=False, zarr_format=3, encoding=encoding or {})
        _require_parents(store, group)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        _remove_if_empty(tmp_root)
    return target


def create_store(store, build, *, replace=False):
    """Make a new store: ``build(folder)`` writes it beside ``store``, then one rename puts it in.

    Parameters
    ----------
    store : str or Path
    build : callable
        Called with the temporary folder to write the store's skeleton into.
    replace : bool
        Replace what is at ``store`` (the caller has checked it may).
    """
    store = as_location(store)
    if isinstance(store, Location):
        # in place: the caller's skeleton says it is incomplete until its last marker is written
        if store.exists():
            if not replace:
                raise StoreError(f"{store} appeared while its skeleton was written; not replacing it.")
            store.rmtree()
        build(store)
        return store
    tmp_root = scratch_dir(store)
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = tmp_root / uuid.uuid4().hex
    try:
        build(tmp)
        if store.exists():
            if not replace:
                raise StoreError(f"{store} appeared while its skeleton was written; not replacing it.")
            old = tmp_root / f"old-{uuid.uuid4().hex}"
            os.replace(store, old)
            shutil.rmtree(old)
        os.replace(tmp, store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(tmp_root)
    return store


def write_block(array_path, index, block) -> None:
    """Write one whole stored block (a shard, or a chunk of an unsharded array) ``index``.

    In the calling thread by :class:`~cpzarr._shards.ShardWriter` (beside its file, then
    renamed in) when it knows the array's layout and ``block`` is a whole block; through zarr
    otherwise (a short last chunk, another layout). ``index`` counts blocks, not elements.
    """
    from cpzarr._shards import ShardWriter

    array_path = as_location(array_path)
    block = np.asarray(block)
    writer = None if isinstance(array_path, Location) else ShardWriter.open(array_path)
    if writer is not None and writer.block_shape == block.shape:
        writer.write(index, block)
        return
    import zarr

    # an object store's put is atomic per object, so zarr's own write of a whole block is too
    array = zarr.open_array(zarr_target(array_path), mode="r+", zarr_format=3)
    full = writer.block_shape if writer is not None else (array.shards or array.chunks)
    array[tuple(slice(i * n, i * n + b) for i, n, b in zip(index, full, block.shape))] = block


def write_unit(blocks, marker) -> None:
    """Write one unit of work: its ``blocks``, then its ``marker``, each by :func:`write_block`.

    Parameters
    ----------
    blocks : list of (array path, block index, ndarray)
    marker : (array path, block index, ndarray)
        Written last: the unit counts as done once it is in place.
    """
    for path, index, block in blocks:
        write_block(path, index, block)
    write_block(*marker)


def sweep_scratch(store, *, partials=True, under=None) -> int:
    """Remove what killed writers left: the scratch folder and ``*.partial`` block files.

    Call it only while holding the store's lock (another writer's files in flight look the
    same). ``partials=False`` spares the walk over the store's files (a node written whole
    leaves nothing inside the store); ``under`` (a node) limits the walk to that node. Returns the
    number of files and folders removed.
    """
    from cpzarr.store._lock import in_worker

    store = as_location(store)
    if isinstance(store, Location) or in_worker():
        return 0  # objects are put whole; a worker's task writes beside others' tasks
    removed = 0
    walked = store / under if under else store
    if partials and walked.is_dir():
        for partial in walked.rglob("*.partial"):
            partial.unlink(missing_ok=True)
            removed += 1
    tmp_root = scratch_dir(store)
    if tmp_root.is_dir():
        for leftover in tmp_root.iterdir():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            removed += 1
        _remove_if_empty(tmp_root)
    return removed


@dataclass
class NodeStatus:
    """Whether a node is complete; for a unit-written node, which units are missing.

    Attributes
    ----------
    exists : bool
    complete : bool
    units : int
        Units of a unit-written node (0 for a node written whole).
    missing : list of int
        Units not yet marked complete.
    """

    exists: bool
    complete: bool
    units: int = 0
    missing: list = field(default_factory=list)

    def describe(self) -> str:
        if not self.exists:
            return "absent"
        if self.complete:
            return "complete"
        if self.units:
            shown = ", ".join(map(str, self.missing[:8])) + (", ..." if len(self.missing) > 8 else "")
            return f"INCOMPLETE: {len(self.missing)} of {self.units} units not written (units {shown})"
        return "INCOMPLETE: its write did not finish"


def node_status(store, group) -> NodeStatus:
    """Whether the node ``group`` of ``store`` exists and is complete.

    A node written whole is complete unless its ``cpzarr_complete`` attribute is false (nodes
    written before the attribute existed were renamed in whole, so count as complete). A node
    written unit by unit (it holds ``unit_complete``) is complete when every unit is marked.
    """
    import zarr

    path = as_location(store)
    if str(group).strip("/"):
        path = path / str(group).strip("/")
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return NodeStatus(exists=False, complete=False)
    attrs = meta.get("attributes", {})
    if attrs.get(COMPLETE_ATTR) is False:
        return NodeStatus(exists=True, complete=False)
    marker = attrs.get(UNITS_ATTR, UNIT_MARKER)
    if meta.get("node_type") == "group" and (path / marker / "zarr.json").is_file():
        flags = zarr.open_array(zarr_target(path / marker, read_only=True), mode="r", zarr_format=3)
        try:
            done = np.asarray(flags[...], dtype=bool)
        except Exception:  # some flag is damaged: read them one by one, a damaged one is a unit to redo
            done = np.zeros(flags.shape[0], dtype=bool)
            for unit in range(flags.shape[0]):
                try:
                    done[unit] = bool(flags[unit])
                except Exception:  # noqa: BLE001 - any decode failure means: not known to be written
                    done[unit] = False
        missing = np.flatnonzero(~done).tolist()
        return NodeStatus(exists=True, complete=not missing, units=int(done.size), missing=missing)
    return NodeStatus(exists=True, complete=True)


def check_node(store, group, *, allow_incomplete=False, action="re-run the stage that writes it") -> NodeStatus:
    """Raise StoreError unless the node exists and is complete (or warn, with ``allow_incomplete``)."""
    import warnings

    status = node_status(store, group)
    group = str(group).strip("/") or "/"
    if not status.exists:
        raise StoreError(f"The store {store} has no node {group!r}; run the stage that makes it.")
    if not status.complete:
        message = f"The node {group!r} of {store} is {status.describe()}; {action} to finish it."
        if not allow_incomplete:
            raise StoreError(message + " (allow_incomplete=True reads it anyway.)")
        warnings.warn(message, stacklevel=3)
    return status


def _require_parents(store: Path, group: str) -> None:
    import zarr

    parts = group.split("/")[:-1]
    if not parts:
        return
    node = zarr.open_group(zarr_target(store), mode="r+", zarr_format=3)
    for part in parts:
        node = node.require_group(part)


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
