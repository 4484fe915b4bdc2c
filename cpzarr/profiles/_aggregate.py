"""aggregate: single-cell features → site or well profiles, chunk by chunk.

Each dask task reduces a block of whole wells (or sites). Its temporaries are kept to about
32 MiB by working through the block's features a column block at a time, so memory per task is
one block of cells (at most ``max(block_bytes, the largest well)``, read in once) plus that.

Cells sorted by well (as a store holds them) go to independent tasks that each read their own
block of rows, so no input chunk waits in memory for a second task (see ``_reduce_sorted``).
A features node as ``write_features`` writes it is read from its chunk files, not through zarr
(see ``cpzarr.store._chunk_files``); a mean then needs one chunk of its block in memory at a time.

Means sum float32 rows into float64 one well at a time (``np.sum`` along the cell axis streams
rows, several times faster than ``np.add.reduceat`` with a float64 accumulator). Medians of
wells without NaN select the middle values in float32 (selection is exact) and average the two
middle ones in float64, as pandas does on its float64 copy: small wells, stacked by size, go
through a median-selecting comparator network (Knuth's merge exchange, pruned to the comparators
that reach the middle outputs), vectorized across wells and features; larger wells through a
sort of each feature's cells made contiguous (numpy's vectorized sort beats ``np.partition``
there). Wells with NaN take the plain ``np.nanmedian`` path.
"""

import threading
from functools import lru_cache, partial

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cpzarr.cluster import local_threads
from cpzarr.errors import InputError
from cpzarr.profiles._samples import as_dask, constant_coords, group_codes, record_step
from cpzarr.profiles._segments import BLOCK_BYTES, pack_evenly, segment_reduce, segments_in_input_order

OPERATIONS = ("mean", "median")


# Blocks of sorted cells span several 1,024-cell chunks of a features node (see _reduce_sorted).
SORTED_BLOCK_BYTES = 256 * 2**20


def aggregate(features, strata=("plate", "well"), operation="mean", block_bytes=None):
    """Aggregate single-cell features to one profile per stratum (well, or site), with cell counts.

    Parameters
    ----------
    features : DataArray (cell, feature) or Dataset
        The ``/features/<model>`` node (its ``features`` variable) with ``plate``, ``well``,
        ``site`` coordinates along ``cell``, ideally sorted by them (as the store writes it).
    strata : sequence of str, default ("plate", "well")
        Coordinates defining a profile: ``("plate", "well")`` for wells, add ``"site"`` for sites.
    operation : {"mean", "median"}, default "mean"
        Per feature, NaN ignored (as pandas in Pycytominer).
    block_bytes : int, optional
        Target size of a block of cells (default 256 MiB for cells sorted by the strata, as a
        store holds them; 32 MiB otherwise); a block always holds whole strata, so memory is
        bounded by about twice ``max(block_bytes, one stratum's cells)`` per worker, never by
        the screen.

    Returns
    -------
    profiles : DataArray (sample, feature)
        float64, lazy (dask); one sample per stratum sorted by the strata; coordinates are the
        strata, ``cell_count`` and every cell coordinate constant within each stratum.

    Notes
    -----
    Cells are cut into blocks that end at stratum boundaries, and each block is reduced by one
    task (per-stratum float64 sums for the mean; a comparator network or a sort for the median,
    a column block of features at a time). Cells sorted by the strata are read block by block;
    cells that are not are gathered first (a shuffle; slower, same result).

    Examples
    --------
    >>> cells = xr.DataArray(np.arange(8.0).reshape(4, 2), dims=("cell", "feature"),
    ...     coords={"plate": ("cell", ["p"] * 4), "well": ("cell", ["A01", "A01", "A01", "B01"])})
    >>> aggregate(cells).values.tolist()
    [[2.0, 3.0], [6.0, 7.0]]
    """
    if operation not in OPERATIONS:
        raise InputError(f"aggregate operation {operation!r} is not one of {OPERATIONS}")
    if isinstance(features, xr.Dataset):
        if "features" not in features:
            raise InputError(f"the dataset has no 'features' variable (has {list(features.data_vars)})")
        features = features["features"]
    if not isinstance(features, xr.DataArray) or set(features.dims) != {"cell", "feature"}:
        raise InputError("aggregate expects features with dims ('cell', 'feature')")
    cells = features.transpose("cell", "feature")
    if "cell" in cells.coords:
        cells = cells.drop_vars("cell")
    cells = cells.rename({"cell": "sample"})
    # Each use of a lazy coordinate (grouping, then the checks for constant ones) would read it
    # from the store again: read them all once, together.
    lazy = [name for name, c in cells.coords.items()
            if c.dims == ("sample",) and isinstance(c.data, da.Array)]
    loaded = dask.compute(*[cells[name].data for name in lazy])
    cells = cells.assign_coords({name: ("sample", values) for name, values in zip(lazy, loaded)})
    strata = [strata] if isinstance(strata, str) else list(strata)
    codes, keys = group_codes(cells, strata)
    order, lengths, to_key_order = segments_in_input_order(codes)
    x = as_dask(cells)
    in_order = np.array_equal(order, np.arange(len(order)))
    if block_bytes is None:
        block_bytes = SORTED_BLOCK_BYTES if in_order else BLOCK_BYTES

    def reduce(block, lengths):
        return _reduce(block, lengths, operation, block_bytes)

    if in_order:
        from cpzarr.store import row_reader

        data = _reduce_sorted(x, lengths, operation, block_bytes, row_reader(features, x))
    else:
        data = segment_reduce(x, lengths, reduce, x.shape[1], order=order, block_bytes=block_bytes)
    if not np.array_equal(to_key_order, np.arange(len(to_key_order))):
        data = data[to_key_order]
    lengths = lengths[to_key_order]
    order = np.argsort(codes, kind="stable")
    coords = {c: ("sample", keys[c].to_numpy()) for c in strata}
    # constant_coords compares every cell's value as text (minutes for millions of cells); cell
    # positions and sites are told apart by one cell pair per well first.
    varying = _varying_coords(cells, order, lengths, exclude=strata)
    coords.update(constant_coords(cells.drop_vars(varying), codes, order, lengths, exclude=strata))
    coords["cell_count"] = ("sample", lengths.astype(np.int64))
    coords["feature"] = cells["feature"]
    out = xr.DataArray(data, dims=("sample", "feature"), coords=coords, name="profiles", attrs=dict(cells.attrs))
    record_step(out, "aggregate", {"strata": strata, "operation": operation})
    return out


def _varying_coords(cells, order, lengths, exclude=()):
    """Coordinates along ``sample`` whose first and last cell differ in some group (never constant)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    first, last = order[starts], order[starts + np.maximum(lengths, 1) - 1]
    varying = []
    for name, coord in cells.coords.items():
        if coord.dims != ("sample",) or name in exclude or not len(first):
            continue
        values = np.asarray(coord.values)
        a, b = values[first], values[last]
        if values.dtype.kind in "iub":
            differ = bool(np.any(a != b))
        elif values.dtype.kind == "f":
            # Distinct floats print differently; two NaN print alike.
            differ = bool(np.any((a != b) & ~(np.isnan(a) & np.isnan(b))))
        else:
            differ = any(str(x) != str(y) for x, y in zip(a, b))
        if differ:
            varying.append(name)
    return varying


# Above this many cells a well's median goes through a sort: the network's comparator count
# grows as n log² n while the sort's per-column overhead stops mattering (crossover measured
# between 100 and 200 cells at 6,400 features).
NETWORK_MAX_CELLS = 128


def _reduce(block, lengths, operation, block_bytes=BLOCK_BYTES):
    """Per-segment mean or median of ``block`` (rows = consecutive segments) as float64."""
    block = np.asarray(block)
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if operation == "mean":
        return _piece_means([block], lengths, block.shape[1])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out = np.empty((len(lengths), block.shape[1]))
    if not len(lengths):
        return out
    # Segments holding a NaN cell, found by the rows whose sum is NaN (without a block-sized mask
    # of NaN cells): they take the NaN-aware path, as do the rare rows whose sum is NaN without
    # a NaN cell (+inf and -inf, or an overflow both ways), for which it gives the same medians.
    with np.errstate(invalid="ignore", over="ignore"):
        nan_before = np.concatenate([[0], np.cumsum(np.isnan(block.sum(axis=1)))])
    has_nan = nan_before[starts + lengths] > nan_before[starts]
    # Column blocks bound the temporaries (float64 copies, stacked wells) by block_bytes.
    step = max(1, int(block_bytes) // max(1, 8 * len(block)))
    for lo in range(0, block.shape[1], step):
        columns = slice(lo, lo + step)
        _medians(block[:, columns], starts, lengths, has_nan, out[:, columns])
    return out


def _reduce_sorted(x, lengths, operation, block_bytes, files=None):
    """Per-segment reductions of ``x`` sorted by segment, one independent task per block of segments.

    Each task reads its own rows (from the chunk files when ``files`` reads them, otherwise by
    a synchronous compute of ``x[lo:hi]`` inside the task) rather than sharing input chunks with
    its neighbours: with shared chunks the dask scheduler kept every third 26 MB chunk of a
    features node in memory (1 GB at 150,000 cells, growing with the screen). A chunk cut by a
    block boundary is read by both blocks, so blocks span many chunks (``block_bytes``, default
    256 MiB) to keep the re-reading small; they are cut to equal shares for the workers.
    """
    per_block = pack_evenly(lengths, x.shape[1] * x.dtype.itemsize, block_bytes, local_threads())
    segment_bounds = np.concatenate([[0], np.cumsum(per_block)]).astype(np.int64)
    row_bounds = np.concatenate([[0], np.cumsum(lengths)])[segment_bounds]
    buffers = None
    if files is not None and operation != "mean" and len(per_block):
        buffers = _BlockBuffers(int(np.diff(row_bounds).max()), x.shape[1], x.dtype, len(per_block))
    blocks = []
    for b in range(len(per_block)):
        block_lengths = lengths[segment_bounds[b]:segment_bounds[b + 1]]
        lo, hi = int(row_bounds[b]), int(row_bounds[b + 1])
        if buffers is not None:
            task = dask.delayed(_reduce_file_block, pure=True)(
                files, buffers, lo, hi, block_lengths, operation, block_bytes)
        else:
            # A mean from the chunk files needs one chunk's buffer, reused along the block.
            rows = partial(_read_rows, x, lo, hi) if files is None else partial(files.chunks, lo, hi)
            task = dask.delayed(_reduce_rows, pure=True)(
                rows, block_lengths, operation, block_bytes, x.shape[1])
        blocks.append(da.from_delayed(task, shape=(len(block_lengths), x.shape[1]), dtype=np.float64,
                                      meta=np.empty((0, 0))))
    if not blocks:
        return da.empty((0, x.shape[1]), dtype=np.float64)
    return da.concatenate(blocks, axis=0)


def _read_rows(x, lo, hi):
    """Rows ``lo:hi`` of ``x``, one chunk's piece at a time (a synchronous compute of each)."""
    for piece in x[lo:hi].to_delayed().ravel():
        yield np.asarray(piece.compute(scheduler="sync"))


def _reduce_file_block(files, buffers, lo, hi, lengths, operation, block_bytes):
    """Reduce rows ``lo:hi`` of a node's chunk files, decoded into a buffer of ``buffers``."""
    buffer = buffers.take()
    try:
        block = files.read(lo, hi, out=buffer[:hi - lo])
        return _reduce(block, lengths, operation, min(block_bytes, BLOCK_BYTES))
    finally:
        buffers.give(buffer)


class _BlockBuffers:
    """Buffers for the blocks of one graph, handed from a finished block's task to the next.

    A fresh 256 MiB block cost more system time to fault in than its read (0.3-0.8 s per GB on
    this project's virtual machines); with this, a compute allocates one per worker. The
    buffers are dropped when the graph's last block is done, so a lazy result kept after its
    compute holds none (unless only some of its blocks were computed).
    """

    def __init__(self, rows, width, dtype, n_blocks):
        self.shape, self.dtype = (rows, width), dtype
        self.n_blocks = self.remaining = n_blocks
        self._spare, self._lock = [], threading.Lock()

    def __getstate__(self):
        # shipped to other processes (a distributed cluster) without buffers or lock
        return {"shape": self.shape, "dtype": self.dtype, "n_blocks": self.n_blocks}

    def __setstate__(self, state):
        self.__init__(*state["shape"], state["dtype"], state["n_blocks"])

    def take(self):
        with self._lock:
            if self._spare:
                return self._spare.pop()
        return np.empty(self.shape, dtype=self.dtype)

    def give(self, buffer):
        with self._lock:
            self.remaining -= 1
            if self.remaining:
                self._spare.append(buffer)
            else:
                self._spare.clear()
                self.remaining = self.n_blocks


def _reduce_rows(rows, lengths, operation, block_bytes, width):
    pieces = rows()
    if operation == "mean":
        return _piece_means(pieces, lengths, width)
    pieces = list(pieces)
    block = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return _reduce(block, lengths, operation, min(block_bytes, BLOCK_BYTES))


# float32 rows are summed in float64 after a copy of up to this many bytes of them into a float64
# buffer that stays in cache: 25 % less CPU time than a float64 sum of the float32 rows, which
# casts them in small pieces inside the reduction (bit for bit the same sums).
STAGING_BYTES = 2 * 2**20


def _piece_means(pieces, lengths, width):
    """Means of consecutive segments over the rows of ``pieces`` (consecutive row blocks).

    Pieces are used one at a time (each may be overwritten by the next). Each segment's rows are
    summed in float64 where they lie; a part whose sum is NaN is summed again without its NaN
    cells, and its segment then counts present cells per feature, so the common case reads its
    cells once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.zeros((len(lengths), width))
    staging = np.empty((max(1, STAGING_BYTES // (8 * max(width, 1))), width))
    counts = {}  # segment -> cells present per feature, for segments holding a NaN
    position = 0
    for piece in pieces:
        end = position + len(piece)
        for i in range(np.searchsorted(ends, position, side="right"), np.searchsorted(starts, end)):
            part = piece[max(starts[i] - position, 0):min(ends[i], end) - position]
            total = _sum64(part, staging)
            if np.isnan(total).any():
                present = ~np.isnan(part)
                total = np.where(present, part, 0).sum(axis=0, dtype=np.float64)
                seen = max(position, starts[i]) - starts[i]  # cells of the segment before this part
                counts[i] = counts.get(i, seen) + present.sum(axis=0)
            elif i in counts:
                counts[i] += len(part)
            out[i] += total
        position = end
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, count in counts.items():
            out[i] /= count
        plain = np.ones(len(lengths), dtype=bool)
        plain[list(counts)] = False
        out[plain] /= lengths[plain, None]
    return out


def _sum64(rows, staging):
    """Column sums of ``rows`` in float64, through the float64 buffer ``staging``."""
    if rows.dtype == np.float64 or not len(rows):
        return rows.sum(axis=0, dtype=np.float64)
    total = None
    for lo in range(0, len(rows), len(staging)):
        block = staging[:min(len(staging), len(rows) - lo)]
        np.copyto(block, rows[lo:lo + len(block)])
        if total is None:
            total = block.sum(axis=0)
        else:
            total += block.sum(axis=0)
    return total


def _medians(block, starts, lengths, has_nan, out):
    for i in np.flatnonzero(has_nan | (lengths == 0)):
        cells = block[starts[i]:starts[i] + lengths[i]].astype(np.float64)
        # Features without a value give NaN, as in pandas; left out of nanmedian, which would
        # warn about them (silencing warnings is not thread-safe: blocks run in threads).
        present = ~np.isnan(cells).all(axis=0)
        out[i] = np.nan
        out[i, present] = np.nanmedian(cells[:, present], axis=0)
    clean = ~has_nan & (lengths > 0)
    for n in np.unique(lengths[clean]):
        n = int(n)
        segments = np.flatnonzero(clean & (lengths == n))
        # The wells of this size stacked as a (cell, well, feature) copy.
        rows = starts[segments][None, :] + np.arange(n)[:, None]
        median = _network_median if n <= NETWORK_MAX_CELLS else _sort_median
        out[segments] = median(block[rows])


def _middle(low, high):
    """(low + high) / 2 in float64, as pandas averages the two middle values."""
    return (low.astype(np.float64) + high) / 2


def _sort_median(stacked):
    """Median along axis 0 of a NaN-free (cell, well, feature) array."""
    n = len(stacked)
    # Each feature's cells made contiguous first: sorting along a strided axis is much slower.
    columns = np.ascontiguousarray(np.moveaxis(stacked, 0, -1))
    columns.sort(axis=-1)
    return _middle(columns[..., (n - 1) // 2], columns[..., n // 2])


def _network_median(stacked):
    """Median along axis 0 of a NaN-free (cell, ...) array, by the pruned comparator network.

    Overwrites ``stacked`` (its rows are the network's wires).
    """
    n = len(stacked)
    wires = list(stacked)
    spare = np.empty_like(wires[0])
    for i, j in _median_network(n):
        low = np.minimum(wires[i], wires[j], out=spare)
        np.maximum(wires[i], wires[j], out=wires[j])
        spare, wires[i] = wires[i], low
    return _middle(wires[(n - 1) // 2], wires[n // 2])


@lru_cache(maxsize=None)
def _median_network(n):
    """Comparators ``(i, j)`` (i < j, swap when ``wire[i] > wire[j]``) leaving the middle wires sorted.

    Knuth's merge exchange (TAOCP vol. 3, 5.2.2, algorithm M) sorts any ``n``; walking it
    backwards keeps only the comparators that can still change a middle wire.
    """
    pairs = []
    if n > 1:
        t = (n - 1).bit_length()
        p = 1 << (t - 1)
        while p > 0:
            q, r, d = 1 << (t - 1), 0, p
            while True:
                pairs.extend((i, i + d) for i in range(n - d) if i & p == r)
                if q == p:
                    break
                d, q, r = q - p, q // 2, p
            p //= 2
    needed, kept = {(n - 1) // 2, n // 2}, []
    for i, j in reversed(pairs):
        if i in needed or j in needed:
            kept.append((i, j))
            needed.update((i, j))
    return tuple(kept[::-1])
