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
    # Fitting rows hold no NaN (normalize refuses them): np.percentile, vectorized over columns,
    # equals np.nanpercentile there, which loops over columns in Python (870,000 calls per
    # plate-wise fit at LINCS scale).
    percentile = np.nanpercentile if np.isnan(rows).any() else np.percentile
    q = percentile(rows, references * 100, axis=0)
    # np.nanpercentile can break monotonicity by rounding: the same fix as scikit-learn's.
    return np.maximum.accumulate(q, axis=0)


def quantile_normal(values, q, budget=32 * 2**20):
    """Map each column through its quantiles to the standard normal (QuantileTransformer).

    Columns are done together, a block of them at a time (``budget`` bytes of comparisons).
    """
    references = np.linspace(0, 1, len(q), endpoint=True)
    out = np.empty(values.shape, dtype=np.float64)
    step = max(1, int(budget // max(len(values) * len(q), 1)))
    for c in range(0, values.shape[1], step):
        cols = slice(c, c + step)
        x, qc = values[:, cols], q[:, cols]
        with np.errstate(invalid="ignore"):
            low = x - _BOUNDS < qc[0]
            high = x + _BOUNDS > qc[-1]
        # Interpolation both ways, averaged: ties in the quantiles map to their middle.
        u = 0.5 * (interp_columns(x, qc, references) - interp_columns(-x, -qc[::-1], -references[::-1]))
        u[high] = 1.0
        u[low] = 0.0
        out[:, cols] = u
    with np.errstate(invalid="ignore", divide="ignore"):
        out = stats.norm.ppf(out)
    return np.clip(out, *_CLIP)


def interp_columns(x, xp, fp):
    """``np.interp(x[:, j], xp[:, j], fp)`` for every column j at once, with numpy's arithmetic.

    ``xp`` (k, columns) ascending in each column; ``fp`` (k,) shared. NaN stays NaN.
    """
    k = len(xp)
    with np.errstate(invalid="ignore"):
        j = (xp[None, :, :] <= x[:, None, :]).sum(axis=1) - 1
    inner = (j >= 0) & (j < k - 1)
    jj = np.clip(j, 0, k - 2)
    x_lo = np.take_along_axis(xp, jj, axis=0)
    x_hi = np.take_along_axis(xp, jj + 1, axis=0)
    y_lo, y_hi = fp[jj], fp[jj + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (y_hi - y_lo) / (x_hi - x_lo)
        result = slope * (x - x_lo) + y_lo
    result = np.where(x_lo == x, y_lo, result)
    result = np.where(inner, result, np.where(j < 0, fp[0], fp[-1]))
    return np.where(np.isnan(x), np.nan, result)


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
