"""Imports of DeepProfiler .npz and CellProfiler CSV features, checked against the raw files."""

import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cpzarr.errors import InputError, StoreError
from cpzarr.features.imports import import_cellprofiler, import_deepprofiler, write_imported

DP_COUNTS = {
    ("SQ00014812", "A01", 5): 158,
    ("SQ00014812", "A01", 8): 179,
    ("SQ00014813", "A01", 6): 154,
    ("SQ00014813", "A01", 8): 136,
    ("SQ00014813", "A05", 6): 163,
}


def _counts(ds):
    frame = pd.DataFrame({"plate": ds["plate"].values, "well": ds["well"].values, "site": ds["site"].values})
    return {k: int(v) for k, v in frame.value_counts(sort=False).items()}


def _site(ds, plate, well, site):
    keep = (ds["plate"].values == plate) & (ds["well"].values == well) & (ds["site"].values == site)
    return ds.isel(cell=np.flatnonzero(keep))


@pytest.fixture(scope="module")
def dp_folder(shared_data):
    return shared_data / "deepprofiler_single_cell_lincs" / "features"


@pytest.fixture(scope="module")
def dp(dp_folder):
    return import_deepprofiler(dp_folder)


def test_deepprofiler_counts_and_exact_values(dp, dp_folder):
    assert _counts(dp) == DP_COUNTS
    assert dp["features"].dtype == np.float32
    assert dp.sizes["feature"] == 6400
    assert dp["feature"].values[0] == "efficientnet_0" and dp["feature"].values[-1] == "efficientnet_6399"
    for (plate, well, site) in DP_COUNTS:
        with np.load(dp_folder / plate / f"{well}_{site}.npz", allow_pickle=True) as npz:
            features, locations = npz["features"], npz["locations"]
        order = np.lexsort((locations[:, 0], locations[:, 1]))  # the store's order: y, then x
        got = _site(dp, plate, well, site)
        np.testing.assert_array_equal(got["features"].values, features[order])
        np.testing.assert_array_equal(got["x"].values, locations[order, 0])
        np.testing.assert_array_equal(got["y"].values, locations[order, 1])


def test_deepprofiler_sorted_like_cells(dp):
    key = pd.DataFrame({c: dp[c].values for c in ("plate", "well", "site", "y", "x")})
    assert key.equals(key.sort_values(["plate", "well", "site", "y", "x"]).reset_index(drop=True))


def test_deepprofiler_channel_names_from_config(dp, dp_folder, shared_data):
    config = shared_data / "deepprofiler_single_cell_lincs" / "deepprofiler_config_upstream.json"
    named = import_deepprofiler(dp_folder / "SQ00014813", config=config)
    names = list(named["feature"].values)
    assert names[0] == "DNA_0000" and names[1280] == "RNA_0000" and names[-1] == "Mito_1279"
    np.testing.assert_array_equal(named["features"].values, dp["features"].values[-(154 + 136 + 163):])
    with pytest.raises(InputError, match="do not split into 3 channels"):
        import_deepprofiler(dp_folder / "SQ00014813", channels=["DNA", "ER", "RNA"])


def test_deepprofiler_nested_layout_and_site_names(dp, dp_folder, shared_data, tmp_path):
    for plate, well, site in DP_COUNTS:
        target = tmp_path / plate / well / f"{site}.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dp_folder / plate / f"{well}_{site}.npz", target)
    nested = import_deepprofiler(tmp_path)
    xr.testing.assert_equal(nested.drop_attrs(), dp.drop_attrs())
    # BBBC021 outputs name sites "s1", "s2" and come from a model called "cnn".
    bbbc = import_deepprofiler(shared_data / "deepprofiler_single_cell_lincs" / "bbbc021_features")
    assert sorted(set(bbbc["site"].values)) == [1, 2]
    assert bbbc.sizes["feature"] == 50 and bbbc["feature"].values[0] == "cnn_0"
    with np.load(shared_data / "deepprofiler_single_cell_lincs/bbbc021_features/Week1_22123/B02_s1.npz") as npz:
        assert _site(bbbc, "Week1_22123", "B02", 1).sizes["cell"] == npz["features"].shape[0]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_deepprofiler_metadata_pickle_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "features" / "P1"
    folder.mkdir(parents=True)
    meta = np.empty((), dtype=object)
    meta[()] = _Exploit()
    np.savez(folder / "A01_1.npz", features=np.ones((2, 4), np.float32), locations=np.zeros((2, 2)), metadata=meta)
    with pytest.raises(InputError, match="refusing to load"):
        import_deepprofiler(tmp_path / "features")
    assert not (tmp_path / "pwned").exists()


def test_deepprofiler_reports_every_bad_file(tmp_path):
    folder = tmp_path / "P1"
    folder.mkdir()
    np.savez(folder / "A01_1.npz", features=np.ones((2, 4), np.float32), locations=np.zeros((2, 2)))
    np.savez(folder / "A01_2.npz", features=np.ones((3, 4), np.float32), locations=np.zeros((3, 2)))
    np.savez(folder / "A02_1.npz", features=np.ones((2, 5), np.float32), locations=np.zeros((2, 2)))
    np.savez(folder / "A02_2.npz", features=np.ones((2, 4), np.float32))
    with pytest.raises(InputError) as err:
        import_deepprofiler(tmp_path)
    assert "A02_2.npz: no locations" in str(err.value)
    # Without metadata, plate, well and site come from the path; the model name falls back to DP.
    (folder / "A02_2.npz").unlink()
    with pytest.raises(InputError, match="A02_1.npz: 5 features, most files have 4"):
        import_deepprofiler(tmp_path)
    (folder / "A02_1.npz").unlink()
    np.savez(folder / "A03_1.npz", features=np.zeros((0, 4), np.float32), locations=np.zeros((0, 2)))
    (folder / "A01").mkdir()
    shutil.copy(folder / "A01_2.npz", folder / "A01" / "2.npz")
    with pytest.raises(InputError, match=r"well A01, site 2 again"):
        import_deepprofiler(tmp_path)
    shutil.rmtree(folder / "A01")
    ds = import_deepprofiler(tmp_path)
    assert _counts(ds) == {("P1", "A01", 1): 2, ("P1", "A01", 2): 3}
    assert ds["feature"].values[0] == "DP_0"


# --- CellProfiler -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cp_root(shared_data):
    return shared_data / "cellprofiler_single_cell_jump"


def _raw_join(folder):
    """Independent reference: Pycytominer's cytoplasm-hub join written out with pandas."""
    read = {t: pd.read_csv(folder / f"{t}.csv.gz") for t in ("Image", "Cells", "Cytoplasm", "Nuclei")}
    cyto = read["Cytoplasm"].add_prefix("Cytoplasm_")
    cells = read["Cells"].add_prefix("Cells_")
    nuclei = read["Nuclei"].add_prefix("Nuclei_")
    merged = cyto.merge(cells, left_on=["Cytoplasm_ImageNumber", "Cytoplasm_Parent_Cells"],
                        right_on=["Cells_ImageNumber", "Cells_ObjectNumber"])
    merged = merged.merge(nuclei, left_on=["Cytoplasm_ImageNumber", "Cytoplasm_Parent_Nuclei"],
                          right_on=["Nuclei_ImageNumber", "Nuclei_ObjectNumber"])
    return merged.set_index("Nuclei_ObjectNumber"), read["Image"]


@pytest.mark.parametrize(
    "site, plate, well, count",
    [
        ("BR00121431_Target2/A01-1", "BR00121431", "A01", 89),
        ("BR00121431_Target2/A02-1", "BR00121431", "A02", 36),
        ("BR00116991_cpg0043", "BR00116991", "A01", 109),
    ],
)
def test_cellprofiler_counts_and_values(cp_root, site, plate, well, count):
    ds = import_cellprofiler(cp_root / site)
    assert _counts(ds) == {(plate, well, 1): count}
    assert ds["features"].dtype == np.float32
    raw, image = _raw_join(cp_root / site)
    assert image["Metadata_Plate"].item() == plate and image["Metadata_Well"].item() == well
    assert len(raw) == count
    ref = raw.loc[ds["object_id"].values]
    np.testing.assert_array_equal(ds["x"].values, ref["Nuclei_Location_Center_X"].to_numpy())
    np.testing.assert_array_equal(ds["y"].values, ref["Nuclei_Location_Center_Y"].to_numpy())
    for name in ("Cells_AreaShape_Area", "Nuclei_AreaShape_Area", "Cytoplasm_Intensity_MeanIntensity_Mito",
                 "Nuclei_Texture_Contrast_DNA_3_00_256", "Cells_Intensity_IntegratedIntensity_AGP"):
        np.testing.assert_array_equal(ds["features"].sel(feature=name).values, ref[name].to_numpy(np.float32))
    names = [str(f) for f in ds["feature"].values]
    assert not [f for f in names if "_Location_" in f or "_Parent_" in f or "ObjectNumber" in f]
    # Every numeric measurement column of the three tables is there, and nothing else.
    measured = [c for c in raw.columns if c.split("_", 1)[1].startswith(("AreaShape_Area", "Intensity_", "Texture_"))]
    assert set(measured) <= set(names)
    assert names[0].startswith("Cells_") and names[-1].startswith("Nuclei_")


def test_cellprofiler_folder_of_sites(cp_root):
    with pytest.warns(UserWarning, match="2 folders hold no object tables"):
        ds = import_cellprofiler(cp_root / "BR00121431_Target2")
    assert _counts(ds) == {("BR00121431", "A01", 1): 89, ("BR00121431", "A02", 1): 36}
    with pytest.warns(UserWarning), pytest.raises(InputError, match="join='inner'"):
        import_cellprofiler(cp_root)  # two plates measured by different pipelines
    with pytest.warns(UserWarning) as record:
        both = import_cellprofiler(cp_root, join="inner")
    assert any("keeping the common ones" in str(w.message) for w in record)
    assert both.sizes["cell"] == 89 + 36 + 109
    one = import_cellprofiler(cp_root / "BR00116991_cpg0043")
    np.testing.assert_array_equal(
        _site(both, "BR00116991", "A01", 1)["features"].sel(feature="Cells_AreaShape_Area").values,
        one["features"].sel(feature="Cells_AreaShape_Area").values,
    )


def _tables():
    image = pd.DataFrame({"ImageNumber": [1], "Metadata_Plate": ["P1"], "Metadata_Well": ["B3"], "Metadata_Site": [2]})
    nuclei = pd.DataFrame({"ImageNumber": [1, 1], "ObjectNumber": [1, 2], "Location_Center_X": [5.0, 1.0],
                           "Location_Center_Y": [9.0, 3.0], "AreaShape_Area": [10, 20]})
    cells = pd.DataFrame({"ImageNumber": [1, 1], "ObjectNumber": [1, 2], "Parent_Nuclei": [2, 1],
                          "AreaShape_Area": [100, 200], "Name": ["a", "b"]})
    return {"Image": image, "Nuclei": nuclei, "Cells": cells}


def test_cellprofiler_tables_without_cytoplasm():
    ds = import_cellprofiler(_tables(), compartments=("Cells", "Nuclei"))
    assert list(ds["feature"].values) == ["Cells_AreaShape_Area", "Nuclei_AreaShape_Area"]
    assert list(ds["well"].values) == ["B03", "B03"] and list(ds["site"].values) == [2, 2]
    # Sorted by y: nucleus 2 (y=3) first; cell 1 is the child of nucleus 2.
    np.testing.assert_array_equal(ds["features"].values, [[100, 20], [200, 10]])
    np.testing.assert_array_equal(ds["object_id"].values, [2, 1])


def test_cellprofiler_join_errors_name_file_and_column():
    tables = _tables()
    tables["Cells"] = tables["Cells"].drop(columns="Parent_Nuclei")
    with pytest.raises(InputError, match=r"tables/Cells lacks the columns \['Parent_Nuclei'\]"):
        import_cellprofiler(tables, compartments=("Cells", "Nuclei"))
    tables = _tables()
    tables["Cells"]["Parent_Nuclei"] = [7, 8]
    with pytest.raises(InputError, match="Parent_Nuclei"):
        import_cellprofiler(tables, compartments=("Cells", "Nuclei"))
    tables = _tables()
    tables["Image"] = tables["Image"].drop(columns="Metadata_Well")
    with pytest.raises(InputError, match=r"tables/Image lacks the columns \['Metadata_Well'\]"):
        import_cellprofiler(tables, compartments=("Cells", "Nuclei"))


# --- writing into a store ------------------------------------------------------------------------


def _store(folder, plates, wells, sites):
    """A real store from ingest: 8×8 one-channel PNG sites listed in a load_data table."""
    import imageio.v3 as iio

    from cpzarr.ingest import ingest

    rows = []
    for plate in plates:
        for well in wells:
            for site in sites:
                name = f"{plate}_{well}_{site}.png"
                iio.imwrite(folder / name, np.full((8, 8), 7, np.uint8))
                rows.append({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site,
                             "FileName_OrigDNA": name, "PathName_OrigDNA": str(folder)})
    store = folder / "screen.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no platemap: dose, moa, control left empty
        ingest(pd.DataFrame(rows), store, scheduler="sync", progress=False)
    return store


def test_write_into_store_builds_cells(tmp_path):
    store = _store(tmp_path, ["P1"], ["A01", "B03"], [1, 2])
    ds = import_cellprofiler(_tables(), compartments=("Cells", "Nuclei"), store=store, name="cp")
    back = xr.open_zarr(store, group="features/cp", consolidated=False)
    np.testing.assert_array_equal(back["features"].values, ds["features"].values)
    assert list(back["feature"].values) == list(ds["feature"].values)
    cells = xr.open_zarr(store, group="cells", consolidated=False)
    np.testing.assert_array_equal(cells["y"].values, back["y"].values)
    assert int(cells["cell_count"].values[0, 1, 1]) == 2 and int(cells["cell_count"].sum()) == 2  # B03, site 2
    # A second import with other cells is refused rather than misaligned with /cells.
    other = _tables()
    other["Nuclei"] = other["Nuclei"].iloc[:1]
    other["Cells"] = other["Cells"].iloc[1:]
    with pytest.raises(StoreError, match="other cells"):
        import_cellprofiler(other, compartments=("Cells", "Nuclei"), store=store, name="cp2")


def test_write_deepprofiler_into_store(dp, tmp_path):
    store = _store(tmp_path, ["SQ00014812", "SQ00014813"], ["A01", "A05"], [5, 6, 8])
    small = dp.isel(feature=slice(0, 16))
    write_imported(store, small, "deepprofiler", chunk=128)
    back = xr.open_zarr(store, group="features/deepprofiler", consolidated=False)
    assert back["features"].chunks[0][0] == 128
    np.testing.assert_array_equal(back["features"].values, small["features"].values)
    cells = xr.open_zarr(store, group="cells", consolidated=False)
    assert cells.sizes["cell"] == sum(DP_COUNTS.values())
    # A store without the imported sites names them.
    (tmp_path / "other").mkdir()
    other = _store(tmp_path / "other", ["SQ00014812"], ["A01"], [5])
    with pytest.raises(InputError, match="sites the store does not have"):
        write_imported(other, small, "deepprofiler")
