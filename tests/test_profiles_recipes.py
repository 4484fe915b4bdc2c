"""JUMP-recipe steps and batch corrections against their references: Pycytominer, harmonypy, numpy."""

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.stats

from cpzarr.errors import InputError
from cpzarr.profiles import (
    ZeroScaleWarning, compare_pipelines, coral, correct_well_position, from_pycytominer, harmony, normalize,
    pca, pipeline, recipe_steps, regress_cell_count, sweep, tvn,
)
from cpzarr.synthetic import make_profiles

NEGCON = 'control == "negcon"'


@pytest.fixture(scope="module")
def plate(shared_data):
    return pd.read_csv(shared_data / "lincs_level4b_SQ00015054" / "SQ00015054_normalized_feature_select.csv.gz")


@pytest.fixture(scope="module")
def screen():
    p = make_profiles(n_plates=6, n_batches=3, n_negcon=10, n_compounds=20, n_replicates=3, n_moas=5,
                      n_features=12, n_samples=None, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    return p.assign_coords(cell_count=("sample", rng.integers(200, 900, p.sizes["sample"])))


def _chunked(p, chunks):
    return p if chunks is None else p.chunk({"sample": chunks})


# --- inverse normal transformation ---------------------------------------------------------------

@pytest.mark.parametrize("chunks", [None, 37])
@pytest.mark.parametrize("dmso", [False, True])
@pytest.mark.parametrize("by", [None, "plate"])
def test_inverse_normal_equals_pycytominer(plate, chunks, dmso, by):
    pycytominer = pytest.importorskip("pycytominer")
    meta = [c for c in plate.columns if c.startswith("Metadata_")]
    features = [c for c in plate.columns if c not in meta]
    kwargs = {"samples": "Metadata_pert_type == 'control'"} if dmso else {}
    expected = pycytominer.normalize(plate, features=features, meta_features=meta, method="inverse_normal", **kwargs)
    actual = normalize(_chunked(from_pycytominer(plate), chunks), method="int", by=by,
                       samples='pert_type == "control"' if dmso else "all")
    np.testing.assert_allclose(actual.values, expected[features].to_numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunks", [None, 7])
def test_rank_inverse_normal_is_blom_formula(screen, chunks):
    x = screen.values
    ranks = scipy.stats.rankdata(x, axis=0)
    expected = scipy.stats.norm.ppf((ranks - 3 / 8) / (len(x) - 2 * 3 / 8 + 1))
    actual = normalize(_chunked(screen, chunks), method="rank_inverse_normal", by=None)
    np.testing.assert_allclose(actual.values, expected, atol=1e-12)


@pytest.mark.parametrize("chunks", [None, 7])
def test_rank_inverse_normal_on_controls_ranks_every_sample_among_them(screen, chunks):
    x = screen.values
    fit = x[screen.control.values == "negcon"]
    less = (fit[None, :, :] < x[:, None, :]).sum(axis=1)
    equal = (fit[None, :, :] == x[:, None, :]).sum(axis=1)
    ranks = less + (equal + 1) / 2  # mid-rank among the DMSO wells (0.5 below all, n + 0.5 above)
    actual = normalize(_chunked(screen, chunks), method="rank_inverse_normal", by=None, samples=NEGCON,
                       rank_offset=0.25)
    expected = scipy.stats.norm.ppf((ranks - 0.25) / (len(fit) - 0.5 + 1))
    np.testing.assert_allclose(actual.values, expected, atol=1e-12)
    assert np.isfinite(actual.values).all()


@pytest.mark.parametrize("chunks", [None, 7])
def test_inverse_normal_per_plate_on_controls_matches_sklearn(screen, chunks):
    from sklearn.preprocessing import QuantileTransformer

    actual = normalize(_chunked(screen, chunks), method="inverse_normal", by="plate", samples=NEGCON).values
    for plate in np.unique(screen.plate.values):
        rows = screen.plate.values == plate
        fit = screen.values[rows & (screen.control.values == "negcon")]
        qt = QuantileTransformer(n_quantiles=min(1000, len(fit)), output_distribution="normal").fit(fit)
        np.testing.assert_allclose(actual[rows], qt.transform(screen.values[rows]), atol=1e-9)


def test_inverse_normal_rejects_nan_in_fitting_samples_naming_plate_and_feature(screen):
    bad = screen.copy(data=screen.values.copy())
    first_dmso = np.flatnonzero(bad.control.values == "negcon")[0]
    bad.values[first_dmso, 4] = np.nan
    with pytest.raises(InputError, match="NaN in the fitting samples") as info:
        normalize(bad, method="int", by="plate", samples=NEGCON)
    assert f"plate={bad.plate.values[first_dmso]}" in str(info.value) and "f0004" in str(info.value)


def test_inverse_normal_constant_feature_warns_and_stays_finite(screen):
    bad = screen.copy(data=screen.values.copy())
    bad.values[:, 2] = 1.5
    with pytest.warns(ZeroScaleWarning, match="f0002"):
        out = normalize(bad, method="int", by=None)
    assert np.isfinite(out.values).all()


# --- well position, cell count -------------------------------------------------------------------

@pytest.mark.parametrize("chunks", [None, 7])
@pytest.mark.parametrize("statistic", ["median", "mean"])
def test_correct_well_position_subtracts_position_statistic(screen, chunks, statistic):
    frame = pd.DataFrame(screen.values)
    expected = frame - frame.groupby(screen.well.values).transform(statistic)
    actual = correct_well_position(_chunked(screen, chunks), statistic=statistic)
    np.testing.assert_allclose(actual.values, expected.to_numpy(), atol=1e-12)


def test_correct_well_position_on_controls_needs_controls_everywhere(screen):
    with pytest.raises(InputError, match="no fitting samples") as info:
        correct_well_position(screen, samples=NEGCON)
    assert "well=" in str(info.value)


@pytest.mark.parametrize("chunks", [None, 7])
def test_regress_cell_count_leaves_ols_residuals(screen, chunks):
    c = screen.cell_count.values.astype(float)
    design = np.column_stack([np.ones_like(c), c])
    coef, *_ = np.linalg.lstsq(design, screen.values, rcond=None)
    expected = screen.values - design @ coef
    actual = regress_cell_count(_chunked(screen, chunks))
    np.testing.assert_allclose(actual.values, expected, atol=1e-9)


def test_regress_cell_count_refuses_one_count(screen):
    flat = screen.assign_coords(cell_count=("sample", np.full(screen.sizes["sample"], 400)))
    with pytest.raises(InputError, match="no line to fit"):
        regress_cell_count(flat)


# --- TVN, CORAL ---------------------------------------------------------------------------------

def _signed(v):
    sign = np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
    return v * sign


def _tvn_reference(p):
    x = p.values
    ctrl = p.control.values == "negcon"
    z = (x - x[ctrl].mean(0)) / x[ctrl].std(0)
    e, v = np.linalg.eigh(np.cov(z[ctrl], rowvar=False))
    e, v = e[::-1], _signed(v[:, ::-1])
    y = z @ v / np.sqrt(e)
    for b in np.unique(p.batch.values):
        rows = p.batch.values == b
        c = y[rows & ctrl]
        y[rows] = (y[rows] - c.mean(0)) / c.std(0)
    return y


@pytest.mark.parametrize("chunks", [None, 7])
def test_tvn_matches_numpy(screen, chunks):
    actual = tvn(_chunked(screen, chunks))
    np.testing.assert_allclose(actual.values, _tvn_reference(screen), atol=1e-8)
    assert list(actual.feature.values[:2]) == ["PC1", "PC2"]


def _coral_reference(p, lam):
    x = p.values
    ctrl = p.control.values == "negcon"
    d = x.shape[1]
    target = scipy.linalg.fractional_matrix_power(np.cov(x[ctrl], rowvar=False) + lam * np.eye(d), 0.5).real
    out = np.empty_like(x)
    for b in np.unique(p.batch.values):
        rows = p.batch.values == b
        c = x[rows & ctrl]
        source = scipy.linalg.fractional_matrix_power(np.cov(c, rowvar=False) + lam * np.eye(d), -0.5).real
        out[rows] = (x[rows] - c.mean(0)) @ source @ target + x[ctrl].mean(0)
    return out


@pytest.mark.parametrize("chunks", [None, 7])
@pytest.mark.parametrize("lam", [1.0, 0.1])
def test_coral_matches_numpy(screen, chunks, lam):
    np.testing.assert_allclose(coral(_chunked(screen, chunks), regularization=lam).values,
                               _coral_reference(screen, lam), atol=1e-8)


def test_coral_with_fewer_controls_than_features_matches_numpy():
    p = make_profiles(n_plates=4, n_batches=2, n_negcon=5, n_compounds=8, n_replicates=2, n_moas=2,
                      n_features=30, n_samples=None, dtype="float64", seed=1)
    np.testing.assert_allclose(coral(p.chunk({"sample": 9})).values, _coral_reference(p, 1.0), atol=1e-8)


def test_batch_without_controls_is_named(screen):
    keep = ~((screen.batch.values == "B1") & (screen.control.values == "negcon"))
    p = screen.isel(sample=np.flatnonzero(keep))
    for step in (tvn, coral):
        with pytest.raises(InputError, match="batch=B1: 0 control"):
            step(p)


def test_tvn_names_constant_feature(screen):
    bad = screen.copy(data=screen.values.copy())
    bad.values[bad.control.values == "negcon", 7] = 3.0
    with pytest.raises(InputError, match="constant") as info:
        tvn(bad)
    assert "f0007" in str(info.value)


def test_coral_names_nan_in_controls(screen):
    bad = screen.copy(data=screen.values.copy())
    row = np.flatnonzero((bad.control.values == "negcon") & (bad.batch.values == "B2"))[0]
    bad.values[row, 3] = np.nan
    with pytest.raises(InputError, match="NaN") as info:
        coral(bad)
    assert "batch=B2" in str(info.value) and "f0003" in str(info.value)


# --- PCA, Harmony -------------------------------------------------------------------------------

@pytest.mark.parametrize("chunks", [None, 7])
def test_pca_matches_numpy(screen, chunks):
    x = screen.values - screen.values.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    expected = x @ _signed(vt[:5].T)
    np.testing.assert_allclose(pca(_chunked(screen, chunks), n_components=5).values, expected, atol=1e-9)


@pytest.mark.parametrize("chunks", [None, 9])
def test_pca_top_components_of_a_wide_scatter_match_numpy(chunks):
    p = make_profiles(n_plates=6, n_batches=2, n_negcon=20, n_compounds=30, n_replicates=3, n_moas=5,
                      n_features=40, n_samples=None, dtype="float64", seed=2)   # 210 samples > 40 features
    x = p.values - p.values.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(pca(_chunked(p, chunks), n_components=5).values, x @ _signed(vt[:5].T), atol=1e-8)


@pytest.mark.parametrize("chunks", [None, 7])
def test_harmony_equals_harmonypy(screen, chunks):
    harmonypy = pytest.importorskip("harmonypy")
    meta = pd.DataFrame({"batch": screen.batch.values.astype(str), "plate": screen.plate.values.astype(str)})
    expected = harmonypy.run_harmony(screen.values, meta, ["batch", "plate"], theta=[2.0, 1.0], nclust=5,
                                     random_state=7, verbose=False).Z_corr
    actual = harmony(_chunked(screen, chunks), batch=["batch", "plate"], n_components=None, theta=[2.0, 1.0],
                     nclust=5, random_state=7)
    np.testing.assert_allclose(actual.values, np.asarray(expected), atol=1e-10)


def test_harmony_on_pca_embedding_equals_harmonypy(screen):
    harmonypy = pytest.importorskip("harmonypy")
    embedding = pca(screen, n_components=6).values
    meta = pd.DataFrame({"batch": screen.batch.values.astype(str)})
    expected = harmonypy.run_harmony(embedding, meta, "batch", nclust=4, random_state=0, verbose=False).Z_corr
    np.testing.assert_allclose(harmony(screen, n_components=6, nclust=4).values, np.asarray(expected), atol=1e-10)


# --- pipelines, comparison ----------------------------------------------------------------------

def test_recipe_name_gives_the_recipe_steps():
    steps = recipe_steps("profiles_var_mad_int_featselect_harmony")
    assert [s["step"] for s in steps] == ["feature_select", "normalize", "normalize", "feature_select", "harmony"]
    assert steps[1]["method"] == "mad_robustize" and steps[2]["method"] == "rank_inverse_normal"
    assert recipe_steps("profiles_PCA_harmony")[1]["n_components"] is None
    with pytest.raises(InputError, match="unknown step 'madd'"):
        recipe_steps("profiles_madd_int")


def test_recipe_pipeline_equals_its_steps_by_hand(screen):
    out = pipeline(screen, "profiles_mad_int_wellpos")
    by_hand = normalize(screen, method="mad_robustize", by="plate", samples=NEGCON)
    by_hand = normalize(by_hand, method="rank_inverse_normal", by=None)
    by_hand = correct_well_position(by_hand, statistic="mean")
    np.testing.assert_allclose(out.values, by_hand.values, atol=1e-12)


def test_sweep_and_compare_choose_the_batch_correction_on_a_batchy_screen():
    p = make_profiles(n_plates=6, n_batches=3, n_negcon=16, n_compounds=30, n_replicates=3, n_moas=6,
                      n_features=24, n_samples=None, batch_effect=3.0, seed=5)
    grid = {"raw": [], **sweep(["tvn"], "tvn", {"n_components": [4, None]}, label="tvn")}
    table = compare_pipelines(p, grid)
    assert list(table.columns) == ["pipeline", "replicate_map", "moa_map", "batch_enrichment", "score",
                                   "chosen", "steps"]
    raw = table.set_index("pipeline").loc["raw"]
    best = table.iloc[0]
    # A strong batch effect: TVN (per-batch centring on DMSO) lowers DMSO batch enrichment and wins.
    assert best["pipeline"].startswith("tvn") and bool(best["chosen"])
    assert best["batch_enrichment"] < raw["batch_enrichment"]
    assert table.attrs["chosen"] == best["pipeline"]


def test_interp_columns_is_numpy_interp_bit_for_bit_with_ties_and_nan():
    from cpzarr.profiles._inverse_normal import interp_columns

    rng = np.random.default_rng(0)
    for _ in range(100):
        k, m, d = rng.integers(2, 30), rng.integers(1, 50), rng.integers(1, 6)
        xp = np.sort(np.round(rng.normal(size=(k, d)), 1), axis=0)   # rounded: repeated knots
        fp = np.linspace(0, 1, k)
        x = np.round(rng.normal(size=(m, d)) * 1.5, 1)
        x[rng.random(x.shape) < 0.05] = np.nan
        expected = np.column_stack([np.interp(x[:, j], xp[:, j], fp) for j in range(d)])
        np.testing.assert_array_equal(interp_columns(x, xp, fp), expected)
