"""spherize: PCA / ZCA whitening (and their correlation variants) fitted on control samples."""

import warnings
from functools import partial

import numpy as np
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.profiles._samples import as_dask, check_profiles, like_input, record_step, sample_mask
from cpzarr.profiles._segments import sum_over_row_blocks

METHODS = ("PCA", "ZCA", "PCA-cor", "ZCA-cor")
_EPS = np.finfo(np.float64).eps


class SpherizeWarning(UserWarning):
    """The fitting samples do not span every feature direction (rank < features)."""


def spherize(profiles, method="ZCA-cor", samples="all", epsilon=1e-6, center=True):
    """Whiten profiles with a transform fitted on some samples (usually the negative controls).

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    method : {"ZCA-cor", "ZCA", "PCA-cor", "PCA"}, default "ZCA-cor"
        ``-cor`` variants standardize (population std) before whitening, the others centre.
        PCA variants return components ``PC1 ...`` instead of features.
    samples : "all", boolean mask over sample, or str
        Fitting samples, e.g. ``'control == "negcon"'``; fitted on the whole dataset at once.
    epsilon : float, default 1e-6
        Added to the singular values of the fitting matrix (Pycytominer's convention).
    center : bool, default True
        Centre on the fitting samples' mean (required by the ``-cor`` variants).

    Returns
    -------
    profiles : DataArray (sample, feature)
        Dask-backed when the input is; same float dtype.

    Notes
    -----
    With the centred (or standardized) fitting matrix ``X = U S Vᵀ`` of n samples, the PCA
    transform is ``W = V diag(√(n-1) / (s + ε))`` and ZCA is ``W Vᵀ``, so the whitened fitting
    samples have the identity covariance (up to ε). When n ≤ d, or features are collinear,
    the rank r is below d: as Pycytominer, singular values beyond r take the value of the r-th,
    and a ``SpherizeWarning`` says so. Then PCA variants return only the r meaningful
    components (Pycytominer also returns d - r columns along an arbitrary basis of the null
    space), with each component's sign chosen so that its largest loading is positive.

    With n ≤ d the fitting rows (n × d, no larger than a d × d covariance) are gathered once in
    the input dtype and the n × n Gram matrix is decomposed by ``eigh`` (right singular vectors
    ``V = Xᵀ U / s``, in the output's float precision); ZCA is then applied as
    ``null · z + ((z V) · (scale - null)) Vᵀ``, two thin products instead of a d × d matrix.
    Otherwise the scatter matrix is accumulated over chunks (one pass of shifted moments) and
    decomposed by ``eigh``. Rows are whitened a few hundred at a time.

    Features with zero variance in the fitting samples are left unscaled in the ``-cor``
    variants (they are reported) and fall in the rank-deficient directions above, so nothing
    becomes inf or NaN.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=8, n_batches=2, n_negcon=8, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> w = spherize(p, method="ZCA", samples='control == "negcon"')
    >>> w.sizes == p.sizes
    True
    """
    if method not in METHODS:
        raise InputError(f"spherize method {method!r} is not one of {METHODS}")
    if method.endswith("-cor") and not center:
        raise InputError(f"spherize method {method!r} needs center=True")
    p = check_profiles(profiles)
    mask = sample_mask(p, samples)
    fit_rows = np.flatnonzero(mask)
    n, d = len(fit_rows), p.sizes["feature"]
    if n < 2:
        raise InputError(f"spherize needs at least 2 fitting samples ({samples!r} selects {n})")
    x = as_dask(p)
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.dtype(np.float64)
    features = np.asarray(p["feature"].values)

    compute_dtype = np.dtype(np.float32) if out_dtype == np.float32 else np.dtype(np.float64)
    if n <= d:
        mean, sd, s, v, rank = _fit_gram(x, fit_rows, method, center, features, compute_dtype)
    else:
        mean, sd, s, v, rank = _fit_scatter(x[fit_rows], n, d, method, center, features)

    rank = max(rank, 1)
    if rank < d:
        warnings.warn(
            f"spherize: the {n} fitting samples span {rank} of {d} feature directions; the other "
            f"directions are scaled by the smallest non-zero singular value (Pycytominer's rule)"
            + ("; PCA returns the first {rank} components only".format(rank=rank) if method.startswith("PCA") else ""),
            SpherizeWarning,
            stacklevel=2,
        )
    scale = np.sqrt(n - 1) / (s[:rank] + epsilon)
    v_r = v[:, :rank]
    null_scale = 0.0
    if method.startswith("PCA"):
        # Singular vectors are defined up to sign: make each component's largest loading positive.
        sign = np.sign(v_r[np.abs(v_r).argmax(axis=0), np.arange(rank)])
        factors, coef = (v_r * (sign * scale)).astype(compute_dtype), None
        names = np.array([f"PC{i}" for i in range(1, rank + 1)], dtype=object)
    else:
        names = features
        if rank < d:
            null_scale = np.sqrt(n - 1) / (s[rank - 1] + epsilon)
        if n <= d or 2 * rank <= d:
            # ZCA = null·I + V diag(scale - null) Vᵀ applied as two thin products: no d × d matrix
            # (2·n·d·r operations, as few as one d × d product once r ≤ d/2, and no d²·r to form it).
            factors, coef = v_r.astype(compute_dtype, copy=False), (scale - null_scale).astype(compute_dtype)
        else:
            factors, coef = ((v_r * scale) @ v_r.T).astype(compute_dtype), None
    del v, v_r
    kernel = partial(
        _whiten, mean=mean.astype(compute_dtype), sd=sd.astype(compute_dtype), factors=factors,
        coef=coef, null=null_scale, dtype=out_dtype,
    )
    width = factors.shape[1] if method.startswith("PCA") else d
    result = x.map_blocks(kernel, chunks=(x.chunks[0], (width,)), dtype=out_dtype,
                          meta=np.empty((0, 0), out_dtype))

    coords = {k: c for k, c in p.coords.items() if "feature" not in c.dims}
    coords["feature"] = ("feature", names)
    out = xr.DataArray(result, dims=("sample", "feature"), coords=coords, name="profiles", attrs=dict(p.attrs))
    record_step(out, "spherize", {
        "method": method, "samples": samples, "epsilon": epsilon, "center": center,
        "n_fit": n, "rank": rank,
    })
    return like_input(profiles, out)


def _scale(variance, method, features):
    if not method.endswith("-cor"):
        return np.ones_like(variance)
    zero = variance <= 0
    if zero.any():
        warnings.warn(
            f"spherize {method}: {int(zero.sum())} features have zero variance in the fitting "
            f"samples and are not scaled: {', '.join(map(str, features[zero][:10]))}",
            SpherizeWarning,
            stacklevel=3,
        )
    return np.sqrt(np.where(zero, 1.0, variance))


def _whiten(block, mean, sd, factors, coef, null, dtype, rows=256):
    """One row block through the fitted transform: (x - mean) / sd, then the factors.

    A few hundred rows at a time keep the temporaries small (the products stay BLAS-efficient).
    """
    block = np.asarray(block)
    width = factors.shape[1] if coef is None else factors.shape[0]
    out = np.empty((len(block), width), dtype=dtype)
    for start in range(0, len(block), rows):
        z = block[start:start + rows].astype(mean.dtype) - mean
        z /= sd
        if coef is None:
            out[start:start + rows] = z @ factors
            continue
        t = z @ factors
        t *= coef
        part = t @ factors.T
        if null:
            z *= null
            part += z
        out[start:start + rows] = part
    return out


def _gather(x, rows):
    """Rows of a dask array as one numpy array, filled chunk by chunk (no concatenated copy)."""
    out = np.empty((len(rows), x.shape[1]), dtype=x.dtype)
    bounds = np.cumsum((0,) + x.chunks[0])
    for i in range(x.numblocks[0]):
        lo, hi = np.searchsorted(rows, bounds[i:i + 2])
        if hi > lo:
            out[lo:hi] = np.asarray(x.blocks[i].compute())[rows[lo:hi] - bounds[i]]
    return out


def _column_blocks(d, n, budget=16 * 2**20):
    step = max(1, int(budget // max(8 * n, 1)))
    return [slice(j, min(j + step, d)) for j in range(0, d, step)]


def _fit_gram(x, fit_rows, method, center, features, dtype):
    """Fit on n ≤ d samples through the n × n Gram matrix of the centred (scaled) fitting rows.

    The fitting rows are held once in the input dtype; float64 copies exist one block of
    columns at a time. ``eigh`` of the Gram matrix gives the squared singular values (an n³
    problem instead of the SVD's n²·d) and ``V = Xᵀ U / s`` the right singular vectors.
    """
    from scipy.linalg import blas, eigh  # imported where used: profiles that only normalize skip scipy

    fit = _gather(x, fit_rows)
    n, d = fit.shape
    _check_finite(~np.isfinite(fit).all(axis=0), features)
    columns = _column_blocks(d, n)
    mean = np.concatenate([fit[:, c].mean(axis=0, dtype=np.float64) for c in columns])
    variance = np.concatenate([fit[:, c].astype(np.float64).var(axis=0) for c in columns])
    if not center:
        mean = np.zeros(d)
    sd = _scale(variance, method, features)

    def scaled(c):
        return (fit[:, c].astype(np.float64) - mean[c]) / sd[c]

    gram = np.zeros((n, n), order="F")
    for c in columns:
        # Symmetric rank-k update into the lower triangle: half a matrix product, no partial sums.
        gram = blas.dsyrk(1.0, scaled(c), beta=1.0, c=gram, trans=0, lower=1, overwrite_c=1)
    eigval, u = eigh(gram, lower=True, overwrite_a=True, check_finite=False, driver="evr")
    del gram
    s = np.sqrt(np.clip(eigval[::-1], 0, None))
    rank = max(int((eigval > eigval[-1] * n * _EPS * 10).sum()), 1)
    # eigh sorts ascending: the last `rank` columns (a contiguous Fortran slice, scaled in place)
    # give V's columns, written in descending order.
    top = u[:, n - rank:]
    top /= s[:rank][::-1]
    v = np.empty((d, rank), dtype=dtype)
    for c in columns:
        v[c] = (scaled(c).T @ top)[:, ::-1]
    return mean, sd, s, v, rank


def _fit_scatter(fit, n, d, method, center, features):
    """Fit on n > d samples through the d × d scatter matrix accumulated over row blocks."""
    # One pass: sums and cross-products of rows shifted by the first fitting row, which keeps
    # the cancellation in "scatter - n·mean·meanᵀ" small without a separate pass for the mean.
    shift = np.asarray(fit[:1].compute(), dtype=np.float64)[0]
    shifted = fit.astype(np.float64) - shift
    moments = sum_over_row_blocks(_moments, shifted)
    _check_finite(moments[d + 1] > 0, features)
    total, cross = moments[d], moments[:d]
    shifted_mean = total / n
    mean = shift + shifted_mean if center else np.zeros(d)
    if center:
        scatter = cross - n * np.outer(shifted_mean, shifted_mean)
    else:
        scatter = cross + np.outer(shift, total) + np.outer(total, shift) + n * np.outer(shift, shift)
    sd = _scale(np.diag(scatter) / n, method, features)
    scatter = scatter / np.outer(sd, sd)
    eigval, v = np.linalg.eigh(scatter)
    eigval, v = eigval[::-1], v[:, ::-1]
    s = np.sqrt(np.clip(eigval, 0, None))
    # eigh resolves eigenvalues to about eps · largest, i.e. singular values to √eps.
    rank = int((eigval > eigval[0] * d * _EPS * 10).sum())
    return mean, sd, s, v, rank


def _moments(block):
    """Cross-products, column sums and counts of NaN or ±inf of one block, stacked as (d + 2, d)."""
    bad = ~np.isfinite(block)
    zeroed = np.where(bad, 0.0, block)
    return np.vstack([zeroed.T @ zeroed, zeroed.sum(axis=0), bad.sum(axis=0)])


def _check_finite(nan_features, features):
    if nan_features.any():
        raise InputError(
            "spherize cannot fit on NaN or ±inf in the fitting samples; drop these features first "
            "(feature_select drop_na_columns) or fix the values",
            [str(f) for f in features[nan_features]],
        )
