"""Stores at fsspec URLs, checked fast on fsspec's in-memory file system (``memory://``).

The object-store rules (no rename: markers written last, a lock object) are the same for
``memory://`` as for ``s3://``; ``tests/test_store_s3.py`` runs the whole pipeline on a real
S3-compatible server.
"""

import uuid
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

from cpzarr.cli import _parse_storage_options, main
from cpzarr.config import load_config
from cpzarr.errors import StoreError
from cpzarr.features import cnn
from cpzarr.ingest import ingest
from cpzarr.profiles import read_profiles, write_profiles
from cpzarr.store import (
    Location,
    as_location,
    is_store,
    lock_holder,
    node_status,
    open_node,
    open_screen,
    screen_info,
    store_lock,
    write_node,
    zarr_target,
)
from cpzarr.synthetic import make_profiles, make_screen


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_screen(tmp_path_factory.mktemp("urls") / "raw", plates=1, batches=1, sites=2, image_size=40,
                       cells_per_site=2)


@pytest.fixture(scope="module")
def local(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("urls_local") / "screen.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(source.load_data, path, platemap=source.platemap, progress=False, scheduler="sync")
    return path


@pytest.fixture
def url():
    return f"memory://cpzarr-{uuid.uuid4().hex}/screen.zarr"


def _ingest(source, url, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ingest(source.load_data, url, platemap=source.platemap, progress=False, scheduler="sync", **kwargs)


def test_ingest_into_a_url_equals_a_local_ingest(source, local, url):
    tree = _ingest(source, url)
    reference = open_screen(local)
    np.testing.assert_array_equal(tree["images"].values, reference["images"].values)
    np.testing.assert_array_equal(tree["present"].values, reference["present"].values)
    np.testing.assert_array_equal(tree["compound"].values, reference["compound"].values)
    assert is_store(url) and screen_info(url)["sites_present"] == screen_info(local)["sites_present"]
    # the same shard bytes as the local writer's
    a = zarr.open_array(zarr_target(as_location(url) / "images"), mode="r")
    assert a.info_complete()._count_chunks_initialized == zarr.open_array(local / "images").info_complete()._count_chunks_initialized
    # a second call resumes (nothing to write) and leaves no lock object behind
    _ingest(source, url)
    assert not as_location(url).with_name(".screen.zarr.cpzarr-lock").exists()


def test_url_store_nodes_are_marked_complete_last(source, url):
    _ingest(source, url)
    cells = xr.Dataset({"x": ("cell", np.arange(4.0))})
    write_node(url, "cells", cells)
    np.testing.assert_array_equal(open_node(url, "cells")["x"].values, np.arange(4.0))
    # in place on an object store: a write cut short leaves the marker false, and readers refuse it
    node = zarr.open_group(zarr_target(as_location(url)), mode="r+")["cells"]
    node.attrs["cpzarr_complete"] = False
    with pytest.raises(StoreError, match="INCOMPLETE"):
        open_node(url, "cells")
    write_node(url, "cells", cells * 3, overwrite=True)
    np.testing.assert_array_equal(open_node(url, "cells")["x"].values, 3 * np.arange(4.0))


def test_url_features_node_crashed_then_resumed(source, url, monkeypatch):
    _ingest(source, url)
    values = np.arange(40, dtype="float32").reshape(10, 4)
    feats = xr.DataArray(da.from_array(values, chunks=(3, 4)), dims=("cell", "feature"),
                         coords={"feature": np.array(list("abcd"), dtype=object)}, name="features",
                         attrs={"model": "toy"})
    real = cnn._write_unit

    def crash(block, path, units, chunk_cells, block_info=None):
        if units[block_info[0]["chunk-location"][0]] == 1:
            raise OSError("connection reset")
        return real(block, path, units, chunk_cells, block_info)

    monkeypatch.setattr(cnn, "_write_unit", crash)
    with pytest.raises(OSError):
        cnn.write_features(url, "toy", feats, chunk_cells=3, scheduler="sync", progress=False)
    assert not node_status(url, "features/toy").complete
    result = CliRunner().invoke(main, ["info", url])
    assert result.exit_code == 0 and "features/toy: INCOMPLETE" in result.output
    monkeypatch.setattr(cnn, "_write_unit", real)
    cnn.write_features(url, "toy", feats, chunk_cells=3, scheduler="sync", progress=False)
    np.testing.assert_array_equal(open_node(url, "features/toy")["features"].values, values)


def test_profiles_into_a_url_store(source, url):
    _ingest(source, url)
    profiles = make_profiles(n_plates=2, n_batches=1, n_negcon=4, n_compounds=3, n_replicates=2, n_moas=1,
                             n_features=5, n_samples=None)
    write_profiles(profiles, as_location(url), node="profiles/toy/aggregated")
    np.testing.assert_array_equal(read_profiles(as_location(url), node="profiles/toy/aggregated").values,
                                  profiles.values)
    with pytest.raises(StoreError, match="screen store"):
        write_profiles(profiles, as_location(url))
    assert is_store(url)


def test_lock_object_on_a_url_store_names_its_holder(url):
    loc = as_location(url)
    with store_lock(loc, "features"):
        record = lock_holder(loc)
        assert record == loc.with_name(".screen.zarr.cpzarr-lock").read_json()
        assert record["purpose"] == "features"
    assert not loc.with_name(".screen.zarr.cpzarr-lock").exists()
    other = dict(record, host="elsewhere", token="theirs")
    loc.with_name(".screen.zarr.cpzarr-lock").write_text(__import__("json").dumps(other))
    with pytest.raises(StoreError, match="elsewhere"):
        with store_lock(loc, "ingest"):
            pass


def test_storage_options_from_the_cli_and_config(tmp_path):
    assert _parse_storage_options(['{"endpoint_url": "http://h:9000"}', "anon=true", "key=abc"]) == {
        "endpoint_url": "http://h:9000", "anon": True, "key": "abc"}
    assert _parse_storage_options(()) is None
    config = tmp_path / "c.yaml"
    config.write_text("input: {images: s3://b/load_data.csv, storage_options: {anon: true}}\n"
                      "locate: {method: detect}\n"
                      "output: {store: s3://b/screen.zarr, storage_options: {endpoint_url: 'http://h:9000'}}\n")
    cfg = load_config(config)
    assert cfg.get("output.store") == "s3://b/screen.zarr" and cfg.get("input.images") == "s3://b/load_data.csv"
    assert cfg.get("output.storage_options") == {"endpoint_url": "http://h:9000"}
    store = as_location(cfg.get("output.store"), cfg.get("output.storage_options"))
    assert isinstance(store, Location) and store.storage_options == {"endpoint_url": "http://h:9000"}
    result = CliRunner().invoke(main, ["info", "memory://nothing-here/x.zarr"])
    assert result.exit_code != 0 and "no store" in result.output.lower()
