"""Enrichment: odds ratio of same-group pairs among the most similar pairs.

Cytominer-eval's definition, over ordered pairs of distinct kept samples: the threshold is the
p-th percentile (linear interpolation) of all ordered-pair similarities; a pair is "similar" when
its similarity is strictly greater. The 2 × 2 table (similar / not) × (same group / not) gives the
odds ratio ``a·d / (b·c)`` and a one-sided ("greater") Fisher exact p-value.

The percentile is exact without materialising the n(n − 1) pairs: a first pass histograms the
upper-triangle similarities (each unordered pair stands for two ordered pairs) by group equality
on a fine grid; a second pass collects only the values in the bins that hold the needed order
statistics. Both passes compute the same blocks in the same way, so the values agree bit for bit.
Usually one pass suffices: the quantiles are first estimated from the pairs of a few random rows,
and the histogram pass already keeps the values of the bins around them; the second pass runs
only when the estimate missed.
float64 similarities are rounded to multiples of 2**-40 (~1e-12) first, as for ranking, so that
equal similarities compare equal.
"""

import numpy as np
import pandas as pd
from scipy import stats

from cpzarr.errors import InputError

from ._similarity import (
    _block_rows,
    _check_profiles,
    _group_codes,
    _group_names,
    _map_blocks,
    _on_grid,
    _sample_mask,
    _standardize,
)

_BINS = 2**18
_SKIP = 2 * _BINS  # bin of the pairs a block must not count (itself, or counted elsewhere)


def _bin_of(values):
    """Monotone bin index of similarities on a uniform grid over [-1, 1]."""
    scaled = (values + 1.0) * (_BINS / 2.0)
    np.clip(scaled, 0, _BINS - 1, out=scaled)
    return scaled.astype(np.int64)  # truncation = floor on non-negative values


def _upper_blocks(z, codes, block_size, progress, desc, work):
    """``work(sims, bins, same)`` for blocks of rows against the rows after them, in order.

    A block of rows ``start:stop`` is compared with rows ``start:``; the pairs on or below the
    diagonal inside the block get bin ``_SKIP`` so that every unordered pair counts once.
    """
    n = z.shape[0]

    def block(start, stop):
        b = stop - start
        sims = z[start:stop] @ z[start:].T
        bins = _bin_of(sims)
        bins[:, :b][np.tril(np.ones((b, b), dtype=bool))] = _SKIP
        same = codes[start:stop, None] == codes[None, start:]
        return work(sims, bins, same)

    return _map_blocks(block, n - 1, block_size, progress, desc)


def _quantile(lower, upper, fraction):
    """numpy's 'linear' interpolation between two order statistics, the same arithmetic."""
    diff = upper - lower
    if fraction >= 0.5:
        return upper - diff * (1.0 - fraction)
    return lower + diff * fraction


# Pairs sampled to guess where the quantiles lie, and the most pairs a guess may keep.
_SAMPLE_PAIRS = 2**22
_KEEP_LIMIT = 20_000_000


def _likely_bins(z, codes, quantiles, population, seed=0):
    """Bins that very likely hold the wanted quantiles, from the pairs of random rows.

    With them the histogram pass also keeps the values of those bins, and Enrichment needs one
    pass instead of two; a wrong guess only costs the second pass, never exactness. None when
    the guess would keep more than _KEEP_LIMIT pairs.
    """
    n = z.shape[0]
    # At most an eighth of the rows, so that the guess costs at most an eighth of a pass.
    n_rows = min(n // 8, max(16, _SAMPLE_PAIRS // n))
    if n_rows < 16:
        return None
    rows = np.random.default_rng(seed).choice(n, n_rows, replace=False)
    sims = z[rows] @ z.T
    sims[np.arange(rows.size), rows] = np.nan
    if population == "different":
        sims[codes[rows][:, None] == codes[None, :]] = np.nan
    values = sims[~np.isnan(sims)]
    if values.size < 100:
        return None
    quantiles = np.asarray(quantiles, dtype=np.float64)
    # Ten binomial standard deviations of the sampled quantile, plus a floor for row clustering.
    spread = 10 * np.sqrt(quantiles * (1 - quantiles) / values.size) + 2e-4
    if 2 * spread.sum() * n * (n - 1) / 2 > _KEEP_LIMIT:
        return None
    guess = np.zeros(_SKIP + 1, dtype=bool)
    for q, d in zip(quantiles, spread):
        low, high = np.quantile(values, [max(q - d, 0.0), min(q + d, 1.0)])
        first, last = _bin_of(np.array([low, high]))
        guess[first : last + 1] = True
    return guess


def _pair_thresholds(z, codes, quantiles, population, block_size, progress):
    """Exact quantiles of pair similarities, and how many pairs lie strictly above each.

    ``population`` picks the pairs whose quantile is taken: ``"all"`` (every ordered pair of
    distinct samples, as Cytominer-eval's enrichment) or ``"different"`` (unordered pairs of
    different groups, as its replicate reproducibility). Counts returned are over unordered pairs
    of all kinds: ``same``, ``different``, ``same_above``, ``different_above``.
    """
    n = z.shape[0]
    block_size = _block_rows(block_size, n)
    guess = _likely_bins(z, codes, quantiles, population)

    def histogram(sims, bins, same):
        picked = None
        if guess is not None:
            pick = guess[bins]
            picked = sims[pick], bins[pick], same[pick]
        np.add(bins, _BINS, out=bins, where=same)
        return np.bincount(bins.ravel(), minlength=4 * _BINS)[: 2 * _BINS], picked

    counts = np.zeros(2 * _BINS, dtype=np.int64)  # [different bins | same bins]
    kept_values, kept_bins, kept_same = [], [], []
    for part, picked in _upper_blocks(z, codes, block_size, progress, "pairs histogram", histogram):
        counts += part
        if picked is not None:
            kept_values.append(picked[0])
            kept_bins.append(picked[1])
            kept_same.append(picked[2])
    different, same_counts = counts[:_BINS], counts[_BINS:]
    if population == "all":
        ranked_counts, size = different + same_counts, n * (n - 1)
        unordered = lambda i: i // 2  # noqa: E731 - each unordered pair stands twice
    else:
        ranked_counts, size = different, int(different.sum())
        unordered = lambda i: i  # noqa: E731
    if size == 0:
        raise InputError(f"no {population} pairs to take a quantile of")
    cumulative = np.cumsum(ranked_counts)
    plans = []
    for q in quantiles:
        position = (size - 1) * q
        low = int(np.floor(position))
        high = min(low + 1, size - 1)
        plans.append((unordered(low), unordered(high), position - low))
    # Bins between two consecutive ranked pairs hold no ranked pair but may hold others
    # (same-group pairs for "different"), which may fall on either side of the threshold.
    in_boundary = np.zeros(_SKIP + 1, dtype=bool)
    for m1, m2, _ in plans:
        first, last = np.searchsorted(cumulative, [m1, m2], side="right")
        in_boundary[first : last + 1] = True

    if guess is None or (in_boundary & ~guess).any():
        # The sample missed a boundary bin (or was not taken): a second pass collects them.
        def boundary_pairs(sims, bins, same):
            pick = in_boundary[bins]
            return sims[pick], bins[pick], same[pick]

        kept_values, kept_bins, kept_same = [], [], []
        for values, bins, same in _upper_blocks(
            z, codes, block_size, progress, "pairs boundary", boundary_pairs
        ):
            kept_values.append(values)
            kept_bins.append(bins)
            kept_same.append(same)
    else:
        in_boundary = guess
    boundary = np.flatnonzero(in_boundary)
    # Bins come from the similarities as computed, values are then put on the ranking grid;
    # rounding is monotone, so (bin, value) order is similarity order.
    kept_values = _on_grid(np.concatenate(kept_values).astype(np.float64))
    kept_bins = np.concatenate(kept_bins)
    kept_same = np.concatenate(kept_same)
    ranked = ~kept_same if population == "different" else np.ones_like(kept_same)
    order = np.lexsort((kept_values[ranked], kept_bins[ranked]))
    ranked_kept, ranked_bins = kept_values[ranked][order], kept_bins[ranked][order]
    # Order statistic m: skip the ranked pairs of earlier bins, then index the collected ones.
    before = cumulative - ranked_counts
    offset = dict(zip(boundary, np.searchsorted(ranked_bins, boundary)))

    def statistic(m):
        b = int(np.searchsorted(cumulative, m, side="right"))
        return ranked_kept[offset[b] + (m - before[b])]

    results = []
    for m1, m2, fraction in plans:
        threshold = _quantile(statistic(m1), statistic(m2), fraction)
        clear = ~in_boundary[:_BINS]
        clear[: int(np.searchsorted(cumulative, m1, side="right")) + 1] = False
        above = kept_values > threshold
        results.append(
            (
                threshold,
                {
                    "same": int(same_counts.sum()),
                    "different": int(different.sum()),
                    "same_above": int(same_counts[clear].sum())
                    + int(np.count_nonzero(above & kept_same)),
                    "different_above": int(different[clear].sum())
                    + int(np.count_nonzero(above & ~kept_same)),
                },
            )
        )
    return results


def enrichment(
    profiles,
    groups,
    percentiles=(99.5, 99.0, 98.5, 98.0, 97.5, 97.0),
    mask=None,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Enrichment odds ratio at top percentiles of all pair similarities.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    groups : str or list of str
        Sample coordinate(s); a pair is "same group" when all are equal as strings.
    percentiles : float or sequence of float
        Percentiles in percent (0–100), as the study reports them (99.5 … 97).
    mask : None, boolean array (sample,) or str, optional
        Samples to keep (subset evaluation: Enrichment is computed within the subset).
    method : {"pearson", "cosine"}
        Similarity.
    dtype : {"float64", "float32"}
        Precision of the similarity products.
    block_size : int, optional
        Rows per block (default: blocks of about 2**24 similarities).
    progress : bool
        Show progress bars (two passes).

    Returns
    -------
    pandas.DataFrame
        One row per percentile: ``percentile``, ``threshold``, ``odds_ratio``, ``p_value`` and the
        ordered-pair counts ``same_above`` (a), ``different_above`` (b), ``same_below`` (c),
        ``different_below`` (d).

    Examples
    --------
    >>> e = enrichment(profiles, "moa", mask="control != 'negcon'")  # doctest: +SKIP
    >>> e.set_index("percentile")["odds_ratio"]  # doctest: +SKIP
    """
    wanted = np.atleast_1d(np.asarray(percentiles, dtype=np.float64))
    if ((wanted < 0) | (wanted > 100)).any():
        raise InputError(f"percentiles are in percent (0–100), got {percentiles!r}")
    profiles, values = _check_profiles(profiles)
    names = _group_names(profiles, groups)
    idx = np.flatnonzero(_sample_mask(profiles, mask))
    if idx.size < 2:
        raise InputError(f"only {idx.size} samples remain after the mask; need at least 2 for pairs")
    z = _standardize(values, method, np.dtype(dtype), idx)
    codes = _group_codes(profiles, names)[idx]
    # Ordered-pair order statistic i is unordered order statistic i // 2: each pair counts twice.
    rows_out = []
    for p, (threshold, counts) in zip(
        wanted, _pair_thresholds(z, codes, wanted / 100.0, "all", block_size, progress)
    ):
        a, b = 2 * counts["same_above"], 2 * counts["different_above"]
        c, d = 2 * counts["same"] - a, 2 * counts["different"] - b
        with np.errstate(divide="ignore", invalid="ignore"):
            odds = np.float64(a) * d / (np.float64(b) * c)
        p_value = stats.fisher_exact([[a, b], [c, d]], alternative="greater")[1]
        rows_out.append((p, threshold, odds, p_value, a, b, c, d))
    return pd.DataFrame(
        rows_out,
        columns=[
            "percentile",
            "threshold",
            "odds_ratio",
            "p_value",
            "same_above",
            "different_above",
            "same_below",
            "different_below",
        ],
    )


def batch_enrichment(
    profiles,
    batch="batch",
    negcon="control == 'negcon'",
    percentiles=(99.5, 99.0, 98.5, 98.0, 97.5, 97.0),
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Batch enrichment score: Enrichment over negative-control samples with batch as the group.

    High values mean that DMSO wells of one batch resemble each other more than those of other
    batches, i.e. a batch effect; about 1 means none.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with a batch coordinate along ``sample``.
    batch : str or list of str
        Coordinate(s) naming the batch.
    negcon : boolean array (sample,) or str
        Which samples are negative controls (a :mod:`cpzarr.query` string on the sample coordinates or a mask).
    percentiles, method, dtype, block_size, progress
        As in :func:`enrichment`.

    Returns
    -------
    pandas.DataFrame
        As :func:`enrichment`.

    Examples
    --------
    >>> batch_enrichment(profiles, "batch").iloc[0]["odds_ratio"]  # doctest: +SKIP
    """
    return enrichment(
        profiles, batch, percentiles, negcon, method, dtype, block_size, progress
    )
