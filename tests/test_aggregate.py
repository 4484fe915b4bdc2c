"""aggregate against plain pandas/numpy group-bys: paths, block sizes, chunkings, a written node."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cpzarr.profiles import aggregate, write_profiles
from cpzarr.profiles._aggregate import NETWORK_MAX_CELLS, _median_network

# Uneven wells: 1 and 2 cells, odd and even sizes on both median paths (network ≤ 128 < sort).
SIZES = [1, 2, 3, 25, 25, 26, 129, 300, 7]


def _cells(sizes=SIZES, n_features=9, dtype="float32", nan=True, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    values = rng.normal(size=(n, n_features)).astype(dtype)
    values[:, 0] = np.round(values[:, 0])  # ties, so the middle values repeat
    if nan:
        values[rng.random(values.shape) < 0.03] = np.nan
        values[sum(sizes[:7]):sum(sizes[:8]), 1] = np.nan  # a feature all NaN in one well
    well = np.repeat([f"W{i:02d}" for i in range(len(sizes))], sizes)
    plate = np.where(np.arange(n) < n // 2, "P1", "P2")  # a plate boundary inside a well
    return xr.DataArray(values, dims=("cell", "feature"), coords={
        "plate": ("cell", plate), "well": ("cell", well), "site": ("cell", np.arange(n) % 3 + 1),
        "feature": [f"f{j}" for j in range(n_features)]})


def _expected(cells, operation, strata=("plate", "well")):
    """pandas on a float64 copy, as Pycytominer does."""
    frame = pd.DataFrame(cells.values.astype(np.float64), columns=cells["feature"].values)
    keys = [pd.Series(cells[c].values, name=c) for c in strata]
    grouped = frame.groupby(keys, sort=True)
    return getattr(grouped, operation)(), grouped.size().to_numpy()


@pytest.mark.parametrize("operation", ["mean", "median"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_matches_pandas_groupby(operation, dtype):
    cells = _cells(dtype=dtype)
    expected, counts = _expected(cells, operation)
    out = aggregate(cells, operation=operation).compute()
    assert out.dtype == np.float64
    assert out["cell_count"].values.tolist() == counts.tolist()
    assert list(zip(out["plate"].values, out["well"].values)) == list(expected.index)
    np.testing.assert_allclose(out.values, expected.to_numpy(), rtol=1e-12, atol=0, equal_nan=True)
    assert np.isnan(out.values).sum() == expected.isna().to_numpy().sum()  # the all-NaN feature stays NaN


@pytest.mark.parametrize("operation", ["mean", "median"])
def test_sites_and_unsorted_cells(operation):
    cells = _cells()
    shuffled = cells.isel(cell=np.random.default_rng(3).permutation(cells.sizes["cell"]))
    expected, _ = _expected(cells, operation, ("plate", "well", "site"))
    out = aggregate(shuffled.chunk({"cell": 50}), strata=("plate", "well", "site"), operation=operation)
    np.testing.assert_allclose(out.values, expected.to_numpy(), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("operation", ["mean", "median"])
def test_same_numbers_whatever_the_blocks(operation):
    """Block sizes from smaller than one cell to the whole table, input chunks cutting wells."""
    cells = _cells(n_features=40)
    reference = aggregate(cells, operation=operation).values
    for chunk in (7, 64, 1000):
        for block_bytes in (1, 500, 40_000, 2**30):
            out = aggregate(cells.chunk({"cell": chunk}), operation=operation, block_bytes=block_bytes)
            n_blocks = len(out.data.chunks[0])
            if block_bytes == 1:
                assert n_blocks == out.sizes["sample"]  # a block holds whole wells, one each here
            np.testing.assert_allclose(out.values, reference, rtol=1e-13, equal_nan=True)
            if operation == "median":  # selections, not sums: bit for bit
                np.testing.assert_array_equal(out.values, reference)


def test_block_buffers_handed_on_then_dropped():
    """A block's buffer goes to the next block's task; none is kept once the last block is done."""
    from cpzarr.profiles._aggregate import _BlockBuffers

    buffers = _BlockBuffers(4, 3, np.float32, n_blocks=3)
    first = buffers.take()
    assert first.shape == (4, 3) and first.dtype == np.float32
    buffers.give(first)
    assert buffers.take() is first
    second = buffers.take()
    assert second is not first
    buffers.give(first)
    buffers.give(second)  # the third block: the compute is over
    assert buffers.take() is not first and buffers.remaining == 3


def test_median_network_selects_the_middle():
    rng = np.random.default_rng(5)
    for n in range(1, NETWORK_MAX_CELLS + 1):
        wires = rng.integers(0, 5 if n % 2 else 1000, size=(n, 200)).astype(float)
        reference = np.sort(wires, axis=0)
        for i, j in _median_network(n):
            assert i < j
            low = np.minimum(wires[i], wires[j])
            wires[j] = np.maximum(wires[i], wires[j])
            wires[i] = low
        np.testing.assert_array_equal(wires[[(n - 1) // 2, n // 2]], reference[[(n - 1) // 2, n // 2]])
    assert len(_median_network(25)) < 138  # pruned: Knuth's full network for 25 has 138 comparators


@pytest.mark.parametrize("operation", ["mean", "median"])
def test_written_features_node_to_profiles_node(tmp_path, operation):
    """A node as write_features writes it (chunks cutting wells) → /profiles/<model>/aggregated."""
    import zarr

    from cpzarr.features.cnn import write_features
    from cpzarr.store import open_node

    store = tmp_path / "s.zarr"
    zarr.open_group(str(store), mode="w", zarr_format=3)
    cells = _cells(nan=False, n_features=16)
    write_features(store, "m", cells.chunk({"cell": 100}), chunk_cells=100, progress=False)
    node = open_node(store, "features/m")
    assert node["features"].data.chunks[0][0] == 100
    write_profiles(aggregate(node["features"], operation=operation), store, node="profiles/m/aggregated")
    written = open_node(store, "profiles/m/aggregated")
    expected, counts = _expected(cells, operation)
    np.testing.assert_allclose(written["profiles"].values, expected.to_numpy(), rtol=1e-12)
    assert written["cell_count"].values.tolist() == counts.tolist()


@pytest.mark.parametrize("operation", ["mean", "median"])
def test_node_read_from_its_chunk_files(tmp_path, operation):
    """NaN cells in wells cut by chunks, an all-NaN chunk never written: as pandas, file reads used."""
    import zarr

    from cpzarr.features.cnn import write_features
    from cpzarr.store import open_node, row_reader

    store = tmp_path / "s.zarr"
    zarr.open_group(str(store), mode="w", zarr_format=3)
    cells = _cells(n_features=16)
    cells[300:400] = np.nan  # chunk 3 (of 100 cells) all NaN: zarr does not store it
    cells[200:211] = np.abs(cells[200:211].fillna(1))  # W06's cells in chunk 2: NaN only before
    write_features(store, "m", cells.chunk({"cell": 100}), chunk_cells=100, progress=False)
    assert not (store / "features" / "m" / "features" / "c" / "3").exists()
    features = open_node(store, "features/m")["features"]
    assert row_reader(features) is not None
    assert row_reader(features[1:]) is None and row_reader(features + 0) is None
    # every read of the node goes through the chunk-file reader behind xarray's backend API
    np.testing.assert_array_equal(features[150:450:7, 3:9].values, cells.values[150:450:7, 3:9])
    np.testing.assert_array_equal(features.values, cells.values)
    # Blosc stored chunks 0-1 as they were (read as views of their files) and shrank 2, 4, 5.
    chunk_files = store / "features" / "m" / "features" / "c"
    assert [(chunk_files / str(c) / "0").read_bytes()[2] & 2 for c in (0, 1, 2, 4, 5)] == [2, 2, 0, 0, 0]
    files = row_reader(features)
    for lo, hi in [(0, 518), (0, 100), (150, 450), (99, 101), (517, 518), (7, 7)]:
        np.testing.assert_array_equal(files.read(lo, hi), cells.values[lo:hi])
        pieces = [piece.copy() for piece in files.chunks(lo, hi)] or [np.empty((0, 16))]
        np.testing.assert_array_equal(np.concatenate(pieces), cells.values[lo:hi])
    expected, counts = _expected(cells, operation)
    for block_bytes in (None, 1, 3000):  # blocks of whole wells cutting chunks, or one per well
        out = aggregate(features, operation=operation, block_bytes=block_bytes).compute()
        assert out["cell_count"].values.tolist() == counts.tolist()
        np.testing.assert_allclose(out.values, expected.to_numpy(), rtol=1e-12, equal_nan=True)
        assert np.isnan(out.values).sum() == expected.isna().to_numpy().sum()


def test_chunk_files_read_only_unsharded_native_blosc_rows(tmp_path):
    """Other layouts of a features node are left to dask; the one read here reads as numpy's rows."""
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

    from cpzarr.store._chunk_files import ChunkFiles

    values = np.random.default_rng(0).random((50, 8)).astype("float32")
    blosc = BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")
    cases = {
        "blosc": ({"chunks": (16, 8), "compressors": blosc}, True),
        "zstd": ({"chunks": (16, 8), "compressors": ZstdCodec()}, False),
        "sharded": ({"chunks": (16, 8), "shards": (32, 8), "compressors": blosc}, False),
        "big-endian": ({"chunks": (16, 8), "serializer": BytesCodec(endian="big"), "compressors": blosc}, False),
        "columns-split": ({"chunks": (16, 4), "compressors": blosc}, False),
    }
    for name, (encoding, read_here) in cases.items():
        xr.Dataset({"features": (("cell", "feature"), values)}).to_zarr(
            tmp_path / name, encoding={"features": encoding}, zarr_format=3, consolidated=False)
        files = ChunkFiles.open(tmp_path / name / "features", dtype=np.dtype("float32"))
        assert (files is not None) == read_here, name
    files = ChunkFiles.open(tmp_path / "blosc" / "features")
    for lo, hi in [(3, 41), (0, 50), (49, 50)]:  # the last chunk is stored whole, past the end
        np.testing.assert_array_equal(files.read(lo, hi), values[lo:hi])
        np.testing.assert_array_equal(np.concatenate([p.copy() for p in files.chunks(lo, hi)]), values[lo:hi])


@pytest.mark.parametrize("operation", ["mean", "median"])
def test_real_deepprofiler_cells(shared_data, operation):
    """Five real LINCS sites of EfficientNet features (6,400 per cell) → sites and wells."""
    folder = shared_data / "deepprofiler_single_cell_lincs" / "features"
    values, plate, well, site = [], [], [], []
    for path in sorted(folder.glob("*/*.npz")):
        data = np.load(path, allow_pickle=True)
        w, s = path.stem.split("_")
        values.append(data["features"])
        n = len(data["features"])
        plate += [path.parent.name] * n
        well += [w] * n
        site += [int(s)] * n
    cells = xr.DataArray(np.concatenate(values), dims=("cell", "feature"), coords={
        "plate": ("cell", plate), "well": ("cell", well), "site": ("cell", site),
        "feature": [f"f{j:04d}" for j in range(6400)]})
    assert cells.shape == (790, 6400)
    for strata in (("plate", "well"), ("plate", "well", "site")):
        expected, counts = _expected(cells, operation, strata)
        out = aggregate(cells.chunk({"cell": 128}), strata=strata, operation=operation)
        assert out["cell_count"].values.tolist() == counts.tolist()
        np.testing.assert_allclose(out.values, expected.to_numpy(), rtol=1e-12)


def test_coordinates_kept_only_when_constant_per_well():
    cells = _cells(nan=False)
    n = cells.sizes["cell"]
    well = cells["well"].values
    middle = np.zeros(n)
    middle[1:-1] = np.arange(1, n - 1) % 2  # equal at each well's ends only in the first/last cells
    dose = np.where(well == "W03", np.nan, 1.5)
    cells = cells.assign_coords(
        compound=("cell", np.char.add("c", well).astype(object)), dose=("cell", dose),
        x=("cell", np.random.default_rng(0).uniform(0, 9, n)), middle=("cell", middle))
    out = aggregate(cells)
    assert {"compound", "dose"} <= set(out.coords)
    assert not {"x", "site"} & set(out.coords)
    frame = pd.DataFrame({"well": well, "plate": cells["plate"].values, "middle": middle})
    assert ("middle" in out.coords) == bool((frame.groupby(["plate", "well"])["middle"].nunique() == 1).all())
    np.testing.assert_array_equal(np.isnan(out["dose"].values), out["well"].values == "W03")
