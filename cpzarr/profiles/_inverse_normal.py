"""Inverse normal transformations (INT) fitted per group: quantile-based and rank-based.

``inverse_normal`` reproduces Pycytominer 1.7.1's ``normalize(method="inverse_normal")``, a
scikit-learn ``QuantileTransformer(output_distribution="normal")`` with
``n_quantiles = min(n_quantiles, fitting samples)``; ``rank_inverse_normal`` is the plain rank
formula of the JUMP profiling recipe, ``Φ⁻¹((r - c) / (n - 2c + 1))`` with Blom's c = 3/8.
"""

from functools import partial

import numpy as np
from scipy import stats

# scikit-learn's QuantileTransformer bounds (sklearn.preprocessing._data.BOUNDS_THRESHOLD).
_BOUNDS = 1e-7
_CLIP = (stats.norm.ppf(_BOUNDS - np.spacing(1)), stats.norm.ppf(1 - (_BOUNDS - np.spacing(1))))


def transform_function(method, n_quantiles=1000, rank_offset=3 / 8):
    """``func(block, codes, mask)`` applying the chosen INT fitted per group within the block."""
    if method == "inverse_normal":
        return partial(_per_group, fit=partial(quantiles, n_quantiles=n_quantiles), apply=quantile_normal)
    return partial(_per_group, fit=partial(np.sort, axis=0), apply=partial(rank_normal, offset=rank_offset),
                   on_all=partial(_rank_all, offset=rank_offset))


def _per_group(block, codes, mask, fit, apply, on_all=None):
    out = np.empty(block.shape, dtype=np.float64)
    for code in np.unique(codes):
        rows = codes == code
        if on_all is not None and mask[rows].all():
            out[rows] = on_all(block[rows].astype(np.float64))
            continue
        fitted = fit(block[rows & mask].astype(np.float64))
        out[rows] = apply(block[rows].astype(np.float64), fitted)
    return out


def _rank_all(values, offset):
    """:func:`rank_normal` when every sample is a fitting sample: scipy's average ranks, all columns at once."""
    ranks = stats.rankdata(values, axis=0)
    return stats.norm.ppf((ranks - offset) / (len(values) - 2 * offset + 1))


def quantiles(rows, n_quantiles=1000):
    """(n_quantiles, feature) quantiles of the fitting rows, as QuantileTransformer.fit.

    All fitting rows are used (scikit-learn subsamples 10,000 rows at random beyond that).
    """
    n_q = min(n_quantiles, len(rows))
    references = np.linspace(0, 1, n_q, endpoint=True)
    q = np.nanpercentile(rows, references * 100, axis=0)
    # np.nanpercentile can break monotonicity by rounding: the same fix as scikit-learn's.
    return np.maximum.accumulate(q, axis=0)


def quantile_normal(values, q):
    """Map each column through its quantiles to the standard normal (QuantileTransformer)."""
    references = np.linspace(0, 1, len(q), endpoint=True)
    out = np.empty(values.shape, dtype=np.float64)
    for j in range(values.shape[1]):
        col, qj = values[:, j], q[:, j]
        with np.errstate(invalid="ignore"):
            low = col - _BOUNDS < qj[0]
            high = col + _BOUNDS > qj[-1]
        # Interpolation both ways, averaged: ties in the quantiles map to their middle.
        u = 0.5 * (np.interp(col, qj, references) - np.interp(-col, -qj[::-1], -references[::-1]))
        u[high] = 1.0
        u[low] = 0.0
        out[:, j] = u
    with np.errstate(invalid="ignore", divide="ignore"):
        out = stats.norm.ppf(out)
    return np.clip(out, *_CLIP)


def rank_normal(values, ordered, offset=3 / 8):
    """``Φ⁻¹((r - c) / (n - 2c + 1))`` with r the mid-rank of each value among the sorted fitting values.

    For a fitting sample r is its average rank (ties share it), as ``scipy.stats.rankdata``;
    another sample ranks between the fitting values around it (r = 0.5 below all of them,
    n + 0.5 above), so the result is finite for every sample.
    """
    n = len(ordered)
    out = np.empty(values.shape, dtype=np.float64)
    for j in range(values.shape[1]):
        less = np.searchsorted(ordered[:, j], values[:, j], side="left")
        upto = np.searchsorted(ordered[:, j], values[:, j], side="right")
        out[:, j] = less + (upto - less + 1) / 2
    return stats.norm.ppf((out - offset) / (n - 2 * offset + 1))
