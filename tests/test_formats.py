"""cpzarr.formats: every reader passes the conformance suite and is found by detection alone."""

import numpy as np
import pandas as pd
import pytest

from cpzarr import formats
from cpzarr.errors import InputError
from cpzarr.testing import check_reader

TINY = dict(plates=2, batches=1, sites=2, image_size=40, cells_per_site=3, moas=1, compounds_per_moa=1,
            doses=(1.0,), dmso_wells=1)


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    from cpzarr.synthetic import make_screen

    return make_screen(tmp_path_factory.mktemp("formats") / "raw", **TINY)


@pytest.fixture(scope="module")
def cellprofiler_sites(screen, tmp_path_factory):
    """CellProfiler's Image.csv + Nuclei.csv of the synthetic screen, written from its truth table."""
    folder = tmp_path_factory.mktemp("cp")
    truth = pd.read_csv(screen.truth)
    keys = truth[["plate", "well", "site"]].drop_duplicates().reset_index(drop=True)
    keys["ImageNumber"] = np.arange(1, len(keys) + 1)
    pd.DataFrame({"ImageNumber": keys["ImageNumber"], "Metadata_Plate": keys["plate"],
                  "Metadata_Well": keys["well"], "Metadata_Site": keys["site"]}).to_csv(folder / "Image.csv", index=False)
    nuclei = truth.merge(keys, on=["plate", "well", "site"])
    nuclei["ObjectNumber"] = nuclei.groupby("ImageNumber").cumcount() + 1
    nuclei.rename(columns={"x": "Location_Center_X", "y": "Location_Center_Y"})[
        ["ImageNumber", "ObjectNumber", "Location_Center_X", "Location_Center_Y"]].to_csv(folder / "Nuclei.csv", index=False)
    return folder, truth


def _samples(screen, cellprofiler_sites, shared=None):
    samples = {
        "load_data": screen.load_data,
        "deepprofiler_index": screen.index,
        "platemap": screen.platemap,
        "deepprofiler_locations": screen.root,
        "cellprofiler_locations": cellprofiler_sites[0],
    }
    if shared is not None:
        samples["cellprofiler_objects"] = shared / "cellprofiler_single_cell_jump" / "BR00116991_cpg0043"
        samples["deepprofiler_npz"] = shared / "deepprofiler_single_cell_lincs" / "features" / "SQ00014812"
    return samples


LOCAL = ["load_data", "deepprofiler_index", "platemap", "deepprofiler_locations", "cellprofiler_locations"]
SHARED = ["cellprofiler_objects", "deepprofiler_npz"]


def test_every_registered_format_is_covered():
    assert {f.name for f in formats.formats()} >= set(LOCAL + SHARED)
    assert {f.kind for f in formats.formats()} == set(formats.KINDS)


@pytest.mark.parametrize("name", LOCAL)
def test_conformance_local(name, screen, cellprofiler_sites, tmp_path):
    sample = _samples(screen, cellprofiler_sites)[name]
    check_reader(name, sample, tmp_path)
    fmt = formats.get_format(name)
    assert formats.find_format(sample, fmt.kind) is fmt


@pytest.mark.parametrize("name", SHARED)
def test_conformance_shared_data(name, screen, cellprofiler_sites, shared_data, tmp_path):
    sample = _samples(screen, cellprofiler_sites, shared_data)[name]
    check_reader(name, sample, tmp_path)
    fmt = formats.get_format(name)
    assert formats.find_format(sample, fmt.kind) is fmt


def test_both_image_tables_give_the_same_sites(screen):
    """load_data and index.csv of one screen, read by two readers, name the same files."""
    a, meta_a, channels_a, _ = formats.get_format("load_data").read(screen.load_data)
    b, meta_b, channels_b, _ = formats.get_format("deepprofiler_index").read(screen.index)
    assert channels_a == channels_b == ["DNA", "ER", "RNA", "AGP", "Mito"]
    key = ["plate", "well", "site"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key + channels_a], b[key + channels_b])


def test_both_location_readers_give_the_truth(screen, cellprofiler_sites):
    """DeepProfiler's and CellProfiler's location files of one screen give its true centres."""
    folder, truth = cellprofiler_sites
    key = ["plate", "well", "site", "x", "y"]
    expected = truth[key].sort_values(key).reset_index(drop=True)
    for name, sample in (("deepprofiler_locations", screen.root), ("cellprofiler_locations", folder)):
        got = formats.get_format(name).read(sample)[key].sort_values(key).reset_index(drop=True)
        got["site"] = got["site"].astype(expected["site"].dtype)
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, obj=name)


def test_wrong_reader_and_unknown_inputs_are_refused(screen, tmp_path):
    with pytest.raises(InputError, match="not a load_data CSV"):
        formats.get_format("load_data").read(screen.index)
    with pytest.raises(InputError, match="read it as 'load_data'"):
        formats.get_format("deepprofiler_index").read(screen.load_data)
    junk = tmp_path / "notes.csv"
    junk.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="none of the images formats"):
        formats.find_format(junk, "images")
    with pytest.raises(InputError, match="unknown format 'tiff'"):
        formats.get_format("tiff")


def test_old_import_paths_still_work():
    from cpzarr._tables import read_image_table, read_platemap  # noqa: F401
    from cpzarr.cells import import_locations  # noqa: F401
    from cpzarr.features import import_cellprofiler, import_deepprofiler  # noqa: F401


def test_the_suite_fails_a_reader_that_breaks_the_contract(screen, tmp_path):
    """The conformance suite itself: a raw parser error, or a result lacking a column, fails it."""
    from cpzarr.formats import Format

    def detect(path):
        return path.name == "locs.csv"

    def raw(path):
        return pd.read_csv(path)  # EmptyDataError on an empty file; no plate/well/site/x/y

    sample = tmp_path / "locs.csv"
    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(sample, index=False)
    bad = Format("bad", "locations", "test", detect, raw)
    with pytest.raises(AssertionError, match="lacks"):
        check_reader(bad, sample, tmp_path)

    def complete(path):
        frame = pd.read_csv(path)
        return frame.assign(plate="P", well="A01", site=1, file=str(path), row=2)

    with pytest.raises(AssertionError, match="EmptyDataError"):
        check_reader(Format("raw", "locations", "test", detect, complete), sample, tmp_path)
