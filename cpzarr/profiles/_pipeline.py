"""pipeline: a list of profile steps applied in order, recorded in the output's attributes."""

import copy
import inspect
import json

from cpzarr.errors import InputError
from cpzarr.profiles._aggregate import aggregate
from cpzarr.profiles._annotate import annotate
from cpzarr.profiles._consensus import consensus
from cpzarr.profiles._normalize import normalize
from cpzarr.profiles._select import feature_select
from cpzarr.profiles._spherize import spherize

STEPS = {
    "aggregate": aggregate,
    "annotate": annotate,
    "normalize": normalize,
    "feature_select": feature_select,
    "spherize": spherize,
    "consensus": consensus,
}

_NEGCON = 'control == "negcon"'
_SELECT = {
    "step": "feature_select",
    "operation": ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"],
}
#: The study's normalization pipelines (per-plate MAD robustize fitted on DMSO; spherize on all DMSO).
RECIPES = {
    "spherize_only": [
        {"step": "spherize", "method": "ZCA-cor", "samples": _NEGCON},
    ],
    "mad_robustize_select_spherize": [
        {"step": "normalize", "method": "mad_robustize", "by": "plate", "samples": _NEGCON},
        _SELECT,
        {"step": "spherize", "method": "ZCA-cor", "samples": _NEGCON},
    ],
    "mad_robustize_select_outliers": [
        {"step": "normalize", "method": "mad_robustize", "by": "plate", "samples": _NEGCON},
        _SELECT,
        {"step": "feature_select", "operation": "drop_outliers", "outlier_cutoff": 40},
    ],
}


def pipeline(profiles, steps):
    """Apply profile steps in order.

    Parameters
    ----------
    profiles : DataArray (sample, feature), or (cell, feature) when the first step is aggregate
    steps : str or list
        A recipe name from ``RECIPES`` (``"spherize_only"``, ``"mad_robustize_select_spherize"``,
        ``"mad_robustize_select_outliers"``), or a list whose items are a step name, a
        ``(name, params)`` pair or a dict ``{"step": name, **params}``; names are
        ``aggregate``, ``annotate``, ``normalize``, ``feature_select``, ``spherize``, ``consensus``.

    Returns
    -------
    profiles : DataArray (sample, feature)
        ``attrs["cpzarr_pipeline"]`` holds the steps as given (JSON), ``attrs["cpzarr_steps"]``
        each step's full parameters.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=6, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> out = pipeline(p, [("normalize", {"method": "mad_robustize"}), ("consensus", {"operation": "modz"})])
    >>> [s["step"] for s in json.loads(out.attrs["cpzarr_steps"])]
    ['normalize', 'consensus']
    """
    if isinstance(steps, str):
        if steps not in RECIPES:
            raise InputError(f"unknown pipeline recipe {steps!r}; recipes: {sorted(RECIPES)}")
        steps = copy.deepcopy(RECIPES[steps])
    parsed, problems = [], []
    for i, item in enumerate(steps):
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict):
            params = dict(item)
            name = params.pop("step", None)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict):
            name, params = item[0], dict(item[1])
        else:
            name, params = None, {}
        if name not in STEPS:
            problems.append(f"step {i}: {item!r} is not one of {sorted(STEPS)}")
        else:
            try:
                inspect.signature(STEPS[name]).bind(None, **params)
            except TypeError as error:
                problems.append(f"step {i} ({name}): {error}")
        parsed.append((name, params))
    if problems:
        raise InputError("invalid pipeline steps", problems)
    out = profiles
    for name, params in parsed:
        out = STEPS[name](out, **params)
    out.attrs["cpzarr_pipeline"] = json.dumps([{"step": n, **p} for n, p in parsed], default=repr)
    return out
