"""The store's root attributes: what made each node (provenance), and the root's own record."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from cpzarr.store._location import as_location, zarr_target

__all__ = ["record_provenance", "read_provenance", "now_iso", "root_attrs", "update_root_attrs"]


def record_provenance(store, group, record) -> None:
    """Store ``record`` as the provenance of node ``group`` in the root's ``provenance`` attribute.

    ``cpzarr_version`` and ``time`` are added to the record. Writers hold the store's lock, so
    records of one store are never written at the same moment by two processes.

    Examples
    --------
    >>> record_provenance("screen.zarr", "cells", {"stage": "locate", "method": "import"})  # doctest: +SKIP
    """
    from cpzarr import __version__

    store = as_location(store)
    records = read_provenance(store)
    entry = dict(record)
    entry.setdefault("cpzarr_version", __version__)
    entry.setdefault("time", now_iso())
    records[str(group).strip("/") or "/"] = entry
    update_root_attrs(store, {"provenance": json.dumps(records, sort_keys=True, default=str)})


def read_provenance(store) -> dict:
    """Return the store's provenance records, node name → record.

    Examples
    --------
    >>> read_provenance("screen.zarr")["/"]["stage"]  # doctest: +SKIP
    'ingest'
    """
    attrs = root_attrs(store) or {}
    text = attrs.get("provenance") or "{}"
    return json.loads(text)


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string (seconds), for provenance records."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def root_attrs(path) -> dict | None:
    """The attributes of the Zarr v3 group at ``path``, or None when there is none."""
    meta = as_location(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):  # FileNotFoundError, a folder, damaged JSON
        return None
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        return None
    return doc.get("attributes", {})


def update_root_attrs(path, updates: dict) -> None:
    """Set root attributes of the store at ``path``."""
    import zarr

    group = zarr.open_group(zarr_target(as_location(path)), mode="r+", zarr_format=3)
    group.attrs.update(updates)
