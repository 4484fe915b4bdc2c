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


def check_reader(fmt, path, tmp_path, **options):
    """Conformance suite of a :mod:`cpzarr.formats` reader; returns what it read from ``path``.

    Checks, with AssertionError naming the first failure, that the reader

    1. recognises ``path`` (``detect``), and does not recognise a file of random bytes;
    2. reads ``path`` into a result that honours its kind's contract (columns, dims, dtypes,
       sort order: see :mod:`cpzarr.formats._contract`);
    3. refuses a missing path and an empty file (0 bytes, or an empty folder) with
       :class:`cpzarr.errors.InputError` naming it, never a raw parser error.

    Parameters
    ----------
    fmt : cpzarr.formats.Format or str
        The reader, or its registered name.
    path : str or Path
        A valid sample of the format.
    tmp_path : Path
        A scratch folder for the broken samples.
    **options
        Passed to ``read``.

    Examples
    --------
    >>> result = check_reader("load_data", "load_data.csv", tmp_path)  # doctest: +SKIP
    """
    from pathlib import Path

    from cpzarr.errors import InputError
    from cpzarr.formats import get_format

    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    path, tmp_path = Path(path), Path(tmp_path)
    assert fmt.looks_like(path), f"{fmt.name}: does not recognise its own sample {path}"
    noise = tmp_path / f"noise-{fmt.name}.csv"
    noise.write_bytes(bytes(range(256)) * 4)
    assert not fmt.looks_like(noise), f"{fmt.name}: takes a file of random bytes for its format"

    result = fmt.read(path, **options)
    _CHECKS[fmt.kind](fmt, result)

    missing = tmp_path / f"missing-{fmt.name}" / path.name
    _assert_refused(fmt, missing, InputError, options)
    empty = tmp_path / f"empty-{fmt.name}"
    empty.mkdir(exist_ok=True)
    target = empty / path.name
    if path.is_dir():
        target.mkdir(exist_ok=True)
    else:
        target.write_bytes(b"")
    _assert_refused(fmt, target, InputError, options)
    return result


def _assert_refused(fmt, path, error_type, options):
    try:
        fmt.read(path, **options)
    except error_type as error:
        assert path.name in str(error) or str(path.parent) in str(error), (
            f"{fmt.name}: the error for {path} does not name it: {error}")
        return
    except Exception as error:  # the suite's point: anything else is a failure
        raise AssertionError(f"{fmt.name}: {path} gave {type(error).__name__}: {error}, not InputError") from error
    raise AssertionError(f"{fmt.name}: {path} was read without an error")


def _check_images(fmt, result):
    assert isinstance(result, tuple) and len(result) == 4, f"{fmt.name}: images give (sites, metadata, channels, info)"
    sites, meta, channels, info = result
    assert isinstance(sites, pd.DataFrame) and isinstance(meta, pd.DataFrame)
    assert {"plate", "well", "site", "line"} <= set(sites.columns), f"{fmt.name}: site columns {list(sites.columns)}"
    assert channels and all(c in sites.columns for c in channels), f"{fmt.name}: channels {channels}"
    assert info.get("format") and info.get("source"), f"{fmt.name}: info {info}"
    from pathlib import Path

    for c in channels:
        paths = [p for p in sites[c] if p is not None]
        assert all(Path(p).is_absolute() for p in paths), f"{fmt.name}: channel {c} paths must be absolute"
    assert {"plate", "well"} <= set(meta.columns), f"{fmt.name}: well metadata keyed by plate and well"
    assert not meta.duplicated(["plate", "well"]).any(), f"{fmt.name}: one metadata row per well"


def _check_locations(fmt, result):
    assert isinstance(result, pd.DataFrame), f"{fmt.name}: locations are a DataFrame"
    need = {"plate", "well", "site", "x", "y", "file", "row"}
    assert need <= set(result.columns), f"{fmt.name}: lacks {sorted(need - set(result.columns))}"
    assert result["x"].dtype == np.float64 and result["y"].dtype == np.float64, f"{fmt.name}: x, y float64"
    assert len(result) > 0, f"{fmt.name}: no locations read from a valid sample"


def _check_features(fmt, result):
    assert isinstance(result, xr.Dataset) and "features" in result, f"{fmt.name}: a Dataset with 'features'"
    features = result["features"]
    assert features.dims == ("cell", "feature"), f"{fmt.name}: dims {features.dims}"
    assert features.dtype == np.float32, f"{fmt.name}: dtype {features.dtype}"
    for name in ("plate", "well", "site", "x", "y"):
        assert name in result.coords and result[name].dims == ("cell",), f"{fmt.name}: coordinate {name} along cell"
    keys = pd.DataFrame({k: result[k].values for k in ("plate", "well", "site")})
    assert keys.equals(keys.sort_values(["plate", "well", "site"], kind="stable").reset_index(drop=True)), (
        f"{fmt.name}: cells not sorted by plate, well, site")


def _check_platemap(fmt, result):
    assert isinstance(result, tuple) and len(result) == 2, f"{fmt.name}: platemaps give (frame, source)"
    frame, source = result
    assert isinstance(frame, pd.DataFrame) and "well" in frame.columns, f"{fmt.name}: a frame with 'well'"
    keys = ["plate", "well"] if "plate" in frame.columns else ["well"]
    assert not frame.duplicated(keys).any(), f"{fmt.name}: one row per well"
    assert isinstance(source, str) and source


_CHECKS = {"images": _check_images, "locations": _check_locations, "features": _check_features,
           "platemap": _check_platemap}


# --------------------------------------------------------------------------------------------
# The store backend
# --------------------------------------------------------------------------------------------

#: Dimensions along which :func:`check_backend` reads at most ``sites`` positions.
_SITE_DIMS = ("plate", "well", "site")


def check_backend(store, storage_options=None, *, seed=0, window=48, sites=3):
    """Conformance suite of the store's arrays as :func:`cpzarr.store.open_screen` serves them.

    For ``images`` and every ``/features/<name>`` node, a random region (at most ``sites`` along
    plate, well and site, ``window`` along the other dimensions) is read with plain zarr as the
    numpy reference, and AssertionError names the first difference of

    1. the store's ``BackendArray`` (:class:`cpzarr.store._backend.SitesArray` for images,
       :class:`~cpzarr.store._backend.RowsArray` for features; local stores in the layout) indexed
       with xarray's basic, outer and vectorized indexers, through the ``IndexingSupport`` it
       declares;
    2. the same array, lazily indexed and chunked by dask in several chunkings (one element per
       chunk, odd sizes that cut across the stored chunks, one chunk);
    3. the variable as opened (``open_screen`` / ``open_node``, any store: zarr's reader on an
       object store) under ``isel`` with integers and steps, lists, and pointwise indexers, as
       opened and rechunked.

    Parameters
    ----------
    store : str, Path or cpzarr.store.Location
        A store: a local path or an fsspec URL.
    storage_options : dict, optional
        fsspec options of a URL.
    seed : int
        Seed of the random regions and indexers.
    window, sites : int
        Extent of the region read, along the image/feature dimensions and the site dimensions.

    Returns
    -------
    dict
        ``{array: reader}``: which reader served each array checked (``"SitesArray"``,
        ``"RowsArray"`` or ``"zarr"``), so a test can tell that the fast readers were the ones
        checked.

    Examples
    --------
    >>> check_backend("screen.zarr")  # doctest: +SKIP
    {'images': 'SitesArray', 'features/cnn': 'RowsArray'}
    """
    import zarr

    from cpzarr.store import as_location, open_node, open_screen, row_reader, site_reader, zarr_target
    from cpzarr.store._backend import RowsArray, SitesArray

    location = as_location(store, storage_options)
    group = zarr.open_group(zarr_target(location, read_only=True), mode="r")
    rng = np.random.default_rng(seed)
    checked = {}
    screen = open_screen(location)
    if "images" in screen.to_dataset(inherit=False):
        images = screen["images"]
        reader = site_reader(images)
        backend = None if reader is None else SitesArray(reader, images.shape, images.dtype)
        checked["images"] = _check_array("images", images, group["images"], backend, rng, window, sites)
    if "features" in group:
        for name in sorted(n for n, _ in group["features"].groups()):
            node = f"features/{name}"
            features = open_node(location, node)["features"]
            files = row_reader(features)
            backend = None if files is None else RowsArray(files)
            checked[node] = _check_array(node, features, group[node]["features"], backend, rng, window, sites)
    assert checked, f"{location}: neither images nor features nodes to check"
    return checked


def _check_array(name, opened, stored, backend, rng, window, sites):
    """Every check of :func:`check_backend` on one array; returns the reader's name."""
    from xarray.core import indexing

    from cpzarr.store._backend import lazy_variable

    dims = opened.dims
    assert tuple(opened.shape) == tuple(stored.shape), f"{name}: shape {opened.shape} opened, {stored.shape} stored"
    assert opened.dtype == stored.dtype, f"{name}: dtype {opened.dtype} opened, {stored.dtype} stored"
    starts, sizes = [], []
    for dim, n in zip(dims, opened.shape):
        size = min(n, sites if dim in _SITE_DIMS else window)
        starts.append(int(rng.integers(0, n - size + 1)))
        sizes.append(size)
    region = tuple(slice(a, a + s) for a, s in zip(starts, sizes))
    reference = np.asarray(stored[region])
    keys = _keys(sizes, rng)

    def shifted(key):  # a key of the region, in the whole array's positions
        out = []
        for k, a in zip(key, starts):
            if isinstance(k, slice):
                out.append(slice(k.start + a, k.stop + a, k.step))
            else:
                out.append(np.asarray(k) + a if isinstance(k, np.ndarray) else int(k) + a)
        return tuple(out)

    def same(got, want, what):
        got = np.asarray(got)
        assert got.shape == want.shape, f"{name}: {what} has shape {got.shape}, zarr gives {want.shape}"
        bad = ~((got == want) | (np.isnan(got) & np.isnan(want)) if got.dtype.kind == "f" else got == want)
        assert not bad.any(), (f"{name}: {what} differs from zarr at {int(bad.sum())} of {bad.size} values, "
                               f"first at {tuple(int(i) for i in np.argwhere(bad)[0])}")

    if backend is not None:
        assert tuple(backend.shape) == tuple(stored.shape) and backend.dtype == stored.dtype
        basic, outer, vectorized = keys
        same(backend[indexing.BasicIndexer(shifted(basic))], reference[basic], f"basic indexing {basic}")
        same(backend[indexing.OuterIndexer(shifted(outer))], reference[_ix(outer, sizes)], "outer indexing")
        same(backend[indexing.VectorizedIndexer(shifted(vectorized))], reference[vectorized], "vectorized indexing")
        lazy = lazy_variable(dims, backend)[region]
        for chunks in _chunkings(sizes):
            same(lazy.chunk(dict(zip(dims, chunks))).values, reference, f"dask chunks {chunks}")
    basic, outer, vectorized = keys
    for label, variable in (("as opened", opened), ("rechunked", opened.chunk({d: max(1, c // 2 + 1) for d, c
                                                                            in zip(dims, _first_chunks(opened))}))):
        same(variable.isel(dict(zip(dims, region))).values, reference, f"the region, {label}")
        same(variable.isel(dict(zip(dims, shifted(basic)))).values, reference[basic], f"isel {basic}, {label}")
        outer_key = {d: (list(k) if isinstance(k, np.ndarray) else k) for d, k in zip(dims, shifted(outer))}
        same(variable.isel(outer_key).values, reference[_ix(outer, sizes)], f"isel with lists, {label}")
        points = {d: xr.DataArray(k, dims="points") for d, k in zip(dims, shifted(vectorized))}
        same(variable.isel(points).values, reference[vectorized], f"pointwise isel, {label}")
    return type(backend).__name__ if backend is not None else "zarr"


def _first_chunks(variable):
    chunks = variable.chunks
    return [c[0] if c else 1 for c in chunks] if chunks else list(variable.shape)


def _keys(sizes, rng):
    """A basic, an outer and a vectorized key within a region of ``sizes`` (region positions)."""
    basic = []
    for axis, n in enumerate(sizes):
        if axis == 0 and n > 0:
            basic.append(int(rng.integers(0, n)))  # drops a dimension
        else:
            step = int(rng.integers(1, 4))
            lo = int(rng.integers(0, max(1, n // 2)))
            basic.append(slice(lo, n, step))
    outer = []
    for axis, n in enumerate(sizes):
        if axis % 2 == 0:
            outer.append(rng.integers(0, n, size=min(n, 3) + 1))  # unsorted, repeats allowed
        else:
            outer.append(slice(0, n, 2))
    points = 7
    vectorized = tuple(rng.integers(0, n, size=points) for n in sizes)
    return tuple(basic), tuple(outer), vectorized


def _ix(key, sizes):
    """``key`` (slices and integer arrays per dimension) as numpy's outer indexing."""
    return np.ix_(*[np.arange(n)[k] if isinstance(k, slice) else k for k, n in zip(key, sizes)])


def _chunkings(sizes):
    """Chunkings of a region: one site (and a third of each other extent) per chunk, odd sizes, one chunk."""
    return [
        tuple(1 if i < 3 or n <= 8 else max(1, n // 3) for i, n in enumerate(sizes)),
        tuple(max(1, min(n, (3, 5, 7, 11)[i % 4])) for i, n in enumerate(sizes)),
        tuple(max(1, n) for n in sizes),
    ]
