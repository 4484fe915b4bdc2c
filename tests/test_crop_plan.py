"""cpzarr.crops.CropPlan (the crops of any range of cells, built on demand) and
write_features(part=...) (a features node written from graphs built per range of units)."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster
from test_crops import BOX, _cells, _screen

from cpzarr.crops import CropPlan, crops
from cpzarr.features import cnn


@pytest.mark.parametrize("edge", ["skip", "pad"])
@pytest.mark.parametrize("chunks", ["site", "well"])
def test_a_range_of_whole_chunks_is_the_whole_view_there(edge, chunks):
    screen, _ = _screen()
    cells = _cells(screen)
    whole = crops(screen, box=BOX, edge=edge, chunks=chunks, cells=cells)
    plan = CropPlan(screen, box=BOX, edge=edge, chunks=chunks, cells=cells)
    assert plan.n_cells == whole.sizes["cell"]
    bounds = np.r_[0, np.cumsum(whole.data.chunks[0])]  # the whole view's chunk boundaries
    values = whole.values
    rng = np.random.default_rng(1)
    for lo, hi in [(0, 1), (0, plan.n_cells), (plan.n_cells - 1, plan.n_cells),
                   *sorted(rng.integers(0, plan.n_cells, (6, 2)).tolist())]:
        lo, hi = min(lo, hi), min(max(lo, hi) + 1, plan.n_cells)
        first, last = plan.chunk_range(lo, hi)
        # the smallest range of whole chunks around lo:hi
        assert first == bounds[bounds <= lo].max() and last == bounds[bounds >= hi].min(), (lo, hi)
        part = plan.view(first, last)
        assert part.data.chunks[0] == tuple(np.diff(bounds[(bounds >= first) & (bounds <= last)]))
        np.testing.assert_array_equal(part.values, values[first:last])
        for name in ("cell", "plate", "well", "site", "x", "y"):
            np.testing.assert_array_equal(part[name].values, whole[name].values[first:last])
        assert part.attrs == whole.attrs


def test_write_features_from_parts_equals_the_whole(tmp_path):
    import zarr

    rng = np.random.default_rng(0)
    values = rng.normal(size=(23, 5)).astype(np.float32)
    features = xr.DataArray(
        da.from_array(values, chunks=(4, -1)), dims=("cell", "feature"),
        coords={"cell": np.arange(23) + 100, "plate": ("cell", np.array(["P1"] * 23, object)),
                "feature": [f"f{i}" for i in range(5)]},
        attrs={"model": "test"},
    )
    asked = []

    def part(lo, hi):
        asked.append((lo, hi))
        return features.isel(cell=slice(lo, hi))

    template = features.copy(data=da.zeros(features.shape, dtype=np.float32, chunks=(23, -1)))
    stores = []
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for name, (data, how) in {"whole": (features, None), "parts": (template, part)}.items():
            store = tmp_path / f"{name}.zarr"
            zarr.open_group(str(store), mode="w", zarr_format=3).attrs["provenance"] = "{}"
            cnn.write_features(store, "test", data, chunk_cells=3, scheduler=client, progress=False, part=how)
            stores.append(xr.open_zarr(store, group="features/test", consolidated=False))
    whole, parts = stores
    np.testing.assert_array_equal(parts["features"].values, values)
    np.testing.assert_array_equal(whole["features"].values, values)
    assert bool(parts["unit_complete"].all()) and parts.sizes["unit"] == 8
    np.testing.assert_array_equal(parts["cell"].values, whole["cell"].values)
    # built range by range as the window took them: whole units, at most the window's 2 at once
    assert all(lo % 3 == 0 and hi - lo <= 6 and (hi % 3 == 0 or hi == 23) for lo, hi in asked), asked
    covered = np.zeros(23, bool)
    for lo, hi in asked:
        covered[lo:hi] = True
    assert covered.all() and max(hi - lo for lo, hi in asked) < 23


def test_extract_hashes_the_weights_again_only_when_the_file_changes(tmp_path, monkeypatch):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"one")
    calls = []

    def info(model, path):
        calls.append(path)
        return {"model": model, "weights": str(path), "path": str(path), "sha256": f"#{len(calls)}"}

    monkeypatch.setattr(cnn, "weights_info", info)
    monkeypatch.setattr(cnn, "_INFO", {})
    first = cnn._weights_info_once("trained", str(weights))
    assert cnn._weights_info_once("trained", str(weights)) == first and len(calls) == 1
    weights.write_bytes(b"other bytes")  # rewritten: another size
    assert cnn._weights_info_once("trained", str(weights))["sha256"] == "#2" and len(calls) == 2
    cnn._weights_info_once("efficientnet-lite0", None)  # other weights: their own entry
    assert len(calls) == 3
