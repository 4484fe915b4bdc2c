"""Average precision per query, mean average precision per group, permutation p-values.

Conventions follow copairs 0.5.5 so the numbers agree: positives are the same-group samples,
negatives all other kept samples; similarities are ranked as float32 with ties in favour of
positives; AP is the mean over positives of the precision at their rank; mAP the mean AP over a
group's queries that have positives. p-values come from a null of random rankings per
(positives, list length) configuration, and Benjamini–Hochberg corrects them.
"""

import numpy as np
import pandas as pd

from cpzarr.errors import InputError

from ._precision import _count_within, _positive_ranks, _prepare, _query_frame
from ._similarity import _check_profiles, _sample_mask, _standardize

# Above this many cells (null_size × list length) a configuration's null is drawn row by row,
# in bounded memory, instead of permuting a full null_size × list-length matrix as copairs does.
_DENSE_NULL_LIMIT = 50_000_000


def average_precision(
    profiles,
    groups=None,
    mask=None,
    query=None,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
    *,
    pos_sameby=None,
    pos_diffby=None,
    neg_sameby=None,
    neg_diffby=None,
    multilabel=None,
    label_sep="|",
    exclude_same=None,
    null_size=None,
    seed=0,
    threshold=0.05,
):
    """Average precision (and Precision@R) of every query, optionally with p-values.

    By default positives are the kept samples with the same ``groups`` values and negatives all
    other kept samples. copairs' pair rules choose both instead (see :mod:`._pairs`): a partner
    is a positive when it shares every ``pos_sameby`` value and differs in every ``pos_diffby``
    value, a negative likewise under ``neg_sameby`` / ``neg_diffby``; partners that are neither
    are left out of the query's ranked list. ``exclude_same`` drops partners sharing any of those
    coordinates with the query from both sides (NSCB: ``["compound", "batch"]``).

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    groups : str or list of str
        Sample coordinate(s) whose equal values make positives (compared as strings); the
        default of ``pos_sameby``. ``Metadata_`` prefixes are accepted here and in every
        coordinate name below.
    pos_sameby, pos_diffby, neg_sameby, neg_diffby : list of str, optional
        copairs' pair rules (lists of coordinate names). Giving ``neg_sameby`` or ``neg_diffby``
        (an empty list counts) switches from "negatives = every other group" to copairs' rule.
    multilabel : str, optional
        A coordinate in ``pos_sameby`` holding several labels per sample (a list, or a string
        joined by ``label_sep``); each query then has one row per label (copairs' multilabel).
    label_sep : str
        Separator of multilabel strings.
    exclude_same : list of str, optional
        Partners equal to the query on any of these are ignored (NSCB).
    null_size : int, optional
        With a number, per-query p-values as copairs' ``p_values``: a null of ``null_size``
        random rankings per (positives, list length), seeded as :func:`mean_average_precision`;
        ``p = (#null >= AP + 1) / (null_size + 1)``, Benjamini–Hochberg over the queries.
    seed, threshold
        Seed of the null; significance level of ``below_p`` / ``below_corrected_p``.
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
        One row per query (per query and label with ``multilabel``): ``sample``, the coordinates
        the rules name, ``n_pos_pairs``, ``n_total_pairs`` (positives + negatives),
        ``average_precision`` (NaN without positives) and ``precision_at_r`` (Precision@K with
        K = the query's positives; stable ranks by default, copairs' order under pair rules,
        which also add ``nearest_is_positive``). With ``null_size``: ``p_value``,
        ``corrected_p_value``, ``below_p``, ``below_corrected_p``.

    Examples
    --------
    >>> ap = average_precision(profiles, "moa", mask="control != 'negcon'")  # doctest: +SKIP
    >>> same_compound_other_plate = average_precision(
    ...     profiles, pos_sameby=["compound"], pos_diffby=["plate"],
    ...     neg_sameby=[], neg_diffby=["compound"])  # doctest: +SKIP
    """
    rules_given = any(
        v is not None for v in (pos_sameby, pos_diffby, neg_sameby, neg_diffby, multilabel)
    ) or bool(exclude_same)
    if not rules_given:
        profiles, names, z, codes, idx, queries = _prepare(
            profiles, groups, mask, query, method, dtype
        )
        ranks = _positive_ranks(z, codes, queries, block_size, progress, "average_precision")
        frame = _average_precision_frame(profiles, names, idx, ranks)
    else:
        from ._pairs import make_rules, pair_average_precision

        profiles, values = _check_profiles(profiles)
        rules = make_rules(
            profiles, groups, pos_sameby, pos_diffby, neg_sameby, neg_diffby, multilabel,
            exclude_same,
        )
        keep = _sample_mask(profiles, mask, "mask")
        asked = _sample_mask(profiles, query, "query")
        idx = np.flatnonzero(keep)
        if idx.size < 2:
            raise InputError(f"only {idx.size} samples remain after the mask; need at least 2")
        z = _standardize(values, method, np.dtype(dtype), idx)
        queries = np.flatnonzero(asked[idx])
        frame = pair_average_precision(
            profiles, z, idx, queries, rules, block_size, progress, label_sep
        )
    if null_size is not None:
        frame = add_p_values(frame, null_size=null_size, seed=seed, threshold=threshold)
    return frame


def add_p_values(ap, null_size=10_000, seed=0, threshold=0.05):
    """Per-query p-values of an AP table, as copairs' ``average_precision.p_values``.

    Parameters
    ----------
    ap : pandas.DataFrame
        An :func:`average_precision` table.
    null_size, seed, threshold
        As in :func:`mean_average_precision`.

    Returns
    -------
    pandas.DataFrame
        A copy with ``p_value`` (NaN without positives), ``corrected_p_value``
        (Benjamini–Hochberg over the queries that have one), ``below_p``, ``below_corrected_p``.

    Examples
    --------
    >>> add_p_values(ap, null_size=1000)["below_corrected_p"].mean()  # doctest: +SKIP
    """
    frame = ap.copy()
    scored = (frame["n_pos_pairs"] > 0).to_numpy()
    conf = frame.loc[scored, ["n_pos_pairs", "n_total_pairs"]].to_numpy()
    p = np.full(len(frame), np.nan)
    if conf.size:
        nulls, which = _null_table(conf, null_size, seed)
        nulls.sort(axis=1)
        scores = frame.loc[scored, "average_precision"].to_numpy()
        at_least = null_size - np.array(
            [np.searchsorted(nulls[w], a) for w, a in zip(which, scores)], dtype=np.int64
        )
        p[scored] = (at_least + 1) / (null_size + 1)
    frame["p_value"] = p
    frame["corrected_p_value"] = benjamini_hochberg(p)
    frame["below_p"] = frame["p_value"] < threshold
    frame["below_corrected_p"] = frame["corrected_p_value"] < threshold
    return frame


def _null_table(conf, null_size, seed):
    """copairs' nulls: one row per distinct (positives, total) configuration, sorted, seeded by
    ``default_rng(seed).integers(8096)``; and each input row's configuration index."""
    confs, which = np.unique(np.asarray(conf, dtype=np.int64), axis=0, return_inverse=True)
    which = np.ravel(which)
    seeds = np.random.default_rng(seed).integers(8096, size=len(confs))
    nulls = np.empty((len(confs), null_size), dtype=np.float32)
    for i, (n_pos, total) in enumerate(confs):
        nulls[i] = _null_average_precision(
            int(n_pos), int(total), null_size, np.random.default_rng(seeds[i])
        )
    return nulls, which


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


_RULE_KEYS = {
    "pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby", "multilabel", "label_sep",
    "exclude_same",
}


def _frame_names(frame, groups):
    """Columns of ``frame`` named by ``groups``, accepting ``Metadata_`` prefixes either way."""
    names = [groups] if isinstance(groups, str) else list(groups)
    out = []
    for name in names:
        for candidate in (name, name.removeprefix("Metadata_"), "Metadata_" + name):
            if candidate in frame.columns:
                out.append(candidate)
                break
        else:
            raise InputError(
                f"groups {name!r} is not a column of the average-precision table "
                f"(columns: {list(frame.columns)})"
            )
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
    **rules,
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
    **rules
        ``pos_sameby``, ``pos_diffby``, ``neg_sameby``, ``neg_diffby``, ``multilabel``,
        ``label_sep``, ``exclude_same``: copairs' pair rules, as in :func:`average_precision`
        (used when ``ap`` is not given). ``groups`` defaults to ``pos_sameby``; with
        ``multilabel``, group by that coordinate to get one mAP per label.

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
    unknown = set(rules) - _RULE_KEYS
    if unknown:
        raise InputError(f"mean_average_precision got unknown arguments {sorted(unknown)}")
    if groups is None:
        groups = rules.get("pos_sameby")
    if groups is None:
        raise InputError("mean_average_precision needs groups (or pos_sameby) to group the queries")
    if ap is None:
        ap = average_precision(
            profiles, groups, mask, query, method, dtype, block_size, progress, **rules
        )
    names = _frame_names(ap, groups)
    scored = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)].reset_index(drop=True)
    if scored.empty:
        raise InputError(
            "no query has a positive partner, so no mAP can be computed; check groups / "
            "pos_sameby and the mask"
        )
    nulls, which = _null_table(scored[["n_pos_pairs", "n_total_pairs"]].to_numpy(), null_size, seed)

    rows = []
    grouped = scored.groupby(names, sort=True)
    means = grouped["average_precision"].mean()  # as copairs' groupby-agg, to the last bit
    for key, members in grouped.groups.items():
        members = np.asarray(members)
        score = means.loc[key]
        null = nulls[which[members]].mean(axis=0)
        # copairs compares its float32 null with the mAP as a Python float, which NumPy 2 casts
        # to float32: ties on the float32 grid are not "greater".
        p = (np.count_nonzero(null > np.float32(score)) + 1) / (null_size + 1)
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, members.size, score, p))
    frame = pd.DataFrame(
        rows, columns=[*names, "n_queries", "mean_average_precision", "p_value"]
    )
    frame["corrected_p_value"] = benjamini_hochberg(frame["p_value"])
    frame["below_p"] = frame["p_value"] < threshold
    frame["below_corrected_p"] = frame["corrected_p_value"] < threshold
    return frame
