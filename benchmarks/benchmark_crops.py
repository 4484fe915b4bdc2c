"""Benchmarks of single-cell crops (cpzarr.crops) on LINCS-like stores.

A LINCS site is 1080 x 1080 pixels, 5 channels, about 230 cells; DeepProfiler's box is 128 px.
The stores are written directly in the contract's layout (images chunked by site, sharded by
well, compressed as cpzarr.ingest compresses them: zstd level 1 inside Blosc with its block size,
bit shuffle for 8-bit and byte shuffle for 16-bit pixels), from four rendered synthetic sites
reused across the store, so that setting up a many-site store takes seconds while every chunk
still has to be read and decoded.

Targets (issue 3): >= 10,000 cells/s sequentially through a plate, >= 1,000 cells/s for random
access across a multi-plate store, on 2 cores. Random access is decode-bound: a site read decodes
the Blosc blocks under the drawn cells' boxes, which with the ingest's 1 MiB blocks is the whole
site (~7 ms of one core for a uint8 LINCS site here) and with 64 KiB blocks a quarter of it for
one cell; so the cells served per site read (cells_per_site) and the block size set the ceiling.
"""

import shutil
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from cpzarr.crops import Sampler, crops, sample
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


def ingest_compressor(dtype, blocksize=None):
    """The images' compressor as ``cpzarr.ingest`` writes it (zstd level 1 inside Blosc).

    ``blocksize`` (bytes) replaces the ingest's Blosc block size.
    """
    from zarr.codecs import BloscCodec

    from cpzarr.ingest import _BLOSC_BLOCK

    shuffle = "shuffle" if np.dtype(dtype).itemsize > 1 else "bitshuffle"
    return BloscCodec(cname="zstd", clevel=1, shuffle=shuffle, blocksize=blocksize or _BLOSC_BLOCK)


def write_lincs_like_store(path, *, plates=1, wells=8, sites=SITES_PER_WELL, dtype="uint8", compressor=None):
    """Write a store of ``plates x wells x sites`` LINCS-like sites with a ``/cells`` node.

    Parameters
    ----------
    path : str or Path
        Store directory to create.
    plates, wells, sites : int
        Store size.
    dtype : str
        Pixel type ("uint8" as the LINCS PNGs, "uint16" as raw TIFFs).
    compressor : zarr codec, optional
        The images' compressor; the ingest's by default.

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
        compressors=compressor or ingest_compressor(dtype), fill_value=0,
        dimension_names=["plate", "well", "site", "channel", "y", "x"],
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
        # the 5,800 cells whose box fits, as measured before crops() defaulted to edge="pad"
        self.view = crops(open_screen(stores[dtype][0]), box=BOX, edge="skip")
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


# Blosc block sizes of the random-access stores: the ingest's, and small blocks, of which a random
# cell's bands are a small share (a trade against whole-site decodes, which large blocks speed up)
BLOCKS = {"ingest": None, "64KiB": 1 << 16}


def _multi_plate_stores(self):
    """The random-access benchmarks' stores, written once for all of them (one setup_cache)."""
    stores = {}
    for name, blocksize in BLOCKS.items():
        store = Path.cwd() / f"screen-{name}.zarr"  # asv runs setup_cache in a folder it deletes afterwards
        compressor = ingest_compressor("uint8", blocksize)
        write_lincs_like_store(store, plates=4, wells=8, dtype="uint8", compressor=compressor)
        stores[name] = str(store)
    return stores


class SampleRandom:
    """One-off random batches across a 4-plate store (128 sites, about 29,000 cells): ``sample``."""

    params = ([256], [1, 8])
    param_names = ["batch", "cells_per_site"]
    timeout = 300
    number = 1
    repeat = 5
    setup_cache = _multi_plate_stores

    def setup(self, stores, batch, cells_per_site):
        self.screen = open_screen(stores["ingest"])
        self.seed = 0
        # the first call prepares the cell table, which later batches of a training loop reuse
        sample(self.screen, 1, box=BOX, seed=0)

    def time_sample(self, stores, batch, cells_per_site):
        self.seed += 1
        sample(self.screen, batch, box=BOX, seed=self.seed, cells_per_site=cells_per_site, workers=2)

    def track_cells_per_second(self, stores, batch, cells_per_site):
        start = time.perf_counter()
        sample(self.screen, batch, box=BOX, seed=12345, cells_per_site=cells_per_site, workers=2)
        return batch / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"


class SamplerStream:
    """A training loop's stream across the 4-plate store: ``Sampler`` batches of 256 crops.

    Sites are drawn at random and read by 2 threads; ``cells_per_site`` cells of each join a pool
    of 4 batches, from which each batch is drawn. The rate is the steady state of a long run: it
    is timed from the first batch, which fills the pool, over the next ``BATCHES``.
    """

    BATCHES = 16
    params = ([1, 4, 8], list(BLOCKS))
    param_names = ["cells_per_site", "blocks"]
    timeout = 300
    number = 1
    repeat = 3
    setup_cache = _multi_plate_stores

    def setup(self, stores, cells_per_site, blocks):
        self.screen = open_screen(stores[blocks])
        sample(self.screen, 1, box=BOX, seed=0)  # prepares the cell table, as Sampler's first use would

    def _stream(self, cells_per_site, seed):
        return Sampler(self.screen, 256, box=BOX, cells_per_site=cells_per_site, pool_batches=4, seed=seed,
                       workers=2)

    def track_cells_per_second(self, stores, cells_per_site, blocks):
        with self._stream(cells_per_site, 1) as batches:
            next(batches)
            start = time.perf_counter()
            for _ in range(self.BATCHES):
                next(batches)
            return self.BATCHES * 256 / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"

    def peakmem_stream(self, stores, cells_per_site, blocks):
        with self._stream(cells_per_site, 2) as batches:
            for _ in range(self.BATCHES + 1):
                next(batches)
