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
    lines = []
    for label, table in _labelled(results, "enrichment").items():
        ordered = table.sort_values("percentile", ascending=False)
        lines.append(_line(ax, ordered["percentile"], ordered["odds_ratio"], label, "percentiles"))
    ax.invert_xaxis()
    ax.set_xlabel("percentile of pair similarity")
    ax.set_ylabel("enrichment odds ratio")
    _mark_nonfinite(ax, lines)
    _legend(ax, lines)
    return _save(figure, path)


def _line(ax, x, y, label, what, marker="o", **kwargs):
    """Plot the finite points of ``y`` against ``x``; return what :func:`_mark_nonfinite` needs.

    Matplotlib leaves out infinite and NaN points without a word; a line whose values are all
    infinite (an odds ratio whose "different" cell is empty) would vanish from the figure.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    finite = np.isfinite(y)
    (artist,) = ax.plot(x[finite], y[finite], marker=marker, **kwargs)
    notes = []
    for name, pick in (("inf", y == np.inf), ("-inf", y == -np.inf), ("NaN", np.isnan(y))):
        if pick.any():
            notes.append(f"{name} at {int(pick.sum())} of {y.size} {what}")
    text = label or ""
    if notes:
        text = f"{text} ({'; '.join(notes)})" if text else "; ".join(notes)
    artist.set_label(text or "_nolegend_")
    return {"artist": artist, "x": x, "y": y}


def _mark_nonfinite(ax, lines):
    """Draw each line's infinite points at the top edge (▲ "inf") and NaN at the bottom (× "NaN").

    The markers sit just inside the axes at the x of their point, in the line's colour; lines
    are staggered so that several all-infinite lines stay apart.
    """
    transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    xs = np.concatenate([line["x"] for line in lines]) if lines else np.empty(0)
    if xs.size:
        # The x axis covers every point, the non-finite ones included.
        ax.update_datalim(np.column_stack([xs, np.zeros_like(xs)]), updatey=False)
        ax.autoscale_view(scaley=False)
    finite = [line["y"][np.isfinite(line["y"])] for line in lines]
    if not any(f.size for f in finite):
        ax.set_ylim(0.0, 1.0)
        ax.set_yticks([])
    n = 0
    for line in lines:
        colour = line["artist"].get_color()
        x, y = line["x"], line["y"]
        marks = (
            ("inf", y == np.inf, 0.96 - 0.05 * n, "^"),
            ("-inf", y == -np.inf, 0.04 + 0.05 * n, "v"),
            ("NaN", np.isnan(y), 0.04 + 0.05 * n, "x"),
        )
        drawn = False
        for text, pick, height, marker in marks:
            if not pick.any():
                continue
            drawn = True
            ax.scatter(x[pick], np.full(pick.sum(), height), transform=transform, marker=marker,
                       color=colour, s=36, clip_on=False, zorder=3)
            for xi in x[pick]:
                ax.text(xi, height, f" {text}", transform=transform, color=colour, fontsize=7,
                        ha="left", va="center")
        n += drawn


def _legend(ax, lines):
    """The legend under the axes, where it hides no point."""
    if any(not line["artist"].get_label().startswith("_") for line in lines):
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)


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
    lines = {"precision": [], "recall": []}
    for label, table in _labelled(results, "precision_recall").items():
        means = table.groupby("k")[["precision", "recall"]].mean()
        for ax, name in ((left, "precision"), (right, "recall")):
            lines[name].append(_line(ax, means.index, means[name], label, "K"))
    for ax, name in ((left, "precision"), (right, "recall")):
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel(f"mean {name.capitalize()}@K")
        _mark_nonfinite(ax, lines[name])
    _legend(left, lines["precision"])
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
    lines = [
        _line(ax, table["percent"], table["normalized_score"], label, "percents", marker=None)
        for label, table in _labelled(results, "hitk").items()
    ]
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("top % of neighbour ranks")
    ax.set_ylabel("hits above uniform / all hits")
    _mark_nonfinite(ax, lines)
    _legend(ax, lines)
    return _save(figure, path)


def pca(profiles, color=("batch", "control"), path=None, max_points=20_000, seed=0,
        quantiles=(0.05, 0.95)):
    """Scatter of the first two principal components, one panel per colouring coordinate.

    Batch effects show as clusters by batch; a useful representation separates treated from
    negative-control samples.

    A few extreme samples (a spherized well far from the rest) would squash every other point
    into a corner, so the axes are robust (:func:`robust_limits`): each spans the 5th to 95th
    percentiles of its scores, widened by half that range on each side and never more than the
    data. Points beyond are drawn on the border as hollow triangles pointing outwards,
    counted in the panel's title and listed in ``figure.cpzarr_clipped`` (their positions).

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
    quantiles : tuple of float or None
        Quantiles the axes are fitted to (see :func:`robust_limits`); None shows every point.

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
    scores, explained = _principal_scores(values, 2)
    shown = np.arange(values.shape[0])
    if shown.size > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(shown, max_points, replace=False))
    limits = [robust_limits(scores[shown, i], quantiles) for i in range(2)]
    low = np.array([lim[0] for lim in limits])
    high = np.array([lim[1] for lim in limits])
    placed = np.clip(scores, low, high)
    outside = np.any(placed != scores, axis=1)
    table = sample_table(profiles)
    figure, panels = _figure(ncols=len(names))
    figure.cpzarr_clipped = shown[outside[shown]]
    for ax, name in zip(panels, names):
        labels = table[name].astype(str).to_numpy()[shown]
        for value in np.unique(labels):
            pick = shown[labels == value]
            inside, beyond = pick[~outside[pick]], pick[outside[pick]]
            dots = ax.scatter(placed[inside, 0], placed[inside, 1], s=8, alpha=0.75, label=value)
            if beyond.size:
                ax.scatter(placed[beyond, 0], placed[beyond, 1], s=40, facecolors="none",
                           marker=_outward(placed[beyond], scores[beyond]),
                           edgecolors=dots.get_facecolor()[:1], clip_on=False, zorder=3)
        ax.set_xlim(limits[0])
        ax.set_ylim(limits[1])
        ax.set_xlabel(f"PC1 ({explained[0]:.0%})")
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
        n_out = int(outside[shown].sum())
        title = f"by {name}"
        if n_out:
            title += f"\n{n_out} of {shown.size} beyond the axes, on the border (open triangles)"
        ax.set_title(title, fontsize="medium")
        if np.unique(labels).size <= 12:
            ax.legend(markerscale=2, fontsize="small")
    return _save(figure, path)


def _principal_scores(values, k):
    """Scores on the first ``k`` principal components and their shares of the variance.

    From the top ``k`` eigenpairs of the smaller of the two Gram matrices of the centred data
    (samples × samples or features × features): the same scores as an SVD, up to each
    component's sign, at a fraction of its cost (only ``k`` eigenpairs are computed).
    """
    from scipy.linalg import eigh

    centred = np.asarray(values, dtype=np.float64) - values.mean(axis=0, dtype=np.float64)
    n, d = centred.shape
    gram = centred @ centred.T if n <= d else centred.T @ centred
    m = gram.shape[0]
    top = min(k, m)
    eigval, eigvec = eigh(gram, subset_by_index=[m - top, m - 1])
    eigval, eigvec = np.clip(eigval[::-1], 0, None), eigvec[:, ::-1]
    scores = eigvec * np.sqrt(eigval) if n <= d else centred @ eigvec
    total = np.trace(gram)
    explained = np.zeros(k)
    explained[:top] = eigval / total if total > 0 else 0.0
    if scores.shape[1] < k:
        scores = np.column_stack([scores, np.zeros((n, k - scores.shape[1]))])
    return scores, explained


def _outward(placed, scores):
    """One marker for all clipped points: ▲▼◀▶ by the direction most of them were clipped in."""
    shift = scores - placed
    dx, dy = np.sum(np.sign(shift[:, 0])), np.sum(np.sign(shift[:, 1]))
    if abs(dx) >= abs(dy):
        return ">" if dx > 0 else "<"
    return "^" if dy > 0 else "v"


def robust_limits(values, quantiles=(0.05, 0.95), widen=0.5, margin=0.03):
    """Axis limits of ``values`` that a few extreme points cannot stretch.

    The limits are the ``quantiles`` of the values (actual data values: the low one rounded up,
    the high one down, so that an outlier never enters by interpolation), widened on each side by
    ``widen`` times their distance, and never beyond the data. So at most about 5 % of the
    points on each side fall outside, and only when they lie far from the rest; a Normal sample
    keeps about 99.9 % of its points inside (±3.3 standard deviations).

    Parameters
    ----------
    values : array-like of float
        The plotted coordinates (non-finite values are ignored).
    quantiles : tuple of float or None
        Low and high quantile; None gives the data's range.
    widen : float
        Extra room beyond the quantiles, as a fraction of the distance between them.
    margin : float
        Padding on each side of the final range, as a fraction of it.

    Returns
    -------
    tuple of float
        ``(low, high)``.

    Examples
    --------
    >>> robust_limits(list(range(100)) + [10_000], margin=0)
    (0.0, 140.0)
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (-1.0, 1.0)
    low, high = float(v.min()), float(v.max())
    if quantiles is not None:
        q_low = float(np.quantile(v, quantiles[0], method="higher"))
        q_high = float(np.quantile(v, quantiles[1], method="lower"))
        room = widen * (q_high - q_low)
        low, high = max(low, q_low - room), min(high, q_high + room)
    span = high - low
    if span <= 0:
        span = abs(high) or 1.0
    return (low - margin * span, high + margin * span)


#: Column names of a mAP table, in the order they are looked for (cpzarr's and copairs').
MAP_COLUMNS = ("mean_average_precision", "mAP", "map")
P_COLUMNS = ("corrected_p_value", "p_value")


def map_columns(table):
    """``(map column, p-value column or None)`` of a table of mAP per group, or None if it is not one.

    Works with cpzarr's :func:`cpzarr.evaluate.mean_average_precision` output and copairs'
    (``mean_average_precision``, ``p_value``, ``corrected_p_value``, ``below_corrected_p``).
    """
    found = [c for c in MAP_COLUMNS if c in table.columns]
    if not found:
        return None
    p = [c for c in P_COLUMNS if c in table.columns]
    return found[0], (p[0] if p else None)


def fraction_retrieved(table, alpha=0.05):
    """Share of the groups whose (corrected) p-value is below ``alpha``; NaN without p-values.

    ``below_corrected_p`` is used when present (as copairs and cpzarr write it), else
    ``corrected_p_value < alpha``, else ``p_value < alpha``.
    """
    if "below_corrected_p" in table.columns:
        return float(np.mean(table["below_corrected_p"].astype(bool))) if len(table) else np.nan
    columns = map_columns(table)
    if columns is None or columns[1] is None or not len(table):
        return np.nan
    return float(np.mean(table[columns[1]].to_numpy(dtype=float) < alpha))


def map_pvalues(results, path=None, alpha=0.05):
    """mAP against −log10 of its (corrected) p-value, one point per group, one colour per profile set.

    The dashed line is ``alpha``: groups right of it are "retrieved"; the legend gives each set's
    fraction retrieved. p-values of 0 (impossible with a permutation null, but possible in other
    tables) are drawn at the right edge.

    Parameters
    ----------
    results : pandas.DataFrame or dict of str to pandas.DataFrame
        mAP table(s) per group with a p-value column (see :func:`map_columns`).
    path : str or Path, optional
        Where to save the figure.
    alpha : float
        Significance level of the line.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = map_pvalues(cpzarr.evaluate.mean_average_precision(groups="moa", ap=ap))  # doctest: +SKIP
    """
    figure, (ax,) = _figure(width=5.5)
    p_name = None
    tables = _labelled(results, "mAP")
    finite_max = [-np.log10(alpha)]
    for table in tables.values():
        cols = map_columns(table)
        if cols is None or cols[1] is None:
            raise InputError("map_pvalues needs a table with mAP and p-value columns "
                             f"({MAP_COLUMNS[0]!r} and {P_COLUMNS[0]!r} or {P_COLUMNS[1]!r})")
        with np.errstate(divide="ignore"):
            logp = -np.log10(table[cols[1]].to_numpy(dtype=float))
        finite_max += list(logp[np.isfinite(logp)])
    right = max(finite_max) * 1.1 + 0.1
    for label, table in tables.items():
        m_col, p_name = map_columns(table)
        with np.errstate(divide="ignore"):
            logp = -np.log10(table[p_name].to_numpy(dtype=float))
        mp = table[m_col].to_numpy(dtype=float)
        infinite = np.isinf(logp)
        shown = np.where(infinite, right, logp)
        text = f"{label + ': ' if label else ''}{fraction_retrieved(table, alpha):.0%} retrieved"
        if infinite.any():
            text += f" ({int(infinite.sum())} with p = 0, at the edge)"
        ax.scatter(shown, mp, s=22, alpha=0.8, label=text)
    ax.axvline(-np.log10(alpha), color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, right * 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"−log10 {p_name.replace('_', ' ')}")
    ax.set_ylabel("mAP")
    ax.legend(fontsize="small", loc="lower right")
    return _save(figure, path)


def replicate_medians(results, path=None):
    """Median similarity of each replicate group against the non-replicate null threshold.

    Parameters
    ----------
    results : pandas.DataFrame or dict of str to pandas.DataFrame
        The ``medians`` table(s) of :func:`cpzarr.evaluate.replicate_reproducibility`
        (``median_similarity`` and ``threshold`` per group).
    path : str or Path, optional
        Where to save the figure.

    Returns
    -------
    matplotlib.figure.Figure
        One histogram per profile set; a dashed line at its threshold.
    """
    tables = _labelled(results, "replicate")
    figure, panels = _figure(ncols=len(tables), width=3.6, height=3.0)
    for ax, (label, table) in zip(panels, tables.items()):
        med = table["median_similarity"].to_numpy(dtype=float)
        threshold = float(table["threshold"].iloc[0]) if len(table) else np.nan
        above = np.mean(med > threshold) if med.size else np.nan
        ax.hist(med[np.isfinite(med)], bins=np.linspace(-1, 1, 41), color="#4c72b0", alpha=0.85)
        ax.axvline(threshold, color="#c44e52", linestyle="--", linewidth=1.2)
        ax.set_title(f"{label + ': ' if label else ''}{above:.0%} above null", fontsize="medium")
        ax.set_xlabel("median replicate correlation")
        ax.set_ylabel("replicate groups")
    return _save(figure, path)


def similarity_heatmap(profiles, order=("moa", "compound"), label="compound", path=None,
                       max_samples=80, method="pearson"):
    """Similarity matrix of profiles (e.g. one per treatment), ordered by metadata.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles; at most ``max_samples`` are drawn (the first after ordering).
    order : sequence of str
        Sample coordinates to sort by; the first one's blocks are outlined.
    label : str
        Sample coordinate naming each row.
    path : str or Path, optional
        Where to save the figure.
    max_samples : int
        At most this many samples are drawn.
    method : {"pearson", "cosine"}
        As :func:`cpzarr.evaluate.similarity`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ._similarity import similarity, sample_table

    table = sample_table(profiles)
    keys = [c for c in order if c in table.columns]
    ranked = table.assign(_i=np.arange(len(table)))
    if keys:
        ranked = ranked.astype({k: str for k in keys}).sort_values(keys + ["_i"], kind="stable")
    index = ranked["_i"].to_numpy()[:max_samples]
    picked = profiles.isel(sample=index)
    sims = similarity(picked, method=method).values
    n = len(index)
    size = min(9.0, 1.9 + 0.09 * n)
    figure, (ax,) = _figure(width=size + 1.4, height=size)
    image = ax.imshow(sims, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.04, pad=0.12, label=f"{method} similarity")
    names = table[label].astype(str).to_numpy()[index] if label in table.columns else index.astype(str)
    fontsize = 7 if n <= 40 else 5
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n))
    ax.set_yticklabels(names, fontsize=fontsize)
    if keys:
        blocks = table[keys[0]].astype(str).to_numpy()[index]
        edges = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
        for edge in edges:
            ax.axhline(edge - 0.5, color="k", linewidth=0.6)
            ax.axvline(edge - 0.5, color="k", linewidth=0.6)
        starts = np.concatenate([[0], edges])
        stops = np.concatenate([edges, [n]])
        for a, b in zip(starts, stops):
            ax.text(n - 0.3, (a + b - 1) / 2, f" {blocks[a] or '(none)'}", fontsize=fontsize + 1,
                    va="center", ha="left", clip_on=False)
    return _save(figure, path)


def compare(metrics, path=None, lower_is_better=("batch",)):
    """One small bar chart per headline metric, one bar per profile set.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Long table with ``profiles``, ``metric`` and ``value`` columns (the run's headline).
    path : str or Path, optional
        Where to save the figure.
    lower_is_better : sequence of str
        Metrics whose name contains one of these words read "lower is better" in their title.

    Returns
    -------
    matplotlib.figure.Figure
        Infinite values are drawn to the panel's edge and labelled "inf", NaN as "NaN".
    """
    names = list(dict.fromkeys(metrics["metric"]))
    sets = list(dict.fromkeys(metrics["profiles"]))
    ncols = min(4, len(names))
    nrows = int(np.ceil(len(names) / ncols))
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.3 * ncols, 0.35 * len(sets) * nrows + 1.1 * nrows + 0.3),
                    layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(sets))]
    for ax, name in zip(axes, names):
        rows = metrics[metrics["metric"] == name].set_index("profiles")["value"]
        values = np.array([float(rows.get(s, np.nan)) for s in sets])
        finite = values[np.isfinite(values)]
        top = max(finite.max(), 0.0) if finite.size else 1.0
        top = top * 1.15 if top > 0 else 1.0
        low = min(finite.min(), 0.0) if finite.size else 0.0
        drawn = np.where(np.isposinf(values), top, np.where(np.isfinite(values), values, 0.0))
        ax.barh(range(len(sets)), drawn, color=colours)
        for i, v in enumerate(values):
            text = "inf" if np.isposinf(v) else "NaN" if np.isnan(v) else "-inf" if np.isneginf(v) else f"{v:.3g}"
            ax.text(drawn[i], i, f" {text}", va="center", fontsize=7)
        ax.set_xlim(low * 1.15, top * 1.25)
        ax.set_yticks(range(len(sets)))
        ax.set_yticklabels(sets, fontsize=7)
        ax.invert_yaxis()
        worse = "lower is better" if any(w in name.lower() for w in lower_is_better) else ""
        ax.set_title(name + (f"\n({worse})" if worse else ""), fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[len(names):]:
        ax.axis("off")
    return _save(figure, path)
