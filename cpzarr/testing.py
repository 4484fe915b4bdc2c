"""Assertion helpers for tests of code that produces cpzarr objects."""

import numpy as np
import pandas as pd
import xarray as xr


def assert_profiles_equal(actual, expected, rtol=1e-6, atol=0.0, check_coords=True, check_order=True):
    """Assert that two profile tables hold the same samples, features, metadata and values.

    Parameters
    ----------
    actual, expected : DataArray (sample, feature) or pandas.DataFrame
        Frames are read in the Pycytominer convention (``Metadata_*`` columns are metadata).
    rtol, atol : float
        Tolerances of the values (NaN equals NaN).
    check_coords : bool, default True
        Compare the metadata coordinates shared by both (names present in only one are reported).
    check_order : bool, default True
        When False, features are matched by name and samples by their sorted metadata.

    Raises
    ------
    AssertionError
        Naming the first differing features and samples.

    Examples
    --------
    >>> from cpzarr.synthetic import make_profiles
    >>> p = make_profiles(n_plates=2, n_batches=1, n_negcon=2, n_compounds=2, n_replicates=2,
    ...                   n_moas=1, n_features=3, n_samples=None)
    >>> assert_profiles_equal(p, p.copy())
    """
    from cpzarr.profiles import from_pycytominer

    actual = from_pycytominer(actual) if isinstance(actual, pd.DataFrame) else actual
    expected = from_pycytominer(expected) if isinstance(expected, pd.DataFrame) else expected
    for name, obj in (("actual", actual), ("expected", expected)):
        if not isinstance(obj, xr.DataArray) or set(obj.dims) != {"sample", "feature"}:
            raise AssertionError(f"{name} is not a DataArray with dims (sample, feature)")
    actual = actual.transpose("sample", "feature")
    expected = expected.transpose("sample", "feature")
    a_features = [str(f) for f in actual["feature"].values]
    e_features = [str(f) for f in expected["feature"].values]
    if set(a_features) != set(e_features):
        only_a = sorted(set(a_features) - set(e_features))[:10]
        only_e = sorted(set(e_features) - set(a_features))[:10]
        raise AssertionError(f"features differ: only in actual {only_a}, only in expected {only_e}")
    if a_features != e_features:
        if check_order:
            raise AssertionError("features are the same but in a different order")
        actual = actual.sel(feature=e_features)
    if actual.sizes["sample"] != expected.sizes["sample"]:
        raise AssertionError(f"{actual.sizes['sample']} samples in actual, {expected.sizes['sample']} in expected")
    shared = [
        n for n in expected.coords
        if n in actual.coords and n not in ("sample", "feature") and expected[n].dims == ("sample",)
    ]
    if not check_order and shared:
        actual = actual.isel(sample=_sort_order(actual, shared))
        expected = expected.isel(sample=_sort_order(expected, shared))
    if check_coords:
        a_names = {n for n in actual.coords if actual[n].dims == ("sample",)}
        e_names = {n for n in expected.coords if expected[n].dims == ("sample",)}
        if a_names != e_names:
            raise AssertionError(
                f"metadata differ: only in actual {sorted(a_names - e_names)}, "
                f"only in expected {sorted(e_names - a_names)}"
            )
        for name in shared:
            a = pd.Series(actual[name].values).astype(str)
            e = pd.Series(expected[name].values).astype(str)
            bad = np.flatnonzero(a.values != e.values)
            if len(bad):
                raise AssertionError(
                    f"metadata {name!r} differs at {len(bad)} samples, first at {bad[0]}: "
                    f"{a.iloc[bad[0]]!r} != {e.iloc[bad[0]]!r}"
                )
    a_values = np.asarray(actual.values, dtype=np.float64)
    e_values = np.asarray(expected.values, dtype=np.float64)
    close = np.isclose(a_values, e_values, rtol=rtol, atol=atol, equal_nan=True)
    if not close.all():
        rows, cols = np.nonzero(~close)
        features = [e_features[c] for c in np.unique(cols)[:5]]
        raise AssertionError(
            f"{(~close).sum()} values differ beyond rtol={rtol}, atol={atol}; features {features}; "
            f"first at sample {rows[0]}: {a_values[rows[0], cols[0]]!r} != {e_values[rows[0], cols[0]]!r}"
        )


def _sort_order(profiles, names):
    frame = pd.DataFrame({n: pd.Series(profiles[n].values).astype(str) for n in names})
    return np.asarray(frame.sort_values(names, kind="stable").index)
