"""Reductions over contiguous runs of samples (a group's replicates, a well's cells) on dask.

Rows are brought together by group (a gather when they are scattered), then the sample axis is
re-chunked at segment boundaries so that every chunk holds whole segments; each chunk is reduced
on its own. Memory is bounded by one chunk: ``max(block_bytes, the largest segment)``.
"""

from functools import partial

import dask
import dask.array as da
import numpy as np

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
    meta = np.empty((0, 0), dtype)
    blocks = []
    for i in range(len(per_block)):
        block_lengths = lengths[bounds[i]:bounds[i + 1]]
        rows = order[row_bounds[i]:row_bounds[i + 1]]
        # Each output block gathers only its own rows, so it depends on the few input chunks
        # holding them and dask can release those chunks once it is done (a global take would
        # make every output wait on every input).
        contiguous = len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))
        width_of_piece = x.shape[1]
        if columnwise:
            width_of_piece = max(1, int(block_bytes // max(len(rows) * x.dtype.itemsize, 1)))
        pieces = []
        for start in range(0, x.shape[1], width_of_piece):
            # A block too large for the budget is gathered one slice of features at a time.
            part = x[:, start:start + width_of_piece] if width_of_piece < x.shape[1] else x
            part = part[int(rows[0]):int(rows[0]) + len(rows)] if contiguous else part[rows]
            part = part.rechunk({0: -1, 1: -1})
            pieces.append(part.map_blocks(
                partial(func, lengths=block_lengths), dtype=dtype, meta=meta,
                chunks=((len(block_lengths),), (part.shape[1] if columnwise else width,)),
            ))
        blocks.append(pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=1))
    if not blocks:
        return da.empty((0, width), dtype=dtype)
    return da.concatenate(blocks, axis=0)


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
