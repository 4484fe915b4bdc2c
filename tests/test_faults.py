"""Fault injection, fast cases (issue 21): bad inputs give a clear error naming what is wrong, and
never a silently wrong result. The slow cases (SIGKILL at random points, full disk) are in
scripts/fault_injection.py. Each test here failed on the code before the fix it guards."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cpzarr.errors import InputError


# --- item 12: inf in fitting samples, all-NaN MODZ, a typo in a CSV feature column ---


def _plate_profiles(n_per_plate=6, d=3, seed=0):
    rng = np.random.default_rng(seed)
    n = 2 * n_per_plate
    return xr.DataArray(
        rng.normal(size=(n, d)), dims=("sample", "feature"),
        coords={
            "plate": ("sample", ["P1"] * n_per_plate + ["P2"] * n_per_plate),
            "control": ("sample", ["negcon", "trt"] * n_per_plate),
            "compound": ("sample", (["DMSO", "a", "DMSO", "b", "DMSO", "c"] * n)[:n]),
            "feature": [f"f{j}" for j in range(d)],
        },
    )


@pytest.mark.parametrize("method, undefined", [("standardize", True), ("robustize", True), ("mad_robustize", False)])
def test_normalize_refuses_inf_in_fitting_samples(method, undefined):
    """Before: standardize returned feature f1 all-NaN on plate P1, with no word."""
    from cpzarr.profiles import normalize

    p = _plate_profiles()
    p[0, 1] = np.inf  # one of plate P1's three negcon values of feature f1
    # Mean/std and the 25-75 % interval of (inf, a, b) are not finite; the median and MAD are.
    if undefined:
        with pytest.raises(InputError, match=r"(?s)±inf.*feature f1 in P1"):
            normalize(p, method=method, samples="control == 'negcon'", by="plate")
    else:
        out = normalize(p, method=method, samples="control == 'negcon'", by="plate")
        assert np.isfinite(out.values[1:, :]).all()
    p[2, 1] = -np.inf
    p[4, 1] = np.inf
    with pytest.raises(InputError, match="feature f1 in P1"):
        normalize(p, method=method, samples="control == 'negcon'", by="plate")


def test_normalize_ignores_nan_as_before():
    from cpzarr.profiles import normalize

    p = _plate_profiles()
    p[0, 1] = np.nan
    out = normalize(p, method="standardize", samples="control == 'negcon'", by="plate")
    fit = p.values[[2, 4], 1]
    np.testing.assert_allclose(out.values[1, 1], (p.values[1, 1] - fit.mean()) / fit.std(), rtol=1e-12)


@pytest.mark.parametrize("n_per_plate", [6, 40])  # n <= d (Gram) and n > d (scatter) paths
def test_spherize_refuses_inf(n_per_plate):
    from cpzarr.profiles import spherize

    p = _plate_profiles(n_per_plate=n_per_plate, d=3 if n_per_plate > 6 else 20)
    p[2, 1] = np.inf
    with pytest.raises(InputError, match=r"(?s)NaN or ±inf.*f1"):
        spherize(p, method="ZCA", samples="control == 'negcon'")


def test_modz_keeps_an_all_nan_feature_nan():
    from cpzarr.profiles import consensus

    p = _plate_profiles()
    p[p["compound"] == "DMSO", 2] = np.nan
    p[0, 0] = np.nan  # and one missing value elsewhere, which modz skips
    modz = consensus(p, replicate_columns="compound", operation="modz")
    median = consensus(p, replicate_columns="compound", operation="median")
    dmso = modz.sel(sample=(modz["compound"] == "DMSO").values)
    assert np.isnan(dmso.values[0, 2])
    assert np.isnan(median.sel(sample=(median["compound"] == "DMSO").values).values[0, 2])
    assert np.isfinite(dmso.values[0, :2]).all()
    single = consensus(p.isel(sample=[0]), replicate_columns="compound", operation="modz")
    assert np.isnan(single.values[0, 0])  # one replicate is returned as is, NaN included


def test_csv_feature_typo_is_refused(tmp_path):
    from cpzarr.profiles import read_profiles

    frame = pd.DataFrame({
        "Metadata_Plate": ["P1"] * 4, "Metadata_Well": ["A01", "A02", "A03", "A04"],
        "Cells_a": [1.0, 2.0, 3.0, 4.0], "Cells_b": ["0.5", "0.25", "abc", "1e-3"],
        "Plate_Map_Name": ["map1"] * 4,
    })
    path = tmp_path / "typo.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"(?s)typo.csv.*'Cells_b'.*row 2 \('abc'\)"):
        read_profiles(path)
    frame.loc[2, "Cells_b"] = "0.125"
    frame.to_csv(path, index=False)
    p = read_profiles(path)
    assert list(p["feature"].values) == ["Cells_a", "Cells_b"]
    assert "Plate_Map_Name" in p.coords


# --- items 9, 10, 11, 13, 14, 15: image tables and ingest ---


import errno  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

import tifffile  # noqa: E402
import zarr  # noqa: E402

from cpzarr.errors import ResourceError, StoreError  # noqa: E402

TINY = dict(plates=1, batches=1, sites=2, image_size=40, cells_per_site=3, moas=1, compounds_per_moa=1,
            doses=(1.0,), dmso_wells=1)


@pytest.fixture
def tiny(tmp_path):
    """A fresh 1-plate, 2-well, 2-site synthetic screen (0.5 s) the test may damage."""
    from cpzarr.synthetic import make_screen

    return make_screen(tmp_path / "raw", **TINY)


def _ingest(*args, **kwargs):
    from cpzarr.ingest import ingest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ingest(*args, progress=False, scheduler="sync", **kwargs)


def _plan(table, **kwargs):
    from cpzarr.ingest import plan_ingest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plan_ingest(table, **kwargs)


def test_index_path_with_another_suffix_is_refused_not_dropped(tiny):
    """Item 10: one .jpg (or a trailing space) made the whole channel vanish, exit code 0."""
    index = pd.read_csv(tiny.index)
    index.loc[2, "ER"] = index.loc[2, "ER"].replace(".tif", ".jpg")
    index.to_csv(tiny.index, index=False)
    with pytest.raises(InputError, match=r"(?s)line 4, channel ER: '.*P01_A02_s1_ER.jpg' is not a"):
        _plan(tiny.index)
    index.loc[2, "ER"] = index.loc[2, "ER"].replace(".jpg", ".tif") + " "
    index.to_csv(tiny.index, index=False)
    plan = _plan(tiny.index)
    assert plan.channels == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert all(not p.endswith(" ") for files in plan.files.values() for _, paths in files for p in paths)


@pytest.mark.parametrize("column, value", [("Metadata_compound", "cpd01_l"), ("Metadata_batch", "B2"),
                                           ("Metadata_broad_sample", "")])
def test_metadata_differing_within_a_well_is_refused(tiny, column, value):
    """Item 11: a typo in one row replaced compound screen-wide or blanked batch on every plate."""
    index = pd.read_csv(tiny.index)
    old = index.loc[1, column]
    index.loc[1, column] = value  # line 3: P01/A01 site 2
    index.to_csv(tiny.index, index=False)
    name = column[len("Metadata_"):]
    shown = "''" if value == "" else repr(value)
    with pytest.raises(InputError, match=rf"P01/A01: {name} is {old!r}, {shown}"):
        _plan(tiny.index)


def test_other_columns_may_vary_within_a_well(tiny):
    index = pd.read_csv(tiny.index)
    index["Metadata_AcquisitionTime"] = [f"10:0{i}" for i in range(len(index))]
    index.to_csv(tiny.index, index=False)
    plan = _plan(tiny.index)
    assert "acquisitiontime" not in plan.metadata and list(plan.metadata["compound"].values[0]) == ["cpd01_1", "DMSO"]


@pytest.mark.parametrize("site, message", [(10**7, "line 5: site 10000000 would make a site axis of 10,000,000"),
                                           (-3, "line 5: site -3 is negative")])
def test_site_numbers_are_validated(tiny, site, message):
    """Item 13: a site typo (10^9) allocated a 10^9 site axis (OOM); negative sites were accepted."""
    table = pd.read_csv(tiny.load_data)
    table.loc[3, "Metadata_Site"] = site
    table.to_csv(tiny.load_data, index=False)
    with pytest.raises(InputError, match=message):
        _plan(tiny.load_data)


def test_sites_with_small_gaps_still_plan(tiny):
    table = pd.read_csv(tiny.load_data)
    table.loc[3, "Metadata_Site"] = 9  # 1, 2, 9: an axis of 9 for 3 numbers is fine
    table.to_csv(tiny.load_data, index=False)
    assert list(_plan(tiny.load_data).sites) == list(range(1, 10))


def test_rewritten_source_of_the_same_size_is_not_resumed(tiny, tmp_path):
    """Item 9: the fingerprint held sizes only; same-size new pixels kept the stale ones."""
    store = tmp_path / "s.zarr"
    _ingest(tiny.load_data, store)
    path = tiny.root / "images" / "P01" / "P01_A01_s1_DNA.tif"
    before = path.stat()
    with tifffile.TiffFile(path) as tif:  # new pixels in place: same size, same header
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
        compression = tif.pages[0].compression
    assert count == 40 * 40 * 2 and compression == 1
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.full((40, 40), 7, "<u2").tobytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert path.stat().st_size == before.st_size
    with pytest.raises(StoreError, match="size or modification time"):
        _ingest(tiny.load_data, store)
    screen = _ingest(tiny.load_data, store, overwrite=True)
    assert (screen["images"].sel(plate="P01", well="A01", site=1, channel="DNA").values == 7).all()


def _truncate_pixels(path, keep=200):
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep < len(data) else data[:-100])


def test_truncated_pixels_name_the_file_and_leave_the_store_incomplete(tiny, tmp_path):
    """Item 14: an intact header with truncated pixels crashed mid-ingest naming no file."""
    from cpzarr.ingest import image_header

    bad = tiny.root / "images" / "P01" / "P01_A02_s2_RNA.tif"
    original = bad.read_bytes()
    bad.write_bytes(original[:-1000])
    assert image_header(bad) == ((40, 40), "uint16")  # validation reads headers only
    store = tmp_path / "s.zarr"
    with pytest.raises(InputError, match=r"(?s)could not decode.*re-run.*P01_A02_s2_RNA.tif") as err:
        _ingest(tiny.load_data, store)
    assert len(err.value.problems) == 1
    group = zarr.open_group(store, mode="r")
    assert group.attrs["complete"] is False
    assert np.asarray(group["present"][...]).any(axis=2).tolist() == [[True, False]]  # A01 written, A02 not
    bad.write_bytes(original)
    screen = _ingest(tiny.load_data, store)
    assert screen.attrs["complete"] is True
    np.testing.assert_array_equal(screen["images"].sel(plate="P01", well="A02", site=2, channel="RNA").values,
                                  tifffile.imread(bad))


@pytest.mark.parametrize("error, message", [
    (OSError(errno.ENOSPC, "No space left on device"), r"ingest ran out of disk space writing .*s.zarr"),
    (MemoryError(), "ingest ran out of memory"),
])
def test_disk_full_and_memory_name_stage_and_path(tiny, tmp_path, monkeypatch, error, message):
    """Item 15: ENOSPC and MemoryError surfaced as bare OS errors 14-31 frames deep."""
    import importlib

    module = importlib.import_module("cpzarr.ingest")  # the module: cpzarr.ingest is also a function

    def full(*args):
        raise error

    monkeypatch.setattr(module, "write_unit", full)  # every well is written through the store's unit writer
    with pytest.raises(ResourceError, match=rf"(?s){message}.*re-run the same command") as err:
        _ingest(tiny.load_data, tmp_path / "s.zarr")
    assert err.value.__cause__ is error


def test_run_stage_names_itself_on_disk_full(tmp_path, monkeypatch):
    from cpzarr import stages
    from cpzarr.run import run
    config = tmp_path / "c.yaml"
    config.write_text(
        "name: t\ninput: {synthetic: {plates: 1, batches: 1, sites: 1, image_size: 64, cells_per_site: 3, "
        "moas: 1, compounds_per_moa: 1, doses: [1.0], dmso_wells: 1}}\n"
        "cluster: {n_workers: 1, threads_per_worker: 1, processes: false}\n"
        f"output: {{store: {tmp_path / 's.zarr'}, report: {tmp_path / 'report'}}}\n"
    )

    def full(ctx):
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.store / "images"))

    monkeypatch.setattr(stages, "stage_ingest", full)
    with pytest.raises(ResourceError, match=r"stage 'ingest' ran out of disk space writing .*s.zarr/images.*re-run"):
        run(config, until="ingest", progress=False, echo=None)


# --- item 15: location CSVs that are empty, binary or non-numeric ---


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x01" * 20, "not a readable CSV table|no column"),
    (b"Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1.5,2\nabc,3\n", r"(?s)column Nuclei_Location_Center_X holds non-numeric.*row 3: 'abc'"),
], ids=["empty", "binary", "non-numeric"])
def test_bad_location_files_are_named(tmp_path, content, message):
    from cpzarr.cells import _read_deepprofiler

    folder = tmp_path / "locations" / "P01"
    folder.mkdir(parents=True)
    pd.DataFrame({"Nuclei_Location_Center_X": [3.0], "Nuclei_Location_Center_Y": [4.0]}).to_csv(
        folder / "A01-1-Nuclei.csv", index=False)
    (folder / "A01-2-Nuclei.csv").write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        _read_deepprofiler(tmp_path)
    assert "A01-2-Nuclei.csv" in str(err.value)
    assert "A01-1-Nuclei.csv" not in str(err.value)
