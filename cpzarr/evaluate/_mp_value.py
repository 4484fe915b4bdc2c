"""mp-value (Hutz et al. 2013, DOI 10.1177/1087057112469257) as Cytominer-eval computes it.

For each perturbation: its replicates and the controls are stacked and projected by PCA onto
the fewest components keeping 90 % of the variance (centred, full SVD), each component scaled
by its explained-variance ratio; the statistic is the squared Mahalanobis distance between the
replicates' mean and the controls (controls' mean and maximum-likelihood covariance, inverted
with a pseudo-inverse). The p-value is the share of ``n_permutations`` random relabellings of
the stacked rows (as many "replicates" as before) whose statistic is at least the observed one.
"""

import numpy as np
import pandas as pd
from scipy import linalg

from cpzarr.errors import InputError

from ._similarity import _check_profiles, _group_names, _sample_mask


def _scaled_pca(x, variance=0.9):
    """Rows of ``x`` on the fewest principal components keeping ``variance``, scaled by ratio."""
    centred = x - x.mean(axis=0)
    u, s, _ = linalg.svd(centred, full_matrices=False, check_finite=False)
    explained = s**2 / max(x.shape[0] - 1, 1)
    total = explained.sum()
    if total == 0:
        raise InputError("mp_value: replicates and controls are identical (no variance)")
    ratio = explained / total
    n = int(np.searchsorted(np.cumsum(ratio), variance, side="right")) + 1
    n = min(n, ratio.size)
    return u[:, :n] * s[:n] * ratio[:n]


def _mahalanobis2(point, reference):
    """Squared Mahalanobis distance of ``point`` to the rows of ``reference`` (MLE covariance)."""
    centre = reference.mean(axis=0)
    deviations = reference - centre
    covariance = deviations.T @ deviations / reference.shape[0]
    precision = linalg.pinvh(covariance, check_finite=False)
    d = point - centre
    return float(d @ precision @ d)


def _one_mp_value(pert, controls, n_permutations, rng, rescale=True):
    stacked = np.concatenate([pert, controls])
    pca = _scaled_pca(stacked) if rescale else _plain_pca(stacked)
    n = pert.shape[0]
    observed = _mahalanobis2(pca[:n].mean(axis=0), pca[n:])
    mask = np.zeros(stacked.shape[0], dtype=bool)
    mask[:n] = True
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        chosen = rng.permutation(mask)
        null[i] = _mahalanobis2(pca[chosen].mean(axis=0), pca[~chosen])
    return observed, float(np.mean(null >= observed))


def _plain_pca(x, variance=0.9):
    """As _scaled_pca without the scaling by explained-variance ratio."""
    centred = x - x.mean(axis=0)
    u, s, _ = linalg.svd(centred, full_matrices=False, check_finite=False)
    ratio = s**2 / (s**2).sum()
    n = min(int(np.searchsorted(np.cumsum(ratio), variance, side="right")) + 1, ratio.size)
    return u[:, :n] * s[:n]


def mp_value(
    profiles,
    replicate="compound",
    control="control == 'negcon'",
    mask=None,
    n_permutations=100,
    seed=0,
    rescale_pca=True,
):
    """mp-value of every perturbation against the controls (Cytominer-eval's ``mp_value``).

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Replicate-level profiles.
    replicate : str or list of str
        Coordinate(s) whose equal values are one perturbation (Cytominer-eval's
        ``replicate_id``); samples with a missing value are left out.
    control : str or boolean array (sample,)
        Which samples are the controls.
    mask : None, boolean array (sample,) or str, optional
        Samples to use at all.
    n_permutations : int
        Random relabellings per perturbation (Cytominer-eval: 100).
    seed : int
        Seed of a ``numpy.random.RandomState`` drawn in perturbation order. Cytominer-eval draws
        from NumPy's global legacy generator in the same order, so after ``numpy.random.seed(seed)``
        it draws the same permutations: mp-values then agree up to permutations whose distance
        ties the observed one to rounding (each moves the p-value by 1 / n_permutations).
    rescale_pca : bool
        Scale the components by explained-variance ratio, as Cytominer-eval does by default.

    Returns
    -------
    pandas.DataFrame
        One row per perturbation, sorted by its values as strings (the controls are one, as in
        Cytominer-eval): the ``replicate`` coordinates, ``n_replicates``, ``distance`` (squared
        Mahalanobis distance) and ``mp_value``.

    Examples
    --------
    >>> mp_value(wells, "compound", "control == 'negcon'").query("mp_value < 0.05")  # doctest: +SKIP
    """
    profiles, values = _check_profiles(profiles)
    names = _group_names(profiles, replicate, "replicate")
    keep = _sample_mask(profiles, mask, "mask")
    is_control = _sample_mask(profiles, control, "control") & keep
    if is_control.sum() < 2:
        raise InputError(f"mp_value needs at least 2 control samples; control={control!r} matches "
                         f"{int(is_control.sum())}")
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise InputError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    frame = pd.DataFrame({n: profiles[n].values for n in names})[keep]
    controls = values[is_control].astype(np.float64)
    rng = np.random.RandomState(seed)
    rows = []
    # Cytominer-eval's order: pandas groupby on the raw values (sorted, missing left out).
    for key, positions in frame.groupby(names, sort=True).groups.items():
        pert = values[np.asarray(positions)].astype(np.float64)
        distance, p = _one_mp_value(pert, controls, int(n_permutations), rng, rescale_pca)
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, len(positions), distance, p))
    return pd.DataFrame(rows, columns=[*names, "n_replicates", "distance", "mp_value"])
