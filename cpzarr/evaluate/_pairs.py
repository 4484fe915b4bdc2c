"""Average precision with copairs' pair rules: positives and negatives from metadata.

copairs 0.5.5 defines, for two distinct profiles, a *positive pair* when they share every
``pos_sameby`` value and differ in every ``pos_diffby`` value, and a *negative pair* likewise
from ``neg_sameby`` / ``neg_diffby``. A query's ranked list holds its positive and its negative
partners (a partner that is both counts once as each); everything else is left out. Ranking and
AP follow copairs: similarities as float32, key ``float32(1 - s)`` ascending, positives first
among equal keys, ``AP = mean_k k / (k + negatives before positive k)``.

A *multilabel* coordinate (several MOAs or targets per compound, as a list or a ``"|"``-joined
string) must be one of ``pos_sameby``: a query then gets one ranked list per label it carries,
its positives being the partners with that label (copairs' ``multilabel.average_precision``);
in a negative rule it means "shares a label" (sameby) or "shares none" (diffby).

Everything runs one block of queries at a time: the block's rule masks (block × samples,
booleans), then similarities to only the columns some query of the block pairs with, so
phenotypic activity (negatives = the controls) multiplies against the controls and the
replicates, not against every profile.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from cpzarr.errors import InputError

from ._similarity import _block_rows, _group_names, _map_blocks

_MULTI = "_multilabel"


@dataclass
class PairRules:
    """Coordinate names of copairs' four pair rules, plus NSCB exclusions and a multilabel column."""

    pos_sameby: list
    pos_diffby: list = field(default_factory=list)
    neg_sameby: list = field(default_factory=list)
    neg_diffby: list = field(default_factory=list)
    multilabel: str | None = None
    exclude_same: list = field(default_factory=list)
    # Default (cpzarr's classic) negatives: partners not equal on all these (None: use neg rules).
    neg_not_same: list | None = None

    def columns(self):
        """Every coordinate the rules read, in first-mention order."""
        names = [
            *self.pos_sameby, *self.pos_diffby, *self.neg_sameby, *self.neg_diffby,
            *self.exclude_same, *(self.neg_not_same or []),
        ]
        return list(dict.fromkeys(names))


def make_rules(
    profiles,
    groups=None,
    pos_sameby=None,
    pos_diffby=None,
    neg_sameby=None,
    neg_diffby=None,
    multilabel=None,
    exclude_same=None,
):
    """Validated PairRules from the user's arguments (``Metadata_`` prefixes accepted).

    ``pos_sameby`` defaults to ``groups``. With no negative rule at all, negatives are the
    partners that are not positives under ``pos_sameby`` (cpzarr's default, all other groups);
    with a multilabel coordinate, the partners sharing none of the query's labels.
    """
    pos_same = _group_names(profiles, pos_sameby if pos_sameby is not None else groups,
                            "pos_sameby (or groups)")
    pos_diff = _group_names(profiles, pos_diffby, "pos_diffby", allow_empty=True)
    neg_same = _group_names(profiles, neg_sameby, "neg_sameby", allow_empty=True)
    neg_diff = _group_names(profiles, neg_diffby, "neg_diffby", allow_empty=True)
    exclude = _group_names(profiles, exclude_same, "exclude_same", allow_empty=True)
    multi = None
    if multilabel is not None:
        multi = _group_names(profiles, multilabel, "multilabel")
        if len(multi) != 1:
            raise InputError(f"multilabel names one coordinate, got {multilabel!r}")
        multi = multi[0]
        if multi not in pos_same:
            raise InputError(
                f"multilabel coordinate {multi!r} must be one of pos_sameby {pos_same} "
                "(positives share a label; copairs asks the same)"
            )
    for what, same, diff in (("pos", pos_same, pos_diff), ("neg", neg_same, neg_diff)):
        both = set(same) & set(diff)
        if both:
            raise InputError(f"{what}_sameby and {what}_diffby must be disjoint; both name {sorted(both)}")
    default_negatives = neg_sameby is None and neg_diffby is None
    if default_negatives and multi is not None:
        # "Not a positive" for labels: shares none of the query's labels.
        neg_same, neg_diff, default_negatives = [], [multi], False
    return PairRules(
        pos_sameby=pos_same, pos_diffby=pos_diff, neg_sameby=neg_same, neg_diffby=neg_diff,
        multilabel=multi, exclude_same=exclude,
        neg_not_same=[c for c in pos_same if c != multi] if default_negatives else None,
    )


def _codes(values):
    """Integer codes of values compared as strings (missing values match each other)."""
    codes, _ = pd.factorize(pd.Series(np.asarray(values).astype(str)))
    return codes.astype(np.int64)


def _combined(columns):
    """One code per sample for the tuple of several code arrays (None for no columns)."""
    if not columns:
        return None
    if len(columns) == 1:
        return columns[0]
    codes, _ = pd.factorize(pd.MultiIndex.from_arrays(columns))
    return codes.astype(np.int64)


def _split_labels(value, sep):
    """The labels of one multilabel cell: a list/tuple/array, or a ``sep``-joined string."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [str(v) for v in value]
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        items = []
    else:
        items = str(value).split(sep)
    return list(dict.fromkeys(i.strip() for i in items if str(i).strip()))


class _Coded:
    """The rules turned into integer codes over the kept samples."""

    def __init__(self, profiles, rules, idx, sep):
        self.n = idx.size

        def codes_of(names):
            return [_codes(profiles[n].values[idx]) for n in names if n != rules.multilabel]

        self.pos_same = _combined(codes_of(rules.pos_sameby))
        self.pos_diff = codes_of(rules.pos_diffby)
        self.neg_same = _combined(codes_of(rules.neg_sameby))
        self.neg_diff = codes_of(rules.neg_diffby)
        self.exclude = codes_of(rules.exclude_same)
        self.neg_not_same = (
            _combined(codes_of(rules.neg_not_same)) if rules.neg_not_same is not None else None
        )
        self.multi = None
        self.neg_multi = None
        if rules.multilabel is not None:
            cells = [_split_labels(v, sep) for v in profiles[rules.multilabel].values[idx]]
            self.labels = np.array(sorted({label for cell in cells for label in cell}), dtype=object)
            where = {label: i for i, label in enumerate(self.labels)}
            rows = np.repeat(np.arange(len(cells)), [len(c) for c in cells])
            cols = np.array([where[label] for cell in cells for label in cell], dtype=np.int64)
            self.multi = sparse.csr_matrix(
                (np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(len(cells), len(self.labels))
            )
            self.multi_t = self.multi.T.tocsr()
            if rules.multilabel in rules.neg_sameby:
                self.neg_multi = "same"
            elif rules.multilabel in rules.neg_diffby:
                self.neg_multi = "diff"

    def _rule(self, rows, same, diffs):
        """Boolean (len(rows), n): partners equal on ``same`` and different on every ``diffs``."""
        mask = np.ones((rows.size, self.n), dtype=bool)
        if same is not None:
            mask &= same[rows, None] == same[None, :]
        for codes in diffs:
            mask &= codes[rows, None] != codes[None, :]
        return mask

    def masks(self, rows, labels):
        """Positive and negative masks of a block of units (sample rows, label or -1)."""
        pos = self._rule(rows, self.pos_same, self.pos_diff)
        if self.multi is not None:
            pos &= self.multi_t[labels].toarray().astype(bool)
        if self.neg_not_same is not None:
            neg = self.neg_not_same[rows, None] != self.neg_not_same[None, :]
        else:
            neg = self._rule(rows, self.neg_same, self.neg_diff)
        if self.neg_multi is not None:
            shared = (self.multi[rows] @ self.multi.T).toarray() > 0
            neg &= shared if self.neg_multi == "same" else ~shared
        for codes in self.exclude:
            allowed = codes[rows, None] != codes[None, :]
            pos &= allowed
            neg &= allowed
        b = rows.size
        pos[np.arange(b), rows] = False
        neg[np.arange(b), rows] = False
        return pos, neg


def _sum_like_copairs(owner, slot, precision, n_pos, lengths):
    """AP per row, summed as copairs does: each row's full ranked list of precision-or-zero
    reduced with ``numpy.add.reduceat`` (pairwise summation), so the result is bit-identical."""
    ap = np.full(n_pos.size, np.nan)
    live = np.flatnonzero(n_pos > 0)
    if live.size == 0:
        return ap
    start = np.zeros(n_pos.size, dtype=np.int64)
    start[live] = np.concatenate([[0], np.cumsum(lengths[live])[:-1]])
    flat = np.zeros(int(lengths[live].sum()))
    flat[start[owner] + slot] = precision
    ap[live] = np.add.reduceat(flat, start[live]) / n_pos[live]
    return ap


def pair_average_precision(profiles, z, idx, queries, rules, block_size, progress, sep="|"):
    """Per-unit AP table under ``rules``; ``z`` holds the standardized kept rows, ``idx`` their
    positions in ``profiles``, ``queries`` the kept positions that are queries."""
    coded = _Coded(profiles, rules, idx, sep)
    if coded.multi is not None:
        sub = coded.multi[queries]
        unit_sample = queries[np.repeat(np.arange(queries.size), np.diff(sub.indptr))]
        unit_label = sub.indices.astype(np.int64)
    else:
        unit_sample = queries
        unit_label = np.full(queries.size, -1, dtype=np.int64)

    def block(start, stop):
        rows, labels = unit_sample[start:stop], unit_label[start:stop]
        b = rows.size
        pos, neg = coded.masks(rows, labels)
        cols = np.flatnonzero(pos.any(axis=0) | neg.any(axis=0))
        pos, neg = pos[:, cols], neg[:, cols]
        n_pos = pos.sum(axis=1)
        n_neg = neg.sum(axis=1)
        if cols.size == 0:
            nan = np.full(b, np.nan)
            return start, n_pos, n_neg, nan, nan, np.zeros(b, dtype=bool)
        key = np.float32(1) - (z[rows] @ z[cols].T).astype(np.float32)
        neg_keys = np.where(neg, key, np.float32(np.inf))
        neg_keys.sort(axis=1)
        owner, col = np.nonzero(pos)
        pos_key = key[owner, col]
        order = np.lexsort((pos_key, owner))
        owner, pos_key = owner[order], pos_key[order]
        ptr = np.concatenate([[0], np.cumsum(n_pos)])
        before = np.empty(owner.size, dtype=np.int64)
        for r in np.flatnonzero(n_pos):
            before[ptr[r] : ptr[r + 1]] = np.searchsorted(
                neg_keys[r, : n_neg[r]], pos_key[ptr[r] : ptr[r + 1]], side="left"
            )
        position = np.arange(owner.size) - ptr[owner] + 1
        precision = position / (position + before)
        ap = _sum_like_copairs(owner, position + before - 1, precision, n_pos, n_pos + n_neg)
        with np.errstate(invalid="ignore", divide="ignore"):
            within = np.bincount(owner, weights=position + before <= n_pos[owner], minlength=b)
            at_r = np.where(n_pos > 0, within / n_pos, np.nan)
        first = np.zeros(b, dtype=bool)
        has = n_pos > 0
        first[has] = before[ptr[:-1][has]] == 0
        return start, n_pos, n_neg, ap, at_r, first

    n_units = unit_sample.size
    n_pos = np.zeros(n_units, dtype=np.int64)
    n_neg = np.zeros(n_units, dtype=np.int64)
    ap = np.full(n_units, np.nan)
    at_r = np.full(n_units, np.nan)
    top = np.zeros(n_units, dtype=bool)
    size = _block_rows(block_size, z.shape[0])
    for start, p, q, a, r, t in _map_blocks(block, n_units, size, progress, "average_precision"):
        stop = start + p.size
        n_pos[start:stop], n_neg[start:stop], ap[start:stop] = p, q, a
        at_r[start:stop], top[start:stop] = r, t

    frame = pd.DataFrame({"sample": idx[unit_sample]})
    for name in rules.columns() + ([rules.multilabel] if rules.multilabel else []):
        if name == rules.multilabel:
            frame[name] = coded.labels[unit_label]
        else:
            frame[name] = profiles[name].values[idx[unit_sample]]
    frame["n_pos_pairs"] = n_pos
    frame["n_total_pairs"] = n_pos + n_neg
    ap[n_pos == 0] = np.nan
    frame["average_precision"] = ap
    frame["precision_at_r"] = at_r
    frame["nearest_is_positive"] = top
    return frame
