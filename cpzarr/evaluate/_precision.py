"""Retrieval ranks of each query's positives, and Precision@K / Recall@K from them.

One pass over blocks of queries finds, for every query, the rank of each of its positives among
all its neighbours. Precision@K, Recall@K, Precision@R, Hit@K and average precision all derive
from those ranks, so none of them needs a sorted n × n table.

Tie rules (documented, deterministic):

- **stable rank** (Precision@K, Recall@K, Precision@R, Hit@K): neighbours ordered by similarity,
  descending, then by sample position ascending; rank 0 is the most similar neighbour. float64
  similarities are first rounded to multiples of 2**-40 (~1e-12), so that mathematically equal
  similarities (duplicate profiles) tie whatever the block shape; float32 ones are ranked as
  computed, so their exact ties may break either way.
- **copairs rank** (average precision): similarities rounded to float32 and ranked on
  ``float32(1 - s)`` as copairs 0.5.5 does; neighbours tied on that key rank positives first.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

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
    sample_table,
)


@dataclass
class _Ranks:
    """Per-query positive ranks, flattened: query ``i`` owns ``rank[ptr[i]:ptr[i+1]]``."""

    sample: np.ndarray  # sample position (in the full profiles) of each query
    n_neighbors: int  # neighbours of every query (kept samples minus itself)
    n_pos: np.ndarray  # positives per query
    ptr: np.ndarray
    rank: np.ndarray  # stable 0-based rank of each positive
    neg_before: np.ndarray  # copairs rule: negatives strictly before each positive (key-sorted)


def _prepare(profiles, groups, mask, query, method, dtype):
    """Validate inputs; return (profiles, standardized kept rows, codes, kept idx, query positions)."""
    profiles, values = _check_profiles(profiles)
    names = _group_names(profiles, groups)
    keep = _sample_mask(profiles, mask, "mask")
    asked = _sample_mask(profiles, query, "query")
    idx = np.flatnonzero(keep)
    if idx.size < 2:
        raise InputError(f"only {idx.size} samples remain after the mask; need at least 2")
    z = _standardize(values, method, np.dtype(dtype), idx)
    codes = _group_codes(profiles, names)[idx]
    queries = np.flatnonzero(asked[idx])
    return profiles, names, z, codes, idx, queries


def _positive_ranks(z, codes, queries, block_size, progress, desc="ranks"):
    """Ranks of every query's positives (same code, itself excluded) among all kept samples."""
    n = z.shape[0]
    sizes = np.bincount(codes)
    n_pos_all = sizes[codes[queries]] - 1
    # Blocks of queries with similar positive counts waste little on padding.
    order = queries[np.argsort(n_pos_all, kind="stable")]
    by_group = np.argsort(codes, kind="stable")
    group_start = np.concatenate([[0], np.cumsum(sizes)])
    columns = np.arange(n)

    def block(start, stop):
        """Stable ranks and copairs negatives-before of one block's positives."""
        rows = order[start:stop]
        b = rows.size
        n_pos = sizes[codes[rows]] - 1
        width = int(n_pos.max())
        if width == 0:
            empty = np.zeros((b, 0), dtype=np.int64)
            return rows, n_pos, empty, empty
        pos_col = np.zeros((b, width), dtype=np.int64)
        valid = np.zeros((b, width), dtype=bool)
        for r, q in enumerate(rows):
            g = codes[q]
            members = by_group[group_start[g] : group_start[g + 1]]
            members = members[members != q]
            pos_col[r, : members.size] = members
            valid[r, : members.size] = True
        sims = _on_grid(z[rows] @ z.T)
        sims[np.arange(b), rows] = -np.inf
        if width <= _COMPARE_WIDTH:
            stable, ties, key_before, pos_key = _counts_by_comparison(sims, pos_col)
        else:
            stable, ties, key_before, pos_key = _counts_by_sorting(sims, pos_col)
        pos_key[~valid] = np.inf
        for r, j in zip(*np.nonzero(valid & (ties > 1))):
            tied = sims[r] == sims[r, pos_col[r, j]]
            stable[r, j] += int(np.count_nonzero(tied & (columns < pos_col[r, j])))
        # Positives strictly before each positive on the copairs key are not negatives.
        pos_before = (pos_key[:, None, :] < pos_key[:, :, None]).sum(axis=2)
        neg_before = key_before - pos_before
        sort = np.argsort(pos_key, axis=1, kind="stable")
        return rows, n_pos, stable, np.take_along_axis(neg_before, sort, axis=1)

    ranks, negs, npos_out = {}, {}, {}
    block_size = _block_rows(block_size, n)
    for rows, n_pos, stable, neg_sorted in _map_blocks(block, order.size, block_size, progress, desc):
        for r, q in enumerate(rows):
            p = n_pos[r]
            npos_out[q] = p
            ranks[q] = stable[r, :p]
            negs[q] = neg_sorted[r, :p]

    lengths = np.array([npos_out[q] for q in queries], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(lengths)])
    empty = np.empty(0, dtype=np.int64)
    return _Ranks(
        sample=queries,
        n_neighbors=n - 1,
        n_pos=lengths,
        ptr=ptr,
        rank=np.concatenate([ranks[q] for q in queries] + [empty]),
        neg_before=np.concatenate([negs[q] for q in queries] + [empty]),
    )


# Up to this many positives per query, count neighbours above each positive by direct
# comparison (3 passes over the block per positive); beyond, sort each row once (a sort costs
# about as much as a dozen comparison passes).
_COMPARE_WIDTH = 4


def _copairs_key(similarity):
    """copairs' ranking key: float32 ``1 - s``, ascending = most similar first."""
    return np.float32(1) - np.asarray(similarity).astype(np.float32)


def _counts_by_comparison(sims, pos_col):
    """Per positive: neighbours strictly more similar, equally similar, and with a smaller
    copairs key; and the positives' keys."""
    pos_sim = np.take_along_axis(sims, pos_col, axis=1)
    pos_key = _copairs_key(pos_sim)
    key = _copairs_key(sims)
    greater = np.empty(pos_sim.shape, dtype=np.int64)
    ties = np.empty(pos_sim.shape, dtype=np.int64)
    key_before = np.empty(pos_sim.shape, dtype=np.int64)
    for j in range(pos_sim.shape[1]):
        threshold = pos_sim[:, j : j + 1]
        greater[:, j] = (sims > threshold).sum(axis=1)
        ties[:, j] = (sims == threshold).sum(axis=1)
        key_before[:, j] = (key < pos_key[:, j : j + 1]).sum(axis=1)
    return greater, ties, key_before, pos_key


def _first_true(ordered, test, shape):
    """Vectorized lower bound: per (row, positive), the first index of its sorted row where
    ``test(values, slot)`` holds (the test is monotone along each row)."""
    b, n = ordered.shape
    low = np.zeros(shape, dtype=np.int64)
    high = np.full(shape, n, dtype=np.int64)
    row = np.arange(b)[:, None]
    for _ in range(int(n).bit_length()):
        middle = (low + high) // 2
        value = ordered[row, np.minimum(middle, n - 1)]
        go_left = test(value) & (middle < high)
        high = np.where(go_left, middle, high)
        low = np.where(go_left, low, np.minimum(middle + 1, high))
    return low


def _counts_by_sorting(sims, pos_col):
    """Same counts as _counts_by_comparison from one sort per row and binary searches."""
    n = sims.shape[1]
    pos_sim = np.take_along_axis(sims, pos_col, axis=1)
    pos_key = _copairs_key(pos_sim)
    ordered = np.sort(sims, axis=1)
    upto = _first_true(ordered, lambda v: v > pos_sim, pos_sim.shape)
    below = _first_true(ordered, lambda v: v >= pos_sim, pos_sim.shape)
    # Keys fall as similarities rise: those below a positive's key are a top run of the row.
    first = _first_true(ordered, lambda v: _copairs_key(v) < pos_key, pos_sim.shape)
    return n - upto, upto - below, n - first, pos_key


def _check_k(k):
    ks = np.atleast_1d(np.asarray(k))
    if ks.dtype.kind not in "iu" or (ks < 1).any():
        raise InputError(f"k must be positive integers, got {k!r}")
    return ks


def _query_frame(profiles, names, idx, ranks):
    """The metadata frame of the queries: sample position and group coordinates."""
    table = sample_table(profiles).iloc[idx[ranks.sample]]
    frame = pd.DataFrame({"sample": idx[ranks.sample]})
    for name in names:
        frame[name] = table[name].to_numpy()
    return frame


def _count_within(ranks, limits):
    """Per query, how many positives have stable rank < limit (limit per query)."""
    owner = np.repeat(np.arange(ranks.n_pos.size), ranks.n_pos)
    hit = ranks.rank < np.asarray(limits)[owner]
    return np.bincount(owner, weights=hit, minlength=ranks.n_pos.size)


def precision_recall(
    profiles,
    groups,
    k=(1, 5, 10, 20, 50, 100),
    mask=None,
    query=None,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
    pooled=False,
):
    """Precision@K and Recall@K of every query (or, ``pooled``, of every group), for a list of K.

    For a query, positives are the other kept samples with the same ``groups`` values (compared as
    strings, so missing values match each other, as Cytominer-eval does). Neighbours are ranked by
    similarity, descending, ties by sample position. Precision@K = positives among the first K / K
    (denominator K even when fewer neighbours exist); Recall@K = that count / all positives.
    Values are per query (average them for the study's macro mean).

    ``pooled=True`` is Cytominer-eval's grouped rule (``precision_recall`` with
    ``groupby_columns``): the (query, neighbour) pairs of all the group's queries are pooled,
    sorted by similarity, and the group's top K *pairs* give Precision@K = positives among them
    / K and Recall@K = those positives / all the group's positive pairs. It equals the per-query
    value when every group is one profile. Pairs of equal similarity are ordered by query then
    neighbour position (Cytominer-eval's unstable sort leaves them arbitrary; the two ordered
    pairs of one positive pair tie and are both positive, so only coincidental ties differ).

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    groups : str or list of str
        Sample coordinate(s) that define a group (``"moa"``, ``["compound", "dose"]``).
    k : int or sequence of int
        The K values.
    mask : None, boolean array (sample,) or str, optional
        Samples to keep at all (queries and neighbours), e.g. ``"control != 'negcon'"``.
    query : None, boolean array (sample,) or str, optional
        Which kept samples are queries; neighbours are still all kept samples. This is the
        study's subset evaluation: precision on the full set, averaged over a subset.
    method : {"pearson", "cosine"}
        Similarity.
    dtype : {"float64", "float32"}
        Precision of the similarity products; float32 is about twice as fast and may reorder
        neighbours whose similarities differ by less than ~1e-7.
    block_size : int, optional
        Queries per block; memory is about ``block_size * n_samples * 8`` bytes a few times
        over. Default: as many as keep one block near 2**24 similarities (128 MiB).
    progress : bool
        Show a progress bar.
    pooled : bool
        Pool each group's pairs as Cytominer-eval does (see above) instead of ranking per query.

    Returns
    -------
    pandas.DataFrame
        One row per (query, K): ``sample`` (position along ``sample``), the ``groups``
        coordinates, ``n_positives``, ``k``, ``precision``, ``recall`` (NaN without positives).
        Pooled: one row per (group, K): the ``groups`` coordinates, ``n_queries``,
        ``n_positives`` (positive pairs of the group), ``k``, ``precision``, ``recall``.

    Examples
    --------
    >>> pr = precision_recall(profiles, "moa", k=[5, 10], mask="control != 'negcon'")  # doctest: +SKIP
    >>> pr.groupby("k")[["precision", "recall"]].mean()  # doctest: +SKIP
    """
    ks = _check_k(k)
    profiles, names, z, codes, idx, queries = _prepare(profiles, groups, mask, query, method, dtype)
    if pooled:
        return _pooled_frame(profiles, names, z, codes, idx, queries, ks, block_size, progress)
    ranks = _positive_ranks(z, codes, queries, block_size, progress, "precision_recall")
    return _precision_frame(profiles, names, idx, ranks, ks)


def _pooled_frame(profiles, names, z, codes, idx, queries, ks, block_size, progress):
    """Cytominer-eval's grouped Precision/Recall@K from each query's top max(K) neighbours.

    A group's top K pairs lie among the union of its queries' own top K, so each query keeps
    only its best max(K) neighbours (similarity, positive?) and the group merges those.
    """
    n = z.shape[0]
    top = int(min(ks.max(), n - 1))
    sizes = np.bincount(codes)

    def block(start, stop):
        rows = queries[start:stop]
        sims = z[rows] @ z.T
        sims[np.arange(rows.size), rows] = -np.inf
        sims = _on_grid(sims)
        # The top-th largest similarity of each row; every neighbour at least that similar is a
        # candidate (ties included), ordered by similarity descending, then neighbour position.
        kth = -np.partition(-sims, top - 1, axis=1)[:, top - 1]
        best = np.empty((rows.size, top), dtype=np.int64)
        for r in range(rows.size):
            candidates = np.flatnonzero(sims[r] >= kth[r])
            order = np.argsort(-sims[r, candidates], kind="stable")[:top]
            best[r] = candidates[order]
        values = np.take_along_axis(sims, best, axis=1)
        return values, codes[best] == codes[rows][:, None]

    values, positive = [], []
    size = _block_rows(block_size, n)
    for v, p in _map_blocks(block, queries.size, size, progress, "precision_recall (pooled)"):
        values.append(v)
        positive.append(p)
    values = np.concatenate(values) if values else np.empty((0, top))
    positive = np.concatenate(positive) if positive else np.empty((0, top), dtype=bool)
    table = sample_table(profiles).iloc[idx[queries]].reset_index(drop=True)
    rows = []
    query_codes = codes[queries]
    for g in np.unique(query_codes):
        members = np.flatnonzero(query_codes == g)  # query order
        pooled_values = values[members].ravel()
        pooled_positive = positive[members].ravel()
        order = np.argsort(-pooled_values, kind="stable")
        hits = np.cumsum(pooled_positive[order])
        total = int(members.size * (sizes[g] - 1))
        first = table.iloc[members[0]]
        for value in ks:
            found = int(hits[min(value, hits.size) - 1]) if hits.size else 0
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = np.float64(found) / total if total else np.nan
            rows.append((*[first[name] for name in names], members.size, total, int(value),
                         found / value, recall))
    frame = pd.DataFrame(rows, columns=[*names, "n_queries", "n_positives", "k", "precision", "recall"])
    # Cytominer-eval's order: groups sorted by their values as strings, then K.
    order = frame[names].astype(str).apply(tuple, axis=1)
    frame = frame.assign(_key=order).sort_values(["_key", "k"], kind="stable").drop(columns="_key")
    return frame.reset_index(drop=True)


def _precision_frame(profiles, names, idx, ranks, ks):
    """The precision_recall table from positive ranks."""
    base = _query_frame(profiles, names, idx, ranks)
    base["n_positives"] = ranks.n_pos
    frames = []
    for value in ks:
        hits = _count_within(ranks, np.full(ranks.n_pos.size, value))
        frame = base.copy()
        frame["k"] = int(value)
        frame["precision"] = hits / value
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["recall"] = np.where(ranks.n_pos > 0, hits / ranks.n_pos, np.nan)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
