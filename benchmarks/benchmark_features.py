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

from asv_runner.benchmarks.mark import skip_for_params

BOX = 128


def _store():
    from .benchmark_crops import write_lincs_like_store

    path = Path.cwd() / "screen.zarr"  # asv runs setup_cache in a folder it deletes afterwards
    # Eight sites: enough for both cores to stay busy to the end and for the node's fixed costs
    # (skeleton, provenance) to weigh as little as they do on a real plate of hundreds of sites.
    write_lincs_like_store(path, plates=1, wells=4, sites=2, dtype="uint8")
    return str(path)


class CNNFeatures:
    """Lite0 features of eight LINCS-like sites (the cells whose 128 px box fits), store to store.

    ``engine``: ``"cluster"`` is what ``cpzarr profile`` and ``cpzarr run`` use by default, a local
    cluster of one single-threaded worker process per core (``cpzarr.cluster.get_client``);
    ``"threads"`` is the threaded scheduler in this process, with TensorFlow's pools set as
    ``cpzarr profile`` sets them (``cpzarr.cluster.tensorflow_threads``). Peak memory is measured
    for ``"threads"`` only (asv sees this process, not the workers).
    """

    params = (["efficientnet-lite0"], [None], [False, "bfloat16"], ["cluster", "threads"])
    param_names = ["model", "batch_size", "mixed_precision", "engine"]
    timeout = 900
    number = 1
    repeat = 1
    warmup_time = 0

    def setup_cache(self):
        return _store()

    def setup(self, store, model, batch_size, mixed_precision, engine):
        import contextlib
        import os

        from cpzarr.cluster import get_client, local_threads, tensorflow_threads
        from cpzarr.crops import crops
        from cpzarr.store import open_screen

        # the cells whose box fits, as measured before crops() defaulted to edge="pad"
        self.view = crops(open_screen(store), box=BOX, edge="skip")
        self.cells = self.view.sizes["cell"]
        self._exit = contextlib.ExitStack()
        if engine == "cluster":
            self.scheduler = self._exit.enter_context(get_client(dashboard_address=None))
        else:
            self.scheduler = "threads"
            os.environ.update(tensorflow_threads(local_threads()))  # as cpzarr profile does, before TensorFlow starts
        _warm(self.view, model, batch_size, mixed_precision, self.scheduler)

    def teardown(self, store, model, batch_size, mixed_precision, engine):
        self._exit.close()

    def _run(self, store, model, batch_size, mixed_precision):
        from cpzarr.features.cnn import extract, write_features

        features = extract(self.view, model=model, batch_size=batch_size, mixed_precision=mixed_precision,
                           scheduler=self.scheduler)
        write_features(store, f"bench-{model}", features, overwrite=True, progress=False,
                       scheduler=self.scheduler)

    def time_features_written(self, store, model, batch_size, mixed_precision, engine):
        self._run(store, model, batch_size, mixed_precision)

    def track_cells_per_second(self, store, model, batch_size, mixed_precision, engine):
        start = time.perf_counter()
        self._run(store, model, batch_size, mixed_precision)
        return self.cells / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"

    @skip_for_params([("efficientnet-lite0", None, False, "cluster"), ("efficientnet-lite0", None, "bfloat16", "cluster")])
    def peakmem_features_written(self, store, model, batch_size, mixed_precision, engine):
        self._run(store, model, batch_size, mixed_precision)


def _warm(view, model, batch_size, mixed_precision, scheduler):
    """Build the model and run it once in every thread that will run it, before timing.

    A worker builds its model once; TensorFlow's oneDNN kernels are also made once per thread,
    which a real run over a plate pays once per thread and a short benchmark must not count. Two
    cells of every chunk make one task per chunk, so every thread of the pool gets one.
    """
    import numpy as np

    from cpzarr.features.cnn import extract

    starts = np.cumsum((0,) + view.chunks[0][:-1])

    def warm(offset):
        cells = np.concatenate([s + (offset + np.arange(min(2, n))) % n for s, n in zip(starts, view.chunks[0])])
        return extract(view.isel(cell=cells), model=model, batch_size=batch_size, mixed_precision=mixed_precision,
                       scheduler=scheduler)

    if isinstance(scheduler, str):
        warm(0).compute(scheduler=scheduler)
        return

    def models_built():  # nested, so that it is shipped by value: workers cannot import benchmarks
        from cpzarr.features import cnn

        return len(cnn._CACHE)

    workers = list(scheduler.scheduler_info()["workers"])
    for i, worker in enumerate(workers):
        # Other cells for every worker: with the same task keys the scheduler could hand this
        # worker results that another one still holds, and it would start timing cold.
        scheduler.compute(warm(2 * i).data, workers=[worker], allow_other_workers=False).result()
    built = scheduler.run(models_built)
    if not all(built.values()):
        raise RuntimeError(f"the warm-up left workers without a model: {built}")


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

    ``track_cell_ceiling`` is the CPU time of 256 planes, passed ``batch_size`` at a time, turned
    into the cells per second that the network alone would allow if every core of the machine did
    nothing else: the bound that the end-to-end figure of :class:`CNNFeatures` is measured
    against. 8 is ``extract``'s batch on a CPU, 64 its former default.
    """

    params = [8, 16, 64]
    param_names = ["batch_size"]
    timeout = 300

    def setup(self, batch_size):
        import os

        import numpy as np

        from cpzarr.cluster import tensorflow_threads
        from cpzarr.features.cnn import _cached_model, _forward_pass

        # One thread, as each dask thread runs it: TensorFlow's own pools would split every
        # operation over the machine and count their spin-waiting as CPU time.
        os.environ.update(tensorflow_threads(1))
        model = _cached_model("efficientnet-lite0", "imagenet", None, (BOX, BOX), False)
        self.forward = _forward_pass(model)
        planes = np.random.default_rng(0).uniform(-1, 1, (256, BOX, BOX, 1)).astype("float32")
        self.batches = np.split(planes, 256 // batch_size)
        self.forward(self.batches[0])

    def time_batch(self, batch_size):
        self.forward(self.batches[0])

    def track_cell_ceiling(self, batch_size):
        import os

        start = time.process_time()
        for batch in self.batches:
            self.forward(batch)
        per_plane = (time.process_time() - start) / 256
        return (os.cpu_count() or 1) / (5 * per_plane)

    track_cell_ceiling.unit = "cells/s"
