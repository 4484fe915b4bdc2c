"""One code path for the evaluate stage, `cpzarr evaluate` and cpzarr.evaluate.evaluate; defaults
picked from the data's size; the CLI's store listing."""

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cpzarr.evaluate as ev
from cpzarr.cli import main

from test_evaluate_blocked import make_profiles


def pycytominer_csv(profiles, path):
    frame = ev.sample_table(profiles).add_prefix("Metadata_")
    frame[list(profiles["feature"].values)] = profiles.values
    frame.to_csv(path, index=False)
    return path


def test_stage_and_cli_give_the_same_tables_and_headline(tmp_path, monkeypatch):
    from cpzarr import stages

    profiles = make_profiles(n=80, seed=4)
    monkeypatch.setattr(stages, "profile_sets", lambda ctx, level=None: {"set": profiles})
    options = {"groups": "moa", "exclude": "control == 'negcon'", "k": None, "percentiles": None,
               "metrics": ["mean_average_precision", "precision_recall", "enrichment", "hitk",
                           "precision_recall_pooled"],
               "null_size": 300, "seed": 2, "threshold": 0.05, "batch": "batch"}
    ctx = SimpleNamespace(cfg={"evaluate": options}, tables_dir=tmp_path / "run", client=None)
    stages.stage_evaluate(ctx)
    # The CLI, on the same profiles as a Pycytominer table, with Metadata_ names.
    result = CliRunner().invoke(main, [
        "evaluate", str(pycytominer_csv(profiles, tmp_path / "p.csv")), "-g", "Metadata_moa",
        "--mask", "~(Metadata_control == 'negcon')", "--null-size", "300", "--seed", "2",
        "-o", str(tmp_path / "cli"), "--pooled", "--no-plots", "--no-progress"])
    assert result.exit_code == 0, result.output
    run_headline = pd.read_csv(tmp_path / "run" / "headline.csv")
    cli_headline = pd.read_csv(tmp_path / "cli" / "headline.csv")
    assert list(run_headline["metric"]) == list(cli_headline["metric"])
    np.testing.assert_array_equal(run_headline["value"], cli_headline["value"])
    for metric in ("mean_average_precision", "average_precision", "precision_recall",
                   "enrichment", "hitk", "precision_recall_pooled"):
        a = pd.read_csv(tmp_path / "run" / f"set.{metric}.csv")
        b = pd.read_csv(tmp_path / "cli" / f"{metric}.csv")
        pd.testing.assert_frame_equal(a, b, check_names=False)
    ks = sorted(pd.read_csv(tmp_path / "run" / "set.precision_recall.csv")["k"].unique())
    pooled = ev.precision_recall(profiles, "moa", k=[int(k) for k in ks],
                                 mask="~(control == 'negcon')", pooled=True)
    np.testing.assert_allclose(
        pd.read_csv(tmp_path / "cli" / "precision_recall_pooled.csv")["precision"],
        pooled["precision"], rtol=0, atol=1e-15)
    # The headline rules: mAP = mean of per-group mAP; fraction retrieved from corrected p.
    maps = pd.read_csv(tmp_path / "run" / "set.mean_average_precision.csv")
    line = run_headline.set_index("metric")["value"]
    assert line["mAP"] == pytest.approx(maps["mean_average_precision"].mean(), rel=1e-12)
    assert line["fraction retrieved (corrected p<0.05)"] == pytest.approx(
        (maps["corrected_p_value"] < 0.05).mean())
    # The report's per-query columns are there.
    ap = pd.read_csv(tmp_path / "run" / "set.average_precision.csv")
    assert {"average_precision", "p_value", "corrected_p_value", "below_corrected_p"} <= set(ap)


def test_defaults_follow_the_data_size():
    """16 profiles, groups of at most 4: no K above 3 and no percentile whose top holds fewer
    than 20 of the 240 ordered pairs; asking for them anyway warns."""
    profiles = make_profiles(n=16, n_groups=4, seed=1)
    sizes = pd.Series(profiles["moa"].values).value_counts()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = ev.evaluate(profiles, "moa", null_size=100)
    ks = sorted(results["precision_recall"]["k"].unique())
    assert ks == [k for k in (1, 5, 10, 20, 50, 100) if k <= sizes.max() - 1]
    top = (100 - results["enrichment"]["percentile"]) / 100 * 16 * 15
    assert (top >= 20).all()
    with pytest.warns(UserWarning, match="exceeds the largest number of positives"):
        ev.evaluate(profiles, "moa", k=[1, 100], null_size=100, metrics=["precision_recall"])
    with pytest.warns(UserWarning, match="fewer than 20"):
        ev.evaluate(profiles, "moa", percentiles=[99.5], metrics=["enrichment"])


def test_cli_lists_profile_nodes_without_node(tmp_path):
    store = tmp_path / "screen.zarr"
    for node in ("profiles/lite0/well", "profiles/lite0/spherized_consensus"):
        (store / node / "profiles").mkdir(parents=True)
        (store / node / "zarr.json").write_text('{"node_type": "group"}')
        (store / node / "profiles" / "zarr.json").write_text('{"node_type": "array"}')
    (store / "zarr.json").write_text('{"node_type": "group"}')
    result = CliRunner().invoke(main, ["evaluate", str(store), "-g", "moa"])
    assert result.exit_code != 0
    assert "--node" in result.output
    assert "profiles/lite0/well" in result.output
    assert "profiles/lite0/spherized_consensus" in result.output
    assert "Traceback" not in result.output
