"""Where a store (or an input file) lives: a local path, or an fsspec URL with storage options.

A store path is a local path or any URL fsspec knows (``s3://bucket/screen.zarr``,
``gs://…``, ``memory://…``), with ``storage_options`` (credentials, ``endpoint_url``, …)
passed to fsspec and zarr as they are. ``file://`` URLs are local paths. Every function of
:mod:`cpzarr.store` accepts a :class:`Location` as its ``store``, so that storage options travel
with the store through a run; a local store stays a ``pathlib.Path`` and keeps its fast paths
(shard files read and written directly, renames).
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

__all__ = ["Location", "as_location", "is_url", "open_input", "join_input", "zarr_target", "local_copy"]


def is_url(path) -> bool:
    """True when ``path`` is an fsspec URL other than ``file://`` (``s3://…``, ``memory://…``).

    Examples
    --------
    >>> is_url("s3://bucket/screen.zarr"), is_url("/data/screen.zarr"), is_url("file:///data/x")
    (True, False, False)
    """
    if isinstance(path, Location):
        return not path.is_local
    text = str(path)
    return "://" in text and not text.startswith("file://")


class Location:
    """A store on an object store or another fsspec file system: URL plus storage options.

    Parameters
    ----------
    url : str
        ``protocol://path``.
    storage_options : dict, optional
        Passed to fsspec (and through it to zarr and xarray).

    Examples
    --------
    >>> loc = Location("memory://bucket/screen.zarr")
    >>> loc.name, (loc / "cells").url
    ('screen.zarr', 'memory://bucket/screen.zarr/cells')
    """

    is_local = False

    def __init__(self, url, storage_options=None):
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.protocol, self.root = self.url.split("://", 1)

    def __repr__(self):
        return self.url

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, Location) and (self.url, self.storage_options) == (other.url, other.storage_options)

    def __hash__(self):
        return hash(self.url)

    def __lt__(self, other):
        return self.url < other.url

    def __truediv__(self, key):
        return Location(f"{self.url}/{str(key).strip('/')}", self.storage_options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.root)

    @property
    def parent(self) -> Location:
        return Location(f"{self.protocol}://{posixpath.dirname(self.root)}", self.storage_options)

    def with_name(self, name) -> Location:
        return self.parent / name

    @property
    def fs(self):
        import fsspec

        # other clients (zarr's own file system object) write the same objects: no stale listings
        return fsspec.filesystem(self.protocol, **{"use_listings_cache": False, **self.storage_options})

    def exists(self) -> bool:
        return self.fs.exists(self.root)

    def is_file(self) -> bool:
        return self.fs.isfile(self.root)

    def is_dir(self) -> bool:
        kind = getattr(self, "_kind", None)  # known from the listing that found it
        return kind == "directory" if kind is not None else self.fs.isdir(self.root)

    def mkdir(self, parents=False, exist_ok=False) -> None:
        """Nothing to do: an object store has no folders (a prefix exists once an object is under it)."""

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.root)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_json(self):
        return json.loads(self.read_text())

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.root, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok=False) -> None:
        try:
            self.fs.rm_file(self.root)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Remove everything under this location (objects are deleted one by one: not atomic)."""
        try:
            self.fs.rm(self.root, recursive=True)
        except FileNotFoundError:
            pass

    def iterdir(self):
        """Children (one level) as Locations."""
        try:
            entries = self.fs.ls(self.root, detail=True, refresh=True)
        except TypeError:  # a file system without refresh
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        children = []
        for entry in entries:
            name = posixpath.basename(entry["name"].rstrip("/"))
            if not name or entry["name"].rstrip("/").lstrip("/") == self.root.lstrip("/"):
                continue
            child = self / name
            child._kind = entry.get("type")
            children.append(child)
        return children

    def du(self) -> int:
        try:
            return int(self.fs.du(self.root))
        except FileNotFoundError:
            return 0

    def zarr_store(self, read_only=False):
        """This location as a zarr store (``zarr.storage.FsspecStore``)."""
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=self.storage_options or None, read_only=read_only)


def zarr_target(store, read_only=False):
    """What zarr and xarray take for ``store``: a path string, or an ``FsspecStore`` for a URL."""
    if isinstance(store, Location):
        return store.zarr_store(read_only=read_only)
    return str(store)


def as_location(store, storage_options=None):
    """``store`` as a :class:`Location` (a URL) or a ``pathlib.Path`` (a local path, ``file://`` too).

    Examples
    --------
    >>> as_location("file:///tmp/screen.zarr")
    PosixPath('/tmp/screen.zarr')
    >>> as_location("memory://b/screen.zarr", {"skip_instance_cache": True}).storage_options
    {'skip_instance_cache': True}
    """
    if isinstance(store, Location):
        if storage_options:
            return Location(store.url, {**store.storage_options, **storage_options})
        return store
    text = str(store)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if is_url(text):
        return Location(text, storage_options)
    return Path(store)


def open_input(path, mode="rb", storage_options=None):
    """Open an input file (image, table) at a local path or an fsspec URL, for reading."""
    if is_url(path):
        import fsspec

        return fsspec.open(str(path), mode, **(storage_options or {})).open()
    return open(str(path).removeprefix("file://"), mode)


def join_input(base, path) -> str:
    """``path`` (absolute, a URL, or relative to the folder or URL prefix ``base``) as one string.

    Examples
    --------
    >>> join_input("s3://bucket/plate1", "images/a.tif")
    's3://bucket/plate1/images/a.tif'
    >>> join_input("s3://bucket/plate1", "s3://other/b.tif")
    's3://other/b.tif'
    """
    path = str(path)
    if is_url(path) or path.startswith("file://"):
        return path
    base = str(base)
    if is_url(base):
        return path if path.startswith("/") else posixpath.join(base, path)
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(base) / p)


def local_copy(source, storage_options=None) -> Path:
    """A local file for ``source``: the path itself, or a URL's object copied into cpzarr's cache.

    For readers that need a file on disk (Keras loading a ``.keras`` checkpoint or a weights
    file). The copy lives in ``<cache>/inputs/<hash of the URL>/<name>`` (cache: ``$CPZARR_CACHE``,
    else ``~/.cache/cpzarr``) and is fetched again when the object's size or ETag/mtime changed.

    Parameters
    ----------
    source : str, Path or Location
        A local path, ``file://`` URL, or fsspec URL.
    storage_options : dict, optional
        fsspec options of a URL (a Location's own options are merged over them).

    Examples
    --------
    >>> local_copy("/models/best.keras")
    PosixPath('/models/best.keras')
    """
    import hashlib

    location = as_location(source, storage_options)
    if not isinstance(location, Location):
        return Path(location).expanduser()
    from cpzarr.features._lite0 import cache_dir

    try:
        info = location.fs.info(location.root)
    except FileNotFoundError:
        raise FileNotFoundError(f"{location.url} does not exist") from None
    stamp = json.dumps({k: str(info.get(k)) for k in ("size", "ETag", "LastModified", "mtime", "created")})
    folder = cache_dir() / "inputs" / hashlib.sha256(location.url.encode()).hexdigest()[:24]
    target, seen = folder / location.name, folder / ".source.json"
    if target.is_file() and seen.is_file() and seen.read_text() == stamp:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{location.name}.partial"
    location.fs.get_file(location.root, str(partial))
    partial.replace(target)
    seen.write_text(stamp)
    return target
