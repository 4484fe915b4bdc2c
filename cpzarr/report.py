"""The run report: one self-contained HTML file with embedded plots, plus metrics as CSV and JSON.

The report lays out what the stages produced, in the order a profiling scientist reads a run:
the headline metrics (profile set × metric), the comparison of profile pipelines, quality control
(cells per well, cells left out), sample cells, replicate reproducibility, mAP per group, the
retrieval curves, the profiles' PCA and similarity, and last the run's details (timings,
versions, the config) collapsed. Values are never dropped for being infinite or NaN: tables
print ``inf`` / ``NaN`` and plots mark them. The metric plots come from
:mod:`cpzarr.evaluate.plots`; plots that are not metrics (the plate heat map, the crop montage)
live here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpzarr._files import write_atomic

__all__ = [
    "cells_per_well_summary",
    "format_value",
    "headline_table",
    "is_count",
    "montage_cells",
    "percent_replicating",
    "plot_cells_per_well",
    "plot_crop_montage",
    "well_position",
    "write_report",
]


def well_position(well: str) -> tuple[int, int]:
    """Return the zero-based ``(row, column)`` of a well name such as ``"B03"``.

    Examples
    --------
    >>> well_position("B03")
    (1, 2)
    >>> well_position("AA01")
    (26, 0)
    """
    letters = well.rstrip(string.digits)
    digits = well[len(letters):]
    if not letters or not digits:
        raise ValueError(f"well name {well!r} is not of the form A01")
    row = 0
    for ch in letters.upper():
        row = row * 26 + (ord(ch) - ord("A") + 1)
    return row - 1, int(digits) - 1


def plot_cells_per_well(counts, *, title: str = "Cells per well"):
    """Heat map of cell counts in plate layout, one panel per plate.

    Parameters
    ----------
    counts : DataArray (plate, well)
        Cells per well; NaN or missing wells are drawn blank.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Rows A… top to bottom, columns 1… left to right, up to the last row and column holding a
        well of the screen (a screen using row A only is drawn as one row, not as a 384-well plate
        of blanks). Small plates carry the count in each well.

    Examples
    --------
    >>> import xarray as xr
    >>> c = xr.DataArray([[10.0, 20.0]], dims=("plate", "well"),
    ...                  coords={"plate": ["P1"], "well": ["A01", "B02"]})
    >>> fig = plot_cells_per_well(c)
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    grids = cells_per_well_grids(counts)
    n = len(grids)
    cols = min(n, 2)
    rows = int(np.ceil(n / cols))
    shape = next(iter(grids.values())).shape
    side = 5.6 / shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, (shape[0] * side + 0.9) * rows + 0.5),
                             squeeze=False)
    vmax = np.nanmax([np.nanmax(g) if np.isfinite(g).any() else 0 for g in grids.values()] + [1])
    for ax, (plate, grid) in zip(axes.flat, grids.items()):
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(str(plate), fontsize=10)
        ax.set_yticks(range(grid.shape[0]))
        ax.set_yticklabels([chr(ord("A") + i) if i < 26 else str(i) for i in range(grid.shape[0])],
                           fontsize=6)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_xticklabels([str(i + 1) for i in range(grid.shape[1])], fontsize=6)
        if grid.size <= 96:
            for (r, c), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.6 * vmax else "black")
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="cells")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def cells_per_well_grids(counts) -> dict[str, np.ndarray]:
    """Arrange ``counts[plate, well]`` as one (rows, columns) array per plate (NaN = no well).

    The grid runs from A01 to the last row and column holding a well.
    """
    wells = [str(w) for w in counts["well"].values]
    positions = [well_position(w) for w in wells]
    n_rows = max(r for r, _ in positions) + 1
    n_cols = max(c for _, c in positions) + 1
    values = np.asarray(counts.transpose("plate", "well").values, dtype=float)
    grids = {}
    for p, plate in enumerate(counts["plate"].values):
        grid = np.full((n_rows, n_cols), np.nan)
        for w, (r, c) in enumerate(positions):
            grid[r, c] = values[p, w]
        grids[str(plate)] = grid
    return grids


def cells_per_well_summary(counts) -> pd.DataFrame:
    """Per plate: wells, cells, and the minimum, median and maximum of cells per well.

    Parameters
    ----------
    counts : DataArray (plate, well)
        Cells per well (NaN = no such well on that plate).

    Returns
    -------
    pandas.DataFrame
        ``plate``, ``wells``, ``cells``, ``min``, ``median``, ``max`` and ``empty wells`` (wells
        with no cell), one row per plate, plus a row ``all``.
    """
    values = np.asarray(counts.transpose("plate", "well").values, dtype=float)
    plates = [str(p) for p in counts["plate"].values]
    rows = []
    for name, v in list(zip(plates, values)) + [("all", values.ravel())]:
        v = v[np.isfinite(v)]
        rows.append({
            "plate": name, "wells": int(v.size), "cells": int(v.sum()),
            "min": float(v.min()) if v.size else np.nan,
            "median": float(np.median(v)) if v.size else np.nan,
            "max": float(v.max()) if v.size else np.nan,
            "empty wells": int((v == 0).sum()),
        })
    return pd.DataFrame(rows)


# --- replicate reproducibility ----------------------------------------------------------------

def percent_replicating(medians: pd.DataFrame) -> float:
    """Share of replicate groups whose median replicate similarity beats the null threshold.

    Cytominer-eval's "percent replicating" (as a fraction): a group counts when its median
    pairwise similarity is strictly above the null quantile of non-replicate pairs.

    Parameters
    ----------
    medians : pandas.DataFrame
        The second result of :func:`cpzarr.evaluate.replicate_reproducibility`
        (``median_similarity`` and ``threshold`` per replicate group).

    Returns
    -------
    float
        NaN when there is no replicate group.

    Examples
    --------
    >>> percent_replicating(pd.DataFrame({"median_similarity": [0.9, 0.1], "threshold": 0.5}))
    0.5
    """
    if not len(medians):
        return float("nan")
    return float(np.mean(medians["median_similarity"].to_numpy(float) > medians["threshold"].to_numpy(float)))


# --- sample cells ------------------------------------------------------------------------------

#: Cell Painting channels drawn as red, green and blue in the montage, first ones found.
MONTAGE_CHANNELS = ("AGP", "ER", "DNA")


def montage_cells(screen, by="compound", *, per_group=4, max_groups=24, box=64, seed=0,
                  cells=None, describe=("moa",)) -> pd.DataFrame:
    """Draw a few cells of each treatment (or other well label) to show in a montage.

    Cells whose box lies wholly inside the image are preferred (others only fill a group up),
    so crops show whole cells rather than padding; groups are taken in sorted order, at most
    ``max_groups``.

    Parameters
    ----------
    screen : DataTree
        The store (``open_screen``).
    by : str
        Well-level variable of the store grouping the cells (``compound``, ``moa``, …).
    per_group : int
        Cells per group.
    max_groups : int
        Groups shown at most.
    box : int
        Crop side in pixels.
    seed : int
        Seed of the draw.
    cells : pandas.DataFrame, optional
        Cells to draw from (plate, well, site, x, y) instead of the store's ``/cells``.
    describe : sequence of str
        Further well-level variables copied onto the drawn cells when the store has them (for
        labels such as ``"cpd01 · moa01"``).

    Returns
    -------
    pandas.DataFrame
        The drawn cells (plate, well, site, x, y, ``by`` and the ``describe`` variables found),
        grouped, ``per_group`` or fewer each.
    """
    from cpzarr.cells import cells_table, screen_parts

    images, node, root = screen_parts(screen, cells)
    table = cells.reset_index(drop=True) if isinstance(cells, pd.DataFrame) else cells_table(node)
    table = table.reset_index(drop=True)
    if by not in root.data_vars or root[by].dims != ("plate", "well"):
        known = sorted(n for n, v in root.data_vars.items() if v.dims == ("plate", "well"))
        raise ValueError(f"montage: the store has no well-level variable {by!r} (it has {known})")
    plates = pd.Index(root["plate"].values.astype(str))
    wells = pd.Index(root["well"].values.astype(str))
    pi = plates.get_indexer(table["plate"].astype(str))
    wi = wells.get_indexer(table["well"].astype(str))
    for name in dict.fromkeys([by, *describe]):
        if name in root.data_vars and root[name].dims == ("plate", "well"):
            table[name] = np.asarray(root[name].values).astype(str)[pi, wi]
    height, width = images.sizes["y"], images.sizes["x"]
    half = box / 2
    inside = (table["x"].between(half, width - half - 1)) & (table["y"].between(half, height - half - 1))
    rng = np.random.default_rng(seed)
    picked = []
    for _, group in sorted(table.groupby(by), key=lambda kv: str(kv[0]))[:max_groups]:
        whole = inside.loc[group.index].to_numpy()
        # Cells wholly inside first, in random order; cells at the edge only to fill up.
        order = np.concatenate([rng.permutation(np.flatnonzero(whole)), rng.permutation(np.flatnonzero(~whole))])
        picked.append(group.iloc[np.sort(order[:per_group])])
    return pd.concat(picked) if picked else table.iloc[:0]


def plot_crop_montage(crops, by="compound", *, channels=MONTAGE_CHANNELS, tiles_per_row=4,
                      title=None):
    """A few cells per group as colour composites, one labelled strip per group.

    Parameters
    ----------
    crops : DataArray (cell, channel, y, x)
        Crops (computed or lazy) with ``by`` as a coordinate along ``cell``.
    by : str
        Coordinate along ``cell`` naming each crop's group.
    channels : sequence of str
        Up to three channels drawn as red, green, blue; the first ones present are used, else the
        crops' first three. Each channel is scaled to its 0.5–99.5 percentiles over the montage.
    tiles_per_row : int
        Groups side by side.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        ``figure.cpzarr_channels`` lists the channels drawn as red, green, blue.
    """
    from matplotlib.figure import Figure

    names = [str(c) for c in crops["channel"].values]
    rgb = [c for c in channels if c in names][:3] or names[:3]
    values = np.asarray(crops.sel(channel=rgb).values, dtype=np.float32)  # cell, c, y, x
    for c in range(values.shape[1]):
        lo, hi = np.percentile(values[:, c], [0.5, 99.5])
        values[:, c] = np.clip((values[:, c] - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    if values.shape[1] < 3:
        values = np.concatenate([values, np.zeros((values.shape[0], 3 - values.shape[1], *values.shape[2:]),
                                                  np.float32)], axis=1)
    labels = np.asarray(crops[by].values).astype(str)
    groups = list(dict.fromkeys(labels))
    per = max(int((labels == g).sum()) for g in groups) if groups else 1
    box = values.shape[-1]
    gap, tile_gap, label_h = 2, 14, 16
    tile_w = per * box + (per - 1) * gap
    ncols = max(1, min(tiles_per_row, len(groups)))
    nrows = int(np.ceil(len(groups) / ncols))
    canvas = np.ones((nrows * (box + label_h + tile_gap), ncols * (tile_w + tile_gap), 3), np.float32)
    positions = []
    for g, group in enumerate(groups):
        r, c = divmod(g, ncols)
        top = r * (box + label_h + tile_gap) + label_h
        left = c * (tile_w + tile_gap)
        for i, cell in enumerate(np.flatnonzero(labels == group)):
            x0 = left + i * (box + gap)
            canvas[top:top + box, x0:x0 + box] = np.moveaxis(values[cell], 0, -1)
        positions.append((left, top - 3, group))
    dpi = 100
    scale = max(1.0, 1100 / canvas.shape[1])
    figure = Figure(figsize=(canvas.shape[1] * scale / dpi, canvas.shape[0] * scale / dpi + 0.3), dpi=dpi)
    ax = figure.add_axes((0, 0, 1, canvas.shape[0] / (canvas.shape[0] + 0.3 * dpi / scale)))
    ax.imshow(canvas, interpolation="nearest")
    for left, y, group in positions:
        ax.text(left, y, group, fontsize=8, va="bottom", ha="left")
    ax.axis("off")
    colours = ", ".join(f"{name} {c}" for name, c in zip(("red", "green", "blue"), rgb))
    figure.suptitle(title or f"{per} cells per {by}: {colours}", fontsize=9, y=0.995, va="top")
    figure.cpzarr_channels = rgb
    return figure


# --- HTML ------------------------------------------------------------------------------------------

def _png_bytes(figure: Any) -> bytes:
    if isinstance(figure, (bytes, bytearray)):
        return bytes(figure)
    if isinstance(figure, (str, Path)):
        return Path(figure).read_bytes()
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    try:
        import matplotlib.pyplot as plt

        plt.close(figure)
    except Exception:  # a figure not managed by pyplot needs no closing
        pass
    return buf.getvalue()


def format_value(value: Any) -> str:
    """Text of a table value: 4 significant digits, ``inf``/``-inf``/``NaN`` spelt out.

    Examples
    --------
    >>> [format_value(v) for v in (0.123456, float("inf"), float("nan"), 3, True, "DMSO")]
    ['0.1235', 'inf', 'NaN', '3', 'yes', 'DMSO']
    """
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if np.isnan(v):
            return "NaN"
        if np.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def _cell(value: Any, bold: bool = False) -> str:
    text = html.escape(format_value(value))
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    classes = []
    title = ""
    if numeric:
        classes.append("num")
        if isinstance(value, (float, np.floating)) and not np.isfinite(value):
            classes.append("nonfinite")
            title = (" title='not a number (undefined: e.g. no pair to compare)'" if np.isnan(value)
                     else " title='infinite: e.g. an odds ratio whose &quot;different group&quot; cell is empty'")
    if bold:
        text = f"<b>{text}</b>"
    cls = f" class='{' '.join(classes)}'" if classes else ""
    return f"<td{cls}{title}>{text}</td>"


def _table_html(frame: pd.DataFrame, max_rows: int = 60, bold: set | None = None,
                index: bool = False, table_id: str | None = None) -> str:
    """An HTML table; ``bold`` holds (row position, column name) pairs to emphasise."""
    shown = frame.head(max_rows)
    if index:
        shown = shown.reset_index()
    bold = bold or set()
    ident = f" id='{html.escape(table_id)}'" if table_id else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for i, row in enumerate(shown.itertuples(index=False)):
        cells = "".join(_cell(v, (i, c) in bold) for c, v in zip(shown.columns, row))
        rows.append(f"<tr>{cells}</tr>")
    out = f"<table class='tbl'{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if len(frame) > max_rows:
        out += f"<p class='note'>{len(frame) - max_rows} more rows in the CSV files.</p>"
    return out


#: Headline metrics shown first, in this order (by the start of their name); others follow.
HEADLINE_ORDER = ("mAP", "fraction retrieved", "precision@R", "percent replicating", "replicate",
                  "enrichment", "DMSO batch enrichment", "precision@", "recall@")
#: Metrics where a lower value is better (a batch effect).
LOWER_IS_BETTER = ("batch",)


def is_count(metric: str) -> bool:
    """True for headline rows that count things (``n_queries``), not score them.

    Examples
    --------
    >>> is_count("n_queries"), is_count("mAP")
    (True, False)
    """
    return metric.startswith("n_") or metric.startswith("number of")


def _better(metric: str) -> str:
    if is_count(metric):
        return ""
    return "lower" if any(w in metric.lower() for w in LOWER_IS_BETTER) else "higher"


def headline_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The headline as a profile set × metric table: one row per metric, one column per set.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Long table with ``profiles``, ``metric`` and ``value`` (the run's ``headline.csv``).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``metric`` (key metrics first: mAP, fraction retrieved, precision@R, …),
        one column per profile set in the order they first appear; values untouched (``inf``
        and NaN stay).

    Examples
    --------
    >>> m = pd.DataFrame({"profiles": ["raw", "sph"], "metric": ["mAP", "mAP"], "value": [0.2, 0.4]})
    >>> float(headline_table(m).loc["mAP", "sph"])
    0.4
    """
    sets = list(dict.fromkeys(metrics["profiles"].astype(str)))
    names = list(dict.fromkeys(metrics["metric"].astype(str)))

    def rank(name):
        for i, prefix in enumerate(HEADLINE_ORDER):
            if name.startswith(prefix):
                return i
        return len(HEADLINE_ORDER)

    first = {n: i for i, n in enumerate(names)}
    names.sort(key=lambda n: (rank(n), first[n]))
    wide = metrics.assign(profiles=metrics["profiles"].astype(str), metric=metrics["metric"].astype(str))
    wide = wide.pivot_table(index="metric", columns="profiles", values="value", aggfunc="first", dropna=False)
    return wide.reindex(index=names, columns=sets)


def _headline_html(metrics: pd.DataFrame) -> str:
    wide = headline_table(metrics)
    bold = set()
    if wide.shape[1] > 1:
        for i, name in enumerate(wide.index):
            row = wide.loc[name].to_numpy(dtype=float)
            finite = np.isfinite(row)
            if finite.sum() > 1 and np.unique(row[finite]).size > 1 and not is_count(name):
                lower = _better(name) == "lower"
                best = np.nanmin(np.where(finite, row, np.nan)) if lower else np.nanmax(np.where(finite, row, np.nan))
                bold |= {(i, c) for c, v in zip(wide.columns, row) if v == best}
    frame = wide.reset_index()
    frame.insert(1, "better", [_better(n) for n in wide.index])
    cols = list(frame.columns)
    bold = {(i, c) for i, c in bold if c in cols}
    return _table_html(frame, max_rows=200, bold=bold, table_id="headline-table")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;
max-width:1150px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.1em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin:1.1em 0 .4em}
.sub{color:#666;margin-top:0}.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0 0 1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em;max-width:1100px}
.grid.two figure{flex:1 1 45%;max-width:calc(50% - .5em)}
table.tbl{border-collapse:collapse;font-size:.85em;margin:.3em 0 .8em}
table.tbl td,table.tbl th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left}
table.tbl td.num{text-align:right;font-variant-numeric:tabular-nums}
table.tbl th{background:#f3f5f8;position:sticky;top:0}
table.tbl td.nonfinite{color:#a33;background:#fff3f0;font-weight:600}
#headline-table{font-size:.95em}#headline-table td:first-child{font-weight:600}
.kv td{padding:.05em .8em .05em 0}.kv td:first-child{font-weight:600}
.note{color:#666;font-size:.85em;margin:.2em 0 .6em}
nav.toc{font-size:.85em;color:#555;margin:.4em 0 1em}nav.toc a{color:#36c;text-decoration:none;margin-right:.9em}
details{margin:.5em 0;border:1px solid #e4e4e4;border-radius:4px;padding:.3em .7em}
summary{cursor:pointer;font-weight:600}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.78em;max-height:40em}
"""

#: Sections whose figures are laid out two per row, scaled down if need be.
TWO_PER_ROW = ("similarity", "enrichment")

# The order a scientist reads a profiling run in; unknown sections go last, before the details.
SECTIONS = (
    ("headline", "Headline metrics"),
    ("comparison", "Profile pipelines compared"),
    ("summary", "Dataset and quality control"),
    ("cells", "Cells per well"),
    ("crops", "Sample cells"),
    ("replicates", "Replicate reproducibility"),
    ("map", "mAP per group"),
    ("enrichment", "Enrichment"),
    ("precision_recall", "Precision and recall at K"),
    ("hitk", "Hit@K"),
    ("pca", "Profiles (PCA)"),
    ("similarity", "Similarity of treatments"),
    ("training", "Training"),
    ("provenance", "Run details"),
)


def write_report(
    out_dir: str | os.PathLike,
    *,
    title: str = "cpzarr profiling report",
    summary: Mapping[str, Any] | None = None,
    metrics: pd.DataFrame | None = None,
    figures: Mapping[str, Sequence[tuple[str, Any]]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    tables: Mapping[str, Any] | None = None,
    notes: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write ``report.html``, ``metrics.csv`` and ``metrics.json`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Folder of the report; created if needed.
    title : str
        Page title.
    summary : mapping, optional
        Dataset summary (plates, wells, cells, treatments, …), shown under "Dataset and quality
        control".
    metrics : DataFrame, optional
        The headline metrics, one row per (``profiles``, ``metric``) with a ``value``; shown first
        as a metric × profile set table (:func:`headline_table`; the best finite value of each
        metric in bold when several sets are compared) and written to CSV and JSON. A frame
        without those columns is shown as it is.
    figures : mapping of section → list of (caption, figure), optional
        Sections are the keys of :data:`SECTIONS` or any other name; a figure is a matplotlib
        Figure, PNG bytes or a PNG path. Each is embedded as base64, so the file stands alone.
    provenance : mapping, optional
        Scalars (store, created, …) are shown as a list; nested values (versions, the config,
        the store's records) each once, collapsed in ``<details>`` blocks.
    timings : mapping of stage → seconds, optional
        Wall time per stage.
    tables : mapping of section → DataFrame or list of (caption, DataFrame), optional
        Tables shown under their section, before its figures.
    notes : mapping of section → list of str, optional
        Sentences shown under a section's heading (plain text).

    Returns
    -------
    pathlib.Path
        Path of ``report.html``. Files are written to temporary names and renamed, so an
        interrupted run never leaves a report that looks complete; they get the umask's
        permissions (``0o644`` with the usual umask 022), so others can read them.

    Notes
    -----
    ``metrics.json`` is a list of records. Infinite and undefined values are kept as the
    tokens ``Infinity``, ``-Infinity`` and ``NaN`` (as Python's :mod:`json`, pandas and JSON5
    read and write them), never turned into ``null``: an infinite enrichment odds ratio is a
    result, not a missing one. ``json.loads`` and ``pandas.read_json`` read them back as floats;
    a strict JSON parser needs them replaced first. ``metrics.csv`` spells them ``inf`` and
    ``nan``.

    Examples
    --------
    >>> import pandas as pd
    >>> path = write_report("/tmp/rep", summary={"plates": 2},
    ...                     metrics=pd.DataFrame({"metric": ["mAP"], "value": [0.5]}))  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = dict(figures or {})
    tables = dict(tables or {})
    notes = dict(notes or {})
    parts = [f"<h1>{html.escape(title)}</h1>"]
    subtitle = [str(provenance[k]) for k in ("created", "store") if provenance and provenance.get(k)]
    if subtitle:
        parts.append(f"<p class='sub'>{html.escape(' · '.join(subtitle))}</p>")

    known = [name for name, _ in SECTIONS]
    extra = [s for s in list(figures) + list(tables) + list(notes) if s not in known]
    headings = dict(SECTIONS)
    order = known[:-1] + list(dict.fromkeys(extra)) + known[-1:]
    has_headline = metrics is not None and len(metrics) > 0
    blocks = []
    for section in order:
        body = [f"<p class='note'>{html.escape(n)}</p>" for n in notes.get(section, ())]
        if section == "headline" and has_headline:
            if {"profiles", "metric", "value"} <= set(metrics.columns):
                body.append(_headline_html(metrics))
            else:
                body.append(_table_html(metrics))
        if section == "summary" and summary:
            body.append(_kv_html(summary))
        if section == "provenance" and (provenance or timings):
            body.append(_provenance_html(provenance or {}, timings))
        for caption, table in _captioned(tables.get(section)):
            if caption:
                body.append(f"<h3>{html.escape(caption)}</h3>")
            body.append(_table_html(table))
        if figures.get(section):
            body.append("<div class='grid two'>" if section in TWO_PER_ROW else "<div class='grid'>")
            for caption, fig in figures[section]:
                data = base64.b64encode(_png_bytes(fig)).decode("ascii")
                body.append(
                    f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            body.append("</div>")
        if len(body) > len(notes.get(section, ())):
            heading = headings.get(section, section.replace("_", " ").capitalize())
            blocks.append((section, heading, f"<h2 id='{section}'>{html.escape(heading)}</h2>" + "".join(body)))
    if blocks:
        links = "".join(f"<a href='#{s}'>{html.escape(h)}</a>" for s, h, _ in blocks)
        parts.append(f"<nav class='toc'>{links}</nav>")
    parts += [b for _, _, b in blocks]

    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    if metrics is not None:
        write_atomic(out / "metrics.csv", metrics.to_csv(index=False))
        write_atomic(out / "metrics.json", metrics_json(metrics))
    path = out / "report.html"
    write_atomic(path, page)
    return path


def metrics_json(metrics: pd.DataFrame) -> str:
    """The metrics as JSON records, ``inf``/NaN kept as ``Infinity``/``NaN`` (see :func:`write_report`).

    Examples
    --------
    >>> metrics_json(pd.DataFrame({"metric": ["enrichment@99"], "value": [float("inf")]}))
    '[\\n  {\\n    "metric": "enrichment@99",\\n    "value": Infinity\\n  }\\n]'
    """
    records = [{str(k): _plain(v) for k, v in row.items()} for row in metrics.to_dict(orient="records")]
    return json.dumps(records, indent=2, allow_nan=True)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _captioned(tables: Any) -> list[tuple[str, pd.DataFrame]]:
    if tables is None:
        return []
    if isinstance(tables, pd.DataFrame):
        return [("", tables)]
    return [(str(c), t) for c, t in tables]


def _provenance_html(provenance: Mapping[str, Any], timings: Mapping[str, float] | None) -> str:
    body = []
    scalars = {k: v for k, v in provenance.items() if not isinstance(v, (dict, list)) and k != "created"}
    if scalars:
        body.append(_kv_html(scalars))
    if timings:
        t = pd.DataFrame({"stage": list(timings), "seconds": [float(v) for v in timings.values()]})
        body.append("<h3>Timings</h3>" + _table_html(t))
    for key, value in provenance.items():
        if not isinstance(value, (dict, list)):
            continue
        text = json.dumps(value, indent=2, default=str)
        size = len(value) if isinstance(value, (dict, list)) else 1
        body.append(f"<details><summary>{html.escape(str(key))} ({size} entries)</summary>"
                    f"<pre>{html.escape(text)}</pre></details>")
    return "".join(body)


def _kv_html(values: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in values.items()
    )
    return f"<table class='kv'>{rows}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return format_value(value)
