"""Inputs on any file system: a local path, or an fsspec URL read through ``universal_pathlib``.

The readers of :mod:`cpzarr.formats` walk folders and open files with the ``pathlib`` API
(``is_dir``, ``glob``, ``iterdir``, ``open``). :func:`as_path` gives them a ``pathlib.Path`` for a
local path (or ``file://`` URL) and a :class:`upath.UPath` for any other fsspec URL
(``s3://bucket/locations``, ``memory://…``) carrying its ``storage_options``, so the same reader
code serves both; messages name ``str(path)``, the URL as the user wrote it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["as_path", "is_remote", "read_csv"]


def is_remote(path) -> bool:
    """True for a path that is not on the local file system (a UPath of another protocol)."""
    return not isinstance(path, Path) or getattr(path, "protocol", "") not in ("", "file", "local")


def as_path(source, storage_options=None):
    """``source`` as a path object: ``Path`` when local, ``UPath`` (with the options) for a URL.

    Parameters
    ----------
    source : str, Path, UPath or cpzarr.store.Location
        A local path, ``file://`` URL, or fsspec URL.
    storage_options : dict, optional
        fsspec options of a URL (credentials, ``endpoint_url``); a Location's own options win.

    Examples
    --------
    >>> as_path("file:///data/locations")
    PosixPath('/data/locations')
    >>> str(as_path("memory://bucket/locations"))
    'memory://bucket/locations'
    """
    from upath import UPath

    from cpzarr.store import Location, is_url

    if isinstance(source, Location):
        storage_options, source = source.storage_options or storage_options, source.url
    if isinstance(source, (Path, UPath)):
        return source
    if is_url(source):
        return UPath(str(source), **(storage_options or {}))
    return Path(str(source).removeprefix("file://"))


def read_csv(path, **options):
    """``pandas.read_csv`` of a local or fsspec path (compression inferred from the name)."""
    import pandas as pd

    if is_remote(path):
        return pd.read_csv(str(path), storage_options=dict(path.storage_options), **options)
    return pd.read_csv(path, **options)
