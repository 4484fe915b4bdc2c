"""Profiles operations on synthetic data: closed forms, numpy references over chunkings, errors."""

import json
import tracemalloc
import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import rankdata

from cpzarr.errors import InputError
from cpzarr.profiles import (
    RECIPES, SpherizeWarning, ZeroScaleWarning, aggregate, consensus, correlation_matrix,
    default_blocklist, feature_select, from_pycytominer, modz_weights, normalize, pipeline,
    read_profiles, spherize, to_pycytominer, write_profiles,
)
from cpzarr.profiles import _consensus
from cpzarr.synthetic import make_profiles
from cpzarr.testing import assert_profiles_equal


@pytest.fixture(scope="module")
def small():
    return make_profiles(n_plates=6, n_batches=2, n_negcon=10, n_compounds=20, n_replicates=3,
                         n_moas=5, n_features=24, n_samples=None, dtype="float64")


def test_make_profiles_layout_and_determinism():
    p = make_profiles(n_plates=10, n_batches=2, n_negcon=4, n_compounds=12, n_replicates=5, n_moas=4,
                      n_features=8, n_samples=96)
    assert p.shape == (96, 8) and p.dtype == np.float32
    assert (p.control == "negcon").sum() == 40
    counts = pd.Series(p.compound.values[p.control.values == "trt"]).value_counts()
    assert counts.sum() == 56 and counts.min() == 4 and counts.max() == 5
    for compound in counts.index:  # replicates on distinct plates
        plates = p.plate.values[p.compound.values == compound]
        assert len(set(plates)) == len(plates)
    assert not pd.DataFrame({"p": p.plate.values, "w": p.well.values}).duplicated().any()
    assert_profiles_equal(p, make_profiles(n_plates=10, n_batches=2, n_negcon=4, n_compounds=12,
                                           n_replicates=5, n_moas=4, n_features=8, n_samples=96), rtol=0)
    with pytest.raises(InputError, match="n_replicates"):
        make_profiles(n_plates=2, n_replicates=3, n_compounds=4, n_moas=2, n_features=4, n_samples=None)


def test_io_roundtrip_all_formats(tmp_path, small):
    frame = to_pycytominer(small)
    assert frame.columns[0] == "Metadata_Plate"
    for name, node in [("p.parquet", None), ("p.csv.gz", None), ("p.zarr", "profiles/demo/well")]:
        write_profiles(small, tmp_path / name, node=node)
        back = read_profiles(tmp_path / name, node=node)
        if name.endswith(".csv.gz"):  # CSV cannot tell an empty string from a missing value
            back = back.assign_coords(moa=("sample", pd.Series(back.moa.values).fillna("").to_numpy()))
        assert_profiles_equal(back, small, rtol=0)
    assert isinstance(read_profiles(tmp_path / "p.zarr", node="profiles/demo/well").data, da.Array)


def test_node_to_node_with_other_chunks(tmp_path, small):
    """A node read from a store (its chunks recorded in the encodings) writes to another node
    in other chunks, as an out-of-core step does."""
    write_profiles(small.chunk({"sample": 16}), tmp_path / "a.zarr", node="profiles/demo/well")
    read = read_profiles(tmp_path / "a.zarr", node="profiles/demo/well")
    write_profiles(read.chunk({"sample": 40}), tmp_path / "b.zarr", node="profiles/demo/normalized")
    back = read_profiles(tmp_path / "b.zarr", node="profiles/demo/normalized")
    assert back.data.chunks[0][0] == 40
    assert_profiles_equal(back, small, rtol=0)


def test_conversion_keeps_dtypes_order_index_and_nan():
    frame = pd.DataFrame({
        "Cells_a": np.array([1, 2, 3], dtype=np.int64),
        "Metadata_Well": ["A01", None, "A03"],
        "Nuclei_b": np.array([0.5, np.nan, 1.5], dtype=np.float32),
        "Image_Text": ["x", "y", "z"],
        "Metadata_dose": [np.nan, 1.0, 2.0],
    }, index=[10, 11, 12])
    profiles = from_pycytominer(frame)
    assert list(profiles["feature"].values) == ["Cells_a", "Nuclei_b"]
    assert "Image_Text" in profiles.coords and "well" in profiles.coords
    pd.testing.assert_frame_equal(to_pycytominer(profiles), frame)


def test_conversion_errors():
    with pytest.raises(InputError, match="not in the profile table"):
        from_pycytominer(pd.DataFrame({"Cells_a": [1.0]}), features=["Cells_a", "Cells_b"])
    with pytest.raises(InputError, match="already taken"):
        from_pycytominer(pd.DataFrame({"Metadata_Well": ["A"], "well": ["B"], "Cells_a": [1.0]}))


def _reference_normalize(values, codes, fit, method):
    out = np.empty_like(values)
    for g in np.unique(codes):
        rows = values[(codes == g) & fit]
        if method == "standardize":
            center, scale = rows.mean(0), rows.std(0)
        elif method == "robustize":
            center = np.median(rows, 0)
            scale = np.percentile(rows, 75, axis=0) - np.percentile(rows, 25, axis=0)
        else:
            center = np.median(rows, 0)
            scale = 1.4826 * np.median(np.abs(rows - center), 0)
        out[codes == g] = (values[codes == g] - center) / scale
    return out


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
@pytest.mark.parametrize("chunks", [None, 7, 50])
@pytest.mark.parametrize("order", ["plates", "plates reversed", "shuffled"])
def test_normalize_per_plate_matches_numpy(small, method, chunks, order):
    # Plates as runs of wells (fitted chunk by chunk), in any key order, or wells shuffled.
    n = small.sizes["sample"]
    rows = {"plates": np.arange(n), "plates reversed": np.arange(n)[::-1],
            "shuffled": np.random.default_rng(0).permutation(n)}[order]
    # One plate with fewer fitting wells than the others.
    dropped = np.flatnonzero((small.plate.values == small.plate.values[-1]) & (small.control.values == "negcon"))[:3]
    small = small.isel(sample=rows[~np.isin(rows, dropped)])
    profiles = small if chunks is None else small.chunk({"sample": chunks})
    actual = normalize(profiles, method=method, by="plate", samples='control == "negcon"')
    codes = pd.factorize(small.plate.values)[0]
    expected = _reference_normalize(small.values, codes, small.control.values == "negcon", method)
    np.testing.assert_allclose(actual.values, expected, rtol=1e-10)
    assert isinstance(actual.data, da.Array) == (chunks is not None)
    assert json.loads(actual.attrs["cpzarr_steps"])[-1]["method"] == method


def test_normalize_mask_equals_query_and_by_groups(small):
    mask = small.control.values == "negcon"
    a = normalize(small, samples=mask, by=["batch", "plate"])
    b = normalize(small, samples='control == "negcon"', by="plate")
    assert_profiles_equal(a, b, rtol=1e-12, check_coords=False)


def test_normalize_errors_name_the_offenders(small):
    with pytest.raises(InputError, match="no fitting samples") as info:
        normalize(small, samples=small.plate.values != "P002")
    assert any("P002" in p for p in info.value.problems)
    with pytest.raises(InputError, match="grouping coordinates not found"):
        normalize(small, by="Metadata_Plate")
    with pytest.raises(InputError, match="not one of"):
        normalize(small, method="zscore")
    with pytest.raises(InputError, match="cannot evaluate"):
        normalize(small, samples="nonexistent == 1")


def test_normalize_zero_scale_rule(small):
    data = small.copy(data=small.values.copy())
    data[:, 3] = 7.0
    with pytest.warns(ZeroScaleWarning, match="24|1 features"):
        out = normalize(data, method="mad_robustize")
    assert np.isfinite(out.values).all()
    np.testing.assert_array_equal(out.values[:, 3], 0.0)
    report = json.loads(out.attrs["zero_scale_features"])
    assert set(report) == set(np.unique(small.plate.values))


@pytest.mark.parametrize("method", ["PCA", "ZCA", "PCA-cor", "ZCA-cor"])
@pytest.mark.parametrize("chunks", [None, 9])
def test_spherize_whitens_controls(method, chunks):
    """Covariance of the transformed controls is the identity for every method."""
    p = make_profiles(n_plates=10, n_batches=2, n_negcon=12, n_compounds=10, n_replicates=2, n_moas=5,
                      n_features=16, n_samples=None, dtype="float64")
    p = p if chunks is None else p.chunk({"sample": chunks})
    negcon = p.control.values == "negcon"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpherizeWarning)
        out = spherize(p, method=method, samples=negcon, epsilon=1e-12)
    cov = np.cov(np.asarray(out.values)[negcon], rowvar=False)
    np.testing.assert_allclose(cov, np.eye(16), atol=1e-8)
    if method.startswith("ZCA"):
        assert list(out.feature.values) == list(p.feature.values)
    else:
        assert out.feature.values[0] == "PC1"


def test_spherize_zca_closed_form():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    p = xr.DataArray(x, dims=("sample", "feature"))
    xc = x - x.mean(0)
    eigval, eigvec = np.linalg.eigh(np.cov(xc, rowvar=False))
    expected = xc @ eigvec @ np.diag(eigval**-0.5) @ eigvec.T
    np.testing.assert_allclose(spherize(p, method="ZCA", epsilon=0).values, expected, rtol=1e-8)


def test_spherize_rank_deficient_and_constant_features_stay_finite():
    p = make_profiles(n_plates=2, n_batches=1, n_negcon=6, n_compounds=4, n_replicates=2, n_moas=2,
                      n_features=30, n_samples=None, dtype="float64")
    data = p.copy(data=p.values.copy())
    data[:, 0] = 1.0  # constant in the controls
    for method in ("ZCA-cor", "PCA"):
        with pytest.warns(SpherizeWarning, match="span"):
            out = spherize(data, method=method, samples='control == "negcon"')
        assert np.isfinite(out.values).all()
    with pytest.raises(InputError, match="NaN"):
        bad = p.copy(data=p.values.copy())
        bad[0, 2] = np.nan
        spherize(bad)


def _reference_consensus(p, operation):
    frame = pd.DataFrame(p.values)
    keys = pd.Series(p.compound.values)
    if operation == "median":
        return frame.groupby(keys).median().to_numpy()
    out = []
    for _, rows in frame.groupby(keys):
        r = rows.to_numpy()
        if len(r) == 1:
            out.append(r[0])
            continue
        corr = pd.DataFrame(r.T).corr(method="spearman").to_numpy().copy()  # read-only under copy-on-write
        np.fill_diagonal(corr, np.nan)
        w = np.clip(np.nanmean(np.clip(corr, 0, None), axis=1), 0.01, None)
        out.append((np.round(w / w.sum(), 4)[:, None] * r).sum(0))
    return np.array(out)


def test_consensus_unsorted_keeps_keys_with_data(small):
    sorted_ = consensus(small, replicate_columns="compound")
    unsorted = consensus(small.chunk({"sample": 13}), replicate_columns="compound", block_bytes=3000, sort=False)
    assert list(unsorted.compound.values) != list(sorted_.compound.values)
    assert_profiles_equal(unsorted, sorted_, rtol=1e-12, check_order=False)


@pytest.mark.parametrize("operation", ["median", "modz"])
@pytest.mark.parametrize("chunks", [None, 5, 64])
def test_consensus_matches_pandas(small, operation, chunks):
    profiles = small if chunks is None else small.chunk({"sample": chunks})
    out = consensus(profiles, replicate_columns="compound", operation=operation, block_bytes=2000)
    np.testing.assert_allclose(out.values, _reference_consensus(small, operation), rtol=1e-10)
    assert list(out.compound.values) == sorted(set(small.compound.values))
    assert "moa" in out.coords and "plate" not in out.coords
    dmso = out.sel(sample=out.compound == "DMSO")
    assert dmso.replicate_count.values.tolist() == [60]


def _replicate_groups(sizes, n_features, dtype, seed=0, ties=False):
    """Profiles with one group per entry of ``sizes`` (group g has sizes[g] replicates), shuffled."""
    rng = np.random.default_rng(seed)
    names = np.repeat([f"C{g:02d}" for g in range(len(sizes))], sizes)
    values = rng.standard_normal((len(names), n_features)) + rng.standard_normal((len(sizes), n_features)).repeat(sizes, 0)
    if ties:
        values = np.round(values * 2) / 2  # many equal values within a profile and across replicates
    order = rng.permutation(len(names))
    return xr.DataArray(values[order].astype(dtype), dims=("sample", "feature"),
                        coords={"compound": ("sample", names[order])})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunks, block_bytes", [(None, 2**25), (7, 2000), (40, 600)])
def test_consensus_median_any_group_size_matches_pandas(dtype, chunks, block_bytes):
    # Sizes 1-8 go through the sorting network, larger ones through partition (odd and even,
    # and one group larger than a block, split along features).
    sizes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 16, 5, 5, 2, 40]
    p = _replicate_groups(sizes, 11, dtype, ties=True)
    profiles = p if chunks is None else p.chunk({"sample": chunks})
    out = consensus(profiles, replicate_columns="compound", operation="median", block_bytes=block_bytes)
    expected = pd.DataFrame(p.values.astype(np.float64)).groupby(p.compound.values).median()
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out.values, expected.to_numpy())
    assert out.replicate_count.values.tolist() == [sizes[int(c[1:])] for c in expected.index]


@pytest.mark.parametrize("small_parts", [False, True])
def test_consensus_modz_with_tied_values_matches_rankdata(monkeypatch, small_parts):
    # Rounded values tie within every profile: Spearman needs average ranks, as scipy's rankdata.
    p = _replicate_groups([3, 4, 5, 5, 2, 30, 100], 200, "float32", seed=1, ties=True)  # 100: the large-group path
    if small_parts:  # the large group's correlations 16 x 16 replicates, its weighted sum 16 features at a time
        slices, weights = _consensus._feature_slices, _consensus._large_weights
        monkeypatch.setattr(_consensus, "_feature_slices", lambda rows, d: slices(rows, d, budget=8 * rows * 16))
        monkeypatch.setattr(_consensus, "_large_weights", lambda *args: weights(*args, panel=16))
    out = consensus(p.chunk({"sample": 9}), replicate_columns="compound", operation="modz", block_bytes=5000)
    expected = []
    for _, rows in pd.DataFrame(p.values.astype(np.float64)).groupby(p.compound.values):
        r = rows.to_numpy()
        ranks = rankdata(r, axis=1)
        corr = np.corrcoef(ranks)
        np.fill_diagonal(corr, np.nan)
        w = np.clip(np.nanmean(np.clip(corr, 0, None), axis=1), 0.01, None)
        expected.append((np.round(w / w.sum(), 4)[:, None] * r).sum(0))
    np.testing.assert_allclose(out.values, np.array(expected), rtol=1e-10)


@pytest.mark.parametrize("independent", [0, 250])
def test_correlation_threshold_near_the_threshold_matches_float64(independent):
    # Pairs built at correlations 1e-7 above and below 0.9 (closer than float32 resolves
    # over 4,000 samples) must be decided as Pycytominer decides them in float64. With 250
    # more independent features, partial sums rule out all other pairs after a quarter of the
    # samples (the shortcut); without, the whole Gram matrix is scanned.
    rng = np.random.default_rng(3)
    n = 4000
    columns = []
    for r in (0.9 + 1e-7, 0.9 - 1e-7):  # six pairs each, every pair on its own base
        base = rng.standard_normal((n, 6))
        base -= base.mean(0)
        noise = rng.standard_normal((n, 6))
        noise -= noise.mean(0)
        noise -= base * (noise * base).sum(0) / (base * base).sum(0)  # uncorrelated with its base
        columns += [base, r * base / base.std(0) + np.sqrt(1 - r**2) * noise / noise.std(0)]
    x = np.hstack(columns + [np.full((n, 1), 2.0), rng.standard_normal((n, independent))])  # and a constant
    corr = np.corrcoef(x.T)
    sums = pd.DataFrame(corr).abs().sum().sort_values().index
    position = {f: i for i, f in enumerate(sums)}
    rows, cols = np.nonzero(np.tril(corr > 0.9, -1))
    expected = sorted({int(a) if position[a] > position[b] else int(b) for a, b in zip(rows, cols)})
    for dtype in (np.float64, np.float32):
        data = x.astype(dtype)
        if dtype == np.float32:  # the float64 reference of the float32 values
            corr = np.corrcoef(data.astype(np.float64).T)
            sums = pd.DataFrame(corr).abs().sum().sort_values().index
            position = {f: i for i, f in enumerate(sums)}
            rows, cols = np.nonzero(np.tril(corr > 0.9, -1))
            expected = sorted({int(a) if position[a] > position[b] else int(b) for a, b in zip(rows, cols)})
        profiles = xr.DataArray(data, dims=("sample", "feature"),
                                coords={"feature": [f"f{j:02d}" for j in range(x.shape[1])]}).chunk({"sample": 700})
        out = feature_select(profiles, operation="correlation_threshold")
        dropped = json.loads(out.attrs["cpzarr_steps"])[-1]["dropped"]["correlation_threshold"]
        assert sorted(int(f[1:]) for f in dropped) == expected
        # One member of each pair just above the threshold, none of those just below.
        assert len(expected) == 6 and all(f < 12 for f in expected)


def test_modz_weights_hand_worked():
    # Spearman: replicates 1 and 2 agree (ρ = 1), 3 is reversed (ρ = -1 → 0).
    rows = np.array([[1.0, 2, 3], [1, 2, 4], [3, 2, 1]])
    assert modz_weights(rows).tolist() == [0.495, 0.495, 0.0099]


def test_correlation_matrix_with_nan_is_pairwise_complete():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    x[rng.random(x.shape) < 0.1] = np.nan
    expected = pd.DataFrame(x).corr().to_numpy()
    np.testing.assert_allclose(correlation_matrix(da.from_array(x, chunks=13)), expected, rtol=1e-10)


def test_feature_select_records_and_validates(small):
    data = small.copy(data=small.values.copy())
    data[:, 5] = 1.0
    data = data.assign_coords(feature=[("Nuclei_Granularity_14_DNA" if i == 7 else f) for i, f in
                                       enumerate(small.feature.values)])
    out = feature_select(data.chunk({"sample": 11}), operation=["variance_threshold", "blocklist"])
    dropped = json.loads(out.attrs["cpzarr_steps"])[-1]["dropped"]
    assert dropped == {"variance_threshold": ["f0005"], "blocklist": ["Nuclei_Granularity_14_DNA"]}
    assert len(default_blocklist()) == 55
    with pytest.raises(InputError, match="operations must be among"):
        feature_select(small, operation="pca")
    with pytest.raises(InputError, match="noise_removal needs"):
        feature_select(small, operation="noise_removal")


def test_aggregate_from_features_node_and_bounded_blocks():
    rng = np.random.default_rng(0)
    counts = [3, 40, 1, 7]
    n = sum(counts)
    well = np.repeat(["A01", "A02", "B01", "B02"], counts)
    values = rng.normal(size=(n, 4)).astype("float32")
    node = xr.Dataset({"features": (("cell", "feature"), values)},
                      coords={"plate": ("cell", ["P"] * n), "well": ("cell", well),
                              "site": ("cell", np.ones(n, int))}).chunk({"cell": 5})
    out = aggregate(node, block_bytes=64)  # smaller than one well: blocks still hold whole wells
    assert max(out.data.chunks[0]) >= 1
    expected = [values[well == w].mean(0) for w in ["A01", "A02", "B01", "B02"]]
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    assert out.cell_count.values.tolist() == counts
    assert "site" in out.coords  # constant within each well here
    with pytest.raises(InputError, match="dims"):
        aggregate(xr.DataArray(values, dims=("x", "feature")))


def test_pipeline_recipes_and_validation(small):
    out = pipeline(small, "mad_robustize_select_outliers")
    steps = json.loads(out.attrs["cpzarr_steps"])
    assert [s["step"] for s in steps] == ["normalize", "feature_select", "feature_select"]
    assert json.loads(out.attrs["cpzarr_pipeline"]) == RECIPES["mad_robustize_select_outliers"]
    manual = feature_select(feature_select(normalize(small, method="mad_robustize", samples='control == "negcon"'),
                                           operation=RECIPES["mad_robustize_select_outliers"][1]["operation"]),
                            operation="drop_outliers", outlier_cutoff=40)
    assert_profiles_equal(out, manual, rtol=0)
    with pytest.raises(InputError, match="invalid pipeline steps") as info:
        pipeline(small, ["normalize", ("spherize", {"methd": "ZCA"}), "bogus"])
    assert len(info.value.problems) == 2


@pytest.mark.slow
def test_out_of_core_normalize_spherize_consensus(tmp_path):
    """normalize → spherize → consensus on 200 MB of lazily made data holding < 40 % of it at once."""
    n_plates, wells, d = 256, 384, 512
    n = n_plates * wells
    plate = np.repeat(np.arange(n_plates), wells)
    well = np.tile(np.arange(wells), n_plates)
    negcon = well < 24
    compound = np.where(negcon, -1 - plate, (plate // 4) * 1000 + well)
    control = np.array(["trt", "negcon"], dtype=object)[negcon.astype(int)]
    # Generated chunk by chunk on demand: the whole array never exists in memory.
    x = da.random.default_rng(1).standard_normal((n, d), chunks=(1024, d), dtype=np.float32) + 3.0
    p = xr.DataArray(x, dims=("sample", "feature"), coords={
        "plate": ("sample", plate), "compound": ("sample", compound), "control": ("sample", control)})
    # tracemalloc sees numpy's buffers: the peak of live data, free of allocator caching.
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="threads", num_workers=2):
            z = normalize(p, method="mad_robustize", samples='control == "negcon"')
            w = spherize(z, method="ZCA", samples='control == "negcon"')
            c = consensus(w, replicate_columns="compound", block_bytes=2**20, sort=False)
            # Streamed to the store block by block, as a real run writes /profiles/<model>/consensus.
            write_profiles(c, tmp_path / "store.zarr", node="profiles/demo/consensus")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    c = read_profiles(tmp_path / "store.zarr", node="profiles/demo/consensus")
    assert c.shape == (len(np.unique(compound)), d)
    assert np.isfinite(c.values).all()
    assert peak < x.nbytes / 2.5, (peak, x.nbytes)
