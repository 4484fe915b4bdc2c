"""CellProfiler SQLite and CytoTable Parquet imports, checked against the CSV import of the same tables."""

import functools
import sqlite3

import numpy as np
import pandas as pd
import pytest

from cpzarr.errors import InputError
from cpzarr.features import import_cellprofiler

COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
KEYS = ("TableNumber", "ImageNumber", "ObjectNumber")


@pytest.fixture(scope="module")
def target2(shared_data):
    root = shared_data / "cellprofiler_single_cell_jump" / "BR00121431_Target2"
    return [root / "A01-1", root / "A02-1"]


@pytest.fixture(scope="module")
def csv_import(target2):
    return import_cellprofiler(list(target2))


@functools.lru_cache(maxsize=4)
def _read_tables(folder):
    return {t: pd.read_csv(folder / f"{t}.csv.gz", low_memory=False) for t in ("Image", *COMPARTMENTS)}


def _cytominer_database(folders, path):
    """What cytominer-database ingest writes: one table per compartment, keys unprefixed."""
    with sqlite3.connect(path) as connection:
        for i, folder in enumerate(folders):
            for table, frame in _read_tables(folder).items():
                renamed = frame.rename(columns={c: f"{table}_{c}" for c in frame.columns if c not in KEYS})
                renamed.insert(0, "TableNumber", f"run-{i:02d}-{folder.name}")
                renamed.to_sql(table, connection, if_exists="append", index=False)
    return path


def test_sqlite_import_identical_to_csv(target2, csv_import, tmp_path):
    db = _cytominer_database(target2, tmp_path / "BR00121431.sqlite")
    got = import_cellprofiler(db)
    assert got.sizes == csv_import.sizes and got.sizes["cell"] == 89 + 36
    assert list(got["feature"].values) == list(csv_import["feature"].values)
    for name in ("features", "plate", "well", "site", "x", "y", "object_id"):
        np.testing.assert_array_equal(got[name].values, csv_import[name].values)


def test_sqlite_without_table_number_and_exporttodatabase_names(target2, csv_import, tmp_path):
    """One CellProfiler run exported by ExportToDatabase: Per_ tables, <Comp>_Number_Object_Number."""
    path = tmp_path / "one.sqlite"
    with sqlite3.connect(path) as connection:
        for table, frame in _read_tables(target2[0]).items():
            frame = frame.drop(columns=["ObjectNumber"], errors="ignore")
            frame = frame.rename(columns={c: f"{table}_{c}" for c in frame.columns if c != "ImageNumber"})
            frame.to_sql(f"Per_{table}", connection, index=False)
    got = import_cellprofiler(path)
    first = csv_import.isel(cell=csv_import["well"].values == "A01")
    np.testing.assert_array_equal(got["features"].values, first["features"].values)
    np.testing.assert_array_equal(got["object_id"].values, first["object_id"].values)


def test_sqlite_errors_name_file_and_table(target2, tmp_path):
    path = tmp_path / "partial.sqlite"
    with sqlite3.connect(path) as connection:
        pd.DataFrame({"ImageNumber": [1]}).to_sql("Image", connection, index=False)
    with pytest.raises(InputError, match=r"partial\.sqlite has no Cells table"):
        import_cellprofiler(path)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(InputError, match=r"bad\.sqlite cannot be read"):
        import_cellprofiler(bad)


def _cytotable_frame(folders):
    """A CytoTable-style join (cellprofiler_csv preset naming) of the CSV tables, columns sorted."""
    rows = []
    for folder in folders:
        t = _read_tables(folder)
        image = t["Image"][["ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]]
        image = image.rename(columns={"ImageNumber": "Metadata_ImageNumber", "Metadata_Plate": "Image_Metadata_Plate",
                                      "Metadata_Well": "Image_Metadata_Well", "Metadata_Site": "Image_Metadata_Site"})
        parts = {}
        for comp in COMPARTMENTS:
            frame = t[comp]
            names = {}
            for c in frame.columns:
                if c == "ImageNumber":
                    names[c] = "Metadata_ImageNumber"
                elif c in ("ObjectNumber",):
                    names[c] = f"Metadata_{comp}_ObjectNumber"
                elif c.startswith("Parent_"):
                    names[c] = f"Metadata_{comp}_{c}"
                else:
                    names[c] = f"{comp}_{c}"
            parts[comp] = frame.rename(columns=names)
        joined = image.merge(parts["Cytoplasm"], on="Metadata_ImageNumber")
        joined = joined.merge(parts["Cells"], left_on=["Metadata_ImageNumber", "Metadata_Cytoplasm_Parent_Cells"],
                              right_on=["Metadata_ImageNumber", "Metadata_Cells_ObjectNumber"])
        joined = joined.merge(parts["Nuclei"], left_on=["Metadata_ImageNumber", "Metadata_Cytoplasm_Parent_Nuclei"],
                              right_on=["Metadata_ImageNumber", "Metadata_Nuclei_ObjectNumber"])
        rows.append(joined)
    frame = pd.concat(rows, ignore_index=True)
    return frame[sorted(frame.columns)]


@pytest.fixture(scope="module")
def cytotable_frame(target2):
    return _cytotable_frame(target2)


def test_cytotable_parquet_identical_to_csv(target2, csv_import, cytotable_frame, tmp_path):
    path = tmp_path / "BR00121431.parquet"
    cytotable_frame.to_parquet(path)
    got = import_cellprofiler(path)
    assert got.sizes == csv_import.sizes
    # CytoTable sorts its columns by name; compare feature by feature
    assert sorted(got["feature"].values) == sorted(csv_import["feature"].values)
    ref = csv_import.sel(feature=got["feature"].values)
    np.testing.assert_array_equal(got["features"].values, ref["features"].values)
    for name in ("plate", "well", "site", "x", "y"):
        np.testing.assert_array_equal(got[name].values, csv_import[name].values)
    np.testing.assert_array_equal(got["object_id"].values, csv_import["object_id"].values)


def test_cytotable_without_site_numbers_images_per_well(cytotable_frame, tmp_path):
    path = tmp_path / "nosite.parquet"
    cytotable_frame.drop(columns="Image_Metadata_Site").to_parquet(path)
    with pytest.warns(UserWarning, match="no site column"):
        got = import_cellprofiler(path)
    np.testing.assert_array_equal(got["site"].values, np.ones(got.sizes["cell"]))
    frame = cytotable_frame.drop(columns=["Image_Metadata_Plate"])
    frame.to_parquet(tmp_path / "noplate.parquet")
    with pytest.raises(InputError, match=r"noplate\.parquet has no plate column"):
        import_cellprofiler(tmp_path / "noplate.parquet")


def test_sqlite_and_parquet_at_a_url_equal_the_local_files(target2, cytotable_frame, s3, s3_put, tmp_path, cache):
    """A database at a URL is copied into cpzarr's cache (sqlite reads files only), a Parquet read
    through fsspec; both give what the local file gives."""
    db = _cytominer_database(target2, tmp_path / "BR00121431.sqlite")
    url = s3_put(db, "tables/BR00121431.sqlite")
    local = import_cellprofiler(db)
    remote = import_cellprofiler(url, storage_options=s3)
    for name in ("features", "plate", "well", "site", "x", "y", "object_id"):
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    parquet = tmp_path / "BR00121431.parquet"
    cytotable_frame.to_parquet(parquet)
    url = s3_put(parquet, "tables/BR00121431.parquet")
    local, remote = import_cellprofiler(parquet), import_cellprofiler(url, storage_options=s3)
    assert remote.attrs["source"] == url
    for name in ("features", "plate", "well", "site", "x", "y"):
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    with pytest.raises(InputError, match="s3://cpzarr-test/tables/missing.sqlite does not exist"):
        import_cellprofiler("s3://cpzarr-test/tables/missing.sqlite", storage_options=s3)
