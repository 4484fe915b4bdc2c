"""Compare profile pipelines by evaluation and choose one: the study's ablation as one call."""

import copy
import itertools
import json

import numpy as np
import pandas as pd

from cpzarr.errors import InputError
from cpzarr.profiles._consensus import consensus
from cpzarr.profiles._pipeline import RECIPES, pipeline, recipe_steps
from cpzarr.query import query_mask

#: Columns of the comparison table (``pipeline_comparison.csv`` in a run's tables).
COLUMNS = ("pipeline", "replicate_map", "moa_map", "batch_enrichment", "score", "chosen", "steps")
CRITERIA = ("score", "replicate_map", "moa_map", "batch_enrichment")
_NEGCON = 'control == "negcon"'


def _as_steps(steps):
    if isinstance(steps, str):
        return copy.deepcopy(RECIPES[steps]) if steps in RECIPES else recipe_steps(steps)
    return copy.deepcopy(list(steps))


def sweep(steps, step, values, label=None):
    """Copies of a pipeline with one step's parameters set to each of several values.

    Parameters
    ----------
    steps : str or list
        A pipeline (a name or a list of steps as :func:`pipeline` takes them).
    step : str
        The step whose parameters vary (its first occurrence), e.g. ``"spherize"``.
    values : dict of str to list
        Parameter → values; every combination is one pipeline, e.g. ``{"epsilon": [1e-6, 1e-2]}``.
    label : str, optional
        Prefix of the names (default: the pipeline's name, or ``step``).

    Returns
    -------
    dict of str to list
        ``{"<label>@epsilon=1e-06": steps, ...}``.

    Examples
    --------
    >>> sorted(sweep("spherize_only", "spherize", {"epsilon": [1e-6, 0.01]}))
    ['spherize_only@epsilon=0.01', 'spherize_only@epsilon=1e-06']
    """
    base = _as_steps(steps)
    dicts = [dict(s) if isinstance(s, dict) else
             ({"step": s} if isinstance(s, str) else {"step": s[0], **s[1]}) for s in base]
    where = [i for i, s in enumerate(dicts) if s.get("step") == step]
    if not where:
        raise InputError(f"sweep: the pipeline has no {step!r} step", [str([s.get("step") for s in dicts])])
    label = label or (steps if isinstance(steps, str) else step)
    names = list(values)
    out = {}
    for combo in itertools.product(*(values[n] for n in names)):
        candidate = copy.deepcopy(dicts)
        candidate[where[0]].update(dict(zip(names, combo)))
        out[label + "@" + ",".join(f"{n}={v}" for n, v in zip(names, combo))] = candidate
    return out


def pipeline_metrics(profiles, replicate="compound", moa="moa", batch="batch", negcon=_NEGCON,
                     percentile=99.0):
    """The three numbers pipelines are compared by.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Well-level profiles after a pipeline.
    replicate, moa, batch : str
        Coordinates naming the treatment, its MOA and the batch.
    negcon : str
        Query selecting the negative controls.
    percentile : float, default 99.0
        Similarity percentile of the batch enrichment odds ratio.

    Returns
    -------
    dict
        ``replicate_map``: mean average precision of treated wells retrieving their replicates
        (the other wells of the same ``replicate`` value, on other plates and batches) among
        all treated wells; ``moa_map``: that of the treatments' median consensus profiles
        retrieving same-``moa`` treatments; ``batch_enrichment``: odds ratio of DMSO pairs from
        one batch among the pairs above the percentile (1 = no batch effect), with 0.5 added to
        each cell of the 2 × 2 table (Haldane-Anscombe) so that a total separation gives a large
        finite number instead of infinity.
    """
    from cpzarr import evaluate as ev

    table = ev.sample_table(profiles)
    missing = [c for c in (replicate, moa, batch) if c not in table.columns]
    if missing:
        raise InputError("pipeline comparison needs these sample coordinates (set replicate, moa, batch "
                         f"to others among {list(table.columns)})", missing)
    control = query_mask(negcon, table, what="negcon")
    treated = profiles.isel(sample=np.flatnonzero(~control)).load()
    rep = ev.average_precision(treated, replicate)
    cons = consensus(treated, replicate_columns=[replicate], operation="median")
    labelled = cons.isel(sample=np.flatnonzero(cons[moa].values.astype(str) != ""))
    moa_ap = ev.average_precision(labelled, moa)
    enrich = ev.batch_enrichment(profiles.load(), batch=batch, negcon=negcon, percentiles=(percentile,)).iloc[0]
    a, b, c, d = (enrich[k] + 0.5 for k in ("same_above", "different_above", "same_below", "different_below"))
    return {
        "replicate_map": float(np.nanmean(rep["average_precision"])),
        "moa_map": float(np.nanmean(moa_ap["average_precision"])),
        "batch_enrichment": float((a / b) / (c / d)),
    }


def compare_pipelines(profiles, pipelines, criterion="score", **metrics):
    """Run several pipelines on the same profiles, evaluate each, and choose one.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Well-level profiles (aggregated, annotated).
    pipelines : dict of str to pipeline
        Name → steps (a name or a list, as :func:`pipeline` takes them); ``[]`` is the raw input.
        :func:`sweep` makes grids (sphering ε, Harmony θ, ...).
    criterion : {"score", "replicate_map", "moa_map", "batch_enrichment"}, default "score"
        What the choice maximizes (batch enrichment: brings closest to 1). ``score`` is the mean
        of the three metrics each min-max scaled over the candidates, batch enrichment as
        ``-|log(odds ratio)|`` (an odds ratio below 1 is over-correction: one batch's DMSO
        wells pushed apart), after the aggregate of Arevalo et al. 2024's batch-correction
        benchmark (scIB's): the pipeline that best keeps replicates and MOAs together while
        mixing DMSO across batches.
    **metrics
        Passed to :func:`pipeline_metrics` (``replicate``, ``moa``, ``batch``, ``negcon``,
        ``percentile``).

    Returns
    -------
    pandas.DataFrame
        One row per pipeline, columns ``pipeline, replicate_map, moa_map, batch_enrichment,
        score, chosen, steps`` (steps as JSON), best first; ``attrs["chosen"]`` names the choice.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=6, n_batches=3, n_negcon=8, n_compounds=12, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> table = compare_pipelines(p, {"raw": [], "tvn": ["tvn"]})
    >>> sorted(table["pipeline"])
    ['raw', 'tvn']
    """
    if criterion not in CRITERIA:
        raise InputError(f"compare_pipelines: criterion {criterion!r} is not one of {CRITERIA}")
    if not pipelines:
        raise InputError("compare_pipelines: no pipelines to compare")
    rows = []
    for name, steps in pipelines.items():
        out = pipeline(profiles, steps) if (isinstance(steps, str) or steps) else profiles
        row = {"pipeline": name, **pipeline_metrics(out.compute(), **metrics)}
        row["steps"] = out.attrs.get("cpzarr_pipeline", "[]") if steps else "[]"
        rows.append(row)
    return rank_pipelines(rows, criterion)


def rank_pipelines(rows, criterion="score"):
    """The comparison table from each pipeline's metrics (as :func:`compare_pipelines` returns it).

    Parameters
    ----------
    rows : list of dict
        ``{"pipeline": name, "replicate_map": ..., "moa_map": ..., "batch_enrichment": ...}``
        (from :func:`pipeline_metrics`), optionally ``"steps"``.
    criterion : str, default "score"

    Returns
    -------
    pandas.DataFrame
    """
    if criterion not in CRITERIA:
        raise InputError(f"compare_pipelines: criterion {criterion!r} is not one of {CRITERIA}")
    table = pd.DataFrame(rows)
    if "steps" not in table:
        table["steps"] = "[]"
    scaled = []
    for column in ("replicate_map", "moa_map", "batch_enrichment"):
        # Batch mixing: the distance of the odds ratio from 1 on a log scale, reversed (below 1,
        # DMSO wells of one batch are less alike than across batches: over-correction).
        values = -np.abs(np.log(table[column])) if column == "batch_enrichment" else table[column]
        span = values.max() - values.min()
        scaled.append((values - values.min()) / span if span > 0 else values * 0 + 1.0)
    table["score"] = np.mean(scaled, axis=0)
    if criterion == "batch_enrichment":
        order = np.argsort(np.abs(np.log(table["batch_enrichment"].to_numpy())), kind="stable")
        table = table.iloc[order].reset_index(drop=True)
    else:
        table = table.sort_values(criterion, ascending=False, kind="stable").reset_index(drop=True)
    table["chosen"] = np.arange(len(table)) == 0
    table = table[list(COLUMNS)]
    table.attrs["chosen"] = str(table["pipeline"].iloc[0])
    table.attrs["criterion"] = criterion
    return table


def choose_pipeline(profiles, pipelines, criterion="score", **metrics):
    """The chosen pipeline's name, its profiles, and the comparison table.

    Parameters
    ----------
    As :func:`compare_pipelines`.

    Returns
    -------
    name : str
    profiles : DataArray (sample, feature)
        The input through the chosen pipeline (``attrs["pipeline_comparison"]`` holds the
        table as JSON records).
    table : pandas.DataFrame
    """
    table = compare_pipelines(profiles, pipelines, criterion=criterion, **metrics)
    name = table.attrs["chosen"]
    steps = pipelines[name]
    out = pipeline(profiles, steps) if (isinstance(steps, str) or steps) else profiles.copy()
    out.attrs["pipeline_comparison"] = json.dumps(table.to_dict("records"), default=str)
    return name, out, table
