"""Benchmarks of ingest (cpzarr.ingest): throughput against merely reading the files, store size.

One synthetic plate (10 wells x 3 sites x 5 channels of 512 x 512, about 60 cells per site) is
written once as 16-bit TIFFs (how microscopes deliver them, uncompressed) and once more as
16-bit PNGs (compressed, like the LINCS images). The figures of merit:

- ``track_ingest_over_read``: ingest time / the time to read and decode the same files once in one
  process (the issue's target: at most 1.5 with one worker, below 1 with two);
- ``track_disk_over_raw``: store size on disk / raw pixel bytes.
"""

import itertools
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cpzarr.ingest import ingest, read_image
from cpzarr.store import screen_info
from cpzarr.synthetic import make_screen

_counter = itertools.count()


def _plate(folder: Path) -> dict:
    """Write the plate as TIFF (make_screen) and as PNG copies; return each format's load_data CSV."""
    info = make_screen(folder / "raw", plates=1, batches=1, wells=10, sites=3, image_size=512, cells_per_site=60)
    table = pd.read_csv(info.load_data)
    png = folder / "png"
    png.mkdir()
    for ch in info.channels:
        names = []
        for row in table.itertuples(index=False):
            source = Path(getattr(row, f"PathName_Orig{ch}")) / getattr(row, f"FileName_Orig{ch}")
            name = source.with_suffix(".png").name
            Image.fromarray(read_image(source)).save(png / name, compress_level=6)
            names.append(name)
        table[f"FileName_Orig{ch}"] = names
        table[f"PathName_Orig{ch}"] = str(png)
    table.to_csv(folder / "load_data_png.csv", index=False)
    return {"tiff": str(info.load_data), "png": str(folder / "load_data_png.csv")}


def _files(table) -> list:
    frame = pd.read_csv(table)
    channels = [c[len("FileName_Orig"):] for c in frame.columns if c.startswith("FileName_Orig")]
    return [str(Path(p) / f) for ch in channels for f, p in zip(frame[f"FileName_Orig{ch}"], frame[f"PathName_Orig{ch}"])]


def _read_all(files) -> int:
    return sum(read_image(f).nbytes for f in files)


class IngestPlate:
    """Ingest of one plate (150 files) with 1 or 2 local worker threads, TIFF or PNG sources."""

    params = (["tiff", "png"], [1, 2])
    param_names = ["format", "workers"]
    timeout = 600
    number = 1
    repeat = 3

    def setup_cache(self):
        folder = Path.cwd()  # asv runs setup_cache in a folder it deletes afterwards
        return {"folder": str(folder), "tables": _plate(folder)}

    def setup(self, cache, fmt, workers):
        self.table = cache["tables"][fmt]
        self.files = _files(self.table)
        self.work = Path(tempfile.mkdtemp(prefix="cpzarr-bench-ingest-store-"))
        _read_all(self.files)  # warm the page cache, so reading and ingest start equal

    def teardown(self, cache, fmt, workers):
        shutil.rmtree(self.work, ignore_errors=True)

    def _ingest(self, workers):
        store = self.work / f"s{next(_counter)}.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ingest(self.table, store, progress=False, scheduler="threads", n_workers=workers)
        return store

    def time_read_files(self, cache, fmt, workers):
        _read_all(self.files)

    def time_ingest(self, cache, fmt, workers):
        self._ingest(workers)

    def peakmem_ingest(self, cache, fmt, workers):
        self._ingest(workers)

    def track_ingest_over_read(self, cache, fmt, workers):
        # interleaved repeats, best of each: the least disturbed run of both on a shared machine
        reads, ingests = [], []
        for _ in range(3):
            start = time.perf_counter()
            _read_all(self.files)
            reads.append(time.perf_counter() - start)
            start = time.perf_counter()
            self._ingest(workers)
            ingests.append(time.perf_counter() - start)
        return min(ingests) / min(reads)

    track_ingest_over_read.unit = "ratio"

    def track_disk_over_raw(self, cache, fmt, workers):
        info = screen_info(self._ingest(workers))
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
