"""Benchmarks of the cells stage (cpzarr.cells): nuclei detection and location import.

Detection runs on a LINCS-like store (1080 x 1080 sites, 5 channels, about 230 cells per site),
written by :func:`benchmarks.benchmark_crops.write_lincs_like_store`; the figure of merit is
sites per second (``track_sites_per_second``).
"""

import shutil
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.cells import detect_nuclei, import_locations, segment_nuclei
from cpzarr.store import open_screen

from .benchmark_crops import write_lincs_like_store


class DetectNuclei:
    """Nuclei detection over one plate of 8 sites (2 wells x 4 sites), 2 threads."""

    timeout = 300
    number = 1
    repeat = 3

    def setup_cache(self):
        folder = Path.cwd()  # asv runs setup_cache in a folder it deletes afterwards
        store = folder / "screen.zarr"
        write_lincs_like_store(store, plates=1, wells=2, dtype="uint8")
        return str(store)

    def setup(self, store):
        self.screen = open_screen(store)
        self.sites = int(self.screen["present"].sum())
        # scikit-image's submodules load on the first segmentation; keep that out of the timing
        segment_nuclei(np.zeros((32, 32)), threshold=1.0)

    def time_detect_nuclei(self, store):
        detect_nuclei(self.screen, scheduler="threads")

    def track_sites_per_second(self, store):
        start = time.perf_counter()
        detect_nuclei(self.screen, scheduler="threads")
        return self.sites / (time.perf_counter() - start)

    track_sites_per_second.unit = "sites/s"


class ImportLocations:
    """Importing DeepProfiler location files: 64 sites of about 230 cells."""

    timeout = 120

    def setup(self):
        self.folder = Path(tempfile.mkdtemp(prefix="cpzarr-bench-locations-"))
        rng = np.random.default_rng(0)
        wells = [f"A{w:02d}" for w in range(1, 17)]
        for well in wells:
            for site in range(1, 5):
                xy = rng.uniform(0, 1079, (230, 2))
                (self.folder / "P01").mkdir(exist_ok=True)
                pd.DataFrame(xy, columns=["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]).to_csv(
                    self.folder / "P01" / f"{well}-{site}-Nuclei.csv", index=False)
        images = da.zeros((1, 16, 4, 5, 1080, 1080), "uint8", chunks=(1, 1, 1, 5, 1080, 1080))
        self.screen = xr.Dataset(
            {"images": (("plate", "well", "site", "channel", "y", "x"), images)},
            coords={"plate": ["P01"], "well": wells, "site": [1, 2, 3, 4], "channel": ["DNA", "ER", "RNA", "AGP", "Mito"]},
        )

    def teardown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def time_import_locations(self):
        import_locations(self.screen, self.folder)
