"""Benchmarks of single-cell crops (cpzarr.crops) on LINCS-like stores.

A LINCS site is 1080 x 1080 pixels, 5 channels, about 230 cells; DeepProfiler's box is 128 px.
The stores are written directly in the contract's layout (images chunked by site, sharded by
well, zstd level 1 as cpzarr.ingest writes), from four rendered synthetic sites reused across the store, so that setting up a
many-site store takes seconds while every chunk still has to be read and decoded.

Targets (issue 3): >= 10,000 cells/s sequentially through a plate, >= 1,000 cells/s for random
access across a multi-plate store, on 2 cores.
"""

import shutil
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from cpzarr.crops import crops, sample
from cpzarr.store import open_screen

BOX = 128
IMAGE = 1080
# the generator's treated wells hold fewer cells than its DMSO wells: 300 gives about 230 per site
RENDER_CELLS = 300
SITES_PER_WELL = 4


def _render_sites(folder, dtype):
    """Four rendered LINCS-like sites (pixels and their truth cells)."""
    import tifffile

    from cpzarr.synthetic import make_screen

    info = make_screen(folder, plates=1, batches=1, sites=2, image_size=IMAGE, cells_per_site=RENDER_CELLS,
                       moas=1, compounds_per_moa=1, dmso_wells=1, dtype=dtype, labels=False, seed=7)
    table = pd.read_csv(info.load_data)
    truth = pd.read_csv(info.truth)
    sites = []
    for row in table.itertuples():
        pixels = np.stack([
            tifffile.imread(Path(getattr(row, f"PathName_Orig{c}")) / getattr(row, f"FileName_Orig{c}"))
            for c in info.channels
        ])
        cells = truth[(truth.well == row.Metadata_Well) & (truth.site == row.Metadata_Site)][["x", "y"]]
        sites.append((pixels, cells.reset_index(drop=True)))
    return sites, list(info.channels)


def write_lincs_like_store(path, *, plates=1, wells=8, sites=SITES_PER_WELL, dtype="uint8"):
    """Write a store of ``plates x wells x sites`` LINCS-like sites with a ``/cells`` node.

    Parameters
    ----------
    path : str or Path
        Store directory to create.
    plates, wells, sites : int
        Store size.
    dtype : str
        Pixel type ("uint8" as the LINCS PNGs, "uint16" as raw TIFFs).

    Returns
    -------
    int
        Number of cells in the store.
    """
    import xarray as xr
    import zarr

    from cpzarr import __version__
    from cpzarr.cells import cells_from_table, write_cells

    path = Path(path)
    rendered, channels = _render_sites(path.with_suffix(".render"), dtype)
    shutil.rmtree(path.with_suffix(".render"), ignore_errors=True)
    plate_names = [f"P{p + 1:02d}" for p in range(plates)]
    well_names = [f"{'ABCDEFGHIJKLMNOP'[w // 24]}{w % 24 + 1:02d}" for w in range(wells)]
    root = xr.Dataset(
        {"present": (("plate", "well", "site"), np.ones((plates, wells, sites), bool)),
         "compound": (("plate", "well"), np.array([[f"c{w % 5}" for w in range(wells)]] * plates, object))},
        coords={"plate": np.array(plate_names, object), "well": np.array(well_names, object),
                "site": np.arange(1, sites + 1), "channel": np.array(channels, object)},
        attrs={"cpzarr_version": __version__, "complete": True},
    )
    root.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    shape = (plates, wells, sites, len(channels), IMAGE, IMAGE)
    images = group.create_array(
        "images", shape=shape, dtype=dtype, chunks=(1, 1, 1) + shape[3:], shards=(1, 1, sites) + shape[3:],
        compressors=zarr.codecs.ZstdCodec(level=1), dimension_names=["plate", "well", "site", "channel", "y", "x"],
        fill_value=0,
    )
    rows = []
    k = 0
    for p in range(plates):
        for w in range(wells):
            well = np.empty((sites,) + shape[3:], dtype)
            for s in range(sites):
                pixels, cells = rendered[k % len(rendered)]
                well[s] = pixels
                rows.append(cells.assign(plate=plate_names[p], well=well_names[w], site=s + 1))
                k += 1
            images[p, w] = well
    table = pd.concat(rows, ignore_index=True)
    opened = xr.open_zarr(path, consolidated=False, zarr_format=3)
    write_cells(path, cells_from_table(table, opened["images"]))
    return len(table)


def _first_pixels(block):
    # Materialises the crops of a block and hands back a tiny result, as a consumer would.
    return block[:, 0, 0, 0].astype(np.float64)


class CropsSequential:
    """All crops of one plate (8 wells x 4 sites, about 7,400 cells, 5,800 whose box fits), site after site."""

    params = (["uint8", "uint16"],)
    param_names = ["dtype"]
    timeout = 300
    number = 1
    repeat = 3

    def setup_cache(self):
        folder = Path.cwd()  # asv runs setup_cache in a folder it deletes afterwards
        return {d: (str(folder / f"{d}.zarr"), write_lincs_like_store(folder / f"{d}.zarr", dtype=d))
                for d in self.params[0]}

    def setup(self, stores, dtype):
        self.view = crops(open_screen(stores[dtype][0]), box=BOX)
        self.cells = self.view.sizes["cell"]

    def _materialise(self):
        blocks = self.view.data.map_blocks(_first_pixels, drop_axis=[1, 2, 3], dtype=np.float64)
        dask.compute(blocks, scheduler="threads", num_workers=2)

    def time_crops_plate(self, stores, dtype):
        self._materialise()

    def track_cells_per_second(self, stores, dtype):
        start = time.perf_counter()
        self._materialise()
        return self.cells / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"

    def peakmem_crops_plate(self, stores, dtype):
        self._materialise()


class SampleRandom:
    """Random training batches across a 4-plate store (128 sites, about 29,000 cells)."""

    params = ([256], [1, 8])
    param_names = ["batch", "cells_per_site"]
    timeout = 300
    number = 1
    repeat = 5

    def setup_cache(self):
        folder = Path.cwd()  # asv runs setup_cache in a folder it deletes afterwards
        store = folder / "screen.zarr"
        write_lincs_like_store(store, plates=4, wells=8, dtype="uint8")
        return str(store)

    def setup(self, store, batch, cells_per_site):
        self.screen = open_screen(store)
        self.seed = 0
        # the first call prepares the cell table, which later batches of a training loop reuse
        sample(self.screen, 1, box=BOX, seed=0)

    def time_sample(self, store, batch, cells_per_site):
        self.seed += 1
        sample(self.screen, batch, box=BOX, seed=self.seed, cells_per_site=cells_per_site, scheduler="threads")

    def track_cells_per_second(self, store, batch, cells_per_site):
        start = time.perf_counter()
        sample(self.screen, batch, box=BOX, seed=12345, cells_per_site=cells_per_site, scheduler="threads")
        return batch / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"
