"""Stores on an S3-compatible server: moto's standalone server, started here on localhost.

A synthetic screen's images and tables are put in a bucket, ingested from there into a store in
the bucket, and ``cpzarr run`` goes through report; everything must equal the same run on local
disk, bit for bit. A run killed mid-features on S3 is re-run and ends identical. Skipped only when
moto's server or s3fs is not installed or the server cannot start.
"""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cpzarr.errors import StoreError
from cpzarr.run import run
from cpzarr.store import Location, node_status, open_node, open_screen, zarr_target

BUCKET = "cpzarr-test"  # the bucket of the s3 fixture (tests/conftest.py)

SYNTHETIC = dict(plates=2, batches=2, sites=1, image_size=64, cells_per_site=6, moas=2, compounds_per_moa=2,
                 dmso_wells=4, seed=3)

CONFIG = """
name: s3
input:
  images: {images}
  platemap: {platemap}
  storage_options: {options}
locate: {{method: import, path: {locations}}}
crops: {{box: 24, edge: pad, scale: null}}
features: {{model: classical}}
profiles:
  aggregate: mean
  pipelines:
    raw: []
    normalized:
      - {{normalize: {{method: standardize, samples: "control == 'negcon'"}}}}
  consensus: {{operation: median, replicate_columns: [compound, dose]}}
evaluate: {{level: well, groups: moa, k: [1, 2], percentiles: [95, 90]}}
cluster: {{n_workers: 1, threads_per_worker: 2, processes: false}}
output: {{store: {store}, storage_options: {options}, report: {report}}}
"""


@pytest.fixture(scope="module")
def screen(s3, tmp_path_factory):
    """A synthetic screen on local disk, and the same images and tables in the bucket."""
    import s3fs

    from cpzarr.synthetic import make_screen

    root = tmp_path_factory.mktemp("s3screen")
    info = make_screen(root / "raw", **SYNTHETIC)
    fs = s3fs.S3FileSystem(**s3)
    fs.put(str(info.root / "images"), f"{BUCKET}/raw/images", recursive=True)
    table = pd.read_csv(info.load_data)
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        # relative to the table's folder in the bucket
        table[column] = [str(Path(p).relative_to(info.root)) for p in table[column]]
    fs.pipe_file(f"{BUCKET}/raw/load_data.csv", table.to_csv(index=False).encode())
    fs.put_file(str(info.platemap), f"{BUCKET}/raw/platemap.csv")
    fs.put(str(info.locations), f"{BUCKET}/raw/locations", recursive=True)
    return info


def _run(tmp_path, info, *, images, platemap, store, options, locations=None, **kwargs):
    text = CONFIG.format(images=images, platemap=platemap, options=options or "null", store=store,
                         locations=locations or info.locations, report=tmp_path / "report")
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(config, progress=False, echo=None, **kwargs)


@pytest.fixture(scope="module")
def local_run(screen, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local_run")
    _run(tmp, screen, images=screen.load_data, platemap=screen.platemap, store=tmp / "screen.zarr", options=None)
    return tmp


def _assert_same_store(local, remote):
    """Every array of every node equal, bit for bit (NaN where NaN), the metadata included."""
    a = zarr.open_group(zarr_target(local, read_only=True), mode="r")
    b = zarr.open_group(zarr_target(remote, read_only=True), mode="r")
    arrays_a = {name: arr for name, arr in a.arrays()}
    groups = {name for name, _ in a.groups()}
    assert {name for name, _ in b.arrays()} == set(arrays_a)
    assert {name for name, _ in b.groups()} == groups
    for name, arr in arrays_a.items():
        np.testing.assert_array_equal(np.asarray(b[name][...]), np.asarray(arr[...]), err_msg=name)
    for group in groups:
        _assert_same_store_group(a[group], b[group], group)


def _assert_same_store_group(a, b, where):
    assert {name for name, _ in a.arrays()} == {name for name, _ in b.arrays()}, where
    for name, arr in a.arrays():
        np.testing.assert_array_equal(np.asarray(b[name][...]), np.asarray(arr[...]), err_msg=f"{where}/{name}")
    for name, sub in a.groups():
        _assert_same_store_group(sub, b[name], f"{where}/{name}")


@pytest.mark.slow  # about a minute: moto answers each request in 30-70 ms on a loaded two-core machine
def test_run_on_s3_equals_the_local_run(s3, screen, local_run, tmp_path):
    store = f"s3://{BUCKET}/run/screen.zarr"
    result = _run(tmp_path, screen, images=f"s3://{BUCKET}/raw/load_data.csv",
                  platemap=f"s3://{BUCKET}/raw/platemap.csv", store=store, options=s3,
                  locations=f"s3://{BUCKET}/raw/locations")  # locate.path a URL too
    assert result.ran == ["ingest", "locate", "features", "profiles", "evaluate", "report"]
    remote = Location(store, s3)
    _assert_same_store(local_run / "screen.zarr", remote)
    local_metrics = pd.read_csv(local_run / "report" / "metrics.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "report" / "metrics.csv"), local_metrics, check_exact=True)
    assert open_screen(store, storage_options=s3)["images"].shape == open_screen(local_run / "screen.zarr")["images"].shape
    assert not remote.with_name(f".{remote.name}.cpzarr-lock").exists()


@pytest.mark.slow
def test_run_killed_mid_features_on_s3_resumes_identical(s3, screen, local_run, tmp_path, monkeypatch):
    import cpzarr.features.cnn as cnn

    store = f"s3://{BUCKET}/killed/screen.zarr"
    real = cnn._write_unit

    def killed(block, path, units, chunk_cells, block_info=None):
        raise RuntimeError("killed mid-features")  # the node's skeleton is in, no unit written

    monkeypatch.setattr(cnn, "_write_unit", killed)
    with pytest.raises(Exception, match="killed mid-features"):
        _run(tmp_path, screen, images=screen.load_data, platemap=screen.platemap, store=store, options=s3)
    remote = Location(store, s3)
    status = node_status(remote, "features/classical")
    assert status.exists and not status.complete
    with pytest.raises(StoreError, match="INCOMPLETE"):
        open_node(remote, "features/classical")
    monkeypatch.setattr(cnn, "_write_unit", real)
    result = _run(tmp_path, screen, images=screen.load_data, platemap=screen.platemap, store=store, options=s3)
    assert result.skipped[:2] == ["ingest", "locate"] and result.ran[0] == "features"
    _assert_same_store(local_run / "screen.zarr", remote)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "report" / "metrics.csv"),
                                  pd.read_csv(local_run / "report" / "metrics.csv"), check_exact=True)
    shutil.rmtree(tmp_path / "report")
