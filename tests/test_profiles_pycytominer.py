"""Each profiles operation against Pycytominer 1.7.1 on a real LINCS plate (384 wells × 454 features)."""

import warnings

import numpy as np
import pandas as pd
import pytest

from cpzarr.profiles import (
    SpherizeWarning, aggregate, annotate, consensus, feature_select, from_pycytominer, normalize,
    spherize, to_pycytominer,
)
from cpzarr.testing import assert_profiles_equal

pycytominer = pytest.importorskip("pycytominer")

DMSO_QUERY = "Metadata_pert_type == 'control'"


@pytest.fixture(scope="module")
def plate(shared_data):
    frame = pd.read_csv(shared_data / "lincs_level4b_SQ00015054" / "SQ00015054_normalized_feature_select.csv.gz")
    return frame


def _split(frame):
    meta = [c for c in frame.columns if c.startswith("Metadata_")]
    return meta, [c for c in frame.columns if c not in meta]


def test_conversion_is_lossless(plate):
    back = to_pycytominer(from_pycytominer(plate))
    pd.testing.assert_frame_equal(back, plate)


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
@pytest.mark.parametrize("chunks", [None, 50])
def test_normalize_fit_on_dmso(plate, method, chunks):
    meta, features = _split(plate)
    expected = pycytominer.normalize(plate, features=features, meta_features=meta, samples=DMSO_QUERY, method=method)
    profiles = from_pycytominer(plate)
    profiles = profiles if chunks is None else profiles.chunk({"sample": chunks})
    actual = normalize(profiles, method=method, by="plate", samples='pert_type == "control"')
    assert_profiles_equal(actual.compute(), expected, rtol=1e-6)


def test_mad_robustize_zero_mad_matches_when_asked(plate):
    meta, features = _split(plate)
    frame = plate.copy()
    frame.loc[frame["Metadata_pert_type"] == "control", features[0]] = 0.25  # zero MAD in DMSO
    expected = pycytominer.normalize(frame, features=features, meta_features=meta, samples=DMSO_QUERY,
                                     method="mad_robustize")
    with pytest.warns(UserWarning, match="zero mad_robustize scale"):
        matched = normalize(from_pycytominer(frame), method="mad_robustize", by=None,
                            samples=DMSO_QUERY, match_pycytominer=True)
    assert_profiles_equal(matched, expected, rtol=1e-6)
    assert np.abs(matched.sel(feature=features[0]).values).max() > 1e15  # Pycytominer's blow-up
    with pytest.warns(UserWarning, match="centred, not scaled"):
        default = normalize(from_pycytominer(frame), method="mad_robustize", by=None, samples=DMSO_QUERY)
    column = frame[features[0]].to_numpy()
    np.testing.assert_allclose(default.sel(feature=features[0]).values, column - 0.25)
    assert features[0] in default.attrs["zero_scale_features"]


@pytest.mark.parametrize(
    "operation, params",
    [
        ("variance_threshold", {"min_variance": 0.8}),
        ("frequency_threshold", {}),
        ("correlation_threshold", {"corr_threshold": 0.5}),
        ("correlation_threshold", {"corr_threshold": 0.5, "corr_method": "spearman"}),
        ("drop_na_columns", {}),
        ("blocklist", {}),
        ("drop_outliers", {"outlier_cutoff": 40}),
        ("noise_removal", {"noise_removal_perturb_groups": "broad_sample", "noise_removal_stdev_cutoff": 0.8}),
    ],
)
def test_feature_select_each_operation(plate, operation, params):
    rng = np.random.default_rng(0)
    frame = plate.copy()
    # Give every operation something to drop: a blocklisted feature, a near-constant one, NaN.
    frame["Nuclei_Correlation_RWC_DNA_ER"] = rng.normal(size=len(frame))
    frame["Cells_Constant"] = 1.0
    frame.loc[:3, "Cells_Constant"] = 2.0
    frame["Cells_Missing"] = rng.normal(size=len(frame))
    frame.loc[:40, "Cells_Missing"] = np.nan
    _, features = _split(frame)
    peer = dict(params)
    if "noise_removal_perturb_groups" in peer:
        peer["noise_removal_perturb_groups"] = "Metadata_" + peer["noise_removal_perturb_groups"]
    if operation == "correlation_threshold":  # Pycytominer's numpy path needs no NaN
        frame = frame.drop(columns="Cells_Missing")
        features.remove("Cells_Missing")
    expected = pycytominer.feature_select(frame, features=features, operation=operation, **peer)
    actual = feature_select(from_pycytominer(frame).chunk({"sample": 100}), operation=operation, **params)
    kept = [c for c in expected.columns if not c.startswith("Metadata_")]
    assert list(actual["feature"].values) == kept
    assert len(kept) < len(features)


def test_feature_select_chain_on_treatments(plate):
    ops = ["variance_threshold", "correlation_threshold", "drop_outliers"]
    expected = pycytominer.feature_select(plate, features=_split(plate)[1], operation=ops, corr_threshold=0.6,
                                          outlier_cutoff=30, samples="Metadata_pert_type == 'trt'")
    actual = feature_select(from_pycytominer(plate), operation=ops, corr_threshold=0.6, outlier_cutoff=30,
                            samples="pert_type == 'trt'")
    assert list(actual["feature"].values) == [c for c in expected.columns if not c.startswith("Metadata_")]


def _pca_aligned(actual, expected, components):
    """PCA components are defined up to sign: align ours to Pycytominer's before comparing."""
    a, b = actual[:, :components], expected[:, :components]
    return a * np.sign((a * b).sum(axis=0)), b


@pytest.mark.parametrize("method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_spherize_fit_on_dmso(plate, method):
    meta, features = _split(plate)
    expected = pycytominer.normalize(plate, features=features, meta_features=meta, samples=DMSO_QUERY,
                                     method="spherize", spherize_method=method)
    with pytest.warns(SpherizeWarning, match="24 fitting samples span 23"):
        actual = spherize(from_pycytominer(plate).chunk({"sample": 100}), method=method, samples=DMSO_QUERY)
    values = expected[[c for c in expected.columns if c not in meta]].to_numpy()
    if method.startswith("PCA"):
        # 24 DMSO wells span 23 directions; Pycytominer's other 431 components are an arbitrary
        # basis of the null space, so only the 23 defined ones are compared (and returned).
        assert actual.sizes["feature"] == 23
        a, b = _pca_aligned(actual.values, values, 23)
    else:
        a, b = actual.values, values
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9 * np.abs(b).max())


@pytest.mark.parametrize("method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_spherize_full_rank_all_samples(plate, method):
    """More fitting samples than features: the accumulated-covariance path."""
    meta, features = _split(plate)
    frame = plate[meta + features[:100]]
    expected = pycytominer.normalize(frame, features=features[:100], meta_features=meta, method="spherize",
                                     spherize_method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpherizeWarning)
        actual = spherize(from_pycytominer(frame).chunk({"sample": 64}), method=method)
    b = expected[[c for c in expected.columns if c not in meta]].to_numpy()
    a = actual.values
    if method.startswith("PCA"):
        a, b = _pca_aligned(a, b, 100)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9 * np.abs(b).max())


@pytest.mark.parametrize("operation", ["median", "modz"])
def test_consensus(plate, operation):
    columns = ["Metadata_broad_sample", "Metadata_mmoles_per_liter"]
    _, features = _split(plate)
    # Every multi-replicate group (DMSO ×24, two compounds ×12) and some single wells, to keep
    # Pycytominer's per-group loop short.
    sizes = plate.groupby(columns)[columns[0]].transform("size")
    plate = plate[(sizes > 1) | (np.arange(len(plate)) < 60)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pycytominer's own pandas deprecation warnings
        expected = pycytominer.consensus(plate, replicate_columns=columns, operation=operation, features=features)
    expected = expected[columns + features]  # MODZ returns its columns in set order
    actual = consensus(from_pycytominer(plate).chunk({"sample": 64}),
                       replicate_columns=["broad_sample", "mmoles_per_liter"], operation=operation)
    assert actual.sizes["sample"] == len(expected)
    keep = ["broad_sample", "mmoles_per_liter", "feature"]
    actual = actual.drop_vars([c for c in actual.coords if c not in keep])
    assert_profiles_equal(actual.compute(), expected, rtol=1e-6)


@pytest.mark.parametrize("operation", ["mean", "median"])
@pytest.mark.parametrize("strata", [("plate", "well"), ("plate", "well", "site")])
def test_aggregate_single_cells(operation, strata):
    rng = np.random.default_rng(1)
    n, d = 1500, 12
    plate = rng.choice(["P1", "P2"], n)
    well = rng.choice(["A01", "B02", "C03"], n)
    site = rng.integers(1, 4, n)
    values = rng.normal(size=(n, d)).astype("float32")
    values[rng.random((n, d)) < 0.02] = np.nan
    names = [f"Cells_f{j}" for j in range(d)]
    frame = pd.concat([pd.DataFrame({"Metadata_plate": plate, "Metadata_well": well, "Metadata_site": site,
                                     "Metadata_ObjectNumber": np.arange(n)}),
                       pd.DataFrame(values, columns=names)], axis=1)
    expected = pycytominer.aggregate(frame, strata=[f"Metadata_{s}" for s in strata], features=names,
                                     operation=operation, compute_object_count=True)
    expected = expected.rename(columns={"Metadata_Object_Count": "Metadata_cell_count"})
    import xarray as xr

    cells = xr.DataArray(values, dims=("cell", "feature"),
                         coords={"plate": ("cell", plate), "well": ("cell", well), "site": ("cell", site),
                                 "feature": names})
    sorted_cells = cells.isel(cell=np.lexsort((site, well, plate))).chunk({"cell": 100})
    for source in (cells, sorted_cells):
        actual = aggregate(source, strata=strata, operation=operation, block_bytes=4000).compute()
        assert_profiles_equal(actual, expected, rtol=1e-9)


def test_annotate_reproduces_lincs_metadata(plate, shared_data):
    metadata = shared_data / "lincs_metadata"
    platemap = pd.read_csv(metadata / "platemaps" / "2016_04_01_a549_48hr_batch1" / "platemap" / "C-7161-01-LM6-027.txt",
                           sep="\t")
    moa = pd.read_csv(metadata / "moa" / "repurposing_info_external_moa_map_resolved.tsv", sep="\t")
    original = from_pycytominer(plate)
    bare = original.drop_vars([c for c in original.coords if c not in ("well", "feature")])
    annotated = annotate(bare, platemap, external_metadata=moa[["broad_sample", "pert_iname", "moa", "target"]])
    expected_moa = pd.Series(original["moa"].values).fillna("")
    assert (pd.Series(annotated["moa"].values).fillna("") == expected_moa).all()
    assert (annotated["control"].values == np.where(original["pert_type"].values == "control", "negcon", "trt")).all()
