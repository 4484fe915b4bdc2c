"""Ingest: image tables + platemap -> screen store, checked against the source files themselves."""

import hashlib
import importlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from PIL import Image

from cpzarr.errors import InputError, StoreError
from cpzarr.ingest import ingest, plan_ingest
from cpzarr.store import is_store, open_screen
from cpzarr.synthetic import make_screen

# the package exports the function ``ingest`` under the module's name
ingest_module = importlib.import_module("cpzarr.ingest")

MISSING = (("P01", "A02", 2), ("P02", "A05", 1), ("P02", "A05", 3))


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen")
    return make_screen(root / "raw", plates=2, sites=3, image_size=40, cells_per_site=3, missing_sites=MISSING)


@pytest.fixture(scope="module")
def ingested(screen, tmp_path_factory):
    """The screen ingested once from its load_data CSV, with the platemap."""
    path = tmp_path_factory.mktemp("stores") / "screen.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(screen.load_data, path, platemap=screen.platemap, progress=False, scheduler="sync")
    return path


def _file_digest(paths):
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _load_data_files(screen):
    table = pd.read_csv(screen.load_data)
    rows = []
    for row in table.itertuples(index=False):
        for ch in screen.channels:
            path = Path(getattr(row, f"PathName_Orig{ch}")) / getattr(row, f"FileName_Orig{ch}")
            rows.append((row.Metadata_Plate, row.Metadata_Well, int(row.Metadata_Site), ch, str(path)))
    return rows


def _store_arrays(path):
    group = zarr.open_group(path, mode="r")
    return {name: np.asarray(arr[...]) for name, arr in group.arrays()}


def test_round_trip_is_pixel_exact_and_present_marks_exactly_the_missing_sites(screen, ingested):
    tree = open_screen(ingested)
    images = tree["images"]
    assert images.dtype == np.uint16
    assert list(tree["channel"].values) == ["DNA", "ER", "RNA", "AGP", "Mito"]
    files = _load_data_files(screen)
    loaded = images.load()
    for plate, well, site, ch, path in files:
        expected = tifffile.imread(path)
        got = loaded.sel(plate=plate, well=well, site=site, channel=ch).values
        np.testing.assert_array_equal(got, expected)
    acquired = {(p, w, s) for p, w, s, _, _ in files}
    present = tree["present"].values
    for i, plate in enumerate(tree["plate"].values):
        for j, well in enumerate(tree["well"].values):
            for k, site in enumerate(tree["site"].values):
                assert present[i, j, k] == ((plate, well, int(site)) in acquired)
    missing = [(p, w, s) for p, w, s in MISSING]
    assert not any(present[list(tree["plate"].values).index(p), list(tree["well"].values).index(w), s - 1] for p, w, s in missing)
    for p, w, s in missing:
        assert not loaded.sel(plate=p, well=w, site=s).values.any()
    assert present.sum() == len(acquired) == 2 * len(screen.wells) * 3 - len(MISSING)


def test_store_layout_follows_the_contract(ingested):
    group = zarr.open_group(ingested, mode="r")
    images = group["images"]
    n_sites, n_channels, ny, nx = images.shape[2:]
    assert images.chunks == (1, 1, 1, n_channels, ny, nx)
    assert images.shards == (1, 1, n_sites, n_channels, ny, nx)
    (codec,) = images.compressors
    assert codec.cname.value == "zstd" and codec.shuffle.value == "shuffle"  # uint16: byte shuffle
    assert group["present"].chunks == (1, 1, n_sites)
    # one shard object per acquired well, not one file per site
    shard_files = [f for f in (ingested / "images" / "c").rglob("*") if f.is_file()]
    assert len(shard_files) == int(np.asarray(group["present"][...]).any(axis=2).sum())
    attrs = dict(group.attrs)
    assert attrs["complete"] is True
    assert attrs["source"].endswith("load_data.csv")
    record = json.loads(attrs["provenance"])["/"]
    assert record["stage"] == "ingest" and record["platemap"].endswith("platemap.csv")
    assert record["channels"] == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert attrs["cpzarr_version"] and attrs["created"]


def test_metadata_joined_from_the_platemap(screen, ingested):
    tree = open_screen(ingested)
    platemap = pd.read_csv(screen.platemap)
    for row in platemap.itertuples(index=False):
        at = dict(plate=row.plate, well=row.well)
        assert tree["compound"].sel(**at).item() == row.compound
        assert tree["moa"].sel(**at).item() == ("" if pd.isna(row.moa) else row.moa)
        assert tree["control"].sel(**at).item() == row.control
        assert tree["dose"].sel(**at).item() == pytest.approx(row.dose)
        assert tree["broad_sample"].sel(**at).item() == row.broad_sample
        assert tree["batch"].sel(plate=row.plate).item() == row.batch
    assert tree["compound"].dtype == object and tree["batch"].dtype == object
    assert set(tree["control"].values.ravel()) == {"negcon", "trt"}


def test_index_csv_gives_the_same_store_as_load_data(screen, ingested, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ingest(screen.index, tmp_path / "from_index.zarr", progress=False)
    reference = open_screen(ingested)
    np.testing.assert_array_equal(tree["images"].values, reference["images"].values)
    np.testing.assert_array_equal(tree["present"].values, reference["present"].values)
    # without a platemap the well metadata comes from the index's Metadata_* columns
    for name in ("compound", "moa", "control", "batch"):
        np.testing.assert_array_equal(tree[name].values, reference[name].values)
    np.testing.assert_allclose(tree["dose"].values, reference["dose"].values)


def test_well_only_platemap_with_lincs_column_names(screen, tmp_path):
    # one layout for every plate, with the names LINCS platemaps and index files use
    platemap = pd.DataFrame({
        "well_position": ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A09", "A10"],
        "broad_sample": ["BRD-1", "BRD-2", "", "", "BRD-5", "BRD-6", "DMSO", "DMSO", "DMSO", "DMSO"],
        "pert_iname": ["alpha", "beta", "gamma", "delta", "", "", "", "", "", ""],
        "mmoles_per_liter": [10.0, 3.3, 1.1, 0.4, 10.0, 10.0, np.nan, np.nan, np.nan, np.nan],
        "Metadata_Extra_Note": list("abcdefghij"),
    })
    with pytest.warns(UserWarning, match="compound taken from pert_iname, or broad_sample"):
        tree = ingest(screen.load_data, tmp_path / "s.zarr", platemap=platemap, progress=False, scheduler="sync")
    compound = tree["compound"].sel(plate="P02").values.tolist()
    assert compound == ["alpha", "beta", "gamma", "delta", "BRD-5", "BRD-6", "DMSO", "DMSO", "DMSO", "DMSO"]
    assert tree["control"].sel(plate="P01").values.tolist() == ["trt"] * 6 + ["negcon"] * 4
    np.testing.assert_allclose(tree["dose"].sel(plate="P01").values[:4], [10.0, 3.3, 1.1, 0.4])
    assert tree["extra_note"].sel(plate="P02", well="A03").item() == "c"
    assert set(tree["moa"].values.ravel()) == {""}  # no moa anywhere: filled, with a warning
    assert tree["batch"].values.tolist() == ["", ""]


def test_png_images_and_well_names_are_normalised(tmp_path):
    rng = np.random.default_rng(0)
    rows, expected = [], {}
    for well in ("a1", "B2"):
        for site in (1, 2):
            row = {"Metadata_Plate": "PL", "Metadata_Well": well, "Metadata_Site": site}
            for ch in ("DNA", "RNA"):
                image = rng.integers(0, 65535, size=(12, 10), dtype=np.uint16)
                name = f"{well}_{site}_{ch}.png"
                Image.fromarray(image).save(tmp_path / name)
                row[ch] = name
                expected[(well.upper().replace("1", "01").replace("2", "02"), site, ch)] = image
            rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    with pytest.warns(UserWarning):
        tree = ingest(tmp_path / "index.csv", tmp_path / "s.zarr", progress=False)
    assert tree["well"].values.tolist() == ["A01", "B02"]
    assert tree["channel"].values.tolist() == ["DNA", "RNA"]
    for (well, site, ch), image in expected.items():
        np.testing.assert_array_equal(tree["images"].sel(plate="PL", well=well, site=site, channel=ch).values, image)


def test_source_images_are_not_modified(screen, tmp_path):
    paths = [p for *_, p in _load_data_files(screen)]
    before = _file_digest(paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(screen.load_data, tmp_path / "s.zarr", platemap=screen.platemap, progress=False)
    assert _file_digest(paths) == before


def test_distributed_client_gives_the_same_store(screen, ingested, tmp_path):
    from distributed import Client, get_task_stream

    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        with warnings.catch_warnings(), get_task_stream(client) as stream:
            warnings.simplefilter("ignore")
            ingest(screen.load_data, tmp_path / "s.zarr", platemap=screen.platemap, scheduler=client, progress=False)
    keys = sorted(task["key"] for task in stream.data if task["key"].startswith("ingest"))
    assert keys == sorted(f"ingest-well-P0{p}-{w}" for p in (1, 2) for w in screen.wells)
    got, ref = _store_arrays(tmp_path / "s.zarr"), _store_arrays(ingested)
    np.testing.assert_array_equal(got["images"], ref["images"])
    np.testing.assert_array_equal(got["present"], ref["present"])


def _chunk_files(path):
    files = [f for name in ("images", "present") for f in (path / name / "c").rglob("*") if f.is_file()]
    return {f.relative_to(path): f.read_bytes() for f in files}


def test_well_writes_are_byte_identical_to_zarrs_own(ingested, tmp_path):
    # ingest writes whole shards itself (cpzarr._shards); zarr writing the same arrays into the
    # same metadata must give the same objects, byte for byte (empty sites left out of a shard)
    path = tmp_path / "by_zarr.zarr"
    shutil.copytree(ingested, path)
    arrays = _store_arrays(ingested)
    for name in ("images", "present"):
        shutil.rmtree(path / name / "c")
        zarr.open_array(path / name, mode="r+")[...] = arrays[name]
    by_zarr, by_ingest = _chunk_files(path), _chunk_files(ingested)
    assert by_zarr.keys() == by_ingest.keys() and len(by_zarr) > 0
    for key in by_zarr:
        assert by_ingest[key] == by_zarr[key], key


def test_arrays_of_other_layouts_are_written_through_zarr(tmp_path):
    from zarr.codecs import GzipCodec

    from cpzarr._shards import ShardWriter

    array = zarr.create_array(tmp_path / "a", shape=(2, 3, 4), chunks=(1, 3, 4), dtype="uint16",
                              compressors=GzipCodec(), fill_value=0)
    assert ShardWriter.open(tmp_path / "a") is None
    block = np.arange(12, dtype=np.uint16).reshape(1, 3, 4)
    ingest_module._write_block(tmp_path / "a", (1, 0, 0), block)
    np.testing.assert_array_equal(array[...], np.concatenate([np.zeros_like(block), block]))


# --- resume -------------------------------------------------------------------------------


class Killed(Exception):
    pass


def _kill_after(monkeypatch, k):
    """Make the k+1-th well task die, as a killed worker would, after k wells are written."""
    real = ingest_module.write_well
    calls = {"n": 0}

    def dying(*args):
        if calls["n"] >= k:
            raise Killed("simulated kill")
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(ingest_module, "write_well", dying)
    return calls


def test_killed_ingest_leaves_an_incomplete_store_and_rerun_gives_the_same_store(screen, ingested, tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    _kill_after(monkeypatch, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Killed):
            ingest(screen.load_data, path, platemap=screen.platemap, progress=False, scheduler="sync")
    assert zarr.open_group(path, mode="r").attrs["complete"] is False
    with pytest.raises(StoreError, match="did not finish"):
        open_screen(path)
    with pytest.warns(UserWarning, match="did not finish"):
        partial = open_screen(path, allow_incomplete=True)
    assert int(partial["present"].values.any(axis=2).sum()) == 7

    # a well whose images were written but whose marker was not: the kill hit between the two
    group = zarr.open_group(path, mode="r+")
    written = np.argwhere(np.asarray(group["present"][...]).any(axis=2))
    p, w = written[0]
    group["present"][p, w] = np.zeros(group["present"].shape[2], dtype=bool)

    monkeypatch.undo()
    calls = _kill_after(monkeypatch, 10**6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(screen.load_data, path, platemap=screen.platemap, progress=False, scheduler="sync")
    n_wells = int(np.asarray(zarr.open_group(ingested, mode="r")["present"][...]).any(axis=2).sum())
    assert calls["n"] == n_wells - 6  # the 6 complete wells were skipped
    got, ref = _store_arrays(path), _store_arrays(ingested)
    assert got.keys() == ref.keys()
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    # byte-identical shards: the interrupted-then-resumed store is the uninterrupted one
    for shard in (ingested / "images" / "c").rglob("*"):
        if shard.is_file():
            assert (path / shard.relative_to(ingested)).read_bytes() == shard.read_bytes()
    assert open_screen(path).attrs["complete"] is True


def test_rerun_of_a_complete_ingest_writes_nothing(screen, ingested, monkeypatch):
    calls = _kill_after(monkeypatch, 10**6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(screen.load_data, ingested, platemap=screen.platemap, progress=False, scheduler="sync")
    assert calls["n"] == 0


def test_damaged_marker_is_rewritten(screen, ingested, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(ingested, path)
    marker = sorted(f for f in (path / "present" / "c").rglob("*") if f.is_file())[0]
    marker.write_bytes(b"garbage")
    zarr.open_group(path, mode="r+").attrs["complete"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(screen.load_data, path, platemap=screen.platemap, progress=False, scheduler="sync")
    np.testing.assert_array_equal(_store_arrays(path)["present"], _store_arrays(ingested)["present"])


def test_existing_store_from_other_inputs_needs_overwrite(screen, ingested, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(ingested, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StoreError, match="other inputs.*overwrite"):
            ingest(screen.load_data, path, channels=["DNA"], progress=False)
        tree = ingest(screen.load_data, path, channels=["DNA"], overwrite=True, progress=False)
    assert tree["channel"].values.tolist() == ["DNA"]
    np.testing.assert_array_equal(
        tree["images"].sel(channel="DNA").values, open_screen(ingested)["images"].sel(channel="DNA").values
    )
    folder = tmp_path / "not_a_store"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StoreError, match="refusing to delete"):
            ingest(screen.load_data, folder, overwrite=True, progress=False)
    assert (folder / "notes.txt").read_text() == "mine"


# --- bad input ------------------------------------------------------------------------------


def _bad_table(screen, tmp_path):
    """A load_data CSV with one of each problem; returns the table path and the platemap."""
    table = pd.read_csv(screen.load_data)
    images = tmp_path / "images"
    images.mkdir()

    def repoint(i, ch, name, writer):
        writer(images / name)
        table.loc[i, f"PathName_Orig{ch}"] = str(images)
        table.loc[i, f"FileName_Orig{ch}"] = name

    table.loc[0, "FileName_OrigER"] = "gone.tif"  # line 2: missing
    repoint(1, "RNA", "junk.tif", lambda p: p.write_bytes(b"not a tiff"))  # line 3: unreadable
    repoint(2, "AGP", "big.tif", lambda p: tifffile.imwrite(p, np.zeros((41, 40), np.uint16)))  # line 4: shape
    repoint(3, "Mito", "u8.tif", lambda p: tifffile.imwrite(p, np.zeros((40, 40), np.uint8)))  # line 5: dtype
    table = pd.concat([table, table.iloc[[5]]], ignore_index=True)  # duplicate of line 7
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    platemap = pd.read_csv(screen.platemap)
    platemap = platemap[~((platemap.plate == "P02") & (platemap.well == "A03"))]
    return path, platemap, table


def test_every_bad_input_is_reported_at_once_and_nothing_is_written(screen, tmp_path):
    path, platemap, table = _bad_table(screen, tmp_path)
    store = tmp_path / "s.zarr"
    with pytest.raises(InputError) as err:
        ingest(path, store, platemap=platemap, channels=["DNA", "ER", "RNA", "AGP", "Mito", "Brightfield"], progress=False)
    problems = err.value.problems
    text = "\n".join(problems)
    dup = table.iloc[5]
    expected = [
        "channel 'Brightfield' is not in the table",
        "line 2, channel ER: " + str(Path(table.loc[0, "PathName_OrigER"]) / "gone.tif") + " does not exist",
        "line 3, channel RNA: " + str(tmp_path / "images" / "junk.tif") + " cannot be read as an image",
        "line 4, channel AGP: " + str(tmp_path / "images" / "big.tif") + " is 41 x 40 uint16, the other images are 40 x 40 uint16",
        "line 5, channel Mito: " + str(tmp_path / "images" / "u8.tif") + " is 40 x 40 uint8, the other images are 40 x 40 uint16",
        f"{dup.Metadata_Plate}/{dup.Metadata_Well} site {dup.Metadata_Site} appears on several lines: 7, {len(table) + 1}",
        "P02/A03 is imaged but not in the platemap",
    ]
    for piece in expected:
        assert piece in text, f"{piece!r} not reported in:\n{text}"
    assert len(problems) == len(expected)
    assert str(path) in str(err.value)
    assert not store.exists() and not is_store(store)
    assert not list(tmp_path.glob(".*cpzarr-tmp*"))


@pytest.mark.parametrize("case", ["missing", "unreadable", "shape", "dtype", "stack", "duplicate", "platemap", "channel"])
def test_each_bad_input_alone_gives_its_error(screen, tmp_path, case):
    table = pd.read_csv(screen.load_data)
    platemap = pd.read_csv(screen.platemap)
    channels = None
    if case == "missing":
        table.loc[4, "FileName_OrigDNA"] = "nowhere.tif"
        match = "line 6, channel DNA: .*nowhere.tif does not exist"
    elif case in ("unreadable", "shape", "dtype", "stack"):
        name = tmp_path / f"{case}.tif"
        if case == "unreadable":
            name.write_bytes(b"\x00" * 100)
        elif case == "stack":  # three 40 x 40 pages: a stack, not one image
            tifffile.imwrite(name, np.zeros((3, 40, 40), np.uint16))
        else:
            tifffile.imwrite(name, np.zeros((40, 39) if case == "shape" else (40, 40), np.uint16 if case == "shape" else np.float32))
        table.loc[4, "PathName_OrigDNA"], table.loc[4, "FileName_OrigDNA"] = str(tmp_path), name.name
        match = {"unreadable": "cannot be read as an image", "shape": "is 40 x 39 uint16", "dtype": "is 40 x 40 float32",
                 "stack": "is 3 x 40 x 40 uint16"}[case]
    elif case == "duplicate":
        table.loc[1, "Metadata_Site"] = table.loc[0, "Metadata_Site"]
        match = "site 1 appears on several lines: 2, 3"
    elif case == "platemap":
        platemap = platemap[platemap.well != "A04"]
        match = "P01/A04 is imaged but not in the platemap(.|\n)*P02/A04 is imaged"
    else:
        channels = ["DNA", "dna"]
        match = "channel 'dna' is not in the table, which has DNA, ER, RNA, AGP, Mito"
    table.to_csv(tmp_path / "t.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=match) as err:
            ingest(tmp_path / "t.csv", tmp_path / "s.zarr", platemap=platemap, channels=channels, progress=False)
    assert len(err.value.problems) == (2 if case == "platemap" else 1)
    assert not (tmp_path / "s.zarr").exists()


def test_tables_without_site_columns_or_images_are_refused(tmp_path):
    pd.DataFrame({"Metadata_Plate": ["P"], "Metadata_Well": ["A01"], "DNA": ["x.tif"]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InputError, match="lacks the column.*Metadata_Site"):
        plan_ingest(tmp_path / "a.csv")
    pd.DataFrame({"Metadata_Plate": ["P"], "Metadata_Well": ["A01"], "Metadata_Site": [1], "Note": ["x"]}).to_csv(
        tmp_path / "b.csv", index=False
    )
    with pytest.raises(InputError, match="neither FileName_Orig"):
        plan_ingest(tmp_path / "b.csv")
    with pytest.raises(InputError, match="does not exist"):
        plan_ingest(tmp_path / "absent.csv")


# --- real data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lincs(shared_data, tmp_path_factory):
    folder = shared_data / "lincs_images_SQ00015198_SQ00015230"
    path = tmp_path_factory.mktemp("lincs") / "lincs.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ingest(folder / "index.csv", path, progress=False, n_workers=2)
    return folder, tree


def test_lincs_images_ingest_pixel_exact(lincs):
    folder, tree = lincs
    index = pd.read_csv(folder / "index.csv")
    images = tree["images"]
    assert images.dtype == np.uint8 and images.shape[-2:] == (1080, 1080)
    for i in (0, 17, 35, 40, 51):  # sampled sites of both plates
        row = index.iloc[i]
        for ch in ("DNA", "ER", "RNA", "AGP", "Mito"):
            expected = np.asarray(Image.open(folder / row[ch]))
            got = images.sel(plate=row.Metadata_Plate, well=row.Metadata_Well, site=row.Metadata_Site, channel=ch).values
            np.testing.assert_array_equal(got, expected)


def test_lincs_present_and_controls(lincs):
    _, tree = lincs
    assert tree["plate"].values.tolist() == ["SQ00015198", "SQ00015230"]
    assert tree["well"].values.tolist() == ["A01", "A13", "J18", "P13"]
    assert tree["site"].values.tolist() == list(range(1, 10))
    present = tree["present"]
    assert present.sel(plate="SQ00015198").values.all()
    assert present.sel(plate="SQ00015230", site=[1, 2, 3, 4]).values.all()
    assert not present.sel(plate="SQ00015230", site=[5, 6, 7, 8, 9]).values.any()
    control = tree["control"]
    for plate in tree["plate"].values:
        assert control.sel(plate=plate, well="A01").item() == "negcon"
        assert control.sel(plate=plate, well="J18").item() == "negcon"
        assert control.sel(plate=plate, well="A13").item() == "trt"
    assert tree["compound"].sel(plate="SQ00015230", well="P13").item() == "lonafarnib"
    assert tree["compound"].sel(plate="SQ00015198", well="A13").item() == "orantinib"
    assert tree["dose"].sel(plate="SQ00015198", well="A13").item() == pytest.approx(10.0, rel=1e-3)
    assert tree["batch"].values.tolist() == ["1", "3"]


def test_validation_reads_files_in_batches_with_the_same_findings(screen, tmp_path, monkeypatch):
    """The headers are read a batch at a time (the client holds no future per file of the
    screen); any batch size finds the same problems, and the sizes and times kept for the resume
    fingerprint are each file's own."""
    path, platemap, _ = _bad_table(screen, tmp_path)
    found = {}
    for batch in (2, 3, 100_000):
        monkeypatch.setattr(ingest_module._read_headers, "__kwdefaults__", {"batch": batch})
        with pytest.raises(InputError) as err:
            plan_ingest(path, platemap=platemap)
        found[batch] = err.value.problems
    assert found[2] == found[3] == found[100_000]
    assert len(found[2]) == 6

    monkeypatch.setattr(ingest_module._read_headers, "__kwdefaults__", {"batch": 5})
    plan = plan_ingest(screen.load_data, platemap=screen.platemap)
    listed = sorted({p for *_, p in _load_data_files(screen)})
    expected = [(p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in listed]
    assert list(plan.signatures) == expected and len(plan.signatures) == len(expected)
    # the fingerprint hashes the JSON of that list, written file by file
    assert ingest_module._fingerprint(plan, plan.signatures) == ingest_module._fingerprint(plan, expected)
    assert plan.fingerprint == ingest_module._fingerprint(plan, expected)
