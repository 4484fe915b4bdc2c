"""All retrieval metrics of one profile table, and the headline numbers, in one place.

:func:`evaluate` is the single code path of ``cpzarr.evaluate.evaluate``, ``cpzarr evaluate``
and the evaluate stage of ``cpzarr run``: the same profiles and options give the same tables and
the same headline.

Headline rules (:func:`headline`):

- ``mAP``: the mean over groups of each group's mAP (every group weighs the same, as copairs and
  the JUMP papers report it), groups with at least one query that has a positive.
- ``fraction retrieved (corrected p<0.05)``: share of those groups whose Benjamini–Hochberg
  corrected p-value is below the threshold (copairs' null of ``null_size`` rankings, ``seed``).
- ``precision@R``: mean over queries that have positives of Precision@R.
- ``precision@K`` / ``recall@K``: mean over queries (recall over queries with positives).
- ``enrichment@P``: the odds ratio at the highest percentile whose top share holds at least
  ``MIN_TOP_PAIRS`` ordered pairs (a top 0.5 % of a few dozen pairs is noise, often infinite).

Defaults that depend on the data (:func:`default_k`, :func:`default_percentiles`): K values are
those of 1, 5, 10, 20, 50, 100 not above the largest number of positives of any query; enrichment
percentiles those of 99.5 … 97 whose top share holds at least ``MIN_TOP_PAIRS`` pairs. Values
given explicitly are kept, with a warning when they exceed what the data can support.
"""

import warnings

import numpy as np
import pandas as pd

from cpzarr.errors import InputError

from ._enrichment import enrichment as _enrichment
from ._hitk import _hitk_tables
from ._map import _average_precision_frame, add_p_values, mean_average_precision
from ._precision import _check_k, _pooled_frame, _positive_ranks, _precision_frame, _prepare

METRICS = ("mean_average_precision", "precision_recall", "enrichment", "hitk",
           "precision_recall_pooled")
DEFAULT_METRICS = METRICS[:4]
STANDARD_K = (1, 5, 10, 20, 50, 100)
STANDARD_PERCENTILES = (99.5, 99.0, 98.5, 98.0, 97.5, 97.0)
#: Fewest ordered pairs above an enrichment threshold for its odds ratio to be a headline.
MIN_TOP_PAIRS = 20


def default_k(max_positives, requested=None):
    """K values for Precision/Recall@K suited to groups of at most ``max_positives`` positives.

    Parameters
    ----------
    max_positives : int
        The most positives any query has.
    requested : sequence of int, optional
        K values asked for; kept, with a warning for those above ``max_positives`` (their
        precision is bounded by ``max_positives / K``).

    Returns
    -------
    numpy.ndarray of int

    Examples
    --------
    >>> default_k(7).tolist()
    [1, 5]
    """
    if requested is not None:
        ks = _check_k(requested)
        big = ks[ks > max(max_positives, 1)]
        if big.size:
            warnings.warn(
                f"K = {big.tolist()} exceeds the largest number of positives of any query "
                f"({max_positives}): Precision@K cannot reach 1 there", UserWarning, stacklevel=3,
            )
        return ks
    ks = [k for k in STANDARD_K if k <= max(max_positives, 1)]
    return np.asarray(ks, dtype=np.int64)


def default_percentiles(n_samples, requested=None):
    """Enrichment percentiles whose top share of the n(n−1) ordered pairs holds enough pairs.

    Parameters
    ----------
    n_samples : int
        Samples compared (after the mask).
    requested : sequence of float, optional
        Percentiles asked for; kept, with a warning for those whose top holds fewer than
        ``MIN_TOP_PAIRS`` pairs.

    Returns
    -------
    numpy.ndarray of float
        At least one percentile: when none of the standard ones qualifies, the highest whole or
        half percentile that does (at least 50).

    Examples
    --------
    >>> default_percentiles(16).tolist()
    [91.5]
    """
    pairs = n_samples * (n_samples - 1)

    def top(p):
        return pairs * (100 - p) / 100

    if requested is not None:
        wanted = np.atleast_1d(np.asarray(requested, dtype=np.float64))
        thin = [float(p) for p in wanted if top(p) < MIN_TOP_PAIRS]
        if thin:
            warnings.warn(
                f"enrichment percentiles {thin} leave fewer than {MIN_TOP_PAIRS} of the "
                f"{pairs} ordered pairs above the threshold; their odds ratios are noise",
                UserWarning, stacklevel=3,
            )
        return wanted
    good = [p for p in STANDARD_PERCENTILES if top(p) >= MIN_TOP_PAIRS]
    if good:
        return np.asarray(good)
    best = np.floor(200 * (1 - MIN_TOP_PAIRS / max(pairs, 1))) / 2
    return np.asarray([max(best, 50.0)])


def evaluate(
    profiles,
    groups,
    mask=None,
    k=None,
    percentiles=None,
    percent_list=tuple(range(1, 101)),
    null_size=10_000,
    seed=0,
    threshold=0.05,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
    metrics=DEFAULT_METRICS,
):
    """Precision/Recall@K, AP/mAP with p-values, Precision@R, Hit@K and Enrichment at once.

    The per-query metrics share one blocked pass (one matrix product per block), Enrichment
    takes its own passes; the numbers equal those of the single-metric functions.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    groups : str or list of str
        Sample coordinate(s) defining positives (e.g. ``"moa"``; ``Metadata_moa`` too).
    mask : None, boolean array (sample,) or str, optional
        Samples to keep, e.g. ``"control != 'negcon'"``.
    k : sequence of int, optional
        K of Precision/Recall@K; default from the data (:func:`default_k`).
    percentiles : sequence of float, optional
        Enrichment percentiles; default from the data (:func:`default_percentiles`).
    percent_list, null_size, seed, threshold
        As in :func:`hitk` and :func:`mean_average_precision`.
    method, dtype, block_size, progress
        As in :func:`precision_recall`.
    metrics : sequence of str
        Which of ``mean_average_precision``, ``precision_recall``, ``enrichment``, ``hitk``
        (the default) and ``precision_recall_pooled`` (Cytominer-eval's grouped rule, same K).

    Returns
    -------
    dict of str to pandas.DataFrame
        Those of ``precision_recall``, ``average_precision`` (per query, with ``precision_at_r``,
        ``p_value``, ``corrected_p_value``, ``below_corrected_p``), ``mean_average_precision``
        (per group), ``hitk`` (and ``hits``, an array), ``enrichment`` that were asked for;
        ``headline`` (``metric``, ``value``: :func:`headline`) and ``summary`` (the same numbers
        as one row).

    Examples
    --------
    >>> from cpzarr.profiles import read_profiles  # doctest: +SKIP
    >>> results = evaluate(read_profiles("consensus.parquet"), "moa", mask="control != 'negcon'")  # doctest: +SKIP
    >>> results["headline"]  # doctest: +SKIP
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metrics {unknown}; evaluate computes {list(METRICS)}")
    profiles, names, z, codes, idx, queries = _prepare(profiles, groups, mask, None, method, dtype)
    results = {}
    if {"mean_average_precision", "precision_recall", "hitk"} & set(metrics):
        ranks = _positive_ranks(z, codes, queries, block_size, progress, "evaluate")
        if "precision_recall" in metrics:
            ks = default_k(int(ranks.n_pos.max()) if ranks.n_pos.size else 0, k)
            results["precision_recall"] = _precision_frame(profiles, names, idx, ranks, ks)
        if "mean_average_precision" in metrics:
            ap = _average_precision_frame(profiles, names, idx, ranks)
            ap = add_p_values(ap, null_size=null_size, seed=seed, threshold=threshold)
            results["average_precision"] = ap
            results["mean_average_precision"] = mean_average_precision(
                groups=names, ap=ap, null_size=null_size, seed=seed, threshold=threshold
            )
        if "hitk" in metrics:
            results["hits"], results["hitk"] = _hitk_tables(ranks, percent_list)
    if "precision_recall_pooled" in metrics:
        sizes = np.bincount(codes)
        largest = int(sizes[codes[queries]].max()) - 1 if queries.size else 0
        with warnings.catch_warnings():
            if "precision_recall" in metrics:
                warnings.simplefilter("ignore", UserWarning)  # warned once already
            ks = default_k(largest, k)
        results["precision_recall_pooled"] = _pooled_frame(
            profiles, names, z, codes, idx, queries, ks, block_size, progress
        )
    del z
    if "enrichment" in metrics:
        wanted = default_percentiles(idx.size, percentiles)
        results["enrichment"] = _enrichment(
            profiles, names, wanted, mask, method, dtype, block_size, progress
        )
    results["headline"] = headline(results, threshold)
    results["summary"] = pd.DataFrame([dict(zip(results["headline"]["metric"],
                                                results["headline"]["value"]))])
    return results


def headline_percentile(table, min_pairs=MIN_TOP_PAIRS):
    """The row of an enrichment table at the highest percentile whose "similar" side holds at
    least ``min_pairs`` ordered pairs (else the lowest percentile).

    Examples
    --------
    >>> t = pd.DataFrame({"percentile": [99.0, 95.0], "same_above": [3, 30], "different_above": [1, 9]})
    >>> float(headline_percentile(t)["percentile"])
    95.0
    """
    ordered = table.sort_values("percentile", ascending=False)
    above = ordered["same_above"] + ordered["different_above"]
    enough = ordered[above >= min_pairs]
    return enough.iloc[0] if len(enough) else ordered.iloc[-1]


def headline(results, threshold=0.05):
    """The headline numbers of :func:`evaluate`'s tables, by the rules of this module.

    Parameters
    ----------
    results : dict of str to pandas.DataFrame
        Tables of :func:`evaluate` (any subset).
    threshold : float
        Significance level named in the fraction-retrieved line.

    Returns
    -------
    pandas.DataFrame
        ``metric``, ``value``: ``n_queries``, ``mAP``, ``fraction retrieved (corrected
        p<…)``, ``precision@R``, ``enrichment@P``, ``precision@K``, ``recall@K`` as available.

    Examples
    --------
    >>> headline(evaluate(profiles, "moa"))  # doctest: +SKIP
    """
    rows = []
    ap = results.get("average_precision")
    maps = results.get("mean_average_precision")
    if ap is not None:
        rows.append(("n_queries", float(len(ap))))
    if maps is not None:
        rows.append(("mAP", float(maps["mean_average_precision"].mean())))
        rows.append((f"fraction retrieved (corrected p<{threshold:g})",
                     float(np.mean(maps["corrected_p_value"] < threshold)) if len(maps) else np.nan))
    if ap is not None:
        rows.append(("precision@R", float(ap["precision_at_r"].mean())))
    if results.get("enrichment") is not None and len(results["enrichment"]):
        top = headline_percentile(results["enrichment"])
        rows.append((f"enrichment@{top['percentile']:g}", float(top["odds_ratio"])))
    pr = results.get("precision_recall")
    if pr is not None:
        for value, table in pr.groupby("k"):
            rows.append((f"precision@{value}", float(table["precision"].mean())))
        for value, table in pr.groupby("k"):
            rows.append((f"recall@{value}", float(table["recall"].mean())))
    return pd.DataFrame(rows, columns=["metric", "value"])
