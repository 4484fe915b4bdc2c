"""feature_select: Pycytominer's feature selection operations as passes over chunks."""

import importlib.util
import itertools
import warnings
from pathlib import Path

import dask.array as da
import numpy as np

from cpzarr.errors import InputError
from cpzarr.profiles._samples import (
    as_dask, check_profiles, group_codes, like_input, record_step, sample_mask,
)
from cpzarr.profiles._segments import BLOCK_BYTES, segment_reduce, segments_of, sum_over_row_blocks

OPERATIONS = (
    "variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns",
    "blocklist", "drop_outliers", "noise_removal",
)
_CHANNELS = ("AGP", "DNA", "ER", "Mito", "RNA")


def default_blocklist():
    """Pycytominer's default CellProfiler blocklist.

    Read from Pycytominer's installed data file when Pycytominer is installed; otherwise the same
    rule, written from CellProfiler's feature names: nuclear Manders and RWC colocalization between
    every ordered pair of the five Cell Painting channels, and nuclear granularity at scales 14-16.

    Returns
    -------
    list of str

    Examples
    --------
    >>> len(default_blocklist())
    55
    """
    spec = importlib.util.find_spec("pycytominer")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "data" / "blocklist_features.txt"
        if path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines()]
            return [line for line in lines[1:] if line]
    names = [
        f"Nuclei_Correlation_{kind}_{a}_{b}"
        for kind in ("Manders", "RWC") for a, b in itertools.permutations(_CHANNELS, 2)
    ]
    names += [f"Nuclei_Granularity_{scale}_{c}" for scale in (14, 15, 16) for c in _CHANNELS]
    return names


def feature_select(
    profiles,
    operation=("variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"),
    samples="all",
    na_cutoff=0.05,
    corr_threshold=0.9,
    corr_method="pearson",
    freq_cut=0.05,
    unique_cut=0.01,
    min_variance=1e-6,
    outlier_cutoff=500,
    blocklist=None,
    noise_removal_perturb_groups=None,
    noise_removal_stdev_cutoff=None,
):
    """Drop features by Pycytominer's rules, each operation on the survivors of the previous ones.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    operation : str or sequence of str
        Any of ``variance_threshold`` (keep population variance > ``min_variance``),
        ``frequency_threshold`` (drop when 2nd/1st most common value count < ``freq_cut`` or
        distinct values / samples < ``unique_cut``), ``correlation_threshold`` (for every pair with
        correlation > ``corr_threshold`` drop the member whose summed absolute correlation with
        all features is larger), ``drop_na_columns`` (NaN fraction > ``na_cutoff``),
        ``blocklist``, ``drop_outliers`` (max |value| > ``outlier_cutoff``), ``noise_removal``
        (mean within-group population std > ``noise_removal_stdev_cutoff``).
    samples : "all", boolean mask over sample, or str
        Samples the statistics are computed on.
    blocklist : list of str, optional
        Features to drop by ``blocklist``; default :func:`default_blocklist`.
    noise_removal_perturb_groups : str, optional
        Coordinate naming the groups of ``noise_removal``.
    na_cutoff, corr_threshold, corr_method, freq_cut, unique_cut, min_variance, outlier_cutoff,
    noise_removal_stdev_cutoff
        As in Pycytominer; ``corr_method`` is ``"pearson"`` or ``"spearman"``.

    Returns
    -------
    profiles : DataArray (sample, feature)
        The kept features; ``attrs["cpzarr_steps"]`` lists each operation's dropped features.

    Notes
    -----
    The correlation matrix comes from cross-products accumulated over sample chunks (centred on
    the feature means computed in a first pass; with NaN, from pairwise-complete sums), never
    from a pandas frame. ``frequency_threshold`` needs exact value counts, so it reads whole
    feature columns, a block of features at a time.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=4, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> feature_select(p, operation="drop_outliers", outlier_cutoff=1e9).sizes["feature"]
    16
    """
    operations = [operation] if isinstance(operation, str) else list(operation)
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise InputError(f"feature_select operations must be among {OPERATIONS}", unknown)
    if "noise_removal" in operations and (
        noise_removal_perturb_groups is None or noise_removal_stdev_cutoff is None
    ):
        raise InputError("noise_removal needs noise_removal_perturb_groups and noise_removal_stdev_cutoff")
    if corr_method not in ("pearson", "spearman"):
        raise InputError(f"corr_method {corr_method!r} is not 'pearson' or 'spearman'")
    p = check_profiles(profiles)
    mask = sample_mask(p, samples)
    x = as_dask(p)
    if not mask.all():
        x = x[np.flatnonzero(mask)]
    names = np.asarray([str(f) for f in p["feature"].values], dtype=object)
    keep = np.ones(len(names), dtype=bool)
    dropped = {}
    for op in operations:
        cols = np.flatnonzero(keep)
        sub = x if keep.all() else x[:, cols]
        if op == "variance_threshold":
            variance = da.nanvar(sub.astype(np.float64), axis=0).compute()
            drop = ~(variance > min_variance)
        elif op == "frequency_threshold":
            drop = _frequency(sub, freq_cut, unique_cut)
        elif op == "correlation_threshold":
            drop = _correlated(sub, corr_threshold, corr_method)
        elif op == "drop_na_columns":
            drop = (da.isnan(sub).sum(axis=0).compute() / sub.shape[0]) > na_cutoff
        elif op == "blocklist":
            listed = set(default_blocklist() if blocklist is None else blocklist)
            drop = np.array([name in listed for name in names[cols]], dtype=bool)
        elif op == "drop_outliers":
            high = da.nanmax(sub, axis=0)
            low = da.nanmin(sub, axis=0)
            high, low = da.compute(high, low)
            drop = (np.abs(high) > outlier_cutoff) | (np.abs(low) > outlier_cutoff)
        else:
            drop = _noisy(p.isel(sample=np.flatnonzero(mask)), sub, noise_removal_perturb_groups,
                          noise_removal_stdev_cutoff)
        dropped[op] = names[cols[drop]].tolist()
        keep[cols[drop]] = False
    out = p.isel(feature=np.flatnonzero(keep))
    out.attrs = dict(p.attrs)
    record_step(out, "feature_select", {
        "operation": operations, "samples": samples, "na_cutoff": na_cutoff,
        "corr_threshold": corr_threshold, "corr_method": corr_method, "freq_cut": freq_cut,
        "unique_cut": unique_cut, "min_variance": min_variance, "outlier_cutoff": outlier_cutoff,
        "noise_removal_perturb_groups": noise_removal_perturb_groups,
        "noise_removal_stdev_cutoff": noise_removal_stdev_cutoff, "dropped": dropped,
    })
    return like_input(profiles, out)


def _column_blocks(sub):
    """Whole columns, as many features per block as fit in the block budget."""
    width = max(1, int(BLOCK_BYTES // max(sub.shape[0] * 8, 1)))
    return sub.rechunk({0: -1, 1: width})


def _frequency(sub, freq_cut, unique_cut):
    n = sub.shape[0]

    def ratios(block):
        out = np.empty((2, block.shape[1]))
        for j in range(block.shape[1]):
            column = block[:, j]
            _, counts = np.unique(column[~np.isnan(column)], return_counts=True)
            top = np.sort(counts)[::-1]
            out[0, j] = top[1] / top[0] if len(top) >= 2 else 0.0
            out[1, j] = len(counts) / n
        return out

    blocks = _column_blocks(sub)
    result = blocks.map_blocks(ratios, chunks=((2,), blocks.chunks[1]), dtype=np.float64).compute()
    return (result[0] < freq_cut) | (result[1] < unique_cut)


def correlation_matrix(sub, method="pearson"):
    """Feature × feature correlation of a dask array (sample, feature), accumulated over chunks.

    Parameters
    ----------
    sub : dask.array.Array (sample, feature)
    method : {"pearson", "spearman"}

    Returns
    -------
    ndarray (feature, feature)
        Pairwise-complete when NaN is present; NaN where a feature is constant.

    Examples
    --------
    >>> x = da.from_array(np.array([[1.0, 2.0], [2.0, 4.1], [3.0, 5.9]]), chunks=2)
    >>> bool(correlation_matrix(x)[0, 1] > 0.99)
    True
    """
    if method == "spearman":
        from scipy.stats import rankdata  # scipy.stats alone is about 45 MB of a process

        blocks = _column_blocks(sub)
        sub = blocks.map_blocks(
            lambda b: rankdata(b, axis=0, nan_policy="omit").astype(np.float64), dtype=np.float64
        )
    sub = sub.astype(np.float64)
    has_nan = bool(da.isnan(sub).any().compute())
    mean = da.nanmean(sub, axis=0).compute()
    centred = sub - mean
    if not has_nan:
        scatter = _cross(centred, centred)
        sd = np.sqrt(np.diag(scatter))
        with np.errstate(invalid="ignore", divide="ignore"):
            return scatter / np.outer(sd, sd)
    # Pairwise-complete sums: every statistic of a pair only over rows where both are present.
    present = (~da.isnan(centred)).astype(np.float64)
    zeroed = da.nan_to_num(centred)
    count, sum_xy, sum_x, sum_xx = (
        _cross(present, present), _cross(zeroed, zeroed), _cross(zeroed, present), _cross(zeroed**2, present),
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = count * sum_xy - sum_x * sum_x.T
        var_a = count * sum_xx - sum_x**2
        corr = cov / np.sqrt(var_a * var_a.T)
    corr[count < 2] = np.nan
    return corr


def _cross(a, b):
    return sum_over_row_blocks(lambda u, v: u.T @ v, a, b)


def _correlated(sub, threshold, method):
    if sub.shape[1] < 2:
        return np.zeros(sub.shape[1], dtype=bool)
    found = _pearson_pairs(sub, threshold) if method == "pearson" else None
    if found is None:
        corr = correlation_matrix(sub, method)
        sums = np.nansum(np.abs(corr), axis=0)
        rows, cols = np.nonzero(np.tril(corr > threshold, k=-1))
    else:
        sums, rows, cols = found
    # Pycytominer ranks features by summed |correlation| (NaN skipped) and, for each pair above
    # the threshold, drops the member ranked later.
    position = np.empty(len(sums), dtype=np.int64)
    position[np.argsort(sums, kind="quicksort")] = np.arange(len(sums))
    drop = np.zeros(len(sums), dtype=bool)
    drop[np.where(position[rows] > position[cols], rows, cols)] = True
    return drop


def _row_blocks(x, rows=256):
    """Blocks of at most ``rows`` rows (float64 temporaries of a few MB), one dask chunk at a time."""
    for i in range(x.numblocks[0]):
        block = np.asarray(x.blocks[i].compute())
        for start in range(0, len(block), rows):
            yield block[start:start + rows]


def _pearson_pairs(sub, threshold, margin=1e-3, row_bytes=16 * 2**20):
    """Pairs with Pearson correlation above ``threshold``, and the summed |correlation| that ranks them.

    The feature × feature Gram matrix is accumulated in float32, one symmetric rank-k update
    per row block (half the work of a matrix product and half the memory of float64); it only
    finds candidate pairs, within ``margin`` of the threshold, which bounds float32's rounding
    (n · 2⁻²⁴ ≈ 5e-4 at 8,818 samples). The correlations of the features in candidate pairs
    are then recomputed in float64, so the decisions and the sums that rank those features are
    Pycytominer's float64 numbers.

    After a quarter and after half of the samples, Cauchy-Schwarz bounds every pair's
    correlation by its partial cross-product plus the product of the two features' remaining
    norms; when the pairs that could still pass the threshold involve few features, the rest
    of the Gram matrix is skipped and those pairs are computed exactly instead (an exact
    shortcut for data with few highly correlated features; otherwise the full matrix as above).

    Returns ``None`` when the data hold NaN (the caller uses pairwise-complete correlations).

    Returns
    -------
    sums : ndarray (feature,)
        Summed |correlation|, in float64 for the features of candidate pairs (the only ones
        whose rank matters); from the float32 matrix, or 0 after a shortcut, for the others.
    rows, cols : ndarray of int
        The pairs (rows > cols) whose correlation is above ``threshold``.
    """
    from scipy.linalg import blas  # imported where used: profiles that only normalize skip scipy

    x = sub.rechunk({1: -1}).astype(sub.dtype if sub.dtype == np.float32 else np.float64)
    n, d = x.shape
    total = np.zeros(d)
    for block in _row_blocks(x):
        if np.isnan(block).any():
            return None
        total += block.sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(d)
    for block in _row_blocks(x):
        centred = block - mean
        squares += np.einsum("ij,ij->j", centred, centred)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(squares > 0, 1 / np.sqrt(squares), np.nan)
    gram = np.zeros((d, d), dtype=np.float32, order="F")
    done = np.zeros(d)
    seen, checks = 0, [n // 4, n // 2]
    for block in _row_blocks(x, rows=512):
        centred = block - mean
        done += np.einsum("ij,ij->j", centred, centred)
        # syrk on the transposed (Fortran-ordered) block: the lower triangle of gram += blockᵀ block.
        gram = blas.ssyrk(1.0, centred.astype(np.float32).T, beta=1.0, c=gram, trans=0, lower=1, overwrite_c=1)
        seen += len(block)
        if checks and seen >= checks[0] and seen < n:
            checks = [c for c in checks if c > seen]
            rest = np.sqrt(np.clip(squares - done, 0, None)) * np.nan_to_num(inverse)
            rows, cols = _strips(gram, inverse.astype(np.float32), threshold - margin, row_bytes,
                                 bound=rest.astype(np.float32))
            if len(np.unique(np.concatenate([rows, cols]))) <= d // 8:
                del gram
                return _exact(x, mean, inverse, rows, cols, threshold, np.zeros(d), row_bytes)
    with np.errstate(divide="ignore", invalid="ignore"):
        diagonal = np.diagonal(gram)
        inverse32 = np.where(diagonal > 0, 1 / np.sqrt(diagonal), np.nan).astype(np.float32)
    sums = np.zeros(d)
    rows, cols = _strips(gram, inverse32, threshold - margin, row_bytes, sums=sums)
    sums += np.isfinite(inverse)  # the diagonal's 1
    del gram
    return _exact(x, mean, inverse, rows, cols, threshold, sums, row_bytes)


def _strips(gram, inverse, cut, row_bytes, bound=None, sums=None):
    """Pairs (i > j) of the lower triangle whose correlation (plus ``bound[i]·bound[j]``) is > cut.

    Scans strips of rows; adds each feature's summed |correlation| to ``sums`` when given.
    """
    d = len(gram)
    pairs = []
    step = max(1, int(row_bytes // (8 * d)))
    for start in range(0, d, step):
        stop = min(start + step, d)
        strip = np.tril(gram[start:stop, :stop], k=start - 1)  # below the diagonal only
        strip *= inverse[start:stop, None]
        strip *= inverse[None, :stop]
        if bound is not None:
            strip += np.tril(np.outer(bound[start:stop], bound[:stop]), k=start - 1)
        i, j = np.nonzero(strip > cut)
        pairs.append((i + start, j))
        if sums is not None:
            np.abs(strip, out=strip)
            np.nan_to_num(strip, copy=False)  # constant features: NaN, skipped by the sums
            sums[start:stop] += strip.sum(axis=1)
            sums[:stop] += strip.sum(axis=0)
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def _exact(x, mean, inverse, rows, cols, threshold, sums, row_bytes):
    """Float64 correlations of the features in the candidate pairs: their sums, the pairs kept."""
    if not len(rows):
        return sums, rows, cols
    d = x.shape[1]
    involved = np.unique(np.concatenate([rows, cols]))
    exact = np.empty(len(rows), dtype=bool)
    where = np.searchsorted(involved, rows)
    width = max(1, int(row_bytes // (8 * d)))
    for start in range(0, len(involved), width):
        chosen = involved[start:start + width]
        cross = np.zeros((len(chosen), d))
        for block in _row_blocks(x):
            centred = block - mean
            cross += centred[:, chosen].T @ centred
        corr = np.clip(cross * inverse[chosen, None] * inverse[None, :], -1, 1)
        sums[chosen] = np.nansum(np.abs(corr), axis=1)
        mine = (where >= start) & (where < start + len(chosen))
        exact[mine] = corr[where[mine] - start, cols[mine]] > threshold
    return sums, rows[exact], cols[exact]


def _noisy(fit_profiles, sub, groups, cutoff):
    codes, _ = group_codes(fit_profiles, groups)
    order, lengths = segments_of(codes)

    def stds(block, lengths):
        out = np.empty((len(lengths), block.shape[1]))
        start = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features: NaN, as pandas
            for i, n in enumerate(lengths):
                out[i] = np.nanstd(np.asarray(block[start:start + n], dtype=np.float64), axis=0)
                start += n
        return out

    per_group = segment_reduce(sub.rechunk({1: -1}), lengths, stds, sub.shape[1], order=order).compute()
    return np.nanmean(per_group, axis=0) > cutoff
