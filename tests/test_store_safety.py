"""The store never loses data and never looks finished when it is not (issue 21 items 1, 3, 7, 8)."""

import json
import os
import shutil
import socket
import subprocess
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

from cpzarr.cli import main
from cpzarr.errors import StoreError
from cpzarr.features import cnn
from cpzarr.ingest import ingest
from cpzarr.profiles import read_profiles, write_profiles
from cpzarr.store import (
    COMPLETE_ATTR,
    LAYOUT,
    format_layout,
    is_store,
    lock_holder,
    lock_path,
    node_status,
    open_node,
    open_screen,
    screen_info,
    store_lock,
    write_node,
)
from cpzarr.synthetic import make_profiles, make_screen


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    return make_screen(root / "raw", plates=1, batches=1, sites=2, image_size=40, cells_per_site=2)


@pytest.fixture(scope="module")
def pristine(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("safety_store") / "screen.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(source.load_data, path, platemap=source.platemap, progress=False, scheduler="sync")
    return path


@pytest.fixture
def store(pristine, tmp_path):
    path = tmp_path / "screen.zarr"
    shutil.copytree(pristine, path)
    return path


def _profiles():
    return make_profiles(n_plates=2, n_batches=1, n_negcon=4, n_compounds=3, n_replicates=2, n_moas=1,
                         n_features=5, n_samples=None)


def _features(n=10):
    values = np.arange(n * 4, dtype="float32").reshape(n, 4)
    return xr.DataArray(da.from_array(values, chunks=(3, 4)), dims=("cell", "feature"),
                        coords={"feature": ("feature", np.array(list("abcd"), dtype=object))},
                        name="features", attrs={"model": "toy"})


# --- 21.1: `cpzarr profiles OP INPUT TARGET` never wipes TARGET ------------------------------


def test_profiles_command_into_its_own_screen_store_keeps_the_screen(store):
    write_profiles(_profiles(), store, node="profiles/toy/aggregated")
    images = np.asarray(zarr.open_group(store, mode="r")["images"][...])
    runner = CliRunner()
    # the reported accident: the store as both input and target, no output node
    result = runner.invoke(main, ["profiles", "normalize", str(store), str(store), "--node", "profiles/toy/aggregated",
                                  "--samples", "all"])
    assert result.exit_code != 0
    assert "screen store" in result.output and "--out-node" in result.output
    assert is_store(store)
    np.testing.assert_array_equal(zarr.open_group(store, mode="r")["images"][...], images)
    # with an output node only that node is added
    result = runner.invoke(main, ["profiles", "normalize", str(store), str(store), "--node", "profiles/toy/aggregated",
                                  "--out-node", "profiles/toy/normalized", "--samples", "all"])
    assert result.exit_code == 0, result.output
    assert is_store(store)
    np.testing.assert_array_equal(zarr.open_group(store, mode="r")["images"][...], images)
    assert {"profiles/toy/aggregated", "profiles/toy/normalized"} <= set(screen_info(store)["nodes"])
    normalized = read_profiles(store, node="profiles/toy/normalized")
    assert normalized.sizes == _profiles().sizes


def test_profiles_command_refuses_a_folder_that_is_not_a_store(tmp_path):
    source = tmp_path / "in.parquet"
    write_profiles(_profiles(), source)
    victim = tmp_path / "results"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    runner = CliRunner()
    result = runner.invoke(main, ["profiles", "normalize", str(source), str(victim), "--samples", "all"])
    assert result.exit_code != 0 and "not a Zarr store" in result.output and "--overwrite" in result.output
    assert (victim / "notes.txt").read_text() == "mine"
    result = runner.invoke(main, ["profiles", "normalize", str(source), str(victim), "--samples", "all", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (victim / "notes.txt").exists()
    assert read_profiles(victim).sizes == _profiles().sizes
    # a profiles store made by cpzarr is replaced by the next write without --overwrite
    result = runner.invoke(main, ["profiles", "normalize", str(source), str(victim), "--samples", "all"])
    assert result.exit_code == 0, result.output


def test_profiles_node_is_written_beside_and_marked_complete(store):
    path = write_profiles(_profiles(), store, node="profiles/toy/aggregated")
    attrs = json.loads((path / "profiles" / "toy" / "aggregated" / "zarr.json").read_text())["attributes"]
    assert attrs[COMPLETE_ATTR] is True
    assert COMPLETE_ATTR not in read_profiles(store, node="profiles/toy/aggregated").attrs
    # a node whose marker is false (an object store's write cut short) is refused
    group = zarr.open_group(store / "profiles" / "toy" / "aggregated", mode="r+")
    group.attrs[COMPLETE_ATTR] = False
    with pytest.raises(StoreError, match="INCOMPLETE"):
        read_profiles(store, node="profiles/toy/aggregated")
    with pytest.raises(StoreError, match="INCOMPLETE"):
        open_node(store, "profiles/toy/aggregated")


# --- 21.3: one writer per store ---------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(source, tmp_path):
    target = tmp_path / "screen.zarr"
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock_path(target).write_text(json.dumps({
            "user": "alice", "pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
            "purpose": "ingest", "token": "t"}))
        with pytest.raises(StoreError, match=rf"alice \(pid {holder.pid} on {socket.gethostname()}"):
            ingest(source.load_data, target, platemap=source.platemap, progress=False, scheduler="sync")
        assert not target.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(source.load_data, target, platemap=source.platemap, progress=False, scheduler="sync")
    assert is_store(target) and not lock_path(target).exists()


def test_lock_of_another_host_is_never_broken(tmp_path):
    target = tmp_path / "screen.zarr"
    lock_path(target).write_text(json.dumps({"user": "bob", "pid": 1, "host": "elsewhere-" + socket.gethostname(),
                                             "purpose": "features", "token": "t"}))
    with pytest.raises(StoreError, match=f"delete {lock_path(target)}"):
        with store_lock(target, "locate"):
            pass
    assert lock_holder(target)["user"] == "bob"


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    target = tmp_path / "screen.zarr"
    with store_lock(target, "run"):
        record = lock_holder(target)
        assert record["pid"] == os.getpid() and record["purpose"] == "run"
        with store_lock(target, "ingest"):
            assert lock_holder(target)["token"] == record["token"]
        assert lock_path(target).exists()
    assert not lock_path(target).exists()


# --- 21.7: an unfinished unit-written node reads as incomplete ----------------------------------


def test_crashed_features_node_is_refused_by_every_reader(store, monkeypatch):
    real = cnn._write_unit

    def crash_on_unit_two(block, path, units, chunk_cells, block_info=None):
        if units[block_info[0]["chunk-location"][0]] == 2:
            raise MemoryError("simulated crash")
        return real(block, path, units, chunk_cells, block_info)

    monkeypatch.setattr(cnn, "_write_unit", crash_on_unit_two)
    with pytest.raises(MemoryError):
        cnn.write_features(store, "toy", _features(), chunk_cells=3, scheduler="sync", progress=False)
    status = node_status(store, "features/toy")
    assert (status.exists, status.complete, status.units) == (True, False, 4)
    flags = zarr.open_array(store / "features" / "toy" / "unit_complete", mode="r")[...]
    assert 2 in status.missing and status.missing == np.flatnonzero(~flags).tolist()
    with pytest.raises(StoreError, match=rf"{len(status.missing)} of 4 units not written"):
        open_node(store, "features/toy")
    with pytest.raises(StoreError, match="INCOMPLETE"):
        open_screen(store, node="features/toy")
    with pytest.warns(UserWarning, match="features/toy"):
        tree = open_screen(store)
    assert "toy" not in tree["features"].children
    with pytest.warns(UserWarning, match="INCOMPLETE"):
        partial = open_node(store, "features/toy", allow_incomplete=True)
    assert partial.sizes["cell"] == 10
    info = CliRunner().invoke(main, ["info", str(store)])
    assert info.exit_code == 0 and "features/toy: INCOMPLETE" in info.output
    # the same call again writes the missing unit only, and the node is complete
    monkeypatch.setattr(cnn, "_write_unit", real)
    cnn.write_features(store, "toy", _features(), chunk_cells=3, scheduler="sync", progress=False)
    np.testing.assert_array_equal(open_node(store, "features/toy")["features"].values, _features().values)
    assert "INCOMPLETE" not in CliRunner().invoke(main, ["info", str(store)]).output


# --- 21.8: orphan *.partial files are swept on re-run -------------------------------------------


def test_rerun_sweeps_orphan_partial_files(source, store):
    shard = next((store / "images" / "c").rglob("0"))
    orphan = shard.with_name(f"{shard.name}.0123abcd.partial")
    orphan.write_bytes(b"\0" * 4096)  # what a SIGKILL during ShardWriter.write leaves
    scratch = store.parent / f".{store.name}.cpzarr-tmp" / "deadbeef"
    scratch.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(source.load_data, store, platemap=source.platemap, progress=False, scheduler="sync")
    assert not orphan.exists() and not scratch.parent.exists()


# --- the layout is one table, owned by cpzarr.store ------------------------------------------------


def test_layout_table_is_the_documented_one():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    assert format_layout() in doc
    assert {row[0] for row in LAYOUT} == {"/", "/cells", "/features/<name>", "/profiles/<name>/<level>"}


def test_write_node_refuses_an_existing_node_and_replaces_with_overwrite(store):
    first = xr.Dataset({"x": ("cell", np.arange(3.0))})
    write_node(store, "cells", first)
    with pytest.raises(StoreError, match="overwrite=True"):
        write_node(store, "cells", first)
    write_node(store, "cells", first * 2, overwrite=True)
    np.testing.assert_array_equal(open_node(store, "cells")["x"].values, [0.0, 2.0, 4.0])


def test_a_damaged_unit_flag_counts_as_a_unit_to_redo(store):
    cnn.write_features(store, "toy", _features(), chunk_cells=3, scheduler="sync", progress=False)
    flag = store / "features" / "toy" / "unit_complete" / "c" / "1"
    flag.write_bytes(b"\x00garbage")  # e.g. a disk error in one marker chunk
    status = node_status(store, "features/toy")
    assert (status.complete, status.units, status.missing) == (False, 4, [1])
    cnn.write_features(store, "toy", _features(), chunk_cells=3, scheduler="sync", progress=False)
    assert node_status(store, "features/toy").complete
    np.testing.assert_array_equal(open_node(store, "features/toy")["features"].values, _features().values)


def _write_profiles_task(store):
    write_profiles(_profiles(), store, node="profiles/toy/worker")
    return True


def test_worker_processes_write_for_the_client_that_holds_the_lock(store):
    """cpzarr run holds the lock and runs its profile steps as tasks of worker processes."""
    from distributed import Client, LocalCluster

    with store_lock(store, "cpzarr run"):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            assert client.submit(_write_profiles_task, store).result()
        assert lock_holder(store)["purpose"] == "cpzarr run"
    np.testing.assert_array_equal(read_profiles(store, node="profiles/toy/worker").values, _profiles().values)
    assert not lock_path(store).exists()
