"""cpzarr.evaluate on small synthetic profiles: hand-worked cases, blocked = dense, errors, plots."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import cpzarr.evaluate as ev
from cpzarr.errors import InputError


def make_profiles(n=60, d=12, n_groups=7, seed=0, duplicates=0):
    """Random profiles with group structure; ``duplicates`` copies make exact similarity ties."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n)
    centres = rng.normal(size=(n_groups, d))
    values = centres[group] + rng.normal(scale=1.5, size=(n, d))
    for i in range(duplicates):
        values[n - 1 - i] = values[i]
    batch = np.where(np.arange(n) % 3 == 0, "b1", "b2")
    control = np.where(group == 0, "negcon", "trt")
    return xr.DataArray(
        values,
        dims=("sample", "feature"),
        coords={
            "moa": ("sample", np.array([f"moa{g}" for g in group], dtype=object)),
            "compound": ("sample", np.array([f"c{i // 2}" for i in range(n)], dtype=object)),
            "batch": ("sample", batch),
            "control": ("sample", control),
            "feature": [f"f{j}" for j in range(d)],
        },
    )


def dense_ranks(values, labels, keep=None):
    """Stable ranks of each query's positives from a dense Pearson matrix (plain numpy)."""
    keep = np.ones(len(values), bool) if keep is None else keep
    x = values[keep]
    x = x - x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # Duplicate profiles tie exactly in exact arithmetic; compare on a coarse grid to see that.
    sims = np.round(x @ x.T, 10)
    labels = np.asarray(labels)[keep].astype(str)
    out = []
    for i in range(len(x)):
        others = np.array([j for j in range(len(x)) if j != i])
        order = others[np.lexsort((others, -sims[i, others]))]
        out.append(np.flatnonzero(labels[order] == labels[i]))
    return out


def test_hand_worked_average_precision_and_ties():
    # Similarities of query 0 (cosine): sample 1 = 1.0, sample 2 = 1.0 (tie), sample 3 = 0.
    values = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    profiles = xr.DataArray(
        values,
        dims=("sample", "feature"),
        coords={"g": ("sample", ["a", "b", "a", "a"])},
    )
    ap = ev.average_precision(profiles, "g", method="cosine")
    # Query 0: positives 2 (tied with negative 1: positives first -> rank 1) and 3 (rank 3).
    assert ap.loc[0, "average_precision"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    pr = ev.precision_recall(profiles, "g", k=[1, 2, 3], method="cosine")
    query0 = pr[pr["sample"] == 0].set_index("k")
    # Stable rule: tie broken by sample position, so sample 1 (negative) comes before 2.
    assert list(query0["precision"]) == [0.0, 0.5, 2 / 3]
    assert list(query0["recall"]) == [0.0, 0.5, 1.0]
    # Query 1 ("b") has no positives: AP and recall undefined, precision 0.
    assert np.isnan(ap.loc[1, "average_precision"])
    assert np.isnan(pr[pr["sample"] == 1]["recall"]).all()


@pytest.mark.parametrize("compare_width", [0, 100])
@pytest.mark.parametrize("block_size", [1, 3, 8, 1000, None])
def test_blocked_equals_dense(block_size, compare_width, monkeypatch):
    from cpzarr.evaluate import _precision

    # Both ways of counting neighbours above a positive: comparisons, and sorted rows.
    monkeypatch.setattr(_precision, "_COMPARE_WIDTH", compare_width)
    profiles = make_profiles(duplicates=4)
    expected = dense_ranks(profiles.values, profiles["moa"].values)
    hits, _ = ev.hitk(profiles, "moa", block_size=block_size)
    np.testing.assert_array_equal(hits, np.concatenate(expected))
    pr = ev.precision_recall(profiles, "moa", k=[1, 4, 9], block_size=block_size)
    for k in (1, 4, 9):
        found = [np.sum(r < k) for r in expected]
        np.testing.assert_allclose(pr[pr["k"] == k]["precision"], np.array(found) / k)
    ap_blocked = ev.average_precision(profiles, "moa", block_size=block_size)
    monkeypatch.setattr(_precision, "_COMPARE_WIDTH", 100 - compare_width)
    ap_single = ev.average_precision(profiles, "moa", block_size=10_000)
    pd.testing.assert_frame_equal(ap_blocked, ap_single)
    e_blocked = ev.enrichment(profiles, "moa", [99, 90, 50], block_size=block_size)
    e_single = ev.enrichment(profiles, "moa", [99, 90, 50], block_size=10_000)
    pd.testing.assert_frame_equal(e_blocked, e_single)


def test_dense_average_precision_definition():
    profiles = make_profiles(seed=3)
    ap = ev.average_precision(profiles, "moa")
    for ranks, value in zip(dense_ranks(profiles.values, profiles["moa"].values), ap["average_precision"]):
        if ranks.size:
            expected = np.mean(np.arange(1, ranks.size + 1) / (ranks + 1))
            assert value == pytest.approx(expected, abs=1e-12)


def test_mask_and_query_subset():
    profiles = make_profiles(seed=1)
    keep = profiles["control"].values != "negcon"
    masked = ev.precision_recall(profiles, "moa", k=[3], mask="control != 'negcon'")
    expected = dense_ranks(profiles.values, profiles["moa"].values, keep)
    np.testing.assert_allclose(masked["precision"], [np.sum(r < 3) / 3 for r in expected])
    # Subset evaluation: queries restricted, neighbours still the full kept set.
    subset = ev.precision_recall(profiles, "moa", k=[3], mask=keep, query="batch == 'b1'")
    full = masked.set_index("sample").loc[subset["sample"]]
    np.testing.assert_array_equal(subset["precision"], full["precision"])


def test_float32_and_cosine():
    profiles = make_profiles(seed=2)
    a64 = ev.average_precision(profiles, "moa")
    a32 = ev.average_precision(profiles, "moa", dtype="float32")
    np.testing.assert_allclose(a32["average_precision"], a64["average_precision"], atol=1e-6)
    s = ev.similarity(profiles, method="cosine")
    unit = profiles.values / np.linalg.norm(profiles.values, axis=1, keepdims=True)
    np.testing.assert_allclose(s.values, unit @ unit.T, atol=1e-12)


def test_batch_enrichment_is_enrichment_of_controls():
    profiles = make_profiles(n=80, seed=4)
    got = ev.batch_enrichment(profiles, "batch", percentiles=[95, 90])
    expected = ev.enrichment(profiles, "batch", [95, 90], mask=profiles["control"].values == "negcon")
    pd.testing.assert_frame_equal(got, expected)


def test_replicate_reproducibility_and_grit_dense():
    profiles = make_profiles(n=40, seed=5)
    x = profiles.values - profiles.values.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    moa = profiles["moa"].values.astype(str)
    iu = np.triu_indices(len(x), 1)
    same = (moa[:, None] == moa[None, :])[iu]
    threshold = pd.Series(sims[iu][~same]).quantile(0.9)
    score, medians = ev.replicate_reproducibility(profiles, "moa", 0.9, block_size=7)
    assert score == pytest.approx(np.mean(sims[iu][same] > threshold), abs=1e-12)
    assert medians["threshold"].iloc[0] == pytest.approx(threshold, abs=1e-12)

    # Two compounds per MOA, each with replicates; MOA 0 is the negative control.
    compound = np.array([f"{m}_{i % 2}" for i, m in enumerate(moa)], dtype=object)
    profiles = profiles.assign_coords(compound=("sample", compound))
    table = ev.grit(profiles, "compound", "moa", block_size=5)
    assert table["grit"].notna().sum() > 5
    control = profiles["control"].values == "negcon"
    for row in table.itertuples():
        mine = np.flatnonzero(compound == row.compound)
        reference = sims[np.ix_(mine, np.flatnonzero(control))].ravel()
        mate_cols = np.flatnonzero((moa == moa[mine[0]]) & (compound != row.compound) & ~control)
        mates = sims[np.ix_(mine, mate_cols)].ravel()
        expected = np.mean((mates - reference.mean()) / reference.std()) if mates.size else np.nan
        np.testing.assert_allclose(row.grit, expected, atol=1e-10)


def test_benjamini_hochberg_hand_worked():
    got = ev.benjamini_hochberg([0.01, 0.04, 0.03, np.nan, 0.5])
    np.testing.assert_allclose(got, [0.04, 0.05333333333, 0.05333333333, np.nan, 0.5])


def test_map_p_values_bounded_null_matches_statistically(monkeypatch):
    from cpzarr.evaluate import _map

    profiles = make_profiles(n=50, seed=6)
    ap = ev.average_precision(profiles, "moa")
    dense = ev.mean_average_precision(groups="moa", ap=ap, null_size=4000, seed=1)
    monkeypatch.setattr(_map, "_DENSE_NULL_LIMIT", 0)
    streamed = ev.mean_average_precision(groups="moa", ap=ap, null_size=4000, seed=1)
    np.testing.assert_allclose(streamed["p_value"], dense["p_value"], atol=0.03)


def test_bad_input_is_reported():
    profiles = make_profiles(n=10)
    broken = profiles.copy()
    broken[2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ev.precision_recall(broken, "moa")
    with pytest.raises(InputError, match="nope"):
        ev.enrichment(profiles, ["moa", "nope"])
    with pytest.raises(InputError, match="k must be"):
        ev.precision_recall(profiles, "moa", k=[0])
    with pytest.raises(InputError, match="percent"):
        ev.enrichment(profiles, "moa", [101])
    with pytest.raises(InputError, match="DataArray"):
        ev.hitk(profiles.to_pandas(), "moa")


def test_plots_write_figures(tmp_path):
    profiles = make_profiles(n=40, seed=7)
    e = ev.enrichment(profiles, "moa", [99, 95, 90])
    fig = ev.plots.enrichment({"a": e, "b": e}, tmp_path / "e.svg")
    assert (tmp_path / "e.svg").read_text().startswith("<?xml")
    assert len(fig.axes[0].lines) == 2
    pr = ev.precision_recall(profiles, "moa", k=[1, 5])
    ev.plots.precision_recall(pr, tmp_path / "pr.png")
    _, scores = ev.hitk(profiles, "moa")
    ev.plots.hitk({"x": scores}, tmp_path / "h.png")
    fig = ev.plots.pca(profiles, ["batch", "control"], tmp_path / "pca.png")
    assert len(fig.axes) == 2
    for name in ("pr.png", "h.png", "pca.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_equals_single_metrics():
    profiles = make_profiles(n=50, seed=8)
    results = ev.evaluate(profiles, "moa", mask="control != 'negcon'", k=[2, 5],
                          percentiles=[99, 95], percent_list=[5, 50], null_size=500)
    mask = "control != 'negcon'"
    pd.testing.assert_frame_equal(
        results["precision_recall"], ev.precision_recall(profiles, "moa", k=[2, 5], mask=mask)
    )
    pd.testing.assert_frame_equal(
        results["average_precision"],
        ev.average_precision(profiles, "moa", mask=mask, null_size=500),
    )
    pd.testing.assert_frame_equal(
        results["enrichment"], ev.enrichment(profiles, "moa", [99, 95], mask=mask)
    )
    hits, scores = ev.hitk(profiles, "moa", [5, 50], mask=mask)
    np.testing.assert_array_equal(results["hits"], hits)
    pd.testing.assert_frame_equal(results["hitk"], scores)
    assert results["summary"]["precision@R"].iloc[0] == pytest.approx(
        results["average_precision"]["precision_at_r"].mean()
    )


def test_cli_writes_tables(tmp_path):
    from click.testing import CliRunner

    from cpzarr.cli import main

    profiles = make_profiles(n=40, seed=9)
    frame = ev.sample_table(profiles).add_prefix("Metadata_")
    frame[list(profiles["feature"].values)] = profiles.values
    frame.to_csv(tmp_path / "profiles.csv", index=False)
    result = CliRunner().invoke(
        main,
        ["evaluate", str(tmp_path / "profiles.csv"), "--groups", "moa", "--mask",
         "control != 'negcon'", "-o", str(tmp_path / "out"), "--null-size", "200",
         "--no-plots", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out" / "average_precision.csv")
    expected = ev.average_precision(profiles, "moa", mask="control != 'negcon'")
    np.testing.assert_allclose(table["average_precision"], expected["average_precision"])
    bad = CliRunner().invoke(main, ["evaluate", str(tmp_path / "profiles.csv"), "-g", "nope"])
    assert bad.exit_code != 0 and "nope" in bad.output


@pytest.mark.parametrize("guess", ["none", "wrong"])
def test_enrichment_second_pass_when_the_guess_misses(guess, monkeypatch):
    from cpzarr.evaluate import _enrichment

    profiles = make_profiles(n=70, seed=10)
    expected = ev.enrichment(profiles, "moa", [99, 90, 50])
    score, medians = ev.replicate_reproducibility(profiles, "moa", 0.9)
    wrong = np.zeros(_enrichment._SKIP + 1, dtype=bool)
    wrong[0] = True  # only similarities near -1: misses every quantile
    monkeypatch.setattr(
        _enrichment, "_likely_bins", lambda *args: None if guess == "none" else wrong
    )
    pd.testing.assert_frame_equal(ev.enrichment(profiles, "moa", [99, 90, 50]), expected)
    assert ev.replicate_reproducibility(profiles, "moa", 0.9)[0] == score
