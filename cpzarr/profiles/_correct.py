"""Well-position correction and cell-count regression, the JUMP profiling recipe's corrections."""

from functools import partial

import numpy as np
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.profiles._grouped import check_fit, group_label, map_groups
from cpzarr.profiles._samples import (
    as_dask, check_profiles, group_codes, like_input, metadata_frame, record_step, sample_mask,
)

STATISTICS = ("median", "mean")


def correct_well_position(profiles, well="well", samples="all", statistic="median"):
    """Subtract from every profile its well position's median (or mean) across plates.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    well : str or list of str, default "well"
        Coordinate(s) naming the position; its groups span plates.
    samples : "all", boolean mask over sample, or str
        Samples the statistic is taken over (e.g. ``'control == "negcon"'``); every position
        must have some.
    statistic : {"median", "mean"}, default "median"
        The JUMP profiling recipe's ``wellpos`` step subtracts the mean (``statistic="mean"``
        reproduces it); the median resists a position's few strong treatments.

    Returns
    -------
    profiles : DataArray (sample, feature)
        Same dtype (arithmetic in float64); dask-backed when the input is.

    Notes
    -----
    Positions are groups spread over the whole table, so the work runs in blocks of whole
    columns (every sample, a few features each; 16 MB a block). NaN among the fitting samples
    is an ``InputError`` naming the position and features.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=4, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> c = correct_well_position(p)
    >>> bool(abs(float(c.where(c.well == "A01", drop=True).median("sample").max())) < 1e-6)
    True
    """
    if statistic not in STATISTICS:
        raise InputError(f"correct_well_position statistic {statistic!r} is not one of {STATISTICS}")
    p = check_profiles(profiles)
    mask = sample_mask(p, samples)
    codes, keys = group_codes(p, well)
    _check_every_group_fits(codes, mask, keys, "correct_well_position", samples)
    x = as_dask(p)
    check_fit(x, codes, mask, keys, np.asarray(p["feature"].values), "correct_well_position")
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64
    result = map_groups(x, codes, mask, partial(_subtract_center, statistic=statistic), out_dtype)
    out = xr.DataArray(result, dims=p.dims, coords=p.coords, name="profiles", attrs=dict(p.attrs))
    record_step(out, "correct_well_position", {"well": well, "samples": samples, "statistic": statistic})
    return like_input(profiles, out)


def _subtract_center(block, codes, mask, statistic):
    out = np.empty(block.shape, dtype=block.dtype if block.dtype.kind == "f" else np.float64)
    reduce = np.median if statistic == "median" else np.mean
    order = np.argsort(codes, kind="stable")
    edges = np.flatnonzero(np.diff(codes[order])) + 1
    for rows in np.split(order, edges):
        fit = rows[mask[rows]]
        center = reduce(block[fit].astype(np.float64), axis=0)
        out[rows] = block[rows] - center
    return out


def regress_cell_count(profiles, cell_count="cell_count", by=None, samples="all"):
    """Regress every feature on the well's cell count and keep the residuals.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    cell_count : str, default "cell_count"
        Coordinate along ``sample`` holding the count (``aggregate`` records ``cell_count``).
    by : str, list of str or None, default None
        Coordinates whose groups are fitted separately (None: one fit, as the JUMP recipe's
        ``cc`` step).
    samples : "all", boolean mask over sample, or str
        Samples the line is fitted on; the residual is taken for every sample of the group.

    Returns
    -------
    profiles : DataArray (sample, feature)
        ``x - (a + b · count)`` with ``a, b`` the ordinary least-squares line of the feature on
        the count over the fitting samples (the recipe's ``ols("feature ~ count")`` residuals).

    Notes
    -----
    A group whose fitting samples share one cell count (no line to fit), or with NaN in the
    fitting samples, is an ``InputError`` naming it. The recipe skips features with 100
    distinct values or fewer; here every feature is regressed.

    Examples
    --------
    >>> import numpy as np
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=4, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> p = p.assign_coords(cell_count=("sample", np.arange(p.sizes["sample"]) % 7 + 100))
    >>> r = regress_cell_count(p)
    >>> bool(abs(np.corrcoef(r.values[:, 0], p.cell_count.values)[0, 1]) < 1e-6)
    True
    """
    p = check_profiles(profiles)
    if cell_count not in p.coords or p[cell_count].dims != ("sample",):
        raise InputError(f"regress_cell_count: no coordinate {cell_count!r} along sample "
                         f"(aggregate records cell_count; available: {list(metadata_frame(p).columns)})")
    counts = np.asarray(p[cell_count].values, dtype=np.float64)
    mask = sample_mask(p, samples)
    codes, keys = group_codes(p, by)
    _check_every_group_fits(codes, mask, keys, "regress_cell_count", samples)
    bad = []
    for g in range(len(keys)):
        fit = counts[(codes == g) & mask]
        if not np.isfinite(fit).all():
            bad.append(f"{group_label(keys, g)}: {cell_count} is NaN or infinite in a fitting sample")
        elif np.ptp(fit) == 0:
            bad.append(f"{group_label(keys, g)}: every fitting sample has {cell_count}={fit[0]:g}; no line to fit")
    if bad:
        raise InputError("regress_cell_count: cannot fit the cell-count line", bad)
    x = as_dask(p)
    check_fit(x, codes, mask, keys, np.asarray(p["feature"].values), "regress_cell_count")
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64
    result = map_groups(x, codes, mask, _residuals, out_dtype, extra=counts)
    out = xr.DataArray(result, dims=p.dims, coords=p.coords, name="profiles", attrs=dict(p.attrs))
    record_step(out, "regress_cell_count", {"cell_count": cell_count, "by": by, "samples": samples})
    return like_input(profiles, out)


def _residuals(block, codes, mask, counts):
    out = np.empty(block.shape, dtype=block.dtype if block.dtype.kind == "f" else np.float64)
    for code in np.unique(codes):
        rows = codes == code
        fit = rows & mask
        c = counts[fit]
        y = block[fit].astype(np.float64)
        c_mean, y_mean = c.mean(), y.mean(axis=0)
        slope = ((c - c_mean) @ (y - y_mean)) / ((c - c_mean) @ (c - c_mean))
        out[rows] = block[rows] - (y_mean + np.outer(counts[rows] - c_mean, slope))
    return out


def _check_every_group_fits(codes, mask, keys, step, samples):
    fit_counts = np.bincount(codes[mask], minlength=len(keys))
    empty = [group_label(keys, g) for g in np.flatnonzero(fit_counts == 0)]
    if empty:
        raise InputError(f"{step}: no fitting samples ({samples!r}) in these groups; choose other samples", empty)
