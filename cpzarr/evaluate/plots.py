"""Figures of the evaluation metrics, for reports and for comparing pipelines.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, no display needed) and, given ``path``, also writes it (PNG, SVG or any format matplotlib
knows from the suffix). Functions that plot a metric take either one result table or a mapping
``{label: table}`` to overlay several profile sets, as the study compares pipelines.
"""

import numpy as np

from cpzarr.errors import InputError


def _figure(ncols=1, width=5.0, height=4.0):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def _labelled(results, what):
    """``{label: table}`` from one table or a mapping."""
    if isinstance(results, dict):
        if not results:
            raise InputError(f"no {what} results to plot")
        return results
    return {"": results}


def _save(figure, path):
    if path is not None:
        figure.savefig(path, dpi=150)
    return figure


def enrichment(results, path=None):
    """Enrichment odds ratio against percentile, one line per profile set.

    Parameters
    ----------
    results : pandas.DataFrame or dict of str to pandas.DataFrame
        Output(s) of :func:`cpzarr.evaluate.enrichment`.
    path : str or Path, optional
        Where to save the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = enrichment({"spherized": e1, "raw": e2}, "enrichment.svg")  # doctest: +SKIP
    """
    figure, (ax,) = _figure()
    for label, table in _labelled(results, "enrichment").items():
        ordered = table.sort_values("percentile", ascending=False)
        ax.plot(ordered["percentile"], ordered["odds_ratio"], marker="o", label=label or None)
    ax.invert_xaxis()
    ax.set_xlabel("percentile of pair similarity")
    ax.set_ylabel("enrichment odds ratio")
    if isinstance(results, dict):
        ax.legend()
    return _save(figure, path)


def precision_recall(results, path=None):
    """Mean Precision@K and Recall@K against K, one line per profile set.

    Parameters
    ----------
    results : pandas.DataFrame or dict of str to pandas.DataFrame
        Output(s) of :func:`cpzarr.evaluate.precision_recall`.
    path : str or Path, optional
        Where to save the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = precision_recall(pr)  # doctest: +SKIP
    """
    figure, (left, right) = _figure(ncols=2)
    for label, table in _labelled(results, "precision_recall").items():
        means = table.groupby("k")[["precision", "recall"]].mean()
        left.plot(means.index, means["precision"], marker="o", label=label or None)
        right.plot(means.index, means["recall"], marker="o", label=label or None)
    for ax, name in ((left, "Precision@K"), (right, "Recall@K")):
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel(f"mean {name}")
    if isinstance(results, dict):
        left.legend()
    return _save(figure, path)


def hitk(results, path=None):
    """Hit@K normalized accumulated score against percent of ranks, one line per profile set.

    Parameters
    ----------
    results : pandas.DataFrame or dict of str to pandas.DataFrame
        The ``scores`` table(s) returned by :func:`cpzarr.evaluate.hitk`.
    path : str or Path, optional
        Where to save the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> hits, scores = cpzarr.evaluate.hitk(profiles, "moa")  # doctest: +SKIP
    >>> fig = hitk(scores)  # doctest: +SKIP
    """
    figure, (ax,) = _figure()
    for label, table in _labelled(results, "hitk").items():
        ax.plot(table["percent"], table["normalized_score"], label=label or None)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("top % of neighbour ranks")
    ax.set_ylabel("hits above uniform / all hits")
    if isinstance(results, dict):
        ax.legend()
    return _save(figure, path)


def pca(profiles, color=("batch", "control"), path=None, max_points=20_000, seed=0):
    """Scatter of the first two principal components, one panel per colouring coordinate.

    Batch effects show as clusters by batch; a useful representation separates treated from
    negative-control samples.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles with the colouring coordinates along ``sample``.
    color : str or sequence of str
        Sample coordinates to colour by, one panel each.
    path : str or Path, optional
        Where to save the figure.
    max_points : int
        Plot a random subset of at most this many samples (PCA is fitted on all of them).
    seed : int
        Seed of that subset.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = pca(profiles, ["batch", "control"], "pca.png")  # doctest: +SKIP
    """
    from ._similarity import _check_profiles, _group_names, sample_table

    profiles, values = _check_profiles(profiles)
    names = _group_names(profiles, color)
    centred = values - values.mean(axis=0, dtype=np.float64)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ axes[:2].T
    explained = singular[:2] ** 2 / np.sum(singular**2)
    shown = np.arange(values.shape[0])
    if shown.size > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(shown, max_points, replace=False))
    table = sample_table(profiles)
    figure, panels = _figure(ncols=len(names))
    for ax, name in zip(panels, names):
        labels = table[name].astype(str).to_numpy()[shown]
        for value in np.unique(labels):
            pick = shown[labels == value]
            ax.scatter(scores[pick, 0], scores[pick, 1], s=6, alpha=0.7, label=value)
        ax.set_xlabel(f"PC1 ({explained[0]:.0%})")
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
        ax.set_title(f"by {name}")
        if np.unique(labels).size <= 12:
            ax.legend(markerscale=2, fontsize="small")
    return _save(figure, path)
