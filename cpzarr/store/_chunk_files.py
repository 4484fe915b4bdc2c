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

:meth:`ChunkFiles.open` reads such a node's files, which :func:`cpzarr._shards.layout` describes
as it does the images' shards; :func:`cpzarr.store.open_node` puts it behind the node's
``features`` variable (an xarray ``BackendArray``, :mod:`cpzarr.store._backend`), and aggregation
asks :func:`cpzarr.store.row_reader` for it to read whole chunks into its own buffers.
"""

import mmap
import queue

import numpy as np


class ChunkFiles:
    """Reads row ranges of a 2-D Zarr v3 array whose chunks hold whole rows.

    Use :meth:`open`; construct only through it.

    Parameters
    ----------
    layout : cpzarr._shards.Layout
        The array's layout: unsharded, chunks of whole rows, ``bytes`` (native order) then Blosc.
    """

    def __init__(self, layout):
        self.layout = layout
        self.shape = layout.shape
        self.chunk_rows = layout.chunk_shape[0]
        self.dtype = layout.dtype
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
    def open(cls, path, dtype=None):
        """A reader of the 2-D array at ``path``, or None when it is not one read here.

        Read here: a local Zarr v3 array of a native-endian float dtype (``dtype``, when given,
        the dtype the caller reads it as), in a :func:`~cpzarr._shards.layout` that is
        unsharded, encoded ``bytes`` then ``blosc``, with chunks holding every column.
        """
        # numcodecs, which cpzarr._shards needs, is imported on a reader's first use
        from numcodecs import Blosc

        from cpzarr._shards import layout

        found = layout(path)
        if found is None or found.sharded or not isinstance(found.codec, Blosc):
            return None
        # rows are handed out as stored, with no byte swap or cast
        if found.dtype.kind != "f" or not found.dtype.isnative or (dtype is not None and found.dtype != dtype):
            return None
        if len(found.shape) != 2 or found.chunk_shape[1] != found.shape[1]:
            return None
        return cls(found)

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
                self._decoded(self._map(c), out[a - lo:b - lo])
            else:
                scratch = self._take() if scratch is None else scratch
                out[a - lo:b - lo] = self._decoded(self._map(c), scratch)[a - c_lo:b - c_lo]
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
                rows = self._stored_rows(encoded)
                if rows is None:
                    scratch = self._take() if scratch is None else scratch
                    rows = self._decoded(encoded, scratch)
                del encoded  # unmapped once the rows viewing it are gone
                yield rows[a - c_lo:b - c_lo]
        finally:
            if scratch is not None:
                self._spare.put(scratch)

    def _stored_rows(self, encoded):
        """The rows of a chunk Blosc stored as they were, as a read-only view of ``encoded``; else None."""
        from cpzarr._shards import blosc_stored

        stored = None if encoded is None else blosc_stored(encoded)
        if stored is None or stored.nbytes != self.chunk_rows * self.shape[1] * self.dtype.itemsize:
            return None
        return stored.view(self.dtype).reshape(self.chunk_rows, self.shape[1])

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

    def _decoded(self, encoded, into):
        """A chunk (a mapping from :meth:`_map`) decoded into ``into`` (``chunk_rows`` rows)."""
        if encoded is None:  # never written: every value is the fill value
            into[...] = self.layout.fill_value
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
            with open(self.layout.path / self.layout.key((c, 0)), "rb", buffering=0) as file:
                return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            return None
