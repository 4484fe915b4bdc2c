"""Inputs read from an S3-compatible server: location files and imported features.

The moto server of the ``s3`` fixture (tests/conftest.py) holds copies of real files from
``../shared/data``; what cpzarr reads from the bucket must equal what it reads from the local
copies (the local readers are checked against the raw files in test_cells.py and test_imports.py).
Each test moves a few MB at most.
"""

import json
import warnings

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from cpzarr.cells import cells_table, import_locations
from cpzarr.errors import InputError
from cpzarr.features.imports import import_cellprofiler, import_deepprofiler

LINCS = "lincs_images_SQ00015198_SQ00015230"
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def _blank_screen(plates, wells, sites, shape, present=None):
    """A screen whose images are lazy zeros: enough for importing locations."""
    images = da.zeros((len(plates), len(wells), len(sites), len(CHANNELS)) + shape, np.uint8,
                      chunks=(1, 1, 1, len(CHANNELS)) + shape)
    if present is None:
        present = np.ones((len(plates), len(wells), len(sites)), bool)
    return xr.Dataset(
        {"images": (("plate", "well", "site", "channel", "y", "x"), images),
         "present": (("plate", "well", "site"), present)},
        coords={"plate": np.array(plates, object), "well": np.array(wells, object), "site": list(sites),
                "channel": np.array(CHANNELS, object)},
    )


def _same_cells(remote, local):
    """Same node, except the source named in the attributes."""
    xr.testing.assert_identical(remote.drop_attrs(), local.drop_attrs())
    assert remote.attrs["kind"] == local.attrs["kind"]


def test_deepprofiler_locations_from_s3_equal_local(s3, s3_put, shared_data):
    root = shared_data / LINCS
    index = pd.read_csv(root / "index.csv")
    plates, wells = sorted(index.Metadata_Plate.unique()), sorted(index.Metadata_Well.unique())
    present = np.zeros((len(plates), len(wells), 9), bool)
    for row in index.itertuples():
        present[plates.index(row.Metadata_Plate), wells.index(row.Metadata_Well), row.Metadata_Site - 1] = True
    screen = _blank_screen(plates, wells, range(1, 10), (1080, 1080), present)
    url = s3_put(root / "locations", "lincs/locations")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remote = import_locations(screen, url, storage_options=s3)
        local = import_locations(screen, root / "locations")
    assert remote.attrs["kind"] == "deepprofiler" and remote.attrs["source"] == url
    assert remote.sizes["cell"] == 8555 + 2472
    from cpzarr.formats import find_format

    assert find_format(url, "locations", storage_options=s3).name == "deepprofiler_locations"
    _same_cells(remote, local)
    # the parent folder of locations/ is accepted as locally
    _same_cells(import_locations(screen, url.rsplit("/", 1)[0], storage_options=s3), local)


def test_cellprofiler_locations_from_s3_equal_local(s3, s3_put, shared_data):
    root = shared_data / "cellprofiler_single_cell_jump" / "BR00121431_Target2"
    for site in ("A01-1", "A02-1"):
        for table in ("Image.csv.gz", "Nuclei.csv.gz"):
            url = s3_put(root / site / table, f"jump/{site}/{table}")
    screen = _blank_screen(["BR00121431"], ["A01", "A02"], [1, 2], (1080, 1080))
    remote = import_locations(screen, url.rsplit("/", 2)[0], storage_options=s3)
    assert remote.attrs["kind"] == "cellprofiler"
    from cpzarr.formats import find_format, get_format

    assert find_format(url.rsplit("/", 2)[0], "locations", storage_options=s3).name == "cellprofiler_locations"
    table = get_format("cellprofiler_locations").read(url.rsplit("/", 1)[0], storage_options=s3)  # A02-1
    assert len(table) == 36 and set(table["file"]) == {url}  # rows named by the object's URL
    assert remote.cell_count.values[0].tolist() == [[89, 0], [36, 0]]
    local = import_locations(screen, root)
    _same_cells(remote, local)


def test_a_bad_location_file_on_s3_is_named_by_its_url(s3, s3_put, tmp_path):
    folder = tmp_path / "locations" / "P1"
    folder.mkdir(parents=True)
    (folder / "A01-1-Nuclei.csv").write_text("Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1,2\n")
    (folder / "A01-2-Nuclei.csv").write_text("Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1,oops\n")
    url = s3_put(tmp_path / "locations", "bad/locations")
    screen = _blank_screen(["P1"], ["A01"], [1, 2], (16, 16))
    with pytest.raises(InputError) as error:
        import_locations(screen, url, storage_options=s3)
    assert f"{url}/P1/A01-2-Nuclei.csv" in str(error.value) and "'oops'" in str(error.value)
    with pytest.raises(InputError, match="s3://cpzarr-test/bad/nothing does not exist"):
        import_locations(screen, "s3://cpzarr-test/bad/nothing", storage_options=s3)


def test_deepprofiler_features_from_s3_equal_local(s3, s3_put, shared_data):
    local = shared_data / "deepprofiler_single_cell_lincs" / "features" / "SQ00014813"
    url = s3_put(local, "dp/features/SQ00014813")
    config = s3_put(shared_data / "deepprofiler_single_cell_lincs" / "deepprofiler_config_upstream.json",
                    "dp/config.json")
    remote = import_deepprofiler(url, config=config, storage_options=s3)
    expected = import_deepprofiler(local, config=config.replace(  # the same config, read locally
        "s3://cpzarr-test/dp/config.json",
        str(shared_data / "deepprofiler_single_cell_lincs" / "deepprofiler_config_upstream.json")))
    assert remote.sizes == {"cell": 154 + 136 + 163, "feature": 6400}
    assert remote["feature"].values[0] == "DNA_0000"
    xr.testing.assert_identical(remote.drop_attrs(), expected.drop_attrs())
    assert remote.attrs["source"] == url


def test_cellprofiler_features_from_s3_equal_local(s3, s3_put, shared_data):
    local = shared_data / "cellprofiler_single_cell_jump" / "BR00116991_cpg0043"
    url = s3_put(local, "cp/BR00116991_cpg0043")
    remote = import_cellprofiler(url, storage_options=s3)
    expected = import_cellprofiler(local)
    assert remote.sizes["cell"] == 109
    xr.testing.assert_identical(remote.drop_attrs(), expected.drop_attrs())


def _store(folder, plates, wells, sites, shape=(8, 8)):
    """A real store from ingest: one-channel PNG sites of ``shape`` listed in a load_data table."""
    import imageio.v3 as iio

    from cpzarr.ingest import ingest

    rows = []
    for plate in plates:
        for well in wells:
            for site in sites:
                name = f"{plate}_{well}_{site}.png"
                iio.imwrite(folder / name, np.full(shape, 7, np.uint8))
                rows.append({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site,
                             "FileName_OrigDNA": name, "PathName_OrigDNA": str(folder)})
    store = folder / "screen.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no platemap: dose, moa, control left empty
        ingest(pd.DataFrame(rows), store, scheduler="sync", progress=False)
    return store


def test_import_and_locate_commands_read_urls(s3, s3_put, shared_data, tmp_path):
    from cpzarr.cli import main
    from cpzarr.store import open_node

    local = shared_data / "cellprofiler_single_cell_jump" / "BR00116991_cpg0043"
    url = s3_put(local, "cli/BR00116991_cpg0043")
    store = _store(tmp_path, ["BR00116991"], ["A01"], [1], shape=(1080, 1080))
    options = json.dumps(s3)
    result = CliRunner().invoke(main, ["import", str(store), "--from", url, "--kind", "cellprofiler",
                                       "--name", "cp", "--storage-options", options])
    assert result.exit_code == 0, result.output
    assert "109 cells" in result.output
    node = open_node(store, "features/cp")
    expected = import_cellprofiler(local)
    np.testing.assert_array_equal(node["features"].values, expected["features"].values)
    assert list(node["feature"].values) == list(expected["feature"].values)
    # locate --from a URL: the same cells as the import wrote into /cells
    before = cells_table(open_node(store, "cells"))
    result = CliRunner().invoke(main, ["locate", str(store), "--from", url, "--storage-options", options])
    assert result.exit_code == 0, result.output
    after = cells_table(open_node(store, "cells"))
    pd.testing.assert_frame_equal(after[["plate", "well", "site", "x", "y", "object_id"]],
                                  before[["plate", "well", "site", "x", "y", "object_id"]])
    # a URL that is not there: a one-line error naming it, no traceback
    result = CliRunner().invoke(main, ["import", str(store), "--from", url + "-missing", "--kind", "cellprofiler",
                                       "--storage-options", options])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert url + "-missing" in result.output


def test_weights_at_a_url_are_read_through_a_cached_local_copy(s3, s3_put, tmp_path, cache):
    import hashlib
    import os

    from cpzarr.features.cnn import weights_info
    from cpzarr.store import Location, local_copy

    first = tmp_path / "best.keras"
    first.write_bytes(b"first checkpoint" * 100)
    url = s3_put(first, "weights/best.keras")
    copy = local_copy(url, s3)
    assert copy.read_bytes() == first.read_bytes() and str(cache) in str(copy)
    stamp = os.stat(copy).st_mtime_ns
    assert local_copy(url, s3) == copy and os.stat(copy).st_mtime_ns == stamp  # not fetched again
    first.write_bytes(b"second checkpoint, longer" * 100)
    s3_put(first, "weights/best.keras")
    assert local_copy(url, s3).read_bytes() == first.read_bytes()  # the object changed: fetched again
    info = weights_info("trained", Location(url, s3))
    assert info["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    from cpzarr.errors import WeightsError

    with pytest.raises(WeightsError, match="s3://cpzarr-test/weights/missing.keras does not exist"):
        weights_info("trained", Location("s3://cpzarr-test/weights/missing.keras", s3))


def test_train_output_url_of_a_config_takes_the_store_options():
    from cpzarr.config import Config
    from cpzarr.store import Location
    from cpzarr.train._run import output_folder

    options = {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:9"}
    config = Config({"train": {"output": "s3://bucket/runs/train"}, "output": {"storage_options": options}},
                    source=None)
    assert output_folder(config, "/data/screen.zarr") == Location("s3://bucket/runs/train", options)
    beside = Config({"train": {}, "output": {"storage_options": options}})
    assert output_folder(beside, Location("s3://bucket/screen.zarr", options)) == Location("s3://bucket/train",
                                                                                           options)


def test_run_inputs_take_the_store_options_when_the_config_gives_none():
    from cpzarr.config import Config
    from cpzarr.stages import input_options

    store = {"endpoint_url": "http://127.0.0.1:9"}
    assert input_options(Config({"input": {"storage_options": None}, "output": {"storage_options": store}})) == store
    own = {"anon": True}
    assert input_options(Config({"input": {"storage_options": own}, "output": {"storage_options": store}})) == own
