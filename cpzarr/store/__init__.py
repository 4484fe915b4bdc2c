"""The store contract: layout, codecs, one atomic node/unit writer, the lock, and the readers.

Every other module of cpzarr reads and writes a screen store only through this package:

- :mod:`cpzarr.store._layout` — node names, dims, chunking, the codec of each node kind, the
  completion markers, and :data:`LAYOUT`, the table ``docs/architecture.md`` shows;
- :mod:`cpzarr.store._write` — the one atomic writer of a node (:func:`write_node`) and of a
  unit of work (:func:`write_unit`: a well, a range of cells), :func:`node_status`;
- :mod:`cpzarr.store._location` — where a store lives: a local path or an fsspec URL
  (:class:`Location`) with storage options;
- :mod:`cpzarr.store._lock` — one writer per store (:func:`store_lock`);
- :mod:`cpzarr.store._backend` — fast local reads behind xarray's ``BackendArray``
  (:class:`SitesArray`, :class:`RowsArray`);
- :mod:`cpzarr.store._screen` — :func:`open_screen`, :func:`open_node`, :func:`screen_info`;
- :mod:`cpzarr.store._provenance` — what made each node.
"""

from cpzarr.store._backend import RowsArray, SitesArray, row_reader, site_reader
from cpzarr.store._layout import (
    BLOSC_BLOCK,
    CELLS_NODE,
    COMPLETE_ATTR,
    IMAGE_DIMS,
    LAYOUT,
    UNIT_MARKER,
    UNITS_ATTR,
    feature_codec,
    features_node,
    format_layout,
    image_chunks,
    image_codec,
    present_codec,
    profile_codec,
    profiles_node,
)
from cpzarr.store._location import Location, as_location, is_url, join_input, local_copy, open_input, zarr_target
from cpzarr.store._lock import lock_holder, lock_path, store_lock
from cpzarr.store._provenance import now_iso, read_provenance, record_provenance, root_attrs
# kept importable for callers of the old module (ingest imported these)
from cpzarr.store._provenance import root_attrs as _root_attrs  # noqa: F401
from cpzarr.store._provenance import update_root_attrs as _update_root_attrs  # noqa: F401
from cpzarr.store._screen import (  # noqa: F401  (_check_store, _nodes: for the old module's callers)
    _check_store,
    _nodes,
    format_info,
    is_store,
    node_exists,
    open_node,
    open_screen,
    remove_node,
    screen_info,
    write_node,
)
from cpzarr.store._write import (
    STORE_ATTRS,
    NodeStatus,
    check_node,
    create_store,
    create_unit_node,
    node_status,
    scratch_dir,
    sweep_scratch,
    write_block,
    write_unit,
)

__all__ = [
    "site_reader",
    "row_reader",
    "SitesArray",
    "RowsArray",
    "Location",
    "as_location",
    "is_url",
    "local_copy",
    "join_input",
    "open_input",
    "zarr_target",
    "open_screen",
    "open_node",
    "is_store",
    "node_exists",
    "node_status",
    "check_node",
    "NodeStatus",
    "write_node",
    "write_unit",
    "write_block",
    "create_store",
    "create_unit_node",
    "remove_node",
    "sweep_scratch",
    "scratch_dir",
    "store_lock",
    "lock_path",
    "lock_holder",
    "record_provenance",
    "read_provenance",
    "now_iso",
    "root_attrs",
    "STORE_ATTRS",
    "screen_info",
    "format_info",
    "IMAGE_DIMS",
    "CELLS_NODE",
    "COMPLETE_ATTR",
    "UNITS_ATTR",
    "UNIT_MARKER",
    "BLOSC_BLOCK",
    "LAYOUT",
    "format_layout",
    "features_node",
    "profiles_node",
    "image_codec",
    "present_codec",
    "feature_codec",
    "profile_codec",
    "image_chunks",
]
