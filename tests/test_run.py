"""End to end: `cpzarr run` on a tiny synthetic screen, resume, config errors, the real LINCS sites."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cpzarr.cli import main
from cpzarr.config import load_config
from cpzarr.run import RunState, run

TINY = """
name: tiny
input:
  synthetic: {{plates: 2, batches: 2, sites: 1, image_size: 128, cells_per_site: 10, moas: 2,
              compounds_per_moa: 2, dmso_wells: 4, seed: 3}}
locate: {{method: import}}
crops: {{box: 32, edge: pad, scale: minmax}}
features: {{model: {model}, batch_size: 64}}
profiles:
  aggregate: mean
  pipelines:
    raw: []
    spherized:
      - {{normalize: {{method: standardize, samples: "control == 'negcon'"}}}}
      - {{spherize: {{method: ZCA-cor, samples: "control == 'negcon'", epsilon: 0.001}}}}
  consensus: {{operation: median, replicate_columns: [compound, dose]}}
evaluate: {{level: well, groups: moa, k: [1, 2], percentiles: [95, 90]}}
cluster: {{n_workers: 1, threads_per_worker: 2, processes: false}}
output: {{store: out/screen.zarr, report: out/report}}
"""


def _config(tmp_path, model="efficientnet-lite0"):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(model=model))
    return path


def test_run_end_to_end_then_resume(tmp_path):
    path = _config(tmp_path)
    lines = []
    result = run(path, progress=False, echo=lines.append)
    assert result.ran == ["ingest", "locate", "features", "profiles", "evaluate", "report"]
    assert any(line.startswith("Dask dashboard: ") for line in lines) or any("dashboard" in l for l in lines)

    report = tmp_path / "out" / "report" / "report.html"
    assert result.report == report and report.exists()
    text = report.read_text()
    for section in ("Dataset", "Cells per well", "Profiles (PCA)", "Enrichment", "Precision and recall",
                    "Hit@K", "Headline metrics", "Run details"):
        assert section in text, section
    metrics = pd.read_csv(tmp_path / "out" / "report" / "metrics.csv")
    assert set(metrics["profiles"]) == {"raw", "spherized"}
    values = metrics.set_index(["profiles", "metric"])["value"]
    for profiles in ("raw", "spherized"):
        assert 0 <= values[(profiles, "mAP")] <= 1
        assert 0 <= values[(profiles, "precision@1")] <= 1
    json.loads((tmp_path / "out" / "report" / "metrics.json").read_text())

    # Cells in the store equal the generator's location files, well by well.
    from cpzarr.store import open_node

    feats = open_node(tmp_path / "out" / "screen.zarr", "features/efficientnet-lite0")
    assert feats.sizes["feature"] == 5 * 1280
    truth = pd.read_csv(tmp_path / "out" / "screen-images" / "truth.csv")
    assert feats.sizes["cell"] == len(truth)

    # A second run does nothing; --from profiles re-runs from there only.
    again = run(path, progress=False, echo=None)
    assert again.ran == [] and again.skipped == result.ran
    part = run(path, start="profiles", until="evaluate", progress=False, echo=None)
    assert part.ran == ["profiles", "evaluate"] and part.skipped == ["ingest", "locate", "features"]


def test_run_killed_between_stages_resumes_without_redoing(tmp_path, monkeypatch):
    path = _config(tmp_path, model="classical")
    import cpzarr.stages as stages

    def boom(ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "stage_profiles", boom)
    with pytest.raises(KeyboardInterrupt):
        run(path, progress=False, echo=None)
    state = RunState(tmp_path / "out" / "screen.zarr")
    assert set(state.data["stages"]) == {"ingest", "locate", "features"}
    monkeypatch.undo()

    calls = []
    for name in ("stage_ingest", "stage_locate", "stage_features"):
        monkeypatch.setattr(stages, name, lambda ctx, n=name: calls.append(n))
    result = run(path, progress=False, echo=None)
    assert calls == []
    assert result.skipped == ["ingest", "locate", "features"]
    assert result.ran == ["profiles", "evaluate", "report"]


def test_changed_section_reruns_that_stage_and_after(tmp_path):
    path = _config(tmp_path, model="classical")
    run(path, progress=False, echo=None, until="locate")
    cfg = load_config(path, ["crops.box=24"])
    result = run(cfg, progress=False, echo=None, until="features")
    assert result.skipped == ["ingest", "locate"] and result.ran == ["features"]


def test_cli_reports_config_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {synthetic: {}}\ncrops: {boxx: 3}\nfeatures: {model: vgg}\n")
    out = CliRunner().invoke(main, ["run", str(bad)])
    assert out.exit_code != 0
    assert "crops.boxx: unknown key; did you mean 'box'?" in out.output
    assert "features.model: 'vgg' is not allowed" in out.output
    assert "Traceback" not in out.output


@pytest.mark.slow
def test_real_lincs_pipeline(shared_data, tmp_path):
    """Real LINCS sites: cell counts equal the location files; treated wells sit apart from DMSO."""
    root = shared_data / "lincs_images_SQ00015198_SQ00015230"
    cfg = load_config(text=f"""
name: lincs
input: {{images: {root / 'index.csv'}}}
locate: {{method: import, path: {root / 'locations'}, kind: deepprofiler}}
crops: {{box: 64, edge: pad, scale: null}}
features: {{model: classical}}
profiles:
  aggregate: mean
  pipelines:
    normalized: [{{normalize: {{method: standardize, samples: "control == 'negcon'"}}}}]
  consensus: null
evaluate: {{level: well, groups: compound, exclude: null, metrics: [precision_recall], k: [1]}}
cluster: {{n_workers: 1, threads_per_worker: 2, processes: false}}
output: {{store: {tmp_path / 'lincs.zarr'}, report: {tmp_path / 'report'}}}
""")
    run(cfg, progress=False, echo=None)
    from cpzarr.profiles import read_profiles

    well = read_profiles(tmp_path / "lincs.zarr", node="profiles/classical/aggregated")
    for plate, w, count in zip(well["plate"].values, well["well"].values, well["cell_count"].values):
        files = sorted((root / "locations" / plate).glob(f"{w}-*-Nuclei.csv"))
        expected = sum(len(pd.read_csv(f)) for f in files)
        assert count == expected, (plate, w)

    norm = read_profiles(tmp_path / "lincs.zarr", node="profiles/classical/normalized")
    x = np.nan_to_num(norm.values.astype(float))
    keep = np.isfinite(norm.values).all(axis=0) & (np.nanstd(norm.values, axis=0) > 0)
    x = x[:, keep]
    control = norm["control"].values.astype(str)
    wells = norm["well"].values.astype(str)
    dmso = np.flatnonzero(control == "negcon")
    dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    dmso_dmso = dist[np.ix_(dmso, dmso)][np.triu_indices(len(dmso), 1)].mean()
    for treated in ("A13", "P13"):
        idx = np.flatnonzero(wells == treated)
        assert dist[np.ix_(idx, dmso)].mean() > dmso_dmso, treated


def test_run_compares_recipe_pipelines_and_a_sweep(tmp_path):
    config = TINY.format(model="classical").replace(
        """  pipelines:
    raw: []
""", """  pipelines:
    raw: []
    mad_int: profiles_mad_int
""").replace(
        """  consensus: {operation""", """  sweeps: [{pipeline: spherized, step: spherize, values: {epsilon: [0.001, 0.1]}}]
  compare: {criterion: score}
  consensus: {operation""")
    path = tmp_path / "tiny.yaml"
    path.write_text(config)
    cfg = load_config(path)
    assert sorted(cfg.get("profiles.pipelines")) == [
        "mad_int", "raw", "spherized", "spherized@epsilon=0.001", "spherized@epsilon=0.1"]
    run(path, until="profiles", progress=False, echo=None)
    table = pd.read_csv(tmp_path / "out" / "report" / "tables" / "pipeline_comparison.csv")
    assert sorted(table["pipeline"]) == sorted(cfg.get("profiles.pipelines"))
    assert table["chosen"].sum() == 1 and bool(table["chosen"].iloc[0])
    assert table["score"].is_monotonic_decreasing
    from cpzarr.profiles import normalize, read_profiles

    store = tmp_path / "out" / "screen.zarr"
    well = read_profiles(store, node="profiles/classical/aggregated")
    expected = normalize(normalize(well, method="mad_robustize", by="plate", samples="control == 'negcon'"),
                         method="rank_inverse_normal", by=None)
    np.testing.assert_allclose(read_profiles(store, node="profiles/classical/mad_int").values,
                               expected.values, rtol=1e-5, atol=1e-5)
    eps = read_profiles(store, node="profiles/classical/spherized@epsilon=0.1")
    assert '"epsilon": 0.1' in eps.attrs["cpzarr_steps"]

    # The report shows the comparison table (every pipeline, its score as written) and its plot.
    run(path, progress=False, echo=None)
    html = (tmp_path / "out" / "report" / "report.html").read_text()
    section = html[html.index("Pipelines scored by profiles.compare"):]
    for name in table["pipeline"]:
        assert f">{name}<" in section
    assert html.count("Pipelines scored by profiles.compare") >= 2  # the table and the bar chart


def test_config_names_bad_recipe_and_sweep(tmp_path):
    bad = TINY.format(model="classical").replace("    raw: []\n", "    raw: []\n    oops: profiles_mad_intt\n").replace(
        "  consensus: {operation", "  sweeps: [{pipeline: nope, step: spherize, values: {epsilon: [1]}}]\n  consensus: {operation")
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(Exception) as info:
        load_config(path)
    text = str(info.value)
    assert "profiles.pipelines.oops" in text and "intt" in text
    assert "profiles.sweeps[0].pipeline" in text
