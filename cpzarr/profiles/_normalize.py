"""normalize: standardize, robustize, mad_robustize and inverse normal transforms fitted per group."""

import json
import warnings

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.profiles._samples import (
    as_dask, check_profiles, group_codes, like_input, record_step, sample_mask,
)
from cpzarr.profiles._grouped import check_fit, constant_report, map_groups
from cpzarr.profiles._inverse_normal import transform_function
from cpzarr.profiles._segments import segment_reduce, segments_of

METHODS = ("standardize", "robustize", "mad_robustize", "inverse_normal", "rank_inverse_normal")
#: Other names of the methods (``int`` is the JUMP profiling recipe's step name).
ALIASES = {"int": "inverse_normal"}
MAD_SCALE = 1.4826
_EPS = np.finfo(np.float64).eps
# Fitting rows per block. Rows of a block are extracted from every input chunk read before the
# block can run, so the fit holds about two blocks of them: 8 MB keeps that below a 1,024-well
# chunk of 6,400 float32 features (32 MB blocks held 130 MB of rows at LINCS scale).
_FIT_BLOCK_BYTES = 8 * 2**20


class ZeroScaleWarning(UserWarning):
    """Features whose scale is zero in the fitting samples of a group."""


def normalize(
    profiles,
    method="standardize",
    by="plate",
    samples="all",
    epsilon=1e-18,
    match_pycytominer=False,
    n_quantiles=1000,
    rank_offset=3 / 8,
):
    """Normalize features per group with statistics fitted on all or a subset of samples.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    method : {"standardize", "robustize", "mad_robustize", "inverse_normal", "rank_inverse_normal"}
        ``(x - mean) / std`` (population std, ddof 0); ``(x - median) / IQR`` (25th to 75th
        linear-interpolated percentile, not rescaled); ``(x - median) / (1.4826 · MAD)``:
        NaN is ignored when fitting. ``"inverse_normal"`` (alias ``"int"``): Pycytominer's
        quantile-based inverse normal transform, each feature mapped through the
        ``min(n_quantiles, n)`` quantiles of the group's n fitting samples to the standard
        normal (scikit-learn's ``QuantileTransformer``, output clipped to ±5.2);
        ``"rank_inverse_normal"``: the JUMP recipe's rank formula ``Φ⁻¹((r - c) / (n - 2c + 1))``,
        r the value's average rank among the fitting samples (between them for other samples).
        The two INT methods refuse NaN in the fitting samples (an ``InputError`` naming the group
        and features).
    by : str, list of str or None, default "plate"
        Coordinates whose combinations form the groups fitted separately (None: one group,
        as one Pycytominer ``normalize`` call).
    samples : "all", boolean mask over sample, or str
        Samples the statistics are fitted on, e.g. ``'control == "negcon"'``
        (Pycytominer's ``samples``); the transform applies to every sample of the group.
    epsilon : float, default 1e-18
        Added to the MAD when ``match_pycytominer`` is True (Pycytominer's ``mad_robustize_epsilon``).
    match_pycytominer : bool, default False
        Reproduce Pycytominer's numbers also for zero-scale features: a zero MAD then gives
        ``(x - median) / epsilon`` (values near 1e18).
    n_quantiles : int, default 1000
        Quantiles of ``"inverse_normal"`` (Pycytominer's ``inverse_normal_n_quantiles``).
    rank_offset : float, default 3/8
        c of ``"rank_inverse_normal"`` (Blom's 3/8; 0.5 is Hazen's, 0 van der Waerden's).

    Returns
    -------
    profiles : DataArray (sample, feature)
        Same dtype (statistics in float64), dask-backed when the input is. ``attrs`` record the step
        and ``zero_scale_features`` (JSON: group → feature names).

    Notes
    -----
    The INT methods run group-local: with groups that are runs of samples (plates) each chunk
    is moved to hold whole groups and fits and transforms them where it is read; other
    groupings (``by=None``) are done in blocks of whole columns (all samples, a few features).
    All fitting samples are used: scikit-learn subsamples 10,000 at random beyond that, so
    Pycytominer's numbers then vary from run to run. A feature constant in a group's fitting
    samples maps to -5.2 (as Pycytominer's) and is reported in a ``ZeroScaleWarning``.

    Zero-scale rule: a feature whose scale in a group's fitting samples is zero (std: constant
    within rounding, as scikit-learn decides; IQR or MAD below 10 machine epsilons) is centred
    and divided by 1, and reported in a ``ZeroScaleWarning`` and in ``attrs``. Pycytominer does
    the same for standardize and robustize; for mad_robustize it divides by epsilon, which only
    ``match_pycytominer=True`` reproduces.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=4, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> z = normalize(p, method="mad_robustize", samples='control == "negcon"')
    >>> z.sizes == p.sizes
    True
    """
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise InputError(f"normalize method {method!r} is not one of {METHODS} (or aliases {sorted(ALIASES)})")
    p = check_profiles(profiles)
    mask = sample_mask(p, samples)
    codes, keys = group_codes(p, by)
    fit_counts = np.bincount(codes[mask], minlength=len(keys))
    if (fit_counts == 0).any():
        empty = [", ".join(f"{k}={v}" for k, v in row.items()) for row in keys[fit_counts == 0].to_dict("records")]
        raise InputError(f"no fitting samples ({samples!r}) in these groups; choose other samples or groups", empty)

    x = as_dask(p)
    if method in ("inverse_normal", "rank_inverse_normal"):
        return _inverse_normal(profiles, p, x, codes, keys, mask, method, by, samples, n_quantiles, rank_offset)
    d = x.shape[1]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    if len(starts) == len(keys):
        stats = _fit_runs(x, codes, mask, starts, method)
    else:
        fit_rows = np.flatnonzero(mask)
        order, lengths = segments_of(codes[fit_rows])
        stats = segment_reduce(
            x, lengths, lambda block, lengths: _fit(block, lengths, method), 2 * d, order=fit_rows[order],
            block_bytes=_FIT_BLOCK_BYTES,
        ).compute()
    center, scale = stats[:, :d], stats[:, d:]
    _refuse_infinite(center, keys, by, p["feature"].values, samples)

    zero = _zero_scale(method, center, scale, fit_counts)
    report = {}
    for g in np.flatnonzero(zero.any(axis=1)):
        label = "/".join(str(v) for v in keys.iloc[g].values) if by is not None else "all"
        report[label] = [str(f) for f in p["feature"].values[zero[g]]]
    if report:
        n_features = int(zero.any(axis=0).sum())
        rule = f"divided by epsilon={epsilon}" if (match_pycytominer and method == "mad_robustize") else "centred, not scaled"
        warnings.warn(
            f"{n_features} features have zero {method} scale in the fitting samples of "
            f"{len(report)} group(s) ({rule}): {_preview(report)}",
            ZeroScaleWarning,
            stacklevel=2,
        )
    if method == "mad_robustize" and match_pycytominer:
        scale = scale + epsilon
    else:
        scale = np.where(zero, 1.0, scale)

    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64
    code_chunks = da.from_array(codes, chunks=(x.chunks[0],))
    result = da.map_blocks(
        _apply, x, code_chunks[:, None], center, scale, out_dtype, dtype=out_dtype
    )
    out = xr.DataArray(result, dims=p.dims, coords=p.coords, name="profiles", attrs=dict(p.attrs))
    out.attrs["zero_scale_features"] = json.dumps(report)
    record_step(out, "normalize", {
        "method": method, "by": by, "samples": samples, "epsilon": epsilon,
        "match_pycytominer": match_pycytominer,
    })
    return like_input(profiles, out)


def _inverse_normal(profiles, p, x, codes, keys, mask, method, by, samples, n_quantiles, rank_offset):
    if method == "inverse_normal" and (not isinstance(n_quantiles, (int, np.integer)) or n_quantiles < 2):
        raise InputError(f"normalize inverse_normal: n_quantiles must be an integer >= 2, got {n_quantiles!r}")
    if method == "rank_inverse_normal" and not 0 <= rank_offset < 0.5:
        raise InputError(f"normalize rank_inverse_normal: rank_offset must be in [0, 0.5), got {rank_offset!r}")
    features = np.asarray(p["feature"].values)
    constant = check_fit(x, codes, mask, keys, features, f"normalize {method}")
    report = constant_report(constant, keys, features)
    if report:
        warnings.warn(
            f"{int(constant.any(axis=0).sum())} features are constant in the fitting samples of "
            f"{len(report)} group(s) (mapped to one value): {_preview(report)}",
            ZeroScaleWarning,
            stacklevel=3,
        )
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64
    func = transform_function(method, n_quantiles=n_quantiles, rank_offset=rank_offset)
    result = map_groups(x, codes, mask, func, np.float64).astype(out_dtype)
    out = xr.DataArray(result, dims=p.dims, coords=p.coords, name="profiles", attrs=dict(p.attrs))
    out.attrs["zero_scale_features"] = json.dumps(report)
    params = {"method": method, "by": by, "samples": samples}
    params.update({"n_quantiles": n_quantiles} if method == "inverse_normal" else {"rank_offset": rank_offset})
    record_step(out, "normalize", params)
    return like_input(profiles, out)


def _fit_runs(x, codes, mask, starts, method):
    """Statistics of groups that are runs of consecutive samples (a plate's wells), chunk by chunk.

    Chunk boundaries move back to the start of the group they cut, so that every group lies in
    one chunk and each chunk is reduced where it is read: the fit streams through the input like
    the transform does, instead of gathering the fitting rows of groups across chunks.
    """
    bounds = np.cumsum((0,) + x.chunks[0])
    snapped = starts[np.searchsorted(starts, bounds[1:-1], side="right") - 1]
    bounds = np.unique(np.r_[0, snapped, len(codes)])
    x = x.rechunk({0: tuple(np.diff(bounds))})
    parts = []
    for block, lo, hi in zip(x.to_delayed()[:, 0], bounds[:-1], bounds[1:]):
        rows = np.flatnonzero(mask[lo:hi])
        # Fitting rows keep the input order, in which each group's rows are consecutive.
        fit_codes = codes[lo:hi][rows]
        lengths = np.diff(np.flatnonzero(np.r_[True, fit_codes[1:] != fit_codes[:-1], True]))
        parts.append(dask.delayed(_fit_rows)(block, rows, lengths, method))
    stats = np.empty((len(starts), 2 * x.shape[1]))
    stats[codes[starts]] = np.concatenate(dask.compute(*parts))
    return stats


def _fit_rows(block, rows, lengths, method):
    return _fit(np.asarray(block)[rows], lengths, method)


def _fit(block, lengths, method):
    block = np.asarray(block)
    d = block.shape[1]
    out = np.full((len(lengths), 2 * d), np.nan)
    start = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features give NaN statistics
        for i, n in enumerate(lengths):
            # float64 one group at a time (a block's float64 copy was twice the block).
            rows = block[start:start + n].astype(np.float64)
            start += n
            if method == "standardize":
                center = np.nanmean(rows, axis=0)
                scale = np.sqrt(np.nanvar(rows, axis=0))
            elif method == "robustize":
                center = np.nanmedian(rows, axis=0)
                q25, q75 = np.nanpercentile(rows, [25, 75], axis=0)
                scale = q75 - q25
            else:
                center = np.nanmedian(rows, axis=0)
                scale = MAD_SCALE * np.nanmedian(np.abs(rows - center), axis=0)
            # ±inf in the fitting rows: a statistic it makes non-finite is marked +inf (all-NaN
            # features give NaN), and normalize refuses it rather than return a NaN feature.
            infected = np.isinf(rows).any(axis=0) & ~(np.isfinite(center) & np.isfinite(scale))
            center[infected] = scale[infected] = np.inf
            out[i, :d], out[i, d:] = center, scale
    return out


def _refuse_infinite(center, keys, by, features, samples):
    """Refuse statistics that ±inf in the fitting samples made non-finite (see ``_fit``)."""
    bad = np.isposinf(center)
    if not bad.any():
        return
    problems = []
    for g, f in zip(*np.nonzero(bad)):
        group = "/".join(str(v) for v in keys.iloc[g].values) if by is not None else "all samples"
        problems.append(f"feature {features[f]} in {group}")
    raise InputError(
        f"normalize: ±inf in the fitting samples ({samples!r}) of these features makes their "
        "statistics undefined; fix or drop those values (NaN is ignored when fitting, inf is not)",
        problems,
    )


def _zero_scale(method, center, scale, counts):
    if method == "standardize":
        # scikit-learn's rule for a constant feature: variance within rounding of its mean.
        n = counts[:, None].astype(np.float64)
        variance = scale**2
        bound = n * _EPS * variance + (n * center * _EPS) ** 2
        return variance <= bound
    return scale < 10 * _EPS


def _apply(block, codes, center, scale, dtype, rows=64):
    # float64 arithmetic (a float32 centre would lose digits of x - centre) on a few dozen rows
    # at a time, so that the float64 temporaries stay a few MB; rows of one group (a plate's
    # wells are contiguous) subtract one centre row by broadcasting, not a gathered copy per row.
    codes = codes[:, 0]
    out = np.empty(block.shape, dtype=dtype)
    if not len(codes):
        return out
    edges = np.flatnonzero(np.diff(codes)) + 1
    for first, stop in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(codes)]])):
        code = codes[first]
        for start in range(first, stop, rows):
            end = min(start + rows, stop)
            values = np.subtract(block[start:end], center[code], dtype=np.float64)
            values /= scale[code]
            out[start:end] = values
    return out


def _preview(report):
    items = [f"{group}: {', '.join(features[:5])}{' ...' if len(features) > 5 else ''}" for group, features in report.items()]
    return "; ".join(items[:5]) + (" ..." if len(items) > 5 else "")
