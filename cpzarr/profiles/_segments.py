"""Reductions over contiguous runs of samples (a group's replicates, a well's cells) on dask.

Rows are brought together by group (a gather when they are scattered), then the sample axis is
re-chunked at segment boundaries so that every chunk holds whole segments; each chunk is reduced
on its own. Memory is bounded by one chunk: ``max(block_bytes, the largest segment)``.
"""

from functools import partial

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

BLOCK_BYTES = 32 * 2**20


def segments_of(codes):
    """Order that sorts samples by group code (stable) and the length of each group."""
    order = np.argsort(codes, kind="stable")
    lengths = np.bincount(codes, minlength=int(codes.max()) + 1 if len(codes) else 0)
    return order, lengths


def segments_in_input_order(codes):
    """Like :func:`segments_of`, with groups ordered by first appearance in the input.

    Output blocks then follow the input chunks, so dask can release each input chunk soon after
    reading it instead of holding the whole array for a shuffle. Returns ``(order, lengths,
    to_key_order)``; ``result[to_key_order]`` puts the per-group results back in code order.
    """
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    first = np.full(n_groups, len(codes))
    np.minimum.at(first, codes, np.arange(len(codes)))
    appearance = np.argsort(first, kind="stable")
    rank = np.empty(n_groups, dtype=np.int64)
    rank[appearance] = np.arange(n_groups)
    order, lengths = segments_of(rank[codes])
    return order, lengths, rank


def pack(lengths, row_bytes, block_bytes=BLOCK_BYTES):
    """Split consecutive segments into blocks of about ``block_bytes``; returns segments per block."""
    target = max(1, int(block_bytes // max(row_bytes, 1)))
    per_block, rows, count = [], 0, 0
    for length in lengths:
        if count and rows + length > target:
            per_block.append(count)
            rows, count = 0, 0
        rows += int(length)
        count += 1
    if count:
        per_block.append(count)
    return per_block


def pack_evenly(lengths, row_bytes, block_bytes=BLOCK_BYTES, workers=1):
    """Like :func:`pack`, with blocks shrunk to equal shares of the rows for ``workers``.

    The blocks are about as many as ``pack`` would need, rounded up to a multiple of
    ``workers``, so that workers given one block at a time finish together (``pack`` leaves a
    short last block: on 33 chunks in blocks of 10, one of two workers reads 20, the other 13).
    """
    rows = int(np.sum(lengths))
    n_blocks = -(-rows * max(row_bytes, 1) // max(int(block_bytes), 1))
    n_blocks = -(-n_blocks // workers) * workers
    return pack(lengths, row_bytes, min(block_bytes, -(-rows // max(n_blocks, 1)) * row_bytes))


def segment_reduce(x, lengths, func, width, order=None, dtype=np.float64, block_bytes=BLOCK_BYTES,
                   columnwise=False):
    """Apply ``func(block, lengths=...) -> (n_segments_in_block, width)`` to whole segments.

    Parameters
    ----------
    x : dask.array.Array (sample, feature)
        One chunk along ``feature``.
    lengths : ndarray of int
        Length of each segment, in the row order after ``order`` (segments of length 0 are kept
        and get a row from ``func``).
    func : callable
        ``func(block, lengths=...)`` reduces a block holding whole segments.
    width : int
        Columns of the output.
    order : ndarray of int, optional
        Row order that makes the segments contiguous.
    columnwise : bool, default False
        ``func`` treats every feature on its own (a median, a mean): blocks larger than
        ``block_bytes`` (one large segment) are also split along ``feature``, so that they use
        bounded memory and several workers; ``width`` must then be ``x.shape[1]``.

    Returns
    -------
    dask.array.Array (segment, width)
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n_rows = int(lengths.sum())
    order = np.arange(n_rows) if order is None else np.asarray(order)
    per_block = pack(lengths, x.shape[1] * x.dtype.itemsize, block_bytes)
    bounds = np.concatenate([[0], np.cumsum(per_block)])
    row_bounds = np.concatenate([[0], np.cumsum(lengths)])[bounds]
    if not per_block:
        return da.empty((0, width), dtype=dtype)
    if x.numblocks[1] != 1:
        x = x.rechunk({1: -1})
    chunk_starts = np.concatenate([[0], np.cumsum(x.chunks[0])])
    name = "segment-reduce-" + tokenize(x, lengths, order, func, width, dtype, block_bytes, columnwise)
    graph = {}
    for i in range(len(per_block)):
        rows = order[row_bounds[i]:row_bounds[i + 1]]
        # One small task per input chunk copies out the rows this block needs from it, so that
        # dask can release the chunk once its rows are out; the block's task then places the
        # pieces (one more copy, no concatenation of a take) and reduces the block.
        chunk_of = np.searchsorted(chunk_starts, rows, side="right") - 1
        pieces, positions = [], []
        for k, c in enumerate(np.unique(chunk_of)):
            where = np.flatnonzero(chunk_of == c)
            local = rows[where] - chunk_starts[c]
            if len(local) and local[-1] - local[0] == len(local) - 1 and np.all(np.diff(local) == 1):
                local = slice(int(local[0]), int(local[-1]) + 1)
            graph[(name + "-rows", i, k)] = (_rows_of, (x.name, int(c), 0), local)
            pieces.append((name + "-rows", i, k))
            positions.append(where)
        reduce = partial(func, lengths=lengths[bounds[i]:bounds[i + 1]])
        d = x.shape[1]
        step = d
        if columnwise:
            step = max(1, int(block_bytes // max(len(rows) * x.dtype.itemsize, 1)))
        if step >= d:
            graph[(name, i, 0)] = (_place_and_reduce, pieces, positions, len(rows), slice(0, d), reduce, dtype)
        else:
            # A block over the budget (one large segment) is reduced a slice of features per
            # task: bounded memory, and the workers share it.
            parts = []
            for j, start in enumerate(range(0, d, step)):
                columns = slice(start, min(start + step, d))
                graph[(name + "-columns", i, j)] = (
                    _place_and_reduce, pieces, positions, len(rows), columns, reduce, dtype)
                parts.append((name + "-columns", i, j))
            graph[(name, i, 0)] = (np.concatenate, parts, 1)
    layer = HighLevelGraph.from_collections(name, graph, dependencies=[x])
    return da.Array(layer, name, chunks=(tuple(per_block), (width,)), dtype=dtype,
                    meta=np.empty((0, 0), dtype))


def _rows_of(chunk, rows):
    piece = np.asarray(chunk)[rows]
    # A slice is a view: copy it, so the chunk itself is not kept alive by the piece.
    return piece.copy() if isinstance(rows, slice) else piece


def _place_and_reduce(pieces, positions, n_rows, columns, func, dtype):
    """Place a block's rows (the given features) from their pieces and reduce it."""
    piece_columns = [piece[:, columns] for piece in pieces]
    if len(pieces) == 1 and len(positions[0]) == n_rows and np.all(np.diff(positions[0]) == 1):
        block = piece_columns[0]
    else:
        block = np.empty((n_rows, columns.stop - columns.start), dtype=pieces[0].dtype if pieces else np.float64)
        for piece, where in zip(piece_columns, positions):
            block[where] = piece
    return np.asarray(func(block), dtype=dtype)


def by_length(lengths, max_rows=None):
    """Segments grouped by length: ``(length, segment indices, row indices (n_segments, length))``.

    Equal-length segments are reduced together as one ``(segment, row, feature)`` array, which
    turns a Python loop over thousands of replicate groups into a few vectorized calls;
    ``max_rows`` caps the rows of one such array (memory of the temporaries).
    """
    lengths = np.asarray(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    for length in np.unique(lengths):
        segments = np.flatnonzero(lengths == length)
        step = len(segments) if max_rows is None else max(1, int(max_rows) // max(int(length), 1))
        for i in range(0, len(segments), step):
            batch = segments[i:i + step]
            yield int(length), batch, starts[batch][:, None] + np.arange(length)


def sum_over_row_blocks(func, *arrays):
    """``Σ func(*blocks)`` over the row blocks of aligned dask arrays, one block at a time.

    Used for d × d cross-products: a dask tree reduction would keep several d × d partial sums
    alive at once (328 MB each at 6,400 features); this keeps one accumulator and one partial.
    """
    first = arrays[0]
    arrays = [a.rechunk({0: first.chunks[0], 1: -1}) for a in arrays]
    total = None
    for i in range(first.numblocks[0]):
        blocks = dask.compute(*[a.blocks[i] for a in arrays])
        part = func(*blocks)
        if total is None:
            total = part
        else:
            total += part
    return total
