"""The contract every reader of the field's files follows, and the registry of readers.

A reader is a :class:`Format`: a ``name`` (``"load_data"``), the ``kind`` of thing it reads
(one of :data:`KINDS`), a ``detect(path) -> bool`` that looks at names and headers only and never
raises, and a ``read(path, **options)`` that returns that kind's result:

========== ===========================================================================
kind        result of ``read``
========== ===========================================================================
images      ``(sites, well_metadata, channels, info)`` as :func:`cpzarr.formats._image_table.read_image_table`:
            one row per site with ``plate``, ``well``, ``site``, ``line`` and one absolute path
            column per channel; ``info["format"]`` is the format's name
locations   a DataFrame with ``plate``, ``well``, ``site``, ``x``, ``y`` (float64), ``file`` and
            ``row`` (the line in ``file``, for messages)
features    an ``xarray.Dataset`` with ``features[cell, feature]`` float32 and ``plate``,
            ``well``, ``site``, ``x``, ``y`` along ``cell``, sorted by plate, well, site
platemap    ``(frame, source)``: normalised columns with ``well`` (and ``plate`` when given), one
            row per well
========== ===========================================================================

``read`` raises :class:`cpzarr.errors.InputError` naming the file for a missing, empty or
malformed input, never a raw parser error. :func:`cpzarr.testing.check_reader` is the
conformance suite every registered reader passes (``tests/test_formats.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cpzarr.errors import InputError
from cpzarr.formats._fs import as_path

__all__ = ["KINDS", "Format", "register", "formats", "get_format", "find_format"]

#: What a reader can read.
KINDS = ("images", "locations", "features", "platemap")

_REGISTRY: dict[str, "Format"] = {}


@dataclass(frozen=True)
class Format:
    """One file format of the field, behind the common contract.

    Parameters
    ----------
    name : str
        Unique name, as users write it (``"load_data"``, ``"deepprofiler_index"``).
    kind : str
        One of :data:`KINDS`.
    description : str
        One line for listings and error messages.
    detect : callable(Path) -> bool
        True when ``path`` looks like this format (names and headers only; never raises).
    reader : callable(Path, **options)
        Reads ``path``; called by :meth:`read` after the path is checked to exist. ``path`` is a
        ``pathlib.Path``, or a ``upath.UPath`` for an fsspec URL (:func:`cpzarr.formats._fs.as_path`):
        readers use the pathlib API only, so they read URLs as they read local files.
    """

    name: str
    kind: str
    description: str
    detect: Callable[[Path], bool]
    reader: Callable[..., Any]

    def read(self, path, *, storage_options=None, **options):
        """Read ``path`` (a file or folder, local or an fsspec URL) into this kind's result.

        See the module docstring for the result; ``storage_options`` are fsspec's options of a URL.
        """
        path = as_path(path, storage_options)
        if not path.exists():
            raise InputError(f"{self.description}: {path} does not exist")
        return self.reader(path, **options)

    def looks_like(self, path, storage_options=None) -> bool:
        """:attr:`detect`, with any error meaning no."""
        try:
            return bool(self.detect(as_path(path, storage_options)))
        except Exception:  # a detector only says yes or no
            return False


def register(fmt: Format) -> Format:
    """Add a format to the registry (its name must be new) and return it."""
    if fmt.kind not in KINDS:
        raise ValueError(f"format {fmt.name!r}: kind {fmt.kind!r} is not one of {KINDS}")
    if fmt.name in _REGISTRY and _REGISTRY[fmt.name] is not fmt:
        raise ValueError(f"a format named {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    return fmt


def formats(kind=None) -> list[Format]:
    """The registered formats, of one ``kind`` or all, sorted by name."""
    return sorted((f for f in _REGISTRY.values() if kind is None or f.kind == kind), key=lambda f: f.name)


def get_format(name) -> Format:
    """The format called ``name``; InputError listing the known names otherwise."""
    if name not in _REGISTRY:
        raise InputError(f"unknown format {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def find_format(path, kind, storage_options=None) -> Format:
    """The one format of ``kind`` that recognises ``path`` (local, or a URL with ``storage_options``).

    Raises
    ------
    InputError
        When none does (listing what was tried) or several do (asking for a format name).
    """
    path = as_path(path, storage_options)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    matches = [f for f in formats(kind) if f.looks_like(path)]
    if len(matches) == 1:
        return matches[0]
    tried = [f"{f.name}: {f.description}" for f in formats(kind)]
    if not matches:
        raise InputError(f"{path} is in none of the {kind} formats cpzarr reads", tried)
    raise InputError(f"{path} looks like several {kind} formats; name one: {', '.join(f.name for f in matches)}")
