"""Replicate reproducibility and grit, as Cytominer-eval defines them."""

import numpy as np
import pandas as pd

from cpzarr.errors import InputError

from ._enrichment import _pair_thresholds
from ._similarity import (
    _block_rows,
    _check_profiles,
    _group_codes,
    _group_names,
    _iter_blocks,
    _sample_mask,
    _standardize,
    sample_table,
)


def replicate_reproducibility(
    profiles,
    groups,
    quantile_over_null=0.95,
    mask=None,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Fraction of replicate pairs more similar than the null quantile of non-replicate pairs.

    Over unordered pairs of distinct kept samples: replicate pairs share all ``groups`` values
    (compared as strings). The null threshold is the ``quantile_over_null`` quantile (linear
    interpolation) of the non-replicate pairs, computed exactly without materialising them; the
    score is the fraction of replicate pairs strictly above it (Cytominer-eval's "percent
    replicating" at the pair level).

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    groups : str or list of str
        Sample coordinate(s) identifying replicates (e.g. ``["compound", "dose"]``).
    quantile_over_null : float
        Quantile in (0, 1].
    mask : None, boolean array (sample,) or str, optional
        Samples to keep.
    method, dtype, block_size, progress
        As in :func:`cpzarr.evaluate.enrichment`.

    Returns
    -------
    score : float
        Fraction of replicate pairs above the threshold.
    medians : pandas.DataFrame
        One row per replicate group with at least one pair: the ``groups`` coordinates,
        ``n_pairs``, ``median_similarity``, and ``threshold`` (the same for all rows).

    Examples
    --------
    >>> score, medians = replicate_reproducibility(profiles, ["compound", "dose"])  # doctest: +SKIP
    """
    if not 0 < quantile_over_null <= 1:
        raise InputError(f"quantile_over_null must be in (0, 1], got {quantile_over_null}")
    profiles, values = _check_profiles(profiles)
    names = _group_names(profiles, groups)
    idx = np.flatnonzero(_sample_mask(profiles, mask))
    if idx.size < 2:
        raise InputError(f"only {idx.size} samples remain after the mask; need at least 2")
    z = _standardize(values, method, np.dtype(dtype), idx)
    codes = _group_codes(profiles, names)[idx]
    [(threshold, counts)] = _pair_thresholds(
        z, codes, [quantile_over_null], "different", block_size, progress
    )
    if counts["same"] == 0:
        raise InputError(f"no replicate pairs: every sample has its own {names} values")
    score = counts["same_above"] / counts["same"]

    table = sample_table(profiles).iloc[idx].reset_index(drop=True)
    rows = []
    for code in np.flatnonzero(np.bincount(codes) > 1):
        members = np.flatnonzero(codes == code)
        sims = z[members] @ z[members].T
        upper = sims[np.triu_indices(members.size, k=1)]
        rows.append(
            (*table.loc[members[0], names], upper.size, float(np.median(upper)))
        )
    medians = pd.DataFrame(rows, columns=[*names, "n_pairs", "median_similarity"])
    medians["threshold"] = threshold
    return float(score), medians


def grit(
    profiles,
    perturbation,
    groups,
    control="control == 'negcon'",
    mask=None,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Grit: how far a perturbation's group-mates sit above the controls, in control SDs.

    For each perturbation (e.g. a compound or CRISPR guide), take the similarities of its
    profiles to the control profiles (reference) and to the profiles of other perturbations in
    its group (e.g. same gene or MOA); z-score the latter by the mean and population standard
    deviation of the former; grit is the mean z-score.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with metadata coordinates along ``sample``.
    perturbation : str
        Sample coordinate naming the perturbation (e.g. ``"compound"``).
    groups : str or list of str
        Sample coordinate(s) of the larger group (e.g. ``"moa"``).
    control : boolean array (sample,) or str
        Which samples are the controls (a :mod:`cpzarr.query` string on the sample coordinates or a mask).
    mask : None, boolean array (sample,) or str, optional
        Samples to keep at all.
    method, dtype, block_size, progress
        As in :func:`cpzarr.evaluate.precision_recall`.

    Returns
    -------
    pandas.DataFrame
        One row per non-control perturbation: ``perturbation`` value, the ``groups``
        coordinates, ``n_control_pairs``, ``n_group_pairs``, ``grit`` (NaN when no other
        perturbation shares its group).

    Examples
    --------
    >>> grit(profiles, "compound", "moa").sort_values("grit")  # doctest: +SKIP
    """
    profiles, values = _check_profiles(profiles)
    names = _group_names(profiles, groups)
    [pert_name] = _group_names(profiles, perturbation)
    keep = _sample_mask(profiles, mask)
    is_control = _sample_mask(profiles, control, "control") & keep
    idx = np.flatnonzero(keep)
    z = _standardize(values, method, np.dtype(dtype), idx)
    controls = np.flatnonzero(is_control[idx])
    if controls.size < 2:
        raise InputError(f"grit needs at least 2 control samples, found {controls.size}")
    group_codes = _group_codes(profiles, names)[idx]
    pert_codes = _group_codes(profiles, [pert_name])[idx]
    queries = np.flatnonzero(~is_control[idx])
    n_pert = pert_codes.max() + 1
    sums = np.zeros((5, n_pert))  # control sum, sum of squares, count; group sum, count

    block_size = _block_rows(block_size, z.shape[0])
    for start, stop in _iter_blocks(queries.size, block_size, progress, "grit"):
        rows = queries[start:stop]
        sims = z[rows] @ z.T
        reference = sims[:, controls]
        mates = (group_codes[rows][:, None] == group_codes[None, :]) & (
            pert_codes[rows][:, None] != pert_codes[None, :]
        )
        mates[:, controls] = False
        owner = pert_codes[rows]
        np.add.at(sums[0], owner, reference.sum(axis=1))
        np.add.at(sums[1], owner, (reference**2).sum(axis=1))
        np.add.at(sums[2], owner, reference.shape[1])
        np.add.at(sums[3], owner, np.where(mates, sims, 0.0).sum(axis=1))
        np.add.at(sums[4], owner, mates.sum(axis=1))

    table = sample_table(profiles).iloc[idx].reset_index(drop=True)
    present = np.unique(pert_codes[queries])
    first = {code: np.flatnonzero(pert_codes == code)[0] for code in present}
    mean = sums[0, present] / sums[2, present]
    sd = np.sqrt(np.maximum(sums[1, present] / sums[2, present] - mean**2, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        group_mean = np.where(sums[4, present] > 0, sums[3, present] / sums[4, present], np.nan)
        scores = (group_mean - mean) / sd
    frame = pd.DataFrame({pert_name: [table.loc[first[c], pert_name] for c in present]})
    for name in names:
        frame[name] = [table.loc[first[c], name] for c in present]
    frame["n_control_pairs"] = sums[2, present].astype(np.int64)
    frame["n_group_pairs"] = sums[4, present].astype(np.int64)
    frame["grit"] = scores
    return frame
