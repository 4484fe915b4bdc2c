"""Fault injection, fast cases (issue 21): bad inputs give a clear error naming what is wrong, and
never a silently wrong result. The slow cases (SIGKILL at random points, full disk) are in
scripts/fault_injection.py. Each test here failed on the code before the fix it guards."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cpzarr.errors import InputError


# --- item 12: inf in fitting samples, all-NaN MODZ, a typo in a CSV feature column ---


def _plate_profiles(n_per_plate=6, d=3, seed=0):
    rng = np.random.default_rng(seed)
    n = 2 * n_per_plate
    return xr.DataArray(
        rng.normal(size=(n, d)), dims=("sample", "feature"),
        coords={
            "plate": ("sample", ["P1"] * n_per_plate + ["P2"] * n_per_plate),
            "control": ("sample", ["negcon", "trt"] * n_per_plate),
            "compound": ("sample", (["DMSO", "a", "DMSO", "b", "DMSO", "c"] * n)[:n]),
            "feature": [f"f{j}" for j in range(d)],
        },
    )


@pytest.mark.parametrize("method, undefined", [("standardize", True), ("robustize", True), ("mad_robustize", False)])
def test_normalize_refuses_inf_in_fitting_samples(method, undefined):
    """Before: standardize returned feature f1 all-NaN on plate P1, with no word."""
    from cpzarr.profiles import normalize

    p = _plate_profiles()
    p[0, 1] = np.inf  # one of plate P1's three negcon values of feature f1
    # Mean/std and the 25-75 % interval of (inf, a, b) are not finite; the median and MAD are.
    if undefined:
        with pytest.raises(InputError, match=r"(?s)±inf.*feature f1 in P1"):
            normalize(p, method=method, samples="control == 'negcon'", by="plate")
    else:
        out = normalize(p, method=method, samples="control == 'negcon'", by="plate")
        assert np.isfinite(out.values[1:, :]).all()
    p[2, 1] = -np.inf
    p[4, 1] = np.inf
    with pytest.raises(InputError, match="feature f1 in P1"):
        normalize(p, method=method, samples="control == 'negcon'", by="plate")


def test_normalize_ignores_nan_as_before():
    from cpzarr.profiles import normalize

    p = _plate_profiles()
    p[0, 1] = np.nan
    out = normalize(p, method="standardize", samples="control == 'negcon'", by="plate")
    fit = p.values[[2, 4], 1]
    np.testing.assert_allclose(out.values[1, 1], (p.values[1, 1] - fit.mean()) / fit.std(), rtol=1e-12)


@pytest.mark.parametrize("n_per_plate", [6, 40])  # n <= d (Gram) and n > d (scatter) paths
def test_spherize_refuses_inf(n_per_plate):
    from cpzarr.profiles import spherize

    p = _plate_profiles(n_per_plate=n_per_plate, d=3 if n_per_plate > 6 else 20)
    p[2, 1] = np.inf
    with pytest.raises(InputError, match=r"(?s)NaN or ±inf.*f1"):
        spherize(p, method="ZCA", samples="control == 'negcon'")


def test_modz_keeps_an_all_nan_feature_nan():
    from cpzarr.profiles import consensus

    p = _plate_profiles()
    p[p["compound"] == "DMSO", 2] = np.nan
    p[0, 0] = np.nan  # and one missing value elsewhere, which modz skips
    modz = consensus(p, replicate_columns="compound", operation="modz")
    median = consensus(p, replicate_columns="compound", operation="median")
    dmso = modz.sel(sample=(modz["compound"] == "DMSO").values)
    assert np.isnan(dmso.values[0, 2])
    assert np.isnan(median.sel(sample=(median["compound"] == "DMSO").values).values[0, 2])
    assert np.isfinite(dmso.values[0, :2]).all()
    single = consensus(p.isel(sample=[0]), replicate_columns="compound", operation="modz")
    assert np.isnan(single.values[0, 0])  # one replicate is returned as is, NaN included


def test_csv_feature_typo_is_refused(tmp_path):
    from cpzarr.profiles import read_profiles

    frame = pd.DataFrame({
        "Metadata_Plate": ["P1"] * 4, "Metadata_Well": ["A01", "A02", "A03", "A04"],
        "Cells_a": [1.0, 2.0, 3.0, 4.0], "Cells_b": ["0.5", "0.25", "abc", "1e-3"],
        "Plate_Map_Name": ["map1"] * 4,
    })
    path = tmp_path / "typo.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"(?s)typo.csv.*'Cells_b'.*row 2 \('abc'\)"):
        read_profiles(path)
    frame.loc[2, "Cells_b"] = "0.125"
    frame.to_csv(path, index=False)
    p = read_profiles(path)
    assert list(p["feature"].values) == ["Cells_a", "Cells_b"]
    assert "Plate_Map_Name" in p.coords
