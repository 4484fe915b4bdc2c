"""Whole-chunk and whole-shard writes of a Zarr v3 array, without zarr's async write pipeline.

Ingest writes every well as one whole shard from one in-memory block. Through ``zarr.Array``
each such write goes through zarr's event loop, a thread hop per codec and several copies of the
block; for a 12 MB site that overhead cost as much as compressing it. :class:`DirectWriter` reads
the array's ``zarr.json``, and when the layout is one it knows (see :meth:`DirectWriter.open`)
encodes with the same numcodecs Blosc codec zarr would use and writes the same bytes zarr would
write, in the calling thread: Blosc releases the GIL, so threads compress in parallel. For any other
layout ``open`` returns None and the caller writes through zarr.

The bytes follow the Zarr v3 specification: a chunk is ``bytes`` then ``blosc``; a shard is its
non-empty inner chunks one after another followed by the index (``uint64`` offset and length
per inner chunk, ``2**64 - 1`` for an empty one, little-endian, then its CRC-32C). As zarr does by
default (``write_empty_chunks=False``), a chunk equal to the fill value everywhere is not stored.
Files are written beside their target and renamed into place, so a reader never sees half a shard.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import numpy as np

_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_EMPTY = np.uint64(2**64 - 1)


class DirectWriter:
    """Writes whole chunks (unsharded array) or whole shards (sharded array) of one array.

    Use :meth:`open`; construct only through it.

    Examples
    --------
    >>> writer = DirectWriter.open("screen.zarr/images")  # doctest: +SKIP
    >>> writer.write((0, 3, 0, 0, 0, 0), block)  # doctest: +SKIP
    """

    def __init__(self, path, dtype, block_shape, chunks_per_block, key, compressor, fill_value, sharded):
        self.path = Path(path)
        self.dtype = dtype
        self.block_shape = block_shape
        self.chunks_per_block = chunks_per_block
        self._key = key
        self._compressor = compressor
        self._fill = fill_value
        self._sharded = sharded

    @classmethod
    def open(cls, path) -> DirectWriter | None:
        """A writer for the array at ``path``, or None when its layout is not one written here.

        Written here: a native-endian integer or bool array on a regular chunk grid with the
        default chunk key encoding, whose codecs are ``[bytes, blosc]`` or one
        ``sharding_indexed`` codec holding ``[bytes, blosc]`` with its index at the end encoded
        ``[bytes, crc32c]``, where the inner chunks of a shard lie along one dimension only (so
        zarr's Morton order of them is their plain order).
        """
        from numcodecs import Blosc

        try:
            meta = json.loads((Path(path) / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers"):
            return None
        try:
            dtype = np.dtype(meta["data_type"])
        except (TypeError, KeyError):
            return None
        if dtype.kind not in "biu" or (dtype.itemsize > 1 and sys.byteorder != "little"):
            return None
        grid, keys = meta.get("chunk_grid", {}), meta.get("chunk_key_encoding", {})
        if grid.get("name") != "regular" or keys.get("name") != "default":
            return None
        block_shape = tuple(grid["configuration"]["chunk_shape"])
        separator = keys.get("configuration", {}).get("separator", "/")
        codecs = meta.get("codecs", [])
        sharded = len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed"
        if sharded:
            config = codecs[0]["configuration"]
            if config.get("index_location", "end") != "end" or not _is_index_chain(config.get("index_codecs", [])):
                return None
            chunk_shape = tuple(config["chunk_shape"])
            if len(chunk_shape) != len(block_shape) or any(b % c for b, c in zip(block_shape, chunk_shape)):
                return None
            chunks_per_block = tuple(b // c for b, c in zip(block_shape, chunk_shape))
            if sum(n > 1 for n in chunks_per_block) > 1:
                return None
            codecs = config.get("codecs", [])
        else:
            chunks_per_block = (1,) * len(block_shape)
        blosc = _blosc_of(codecs, dtype)
        if blosc is None:
            return None
        compressor = Blosc(cname=blosc["cname"], clevel=int(blosc["clevel"]), shuffle=_SHUFFLES[blosc["shuffle"]],
                           blocksize=int(blosc.get("blocksize", 0)))
        fill = np.array(meta.get("fill_value", 0)).astype(dtype)

        def key(index):
            return separator.join(["c", *map(str, index)])

        return cls(path, dtype, block_shape, chunks_per_block, key, compressor, fill, sharded)

    def encode(self, block: np.ndarray) -> list | None:
        """The stored object of one whole chunk or shard as a list of byte strings to write one
        after another, or None when the block is all fill value."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape != self.block_shape:
            raise ValueError(f"block of shape {block.shape}, the array's blocks are {self.block_shape}")
        if not self._sharded:
            return None if self._is_fill(block) else [self._compressor.encode(block)]
        from numcodecs import CRC32C

        axis = next((i for i, n in enumerate(self.chunks_per_block) if n > 1), 0)
        n = self.chunks_per_block[axis]
        step = self.block_shape[axis] // n
        index = np.full((n, 2), _EMPTY, dtype="<u8")
        parts, offset = [], 0
        for i in range(n):
            chunk = block[(slice(None),) * axis + (slice(i * step, (i + 1) * step),)]
            if self._is_fill(chunk):
                continue
            data = self._compressor.encode(np.ascontiguousarray(chunk))
            index[i] = (offset, len(data))
            parts.append(data)
            offset += len(data)
        if not parts:
            return None
        parts.append(CRC32C(location="end").encode(index.tobytes()))
        return parts

    def write(self, block_index, block: np.ndarray) -> None:
        """Store ``block`` as the chunk (or shard) ``block_index``, replacing what was there.

        A block that is all fill value removes the stored object, as zarr does.
        """
        target = self.path / self._key(block_index)
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

    def _is_fill(self, chunk) -> bool:
        flat = chunk.reshape(-1)
        # an image differs from the fill value somewhere in a sparse sample of its pixels, so the
        # full pass is left for the rare chunks that are blank there
        if (flat[::4099] != self._fill).any():
            return False
        if self._fill == 0:
            return not flat.any()  # one pass without a temporary boolean array
        return bool((flat == self._fill).all())


def _blosc_of(codecs, dtype):
    """The blosc configuration when ``codecs`` is ``[bytes, blosc]`` as written here, else None."""
    if len(codecs) != 2 or codecs[0].get("name") != "bytes" or codecs[1].get("name") != "blosc":
        return None
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    if dtype.itemsize > 1 and endian != "little":
        return None
    config = codecs[1].get("configuration", {})
    if config.get("shuffle") not in _SHUFFLES or int(config.get("typesize", dtype.itemsize)) != dtype.itemsize:
        return None
    return config


def _is_index_chain(codecs) -> bool:
    names = [c.get("name") for c in codecs]
    return names == ["bytes", "crc32c"] and codecs[0].get("configuration", {}).get("endian", "little") == "little"
