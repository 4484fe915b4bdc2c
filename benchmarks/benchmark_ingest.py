"""Benchmarks of ingest (cpzarr.ingest): throughput against merely reading the files, store size.

The plate is shaped like a real one: 384 wells (A01 to P24) of one 1080 x 1080 site in 5
channels, 1,920 files, once as uncompressed 16-bit TIFFs (how microscopes deliver them) and once
as 8-bit PNGs (how LINCS distributes its images). Rendering 384 distinct synthetic sites would
take minutes, so 24 are rendered and each well's files are hard links to one of them: every file
is still opened, parsed, read and decoded on its own, and every well still compressed and written
as its own shard, while the page cache holds 24 sites (280 MB of TIFF) instead of 384 (4.5 GB);
both sides of the ratio read warm files.

Figures of merit:

- ``IngestPlate.track_ingest_over_read``: ingest time / the time to read and decode the same files
  once in one process with plain tifffile / Pillow (the issue's target: at most 1.5 with one
  worker, below 1 with two);
- ``IngestStoreSize.track_disk_over_raw``: store size on disk / raw pixel bytes.
"""

import itertools
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from cpzarr.ingest import ingest
from cpzarr.store import screen_info
from cpzarr.synthetic import make_screen

ROWS, COLUMNS, DISTINCT = "ABCDEFGHIJKLMNOP", 24, 24
_counter = itertools.count()


def make_plate(folder: Path, image_size=1080) -> dict:
    """Write the 384-well plate as TIFF and PNG; return each format's load_data CSV."""
    folder = Path(folder)
    tables = {}
    for fmt, dtype in (("tiff", "uint16"), ("png", "uint8")):
        render = folder / f"render-{fmt}"
        info = make_screen(render, plates=1, batches=1, wells=DISTINCT // 2, sites=2, image_size=image_size,
                           cells_per_site=150, dtype=dtype, labels=False)
        sites = []
        for row in pd.read_csv(info.load_data).itertuples(index=False):
            paths = [Path(getattr(row, f"PathName_Orig{ch}")) / getattr(row, f"FileName_Orig{ch}")
                     for ch in info.channels]
            if fmt == "png":
                for path in paths:
                    Image.fromarray(tifffile.imread(path)).save(path.with_suffix(".png"))
                paths = [path.with_suffix(".png") for path in paths]
            sites.append(paths)
        images = folder / fmt
        images.mkdir()
        rows = []
        for i, well in enumerate(f"{r}{c:02d}" for r in ROWS for c in range(1, COLUMNS + 1)):
            row = {"Metadata_Plate": "BENCH", "Metadata_Well": well, "Metadata_Site": 1}
            for ch, source in zip(info.channels, sites[i % len(sites)]):
                name = f"BENCH_{well}_s1_{ch}{source.suffix}"
                os.link(source, images / name)
                row[f"FileName_Orig{ch}"], row[f"PathName_Orig{ch}"] = name, str(images)
            rows.append(row)
        shutil.rmtree(render)
        tables[fmt] = str(folder / f"load_data_{fmt}.csv")
        pd.DataFrame(rows).to_csv(tables[fmt], index=False)
    return tables


def plate_files(table) -> list:
    frame = pd.read_csv(table)
    channels = [c[len("FileName_Orig"):] for c in frame.columns if c.startswith("FileName_Orig")]
    return [str(Path(p) / f) for ch in channels
            for f, p in zip(frame[f"FileName_Orig{ch}"], frame[f"PathName_Orig{ch}"])]


def read_files(files) -> int:
    """Read and decode every file once, the plain way (the reference ingest is compared with)."""
    total = 0
    for path in files:
        if path.endswith(".tif"):
            total += tifffile.imread(path).nbytes
        else:
            with Image.open(path) as im:
                total += np.asarray(im).nbytes
    return total


def warm(files) -> None:
    """Bring the files into the page cache without decoding them."""
    for path in files:
        with open(path, "rb") as f:
            f.read()


def _plate_cache(self):
    return make_plate(Path.cwd())  # asv runs setup_cache in a folder it deletes afterwards


def run_ingest(table, work: Path, workers: int) -> Path:
    store = work / f"s{next(_counter)}.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no platemap: metadata filled, with warnings
        ingest(table, store, progress=False, scheduler="threads", n_workers=workers)
    return store


class _Plate:
    timeout = 900
    number = 1
    repeat = 1
    setup_cache = _plate_cache  # one shared function: asv renders the plate once for every class

    def setup(self, tables, fmt, *args):
        import dask.array  # noqa: F401  ingest imports these on first use (2 s on a busy machine);
        import xarray  # noqa: F401  the benchmarks time ingesting, not importing
        import zarr  # noqa: F401

        self.table = tables[fmt]
        self.files = plate_files(self.table)
        self.work = Path(tempfile.mkdtemp(prefix="cpzarr-bench-ingest-store-"))
        warm(self.files)

    def teardown(self, tables, fmt, *args):
        shutil.rmtree(self.work, ignore_errors=True)


class ReadPlate(_Plate):
    """The reference: reading and decoding the plate's 1,920 files once, in one process."""

    params = ["tiff", "png"]
    param_names = ["format"]

    def time_read_files(self, tables, fmt):
        read_files(self.files)


class IngestPlate(_Plate):
    """Ingest of the 384-well plate with 1 or 2 local worker threads, from TIFF or PNG."""

    params = (["tiff", "png"], [1, 2])
    param_names = ["format", "workers"]

    def time_ingest(self, tables, fmt, workers):
        run_ingest(self.table, self.work, workers)

    def peakmem_ingest(self, tables, fmt, workers):
        run_ingest(self.table, self.work, workers)

    def track_ingest_over_read(self, tables, fmt, workers):
        # interleaved, best of each: the least disturbed run of both on a shared machine
        reads, ingests = [], []
        for _ in range(2):
            start = time.perf_counter()
            read_files(self.files)
            reads.append(time.perf_counter() - start)
            start = time.perf_counter()
            store = run_ingest(self.table, self.work, workers)
            ingests.append(time.perf_counter() - start)
            shutil.rmtree(store)
        return min(ingests) / min(reads)

    track_ingest_over_read.unit = "ratio"


class IngestStoreSize(_Plate):
    """Store size on disk over the raw pixel bytes it holds."""

    params = ["tiff", "png"]
    param_names = ["format"]

    def track_disk_over_raw(self, tables, fmt):
        info = screen_info(run_ingest(self.table, self.work, 2))
        return info["disk_bytes"] / info["raw_bytes"]

    track_disk_over_raw.unit = "ratio"


class ReadOneSite:
    """Reading one site (5 channels) back from the store: one chunk of one shard."""

    number = 5
    repeat = 5

    def setup_cache(self):
        folder = Path.cwd()
        info = make_screen(folder / "raw", plates=1, batches=1, sites=3, image_size=512, cells_per_site=30)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ingest(info.load_data, folder / "s.zarr", progress=False)
        return str(folder / "s.zarr")

    def setup(self, store):
        from cpzarr.store import open_screen

        self.images = open_screen(store)["images"]

    def time_read_site(self, store):
        np.asarray(self.images.isel(plate=0, well=1, site=2).values)
