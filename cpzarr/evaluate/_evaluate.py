"""All retrieval metrics of one profile table from a single pass over its similarities."""

import pandas as pd

from ._enrichment import enrichment as _enrichment
from ._hitk import _hitk_tables
from ._map import _average_precision_frame, mean_average_precision
from ._precision import _check_k, _positive_ranks, _precision_frame, _prepare


def evaluate(
    profiles,
    groups,
    mask=None,
    k=(1, 5, 10, 20, 50, 100),
    percentiles=(99.5, 99.0, 98.5, 98.0, 97.5, 97.0),
    percent_list=tuple(range(1, 101)),
    null_size=10_000,
    seed=0,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Precision/Recall@K, AP/mAP with p-values, Precision@R, Hit@K and Enrichment at once.

    The per-query metrics share one blocked pass (one matrix product per block), Enrichment
    takes its own two passes; the numbers equal those of the single-metric functions.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    groups : str or list of str
        Sample coordinate(s) defining positives (e.g. ``"moa"``).
    mask : None, boolean array (sample,) or str, optional
        Samples to keep, e.g. ``"control != 'negcon'"``.
    k, percentiles, percent_list, null_size, seed
        As in :func:`precision_recall`, :func:`enrichment`, :func:`hitk` and
        :func:`mean_average_precision`.
    method, dtype, block_size, progress
        As in :func:`precision_recall`.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``precision_recall``, ``average_precision`` (with ``precision_at_r``),
        ``mean_average_precision``, ``hitk`` (the scores; the hits list is ``hits``, an array),
        ``enrichment``, and ``summary`` (one row of headline numbers).

    Examples
    --------
    >>> from cpzarr.profiles import read_profiles  # doctest: +SKIP
    >>> results = evaluate(read_profiles("consensus.parquet"), "moa", mask="control != 'negcon'")  # doctest: +SKIP
    >>> results["summary"]  # doctest: +SKIP
    """
    ks = _check_k(k)
    profiles, names, z, codes, idx, queries = _prepare(profiles, groups, mask, None, method, dtype)
    ranks = _positive_ranks(z, codes, queries, block_size, progress, "evaluate")
    del z
    ap = _average_precision_frame(profiles, names, idx, ranks)
    hits, scores = _hitk_tables(ranks, percent_list)
    results = {
        "precision_recall": _precision_frame(profiles, names, idx, ranks, ks),
        "average_precision": ap,
        "mean_average_precision": mean_average_precision(
            groups=names, ap=ap, null_size=null_size, seed=seed
        ),
        "hitk": scores,
        "hits": hits,
        "enrichment": _enrichment(
            profiles, names, percentiles, mask, method, dtype, block_size, progress
        ),
    }
    maps = results["mean_average_precision"]
    results["summary"] = _summary(results, maps)
    return results


def _summary(results, maps):
    """One row of headline numbers, the way the study reports a profile set."""
    enrichment = results["enrichment"].iloc[0]
    ap = results["average_precision"]
    pr = results["precision_recall"]
    row = {
        "n_queries": len(ap),
        "precision_at_r": ap["precision_at_r"].mean(),
        "mean_average_precision": ap["average_precision"].mean(),
        "fraction_groups_significant": maps["below_corrected_p"].mean(),
        f"enrichment_{enrichment['percentile']:g}": enrichment["odds_ratio"],
    }
    for value, table in pr.groupby("k"):
        row[f"precision_at_{value}"] = table["precision"].mean()
    return pd.DataFrame([row])
