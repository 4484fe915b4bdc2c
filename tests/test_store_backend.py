"""The store's arrays behind xarray pass cpzarr.testing.check_backend, on a local disk and on S3.

The suite compares the store's BackendArrays (SitesArray, RowsArray) and the variables
``open_screen``/``open_node`` return against plain zarr reads of the same store; these tests also
check that the suite catches a reader that returns wrong values.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

from cpzarr.testing import check_backend

SYNTHETIC = dict(plates=2, batches=1, sites=2, image_size=40, cells_per_site=4, moas=2, compounds_per_moa=1,
                 dmso_wells=2, seed=5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small ingested screen with a /cells node and an imported /features/f node of 3 chunks."""
    from cpzarr.features.imports import write_imported
    from cpzarr.formats._features import features_dataset
    from cpzarr.ingest import ingest
    from cpzarr.store import open_screen
    from cpzarr.synthetic import make_screen

    root = tmp_path_factory.mktemp("backend")
    info = make_screen(root / "raw", **SYNTHETIC)
    path = root / "screen.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ingest(info.load_data, path, platemap=info.platemap, scheduler="sync", progress=False)
    images = open_screen(path)["images"]
    rng = np.random.default_rng(0)
    cells = []
    for plate in images["plate"].values:
        for well in images["well"].values:
            for site in images["site"].values:
                for _ in range(4):
                    cells.append({"plate": str(plate), "well": str(well), "site": int(site),
                                  "x": float(rng.uniform(0, 39)), "y": float(rng.uniform(0, 39))})
    table = pd.DataFrame(cells)
    values = rng.normal(size=(len(table), 21)).astype(np.float32)
    values[3, 5] = np.nan
    ds = features_dataset(table, values, [f"f{i}" for i in range(21)], {"source": "test", "importer": "test"})
    write_imported(path, ds, "f", chunk=len(table) // 3 + 1)
    return path


def test_local_store_passes_through_its_fast_readers(store):
    checked = check_backend(store, window=24)
    assert checked == {"images": "SitesArray", "features/f": "RowsArray"}
    # another seed, another region and other indexers
    assert check_backend(store, seed=7, window=9, sites=1) == checked


def test_the_suite_catches_a_reader_that_returns_wrong_values(store, monkeypatch):
    from cpzarr.store._backend import RowsArray

    raw = RowsArray._raw

    def off_by_one(self, key):  # the classic slip: a row range shifted by one
        rows, columns = key
        if isinstance(rows, slice) and rows.start:
            rows = slice(rows.start - 1, rows.stop - 1, rows.step)
        return raw(self, (rows, columns))

    monkeypatch.setattr(RowsArray, "_raw", off_by_one)
    with pytest.raises(AssertionError, match="features/f: .* differs from zarr"):
        check_backend(store, window=24)
    monkeypatch.undo()

    from cpzarr.store._backend import SitesArray

    sites = SitesArray._raw
    monkeypatch.setattr(SitesArray, "_raw", lambda self, key: sites(self, key)[..., ::-1])  # x mirrored
    with pytest.raises(AssertionError, match="images: .* differs from zarr"):
        check_backend(store, window=24)


def test_store_on_s3_passes(store, s3, s3_put):
    url = s3_put(store, "backend/screen.zarr")
    checked = check_backend(url, storage_options=s3, window=24)
    assert checked == {"images": "zarr", "features/f": "zarr"}  # zarr's own reader on an object store
