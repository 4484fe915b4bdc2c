"""Batch correction: PCA, TVN (EFAAR), CORAL and Harmony on ``DataArray[sample, feature]``."""

import warnings
from functools import partial

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.profiles._grouped import check_fit, constant_report, group_label
from cpzarr.profiles._samples import (
    as_dask, check_profiles, group_codes, like_input, metadata_frame, record_step, sample_mask,
)
from cpzarr.profiles._segments import sum_over_row_blocks
from cpzarr.profiles._spherize import _fit_gram, _fit_scatter, _moments

_NEGCON = 'control == "negcon"'


def _fit_covariance(x, rows, features, dtype, standardize=False, top=None):
    """Mean, scale, and the eigen-decomposition of the fitting rows' covariance (rank columns).

    Returns ``mean, sd, eigenvalues (rank,), vectors (feature, rank)`` with the covariance
    ``V diag(e) Vᵀ`` (ddof 1); an n × n Gram matrix when n ≤ d, else the d × d scatter. With
    ``top`` (a count) and n > d, only the ``top`` largest eigenpairs of the scatter are computed
    (``scipy.linalg.eigh(subset_by_index=...)``: 50 of 6,400 in a fraction of the full time).
    """
    method = "PCA-cor" if standardize else "PCA"
    n, d = len(rows), x.shape[1]
    if top is not None and n > d and not standardize and top < d // 4:
        return _top_scatter(x[rows], n, d, top, features, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # constant features were checked before
        if n <= d:
            mean, sd, s, v, rank = _fit_gram(x, rows, method, True, features, dtype)
        else:
            mean, sd, s, v, rank = _fit_scatter(x[rows], n, d, method, True, features)
    rank = max(int(rank), 1)
    return mean, sd, s[:rank] ** 2 / (n - 1), np.asarray(v[:, :rank], dtype=dtype)


def _top_scatter(fit, n, d, top, features, dtype):
    from scipy.linalg import eigh

    shift = np.asarray(fit[:1].compute(), dtype=np.float64)[0]
    moments = sum_over_row_blocks(_moments, fit.astype(np.float64) - shift)
    if (moments[d + 1] > 0).any():
        raise InputError("pca cannot fit on NaN; drop these features first (feature_select drop_na_columns)",
                         [str(f) for f in features[moments[d + 1] > 0]])
    shifted_mean = moments[d] / n
    scatter = moments[:d] - n * np.outer(shifted_mean, shifted_mean)
    eigval, v = eigh(scatter, subset_by_index=[d - top, d - 1], overwrite_a=True, check_finite=False)
    return shift + shifted_mean, np.ones(d), eigval[::-1] / (n - 1), np.asarray(v[:, ::-1], dtype=dtype)


def _signed(v):
    """Each column's sign chosen so that its largest loading is positive (deterministic PCs)."""
    sign = np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
    return v * np.where(sign == 0, 1, sign)


def _constant_error(x, mask, features, step, what):
    codes = np.zeros(len(mask), dtype=np.int64)
    keys = pd.DataFrame(index=[0])
    constant = check_fit(x, codes, mask, keys, features, step)
    if constant.any():
        raise InputError(
            f"{step}: features constant in the {what}; drop them first (feature_select "
            "operation variance_threshold)", constant_report(constant, keys, features)["all samples"])


def _components(n_components, eigenvalues, step):
    if n_components is None:
        return len(eigenvalues)
    if isinstance(n_components, float) and 0 < n_components < 1:
        explained = np.cumsum(eigenvalues) / eigenvalues.sum()
        return int(np.searchsorted(explained, n_components) + 1)
    if isinstance(n_components, (int, np.integer)) and n_components >= 1:
        return min(int(n_components), len(eigenvalues))
    raise InputError(f"{step}: n_components must be a count >= 1, a variance fraction in (0, 1) or None, "
                     f"got {n_components!r}")


def _new_features(p, result, names, step, params):
    coords = {k: c for k, c in p.coords.items() if "feature" not in c.dims}
    coords["feature"] = ("feature", np.array(names, dtype=object))
    out = xr.DataArray(result, dims=("sample", "feature"), coords=coords, name="profiles", attrs=dict(p.attrs))
    record_step(out, step, params)
    return out


def _project(block, mean, sd, v, dtype):
    z = (np.asarray(block, dtype=v.dtype) - mean) / sd
    return (z @ v).astype(dtype, copy=False)


def pca(profiles, n_components=50, samples="all"):
    """Project profiles on the principal components of some samples.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    n_components : int, float or None, default 50
        Components kept: a count, a fraction of the variance to explain (the JUMP recipe's
        ``PCA`` step keeps 0.98), or None for every component the fitting samples span.
    samples : "all", boolean mask over sample, or str
        Samples the components are fitted on (centred on their mean).

    Returns
    -------
    profiles : DataArray (sample, feature)
        Features ``PC1 ...``; each component's sign makes its largest loading positive.
        ``attrs["explained_variance"]`` holds the kept components' variances (JSON list).

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=4, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> pca(p, n_components=5).sizes["feature"]
    5
    """
    p = check_profiles(profiles)
    mask = sample_mask(p, samples)
    rows = np.flatnonzero(mask)
    if len(rows) < 2:
        raise InputError(f"pca needs at least 2 fitting samples ({samples!r} selects {len(rows)})")
    x = as_dask(p)
    features = np.asarray(p["feature"].values)
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.dtype(np.float64)
    _constant_error(x, mask, features, "pca", "fitting samples")
    top = int(n_components) if isinstance(n_components, (int, np.integer)) else None
    mean, sd, eigenvalues, v = _fit_covariance(x, rows, features, np.float64, top=top)
    k = _components(n_components, eigenvalues, "pca")
    v = _signed(v[:, :k])
    result = x.map_blocks(partial(_project, mean=mean, sd=np.ones_like(sd), v=v, dtype=out_dtype),
                          chunks=(x.chunks[0], (k,)), dtype=out_dtype, meta=np.empty((0, 0), out_dtype))
    out = _new_features(p, result, [f"PC{i}" for i in range(1, k + 1)], "pca",
                        {"n_components": n_components, "samples": samples})
    out.attrs["explained_variance"] = str([float(e) for e in eigenvalues[:k]])
    return like_input(profiles, out)


def _per_batch(p, by, mask, step, minimum=2):
    codes, keys = group_codes(p, by)
    counts = np.bincount(codes[mask], minlength=len(keys))
    short = [f"{group_label(keys, g)}: {counts[g]} control sample(s)" for g in np.flatnonzero(counts < minimum)]
    if short:
        raise InputError(f"{step}: every batch needs at least {minimum} fitting (control) samples; "
                         "drop these batches or choose other samples", short)
    return codes, keys


def tvn(profiles, samples=_NEGCON, by="batch", n_components=None):
    """Typical variation normalization (EFAAR): PCA whitening on controls, then per-batch scaling.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    samples : "all", boolean mask over sample, or str, default 'control == "negcon"'
        The controls.
    by : str, list of str or None, default "batch"
        Coordinates whose groups are centred and scaled on their own controls (None: skip
        that step).
    n_components : int, float or None, default None
        Components kept (None: every direction the controls span).

    Returns
    -------
    profiles : DataArray (sample, feature)
        Features ``PC1 ...``.

    Notes
    -----
    1. standardize every feature on all controls (mean, population std);
    2. project on the principal components of the standardized controls and divide each by its
       standard deviation there (PCA whitening: the controls get identity covariance);
    3. in each batch, centre and scale each component on that batch's controls (mean,
       population std, as scikit-learn's ``StandardScaler``).

    EFAAR follows with CORAL per batch as an option: ``coral(tvn(p))``.
    A batch with fewer than 2 controls, a feature constant in the controls, or NaN in them is
    an ``InputError`` naming it.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=8, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> t = tvn(p)
    >>> t.sizes["feature"]
    16
    """
    p = check_profiles(profiles)
    mask = sample_mask(p, samples)
    rows = np.flatnonzero(mask)
    codes, keys = _per_batch(p, by, mask, "tvn") if by is not None else (None, None)
    if len(rows) < 2:
        raise InputError(f"tvn needs at least 2 control samples ({samples!r} selects {len(rows)})")
    x = as_dask(p)
    features = np.asarray(p["feature"].values)
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.dtype(np.float64)
    _constant_error(x, mask, features, "tvn", "controls")
    mean, sd, eigenvalues, v = _fit_covariance(x, rows, features, np.float64, standardize=True)
    k = _components(n_components, eigenvalues, "tvn")
    w = _signed(v[:, :k]) / np.sqrt(eigenvalues[:k])
    project = partial(_project, mean=mean, sd=sd, v=w, dtype=np.float64)
    y = x.map_blocks(project, chunks=(x.chunks[0], (k,)), dtype=np.float64, meta=np.empty((0, 0)))
    if by is not None:
        controls = np.asarray(y[rows].compute())
        centre = np.zeros((len(keys), k))
        scale = np.ones((len(keys), k))
        for g in range(len(keys)):
            c = controls[codes[rows] == g]
            centre[g], scale[g] = c.mean(axis=0), c.std(axis=0)
        flat = scale <= np.finfo(np.float64).eps * 10
        if flat.any():
            bad = [f"{group_label(keys, g)}: components {', '.join(f'PC{j + 1}' for j in np.flatnonzero(flat[g])[:10])}"
                   for g in np.flatnonzero(flat.any(axis=1))]
            raise InputError("tvn: components without variance in a batch's controls; keep fewer "
                             "components (n_components)", bad)
        code_chunks = da.from_array(codes, chunks=(x.chunks[0],))[:, None]
        y = da.map_blocks(_by_code, y, code_chunks, centre=centre, scale=scale, dtype=np.float64)
    out = _new_features(p, y.astype(out_dtype), [f"PC{i}" for i in range(1, k + 1)], "tvn",
                        {"samples": samples, "by": by, "n_components": n_components})
    return like_input(profiles, out)


def _by_code(block, codes, centre, scale):
    codes = np.asarray(codes)[:, 0]
    return (np.asarray(block) - centre[codes]) / scale[codes]


def _power(eigenvalues, vectors, regularization, exponent):
    """Factors of ``(V diag(e) Vᵀ + λI)^p = λ^p I + V diag((e + λ)^p - λ^p) Vᵀ``."""
    base = regularization ** exponent
    return base, vectors, (eigenvalues + regularization) ** exponent - base


def _apply_power(z, factors):
    base, v, coef = factors
    return base * z + ((z @ v) * coef) @ v.T


def _coral_block(block, codes, sources, target, source_means, target_mean, dtype, rows=256):
    block = np.asarray(block)
    codes = np.asarray(codes)[:, 0]
    out = np.empty(block.shape, dtype=dtype)
    for start in range(0, len(block), rows):
        part, part_codes = block[start:start + rows], codes[start:start + rows]
        for code in np.unique(part_codes):
            sel = part_codes == code
            z = part[sel].astype(np.float64) - source_means[code]
            z = _apply_power(_apply_power(z, sources[code]), target)
            out[start:start + rows][sel] = z + target_mean
    return out


def coral(profiles, samples=_NEGCON, by="batch", regularization=1.0):
    """CORAL: align each batch's control covariance (and mean) to that of all controls.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    samples : "all", boolean mask over sample, or str, default 'control == "negcon"'
        The controls.
    by : str or list of str, default "batch"
    regularization : float, default 1.0
        λ added to both covariances' diagonals (CORAL's identity; EFAAR's TVN uses 0.5).

    Returns
    -------
    profiles : DataArray (sample, feature)
        For a sample x of batch b: ``(x - μ_b) (C_b + λI)^-½ (C_t + λI)^½ + μ_t``, with μ_b, C_b
        the mean and covariance (ddof 1) of b's controls and μ_t, C_t those of all controls.

    Notes
    -----
    Covariances are never formed: each is kept as its eigenvectors (at most one per control
    sample, from the n × n Gram matrix when there are fewer controls than features) and
    ``(C + λI)^p`` is applied as ``λ^p z + ((z V) diag((e + λ)^p - λ^p)) Vᵀ``, so 6,400
    features cost no 6,400² matrix per batch. A batch with fewer than 2 controls, or NaN in
    the controls, is an ``InputError`` naming it.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=8, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> coral(p).sizes == p.sizes
    True
    """
    if not regularization > 0:
        raise InputError(f"coral: regularization must be > 0, got {regularization!r}")
    p = check_profiles(profiles)
    mask = sample_mask(p, samples)
    codes, keys = _per_batch(p, by, mask, "coral")
    x = as_dask(p)
    features = np.asarray(p["feature"].values)
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.dtype(np.float64)
    check_fit(x, codes, mask, keys, features, "coral")
    rows = np.flatnonzero(mask)
    target_mean, _, e, v = _fit_covariance(x, rows, features, np.float64)
    target = _power(e, v, regularization, 0.5)
    sources, means = [], []
    for g in range(len(keys)):
        mean, _, e, v = _fit_covariance(x, rows[codes[rows] == g], features, np.float64)
        sources.append(_power(e, v, regularization, -0.5))
        means.append(mean)
    code_chunks = da.from_array(codes, chunks=(x.chunks[0],))[:, None]
    kernel = partial(_coral_block, sources=sources, target=target, source_means=np.array(means),
                     target_mean=target_mean, dtype=out_dtype)
    result = da.map_blocks(kernel, x, code_chunks, dtype=out_dtype, meta=np.empty((0, 0), out_dtype))
    out = xr.DataArray(result, dims=p.dims, coords=p.coords, name="profiles", attrs=dict(p.attrs))
    record_step(out, "coral", {"samples": samples, "by": by, "regularization": regularization})
    return like_input(profiles, out)


def harmony(profiles, batch="batch", n_components=50, theta=2.0, nclust=None, max_iter=10,
            random_state=0, **options):
    """Harmony (Korsunsky et al. 2019) on a PCA embedding, through harmonypy.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    batch : str or list of str, default "batch"
        Covariates to integrate over, e.g. ``["batch", "plate"]``.
    n_components : int, float or None, default 50
        PCA components the embedding keeps (as :func:`pca`, fitted on all samples); None runs
        Harmony on the features as given (they then are the embedding).
    theta : float or list, default 2.0
        Diversity penalty (one value, or one per covariate).
    nclust : int, optional
        Clusters (harmonypy's default: min(n / 30, 100); the JUMP recipe uses 300).
    max_iter : int, default 10
        Harmony iterations (the recipe uses 20).
    random_state : int, default 0
    **options
        Other ``harmonypy.run_harmony`` arguments (``sigma``, ``lamb``, ``tau``, ...).

    Returns
    -------
    profiles : DataArray (sample, feature)
        Features ``harmony_1 ...``; in memory (Harmony iterates over the whole embedding,
        n × components: 100,000 wells × 50 components is 40 MB).

    Notes
    -----
    The PCA runs out of core (:func:`pca`); only the embedding is held. Equal to
    ``harmonypy.run_harmony(embedding, metadata, batch, ...).Z_corr`` with the same arguments.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=8, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> harmony(p, n_components=8, nclust=4).sizes["feature"]
    8
    """
    try:
        import harmonypy
    except ImportError as error:  # pragma: no cover - an install without the extra
        raise InputError("harmony needs harmonypy: pip install 'cpzarr[batch]'") from error
    p = check_profiles(profiles)
    names = [batch] if isinstance(batch, str) else list(batch)
    meta = metadata_frame(p)
    missing = [n for n in names if n not in meta.columns]
    if missing:
        raise InputError(f"harmony: batch coordinates not found (available: {list(meta.columns)})", missing)
    embedded = pca(p, n_components=n_components) if n_components is not None else p
    data = np.asarray(embedded.values, dtype=np.float64)
    bad = ~np.isfinite(data).all(axis=0)
    if bad.any():
        raise InputError("harmony: NaN or infinite values in these features; drop them first",
                         [str(f) for f in np.asarray(embedded["feature"].values)[bad]])
    for name in names:
        if meta[name].nunique(dropna=False) < 2:
            raise InputError(f"harmony: coordinate {name!r} has a single value; nothing to integrate")
    covariates = meta[names].astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = harmonypy.run_harmony(data, covariates, names, theta=theta, nclust=nclust,
                                       max_iter_harmony=max_iter, random_state=random_state,
                                       verbose=False, **options)
    corrected = np.asarray(result.Z_corr)
    if corrected.shape != data.shape:
        corrected = corrected.T
    out_dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.dtype(np.float64)
    out = _new_features(embedded, corrected.astype(out_dtype),
                        [f"harmony_{i}" for i in range(1, data.shape[1] + 1)], "harmony",
                        {"batch": batch, "n_components": n_components, "theta": theta, "nclust": nclust,
                         "max_iter": max_iter, "random_state": random_state, **options})
    return out
