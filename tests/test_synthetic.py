"""Tests of cpzarr.synthetic.make_screen: files, tables, determinism and the biology it encodes."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from cpzarr.errors import InputError
from cpzarr.synthetic import make_screen

CAMERA_OFFSET = 100.0
SMALL = dict(
    plates=2,
    batches=2,
    sites=2,
    image_size=96,
    cells_per_site=8,
    moas=2,
    compounds_per_moa=1,
    dmso_wells=1,
)


def read_csv(path):
    return pd.read_csv(path, keep_default_na=False, na_values=[])


def digest(root):
    """sha256 of every file under root, keyed by relative path."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    return make_screen(
        tmp_path_factory.mktemp("screen") / "s",
        **SMALL,
        missing_sites=[("P02", "A02", 2), ("P01", "A01", 1)],
        seed=3,
    )


@pytest.fixture(scope="module")
def moa_screen(tmp_path_factory):
    """Three MOAs of three compounds, four plates in two batches, enough cells to measure."""
    return make_screen(
        tmp_path_factory.mktemp("moa") / "s",
        plates=4,
        batches=2,
        sites=2,
        image_size=160,
        cells_per_site=30,
        moas=3,
        compounds_per_moa=3,
        dmso_wells=6,
        seed=11,
    )


def site_images(info, row):
    """The (channel, y, x) stack of one load_data row."""
    return np.stack(
        [
            tifffile.imread(Path(row[f"PathName_Orig{c}"]) / row[f"FileName_Orig{c}"])
            for c in info.channels
        ]
    )


def test_same_seed_gives_identical_files(tmp_path):
    first = make_screen(tmp_path / "a", **SMALL, seed=5)
    hashes = digest(first.root)
    again = make_screen(tmp_path / "a", **SMALL, seed=5, overwrite=True)
    assert digest(again.root) == hashes
    # A different folder differs only in load_data.csv's absolute PathName columns.
    other = make_screen(tmp_path / "b", **SMALL, seed=5)
    other_hashes = digest(other.root)
    assert set(other_hashes) == set(hashes)
    assert {k for k in hashes if hashes[k] != other_hashes[k]} == {"load_data.csv"}
    # A site left out changes no other file but the tables.
    holed = make_screen(tmp_path / "d", **SMALL, seed=5, missing_sites=[("P01", "A02", 1)])
    holed = digest(holed.root)
    assert {k for k in holed if holed[k] != hashes[k]} <= {
        "load_data.csv", "index.csv", "truth.csv"
    }
    assert set(hashes) - set(holed) == {
        *(f"images/P01/P01_A02_s1_{c}.tif" for c in ("DNA", "ER", "RNA", "AGP", "Mito")),
        "labels/P01/A02-1.tif",
        "locations/P01/A02-1-Nuclei.csv",
    }
    different = make_screen(tmp_path / "c", **SMALL, seed=6)
    assert digest(different.root)["images/P01/P01_A01_s1_DNA.tif"] != hashes[
        "images/P01/P01_A01_s1_DNA.tif"
    ]


def test_tables_and_files_agree(screen):
    load = read_csv(screen.load_data)
    index = read_csv(screen.index)
    truth = read_csv(screen.truth)
    platemap = read_csv(screen.platemap)
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]

    expected = {
        (p, w, s)
        for p in screen.plates
        for w in screen.wells
        for s in screen.sites
        if (p, w, s) not in {("P02", "A02", 2), ("P01", "A01", 1)}
    }
    assert set(map(tuple, load[keys].itertuples(index=False))) == expected
    assert len(load) == len(expected)
    assert list(map(tuple, index[keys].itertuples(index=False))) == list(
        map(tuple, load[keys].itertuples(index=False))
    )

    referenced = set()
    for (_, row), (_, irow) in zip(load.iterrows(), index.iterrows()):
        for c in screen.channels:
            file = Path(row[f"PathName_Orig{c}"]) / row[f"FileName_Orig{c}"]
            assert Path(row[f"PathName_Orig{c}"]).is_absolute()
            assert file.is_file()
            assert (screen.root / irow[c]).resolve() == file.resolve()
            referenced.add(file.resolve())
    on_disk = {p.resolve() for p in (screen.root / "images").rglob("*.tif")}
    assert on_disk == referenced
    assert not list((screen.root / "images").rglob("P01_A01_s1_*"))
    assert not (screen.locations / "P02" / "A02-2-Nuclei.csv").exists()
    assert not (screen.labels / "P01" / "A01-1.tif").exists()

    # index.csv carries each well's platemap metadata.
    merged = index.merge(
        platemap, left_on=["Metadata_Plate", "Metadata_Well"], right_on=["plate", "well"]
    )
    assert len(merged) == len(index)
    for name in ("compound", "dose", "moa", "control", "batch"):
        assert (merged[f"Metadata_{name}"] == merged[name]).all()

    # One location CSV per site, rows equal to the truth, in truth order.
    counts = truth.groupby(["plate", "well", "site"]).size()
    assert set(counts.index) <= expected
    for (_, irow), key in zip(index.iterrows(), map(tuple, index[keys].itertuples(index=False))):
        locations = read_csv(screen.root / irow["Nuclei_Locations"])
        assert list(locations.columns) == ["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]
        cells = truth[
            (truth["plate"] == key[0]) & (truth["well"] == key[1]) & (truth["site"] == key[2])
        ]
        np.testing.assert_allclose(locations["Nuclei_Location_Center_X"], cells["x"])
        np.testing.assert_allclose(locations["Nuclei_Location_Center_Y"], cells["y"])


def test_platemap_layout(screen):
    platemap = read_csv(screen.platemap)
    assert list(platemap.columns[:7]) == [
        "plate", "well", "compound", "dose", "moa", "control", "batch"
    ]
    assert len(platemap) == len(screen.plates) * len(screen.wells)
    # One layout shared by every plate: replicates at the same well position.
    layouts = [
        g.drop(columns=["plate", "batch"]).reset_index(drop=True)
        for _, g in platemap.groupby("plate")
    ]
    for layout in layouts[1:]:
        pd.testing.assert_frame_equal(layout, layouts[0])
    dmso = platemap[platemap["compound"] == "DMSO"]
    assert (dmso["control"] == "negcon").all() and (dmso["moa"] == "").all()
    assert (platemap.loc[platemap["compound"] != "DMSO", "control"] == "trt").all()
    assert dict(zip(platemap["plate"], platemap["batch"])) == {"P01": "B1", "P02": "B2"}
    pd.testing.assert_frame_equal(platemap, screen.annotation.reset_index(drop=True))


@pytest.mark.parametrize("dtype", ["uint16", "uint8"])
def test_image_dtype_and_shape(tmp_path, dtype):
    info = make_screen(tmp_path / "s", **{**SMALL, "image_size": (80, 112)}, dtype=dtype)
    row = read_csv(info.load_data).iloc[0]
    stack = site_images(info, row)
    assert stack.dtype == np.dtype(dtype)
    assert stack.shape == (5, 80, 112)
    assert info.image_shape == (80, 112)
    # Real signal that hardly ever saturates.
    assert np.mean(stack == np.iinfo(dtype).max) < 1e-3
    assert stack.max() > 4 * np.median(stack)


def test_nuclei_where_truth_says(screen):
    load = read_csv(screen.load_data)
    truth = read_csv(screen.truth)
    assert len(truth) > 0
    for _, row in load.iterrows():
        dna = site_images(screen, row)[0].astype(float)
        label = tifffile.imread(
            screen.labels
            / row["Metadata_Plate"]
            / f"{row['Metadata_Well']}-{row['Metadata_Site']}.tif"
        )
        cells = truth[
            (truth["plate"] == row["Metadata_Plate"])
            & (truth["well"] == row["Metadata_Well"])
            & (truth["site"] == row["Metadata_Site"])
        ]
        assert label.max() == len(cells)
        ids = cells["object_id"].to_numpy()
        # Truth = the label image's pixel count and centre of mass (row, column) -> (y, x).
        np.testing.assert_array_equal(cells["area"], ndi.sum_labels(label > 0, label, ids))
        centres = np.array(ndi.center_of_mass(label > 0, label, ids))
        np.testing.assert_allclose(cells[["y", "x"]].to_numpy(), centres, atol=1e-9)
        # DNA at the nucleus centres is far above the background away from nuclei.
        background = np.median(dna[ndi.distance_transform_edt(label == 0) > 10])
        at_centres = dna[np.rint(cells["y"]).astype(int), np.rint(cells["x"]).astype(int)]
        assert np.all(at_centres - CAMERA_OFFSET > 8 * (background - CAMERA_OFFSET))


def well_features(info):
    """Per well: log mean intensity per channel, cell count and areas, minus the plate's DMSO."""
    load = read_csv(info.load_data)
    truth = read_csv(info.truth)
    rows = []
    for (plate, well), sites in load.groupby(["Metadata_Plate", "Metadata_Well"]):
        means = np.mean(
            [
                site_images(info, row).reshape(len(info.channels), -1).mean(1)
                for _, row in sites.iterrows()
            ],
            axis=0,
        )
        cells = truth[(truth["plate"] == plate) & (truth["well"] == well)]
        rows.append(
            {
                "plate": plate,
                "well": well,
                **{c: np.log(m - CAMERA_OFFSET) for c, m in zip(info.channels, means)},
                "count": np.log(len(cells) + 1),
                "area": np.log(cells["area"].mean()),
                "cell_area": np.log(cells["cell_area"].mean()),
            }
        )
    features = pd.DataFrame(rows).merge(info.annotation, on=["plate", "well"])
    names = [*info.channels, "count", "area", "cell_area"]
    dmso = features[features["control"] == "negcon"].groupby("plate")[names].mean()
    features[names] = features[names].to_numpy() - dmso.loc[features["plate"]].to_numpy()
    return features, names


def test_same_moa_compounds_are_more_similar(moa_screen):
    features, names = well_features(moa_screen)
    treated = features[features["control"] == "trt"]
    profiles = treated.groupby(["compound", "moa"])[names].mean()
    values = profiles.to_numpy()
    values = (values - values.mean(0)) / values.std(0)
    moa = profiles.index.get_level_values("moa").to_numpy()
    dist = np.sqrt(((values[:, None] - values[None]) ** 2).sum(-1))
    pairs = ~np.eye(len(moa), dtype=bool)
    same = dist[pairs & (moa[:, None] == moa[None])].mean()
    other = dist[pairs & (moa[:, None] != moa[None])].mean()
    assert same < 0.7 * other
    # And treatments differ from DMSO more than DMSO wells differ among themselves.
    dmso = features.loc[features["control"] == "negcon", names].to_numpy()
    spread = np.sqrt(((dmso - dmso.mean(0)) ** 2).sum(1)).mean()
    effect = np.sqrt((treated[names].to_numpy() ** 2).sum(1)).mean()
    assert effect > 2 * spread


def test_batch_scale_visible_in_dmso(moa_screen):
    load = read_csv(moa_screen.load_data)
    annotation = moa_screen.annotation
    dmso_wells = annotation[annotation["control"] == "negcon"]
    dmso = load.merge(
        dmso_wells, left_on=["Metadata_Plate", "Metadata_Well"], right_on=["plate", "well"]
    )
    per_plate = {}
    for plate, sites in dmso.groupby("plate"):
        stacks = np.stack([site_images(moa_screen, row) for _, row in sites.iterrows()])
        stacks = stacks.astype(float)
        per_plate[plate] = stacks.mean(axis=(0, 2, 3)) - CAMERA_OFFSET
    scales = read_csv(moa_screen.batch_effects).pivot(
        index="batch", columns="channel", values="scale"
    )
    scales = scales[list(moa_screen.channels)]
    plate_batch = annotation.drop_duplicates("plate").set_index("plate")["batch"]
    batch_mean = {
        b: np.mean([per_plate[p] for p in plate_batch.index[plate_batch == b]], axis=0)
        for b in scales.index
    }
    observed = batch_mean["B2"] / batch_mean["B1"]
    applied = scales.loc["B2"].to_numpy() / scales.loc["B1"].to_numpy()
    assert np.abs(applied - 1).max() > 0.15  # the seed gives a batch effect worth seeing
    np.testing.assert_allclose(observed, applied, rtol=0.1)


def test_invalid_arguments_are_all_reported(tmp_path):
    with pytest.raises(InputError) as err:
        make_screen(
            tmp_path / "s",
            plates=2,
            batches=3,
            channels=("DNA", "Actin"),
            dtype="float32",
            missing_sites=[("P09", "A01", 1)],
        )
    message = str(err.value)
    for fragment in ("batches=3", "Actin", "float32", "P09"):
        assert fragment in message
    assert not (tmp_path / "s").exists()


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        make_screen(tmp_path / "s", **SMALL)
    assert (tmp_path / "s" / "keep.txt").read_text() == "mine"


def test_overwrite_removes_only_what_make_screen_wrote(tmp_path):
    """Issue 21 item 2: overwrite emptied a user's images/, labels/, locations/ and index.csv."""
    user = tmp_path / "s"
    (user / "images").mkdir(parents=True)
    (user / "images" / "mine.tif").write_bytes(b"precious")
    (user / "index.csv").write_text("mine")
    with pytest.raises(InputError, match="not written by cpzarr"):
        make_screen(user, **SMALL, overwrite=True)
    assert (user / "images" / "mine.tif").read_bytes() == b"precious"
    assert (user / "index.csv").read_text() == "mine"

    made = make_screen(tmp_path / "m", **SMALL)
    (made.root / "notes.txt").write_text("kept")
    stale = made.root / "images" / "P01" / "stale.tif"
    stale.write_bytes(b"old")
    again = make_screen(made.root, **SMALL, overwrite=True)
    assert (again.root / "notes.txt").read_text() == "kept"
    assert not stale.exists()
    assert (again.root / "images" / "P01" / "P01_A01_s1_DNA.tif").is_file()


def test_higher_dose_moves_further_from_dmso(tmp_path):
    info = make_screen(
        tmp_path / "s",
        plates=3,
        batches=1,
        sites=2,
        image_size=128,
        cells_per_site=25,
        moas=2,
        compounds_per_moa=2,
        doses=(0.03, 1.0, 30.0),
        dmso_wells=4,
        seed=2,
    )
    features, names = well_features(info)
    treated = features[features["control"] == "trt"]
    distance = np.sqrt((treated[names].to_numpy() ** 2).sum(1))
    by_dose = pd.Series(distance, index=treated["dose"].to_numpy()).groupby(level=0).mean()
    assert list(by_dose.index) == [0.03, 1.0, 30.0]
    assert by_dose.is_monotonic_increasing
    assert by_dose[30.0] > 2 * by_dose[0.03]


def test_illumination_vignetting_visible_in_dmso_background(tmp_path):
    info = make_screen(
        tmp_path / "s",
        plates=2,
        batches=2,
        sites=2,
        image_size=192,
        cells_per_site=4,
        moas=0,
        dmso_wells=2,
        seed=4,
    )
    load = read_csv(info.load_data)
    batch = info.annotation.drop_duplicates("plate").set_index("plate")["batch"]
    h, w = info.image_shape
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    radius = np.hypot(xx, yy)
    for name, sites in load.groupby(load["Metadata_Plate"].map(batch)):
        centre, rim = np.zeros(len(info.channels)), np.zeros(len(info.channels))
        for _, row in sites.iterrows():
            label = tifffile.imread(
                info.labels
                / row["Metadata_Plate"]
                / f"{row['Metadata_Well']}-{row['Metadata_Site']}.tif"
            )
            # Background: far from every nucleus, hence outside every cell body.
            empty = ndi.distance_transform_edt(label == 0) > 35
            stack = site_images(info, row).astype(float) - CAMERA_OFFSET
            centre += stack[:, empty & (radius < 0.5)].mean(1)
            rim += stack[:, empty & (radius > 1.0)].mean(1)
        assert np.all(rim < 0.95 * centre), name


def test_render_site_matches_its_labels():
    from cpzarr.synthetic._screen import render_site

    site = render_site(image_size=(120, 100), cells_per_site=12, seed=7, effect={"cell_count": 0.2})
    assert site["images"].dims == ("channel", "y", "x")
    assert site["images"].shape == (5, 120, 100)
    label = site["labels"].to_numpy()
    ids = site["object_id"].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(1, label.max() + 1))
    centres = np.array(ndi.center_of_mass(label > 0, label, ids))
    np.testing.assert_allclose(site["nucleus_y"], centres[:, 0])
    np.testing.assert_allclose(site["nucleus_x"], centres[:, 1])
    np.testing.assert_array_equal(site["area"], ndi.sum_labels(label > 0, label, ids))
    assert render_site(image_size=64, cells_per_site=3, seed=7).identical(
        render_site(image_size=64, cells_per_site=3, seed=7)
    )
    with pytest.raises(InputError, match="nucleus_sise"):
        render_site(effect={"nucleus_sise": 0.1})


def touching_pairs(label):
    """Pairs of distinct labels that are 4-neighbours somewhere in a label image."""
    pairs = set()
    for this, that in ((label[:-1], label[1:]), (label[:, :-1], label[:, 1:])):
        meet = (this != that) & (this > 0) & (that > 0)
        pairs |= {tuple(sorted(p)) for p in zip(this[meet].tolist(), that[meet].tolist())}
    return pairs


def test_cells_touch_but_nuclei_mostly_separable():
    from cpzarr.synthetic._screen import render_site

    site = render_site(image_size=540, cells_per_site=58, seed=1)  # LINCS density
    cells = site["cell_labels"].to_numpy()
    nuclei = site["labels"].to_numpy()
    n = int(site.sizes["cell"])
    touching_cells = {c for pair in touching_pairs(cells) for c in pair}
    touching_nuclei = {c for pair in touching_pairs(nuclei) for c in pair}
    assert len(touching_cells) > 0.3 * n
    assert len(touching_nuclei) < 0.1 * n
    # Each nucleus lies inside its own cell body.
    inside = nuclei > 0
    np.testing.assert_array_equal(cells[inside], nuclei[inside])


def test_well_positions(tmp_path):
    info = make_screen(tmp_path / "a", **{**SMALL, "sites": 1}, wells=7)
    # Three conditions (2 compounds + 1 DMSO) repeated over seven positions, row-major from A01.
    assert info.wells == ("A01", "A02", "A03", "A04", "A05", "A06", "A07")
    layout = info.annotation[info.annotation["plate"] == "P01"]
    assert list(layout["compound"]) == ["cpd01_1", "cpd02_1", "DMSO"] * 2 + ["cpd01_1"]
    named = make_screen(tmp_path / "b", **{**SMALL, "sites": 1}, wells=["B03", "C07", "P24"])
    assert named.wells == ("B03", "C07", "P24")
    assert (tmp_path / "b" / "images" / "P02" / "P02_P24_s1_Mito.tif").is_file()
    with pytest.raises(InputError) as err:
        make_screen(tmp_path / "c", **SMALL, wells=["A1", "B02"], doses=(0.0,))
    assert "['A1']" in str(err.value) and "doses=(0.0,)" in str(err.value)
    with pytest.raises(InputError, match="2 positions for 3 conditions"):
        make_screen(tmp_path / "d", **SMALL, wells=["A01", "B02"])
