"""Cells: location import (DeepProfiler, CellProfiler), nuclei detection, the /cells node."""

import json
import warnings

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tifffile
import xarray as xr
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from cpzarr.cells import (
    cells_table, detect_nuclei, import_locations, normalize_well, screen_parts, segment_nuclei, write_cells,
)
from cpzarr.crops import crops
from cpzarr.errors import InputError
from cpzarr.synthetic import make_screen

LINCS = "lincs_images_SQ00015198_SQ00015230"
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def _blank_screen(plates, wells, sites, shape, present=None, dtype=np.uint8):
    """A screen whose images are lazy zeros: enough for importing locations."""
    images = da.zeros((len(plates), len(wells), len(sites), len(CHANNELS)) + shape, dtype,
                      chunks=(1, 1, 1, len(CHANNELS)) + shape)
    if present is None:
        present = np.ones((len(plates), len(wells), len(sites)), bool)
    return xr.Dataset(
        {"images": (("plate", "well", "site", "channel", "y", "x"), images),
         "present": (("plate", "well", "site"), present)},
        coords={"plate": np.array(plates, object), "well": np.array(wells, object), "site": list(sites),
                "channel": np.array(CHANNELS, object)},
    )


def _screen_from_files(info, dtype):
    """Read a synthetic screen's TIFFs into an in-memory screen Dataset (independent of ingest)."""
    table = pd.read_csv(info.load_data)
    plates, wells, sites = list(info.plates), list(info.wells), list(info.sites)
    pixels = np.zeros((len(plates), len(wells), len(sites), len(info.channels)) + tuple(info.image_shape), dtype)
    present = np.zeros(pixels.shape[:3], bool)
    for row in table.itertuples():
        at = (plates.index(row.Metadata_Plate), wells.index(row.Metadata_Well), sites.index(row.Metadata_Site))
        present[at] = True
        for k, channel in enumerate(info.channels):
            folder, name = getattr(row, f"PathName_Orig{channel}"), getattr(row, f"FileName_Orig{channel}")
            pixels[at + (k,)] = tifffile.imread(f"{folder}/{name}")
    compound = info.annotation.set_index(["plate", "well"])["compound"]
    return xr.Dataset(
        {"images": (("plate", "well", "site", "channel", "y", "x"), pixels),
         "present": (("plate", "well", "site"), present),
         "compound": (("plate", "well"), np.array([[compound[(p, w)] for w in wells] for p in plates], object))},
        coords={"plate": np.array(plates, object), "well": np.array(wells, object), "site": sites,
                "channel": np.array(list(info.channels), object)},
    ).chunk({"plate": 1, "well": 1, "site": 1})


@pytest.fixture(scope="module", params=["uint16", "uint8"])
def synthetic(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"screen-{request.param}")
    info = make_screen(path, plates=2, sites=2, image_size=192, cells_per_site=18, moas=1, compounds_per_moa=2, dmso_wells=2,
                       dtype=request.param, missing_sites=[("P02", "A02", 2)], seed=4)
    return info, _screen_from_files(info, request.param)


def _matches(found, reference, tolerance=6.0):
    """One-to-one matches within ``tolerance`` pixels (Hungarian assignment): index pairs."""
    if not len(found) or not len(reference):
        return np.zeros((0, 2), np.int64)
    distance = cdist(found, reference)
    cost = np.where(distance <= tolerance, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] <= tolerance
    return np.stack([rows[keep], cols[keep]], 1)


def _sorted_xy(frame, x="x", y="y"):
    return frame.sort_values([y, x])[[x, y]].to_numpy()


# --- import ---------------------------------------------------------------------------------


def test_normalize_well():
    assert [normalize_well(w) for w in ("A1", "b03", "P13", "AA2")] == ["A01", "B03", "P13", "AA02"]


def test_import_deepprofiler_real_lincs(shared_data):
    root = shared_data / LINCS
    index = pd.read_csv(root / "index.csv")
    plates, wells = sorted(index.Metadata_Plate.unique()), sorted(index.Metadata_Well.unique())
    sites = list(range(1, 10))
    present = np.zeros((len(plates), len(wells), len(sites)), bool)
    for row in index.itertuples():
        present[plates.index(row.Metadata_Plate), wells.index(row.Metadata_Well), row.Metadata_Site - 1] = True
    screen = _blank_screen(plates, wells, sites, (1080, 1080), present)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cells = import_locations(screen, root / "locations")
    table = cells_table(cells)
    assert len(table) == 8555 + 2472
    for row in index.itertuples():
        expected = pd.read_csv(root / row.Nuclei_Locations)
        p, w, s = plates.index(row.Metadata_Plate), wells.index(row.Metadata_Well), row.Metadata_Site - 1
        start, count = int(cells.cell_start[p, w, s]), int(cells.cell_count[p, w, s])
        assert count == len(expected)
        site = table.iloc[start : start + count]
        assert (site.plate == row.Metadata_Plate).all() and (site.well == row.Metadata_Well).all()
        np.testing.assert_array_equal(
            site[["x", "y"]].to_numpy(),
            _sorted_xy(expected, "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"),
        )
    # sites 5-9 of SQ00015230 were never acquired: no cells
    assert int(cells.cell_count[1, :, 4:].sum()) == 0


def test_import_deepprofiler_synthetic_equals_truth(synthetic):
    info, screen = synthetic
    cells = import_locations(screen, info.locations, kind="deepprofiler")
    table = cells_table(cells)
    truth = pd.read_csv(info.truth)
    assert len(table) == len(truth)
    for (plate, well, site), group in truth.groupby(["plate", "well", "site"]):
        mine = table[(table.plate == plate) & (table.well == well) & (table.site == site)]
        np.testing.assert_allclose(mine[["x", "y"]].to_numpy(), _sorted_xy(group), atol=1e-6)
    # sorted by plate, well, site in store order, offsets consistent
    assert (np.diff(cells.cell_start.values.ravel()) == cells.cell_count.values.ravel()[:-1]).all()


def test_import_cellprofiler_tables(synthetic, tmp_path):
    info, screen = synthetic
    truth = pd.read_csv(info.truth)
    sites = truth[["plate", "well", "site"]].drop_duplicates().reset_index(drop=True)
    sites["ImageNumber"] = np.arange(len(sites)) + 1
    image = pd.DataFrame({"ImageNumber": sites.ImageNumber, "Metadata_Plate": sites.plate,
                          "Metadata_Well": sites.well.str.replace("A0", "A"), "Metadata_Site": sites.site})
    nuclei = truth.merge(sites, on=["plate", "well", "site"])
    nuclei = pd.DataFrame({"ImageNumber": nuclei.ImageNumber, "ObjectNumber": nuclei.object_id,
                           "Location_Center_X": nuclei.x, "Location_Center_Y": nuclei.y})
    image.to_csv(tmp_path / "Image.csv", index=False)
    nuclei.to_csv(tmp_path / "Nuclei.csv.gz", index=False)
    cells = import_locations(screen, tmp_path)
    assert cells.attrs["kind"] == "cellprofiler"
    table = cells_table(cells).merge(truth, on=["plate", "well", "site", "object_id"], suffixes=("", "_truth"))
    assert len(table) == len(truth) == cells.sizes["cell"]
    np.testing.assert_allclose(table[["x", "y"]].to_numpy(), table[["x_truth", "y_truth"]].to_numpy())


def test_import_cellprofiler_real_jump_per_site_folders(shared_data):
    root = shared_data / "cellprofiler_single_cell_jump" / "BR00121431_Target2"
    screen = _blank_screen(["BR00121431"], ["A01", "A02"], [1, 2], (1080, 1080))
    cells = import_locations(screen, root)
    counts = cells.cell_count.values[0]
    assert counts.tolist() == [[89, 0], [36, 0]]
    nuclei = pd.read_csv(root / "A01-1" / "Nuclei.csv.gz", usecols=["ObjectNumber", "Location_Center_X", "Location_Center_Y"])
    mine = cells_table(cells).iloc[:89].sort_values("object_id")
    np.testing.assert_array_equal(mine.object_id, nuclei.ObjectNumber)
    np.testing.assert_array_equal(mine[["x", "y"]].to_numpy(), nuclei[["Location_Center_X", "Location_Center_Y"]].to_numpy())


def _write_locations(folder, plate, well, site, xy):
    (folder / plate).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(xy, columns=["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]).to_csv(
        folder / plate / f"{well}-{site}-Nuclei.csv", index=False)


def test_invalid_locations_are_reported_not_dropped_silently(tmp_path):
    screen = _blank_screen(["P1"], ["A01", "A02"], [1, 2], (50, 60))
    screen["present"][0, 1, 1] = False
    _write_locations(tmp_path, "P1", "A01", 1, [[5.0, 5.0], [np.nan, 3.0], [60.5, 10.0], [59.0, 49.0]])
    _write_locations(tmp_path, "P1", "A01", 2, np.zeros((0, 2)))  # a site without cells
    _write_locations(tmp_path, "P1", "A02", 1, [[1.0, 1.0], [2.0, -0.5]])
    _write_locations(tmp_path, "P1", "A02", 2, [[1.0, 1.0]])  # images absent
    _write_locations(tmp_path, "P9", "A01", 1, [[1.0, 1.0], [3.0, 3.0]])  # plate unknown
    with pytest.raises(InputError) as err:
        import_locations(screen, tmp_path)
    text = str(err.value)
    assert "6 of 9 locations" in text
    assert "NaN coordinates: 1 locations" in text and "A01-1-Nuclei.csv row 3" in text
    assert "outside the 60x50 image: 2 locations" in text and "x=60.5" in text
    assert "in sites the store does not have: 3 locations" in text and "plate P9" in text
    with pytest.warns(UserWarning, match="dropped 6 of 9 locations"):
        cells = import_locations(screen, tmp_path, on_invalid="drop")
    assert cells.sizes["cell"] == 3
    assert cells.cell_count.values.tolist() == [[[2, 0], [1, 0]]]
    report = json.loads(cells.attrs["dropped"])
    assert report["in sites the store does not have"]["sites"] == 2


def test_sites_without_files_warn(tmp_path):
    screen = _blank_screen(["P1"], ["A01"], [1, 2], (50, 60))
    _write_locations(tmp_path, "P1", "A01", 1, [[5.0, 5.0]])
    with pytest.warns(UserWarning, match="1 sites of the store have no location file"):
        import_locations(screen, tmp_path)


def test_unreadable_location_files(tmp_path):
    screen = _blank_screen(["P1"], ["A01"], [1], (50, 60))
    (tmp_path / "P1").mkdir()
    pd.DataFrame({"X": [1.0]}).to_csv(tmp_path / "P1" / "A01-1-Nuclei.csv", index=False)
    with pytest.raises(InputError, match="no column Nuclei_Location_Center_X"):
        import_locations(screen, tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        import_locations(screen, tmp_path / "nowhere")
    with pytest.raises(InputError, match="no Nuclei.csv"):
        import_locations(screen, tmp_path, kind="cellprofiler")


# --- the node in the store ------------------------------------------------------------------


def test_write_cells_round_trip_through_store(synthetic, tmp_path):
    from cpzarr import __version__
    from cpzarr.store import open_screen

    info, screen = synthetic
    store = tmp_path / "screen.zarr"
    screen.attrs.update(cpzarr_version=__version__, complete=True)
    site_chunks = (1, 1, 1) + screen["images"].shape[3:]
    screen.compute().to_zarr(store, zarr_format=3, consolidated=False, encoding={"images": {"chunks": site_chunks}})
    cells = import_locations(screen, info.locations)
    write_cells(store, cells)
    write_cells(store, cells)  # replacing an existing node
    opened = open_screen(store)
    _, node, _ = screen_parts(opened)
    for name in ("plate", "well", "site", "x", "y", "cell_start", "cell_count"):
        np.testing.assert_array_equal(node[name].values.astype(cells[name].dtype), cells[name].values)
    view = crops(opened, box=16, edge="pad")
    reference = crops(screen, box=16, edge="pad", cells=cells)
    np.testing.assert_array_equal(view.values, reference.values)
    np.testing.assert_array_equal(view.x.values, cells.x.values)


# --- detection ------------------------------------------------------------------------------


def test_detect_nuclei_synthetic_f1(synthetic):
    info, screen = synthetic
    truth = pd.read_csv(info.truth)
    cells = detect_nuclei(screen, exclude_border=False, scheduler="threads")
    table = cells_table(cells)
    hits = found = expected = 0
    areas = []
    for (plate, well, site), group in truth.groupby(["plate", "well", "site"]):
        mine = table[(table.plate == plate) & (table.well == well) & (table.site == site)]
        pairs = _matches(mine[["x", "y"]].to_numpy(), group[["x", "y"]].to_numpy())
        hits, found, expected = hits + len(pairs), found + len(mine), expected + len(group)
        areas.append(np.stack([mine.area.to_numpy()[pairs[:, 0]], group.area.to_numpy()[pairs[:, 1]]], 1))
    precision, recall = hits / found, hits / expected
    f1 = 2 * precision * recall / (precision + recall)
    assert f1 >= 0.95, (precision, recall)
    # areas follow the nuclei's sizes (the smoothed threshold draws a wider outline than the truth)
    areas = np.concatenate(areas)
    assert np.corrcoef(areas.T)[0, 1] > 0.8
    # the missing site has no cells, and object ids are the labels 1..n of each site
    well = list(screen.well.values).index("A02")
    assert int(cells.cell_count.values[1, well, 1]) == 0
    first = table.groupby(["plate", "well", "site"]).object_id.agg(["min", "max", "size"])
    assert (first["min"] == 1).all() and (first["max"] == first["size"]).all()


def test_segment_nuclei_hand_made():
    image = np.zeros((80, 80), np.uint16)
    yy, xx = np.mgrid[:80, :80]
    for cy, cx in ((20, 20), (20, 31), (60, 50)):  # two touching discs and one alone
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 1000
    image[(yy - 2) ** 2 + (xx - 70) ** 2 <= 36] = 1000  # touches the border
    labels = segment_nuclei(image, sigma=1.0, min_distance=4, min_area=20)
    assert labels.max() == 3
    centres = sorted((round(float(yy[labels == k].mean())), round(float(xx[labels == k].mean()))) for k in (1, 2, 3))
    assert centres == [(20, 20), (20, 31), (60, 50)]
    assert segment_nuclei(image, sigma=1.0, min_distance=4, min_area=20, exclude_border=False).max() == 4
    assert segment_nuclei(np.zeros((30, 30)), threshold=0.5).max() == 0


@pytest.mark.slow
def test_detect_nuclei_real_lincs_matches_cellprofiler(shared_data):
    import imageio.v3 as iio

    root = shared_data / LINCS
    # every other site of both plates (26 of 52) keeps the test short; all 52 give
    # P 0.934 / R 0.911 (SQ00015198) and P 0.926 / R 0.941 (SQ00015230)
    index = pd.read_csv(root / "index.csv").iloc[::2]
    totals = {}
    for row in index.itertuples():
        labels = segment_nuclei(iio.imread(root / row.DNA))
        yy, xx = np.nonzero(labels)
        counts = np.bincount(labels[yy, xx])[1:]
        found = np.stack([np.bincount(labels[yy, xx], xx)[1:] / counts, np.bincount(labels[yy, xx], yy)[1:] / counts], 1)
        reference = pd.read_csv(root / row.Nuclei_Locations).to_numpy()
        hits = len(_matches(found, reference))
        total = totals.setdefault(row.Metadata_Plate, np.zeros(3))
        total += (hits, len(found), len(reference))
    for plate, (hits, found, expected) in totals.items():
        assert hits / found >= 0.90 and hits / expected >= 0.90, (plate, hits / found, hits / expected)


def test_locate_command(synthetic, tmp_path):
    from click.testing import CliRunner

    from cpzarr import __version__
    from cpzarr.cli import main
    from cpzarr.store import open_screen

    info, screen = synthetic
    store = tmp_path / "screen.zarr"
    screen.attrs.update(cpzarr_version=__version__, complete=True)
    screen.compute().to_zarr(store, zarr_format=3, consolidated=False)
    runner = CliRunner()
    result = runner.invoke(main, ["locate", str(store), "--from", str(info.locations)])
    assert result.exit_code == 0, result.output
    truth = pd.read_csv(info.truth)
    assert f"{len(truth)} cells in" in result.output
    _, cells, _ = screen_parts(open_screen(store))
    assert cells.sizes["cell"] == len(truth)
    result = runner.invoke(main, ["locate", str(store), "--detect", "--keep-border", "--no-progress"])
    assert result.exit_code == 0, result.output
    _, detected, _ = screen_parts(open_screen(store))
    assert "area" in detected and abs(detected.sizes["cell"] - len(truth)) <= 0.05 * len(truth)
    assert runner.invoke(main, ["locate", str(store)]).exit_code != 0
