"""Rows of an on-disk features node read straight from its chunk files.

A ``/features/<model>`` node as ``write_features`` writes it is a Zarr v3 array of unsharded
chunks of whole rows (cells × every feature), each a ``bytes`` then ``blosc`` encoding. Read
through zarr-python, each 26 MB chunk goes through zarr's event loop, is read into a new bytes
object and decoded into a new array; on this project's virtual machines touching fresh pages
costs about 1-2 s of system time per GB read, more than the read and decode themselves. Here a
chunk file is mapped and decoded by numcodecs' Blosc (which releases the GIL) from the page
cache straight into its destination rows (a block, or a buffer reused from chunk to chunk), in
the calling thread; :meth:`ChunkFiles.chunks` hands a chunk Blosc could not shrink (stored as it
was) out as a read-only view of the mapping, without that copy.

:meth:`ChunkFiles.of` recognises the dask array that ``xarray.open_zarr`` makes of such a node
(no selection, no computation on it); for anything else it returns None and the caller reads
through dask.
"""

import mmap
import queue
import sys
from pathlib import Path

import numpy as np


class ChunkFiles:
    """Reads row ranges of a 2-D Zarr v3 array whose chunks hold whole rows.

    Use :meth:`of`; construct only through it.
    """

    def __init__(self, root, metadata, shape, chunk_rows, dtype, fill_value):
        self.root = Path(root)
        self.metadata = metadata
        self.shape = tuple(shape)
        self.chunk_rows = int(chunk_rows)
        self.dtype = np.dtype(dtype)
        self.fill_value = fill_value
        # Chunk buffers handed back by finished reads, for the next: one per thread reading at
        # once, kept as long as this reader (a fresh 26 MB buffer costs more to fault in than
        # the chunk costs to decode).
        self._spare = queue.SimpleQueue()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_spare"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._spare = queue.SimpleQueue()

    @classmethod
    def of(cls, x):
        """A reader of the node behind the dask array ``x``, or None when it is not one read here.

        Read here: ``x`` is the array ``xarray.open_zarr`` made of a local Zarr v3 array (its
        name still ``open_dataset-...``, so nothing was selected or computed on it), not decoded
        by xarray (no scale or offset), of a native-endian float dtype, on a regular grid of
        chunks holding every column, encoded ``bytes`` then ``blosc``.
        """
        array = _zarr_array_of(x)
        if array is None:
            return None
        from zarr.codecs import BloscCodec, BytesCodec
        from zarr.storage import LocalStore

        metadata = array.metadata
        codecs = getattr(metadata, "codecs", ())
        if not (isinstance(array.store, LocalStore) and len(codecs) == 2
                and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)):
            return None
        dtype = np.dtype(array.dtype)
        endian = getattr(codecs[0].endian, "value", None)
        if dtype.kind != "f" or not dtype.isnative or endian != sys.byteorder:
            return None
        if array.ndim != 2 or array.shards is not None or array.chunks[1] != array.shape[1]:
            return None
        if tuple(array.shape) != tuple(x.shape) or dtype != x.dtype:
            return None
        return cls(Path(array.store.root) / array.path, metadata, array.shape, array.chunks[0], dtype,
                   array.fill_value)

    def read(self, lo, hi, out=None):
        """Rows ``lo:hi`` into ``out`` (allocated when None), chunk by chunk; returns ``out``.

        A chunk whose rows all fall in ``lo:hi`` decodes straight into ``out``; one cut by ``lo``
        or ``hi`` (or the last, stored whole past the array's end) decodes into a chunk buffer
        and its rows are copied.
        """
        scratch = None
        if out is None:
            out = np.empty((hi - lo, self.shape[1]), dtype=self.dtype)
        for c, a, b in self._spans(lo, hi):
            c_lo = c * self.chunk_rows
            if b - a == self.chunk_rows:
                self._decode(c, out[a - lo:b - lo])
            else:
                scratch = self._take() if scratch is None else scratch
                out[a - lo:b - lo] = self._decode(c, scratch)[a - c_lo:b - c_lo]
        if scratch is not None:
            self._spare.put(scratch)
        return out

    def chunks(self, lo, hi):
        """Rows ``lo:hi`` as consecutive read-only pieces, one per chunk.

        A chunk Blosc stored as it was (it could not shrink it, as with most network features
        under LZ4) is a view of the file's mapping, read without a copy; any other is decoded
        into one buffer that the next piece overwrites: use a piece before asking for the next.
        """
        scratch = None
        try:
            for c, a, b in self._spans(lo, hi):
                c_lo = c * self.chunk_rows
                encoded = self._map(c)
                rows = _stored_rows(encoded, self.dtype, (self.chunk_rows, self.shape[1]))
                if rows is None:
                    scratch = self._take() if scratch is None else scratch
                    rows = self._decoded(encoded, scratch)
                del encoded  # unmapped once the rows viewing it are gone
                yield rows[a - c_lo:b - c_lo]
        finally:
            if scratch is not None:
                self._spare.put(scratch)

    def _spans(self, lo, hi):
        """``(chunk, first row, end row)`` of each chunk holding rows of ``lo:hi``."""
        for c in range(lo // self.chunk_rows, -(-hi // self.chunk_rows) if hi > lo else 0):
            c_lo = c * self.chunk_rows
            yield c, max(lo, c_lo), min(hi, c_lo + self.chunk_rows)

    def _take(self):
        """A chunk buffer: a spare one, or a new one."""
        try:
            return self._spare.get_nowait()
        except queue.Empty:
            return np.empty((self.chunk_rows, self.shape[1]), dtype=self.dtype)

    def _decode(self, c, into):
        """Chunk ``c`` decoded into ``into`` (``chunk_rows`` rows); returns ``into``."""
        return self._decoded(self._map(c), into)

    def _decoded(self, encoded, into):
        if encoded is None:  # never written: every value is the fill value
            into[...] = self.fill_value
            return into
        from numcodecs import blosc

        with encoded:
            blosc.decompress(encoded, into)
        return into

    def _map(self, c):
        """A read-only mapping of chunk ``c``'s file, None for a chunk never written.

        Blosc reads the file's pages where they lie in the page cache: a mapping faults them in
        16 at a time, where a read() copies them into a buffer (three times the system time).
        """
        try:
            with open(self.root / self.metadata.encode_chunk_key((c, 0)), "rb", buffering=0) as file:
                return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            return None


# A Blosc (1.x format) chunk starts with 16 bytes: format version, codec version, flags, type
# size, then uint32 uncompressed size, block size and compressed size. Flag 0x2 marks a chunk
# stored as it was, its bytes following the header.
_BLOSC_HEADER = 16


def _stored_rows(encoded, dtype, shape):
    """The rows of a Blosc chunk stored as it was, as a read-only view of ``encoded``; else None."""
    if encoded is None:
        return None
    nbytes = int(np.prod(shape)) * dtype.itemsize
    header = encoded[:_BLOSC_HEADER]
    if (len(header) < _BLOSC_HEADER or header[0] != 2 or not header[2] & 0x2
            or int.from_bytes(header[4:8], "little") != nbytes or len(encoded) < _BLOSC_HEADER + nbytes):
        return None
    return np.frombuffer(encoded, dtype=dtype, count=int(np.prod(shape)), offset=_BLOSC_HEADER).reshape(shape)


def _zarr_array_of(x):
    """The ``zarr.Array`` behind ``xarray.open_zarr``'s dask array ``x``, or None."""
    from xarray.backends.zarr import ZarrArrayWrapper
    from xarray.core import indexing

    name = getattr(x, "name", "")
    if not isinstance(name, str) or not name.startswith("open_dataset-"):
        return None
    # xarray wraps its backend array once, under "original-<name>", and each chunk task indexes it.
    layer = x.__dask_graph__().layers.get("original-" + name)
    wrapped = layer.get("original-" + name) if layer is not None else None
    while wrapped is not None and not isinstance(wrapped, ZarrArrayWrapper):
        if isinstance(wrapped, indexing.LazilyIndexedArray):
            key = wrapped.key
            if not (isinstance(key, indexing.BasicIndexer)
                    and all(k == slice(None) for k in key.tuple)):
                return None
        elif not isinstance(wrapped, (indexing.ImplicitToExplicitIndexingAdapter, indexing.CopyOnWriteArray)):
            return None  # e.g. xarray's CF decoding (scale, offset, masking) wraps the array
        wrapped = wrapped.array
    return None if wrapped is None else wrapped.get_array()
