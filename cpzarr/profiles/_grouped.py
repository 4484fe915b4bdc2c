"""Group-local transforms on dask: every group's fitting rows and its rows in one task.

Two layouts keep a fit and its transform in one task without gathering a group's rows into
the client: when every group is a run of consecutive samples (a plate's wells), row chunks are
moved back to group boundaries (while a group is at most 64 MB); otherwise the array is cut into blocks of whole columns (every
sample, a few features), which holds any grouping because features are treated one by one.
"""

import warnings

import dask.array as da
import numpy as np

from cpzarr.errors import InputError

#: Largest group (float64 bytes) the row layout takes; larger groups go column by column.
RUN_BLOCK_BYTES = 64 * 2**20
#: Bytes of one column block (all samples × some features) in the columnwise layout.
COLUMN_BLOCK_BYTES = 16 * 2**20


def group_runs(codes):
    """Start of each run of equal codes; runs == groups when every group is contiguous."""
    return np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])


def map_groups(x, codes, mask, func, dtype, extra=None, block_bytes=COLUMN_BLOCK_BYTES):
    """``func(block, codes, mask[, extra]) -> block`` where each call sees whole groups.

    Parameters
    ----------
    x : dask.array.Array (sample, feature)
    codes : ndarray of int
        Group of each sample.
    mask : ndarray of bool
        Fitting samples.
    func : callable
        Transforms a (rows, features) block given the rows' codes and fitting mask; it must
        treat features independently (the columnwise layout hands it some features only).
    dtype : numpy dtype of the result
    extra : ndarray (sample,), optional
        A per-sample value handed to ``func`` for the block's rows (e.g. cell counts).

    Returns
    -------
    dask.array.Array chunked as ``x``.
    """
    starts = group_runs(codes)
    n_groups = len(np.unique(codes)) if len(codes) else 0
    largest = int(np.diff(np.r_[starts, len(codes)]).max()) if len(codes) else 0
    if len(starts) == n_groups and largest * x.shape[1] * 8 <= RUN_BLOCK_BYTES:
        bounds = np.cumsum((0,) + x.chunks[0])
        snapped = starts[np.searchsorted(starts, bounds[1:-1], side="right") - 1]
        bounds = np.unique(np.r_[0, snapped, len(codes)])
        sizes = tuple(int(s) for s in np.diff(bounds))
        y = x.rechunk({0: sizes, 1: -1})
        columns = [codes, mask] + ([] if extra is None else [np.asarray(extra)])
        columns = [da.from_array(c, chunks=(sizes,))[:, None] for c in columns]
        out = da.map_blocks(_local, y, *columns, transform=func, dtype=dtype, meta=np.empty((0, 0), dtype))
        return out.rechunk({0: x.chunks[0]})
    n = x.shape[0]
    step = max(1, int(block_bytes // max(8 * n, 1)))
    y = x.rechunk({0: -1, 1: step})
    args = (codes, mask) if extra is None else (codes, mask, np.asarray(extra))
    out = y.map_blocks(_columns, args=args, transform=func, dtype=dtype, meta=np.empty((0, 0), dtype))
    return out.rechunk({0: x.chunks[0], 1: -1})


def _local(block, *columns, transform):
    return transform(np.asarray(block), *(np.asarray(c)[:, 0] for c in columns))


def _columns(block, args, transform):
    return transform(np.asarray(block), *args)


def fit_summary(x, codes, mask, n_groups):
    """Per (group, feature) over each group's fitting samples: NaN count, min and max, in one pass."""
    code_chunks = da.from_array(np.where(mask, codes, -1), chunks=(x.chunks[0],))[:, None]
    d = x.shape[1]
    parts = da.map_blocks(_summary, x, code_chunks, n_groups, dtype=np.float64,
                          chunks=((3 * n_groups,) * x.numblocks[0], (d,)),
                          meta=np.empty((0, 0), np.float64))
    parts = parts.compute().reshape(x.numblocks[0], 3, n_groups, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # groups absent from a chunk: NaN
        return parts[:, 0].sum(axis=0), np.nanmin(parts[:, 1], axis=0), np.nanmax(parts[:, 2], axis=0)


def _summary(block, codes, n_groups):
    codes = codes[:, 0]
    block = np.asarray(block, dtype=np.float64)
    out = np.full((3, n_groups, block.shape[1]), np.nan)
    out[0] = 0
    for g in np.unique(codes[codes >= 0]):
        rows = block[codes == g]
        out[0, g] = np.isnan(rows).sum(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN extremes
            out[1, g] = np.nanmin(rows, axis=0)
            out[2, g] = np.nanmax(rows, axis=0)
    return out.reshape(3 * n_groups, block.shape[1])


def check_fit(x, codes, mask, keys, features, step):
    """Raise an InputError naming group and features when fitting samples hold NaN.

    Returns
    -------
    constant : ndarray of bool (group, feature)
        Features constant among a group's fitting samples.
    """
    counts, low, high = fit_summary(x, codes, mask, len(keys))
    if counts.any():
        problems = []
        for g in np.flatnonzero(counts.any(axis=1)):
            bad = features[counts[g] > 0]
            problems.append(f"{group_label(keys, g)}: {', '.join(map(str, bad[:10]))}"
                            f"{' ...' if len(bad) > 10 else ''}")
        raise InputError(
            f"{step}: NaN in the fitting samples; drop or impute these features first "
            "(feature_select operation drop_na_columns)", problems)
    return low == high


def constant_report(constant, keys, features):
    """``{group label: [features]}`` of the features constant in a group's fitting samples."""
    return {group_label(keys, g): [str(f) for f in features[constant[g]]]
            for g in np.flatnonzero(constant.any(axis=1))}


def group_label(keys, g):
    """``plate=P1/batch=B0`` for group ``g`` of a keys frame from ``group_codes``."""
    if not len(keys.columns):
        return "all samples"
    return "/".join(f"{k}={v}" for k, v in keys.iloc[g].items())
