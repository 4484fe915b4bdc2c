"""The store's layout: node names, dimensions, chunking, codecs and completion markers.

Everything cpzarr knows about how a screen store is laid out is written here once; writers
(ingest, locate, features, profiles) and readers ask this module, and ``docs/architecture.md``
renders :data:`LAYOUT` as its table.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "IMAGE_DIMS",
    "PRESENT_DIMS",
    "CELLS_NODE",
    "LAYOUT",
    "COMPLETE_ATTR",
    "UNITS_ATTR",
    "UNIT_MARKER",
    "BLOSC_BLOCK",
    "features_node",
    "profiles_node",
    "image_codec",
    "present_codec",
    "feature_codec",
    "profile_codec",
    "image_chunks",
    "format_layout",
]

#: Dimensions of the ``images`` variable, in order.
IMAGE_DIMS = ("plate", "well", "site", "channel", "y", "x")
#: Dimensions of ``present``, the per-well completion marker of ingest.
PRESENT_DIMS = ("plate", "well", "site")
#: The node of cell locations.
CELLS_NODE = "cells"
#: Node attribute: False while a whole-node write is under way (written first), True when done
#: (written last). A reader refuses a node whose attribute is False.
COMPLETE_ATTR = "cpzarr_complete"
#: Node attribute of a node written unit by unit: the name of its per-unit marker variable.
UNITS_ATTR = "cpzarr_units"
#: The per-unit marker variable of ``/features/<name>`` (one bool per range of ``chunk_cells``).
UNIT_MARKER = "unit_complete"
#: Blosc block size of the images: 1 MiB blocks compress 1080 x 1080 sites 1.3-1.6x faster,
#: decode them 1.3-1.8x faster and 3-4 % smaller than Blosc's default at level 1
#: (synthetic 16-bit and real LINCS 8-bit; ``benchmark_ingest.py``).
BLOSC_BLOCK = 1 << 20

#: One row per node kind: (node, variables, dims, chunking, codec, written as, completion marker).
LAYOUT = (
    ("/", "images", "plate, well, site, channel, y, x", "chunk = one site (all channels); shard = one well",
     "Blosc zstd level 1 (byte shuffle; bit shuffle for 8-bit), 1 MiB blocks",
     "one shard per well task (ingest)", "the well's chunk of `present`, written after its shard"),
    ("/", "present", "plate, well, site", "one chunk per well", "Blosc zstd, no shuffle",
     "after the well's images", "itself; the root attribute `complete` once every well is in"),
    ("/", "well metadata, batch", "plate, well (batch: plate)", "whole", "zarr default",
     "with the store's skeleton", "the skeleton is written beside and renamed in"),
    ("/cells", "plate, well, site, x, y (+ area, object_id); cell_start", "cell; cell_start: plate, well, site",
     "whole", "zarr default", "one node (locate)", f"node attribute `{COMPLETE_ATTR}`"),
    ("/features/<name>", f"features; {UNIT_MARKER}", "cell, feature; unit", "chunk = `chunk_cells` whole rows",
     "Blosc LZ4 level 5, no shuffle", "one unit (chunk of cells) per task",
     f"`{UNIT_MARKER}[unit]`, written after the unit's rows"),
    ("/profiles/<name>/<level>", "profiles", "sample, feature", "dask's chunks (regular)",
     "Blosc LZ4 level 5, byte shuffle", "one node", f"node attribute `{COMPLETE_ATTR}`"),
)


def features_node(name: str) -> str:
    """The node of the single-cell features called ``name``.

    Examples
    --------
    >>> features_node("efficientnet-lite0")
    'features/efficientnet-lite0'
    """
    return f"features/{name}"


def profiles_node(name: str, level: str) -> str:
    """The node of the ``level`` profiles (``aggregated``, a pipeline's name) of features ``name``.

    Examples
    --------
    >>> profiles_node("efficientnet-lite0", "aggregated")
    'profiles/efficientnet-lite0/aggregated'
    """
    return f"profiles/{name}/{level}"


def image_codec(dtype, level=1):
    """The codec of ``images``: zstd inside Blosc.

    The byte shuffle (bit shuffle for 8-bit images) makes it about four times faster than plain
    zstd on 16-bit images, and smaller too; :data:`BLOSC_BLOCK` blocks.
    """
    from zarr.codecs import BloscCodec

    shuffle = "shuffle" if np.dtype(dtype).itemsize > 1 else "bitshuffle"
    return BloscCodec(cname="zstd", clevel=int(level), shuffle=shuffle, blocksize=BLOSC_BLOCK)


def present_codec(level=1):
    """The codec of ``present``."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=int(level), shuffle="noshuffle")


def feature_codec():
    """The codec of ``/features/<name>``: LZ4 inside Blosc, no shuffle.

    Network features decode about three times faster than with zstd (aggregation reads every
    feature of every cell); on Lite0's ReLU6 features, many exactly zero, it keeps 57 % of the
    bytes (zstd 42 %); on DeepProfiler's features neither codec saves more than 10 %.
    """
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")


def profile_codec():
    """The codec of ``/profiles/...``: LZ4 inside Blosc with byte shuffle.

    Profiles are dense floats that no codec shrinks much (zstd keeps about 70 % of float64
    profiles, this about 90 %), and zstd's encoder made the write several times slower than the
    aggregation that produced them.
    """
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def image_chunks(n_sites, n_channels, shape):
    """``(chunks, shards)`` of ``images``: one chunk per site, one shard per well."""
    ny, nx = shape
    return (1, 1, 1, n_channels, ny, nx), (1, 1, n_sites, n_channels, ny, nx)


def format_layout() -> str:
    """:data:`LAYOUT` as a Markdown table (the one in ``docs/architecture.md``).

    Examples
    --------
    >>> format_layout().splitlines()[0].startswith("| node |")
    True
    """
    head = ("node", "variables", "dims", "chunks", "codec", "written", "complete when")
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    rows += ["| " + " | ".join(f"`{r[0]}`" if i == 0 else r[i] for i in range(len(head))) + " |" for r in LAYOUT]
    return "\n".join(rows)
