"""LINCS platemaps on ingest, and features/profiles exported with Pycytominer's names (Parquet, AnnData)."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from cpzarr.cli import main
from cpzarr.export import export_table
from cpzarr.profiles import aggregate, from_pycytominer, read_profiles, to_pycytominer, write_profiles
from cpzarr.store import open_node, open_screen, write_node

BATCH1 = "lincs_metadata/platemaps/2016_04_01_a549_48hr_batch1"


@pytest.fixture(scope="module")
def lincs_store(shared_data, tmp_path_factory):
    """The LINCS images (site 1 of each well) ingested with the LINCS barcode platemap, by the CLI."""
    root = tmp_path_factory.mktemp("lincs")
    images = shared_data / "lincs_images_SQ00015198_SQ00015230"
    index = pd.read_csv(images / "index.csv")
    index = index[index["Metadata_Site"] == 1]
    table = index[["Metadata_Plate", "Metadata_Well", "Metadata_Site", "DNA", "ER", "RNA", "AGP", "Mito"]].copy()
    for ch in ("DNA", "ER", "RNA", "AGP", "Mito"):
        table[ch] = [str(images / p) for p in table[ch]]
    table.to_csv(root / "index.csv", index=False)
    result = CliRunner().invoke(main, ["ingest", str(root / "index.csv"), str(root / "s.zarr"), "--no-progress",
                                       "--platemap", str(shared_data / BATCH1 / "barcode_platemap.csv")])
    assert result.exit_code == 0, result.output
    store = root / "s.zarr"
    rng = np.random.default_rng(0)
    screen = open_screen(store)
    rows = [(p, w, 1) for p in screen["plate"].values for w in screen["well"].values]
    n = 3
    cells = xr.Dataset(
        {"features": (("cell", "feature"), rng.normal(size=(len(rows) * n, 4)).astype(np.float32))},
        coords={"plate": ("cell", np.repeat([r[0] for r in rows], n).astype(object)),
                "well": ("cell", np.repeat([r[1] for r in rows], n).astype(object)),
                "site": ("cell", np.repeat([r[2] for r in rows], n)),
                "x": ("cell", rng.uniform(0, 1080, len(rows) * n)), "y": ("cell", rng.uniform(0, 1080, len(rows) * n)),
                "feature": np.array(["Cells_a", "Cells_b", "Nuclei_c", "Cytoplasm_d"], dtype=object)})
    write_node(store, "features/demo", cells)
    return store


def test_lincs_platemap_joined_by_barcode(lincs_store, shared_data):
    screen = open_screen(lincs_store).to_dataset()
    layout = pd.read_csv(shared_data / BATCH1 / "platemap" / "C-7161-01-LM6-014.txt", sep="\t")
    barcodes = pd.read_csv(shared_data / BATCH1 / "barcode_platemap.csv").set_index("Assay_Plate_Barcode")
    for plate in ("SQ00015198", "SQ00015230"):
        assert screen["batch"].sel(plate=plate).item() == str(barcodes.loc[plate, "Batch_Number"])
        for well in screen["well"].values:
            row = layout[layout["well_position"] == well].iloc[0]
            got = screen.sel(plate=plate, well=well)
            assert got["plate_map_name"].item() == row["plate_map_name"] == barcodes.loc[plate, "Plate_Map_Name"]
            assert got["batch_date"].item() == barcodes.loc[plate, "Batch_Date"]
            if pd.isna(row["broad_sample"]):
                assert got["broad_sample"].item() == "" and got["control"].item() == "negcon"
            else:
                assert got["broad_sample"].item() == row["broad_sample"]
                np.testing.assert_allclose(got["dose"].item(), row["mmoles_per_liter"])
    assert screen["batch_number"].attrs["source_name"] == "Batch_Number"


def test_lincs_platemap_missing_layout_is_named(tmp_path, shared_data):
    from cpzarr._tables import read_platemap
    from cpzarr.errors import InputError

    (tmp_path / "platemap").mkdir()
    (tmp_path / "barcode_platemap.csv").write_text("Assay_Plate_Barcode,Plate_Map_Name\nSQ1,MAP-A\n")
    with pytest.raises(InputError) as err:
        read_platemap(tmp_path / "barcode_platemap.csv")
    assert "MAP-A.txt does not exist (Plate_Map_Name of SQ1)" in err.value.problems[0]


def test_single_cells_parquet_names_and_values_read_by_pycytominer(lincs_store, tmp_path):
    import pycytominer

    path = export_table(lincs_store, "features/demo", tmp_path / "cells.parquet")
    frame = pd.read_parquet(path)
    meta = [c for c in frame.columns if c.startswith("Metadata_")]
    assert list(frame.columns[:len(meta)]) == meta  # metadata first
    assert meta[:3] == ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for column in ("Metadata_Location_Center_X", "Metadata_broad_sample", "Metadata_mmoles_per_liter",
                   "Metadata_plate_map_name", "Metadata_Batch_Number", "Metadata_Batch_Date"):
        assert column in meta
    node = open_node(lincs_store, "features/demo")
    np.testing.assert_array_equal(frame[["Cells_a", "Cells_b", "Nuclei_c", "Cytoplasm_d"]].to_numpy(),
                                  node["features"].values)
    # Pycytominer aggregates the exported cells to the same well means as cpzarr
    theirs = pycytominer.aggregate(frame, strata=["Metadata_Plate", "Metadata_Well"], features="infer",
                                   operation="mean")
    ours = to_pycytominer(aggregate(node["features"], operation="mean").compute())
    merged = theirs.merge(ours, on=["Metadata_Plate", "Metadata_Well"], suffixes=("_pcm", ""))
    assert len(merged) == len(theirs) == 8
    for feature in ("Cells_a", "Cells_b", "Nuclei_c", "Cytoplasm_d"):
        np.testing.assert_allclose(merged[f"{feature}_pcm"], merged[feature], rtol=1e-6)


def test_profiles_parquet_and_h5ad_identical(lincs_store, tmp_path):
    anndata = pytest.importorskip("anndata")
    from cpzarr.export import attach_metadata

    well = aggregate(open_node(lincs_store, "features/demo")["features"]).compute()
    well = attach_metadata(well, open_screen(lincs_store).to_dataset())
    write_profiles(well, lincs_store, node="profiles/demo/well")
    parquet = export_table(lincs_store, "profiles/demo/well", tmp_path / "well.parquet")
    h5ad = export_table(lincs_store, "profiles/demo/well", tmp_path / "well.h5ad")
    frame = pd.read_parquet(parquet)
    assert frame.columns[0] == "Metadata_Plate" and "Metadata_control" in frame.columns
    assert "Metadata_plate_map_name" in frame.columns and "Metadata_Batch_Number" in frame.columns
    adata = anndata.read_h5ad(h5ad)
    features = [c for c in frame.columns if not c.startswith("Metadata_")]
    assert list(adata.var_names) == features
    assert list(adata.obs.columns) == [c for c in frame.columns if c.startswith("Metadata_")]
    np.testing.assert_array_equal(adata.X, frame[features].to_numpy())
    for column in adata.obs.columns:
        np.testing.assert_array_equal(adata.obs[column].astype(str).to_numpy(), frame[column].astype(str).to_numpy())
    back = read_profiles(h5ad)  # and back through cpzarr
    np.testing.assert_array_equal(back.values, well.values)
    assert list(back["plate"].values) == list(well["plate"].values)


def test_cli_export_node(lincs_store, tmp_path):
    result = CliRunner().invoke(main, ["export", str(lincs_store), str(tmp_path / "c.csv"), "--node", "features/demo"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "c.csv").columns[0] == "Metadata_Plate"
    result = CliRunner().invoke(main, ["export", str(lincs_store), str(tmp_path / "c.zarr")])
    assert result.exit_code != 0 and "either --ome-zarr or --node" in result.output
    result = CliRunner().invoke(main, ["export", str(lincs_store), str(tmp_path / "x.txt"), "--node", "features/demo"])
    assert result.exit_code != 0 and "should end in .parquet" in result.output


def test_to_pycytominer_names(tmp_path):
    p = xr.DataArray(np.zeros((2, 1)), dims=("sample", "feature"),
                     coords={"plate": ("sample", ["P", "P"]), "well": ("sample", ["A01", "A02"]),
                             "site": ("sample", [1, 2]), "control": ("sample", ["negcon", "trt"]),
                             "feature": ["f"]},
                     attrs={"pycytominer_names": json.dumps({"control": "control_type"})})
    assert list(to_pycytominer(p).columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site",
                                               "Metadata_control_type", "f"]
    assert to_pycytominer(p, names={"control": "pert_type"}).columns[3] == "Metadata_pert_type"
    # written and read back, the coordinates are cpzarr's again (Parquet and .h5ad keep the map)
    for name in ("p.parquet", "p.h5ad"):
        write_profiles(p, tmp_path / name)
        back = read_profiles(tmp_path / name)
        assert sorted(back.coords) == sorted(p.coords) and list(back["control"].values) == ["negcon", "trt"]
    # a table read from Pycytominer keeps its own names
    df = pd.DataFrame({"Metadata_plate": ["p"], "Metadata_Well": ["A01"], "x": [1.0]})
    assert to_pycytominer(from_pycytominer(df)).equals(df)
