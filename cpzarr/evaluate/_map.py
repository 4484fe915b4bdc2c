"""Average precision per query, mean average precision per group, permutation p-values.

Conventions follow copairs 0.5.5 so the numbers agree: positives are the same-group samples,
negatives all other kept samples; similarities are ranked as float32 with ties in favour of
positives; AP is the mean over positives of the precision at their rank; mAP the mean AP over a
group's queries that have positives. p-values come from a null of random rankings per
(positives, list length) configuration, and Benjamini–Hochberg corrects them.
"""

import numpy as np
import pandas as pd

from ._precision import _count_within, _positive_ranks, _prepare, _query_frame

# Above this many cells (null_size × list length) a configuration's null is drawn row by row,
# in bounded memory, instead of permuting a full null_size × list-length matrix as copairs does.
_DENSE_NULL_LIMIT = 50_000_000


def average_precision(
    profiles,
    groups,
    mask=None,
    query=None,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Average precision (and Precision@R) of every query.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    groups : str or list of str
        Sample coordinate(s) whose equal values make positives (compared as strings).
    mask : None, boolean array (sample,) or str, optional
        Samples to keep at all, e.g. ``"control != 'negcon'"``.
    query : None, boolean array (sample,) or str, optional
        Which kept samples are queries (default all).
    method : {"pearson", "cosine"}
        Similarity (copairs calls Pearson ``"correlation"``; its default is cosine).
    dtype : {"float64", "float32"}
        Precision of the similarity products. Ranking for AP always uses float32 similarities,
        as copairs does.
    block_size : int, optional
        Queries per block (default: blocks of about 2**24 similarities).
    progress : bool
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per query: ``sample``, the ``groups`` coordinates, ``n_pos_pairs``,
        ``n_total_pairs``, ``average_precision`` (NaN without positives) and
        ``precision_at_r`` (Precision@K with K = the query's number of positives, stable ranks).

    Examples
    --------
    >>> ap = average_precision(profiles, "moa", mask="control != 'negcon'")  # doctest: +SKIP
    """
    profiles, names, z, codes, idx, queries = _prepare(profiles, groups, mask, query, method, dtype)
    ranks = _positive_ranks(z, codes, queries, block_size, progress, "average_precision")
    return _average_precision_frame(profiles, names, idx, ranks)


def _average_precision_frame(profiles, names, idx, ranks):
    """The average_precision table from positive ranks."""
    frame = _query_frame(profiles, names, idx, ranks)
    frame["n_pos_pairs"] = ranks.n_pos
    frame["n_total_pairs"] = ranks.n_neighbors
    owner = np.repeat(np.arange(ranks.n_pos.size), ranks.n_pos)
    # Position of each positive among the query's positives (1-based), in key order.
    position = np.arange(ranks.rank.size) - ranks.ptr[owner] + 1
    precision = position / (position + ranks.neg_before)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.bincount(owner, weights=precision, minlength=ranks.n_pos.size)
        frame["average_precision"] = np.where(ranks.n_pos > 0, total / ranks.n_pos, np.nan)
        within = _count_within(ranks, ranks.n_pos)
        frame["precision_at_r"] = np.where(ranks.n_pos > 0, within / ranks.n_pos, np.nan)
    return frame


def _null_average_precision(n_pos, total, null_size, rng):
    """AP of ``null_size`` random rankings with ``n_pos`` positives among ``total`` (float32)."""
    if null_size * total <= _DENSE_NULL_LIMIT:
        # Same draw as copairs: permute every row of a tiled arange, take the first n_pos.
        kind = np.uint16 if total < 2**16 else np.uint32
        draws = np.tile(np.arange(total, dtype=kind), (null_size, 1))
        rng.permuted(draws, axis=1, out=draws)
        rank = np.sort(draws[:, :n_pos], axis=1)
    else:
        rank = np.empty((null_size, n_pos), dtype=np.int64)
        for row in range(null_size):
            rank[row] = np.sort(rng.choice(total, n_pos, replace=False))
    precision = np.arange(1, n_pos + 1, dtype=np.float32) / (rank.astype(np.float32) + 1)
    return precision.sum(axis=1) / np.float32(n_pos)


def benjamini_hochberg(p_values):
    """Benjamini–Hochberg adjusted p-values (false discovery rate), NaN left as NaN.

    Parameters
    ----------
    p_values : array-like of float

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, ``min(1, min_{j >= i} p_(j) * m / j)`` in the original order.

    Examples
    --------
    >>> benjamini_hochberg([0.01, 0.04, 0.03])
    array([0.03, 0.04, 0.04])
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    live = np.flatnonzero(~np.isnan(p))
    order = live[np.argsort(p[live], kind="stable")]
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out


def mean_average_precision(
    profiles=None,
    groups=None,
    ap=None,
    null_size=10_000,
    threshold=0.05,
    seed=0,
    mask=None,
    query=None,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Mean average precision per group, with permutation p-values and BH correction.

    The null follows copairs 0.5.5: the distinct (positives, list length) configurations, sorted,
    each get a seed from ``numpy.random.default_rng(seed).integers(8096)``; each draws
    ``null_size`` random rankings and takes their AP (float32). A group's null is the element-wise
    mean of its members' nulls; ``p = (#null > mAP + 1) / (null_size + 1)``. With a fresh copairs
    cache and the same ``seed`` and ``null_size`` the p-values equal copairs'. Configurations
    larger than ``null_size × list length = 5e7`` draw row by row in bounded memory: the same null
    distribution, other random numbers.

    Parameters
    ----------
    profiles : DataArray (sample, feature), optional
        Profiles; not needed when ``ap`` is given.
    groups : str or list of str
        Sample coordinate(s) defining groups.
    ap : pandas.DataFrame, optional
        The output of :func:`average_precision` for the same ``groups``, to reuse one pass.
    null_size : int
        Random rankings per configuration.
    threshold : float
        Significance level for ``below_p`` and ``below_corrected_p``.
    seed : int
        Seed of the null.
    mask, query, method, dtype, block_size, progress
        As in :func:`average_precision` (used when ``ap`` is not given).

    Returns
    -------
    pandas.DataFrame
        One row per group (sorted): the ``groups`` coordinates, ``n_queries``,
        ``mean_average_precision``, ``p_value``, ``corrected_p_value``, ``below_p``,
        ``below_corrected_p``.

    Examples
    --------
    >>> m = mean_average_precision(profiles, "moa", mask="control != 'negcon'")  # doctest: +SKIP
    >>> m.query("below_corrected_p")  # doctest: +SKIP
    """
    names = [groups] if isinstance(groups, str) else list(groups)
    if ap is None:
        ap = average_precision(
            profiles, names, mask, query, method, dtype, block_size, progress
        )
    scored = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)].reset_index(drop=True)
    conf = scored[["n_pos_pairs", "n_total_pairs"]].to_numpy()
    confs, which = np.unique(conf, axis=0, return_inverse=True)
    which = np.ravel(which)
    seeds = np.random.default_rng(seed).integers(8096, size=len(confs))
    nulls = np.empty((len(confs), null_size), dtype=np.float32)
    for i, (n_pos, total) in enumerate(confs):
        nulls[i] = _null_average_precision(
            int(n_pos), int(total), null_size, np.random.default_rng(seeds[i])
        )

    rows = []
    for key, members in scored.groupby(names, sort=True).groups.items():
        members = np.asarray(members)
        score = scored.loc[members, "average_precision"].mean()
        null = nulls[which[members]].mean(axis=0)
        p = (np.count_nonzero(null > score) + 1) / (null_size + 1)
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, members.size, score, p))
    frame = pd.DataFrame(
        rows, columns=[*names, "n_queries", "mean_average_precision", "p_value"]
    )
    frame["corrected_p_value"] = benjamini_hochberg(frame["p_value"])
    frame["below_p"] = frame["p_value"] < threshold
    frame["below_corrected_p"] = frame["corrected_p_value"] < threshold
    return frame
