"""The standard mAP modes of the JUMP papers (copairs' recipes), and NSCB retrieval.

- **phenotypic activity**: can a treatment's replicates be told from the negative controls?
  Positives are the other replicates of the same treatment, negatives the controls; one mAP
  (and p-value) per treatment. Equal to copairs' recipe with a reference index that keeps
  controls from pairing with each other.
- **phenotypic consistency**: do treatments sharing an annotation (MOA, target) retrieve each
  other? At consensus level, positives share the annotation, negatives do not; one mAP per
  annotation, several annotations per treatment allowed (multilabel).
- **NSCB** (Ando et al.): retrieval by annotation ignoring every neighbour of the same compound
  or the same batch, so that neither replicate identity nor batch effects count as success.

Each returns ``{"average_precision": per-query table, "mean_average_precision": per-group table}``
with copairs' column names; :func:`fraction_retrieved` is the share of groups whose corrected
p-value is below the threshold.
"""

import numpy as np
import pandas as pd

from cpzarr.errors import InputError

from ._map import average_precision, mean_average_precision
from ._similarity import _check_profiles, _group_names, _sample_mask

_REFERENCE = "_reference_index"


def fraction_retrieved(maps, threshold=None):
    """Share retrieved: corrected p-value below ``threshold``.

    On a :func:`mean_average_precision` table, the share of groups (compounds, MOAs) — the
    number the JUMP papers report; on an :func:`average_precision` table with per-query p-values
    (``null_size=``), the share of queries. Rows without a p-value (no positives) do not count.

    Parameters
    ----------
    maps : pandas.DataFrame
        A table with ``corrected_p_value`` (and ``below_corrected_p``).
    threshold : float, optional
        Significance level; default: the table's own ``below_corrected_p`` column.

    Returns
    -------
    float
        Fraction in [0, 1] (NaN for an empty table).

    Examples
    --------
    >>> fraction_retrieved(pd.DataFrame({"corrected_p_value": [0.01, 0.2]}), 0.05)
    0.5
    """
    maps = maps[maps["corrected_p_value"].notna()]
    if len(maps) == 0:
        return float("nan")
    if threshold is None:
        return float(np.mean(maps["below_corrected_p"]))
    return float(np.mean(maps["corrected_p_value"] < threshold))


def phenotypic_activity(
    profiles,
    treatment="compound",
    control="control == 'negcon'",
    mask=None,
    pos_diffby=None,
    neg_sameby=None,
    null_size=10_000,
    threshold=0.05,
    seed=0,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """mAP of each treatment's replicates against the negative controls (copairs' activity).

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Well-level (replicate) profiles.
    treatment : str or list of str
        Coordinate(s) identifying a treatment, e.g. ``"compound"`` or ``["compound", "dose"]``.
    control : str or boolean array (sample,)
        Which samples are the negative controls (a query on the coordinates, or a mask).
    mask : None, boolean array (sample,) or str, optional
        Samples to consider at all.
    pos_diffby : list of str, optional
        Replicates must also differ in these (e.g. ``["plate"]``: replicates on other plates).
    neg_sameby : list of str, optional
        Controls must share these with the query (e.g. ``["plate"]``: controls of its plate).
    null_size, threshold, seed
        As in :func:`mean_average_precision`.
    method, dtype, block_size, progress
        As in :func:`average_precision` (cpzarr's default Pearson; copairs' default is cosine).

    Returns
    -------
    dict
        ``average_precision`` (one row per treated sample, with per-query ``p_value``,
        ``corrected_p_value``, ``below_corrected_p``) and ``mean_average_precision`` (one row
        per treatment).

    Examples
    --------
    >>> act = phenotypic_activity(wells, "compound", "control == 'negcon'")  # doctest: +SKIP
    >>> fraction_retrieved(act["mean_average_precision"])  # doctest: +SKIP
    """
    profiles, _ = _check_profiles(profiles)
    names = _group_names(profiles, treatment, "treatment")
    is_control = _sample_mask(profiles, control, "control")
    keep = _sample_mask(profiles, mask, "mask")
    if not (is_control & keep).any():
        raise InputError(f"no negative control matches control={control!r}; activity needs them")
    # copairs' reference index: controls get their own position, so that they never pair with
    # each other; treated samples share -1.
    reference = np.where(is_control, np.arange(is_control.size), -1)
    profiles = profiles.assign_coords({_REFERENCE: ("sample", reference)})
    rules = dict(
        pos_sameby=[*names, _REFERENCE], pos_diffby=pos_diffby or [],
        neg_sameby=neg_sameby or [], neg_diffby=[*names, _REFERENCE],
    )
    ap = average_precision(
        profiles, mask=keep, query=~is_control, method=method, dtype=dtype,
        block_size=block_size, progress=progress, null_size=null_size, seed=seed,
        threshold=threshold, **rules,
    ).drop(columns=[_REFERENCE])
    maps = mean_average_precision(groups=names, ap=ap, null_size=null_size,
                                  threshold=threshold, seed=seed)
    return {"average_precision": ap, "mean_average_precision": maps}


def phenotypic_consistency(
    profiles,
    groups="moa",
    mask=None,
    multilabel=False,
    label_sep="|",
    active=None,
    treatment=None,
    null_size=10_000,
    threshold=0.05,
    seed=0,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """mAP of each annotation (MOA, target): treatments sharing it against those that do not.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Consensus profiles, one per treatment; leave controls out with ``mask``.
    groups : str
        The annotation coordinate (e.g. ``"moa"``, ``"target"``).
    mask : None, boolean array (sample,) or str, optional
        Samples to use, e.g. ``"control != 'negcon'"``.
    multilabel : bool
        The annotation holds several labels per treatment joined by ``label_sep`` (or lists);
        a treatment is then a query once per label, and mAP is per label.
    active : pandas.DataFrame, optional
        A :func:`phenotypic_activity` mAP table: only its treatments with ``below_corrected_p``
        are used (the JUMP recipe); needs ``treatment``.
    treatment : str or list of str, optional
        Coordinate(s) joining ``active`` to the profiles.
    null_size, threshold, seed, method, dtype, block_size, progress
        As in :func:`phenotypic_activity`.

    Returns
    -------
    dict
        ``average_precision`` (one row per query and label) and ``mean_average_precision``
        (one row per label).

    Examples
    --------
    >>> cons = phenotypic_consistency(consensus, "moa", mask="control != 'negcon'",
    ...                               multilabel=True)  # doctest: +SKIP
    """
    profiles, _ = _check_profiles(profiles)
    (name,) = _group_names(profiles, [groups] if isinstance(groups, str) else groups, "groups")
    keep = _sample_mask(profiles, mask, "mask")
    if active is not None:
        if treatment is None:
            raise InputError("phenotypic_consistency: active needs treatment= to join on")
        keys = _group_names(profiles, treatment, "treatment")
        hits = active.loc[active["below_corrected_p"], keys].astype(str)
        wanted = set(map(tuple, hits.to_numpy()))
        mine = zip(*[profiles[k].values.astype(str) for k in keys])
        keep &= np.array([t in wanted for t in mine], dtype=bool)
    # Unannotated samples cannot be positives or negatives of anything.
    labels = pd.Series(profiles[name].values)
    keep &= labels.notna().to_numpy() & (labels.astype(str).str.strip() != "").to_numpy()
    ap = average_precision(
        profiles, mask=keep, method=method, dtype=dtype, block_size=block_size,
        progress=progress, pos_sameby=[name], pos_diffby=[], neg_sameby=[], neg_diffby=[name],
        multilabel=name if multilabel else None, label_sep=label_sep, null_size=null_size,
        seed=seed, threshold=threshold,
    )
    maps = mean_average_precision(groups=name, ap=ap, null_size=null_size,
                                  threshold=threshold, seed=seed)
    return {"average_precision": ap, "mean_average_precision": maps}


def nscb(
    profiles,
    groups="moa",
    compound="compound",
    batch="batch",
    mask=None,
    null_size=10_000,
    threshold=0.05,
    seed=0,
    method="pearson",
    dtype="float64",
    block_size=None,
    progress=False,
):
    """Retrieval by ``groups`` "not same compound or batch" (NSCB, Ando et al.).

    Every neighbour with the query's compound or the query's batch is ignored, as a positive and
    as a negative; ``nearest_is_positive`` is then NSCB 1-nearest-neighbour accuracy per query.
    ``batch=None`` gives NSC (not same compound).

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles (well or consensus level).
    groups : str or list of str
        Annotation whose equal values make positives (e.g. ``"moa"``).
    compound, batch : str or None
        Coordinates of the compound and the batch.
    mask, null_size, threshold, seed, method, dtype, block_size, progress
        As in :func:`mean_average_precision`.

    Returns
    -------
    dict
        ``average_precision`` and ``mean_average_precision`` tables, and ``accuracy``: the mean
        of ``nearest_is_positive`` over queries that have an allowed positive.

    Examples
    --------
    >>> res = nscb(consensus, "moa", compound="compound", batch="batch")  # doctest: +SKIP
    """
    exclude = [c for c in (compound, batch) if c is not None]
    ap = average_precision(
        profiles, groups, mask=mask, method=method, dtype=dtype, block_size=block_size,
        progress=progress, exclude_same=exclude, null_size=null_size, seed=seed,
        threshold=threshold,
    )
    maps = mean_average_precision(groups=groups, ap=ap, null_size=null_size,
                                  threshold=threshold, seed=seed)
    scored = ap[ap["n_pos_pairs"] > 0]
    return {
        "average_precision": ap,
        "mean_average_precision": maps,
        "accuracy": float(scored["nearest_is_positive"].mean()) if len(scored) else float("nan"),
    }


def expected_average_precision(n_pos, n_total):
    """AP of a random ranking, on average: ``(1/L)·((M−1)/(L−1)·(L−H_L) + H_L)``.

    ``M`` positives among ``L`` ranked partners, ``H_L`` the L-th harmonic number (the exact
    finite-sample mean copairs uses to normalize AP).

    Examples
    --------
    >>> float(expected_average_precision(1, 2))
    0.75
    """
    m = np.asarray(n_pos, dtype=np.float64)
    total = np.asarray(n_total, dtype=np.float64)
    harmonic = np.array([np.sum(1.0 / np.arange(1, int(t) + 1)) for t in np.ravel(total)])
    harmonic = harmonic.reshape(total.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = ((m - 1) / (total - 1) * (total - harmonic) + harmonic) / total
    return np.where(total == 1, (m == 1).astype(float), np.where(m == 0, 0.0, value))


def _row_column(wells):
    """Row letters and column numbers of well names such as ``A01`` / ``AA24``."""
    parts = pd.Series(np.asarray(wells).astype(str)).str.extract(r"^\s*([A-Za-z]+)\s*0*(\d+)\s*$")
    bad = parts[0].isna()
    if bad.any():
        raise InputError("well names must look like 'A01'", list(np.asarray(wells)[bad.to_numpy()][:20]))
    return parts[0].str.upper().to_numpy(), parts[1].astype(int).to_numpy()


def well_position_effect(
    profiles,
    well="well",
    plate="plate",
    control="control == 'negcon'",
    null_size=1000,
    threshold=0.05,
    seed=0,
    method="pearson",
    dtype="float64",
    block_size=None,
):
    """How much control profiles cluster by well position, plate row and plate column.

    Among the negative controls, three retrieval tasks with copairs' rules: the same well on
    other plates (``well``), the same row (``row``) and the same column (``column``) against
    controls elsewhere. No position effect gives mAP near the random expectation; mAP well above
    it (many groups retrieved) means position, not treatment, shapes the profiles, and
    per-plate normalization on all wells or a position correction is needed.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Well-level profiles with well and plate coordinates.
    well, plate : str
        Coordinates of the well name (``A01``) and the plate.
    control : str or boolean array (sample,)
        Which samples are the negative controls.
    null_size, threshold, seed, method, dtype, block_size
        As in :func:`mean_average_precision`.

    Returns
    -------
    pandas.DataFrame
        One row per ``factor`` (``well``, ``row``, ``column``): ``n_queries``,
        ``mean_average_precision`` (over queries), ``expected`` (random-ranking mAP),
        ``excess`` (difference), ``fraction_retrieved`` (groups with corrected p < threshold).

    Examples
    --------
    >>> well_position_effect(wells, control="control == 'negcon'")  # doctest: +SKIP
    """
    profiles, _ = _check_profiles(profiles)
    (well_name,) = _group_names(profiles, [well], "well")
    (plate_name,) = _group_names(profiles, [plate], "plate")
    is_control = _sample_mask(profiles, control, "control")
    if is_control.sum() < 3:
        raise InputError(f"well_position_effect needs controls; control={control!r} matches "
                         f"{int(is_control.sum())} samples")
    rows, columns = _row_column(profiles[well_name].values)
    profiles = profiles.assign_coords(_row=("sample", rows), _column=("sample", columns))
    tasks = {
        "well": dict(pos_sameby=[well_name], pos_diffby=[plate_name], neg_diffby=[well_name]),
        "row": dict(pos_sameby=["_row"], neg_diffby=["_row"]),
        "column": dict(pos_sameby=["_column"], neg_diffby=["_column"]),
    }
    out = []
    for factor, rules in tasks.items():
        ap = average_precision(
            profiles, mask=is_control, method=method, dtype=dtype, block_size=block_size,
            pos_diffby=rules.get("pos_diffby", []), neg_sameby=[], **{
                k: v for k, v in rules.items() if k != "pos_diffby"
            },
        )
        scored = ap[ap["n_pos_pairs"] > 0]
        if scored.empty:
            out.append((factor, 0, np.nan, np.nan, np.nan, np.nan))
            continue
        maps = mean_average_precision(groups=rules["pos_sameby"], ap=scored, null_size=null_size,
                                      threshold=threshold, seed=seed)
        observed = float(scored["average_precision"].mean())
        expected = float(np.mean(expected_average_precision(scored["n_pos_pairs"],
                                                            scored["n_total_pairs"])))
        out.append((factor, len(scored), observed, expected, observed - expected,
                    fraction_retrieved(maps)))
    return pd.DataFrame(out, columns=["factor", "n_queries", "mean_average_precision", "expected",
                                      "excess", "fraction_retrieved"])
