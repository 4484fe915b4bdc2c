"""The store: lazy opening, atomic node writes, provenance, info and the CLI over them."""

import json
from pathlib import Path
import shutil
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr
from click.testing import CliRunner

from cpzarr.cli import main
from cpzarr.errors import StoreError
from cpzarr.ingest import ingest
from cpzarr.store import (
    format_info,
    is_store,
    node_exists,
    open_screen,
    read_provenance,
    record_provenance,
    remove_node,
    screen_info,
    write_node,
)
from cpzarr.synthetic import make_screen


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("store_screen")
    return make_screen(root / "raw", plates=2, sites=2, image_size=40, cells_per_site=2, missing_sites=(("P02", "A03", 2),))


@pytest.fixture(scope="module")
def pristine(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "screen.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(source.load_data, path, platemap=source.platemap, progress=False, scheduler="sync")
    return path


@pytest.fixture
def store(pristine, tmp_path):
    """A private copy of the ingested store, for tests that add nodes."""
    path = tmp_path / "screen.zarr"
    shutil.copytree(pristine, path)
    return path


def test_open_screen_is_lazy_with_one_chunk_per_site(pristine, source):
    tree = open_screen(pristine)
    images = tree["images"]
    assert isinstance(tree, xr.DataTree)
    assert images.dims == ("plate", "well", "site", "channel", "y", "x")
    assert isinstance(images.data, da.Array)
    n_channels, ny, nx = images.shape[3:]
    assert images.data.chunksize == (1, 1, 1, n_channels, ny, nx)
    assert images.data.npartitions == images.shape[0] * images.shape[1] * images.shape[2]
    one_site = images.sel(plate="P01", well="A02", site=2)
    assert one_site.data.npartitions == 1
    assert isinstance(tree["present"].data, da.Array)
    for name in ("plate", "well", "channel", "compound", "control", "batch"):
        assert tree[name].dtype == object, name
    assert tree["site"].values.tolist() == [1, 2]


def test_selecting_one_site_reads_one_chunk(pristine, source, monkeypatch):
    import builtins

    from cpzarr._shards import SiteReader

    sites, opened = [], []
    original_site, original_open = SiteReader.site, builtins.open

    def counting_site(self, p, w, s, need=None):
        sites.append((p, w, s))
        return original_site(self, p, w, s, need)

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return original_open(file, *args, **kwargs)

    tree = open_screen(pristine)
    image = tree["images"].sel(plate="P02", well="A04", site=1, channel="ER")
    monkeypatch.setattr(SiteReader, "site", counting_site)
    monkeypatch.setattr(builtins, "open", counting_open)
    with dask.config.set(scheduler="sync"):
        values = image.values
    monkeypatch.undo()
    # one site of one shard read, straight from the shard file (its index, then the site's bytes)
    assert sites == [(1, 3, 0)]
    assert [Path(f).relative_to(pristine).as_posix() for f in opened] == ["images/c/1/3/0/0/0/0"]
    expected = tifffile.imread(source.root / "images" / "P02" / "P02_A04_s1_ER.tif")
    np.testing.assert_array_equal(values, expected)


def test_open_screen_errors_name_the_path(tmp_path, store):
    with pytest.raises(StoreError, match="There is no store at .*nothing.zarr"):
        open_screen(tmp_path / "nothing.zarr")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(StoreError, match="is not a cpzarr screen store"):
        open_screen(plain)
    xr.Dataset({"a": ("x", [1, 2])}).to_zarr(tmp_path / "other.zarr", zarr_format=3)
    with pytest.raises(StoreError, match="is not a cpzarr screen store"):
        open_screen(tmp_path / "other.zarr")
    with pytest.raises(StoreError, match="has no node 'cells'"):
        open_screen(store, node="cells")
    zarr.open_group(store, mode="r+").attrs["complete"] = False
    with pytest.raises(StoreError, match="did not finish.*Re-run"):
        open_screen(store)
    assert "INCOMPLETE" in format_info(screen_info(store))
    assert is_store(store) and not is_store(plain)


def _cells():
    return xr.Dataset(
        {
            "plate": ("cell", np.array(["P01", "P01", "P02"], dtype=object)),
            "well": ("cell", np.array(["A01", "A01", "A03"], dtype=object)),
            "site": ("cell", np.array([1, 2, 1], dtype=np.int64)),
            "x": ("cell", np.array([1.5, 20.25, 7.0])),
            "y": ("cell", np.array([3.0, 4.5, 30.0])),
        }
    )


def test_write_node_then_open_it(store):
    assert not node_exists(store, "cells")
    write_node(store, "cells", _cells(), provenance={"stage": "locate", "method": "import"})
    assert node_exists(store, "cells")
    node = open_screen(store, node="cells")
    np.testing.assert_array_equal(node["x"].values, [1.5, 20.25, 7.0])
    assert node["plate"].values.tolist() == ["P01", "P01", "P02"]
    assert node["plate"].dtype == object
    # in the whole tree the root's plate coordinate wins; the node's own variables stay reachable
    own = open_screen(store)["cells"].to_dataset(inherit=False)
    assert own["plate"].values.tolist() == ["P01", "P01", "P02"]
    assert own["site"].values.tolist() == [1, 2, 1]
    # nested nodes get their parent groups
    feats = xr.Dataset({"features": (("cell", "feature"), np.arange(6, dtype=np.float32).reshape(3, 2))},
                       coords={"feature": np.array(["DNA_0000", "DNA_0001"], dtype=object)})
    write_node(store, "features/cnn", feats, encoding={"features": {"chunks": (2, 2)}})
    tree = open_screen(store)
    np.testing.assert_array_equal(tree["features/cnn"]["features"].values, feats["features"].values)
    assert tree["features/cnn"]["channel"].values.tolist() == ["DNA", "ER", "RNA", "AGP", "Mito"]  # inherited
    alone = open_screen(store, node="features")
    assert alone.name == "features" and "channel" not in alone["cnn"].coords
    np.testing.assert_array_equal(alone["cnn"]["features"].values, feats["features"].values)
    assert zarr.open_array(store / "features" / "cnn" / "features", mode="r").chunks == (2, 2)
    assert screen_info(store)["nodes"] == ["cells", "features", "features/cnn"]
    record = read_provenance(store)["cells"]
    assert record["stage"] == "locate" and record["cpzarr_version"] and record["time"]
    assert read_provenance(store)["/"]["stage"] == "ingest"  # the ingest's record is kept


def test_write_node_refuses_to_clobber_and_replaces_on_request(store):
    write_node(store, "cells", _cells())
    with pytest.raises(StoreError, match="already exists.*overwrite=True"):
        write_node(store, "cells", _cells())
    smaller = _cells().isel(cell=[0])
    write_node(store, "cells", smaller, overwrite=True)
    assert open_screen(store, node="cells").sizes["cell"] == 1
    remove_node(store, "cells")
    assert not node_exists(store, "cells")
    with pytest.raises(StoreError, match="cannot be removed"):
        remove_node(store, "images")


def test_failed_node_write_leaves_no_node(store):
    def explode(block):
        raise RuntimeError("worker died")

    bad = xr.Dataset({"features": (("cell", "feature"), da.zeros((4, 2), chunks=2).map_blocks(explode, dtype=float))})
    with pytest.raises(RuntimeError, match="worker died"):
        write_node(store, "features/cnn", bad)
    assert not node_exists(store, "features/cnn")
    assert not list(store.parent.glob(".*cpzarr-tmp*"))
    open_screen(store)  # still opens cleanly


def test_screen_info_counts(pristine, source):
    info = screen_info(pristine)
    n_wells = len(source.wells)
    assert info["plates"] == ["P01", "P02"]
    assert info["sites_total"] == 2 * n_wells * 2
    assert info["sites_present"] == 2 * n_wells * 2 - 1
    assert info["raw_bytes"] == info["sites_present"] * 5 * 40 * 40 * 2
    assert info["channels"] == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert info["dtype"] == "uint16" and info["image_shape"] == (40, 40)
    files = [f for f in pristine.rglob("*") if f.is_file()]
    assert info["disk_bytes"] == sum(f.stat().st_size for f in files)
    assert info["complete"] is True
    text = format_info(info)
    assert f"{info['sites_present']} present of {info['sites_total']}" in text
    assert "DNA, ER, RNA, AGP, Mito" in text


def test_record_provenance_keeps_other_records(store):
    record_provenance(store, "profiles/cnn/well", {"stage": "aggregate", "operation": "mean"})
    record_provenance(store, "cells", {"stage": "locate"})
    records = json.loads(zarr.open_group(store, mode="r").attrs["provenance"])
    assert set(records) == {"/", "profiles/cnn/well", "cells"}
    assert records["profiles/cnn/well"]["operation"] == "mean"


def test_cli_ingest_and_info(source, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.zarr"
    result = runner.invoke(main, ["ingest", str(source.index), str(out), "--no-progress", "--channels", "DNA,Mito"])
    assert result.exit_code == 0, result.output
    assert "channels   DNA, Mito" in result.output
    result = runner.invoke(main, ["info", str(out)])
    assert result.exit_code == 0 and "plates     2: P01, P02" in result.output
    assert open_screen(out)["channel"].values.tolist() == ["DNA", "Mito"]
    result = runner.invoke(main, ["ingest", str(source.index), str(tmp_path / "x.zarr"), "--channels", "DNA,Nope"])
    assert result.exit_code == 1
    assert "channel 'Nope' is not in the table" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "is not a cpzarr screen store" in result.output


def test_backend_arrays_ship_to_other_processes(pristine, tmp_path):
    """The fast readers behind images and features pickle (as for a distributed worker) and read the same."""
    import pickle

    from cpzarr.store import row_reader, site_reader

    tree = open_screen(pristine)
    assert site_reader(tree["images"]) is not None  # the variable as opened: read by the store's reader
    assert site_reader(tree["images"].isel(site=[0])) is None
    images = pickle.loads(pickle.dumps(tree["images"].data))
    np.testing.assert_array_equal(images.compute(scheduler="sync"),
                                  zarr.open_array(pristine / "images", mode="r")[...])
    values = np.random.default_rng(0).random((7, 3)).astype("float32")
    node = xr.Dataset({"features": (("cell", "feature"), values)})
    store = tmp_path / "f.zarr"
    zarr.open_group(store, mode="w", zarr_format=3)
    write_node(store, "features/x", node, create=True,
               encoding={"features": {"chunks": (3, 3), "compressors": zarr.codecs.BloscCodec(cname="lz4")}})
    from cpzarr.store import open_node

    feats = open_node(store, "features/x")["features"]
    assert row_reader(feats) is not None
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(feats.data)).compute(scheduler="sync"), values)
    np.testing.assert_array_equal(feats[::-2, 1:].values, values[::-2, 1:])
