"""Benchmarks for classical features and feature imports (cells per second).

Run with ``asv run --python=same --bench classic`` (or ``asv dev``). The classical benchmark
measures real LINCS crops (8-bit, 5 channels, one site of ``../shared/data``) when they are there,
and drawn synthetic cells otherwise.
"""

from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LINCS = SHARED / "lincs_images_SQ00015198_SQ00015230"
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def _lincs_crops(box, n):
    """Crops of the first ``n`` cells of LINCS SQ00015198 A01 site 1 that fit in the image."""
    import imageio.v3 as iio
    import pandas as pd

    site = np.stack(
        [iio.imread(LINCS / "images" / "SQ00015198" / f"r01c01f01p01-ch{c}sk1fk1fl1.png") for c in range(1, 6)]
    )
    xy = pd.read_csv(LINCS / "locations" / "SQ00015198" / "A01-1-Nuclei.csv").to_numpy()
    half = box // 2
    crops = []
    for x, y in np.round(xy).astype(int):
        if half <= y <= site.shape[1] - half and half <= x <= site.shape[2] - half:
            crops.append(site[:, y - half : y + half, x - half : x + half])
        if len(crops) == n:
            break
    return np.stack(crops)


def _synthetic_crops(box, n):
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    crops = (rng.random((n, 5, box, box)) * 40).astype(np.uint8)
    for i in range(n):
        centre = (box // 2 + rng.integers(-2, 3), box // 2 + rng.integers(-2, 3))
        crops[i, 0][disk(centre, box // 8, shape=(box, box))] += 150
        crops[i, 1:, *disk(centre, box // 3, shape=(box, box))] += 60
    return crops


def _crops(box, n):
    import xarray as xr

    data = _lincs_crops(box, n) if LINCS.is_dir() else _synthetic_crops(box, n)
    return xr.DataArray(data, dims=("cell", "channel", "y", "x"), coords={"channel": CHANNELS})


class ClassicalFeatures:
    """Classical features of 5-channel crops on one core (one dask chunk)."""

    params = [[64, 128], [(3,), (3, 5)]]
    param_names = ["box", "scales"]
    n_cells = 48

    def setup(self, box, scales):
        from cpzarr.features.classic import classical

        self.crops = _crops(box, self.n_cells)
        self.classical = classical
        classical(self.crops[:2], scales=scales)  # imports and first-call costs out of the timing

    def time_classical(self, box, scales):
        self.classical(self.crops, scales=scales).values

    def peakmem_classical(self, box, scales):
        self.classical(self.crops, scales=scales).values

    def track_cells_per_second(self, box, scales):
        import time

        start = time.perf_counter()
        self.classical(self.crops, scales=scales).values
        return self.crops.sizes["cell"] / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"

    def track_cells_per_cpu_second(self, box, scales):
        # CPU time of this process: steadier than wall time on a shared machine.
        import time

        start = time.process_time()
        self.classical(self.crops, scales=scales).values
        return self.crops.sizes["cell"] / (time.process_time() - start)

    track_cells_per_cpu_second.unit = "cells/cpu-s"


class ClassicalPipeline:
    """Store → crops → classical features → ``/features/classical`` written, on a synthetic screen."""

    timeout = 300

    def setup_cache(self):
        import tempfile
        import warnings

        from cpzarr.ingest import ingest
        from cpzarr.synthetic import make_screen

        # One fixed folder, rewritten by each run, so repeated runs leave one screen behind.
        root = Path(tempfile.gettempdir()) / "cpzarr-bench-classic"
        info = make_screen(root / "raw", plates=1, batches=1, sites=2, image_size=512, cells_per_site=60,
                           moas=1, compounds_per_moa=1, dmso_wells=1, seed=0, overwrite=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ingest(info.load_data, root / "screen.zarr", platemap=info.platemap, progress=False, overwrite=True)
        return str(root)

    def setup(self, root):
        import pandas as pd

        from cpzarr.store import open_screen

        self.store = Path(root) / "screen.zarr"
        self.screen = open_screen(self.store)
        self.cells = pd.read_csv(Path(root) / "raw" / "truth.csv")

    def _run(self):
        from cpzarr.crops import crops
        from cpzarr.features.classic import classical
        from cpzarr.features.cnn import write_features

        view = crops(self.screen, box=64, edge="pad", cells=self.cells)
        write_features(self.store, "classical", classical(view, scales=(3,)), overwrite=True, progress=False)
        return view.sizes["cell"]

    def time_store_to_features(self, root):
        self._run()

    def track_cells_per_second(self, root):
        import time

        start = time.perf_counter()
        n = self._run()
        return n / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"


class ImportFeatures:
    """Import of the real DeepProfiler npz files and CellProfiler CSVs (skipped without them)."""

    def setup(self):
        if not SHARED.is_dir():
            raise NotImplementedError("../shared/data is absent")

    def time_import_deepprofiler(self):
        from cpzarr.features.imports import import_deepprofiler

        import_deepprofiler(SHARED / "deepprofiler_single_cell_lincs" / "features")

    def time_import_cellprofiler(self):
        from cpzarr.features.imports import import_cellprofiler

        import_cellprofiler(SHARED / "cellprofiler_single_cell_jump" / "BR00116991_cpg0043")
