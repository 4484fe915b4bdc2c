"""The run report: one self-contained HTML file with embedded plots, plus metrics as CSV and JSON.

The report lays out what the stages produced; the metric plots themselves come from
:mod:`cpzarr.evaluate`. Plots that are not metrics (the cells-per-well plate heat map) live here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import string
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["write_report", "plot_cells_per_well", "well_position"]


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
        Rows A… top to bottom, columns 1… left to right; the plate is at least 16 × 24 (384 wells).

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
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
    vmax = np.nanmax([np.nanmax(g) if np.isfinite(g).any() else 0 for g in grids.values()] + [1])
    for ax, (plate, grid) in zip(axes.flat, grids.items()):
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(str(plate), fontsize=10)
        ax.set_yticks(range(grid.shape[0]))
        ax.set_yticklabels([chr(ord("A") + i) if i < 26 else str(i) for i in range(grid.shape[0])],
                           fontsize=6)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_xticklabels([str(i + 1) for i in range(grid.shape[1])], fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.03, label="cells")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def cells_per_well_grids(counts) -> dict[str, np.ndarray]:
    """Arrange ``counts[plate, well]`` as one (rows, columns) array per plate (NaN = no well)."""
    wells = [str(w) for w in counts["well"].values]
    positions = [well_position(w) for w in wells]
    n_rows = max(16, max(r for r, _ in positions) + 1)
    n_cols = max(24, max(c for _, c in positions) + 1)
    values = np.asarray(counts.transpose("plate", "well").values, dtype=float)
    grids = {}
    for p, plate in enumerate(counts["plate"].values):
        grid = np.full((n_rows, n_cols), np.nan)
        for w, (r, c) in enumerate(positions):
            grid[r, c] = values[p, w]
        grids[str(plate)] = grid
    return grids


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


def _table_html(frame: pd.DataFrame, max_rows: int = 60) -> str:
    shown = frame.head(max_rows)
    out = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="tbl")
    if len(frame) > max_rows:
        out += f"<p class='note'>{len(frame) - max_rows} more rows in the CSV files.</p>"
    return out


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1150px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#666;margin-top:0}.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0 0 1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table.tbl{border-collapse:collapse;font-size:.85em}table.tbl td,table.tbl th{padding:.2em .6em;
border-bottom:1px solid #eee;text-align:right}table.tbl th{background:#f6f6f6}
.kv td:first-child{font-weight:600;padding-right:1em}.note{color:#777;font-size:.85em}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}
"""

# The order a scientist reads a profiling run in; unknown figure groups go last.
SECTIONS = (
    ("summary", "Dataset"),
    ("cells", "Cells per well"),
    ("pca", "Profiles (PCA)"),
    ("enrichment", "Enrichment"),
    ("precision_recall", "Precision and recall at K"),
    ("hitk", "Hit@K"),
    ("training", "Training"),
    ("comparison", "Comparison"),
    ("metrics", "Metrics"),
    ("provenance", "Provenance"),
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
    tables: Mapping[str, pd.DataFrame] | None = None,
) -> Path:
    """Write ``report.html``, ``metrics.csv`` and ``metrics.json`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Folder of the report; created if needed.
    title : str
        Page title.
    summary : mapping, optional
        Dataset summary shown first (plates, wells, cells, treatments, …).
    metrics : DataFrame, optional
        The headline metrics, one row per (profile set, metric); written to CSV and JSON too.
    figures : mapping of section → list of (caption, figure), optional
        Sections are ``cells``, ``pca``, ``enrichment``, ``precision_recall``, ``hitk``,
        ``training``, ``comparison`` or any other name; a figure is a matplotlib Figure, PNG
        bytes or a PNG path. Each is embedded as base64, so the file stands alone.
    provenance : mapping, optional
        Config, versions, weights checksums.
    timings : mapping of stage → seconds, optional
        Wall time per stage.
    tables : mapping of section → DataFrame, optional
        Extra tables shown under their section.

    Returns
    -------
    pathlib.Path
        Path of ``report.html``. Files are written to temporary names and renamed, so an
        interrupted run never leaves a report that looks complete.

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
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if provenance and provenance.get("created"):
        parts.append(f"<p class='sub'>{html.escape(str(provenance['created']))}</p>")

    known = [name for name, _ in SECTIONS]
    extra = [s for s in list(figures) + list(tables) if s not in known]
    headings = dict(SECTIONS)
    for section in known + list(dict.fromkeys(extra)):
        body = []
        if section == "summary" and summary:
            body.append(_kv_html(summary))
        if section == "metrics" and metrics is not None and len(metrics):
            body.append(_table_html(metrics))
        if section == "provenance" and (provenance or timings):
            if timings:
                t = pd.DataFrame({"stage": list(timings), "seconds": [float(v) for v in timings.values()]})
                body.append("<h3>Timings</h3>" + _table_html(t))
            if provenance:
                scalars = {k: v for k, v in provenance.items() if not isinstance(v, (dict, list))}
                nested = {k: v for k, v in provenance.items() if isinstance(v, (dict, list))}
                if scalars:
                    body.append(_kv_html(scalars))
                for k, v in nested.items():
                    text = json.dumps(v, indent=2, default=str)
                    body.append(f"<h3>{html.escape(k)}</h3><pre>{html.escape(text)}</pre>")
        if section in tables:
            body.append(_table_html(tables[section]))
        if section in figures and figures[section]:
            body.append("<div class='grid'>")
            for caption, fig in figures[section]:
                data = base64.b64encode(_png_bytes(fig)).decode("ascii")
                body.append(
                    f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            body.append("</div>")
        if body:
            heading = headings.get(section, section.replace("_", " ").capitalize())
            parts.append(f"<h2 id='{section}'>{html.escape(heading)}</h2>" + "".join(body))

    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    if metrics is not None:
        _atomic_write(out / "metrics.csv", metrics.to_csv(index=False))
        _atomic_write(out / "metrics.json", metrics.to_json(orient="records", indent=2))
    path = out / "report.html"
    _atomic_write(path, page)
    return path


def _kv_html(values: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in values.items()
    )
    return f"<table class='kv'>{rows}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
