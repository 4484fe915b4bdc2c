"""Benchmarks of pre-trained CNN features (cpzarr.features.extract / write_features).

The whole path is timed: a LINCS-like store (1080 x 1080 sites, 5 channels, ~230 cells per site,
written by ``benchmark_crops.write_lincs_like_store``) -> ``cpzarr.crops`` (128 px) ->
``extract`` -> ``write_features`` into ``/features/<model>``. Each cell is 5 network passes (one
per channel). The model is built and compiled in ``setup`` (once per worker process in real runs).

Target (issue 4): >= 100 cells/s for EfficientNet-Lite0 on 2 cores. Reference measured on this
machine: a plain single-process TensorFlow loop at batch 64 runs Lite0 at ~65 cells/s.
"""

import time
from pathlib import Path

BOX = 128


def _store():
    from .benchmark_crops import write_lincs_like_store

    path = Path.cwd() / "screen.zarr"  # asv runs setup_cache in a folder it deletes afterwards
    # Eight sites: enough for both cores to stay busy to the end and for the node's fixed costs
    # (skeleton, provenance) to weigh as little as they do on a real plate of hundreds of sites.
    write_lincs_like_store(path, plates=1, wells=4, sites=2, dtype="uint8")
    return str(path)


class CNNFeatures:
    """Lite0 features of eight LINCS-like sites (the cells whose 128 px box fits), store to store."""

    params = (["efficientnet-lite0"], [64], [False, "bfloat16"])
    param_names = ["model", "batch_size", "mixed_precision"]
    timeout = 900
    number = 1
    repeat = 1
    warmup_time = 0

    def setup_cache(self):
        return _store()

    def setup(self, store, model, batch_size, mixed_precision):
        from cpzarr.crops import crops
        from cpzarr.features.cnn import extract
        from cpzarr.store import open_screen

        self.view = crops(open_screen(store), box=BOX)
        self.cells = self.view.sizes["cell"]
        # Build and compile the model of this process before timing (a worker does it once).
        extract(self.view.isel(cell=slice(0, 4)), model=model, batch_size=batch_size,
                mixed_precision=mixed_precision).compute(scheduler="sync")

    def _run(self, store, model, batch_size, mixed_precision):
        from cpzarr.features.cnn import extract, write_features

        features = extract(self.view, model=model, batch_size=batch_size, mixed_precision=mixed_precision)
        write_features(store, f"bench-{model}", features, overwrite=True, progress=False, scheduler="threads")

    def time_features_written(self, store, model, batch_size, mixed_precision):
        self._run(store, model, batch_size, mixed_precision)

    def track_cells_per_second(self, store, model, batch_size, mixed_precision):
        start = time.perf_counter()
        self._run(store, model, batch_size, mixed_precision)
        return self.cells / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"

    def peakmem_features_written(self, store, model, batch_size, mixed_precision):
        self._run(store, model, batch_size, mixed_precision)


class Scaling:
    """The per-pixel pass of ``extract`` over one LINCS-like site's crops (230 cells, 5 channels).

    Min-max per crop and channel and the model's input range in one multiply-add; the three
    planes are replicated later, one batch at a time.
    """

    def setup(self):
        import numpy as np

        from cpzarr.features.cnn import _scaled

        self.scaled = _scaled
        self.crops = np.random.default_rng(0).integers(0, 255, (230, 5, BOX, BOX)).astype(np.uint8)

    def time_scale_site(self):
        self.scaled(self.crops, "efficientnet-lite0")



class Network:
    """The float32 Lite0 network alone on 128 px planes, as ``extract`` calls it (folded, one plane).

    ``track_cell_ceiling`` is the CPU time of one batch turned into the cells per second that the
    network alone would allow if every core of the machine did nothing else: the bound that the
    end-to-end figure of :class:`CNNFeatures` is measured against.
    """

    timeout = 300

    def setup(self):
        import numpy as np

        from cpzarr.features.cnn import _cached_model

        self.model = _cached_model("efficientnet-lite0", "imagenet", None, (BOX, BOX), False)
        self.batch = np.random.default_rng(0).uniform(-1, 1, (64, BOX, BOX, 1)).astype("float32")
        self.model.predict_on_batch(self.batch)

    def time_batch_of_64_planes(self):
        self.model.predict_on_batch(self.batch)

    def track_cell_ceiling(self):
        import os

        start = time.process_time()
        for _ in range(4):
            self.model.predict_on_batch(self.batch)
        per_plane = (time.process_time() - start) / (4 * len(self.batch))
        return (os.cpu_count() or 1) / (5 * per_plane)

    track_cell_ceiling.unit = "cells/s"
