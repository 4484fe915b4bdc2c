"""Writers of each node kind, run in a subprocess that the tests kill at random points.

``python tests/kill_writer.py KIND WORKDIR`` rewrites the node ``KIND`` of ``WORKDIR/screen.zarr``
over and over (printing ``ready`` once it has imported everything) until it is killed; the test
then checks the node is absent or complete, and that one more write completes it. The same
module gives the test the reference content of each kind (:func:`reference`), built here so that
writer and checker cannot disagree on it.

Kinds: ``images`` (ingest, one unit per well), ``cells`` (a node written whole), ``features``
(a node written unit by unit) and ``profiles`` (a profiles node).
"""

import sys
import warnings
from pathlib import Path

import numpy as np

KINDS = ("images", "cells", "features", "profiles")
GROUPS = {"cells": "cells", "features": "features/kill", "profiles": "profiles/kill/aggregated"}
N_CELLS = 4000


def features():
    """A features DataArray (cell, feature) of :data:`N_CELLS` cells, dask-backed."""
    import dask.array as da
    import xarray as xr

    values = np.random.default_rng(1).standard_normal((N_CELLS, 96)).astype("float32")
    coords = {
        "plate": ("cell", np.array(["P01"] * N_CELLS, dtype=object)),
        "well": ("cell", np.array([f"A{1 + i % 12:02d}" for i in range(N_CELLS)], dtype=object)),
        "feature": ("feature", np.array([f"f{j}" for j in range(96)], dtype=object)),
    }
    return xr.DataArray(da.from_array(values, chunks=(250, 96)), dims=("cell", "feature"), coords=coords,
                        name="features", attrs={"model": "kill-test"})


def cells():
    """A ``/cells``-like Dataset (the writer only needs its variables)."""
    import xarray as xr

    rng = np.random.default_rng(2)
    n = 200_000
    return xr.Dataset({
        "x": ("cell", rng.uniform(0, 40, n)),
        "y": ("cell", rng.uniform(0, 40, n)),
        "area": ("cell", rng.integers(10, 500, n)),
    })


def profiles():
    from cpzarr.synthetic import make_profiles

    return make_profiles(n_plates=2, n_batches=1, n_negcon=4, n_compounds=20, n_replicates=2, n_moas=4,
                         n_features=300, n_samples=None)


def reference(kind):
    return {"cells": cells, "features": features, "profiles": profiles}[kind]()


def write(kind, workdir, *, overwrite=True):
    """One complete write of ``kind`` into ``workdir/screen.zarr``."""
    workdir = Path(workdir)
    store = workdir / "screen.zarr"
    if kind == "images":
        import pandas as pd

        from cpzarr.ingest import ingest

        table = pd.read_csv(workdir / "load_data.csv")
        ingest(table, store, scheduler="sync", progress=False, overwrite=overwrite)
    elif kind == "cells":
        from cpzarr.store import write_node

        write_node(store, "cells", cells(), overwrite=overwrite)
    elif kind == "features":
        from cpzarr.features.cnn import write_features

        write_features(store, "kill", features(), chunk_cells=250, overwrite=overwrite, scheduler="sync",
                       progress=False)
    elif kind == "profiles":
        from cpzarr.profiles import write_profiles

        write_profiles(profiles(), store, node=GROUPS["profiles"])
    else:
        raise ValueError(kind)


def main(kind, workdir):
    warnings.simplefilter("ignore")
    import cpzarr.features.cnn  # noqa: F401  (imports done before "ready")
    import cpzarr.profiles  # noqa: F401

    print("ready", flush=True)
    while True:
        write(kind, workdir, overwrite=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
