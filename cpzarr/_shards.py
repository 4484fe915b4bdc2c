"""The store's shard layout, read and written directly instead of through zarr's async pipeline.

The screen store keeps every well's sites in one shard file of its ``images`` array
(``docs/architecture.md``). zarr-python writes and reads such files through its event loop, a
thread hop per codec and several copies of each block: writing a 12 MB site that way cost as
much again as compressing it, and reading a site 30-45 % more CPU time than decoding it (8-bit
LINCS-like sites; about twice as much for 16-bit ones). This module writes and reads the same
bytes in the calling thread (Blosc and zstd release the GIL, so threads work in parallel):

- :func:`layout` reads an array's ``zarr.json`` into a :class:`Layout` when the layout is one
  handled here, and returns None otherwise (the caller then goes through zarr);
- :class:`Layout` also encodes and decodes the shard index;
- :class:`ShardWriter` writes whole shards (or whole chunks of an unsharded array), byte for byte
  what zarr writes;
- :class:`SiteReader` reads one site (an inner chunk) of a shard, and of a Blosc chunk can decode
  only the blocks under a few boxes (:func:`blosc_blocks`);
- :func:`blosc_stored` finds the bytes of a chunk Blosc stored as they were, to be read in place;
- ``cpzarr.store._chunk_files.ChunkFiles`` reads rows of an unsharded features node by its
  :class:`Layout`.

The bytes follow the Zarr v3 specification. A chunk is encoded by ``bytes`` (either byte order),
then optionally ``blosc`` or ``zstd``. A shard (``sharding_indexed`` codec) is its non-empty inner
chunks one after another, with an index at its end or start: an ``(offset, nbytes)`` pair of
little-endian ``uint64`` per inner chunk, ``2**64 - 1`` for a chunk not stored, then optionally its
CRC-32C; offsets count from the start of the file, index included. As zarr does by default
(``write_empty_chunks=False``), a chunk equal to the fill value everywhere is not stored.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numcodecs import CRC32C, Blosc, Zstd

EMPTY = np.uint64(2**64 - 1)
_SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


@dataclass(frozen=True)
class Layout:
    """How an array's chunks and shards are stored, when :func:`layout` handles it.

    Attributes
    ----------
    path : Path
        The array's folder.
    shape : tuple of int
        The array's shape.
    dtype : numpy.dtype
        The stored dtype, in the stored byte order.
    fill_value : numpy scalar
        Value of every element of a chunk that is not stored.
    block_shape : tuple of int
        Shape of one stored object: a shard, or a chunk of an unsharded array.
    chunk_shape : tuple of int
        Shape of an inner chunk of a shard (``block_shape`` when unsharded).
    sharded : bool
    codec : numcodecs.Blosc or numcodecs.Zstd or None
        The compressor after ``bytes``, None for raw bytes.
    index_at_end, index_crc : bool
        Where a shard's index lies, and whether a CRC-32C follows it.
    key_prefix : tuple of str
        ``("c",)`` (default chunk key encoding: ``c/1/3/0``) or ``()`` (v2: ``1.3.0``).
    separator : str
    """

    path: Path
    shape: tuple
    dtype: np.dtype
    fill_value: object
    block_shape: tuple
    chunk_shape: tuple
    sharded: bool
    codec: object
    index_at_end: bool
    index_crc: bool
    key_prefix: tuple
    separator: str

    @property
    def chunks_per_block(self) -> tuple:
        return tuple(b // c for b, c in zip(self.block_shape, self.chunk_shape))

    @property
    def split_axis(self) -> int:
        """The one axis along which a shard holds several inner chunks (0 when it holds one)."""
        return next((i for i, n in enumerate(self.chunks_per_block) if n > 1), 0)

    @property
    def index_nbytes(self) -> int:
        return 16 * int(np.prod(self.chunks_per_block)) + (4 if self.index_crc else 0)

    def key(self, block_index) -> str:
        """Path, relative to the array's folder, of the stored object ``block_index``."""
        return self.separator.join([*self.key_prefix, *map(str, block_index)])

    def encode_index(self, entries: np.ndarray) -> bytes:
        """A shard's index; ``entries`` are ``(offset, nbytes)`` per inner chunk, offsets counted
        from the first chunk's start, :data:`EMPTY` for a chunk not stored."""
        entries = np.array(entries, dtype="<u8")
        if not self.index_at_end:
            stored = entries[:, 0] != EMPTY
            entries[stored, 0] += self.index_nbytes
        raw = entries.tobytes()
        return CRC32C(location="end").encode(raw) if self.index_crc else raw

    def read_index(self, f) -> np.ndarray:
        """``(offset from the file's start, nbytes)`` per inner chunk of the open shard file ``f``
        (the CRC is not checked)."""
        if self.index_at_end:
            f.seek(-self.index_nbytes, os.SEEK_END)
        else:
            f.seek(0)
        raw = f.read(self.index_nbytes)[: self.index_nbytes - (4 if self.index_crc else 0)]
        return np.frombuffer(raw, "<u8").reshape(-1, 2)


def layout(path) -> Layout | None:
    """The layout of the Zarr v3 array at ``path``, or None when it is not one handled here.

    Handled: a bool, integer or float array on a regular chunk grid, with the default or v2 chunk
    key encoding, no storage transformer, whose chunks are encoded ``[bytes]``, ``[bytes, blosc]``
    or ``[bytes, zstd]``, either directly or inside one ``sharding_indexed`` codec whose index is
    encoded ``[bytes]`` or ``[bytes, crc32c]`` (little-endian) and whose inner chunks lie along one
    dimension only (so zarr's Morton order of them is their plain order).
    """
    path = Path(path)
    try:
        meta = json.loads((path / "zarr.json").read_text())
        return _parse(path, meta)
    except (OSError, ValueError, KeyError, TypeError):  # no array, or metadata not read here
        return None


def _parse(path, meta):
    if meta["zarr_format"] != 3 or meta["node_type"] != "array" or meta.get("storage_transformers"):
        return None
    grid, keys = meta["chunk_grid"], meta["chunk_key_encoding"]
    if grid["name"] != "regular" or keys["name"] not in ("default", "v2"):
        return None
    dtype = np.dtype(meta["data_type"])
    if dtype.kind not in "biuf":
        return None
    block_shape = tuple(grid["configuration"]["chunk_shape"])
    codecs = meta["codecs"]
    sharding = codecs[0]["configuration"] if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed" else None
    chunk_shape, index_at_end, index_crc = block_shape, True, False
    if sharding is not None:
        index = sharding["index_codecs"]
        if [c["name"] for c in index] not in (["bytes"], ["bytes", "crc32c"]) or _endian(index[0]) != "little":
            return None
        location = sharding.get("index_location", "end")
        chunk_shape = tuple(sharding["chunk_shape"])
        if location not in ("start", "end") or len(chunk_shape) != len(block_shape):
            return None
        if any(b % c for b, c in zip(block_shape, chunk_shape)):
            return None
        if sum(b // c > 1 for b, c in zip(block_shape, chunk_shape)) > 1:
            return None
        codecs, index_at_end, index_crc = sharding["codecs"], location == "end", len(index) == 2
    if not 1 <= len(codecs) <= 2 or codecs[0]["name"] != "bytes":
        return None
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if _endian(codecs[0]) == "little" else ">")
    codec = None
    if len(codecs) == 2:
        codec = _compressor(codecs[1], dtype)
        if codec is None:
            return None
    default_keys = keys["name"] == "default"
    separator = keys.get("configuration", {}).get("separator", "/" if default_keys else ".")
    return Layout(
        path=path, shape=tuple(meta["shape"]), dtype=dtype, fill_value=np.array(meta["fill_value"]).astype(dtype)[()],
        block_shape=block_shape, chunk_shape=chunk_shape, sharded=sharding is not None, codec=codec,
        index_at_end=index_at_end, index_crc=index_crc, key_prefix=("c",) if default_keys else (), separator=separator,
    )


def _endian(codec):
    return codec.get("configuration", {}).get("endian", "little")


def _compressor(codec, dtype):
    """The numcodecs codec that writes what zarr writes for ``codec``, or None."""
    config = codec.get("configuration", {})
    if codec["name"] == "zstd":
        return Zstd(level=int(config.get("level", 0)), checksum=bool(config.get("checksum", False)))
    if codec["name"] != "blosc" or config.get("shuffle") not in _SHUFFLES:
        return None
    # numcodecs takes the type size from the array it encodes: zarr's must be the dtype's
    if int(config.get("typesize", dtype.itemsize)) != dtype.itemsize:
        return None
    return Blosc(cname=config["cname"], clevel=int(config["clevel"]), shuffle=_SHUFFLES[config["shuffle"]],
                 blocksize=int(config.get("blocksize", 0)))


class ShardWriter:
    """Writes whole shards (sharded array) or whole chunks (unsharded array) of one array.

    Use :meth:`open`.

    Examples
    --------
    >>> writer = ShardWriter.open("screen.zarr/images")  # doctest: +SKIP
    >>> writer.write((0, 3, 0, 0, 0, 0), block)  # doctest: +SKIP
    """

    def __init__(self, layout: Layout):
        self.layout = layout

    @classmethod
    def open(cls, path) -> ShardWriter | None:
        """A writer for the array at ``path``, or None when :func:`layout` does not handle it."""
        found = layout(path)
        return None if found is None else cls(found)

    @property
    def block_shape(self) -> tuple:
        return self.layout.block_shape

    def encode(self, block: np.ndarray) -> list | None:
        """The stored object of one whole chunk or shard as a list of byte strings to write one
        after another, or None when the block is all fill value."""
        lay = self.layout
        block = np.ascontiguousarray(block, dtype=lay.dtype)
        if block.shape != lay.block_shape:
            raise ValueError(f"block of shape {block.shape}, the array's blocks are {lay.block_shape}")
        if not lay.sharded:
            return None if self._is_fill(block) else [self._encode_chunk(block)]
        axis = lay.split_axis
        step = lay.chunk_shape[axis]
        entries = np.full((lay.chunks_per_block[axis], 2), EMPTY, dtype="<u8")
        parts, offset = [], 0
        for i in range(len(entries)):
            chunk = block[(slice(None),) * axis + (slice(i * step, (i + 1) * step),)]
            if self._is_fill(chunk):
                continue
            data = self._encode_chunk(chunk)
            entries[i] = (offset, len(data))
            parts.append(data)
            offset += len(data)
        if not parts:
            return None
        index = lay.encode_index(entries)
        return [*parts, index] if lay.index_at_end else [index, *parts]

    def write(self, block_index, block: np.ndarray) -> None:
        """Store ``block`` as the chunk (or shard) ``block_index``, replacing what was there.

        A block that is all fill value removes the stored object, as zarr does. The file is
        written beside its target and renamed into place, so a reader never sees half a shard.
        """
        target = self.layout.path / self.layout.key(block_index)
        parts = self.encode(block)
        if parts is None:
            target.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as f:
                for part in parts:  # no joined copy of the shard
                    f.write(part)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def _encode_chunk(self, chunk):
        chunk = np.ascontiguousarray(chunk)
        codec = self.layout.codec
        return chunk.reshape(-1).view(np.uint8) if codec is None else codec.encode(chunk)

    def _is_fill(self, chunk) -> bool:
        flat = chunk.reshape(-1)
        fill = self.layout.fill_value
        if fill != fill:  # zarr counts NaN equal to a NaN fill value
            return bool(np.isnan(flat).all())
        # an image differs from the fill value somewhere in a sparse sample of its pixels, so the
        # full pass is left for the rare chunks that are blank there
        if (flat[::4099] != fill).any():
            return False
        if fill == 0:
            return not flat.any()  # one pass without a temporary boolean array
        return bool((flat == fill).all())


class SiteReader:
    """Sites read from the shard files of a store: one inner chunk per site, one shard per well.

    Reads an ``images`` array (plate, well, site, channel, y, x) sharded as the store contract
    says, in any :func:`layout`. Use :meth:`open`. Shard indexes are cached: a finished store's
    images do not change.
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        self.shape = layout.chunk_shape[3:]
        self.sites_per_shard = layout.block_shape[2]
        self.decoder = layout.codec
        self.blosc = isinstance(layout.codec, Blosc)  # chunks that decode block by block
        self._indexes = {}
        self._scratch = threading.local()

    @classmethod
    def open(cls, path) -> SiteReader | None:
        """A reader of the array at ``path``, or None unless it is sharded with one site per inner
        chunk, whole wells or parts of one well per shard, in a :func:`layout` handled here."""
        found = layout(path)
        if found is None or not found.sharded or len(found.shape) != 6:
            return None
        site = (1, 1, 1) + found.shape[3:]
        if found.chunk_shape != site or found.block_shape[:2] != (1, 1) or found.block_shape[3:] != site[3:]:
            return None
        return cls(found)

    def __getstate__(self):
        # shipped to other processes (a distributed cluster) without per-thread buffers or caches
        state = self.__dict__.copy()
        state["_indexes"], state["_scratch"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._scratch = threading.local()

    def site(self, p, w, s, need=None):
        """Pixels ``(channel, y, x)`` of a site; with ``need = (rows, box, channels)`` only the
        rows ``rows[i] : rows[i] + box`` of those channels are sure to be filled in, and the
        array may be this thread's scratch buffer, valid until its next call with ``need``."""
        lay = self.layout
        shard, j = divmod(int(s), self.sites_per_shard)
        path = lay.path / lay.key((int(p), int(w), shard, 0, 0, 0))
        try:
            with open(path, "rb") as f:
                index = self._indexes.get(path)
                if index is None:
                    index = self._indexes[path] = lay.read_index(f)
                offset, nbytes = index[j]
                if offset == EMPTY:
                    return np.full(self.shape, lay.fill_value, lay.dtype)
                f.seek(int(offset))
                raw = f.read(int(nbytes))
        except FileNotFoundError:  # a shard never written
            return np.full(self.shape, lay.fill_value, lay.dtype)
        if self.decoder is None:
            return np.frombuffer(raw, lay.dtype).reshape(self.shape)
        if need is not None and self.blosc:
            scratch = getattr(self._scratch, "buffers", None)
            if scratch is None:
                size = int(np.prod(self.shape)) * lay.dtype.itemsize
                scratch = self._scratch.buffers = (np.empty(size, np.uint8), np.empty(size, np.uint8))
            part = blosc_blocks(raw, self._byte_ranges(*need), self.decoder, scratch)
            if part is not None:
                return part.view(lay.dtype).reshape(self.shape)
        out = np.empty(self.shape, lay.dtype)
        self.decoder.decode(raw, out=out)
        return out

    def _byte_ranges(self, rows, box, channels):
        """Byte ranges of the chunk (C order) holding rows ``rows[i] : rows[i] + box`` of ``channels``."""
        height, width = self.shape[1:]
        row_bytes = width * self.layout.dtype.itemsize
        top = np.clip(np.asarray(rows), 0, height)
        bottom = np.clip(np.asarray(rows) + box, 0, height)
        base = np.asarray(channels)[:, None] * height
        return ((base + top) * row_bytes).ravel(), ((base + bottom) * row_bytes).ravel()


def blosc_blocks(raw, ranges, blosc, scratch=None):
    """Decode only the blocks of a Blosc (c-blosc 1) buffer that hold the byte ``ranges``.

    A Blosc buffer is a 16-byte header (flags, type size, sizes), the offsets of its blocks, then
    the blocks, each compressed and shuffled on its own: its streams (one, or one per byte of the
    type when split) each follow their int32 length. A random draw needs a few 128-row bands of a
    site, a small share of its blocks, so those blocks are copied, still compressed, into a
    smaller Blosc buffer of the same kind (header sizes and offsets rewritten; the original's
    short last block, if needed, stays last, where Blosc expects it), which Blosc decodes at its
    usual speed (un-shuffling included) in one call.

    Returns the whole buffer's bytes with only those blocks filled in, or None (decode it all
    instead) when they are most of the blocks, or the buffer is not of this kind. ``scratch``, two
    uint8 arrays of at least the buffer's size, receive the result and the decoded blocks: fresh
    arrays of a changing size come from fresh memory pages, whose first touch cost more than the
    decode (1,700 page faults, +5 ms for a LINCS site).
    """
    buf = np.frombuffer(raw, np.uint8)
    if len(buf) < 16 or buf[0] != 2:
        return None
    flags, typesize = int(buf[2]), int(buf[3])
    nbytes, blocksize, _ = (int(v) for v in buf[4:16].view("<i4"))
    if flags & 0x2:
        return blosc_stored(buf)
    if blocksize <= 0 or nbytes <= 0:
        return None
    starts, stops = ranges
    keep = stops > starts
    first, last = starts[keep] // blocksize, (stops[keep] - 1) // blocksize
    blocks = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last)] or [np.zeros(0, int)]))
    n_blocks = -(-nbytes // blocksize)
    if n_blocks < 2 or len(blocks) > 0.8 * n_blocks:
        return None
    out = np.empty(nbytes, np.uint8) if scratch is None else scratch[0][:nbytes]
    if not len(blocks):
        return out
    if len(blocks) == 1 and blocks[0] == n_blocks - 1 and nbytes % blocksize:
        # Blosc refuses a buffer smaller than its block size: the short last block needs company
        blocks = np.r_[n_blocks - 2, blocks]
    offsets = buf[16 : 16 + 4 * n_blocks].view("<i4")
    split = not flags & 0x10 and typesize <= 16 and blocksize // typesize >= 128
    sizes = np.minimum(blocksize, nbytes - blocks * blocksize)
    pieces, new_offsets, at = [], [], 16 + 4 * len(blocks)
    for j, size in zip(blocks, sizes):
        begin = end = int(offsets[j])
        for _ in range(typesize if split and size == blocksize else 1):
            end += 4 + int(buf[end : end + 4].view("<i4")[0])
        pieces.append(buf[begin:end])
        new_offsets.append(at)
        at += end - begin
    header = buf[:16].copy()
    header[4:16].view("<i4")[:] = (int(sizes.sum()), blocksize, at)
    fake = np.concatenate([header, np.asarray(new_offsets, "<i4").view(np.uint8), *pieces])
    part = np.empty(sizes.sum(), np.uint8) if scratch is None else scratch[1][: sizes.sum()]
    blosc.decode(fake, out=part)
    for k, (j, size) in enumerate(zip(blocks, sizes)):
        out[j * blocksize : j * blocksize + size] = part[k * blocksize : k * blocksize + size]
    return out


def blosc_stored(raw):
    """The bytes of a Blosc (c-blosc 1) buffer that Blosc stored as they were, or None.

    Blosc stores data it cannot shrink (most network features under LZ4) after its 16-byte header,
    marked by flag 0x2: those bytes are then read in place, without a decode's copy.

    Returns
    -------
    numpy.ndarray of uint8 or None
        A read-only view of ``raw`` past the header, or None when ``raw`` is compressed, not a
        Blosc buffer of this format, or shorter than its header says.
    """
    buf = np.frombuffer(raw, np.uint8)
    if len(buf) < 16 or buf[0] != 2 or not buf[2] & 0x2:
        return None
    nbytes = int(buf[4:8].view("<i4")[0])
    return buf[16 : 16 + nbytes] if len(buf) >= 16 + nbytes else None
