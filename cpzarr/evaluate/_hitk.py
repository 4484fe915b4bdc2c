"""Hit@K: where each query's positives land in its ranked neighbour list.

Cytominer-eval's definition: for each query, its neighbours are ranked 0, 1, 2, … by similarity
(here: descending, ties by sample position); the hits list holds the ranks of all positive
neighbours of all queries. For a percent p, with G queries and H hits,
``score(p) = #(hits with rank <= p·G/100) − floor(p·H/100)``: hits within the top p % of ranks
beyond what a uniform spread of the hits would put there.
"""

import numpy as np
import pandas as pd

from ._precision import _positive_ranks, _prepare


def hitk(
    profiles,
    groups,
    percent_list=tuple(range(1, 101)),
    mask=None,
    query=None,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Hit@K hits list and accumulated scores on percentage bins.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    groups : str or list of str
        Sample coordinate(s) whose equal values make positives (compared as strings).
    percent_list : int or sequence of int
        Percentages p of the ranks (default 1 … 100).
    mask : None, boolean array (sample,) or str, optional
        Samples to keep (subset evaluation: Hit@K is computed within the subset).
    query : None, boolean array (sample,) or str, optional
        Which kept samples are queries (default all).
    method, dtype, block_size, progress
        As in :func:`precision_recall`.

    Returns
    -------
    hits : numpy.ndarray of int
        Rank (0 = most similar neighbour) of every positive neighbour of every query, queries in
        sample order, ranks ascending within a query; ``numpy.bincount(hits // k)`` is the Hit@K histogram in bins of k ranks.
    scores : pandas.DataFrame
        One row per percent: ``percent``, ``rank_limit`` (p·G/100), ``hits`` (hits within it),
        ``expected`` (floor(p·H/100)), ``score`` (hits − expected) and ``normalized_score``
        (score / H).

    Examples
    --------
    >>> hits, scores = hitk(profiles, "moa", mask="control != 'negcon'")  # doctest: +SKIP
    >>> scores.plot(x="percent", y="normalized_score")  # doctest: +SKIP
    """
    profiles, names, z, codes, idx, queries = _prepare(profiles, groups, mask, query, method, dtype)
    ranks = _positive_ranks(z, codes, queries, block_size, progress, "hitk")
    return _hitk_tables(ranks, percent_list)


def _hitk_tables(ranks, percent_list):
    """The hits list and scores table from positive ranks."""
    percents = np.atleast_1d(np.asarray(percent_list, dtype=np.float64))
    owner = np.repeat(np.arange(ranks.n_pos.size), ranks.n_pos)
    hits = ranks.rank[np.lexsort((ranks.rank, owner))]
    n_queries, n_hits = ranks.n_pos.size, hits.size
    limits = percents * n_queries / 100.0
    within = np.searchsorted(np.sort(hits), limits, side="right")
    expected = np.floor(percents * n_hits / 100.0).astype(np.int64)
    scores = pd.DataFrame(
        {
            "percent": percents,
            "rank_limit": limits,
            "hits": within,
            "expected": expected,
            "score": within - expected,
        }
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        scores["normalized_score"] = scores["score"] / n_hits
    return hits, scores
