"""Fast reads behind xarray's backend API: the store's arrays as ``BackendArray`` subclasses.

On a local disk, a store in the contract's layout is read without zarr's async pipeline:

- ``images`` site by site from its shard files (:class:`cpzarr._shards.SiteReader`), by
  :class:`SitesArray`;
- a ``/features/<name>`` node row range by row range from its chunk files
  (:class:`cpzarr.store._chunk_files.ChunkFiles`), by :class:`RowsArray`.

Both are ``xarray.backends.BackendArray`` subclasses whose ``__getitem__`` goes through
``explicit_indexing_adapter`` (the route xarray documents for backends): :func:`open_screen` and
:func:`open_node` put them behind the variables they return, lazily indexed and chunked by dask
as zarr's own arrays are, so every consumer receives an ordinary lazy DataArray. Stores on an
object store, or in another layout, are read by xarray's zarr backend unchanged.

Two consumers read bigger pieces than a dask chunk or into their own buffers (crops' random
draws decode only the Blosc blocks under a few boxes; aggregation decodes whole feature chunks
into reused buffers). They ask :func:`site_reader` / :func:`row_reader` for the reader of a
variable still as opened (its dask array's name is the one recorded in its ``encoding`` at
opening; any selection or computation renames it) and otherwise read the DataArray as it is.
"""

from __future__ import annotations

import uuid

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

__all__ = ["SitesArray", "RowsArray", "backed_images", "backed_features", "site_reader", "row_reader"]

_READER = "cpzarr_reader"
_ARRAY = "cpzarr_array"


class SitesArray(BackendArray):
    """``images[plate, well, site, channel, y, x]`` read site by site from its shard files.

    Parameters
    ----------
    reader : cpzarr._shards.SiteReader
    shape : tuple of int
    dtype : numpy.dtype
    """

    def __init__(self, reader, shape, dtype):
        self.reader = reader
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._raw)

    def _raw(self, key):
        outer, dropped = [], []
        for axis, k in enumerate(key[:3]):
            if isinstance(k, slice):
                outer.append(range(*k.indices(self.shape[axis])))
            else:
                outer.append([int(k)])
                dropped.append(axis)
        inner = tuple(key[3:])
        out = None
        for i, p in enumerate(outer[0]):
            for j, w in enumerate(outer[1]):
                for k, s in enumerate(outer[2]):
                    site = self.reader.site(p, w, s)[inner]
                    if out is None:
                        out = np.empty((len(outer[0]), len(outer[1]), len(outer[2])) + site.shape, self.dtype)
                    out[i, j, k] = site
        if out is None:  # an empty selection
            shape = tuple(len(o) for o in outer) + tuple(
                len(range(*k.indices(n))) for k, n in zip(inner, self.shape[3:]) if isinstance(k, slice))
            out = np.empty(shape, self.dtype)
        return out.reshape(tuple(n for axis, n in enumerate(out.shape) if axis not in dropped))


class RowsArray(BackendArray):
    """A 2-D ``features[cell, feature]`` read row range by row range from its chunk files.

    Parameters
    ----------
    files : cpzarr.store._chunk_files.ChunkFiles
    """

    def __init__(self, files):
        self.files = files
        self.shape = tuple(files.shape)
        self.dtype = np.dtype(files.dtype)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._raw)

    def _raw(self, key):
        rows, columns = key
        if isinstance(rows, slice):
            lo, hi, step = rows.indices(self.shape[0])
            if step < 0:
                lo, hi = hi + 1, lo + 1
            block = self.files.read(lo, max(lo, hi))[::step] if step > 0 else \
                self.files.read(lo, max(lo, hi))[::-1][:: -step]
        else:
            block = self.files.read(int(rows), int(rows) + 1)[0]
        return block[..., columns]


def lazy_variable(dims, backend_array, attrs=None, encoding=None) -> xr.Variable:
    """A variable that reads ``backend_array`` lazily, as a backend's ``open_dataset`` makes it
    (the one place cpzarr wraps a ``BackendArray``; :mod:`cpzarr.testing` uses it too)."""
    return xr.Variable(dims, indexing.LazilyIndexedArray(backend_array), attrs, encoding)


def _backed(variable, backend_array, reader, prefix):
    """``variable`` read through ``backend_array``, chunked as it was, its reader recorded."""
    lazy = lazy_variable(variable.dims, backend_array, variable.attrs, dict(variable.encoding))
    chunked = lazy.chunk(dict(zip(variable.dims, variable.chunks)), name=f"{prefix}-{uuid.uuid4().hex}")
    chunked.encoding = {**variable.encoding, _READER: reader, _ARRAY: chunked.data.name}
    return chunked


def backed_images(variable, path):
    """The ``images`` variable of the local store array at ``path``, read by :class:`SitesArray`,
    or ``variable`` unchanged when its layout is not the store's."""
    from cpzarr._shards import SiteReader

    reader = SiteReader.open(path)
    if reader is None or variable.chunks is None or tuple(variable.shape) != tuple(reader.layout.shape):
        return variable
    return _backed(variable, SitesArray(reader, variable.shape, variable.dtype), reader, "store-images")


def backed_features(variable, path):
    """The ``features`` variable of the local node array at ``path``, read by :class:`RowsArray`,
    or ``variable`` unchanged when its layout is not read here (or xarray decodes it)."""
    from cpzarr.store._chunk_files import ChunkFiles

    if variable.chunks is None or variable.ndim != 2 or any(k in variable.encoding for k in
                                                             ("scale_factor", "add_offset")):
        return variable
    files = ChunkFiles.open(path, dtype=variable.dtype)
    if files is None or tuple(files.shape) != tuple(variable.shape):
        return variable
    return _backed(variable, RowsArray(files), files, "store-features")


def _reader(array, data=None):
    encoding = getattr(array, "encoding", None) or {}
    reader = encoding.get(_READER)
    name = getattr(array.data if data is None else data, "name", None)
    return reader if reader is not None and name == encoding.get(_ARRAY) else None


def site_reader(images):
    """The site reader behind ``images`` as :func:`~cpzarr.store.open_screen` opened it, else None.

    Returns a :class:`cpzarr._shards.SiteReader` (``reader.site(p, w, s, need)``) only for the
    variable as opened from a local store; any selection or computation on it gives None, and
    the caller then reads the DataArray itself.
    """
    return _reader(images)


def row_reader(features, data=None):
    """The chunk-file reader behind ``features`` as :func:`~cpzarr.store.open_node` opened it, else None.

    ``data``, when given, is the dask array the caller reads (it must still be the opened one).
    Returns a :class:`cpzarr.store._chunk_files.ChunkFiles` (``read(lo, hi, out)``, ``chunks``).
    """
    return _reader(features, data)
