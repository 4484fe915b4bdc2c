"""OME-Zarr HCS in and out: store → plate → store round trips, plates written by ome-zarr-py, NGFF 0.5 MUSTs."""

import json
import re
import warnings

import numpy as np
import pytest
import zarr

from cpzarr import export_ome_zarr, ingest, open_screen
from cpzarr.errors import InputError, StoreError
from cpzarr.synthetic import make_screen

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


def _quiet_ingest(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ingest(*args, progress=False, **kwargs)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("omezarr")
    info = make_screen(root / "raw", plates=2, batches=2, sites=3, image_size=48, cells_per_site=3,
                       moas=1, compounds_per_moa=1, dmso_wells=2, labels=False,
                       missing_sites=[("P01", "A02", 2)])
    _quiet_ingest(info.load_data, root / "s.zarr", platemap=info.platemap)
    return root / "s.zarr"


def _json(path):
    return json.loads(path.read_text())


def test_round_trip_store_plate_store(store, tmp_path):
    plates = export_ome_zarr(store, tmp_path / "out.zarr")
    assert [p.name for p in plates] == ["P01.ome.zarr", "P02.ome.zarr"]
    back = _quiet_ingest(tmp_path / "out.zarr", tmp_path / "back.zarr")
    a, b = open_screen(store), back
    for name in ("plate", "well", "site", "channel"):
        assert list(a[name].values) == list(b[name].values)
    np.testing.assert_array_equal(a["present"].values, b["present"].values)
    assert not b["present"].values[0, 1, 1]  # P01/A02 site 2 was never acquired
    np.testing.assert_array_equal(a["images"].values, b["images"].values)
    for name in ("compound", "dose", "moa", "control", "batch"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_single_plate_export_is_the_plate(store, tmp_path):
    (path,) = export_ome_zarr(store, tmp_path / "p2.zarr", plate="P02")
    assert path == tmp_path / "p2.zarr"
    back = _quiet_ingest(path, tmp_path / "b.zarr")
    np.testing.assert_array_equal(back["images"].values[0], open_screen(store)["images"].values[1])
    with pytest.raises(StoreError, match="already exists"):
        export_ome_zarr(store, path, plate="P02")
    with pytest.raises(StoreError, match="no plate 'P09'"):
        export_ome_zarr(store, tmp_path / "x.zarr", plate="P09")


def test_written_plate_validates_with_ome_zarr_models(store, tmp_path):
    models = pytest.importorskip("ome_zarr_models.v05")
    (path,) = export_ome_zarr(store, tmp_path / "p.zarr", plate="P01")
    group = zarr.open_group(path, mode="r")
    hcs = models.HCS.from_zarr(group)
    wells = [w.path for w in hcs.ome_attributes.plate.wells]
    assert wells[:2] == ["A/01", "A/02"]
    well = models.Well.from_zarr(group["A/02"])
    assert [im.path for im in well.ome_attributes.well.images] == ["0", "2"]  # site 2 missing
    image = models.Image.from_zarr(group["A/01/0"])
    omero = image.ome_attributes.model_dump()["omero"]  # ome-zarr-models keeps omero unvalidated
    assert [c["label"] for c in omero["channels"]] == list(CHANNELS)
    assert image.ome_attributes.multiscales[0].datasets[0].path == "0"


def test_written_plate_meets_the_spec_musts(store, tmp_path):
    """Each MUST of NGFF 0.5 (plate, well, multiscales) checked on the written JSON."""
    (path,) = export_ome_zarr(store, tmp_path / "p.zarr", plate="P01")
    plate_doc = _json(path / "zarr.json")
    assert plate_doc["zarr_format"] == 3 and plate_doc["node_type"] == "group"
    ome = plate_doc["attributes"]["ome"]
    assert ome["version"] == "0.5"
    plate = ome["plate"]
    names = [r["name"] for r in plate["rows"]] + [c["name"] for c in plate["columns"]]
    assert all(re.fullmatch(r"[A-Za-z0-9]+", n) for n in names) and len(set(names)) == len(names)
    for well in plate["wells"]:
        row, column = well["path"].split("/")
        assert plate["rows"][well["rowIndex"]]["name"] == row
        assert plate["columns"][well["columnIndex"]]["name"] == column
        well_doc = _json(path / row / column / "zarr.json")
        images = well_doc["attributes"]["ome"]["well"]["images"]
        assert well_doc["attributes"]["ome"]["version"] == "0.5"
        assert all(re.fullmatch(r"[A-Za-z0-9]+", im["path"]) for im in images)
        assert {im["acquisition"] for im in images} <= {a["id"] for a in plate["acquisitions"]}
        assert len(images) <= plate["field_count"]
        for im in images:
            field = _json(path / row / column / im["path"] / "zarr.json")["attributes"]["ome"]
            ms = field["multiscales"][0]
            kinds = [a["type"] for a in ms["axes"]]
            assert 2 <= len(ms["axes"]) <= 5 and kinds.count("space") in (2, 3) and kinds.count("channel") <= 1
            assert kinds == sorted(kinds, key=["time", "channel", "space"].index)  # time, channel, space order
            for dataset in ms["datasets"]:
                array = _json(path / row / column / im["path"] / dataset["path"] / "zarr.json")
                assert array["node_type"] == "array"
                assert array["dimension_names"] == [a["name"] for a in ms["axes"]]
                scales = [t for t in dataset["coordinateTransformations"] if t["type"] == "scale"]
                assert len(scales) == 1 and len(scales[0]["scale"]) == len(ms["axes"])
                assert dataset["coordinateTransformations"][0]["type"] == "scale"
            assert len(field["omero"]["channels"]) == array["shape"][0]
            assert all(re.fullmatch(r"[0-9A-F]{6}", c["color"]) for c in field["omero"]["channels"])


def test_ome_zarr_py_reader_opens_the_export(store, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    (path,) = export_ome_zarr(store, tmp_path / "p.zarr", plate="P01")
    nodes = list(Reader(parse_url(str(path)))())
    assert nodes[0].metadata["channel_names"] == list(CHANNELS)
    grid = np.asarray(nodes[0].data[0])  # the reader tiles each well's first field in a row x column grid
    screen = open_screen(store)
    h, w = screen.sizes["y"], screen.sizes["x"]
    plate = _json(path / "zarr.json")["attributes"]["ome"]["plate"]
    for well in plate["wells"]:
        name = well["path"].replace("/", "")
        r, c = well["rowIndex"], well["columnIndex"]
        first = screen["present"].sel(plate="P01", well=name).values.argmax()
        np.testing.assert_array_equal(grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w],
                                      screen["images"].sel(plate="P01", well=name).values[first])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_plate_written_by_ome_zarr_py_ingests_pixel_identically(tmp_path, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    fmt, zarr_format = (FormatV04(), 2) if version == "0.4" else (FormatV05(), 3)
    rng = np.random.default_rng(1)
    rows, columns, fields = ["A", "B"], ["1", "2", "10"], ["0", "1"]
    wells = ["A/1", "A/10", "B/2"]
    root = zarr.open_group(tmp_path / "plate.zarr", mode="w", zarr_format=zarr_format)
    write_plate_metadata(root, rows, columns, wells, fmt=fmt, name="PLATE1")
    pixels = {}
    window = {"min": 0, "max": 65535, "start": 0, "end": 4000}
    for path in wells:
        row, column = path.split("/")
        well = root.require_group(row).require_group(column)
        write_well_metadata(well, [{"path": f} for f in fields], fmt=fmt)
        for f in fields:
            image = rng.integers(0, 4000, (3, 40, 56), dtype=np.uint16)
            write_image(image, well.require_group(f), axes="cyx", fmt=fmt, scale_factors=[2],
                        omero={"channels": [{"label": c, "color": "FFFFFF", "window": window}
                                            for c in ("DNA", "ER", "Mito")]})
            pixels[(f"{row}{int(column):02d}", int(f) + 1)] = image
    screen = _quiet_ingest(tmp_path / "plate.zarr", tmp_path / "s.zarr")
    assert list(screen["plate"].values) == ["PLATE1"]
    assert list(screen["channel"].values) == ["DNA", "ER", "Mito"]
    assert list(screen["well"].values) == ["A01", "A10", "B02"]
    assert screen["present"].values.all()
    for (well, site), image in pixels.items():
        got = screen["images"].sel(plate="PLATE1", well=well, site=site).values
        np.testing.assert_array_equal(got, image)
    picked = _quiet_ingest(tmp_path / "plate.zarr", tmp_path / "s2.zarr", channels=["Mito", "DNA"])
    np.testing.assert_array_equal(picked["images"].sel(well="B02", site=2).values[0],
                                  pixels[("B02", 2)][[2, 0]])


def test_bad_plates_are_named(tmp_path, store):
    (path,) = export_ome_zarr(store, tmp_path / "p.zarr", plate="P01")
    import shutil

    shutil.rmtree(path / "A" / "01" / "1")  # a field the well lists
    with pytest.raises(InputError) as err:
        _quiet_ingest(path, tmp_path / "s.zarr")
    assert any("A/01/1" in p and "does not exist" in p for p in err.value.problems)
    with pytest.raises(InputError, match="channel 'GFP' is not in the plate"):
        _quiet_ingest(path, tmp_path / "s.zarr", channels=["GFP"])


def test_cli_export_and_ingest(store, tmp_path):
    from click.testing import CliRunner

    from cpzarr.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["export", str(store), str(tmp_path / "p.zarr"), "--ome-zarr", "--plate", "P02"])
    assert result.exit_code == 0, result.output
    assert "wrote OME-Zarr HCS plate" in result.output
    result = runner.invoke(main, ["ingest", str(tmp_path / "p.zarr"), str(tmp_path / "s.zarr"), "--no-progress"])
    assert result.exit_code == 0, result.output
    back = open_screen(tmp_path / "s.zarr")
    np.testing.assert_array_equal(back["images"].values[0], open_screen(store)["images"].values[1])
    result = runner.invoke(main, ["export", str(store), str(tmp_path / "p.zarr"), "--ome-zarr", "--plate", "P02"])
    assert result.exit_code != 0 and "already exists" in result.output and "Traceback" not in result.output
