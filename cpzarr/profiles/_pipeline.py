"""pipeline: a list of profile steps applied in order, recorded in the output's attributes."""

import copy
import inspect
import json

from cpzarr.errors import InputError
from cpzarr.profiles._aggregate import aggregate
from cpzarr.profiles._annotate import annotate
from cpzarr.profiles._batch import coral, harmony, pca, tvn
from cpzarr.profiles._consensus import consensus
from cpzarr.profiles._correct import correct_well_position, regress_cell_count
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
    "correct_well_position": correct_well_position,
    "regress_cell_count": regress_cell_count,
    "pca": pca,
    "tvn": tvn,
    "coral": coral,
    "harmony": harmony,
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


#: Steps of the JUMP profiling recipe's pipeline names (``profiles_var_mad_int_featselect_harmony``).
RECIPE_STEPS = {
    "var": [{"step": "feature_select", "operation": "variance_threshold"}],
    "mad": [{"step": "normalize", "method": "mad_robustize", "by": "plate", "samples": _NEGCON}],
    "int": [{"step": "normalize", "method": "rank_inverse_normal", "by": None}],
    "wellpos": [{"step": "correct_well_position", "statistic": "mean"}],
    "cc": [{"step": "regress_cell_count"}],
    "outlier": [{"step": "feature_select", "operation": "drop_outliers", "outlier_cutoff": 40}],
    "dropna": [{"step": "feature_select", "operation": "drop_na_columns"}],
    "featselect": [_SELECT],
    "PCA": [{"step": "pca", "n_components": 0.98}],
    "sphering": [{"step": "spherize", "method": "ZCA-cor", "samples": _NEGCON}],
    "tvn": [{"step": "tvn"}],
    "coral": [{"step": "coral"}],
    "harmony": [{"step": "harmony", "batch": "batch", "n_components": 50}],
}


def recipe_steps(name):
    """The steps of a recipe-style pipeline name, e.g. ``"profiles_var_mad_int_featselect_harmony"``.

    Parameters
    ----------
    name : str
        Words joined by ``_``, optionally after ``profiles``: each a key of ``RECIPE_STEPS``
        (``var, mad, int, wellpos, cc, outlier, dropna, featselect, PCA, sphering, tvn, coral,
        harmony``), applied left to right.

    Returns
    -------
    list of dict
        Steps as :func:`pipeline` takes them. ``harmony`` after ``PCA`` runs on the PCA
        embedding (no second PCA); otherwise it embeds on 50 components first.

    Notes
    -----
    The recipe's ``var`` drops features whose MAD is zero or small against the median in the
    controls of any plate; here it is Pycytominer's variance threshold. ``int`` is the
    recipe's rank formula over all samples (``normalize(method="rank_inverse_normal")``),
    ``wellpos`` subtracts each position's mean, as the recipe does.

    Examples
    --------
    >>> [s["step"] for s in recipe_steps("profiles_mad_int_harmony")]
    ['normalize', 'normalize', 'harmony']
    """
    words = name.split("_")
    if words and words[0] == "profiles":
        words = words[1:]
    unknown = [w for w in words if w not in RECIPE_STEPS]
    if unknown or not words:
        raise InputError(f"unknown pipeline recipe {name!r}: recipes are {sorted(RECIPES)} or names made "
                         f"of the steps {', '.join(RECIPE_STEPS)} (e.g. profiles_mad_int_featselect_harmony)",
                         [f"unknown step {w!r}" for w in unknown] or ["no steps"])
    steps = []
    for word in words:
        for step in copy.deepcopy(RECIPE_STEPS[word]):
            if word == "harmony" and any(s["step"] == "pca" for s in steps):
                step["n_components"] = None
            steps.append(step)
    return steps


def pipeline(profiles, steps):
    """Apply profile steps in order.

    Parameters
    ----------
    profiles : DataArray (sample, feature), or (cell, feature) when the first step is aggregate
    steps : str or list
        A recipe name from ``RECIPES`` (``"spherize_only"``, ``"mad_robustize_select_spherize"``,
        ``"mad_robustize_select_outliers"``), a JUMP-recipe-style name such as
        ``"profiles_var_mad_int_featselect_harmony"`` (see :func:`recipe_steps`), or a list whose
        items are a step name, a ``(name, params)`` pair or a dict ``{"step": name, **params}``;
        names are the keys of ``STEPS``: ``aggregate``, ``annotate``, ``normalize``,
        ``feature_select``, ``spherize``, ``consensus``, ``correct_well_position``,
        ``regress_cell_count``, ``pca``, ``tvn``, ``coral``, ``harmony``.

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
        steps = copy.deepcopy(RECIPES[steps]) if steps in RECIPES else recipe_steps(steps)
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
