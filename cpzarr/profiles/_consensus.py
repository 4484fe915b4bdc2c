"""consensus: replicate profiles → one profile per treatment, by median or MODZ."""

import warnings

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cpzarr.errors import InputError
from cpzarr.profiles._samples import (
    as_dask, check_profiles, constant_coords, group_codes, like_input, record_step,
)
from cpzarr.profiles._segments import by_length, segment_reduce, segments_in_input_order

OPERATIONS = ("median", "mean", "modz")
# Replicate rows per block. A block's rows are copied out of each input chunk as it is read and
# wait for the rest of the block, so a few blocks of them are held at once: 8 MB (a few hundred
# wells) instead of 32 MB cut the peak of a median consensus of LINCS-scale profiles read from a
# store from 340 MB to 265 MB of traced memory (about 750 MB to 590 MB of RSS).
BLOCK_BYTES = 8 * 2**20


def consensus(
    profiles,
    replicate_columns=("compound", "dose"),
    operation="median",
    method="spearman",
    min_weight=0.01,
    precision=4,
    block_bytes=BLOCK_BYTES,
    sort=True,
):
    """Collapse replicate profiles into one consensus profile per treatment.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    replicate_columns : str or sequence of str, default ("compound", "dose")
        Coordinates that identify a treatment; missing values form their own group.
    operation : {"median", "mean", "modz"}, default "median"
        ``modz`` weights each replicate by its mean correlation with the others (negative
        correlations count as 0, weights clipped below at ``min_weight``, normalized to sum 1 and
        rounded to ``precision`` decimals), as Pycytominer; a single replicate is returned as is.
        A feature that is NaN in every replicate of a treatment is NaN in its consensus, as with
        ``median`` (Pycytominer's pandas sum gives 0 there).
    method : {"spearman", "pearson"}, default "spearman"
        Correlation between replicates for ``modz``.
    min_weight : float, default 0.01
    precision : int, default 4
    block_bytes : int
        Target size of a block of replicate groups (memory knob; results do not depend on it).
    sort : bool, default True
        Order treatments by the replicate columns (as Pycytominer). False keeps the order in which
        treatments first appear, which lets a large result stream to disk block by block
        (sorting a lazy result is a shuffle that holds all of it).

    Returns
    -------
    profiles : DataArray (sample, feature)
        float64, one sample per treatment, sorted by the replicate columns; coordinates are the
        replicate columns plus every coordinate constant within each treatment (e.g. ``moa``) and
        ``replicate_count``.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=4, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> consensus(p, operation="modz").sizes["sample"]  # 8 compounds + DMSO
    9
    """
    if operation not in OPERATIONS:
        raise InputError(f"consensus operation {operation!r} is not one of {OPERATIONS}")
    if method not in ("spearman", "pearson"):
        raise InputError(f"consensus method {method!r} is not 'spearman' or 'pearson'")
    p = check_profiles(profiles)
    columns = [replicate_columns] if isinstance(replicate_columns, str) else list(replicate_columns)
    codes, keys = group_codes(p, columns)
    order, lengths, to_key_order = segments_in_input_order(codes)
    x = as_dask(p)
    d = x.shape[1]

    def reduce(block, lengths):
        return _reduce(block, lengths, operation, method, min_weight, precision)

    columnwise = operation != "modz"
    # With sort, groups larger than a block (the DMSO wells of every plate) are reduced first, on
    # their own: in one graph with the others, their rows from every chunk waited for the last
    # chunk while the other groups' rows and results piled up (a sorted result holds all of them
    # anyway). An input read from a store is then read twice.
    large = (lengths * d * x.dtype.itemsize > block_bytes) & sort
    in_large = np.repeat(large, lengths)
    done = np.empty((0, d))
    if large.any():
        done = segment_reduce(x, lengths[large], reduce, d, order=order[in_large], block_bytes=block_bytes,
                              columnwise=columnwise).compute()
    data = segment_reduce(x, lengths[~large], reduce, d, order=order[~in_large], block_bytes=block_bytes,
                          columnwise=columnwise)
    if sort:
        data, lengths = _in_key_order(data, to_key_order, block_bytes, large, done), lengths[to_key_order]
        order = np.argsort(codes, kind="stable")
    else:
        # Renumber groups by appearance so that keys and constant coordinates follow the data.
        keys = keys.iloc[np.argsort(to_key_order)].reset_index(drop=True)
        codes = to_key_order[codes]
    coords = {c: ("sample", keys[c].to_numpy()) for c in columns}
    coords.update(constant_coords(p, codes, order, lengths, exclude=columns))
    coords["replicate_count"] = ("sample", lengths.astype(np.int64))
    coords["feature"] = p["feature"]
    out = xr.DataArray(data, dims=("sample", "feature"), coords=coords, name="profiles", attrs=dict(p.attrs))
    record_step(out, "consensus", {
        "replicate_columns": columns, "operation": operation, "method": method,
        "min_weight": min_weight, "precision": precision, "sort": sort,
    })
    return like_input(profiles, out)


def _in_key_order(data, to_key_order, chunk_bytes, large, done):
    """``data[to_key_order]``, each output chunk gathering its rows from the blocks holding them.

    dask's take first splits every block into one piece per output chunk (thousands of small
    tasks and a third copy of the result): on a first median consensus at LINCS scale that
    was about 20,000 more page faults, 0.1-0.4 s of system time. ``large`` masks the groups
    (in appearance order) whose rows are ``done`` (computed); ``data`` holds the others.
    """
    n_groups, d = len(to_key_order), data.shape[1]
    position = np.empty(n_groups, dtype=np.int64)
    position[~large] = np.arange(n_groups - large.sum())
    position[large] = np.arange(large.sum())
    bounds = np.cumsum((0,) + data.chunks[0])
    step = max(1, int(chunk_bytes // max(d * data.dtype.itemsize, 1)))
    name = "consensus-sorted-" + tokenize(data, to_key_order, step, large, done)
    graph, chunks = {}, []
    for j, lo in enumerate(range(0, n_groups, step)):
        groups = to_key_order[lo:lo + step]
        computed = np.flatnonzero(large[groups])
        rest = np.flatnonzero(~large[groups])
        source = position[groups[rest]]
        blocks = np.searchsorted(bounds, source, side="right") - 1
        needed = np.unique(blocks)
        graph[(name, j, 0)] = (
            _gather, [(data.name, int(b), 0) for b in needed],
            [rest[blocks == b] for b in needed], [source[blocks == b] - bounds[b] for b in needed],
            computed, done[position[groups[computed]]], (len(groups), d), data.dtype,
        )
        chunks.append(len(groups))
    if not chunks:
        return data
    layer = HighLevelGraph.from_collections(name, graph, dependencies=[data])
    return da.Array(layer, name, chunks=(tuple(chunks), (d,)), dtype=data.dtype,
                    meta=np.empty((0, 0), data.dtype))


def _gather(blocks, where, rows, computed, values, shape, dtype):
    out = np.empty(shape, dtype=dtype)
    for block, w, r in zip(blocks, where, rows):
        out[w] = block[r]
    out[computed] = values
    return out


def _reduce(block, lengths, operation, method, min_weight, precision):
    block = np.asarray(block)
    # The minimum is NaN exactly when a value is (np.isnan would allocate a block-sized mask).
    has_nan = bool(block.size) and bool(np.isnan(block.min()))
    if operation == "median" and not has_nan:
        return _median(block, lengths)
    out = np.empty((len(lengths), block.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features give NaN, as pandas
        # About 8 MB of float64 per temporary stack.
        for length, segments, rows in by_length(lengths, max_rows=2**20 // max(block.shape[1], 1)):
            large = len(segments) == 1 and length > _LARGE and operation == "modz" and not has_nan
            stack = None if large else block[rows]  # (segment, replicate, feature), in the input dtype
            if operation == "median":
                out[segments] = np.nanmedian(stack.astype(np.float64), axis=1)
            elif operation == "mean":
                out[segments] = (np.nanmean if has_nan else np.mean)(stack, axis=1, dtype=np.float64)
            elif length == 1:
                out[segments] = stack[:, 0].astype(np.float64)
            elif has_nan:
                for i, segment in enumerate(segments):
                    rows64 = stack[i].astype(np.float64)
                    weights = modz_weights(rows64, method, min_weight, precision)
                    # A feature missing in every replicate stays missing (pandas' sum, and so
                    # Pycytominer, would give 0, a value no replicate had).
                    out[segment] = np.where(
                        np.isnan(rows64).all(axis=0), np.nan, np.nansum(rows64 * weights[:, None], axis=0)
                    )
            elif large:
                # One large group (the DMSO wells): its rows are contiguous, so a view, and float64
                # temporaries exist one slice of features at a time.
                group = block[rows[0, 0]:rows[0, 0] + length]
                weights = _large_weights(group, method, min_weight, precision)
                for c in _feature_slices(length, block.shape[1]):
                    out[segments[0], c] = weights @ group[:, c].astype(np.float64)
            else:
                # Ranks (and so weights) are the same from float32 values as from their float64 cast.
                weights = _stacked_weights(stack, method, min_weight, precision)
                out[segments] = np.matmul(weights[:, None, :], stack.astype(np.float64))[:, 0]
    return out


def _ranks(values):
    """Average ranks (1-based, float64) along the last axis, as ``rankdata``; no NaN.

    One unstable sort per row (numpy's quicksort, faster than the stable sort of ``rankdata``);
    then only the runs of tied values (rare, but float32 rows of thousands of features hold
    some) are given the mean of their positions.
    """
    flat = values.reshape(-1, values.shape[-1])
    n = flat.shape[1]
    order = np.argsort(flat, axis=1)
    ordered = np.take_along_axis(flat, order, axis=1)
    ranked = np.empty(flat.shape)
    ranked[:] = np.arange(1.0, n + 1)
    # Flat positions equal to their left neighbour; the first of a row never is, so no run of
    # ties crosses rows.
    tied = np.flatnonzero(ordered[:, 1:] == ordered[:, :-1])
    if len(tied):
        tied += tied // (n - 1) + 1  # from (row, n - 1) comparisons to (row, n) positions
        breaks = np.flatnonzero(np.diff(tied) != 1) + 1
        first = tied[np.concatenate([[0], breaks])] - 1
        last = tied[np.concatenate([breaks - 1, [len(tied) - 1]])]
        lengths = last - first + 1
        mean = (first % n + last % n) / 2 + 1
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ranked.flat[np.repeat(first, lengths) + offsets] = np.repeat(mean, lengths)
    ranks = np.empty(flat.shape)
    np.put_along_axis(ranks, order, ranked, axis=1)
    return ranks.reshape(values.shape)


# Above this many replicates a selection (np.partition) beats a sorting network.
_NETWORK_MAX = 8


def _median(block, lengths):
    """Median of each run of rows (no NaN) in the block's dtype, as float64.

    Medians are order statistics, so they are selected in the input dtype (float32 profiles are
    not copied to float64) and only the mean of the two middle values of an even run is taken in
    float64, which gives the same numbers as the median of the float64 cast.
    """
    out = np.empty((len(lengths), block.shape[1]))
    done = np.zeros(len(lengths), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    # Runs of consecutive groups of the same small size (most replicate groups): their i-th
    # replicates are every length-th row, a strided view, so the networks read the block in place.
    edges = np.flatnonzero(np.diff(lengths)) + 1
    for first, stop in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(lengths)]])):
        length = int(lengths[first]) if len(lengths) else 0
        if 2 <= length <= 5 and stop - first >= 8:
            row = starts[first]
            end = row + length * (stop - first)
            out[first:stop] = _small_median([block[row + i:end:length] for i in range(length)])
            done[first:stop] = True
    for length, segments, rows in by_length(lengths, max_rows=2**22 // max(block.shape[1], 1)):
        keep = ~done[segments]
        segments, rows = segments[keep], rows[keep]
        if not len(segments):
            continue
        if length == 0:
            out[segments] = np.nan
        elif length <= 5:
            out[segments] = _small_median([block[rows[:, i]] for i in range(length)])
        elif length <= _NETWORK_MAX:
            # Odd-even transposition sort across the replicate axis: elementwise min/max over whole
            # (segment, feature) planes, no per-value Python or per-lane selection overhead.
            stack = block[rows]
            low = np.empty_like(stack[:, 0])
            for step in range(length):
                for i in range(step % 2, length - 1, 2):
                    np.minimum(stack[:, i], stack[:, i + 1], out=low)
                    np.maximum(stack[:, i], stack[:, i + 1], out=stack[:, i + 1])
                    stack[:, i] = low
            out[segments] = _middle(stack[:, (length - 1) // 2], stack[:, length // 2], length)
        else:
            for segment, first in zip(segments, rows[:, 0]):
                # One contiguous lane per feature: partition selects along the last axis fastest.
                lanes = block[first:first + length].T.copy()
                k = (length - 1) // 2
                lanes.partition(k, axis=1)
                upper = lanes[:, k] if length % 2 else lanes[:, k + 1:].min(axis=1)
                out[segment] = _middle(lanes[:, k], upper, length)
    return out


def _small_median(planes):
    """Median of 1 to 5 equal-shape arrays by the fewest elementwise min/max (selection networks)."""
    lo, hi = np.minimum, np.maximum
    if len(planes) == 1:
        return planes[0]
    if len(planes) == 2:
        return _middle(*planes, 2)
    if len(planes) == 3:
        a, b, c = planes
        return hi(lo(a, b), lo(hi(a, b), c))
    a, b = lo(planes[0], planes[1]), hi(planes[0], planes[1])
    c, d = lo(planes[2], planes[3]), hi(planes[2], planes[3])
    # The smaller of the two pair minima and the larger of the two pair maxima are below
    # (above) at least two others, so they are never the (upper) median of 4 or the median of 5.
    low, high = hi(a, c), lo(b, d)
    if len(planes) == 4:
        return _middle(low, high, 4)
    e = planes[4]
    return hi(lo(low, high), lo(hi(low, high), e))


def _middle(lower, upper, length):
    if length % 2:
        return lower
    return (lower.astype(np.float64) + upper.astype(np.float64)) / 2


# Replicates above which one group's MODZ weights are computed a slice of features at a time.
_LARGE = 64


def _feature_slices(rows, d, budget=16 * 2**20):
    step = max(1, int(budget // max(8 * rows, 1)))
    return [slice(j, min(j + step, d)) for j in range(0, d, step)]


def _large_weights(rows, method, min_weight, precision, panel=256):
    """MODZ weights of one large group, its Gram matrix computed a block of panels at a time.

    Only each replicate's sum of (clipped) correlations is needed, so the n × n matrix is never
    held (85 MB at 3,264 DMSO wells): the lower-triangle blocks of panel × panel replicates
    are added to the sums of both panels. Twice a centred average rank is an integer below the
    number of features, so ranks are held as int16 (float32 beyond 32,767 features) and their
    float64 cross-products are exact whatever the summation order; the factor 4 cancels in the
    correlations.
    """
    n, d = rows.shape
    if method == "spearman":
        values = np.empty(rows.shape, dtype=np.int16 if d < 2**15 else np.float32)
        for start in range(0, n, 64):  # _ranks' float64 and int64 temporaries: about 12 MB
            values[start:start + 64] = 2 * _ranks(rows[start:start + 64]) - (d + 1)
        mean = np.zeros(n)
    else:
        values, mean = rows, rows.mean(axis=1, dtype=np.float64)

    def centred(start):
        return np.subtract(values[start:start + panel], mean[start:start + panel, None], dtype=np.float64)

    starts = range(0, n, panel)
    norms = np.concatenate([np.sqrt(np.einsum("ij,ij->i", p, p)) for p in map(centred, starts)])
    sums, missing = np.zeros(n), np.zeros(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in starts:
            left = centred(i)
            rows_i = slice(i, i + len(left))
            for j in range(0, i + panel, panel):
                right = left if j == i else centred(j)
                rows_j = slice(j, j + len(right))
                corr = left @ right.T
                corr /= norms[rows_i, None]
                corr /= norms[None, rows_j]
                if j == i:
                    np.fill_diagonal(corr, np.nan)
                nan = _clip_correlations(corr)
                sums[rows_i] += corr.sum(axis=1)
                missing[rows_i] += nan.sum(axis=1)
                if j != i:
                    sums[rows_j] += corr.sum(axis=0)
                    missing[rows_j] += nan.sum(axis=0)
    return _weights_from_sums(sums[None], missing[None], n, min_weight, precision)[0]


def _stacked_weights(stack, method, min_weight, precision):
    """MODZ weights of many equal-size replicate groups at once (no NaN)."""
    values = _ranks(stack) if method == "spearman" else stack.astype(np.float64)
    centred = values - values.mean(axis=2, keepdims=True)
    return _weights_from_gram(np.matmul(centred, centred.transpose(0, 2, 1)), min_weight, precision)


def _weights_from_gram(gram, min_weight, precision):
    """MODZ weights from each group's replicate cross-products (group, replicate, replicate)."""
    norms = np.sqrt(np.diagonal(gram, axis1=1, axis2=2)).copy()
    corr = gram  # in place: a large group's matrix is hundreds of MB
    with np.errstate(invalid="ignore", divide="ignore"):
        corr /= norms[:, :, None]
        corr /= norms[:, None, :]
    n = gram.shape[1]
    corr[:, np.arange(n), np.arange(n)] = np.nan
    missing = _clip_correlations(corr)
    return _weights_from_sums(corr.sum(axis=2), missing.sum(axis=2), n, min_weight, precision)


def _clip_correlations(corr):
    """Correlations clipped at 0 in place, NaN then set to 0; returns where NaN was.

    With the NaN counted apart, sums of the result give np.nanmean's arithmetic (NaN as 0,
    divided by the count of the others) without its copy.
    """
    np.maximum(corr, 0.0, out=corr)  # NaN stays NaN
    missing = np.isnan(corr)
    corr[missing] = 0.0
    return missing


def _weights_from_sums(sums, missing, n, min_weight, precision):
    """MODZ weights from each replicate's sum of clipped correlations with the others and its
    count of NaN correlations (the diagonal included), per group (group, replicate)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = sums / (n - missing)
    raw = np.where(np.isnan(raw), np.nan, np.maximum(raw, min_weight))
    total = np.nansum(raw, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = np.where(total == 0, 1.0 / n, raw / total)
    return np.nan_to_num(np.round(weights, precision), nan=0.0)


def modz_weights(rows, method="spearman", min_weight=0.01, precision=4):
    """MODZ weights of replicate profiles (rows), as Pycytominer computes them.

    Parameters
    ----------
    rows : ndarray (replicate, feature)
    method : {"spearman", "pearson"}
    min_weight : float
    precision : int

    Returns
    -------
    ndarray (replicate,)

    Examples
    --------
    >>> modz_weights(np.array([[1.0, 2, 3], [1, 2, 4], [3, 2, 1]])).tolist()
    [0.495, 0.495, 0.0099]
    """
    if np.isnan(rows).any():
        # Pairwise-complete correlations, as pandas computes them, only where NaN occurs.
        corr = pd.DataFrame(rows.T).corr(method=method).to_numpy()
    else:
        from scipy.stats import rankdata  # scipy.stats alone is about 45 MB of a process

        values = rankdata(rows, axis=1) if method == "spearman" else rows
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(values)
    corr = np.array(corr, dtype=np.float64)
    np.fill_diagonal(corr, np.nan)
    corr = np.where(np.isnan(corr), np.nan, np.maximum(corr, 0.0))
    raw = np.nanmean(corr, axis=1)
    raw = np.where(np.isnan(raw), np.nan, np.maximum(raw, min_weight))
    total = np.nansum(raw)
    weights = np.full(len(raw), 1.0 / len(raw)) if total == 0 else raw / total
    return np.round(weights, precision)
