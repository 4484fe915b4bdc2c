"""The run report as a scientist reads it: headline numbers, non-finite values, robust axes,
files others can read, the config once and collapsed.

Every number checked here is computed again in the test with numpy from the profiles.
"""

import html
import json
import os
import re
import stat
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cpzarr import report
from cpzarr.evaluate import plots
from cpzarr.report import write_report


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def _table_rows(page, table_id):
    """The cells' texts of the HTML table with ``id=table_id``, one list per row (header first)."""
    match = re.search(rf"<table[^>]*id='{table_id}'.*?</table>", page, flags=re.S)
    assert match, f"no table {table_id!r} in the page"
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", match.group(0), flags=re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)
        rows.append([html.unescape(re.sub(r"<[^>]+>", "", c)) for c in cells])
    return rows


# --- numpy references ------------------------------------------------------------------------

def _pearson(values):
    return np.corrcoef(np.asarray(values, dtype=np.float64))


def _numpy_map(values, groups):
    """Mean over groups of the mean average precision of each query against all other samples."""
    sims = _pearson(values)
    groups = np.asarray(groups)
    ap = np.empty(len(groups))
    for q in range(len(groups)):
        others = np.delete(np.arange(len(groups)), q)
        order = others[np.argsort(-sims[q, others], kind="stable")]
        hits = groups[order] == groups[q]
        ranks = np.flatnonzero(hits) + 1
        ap[q] = np.mean(np.arange(1, hits.sum() + 1) / ranks)
    return pd.Series(ap).groupby(groups).mean().mean()


def _numpy_percent_replicating(values, keys, q=0.95):
    sims = _pearson(values)
    keys = np.asarray(keys)
    i, j = np.triu_indices(len(keys), k=1)
    same = keys[i] == keys[j]
    threshold = np.quantile(sims[i, j][~same], q)
    medians = [np.median(sims[i, j][same & (keys[i] == k)]) for k in np.unique(keys)
               if (same & (keys[i] == k)).any()]
    return float(np.mean(np.asarray(medians) > threshold)), float(np.mean(sims[i, j][same] > threshold))


# --- the report stage on a small store of profiles ---------------------------------------------

@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
    """``stage_evaluate`` then ``stage_report`` on synthetic well profiles (two pipelines)."""
    from cpzarr import stages
    from cpzarr.config import load_config
    from cpzarr.profiles import consensus, pipeline, write_profiles
    from cpzarr.run import RunState
    from cpzarr.store import record_provenance
    from cpzarr.synthetic import make_profiles

    root = tmp_path_factory.mktemp("run")
    store = root / "screen.zarr"
    wells = make_profiles(n_plates=4, n_batches=2, n_negcon=4, n_compounds=12, n_replicates=3,
                          n_moas=4, n_features=24, n_samples=None, seed=1)
    pipelines = {"raw": [], "scaled": [("normalize", {"method": "standardize"})]}
    for name, steps in pipelines.items():
        out = (pipeline(wells, steps) if steps else wells).compute()
        write_profiles(out, store, node=f"profiles/efficientnet-lite0/{name}")
        cons = consensus(out, replicate_columns=["compound", "dose"]).compute()
        write_profiles(cons, store, node=f"profiles/efficientnet-lite0/{name}_consensus")
    cfg = load_config(text=f"""
name: tiny
input: {{store: {store}}}
locate: {{method: detect}}
profiles:
  pipelines:
    raw: []
    scaled: [{{normalize: {{method: standardize}}}}]
evaluate:
  metrics: [mean_average_precision, enrichment, batch_enrichment]
  percentiles: [99, 95]
output: {{store: {store}, report: {root / 'report'}}}
""")
    record_provenance(store, "run", {"config": cfg.to_dict()})  # as the ingest stage does
    ctx = stages.Context(cfg=cfg, store=store, state=RunState(store), progress=False)
    # times recorded by earlier runs: the evaluate stage's and an earlier report's
    ctx.state.data.setdefault("stages", {}).update({"evaluate": {"seconds": 43.21}, "report": {"seconds": 98.76}})
    with umask(0o022):
        stages.stage_evaluate(ctx)
        stages.stage_report(ctx)
    page = (root / "report" / "report.html").read_text()
    return {"root": root, "page": page, "cfg": cfg, "store": store}


def test_headline_table_holds_the_numbers_numpy_computes(run_report):
    from cpzarr.profiles import read_profiles

    rows = _table_rows(run_report["page"], "headline-table")
    header, body = rows[0], {r[0]: r for r in rows[1:]}
    assert header[:2] == ["metric", "better"] and header[2:] == ["raw", "scaled"]
    store = run_report["store"]
    for column, name in enumerate(header[2:], start=2):
        cons = read_profiles(store, node=f"profiles/efficientnet-lite0/{name}_consensus")
        keep = cons["control"].values != "negcon"
        expected = _numpy_map(cons.values[keep], cons["moa"].values[keep])
        assert float(body["mAP"][column]) == pytest.approx(expected, rel=1e-3)

        wells = read_profiles(store, node=f"profiles/efficientnet-lite0/{name}")
        keep = wells["control"].values != "negcon"
        keys = [f"{c}|{d}" for c, d in zip(wells["compound"].values[keep], wells["dose"].values[keep])]
        groups, pairs = _numpy_percent_replicating(wells.values[keep], keys)
        assert float(body["percent replicating"][column]) == pytest.approx(groups, abs=1e-4)
        assert float(body["replicate pairs above null"][column]) == pytest.approx(pairs, rel=1e-3)
    assert body["DMSO batch enrichment@95"][1] == "lower" and body["mAP"][1] == "higher"
    # The headline rows come first, in the order a scientist reads them.
    assert [r[0] for r in rows[1:4]] == ["mAP", "fraction retrieved (corrected p<0.05)", "precision@R"]
    # metrics.csv carries the same numbers, replicate reproducibility included.
    metrics = pd.read_csv(run_report["root"] / "report" / "metrics.csv")
    assert set(metrics["metric"]) >= {"mAP", "percent replicating", "replicate pairs above null"}


def test_report_files_readable_by_others(run_report):
    report = run_report["root"] / "report"
    for name in ("report.html", "metrics.csv", "metrics.json"):
        assert _mode(report / name) == 0o644, name
    assert not list(report.glob(".*.tmp"))


def test_config_is_shown_once_and_collapsed(run_report):
    page = run_report["page"]
    # A key only the config has, as html.escape writes the JSON.
    marker = "&quot;pipelines&quot;"
    assert page.count(marker) == 1
    at = page.index(marker)
    opened, closed = page.rfind("<details>", 0, at), page.rfind("</details>", 0, at)
    assert opened > closed, "the config is not inside a <details> block"
    # The store's record of the same config is not printed again.
    assert "store records" in page


def test_report_sections_with_their_figures(run_report):
    page = run_report["page"]
    for section in ("headline", "comparison", "replicates", "map", "enrichment", "pca", "similarity"):
        assert f"<h2 id='{section}'>" in page, section
    # mAP per MOA with p-values: the per-group table and the mAP vs -log10 p figure.
    assert "mean average precision per group" in page
    assert "mAP vs −log10 p" in page


# --- non-finite values -----------------------------------------------------------------------

def test_metrics_json_keeps_infinity_and_nan(tmp_path):
    metrics = pd.DataFrame({"profiles": ["raw", "spherized", "spherized"],
                            "metric": ["enrichment@99", "enrichment@99", "mAP"],
                            "value": [3.5, np.inf, np.nan]})
    write_report(tmp_path, metrics=metrics)
    text = (tmp_path / "metrics.json").read_text()
    assert "null" not in text
    records = json.loads(text)
    assert records[1]["value"] == np.inf and np.isnan(records[2]["value"])
    back = pd.read_json(tmp_path / "metrics.json")
    assert np.isposinf(back["value"][1]) and np.isnan(back["value"][2])


def test_headline_table_spells_out_inf_and_nan(tmp_path):
    metrics = pd.DataFrame({"profiles": ["raw", "spherized", "raw", "spherized"],
                            "metric": ["enrichment@99", "enrichment@99", "mAP", "mAP"],
                            "value": [3.5, np.inf, 0.25, np.nan]})
    page = write_report(tmp_path, metrics=metrics).read_text()
    rows = {r[0]: r for r in _table_rows(page, "headline-table")[1:]}
    assert rows["enrichment@99"][2:] == ["3.5", "inf"]
    assert rows["mAP"][2:] == ["0.25", "NaN"]
    assert page.count("class='num nonfinite'") == 2
    assert report.headline_table(metrics).loc["enrichment@99", "spherized"] == np.inf


def test_enrichment_plot_marks_infinite_odds_ratios():
    percentiles = [99.0, 98.0, 97.0, 95.0, 90.0]
    finite = pd.DataFrame({"percentile": percentiles, "odds_ratio": [9.0, 7.0, 6.0, 4.0, 2.0]})
    infinite = pd.DataFrame({"percentile": percentiles, "odds_ratio": [np.inf] * 5})
    mixed = pd.DataFrame({"percentile": percentiles, "odds_ratio": [np.inf, np.nan, 5.0, 3.0, 2.0]})
    figure = plots.enrichment({"raw": finite, "spherized": infinite, "mad": mixed})
    (ax,) = figure.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "spherized (inf at 5 of 5 percentiles)" in labels
    assert "mad (inf at 1 of 5 percentiles; NaN at 1 of 5 percentiles)" in labels
    # One marker per infinite or NaN point, at its percentile, inside the x range.
    xs = sorted(x for c in ax.collections for x in np.asarray(c.get_offsets())[:, 0])
    assert xs == sorted(percentiles + [99.0, 98.0])
    texts = [t.get_text().strip() for t in ax.texts]
    assert texts.count("inf") == 6 and texts.count("NaN") == 1
    low, high = sorted(ax.get_xlim())
    assert low <= 90 and high >= 99
    # The finite line is drawn as before.
    line = next(line for line in ax.get_lines() if line.get_label() == "raw")
    np.testing.assert_array_equal(line.get_ydata(), [9.0, 7.0, 6.0, 4.0, 2.0])


def test_compare_plot_labels_infinite_bars():
    metrics = pd.DataFrame({"profiles": ["raw", "sph"], "metric": ["enrichment@90"] * 2,
                            "value": [5.0, np.inf]})
    figure = plots.compare(metrics)
    texts = [t.get_text().strip() for t in figure.axes[0].texts]
    assert texts == ["5", "inf"]


# --- robust PCA axes -------------------------------------------------------------------------

def test_pca_axes_are_fitted_to_the_bulk_not_to_outliers():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(200, 10)) * np.linspace(3, 0.5, 10)
    values[:2] += 400.0  # two wells far from the rest
    profiles = xr.DataArray(values, dims=("sample", "feature"),
                            coords={"batch": ("sample", ["B1", "B2"] * 100)})
    figure = plots.pca(profiles, color="batch")
    (ax,) = figure.axes
    centred = values - values.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ vt[:2].T
    for axis, limits in enumerate((ax.get_xlim(), ax.get_ylim())):
        s = scores[:, axis]
        # The stated rule, computed here: 5th-95th percentiles (data values), widened by half
        # their distance, within the data, plus a 3 % margin; the sign of a component is free.
        lo, hi = np.sort(s)[int(np.ceil(0.05 * 199))], np.sort(s)[int(np.floor(0.95 * 199))]
        lo, hi = max(s.min(), lo - 0.5 * (hi - lo)), min(s.max(), hi + 0.5 * (hi - lo))
        expected = np.array([lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo)])
        got = np.array(limits)
        assert np.allclose(got, expected, rtol=1e-6) or np.allclose(got, -expected[::-1], rtol=1e-6)
    # The bulk is inside the axes; the outliers are drawn on the border and counted.
    assert sorted(figure.cpzarr_clipped[:2]) == [0, 1]
    assert "beyond the axes" in ax.get_title()
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    bulk = np.abs(scores[2:, 0]) < 60
    assert np.all((np.abs(scores[2:, 0][bulk]) <= max(abs(x0), abs(x1))))
    assert x1 - x0 < 100  # the outliers at ~400 x sqrt(10) did not stretch the axis


def test_robust_limits_keep_a_normal_sample_whole():
    values = np.random.default_rng(1).normal(size=5000)
    low, high = plots.robust_limits(values)
    assert np.mean((values >= low) & (values <= high)) > 0.998


# --- files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_report_and_run_state_follow_the_umask(tmp_path, mask, expected):
    from cpzarr.run import RunState

    metrics = pd.DataFrame({"profiles": ["raw"], "metric": ["mAP"], "value": [0.5]})
    with umask(mask):
        write_report(tmp_path, metrics=metrics)
        state = RunState(tmp_path / "screen.zarr")
        state.mark("ingest", "abc", 1.0)
    for name in ("report.html", "metrics.csv", "metrics.json", "screen.zarr.run.json"):
        assert _mode(tmp_path / name) == expected, name
    assert json.loads((tmp_path / "screen.zarr.run.json").read_text())["stages"]["ingest"]["fingerprint"] == "abc"


# --- mAP with or without p-values ----------------------------------------------------------------

def _map_table(with_p):
    table = pd.DataFrame({"moa": ["a", "b", "c", "d"], "n_queries": [4, 4, 3, 2],
                          "mean_average_precision": [0.9, 0.5, 0.3, 0.8]})
    if with_p:
        table["p_value"] = [0.001, 0.04, 0.5, 0.01]
        table["corrected_p_value"] = [0.004, 0.053, 0.5, 0.02]
        table["below_corrected_p"] = table["corrected_p_value"] < 0.05
    return table


def test_map_section_renders_p_values_when_present_and_says_so_when_absent():
    from cpzarr.stages import _report_map

    figures, tables, notes = {}, {}, {}
    _report_map({"raw": {"mean_average_precision": _map_table(True)},
                 "sph": {"mean_average_precision": _map_table(False)}}, "moa", figures, tables, notes)
    [(caption, wide)] = tables["map"]
    assert list(wide["moa"]) == ["a", "d", "b", "c"]  # best mean mAP first
    assert list(wide["raw corrected p"]) == [0.004, 0.02, 0.053, 0.5]
    assert list(wide["raw retrieved"]) == [True, True, False, False]
    assert "sph corrected p" not in wide.columns
    assert len(figures["map"]) == 1 and "raw 50%" in notes["map"][0]

    figure = figures["map"][0][1]
    (ax,) = figure.axes
    [points] = ax.collections
    np.testing.assert_allclose(sorted(points.get_offsets()[:, 0]),
                               sorted(-np.log10([0.004, 0.053, 0.5, 0.02])))
    assert ax.get_legend().get_texts()[0].get_text() == "raw: 50% retrieved"

    figures, tables, notes = {}, {}, {}
    _report_map({"sph": {"mean_average_precision": _map_table(False)}}, "moa", figures, tables, notes)
    assert "map" not in figures and "no p-values" in notes["map"][0]


def test_fraction_retrieved_from_either_column():
    with_flag = _map_table(True)
    assert plots.fraction_retrieved(with_flag) == 0.5
    assert plots.fraction_retrieved(with_flag.drop(columns="below_corrected_p")) == 0.5
    assert np.isnan(plots.fraction_retrieved(_map_table(False)))


def test_percent_replicating_counts_groups_above_the_threshold():
    medians = pd.DataFrame({"median_similarity": [0.9, 0.2, 0.5, 0.51], "threshold": 0.5})
    assert report.percent_replicating(medians) == 0.5


# --- sample cells -----------------------------------------------------------------------------

def _screen():
    """Two wells, three channels, 40 x 40 px; every pixel holds 100 * well + 10 * channel + 1."""
    images = np.zeros((1, 2, 1, 3, 40, 40), dtype=np.uint16)
    for w in range(2):
        for c in range(3):
            images[0, w, 0, c] = 100 * w + 10 * c + 1
    images[0, :, 0, :, 20, 20] += 5  # a bright spot, so each crop has a range to scale
    return xr.Dataset(
        {"images": (("plate", "well", "site", "channel", "y", "x"), images),
         "compound": (("plate", "well"), np.array([["cpdB", "cpdA"]], dtype=object))},
        coords={"plate": ["P1"], "well": ["A01", "A02"], "site": [1], "channel": ["DNA", "ER", "AGP"]},
    )


def test_montage_takes_cells_inside_the_image_per_treatment():
    screen = _screen()
    cells = pd.DataFrame({"plate": "P1", "well": ["A01"] * 5 + ["A02"] * 3, "site": 1,
                          "x": [20, 21, 2, 19, 20, 20, 38, 21], "y": [20, 20, 2, 19, 21, 20, 20, 19]})
    drawn = report.montage_cells(screen, by="compound", per_group=3, box=8, cells=cells)
    assert list(drawn["compound"]) == ["cpdA"] * 3 + ["cpdB"] * 3  # groups sorted, 3 cells each
    # A01 (cpdB) has 4 cells whose 8-px box is inside the 40-px image: the one at (2, 2) is not taken.
    b = drawn[drawn["compound"] == "cpdB"]
    assert not ((b["x"] == 2) & (b["y"] == 2)).any()
    # A02 (cpdA) has only 2 such cells; the one at the edge fills the group up.
    assert sorted(drawn[drawn["compound"] == "cpdA"]["x"]) == [20, 21, 38]


def test_crop_montage_draws_agp_er_dna_as_red_green_blue():
    from cpzarr.crops import crops

    screen = _screen()
    cells = pd.DataFrame({"plate": "P1", "well": ["A01", "A02"], "site": 1, "x": [20, 20], "y": [20, 20]})
    view = crops(screen, box=8, edge="pad", cells=cells).compute()
    view = view.assign_coords(compound=("cell", ["cpdB", "cpdA"]))
    figure = report.plot_crop_montage(view, by="compound")
    assert figure.cpzarr_channels == ["AGP", "ER", "DNA"]
    canvas = np.asarray(figure.axes[0].get_images()[0].get_array())
    raw = np.asarray(view.values, dtype=float)  # cell, channel (DNA, ER, AGP), y, x
    expected = np.empty((2, 8, 8, 3))
    for rgb, channel in enumerate([2, 1, 0]):  # red AGP, green ER, blue DNA
        lo, hi = np.percentile(raw[:, channel], [0.5, 99.5])
        expected[..., rgb] = np.clip((raw[:, channel] - lo) / (hi - lo), 0, 1)
    top = 16  # the band holding the labels above the first row of tiles
    np.testing.assert_allclose(canvas[top:top + 8, 0:8], expected[0], atol=1e-6)  # cpdB first
    np.testing.assert_allclose(canvas[top:top + 8, 22:30], expected[1], atol=1e-6)  # then cpdA
    assert [t.get_text() for t in figure.axes[0].texts] == ["cpdB", "cpdA"]


def test_format_value_spells_non_finite_values():
    assert [report.format_value(v) for v in (np.float32(np.inf), -np.inf, np.nan, np.int64(3), np.True_)] == \
        ["inf", "-inf", "NaN", "3", "yes"]


# --- quality control: cells left out -----------------------------------------------------------

def test_quality_notes_count_cells_left_out(tmp_path, monkeypatch):
    from cpzarr import stages
    from cpzarr.config import load_config

    store = tmp_path / "screen.zarr"
    cells = xr.Dataset(
        {"x": ("cell", np.arange(5.0)), "y": ("cell", np.arange(5.0))},
        coords={"plate": ("cell", np.array(["P1"] * 5, dtype=object)),
                "well": ("cell", np.array(["A01"] * 3 + ["A02"] * 2, dtype=object)),
                "site": ("cell", np.ones(5, dtype=np.int64))},
        attrs={"dropped": json.dumps({"outside the image": {"count": 2, "examples": ["r1"]}})},
    )
    stages._write_plain_node(store, "cells", cells)
    features = xr.Dataset({"features": (("cell", "feature"), np.zeros((3, 4), np.float32))},
                          coords={"cell": [0, 2, 3]}, attrs={"cells_left_out": 2, "model": "m"})
    stages._write_plain_node(store, "features/efficientnet-lite0", features)
    cfg = load_config(text=f"input: {{store: {store}}}\nlocate: {{method: detect}}\ncrops: {{edge: skip}}\n")
    ctx = stages.Context(cfg=cfg, store=store, state=None, progress=False)
    monkeypatch.setattr(stages, "_cells_per_well", lambda ctx: None)  # needs a store with images
    summary, notes = {}, {}
    stages._report_quality(ctx, summary, {}, {}, notes)
    assert summary["cells located"] == 5 and summary["cells profiled"] == 3
    [located, profiled] = notes["summary"]
    assert located == "locate: 2 invalid locations left out (outside the image)"
    assert profiled.startswith("features/efficientnet-lite0: 3 of 5 located cells profiled, 2 left out (40.0%)")
    assert "crops.edge is 'skip'" in profiled and "cells_left_out = 2" in profiled


def test_headline_counts_are_not_ranked(tmp_path):
    metrics = pd.DataFrame({"profiles": ["raw", "sph"] * 2, "metric": ["n_queries"] * 2 + ["mAP"] * 2,
                            "value": [16.0, 12.0, 0.2, 0.4]})
    page = write_report(tmp_path, metrics=metrics).read_text()
    rows = {r[0]: r for r in _table_rows(page, "headline-table")[1:]}
    assert rows["n_queries"][1] == "" and rows["mAP"][1] == "higher"
    assert "<b>16</b>" not in page and "<b>0.4</b>" in page


def test_timings_list_the_stages_but_not_an_earlier_reports_time(run_report):
    page = run_report["page"]
    assert "<td>evaluate</td><td class='num'>43.21</td>" in page  # a stage's recorded time
    assert "98.76" not in page  # the report's own time is not known while it is written
