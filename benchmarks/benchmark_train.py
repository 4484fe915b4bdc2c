"""Benchmarks of weakly supervised training (cpzarr.train): cells per second through a training step.

The study's setting: batches of 32 crops of 128 × 128 pixels, 5 channels, EfficientNet-Lite0 (the
study trained EfficientNetB0 at about 450 cells/s on an A100). Crops come from an in-memory
``DataArray`` so the figure is the model plus cpzarr's input pipeline (min–max scaling, and the
augmentations when on), not the store's disk. Run with
``asv run --python=same --bench train`` (or ``asv dev``); CPU-only machines measure CPU.
"""

import time

import numpy as np

BATCH = 32
BOX = 128
CHANNELS = 5
STEPS = 4


def _crops(n=256, seed=0):
    import xarray as xr

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4000, (n, CHANNELS, BOX, BOX), dtype=np.uint16)
    return xr.DataArray(data, dims=("cell", "channel", "y", "x"))


class TrainStep:
    """``STEPS`` optimizer steps of batch 32, 128-px, 5-channel crops, 10 classes."""

    params = (["efficientnet-lite0", "tiny"], [False, True])
    param_names = ["architecture", "augment"]
    timeout = 600
    number = 1
    repeat = 3

    def setup(self, architecture, augment):
        import keras

        from cpzarr.train import build_model, make_batches
        from cpzarr.train._schedules import EpochSchedule

        crops = _crops()
        labels = np.arange(crops.sizes["cell"]) % 10
        self.batches = make_batches(
            crops, np.arange(crops.sizes["cell"]), labels, 10, batch_size=BATCH,
            cells_per_epoch=BATCH * STEPS, augment_crops=augment, workers=2,
        )
        self.model = build_model(10, architecture=architecture, box=BOX, n_channels=CHANNELS,
                                 weights=None)
        self.model.compile(
            optimizer=keras.optimizers.SGD(EpochSchedule(STEPS, "constant", base=0.01),
                                           momentum=0.9),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
            metrics=["accuracy"],
        )
        # The first fit traces the training function; keep it out of the measurement.
        self.model.fit(self.batches, epochs=1, verbose=0, shuffle=False)

    def time_train_steps(self, architecture, augment):
        self.model.fit(self.batches, epochs=1, verbose=0, shuffle=False)

    def track_cells_per_second(self, architecture, augment):
        start = time.perf_counter()
        self.model.fit(self.batches, epochs=1, verbose=0, shuffle=False)
        return BATCH * STEPS / (time.perf_counter() - start)

    track_cells_per_second.unit = "cells/s"


class InputPipeline:
    """Reading, scaling and augmenting one batch of 32 crops, without the model."""

    params = [False, True]
    param_names = ["augment"]

    def setup(self, augment):
        from cpzarr.train import make_batches

        crops = _crops()
        self.batches = make_batches(
            crops, np.arange(crops.sizes["cell"]), np.arange(crops.sizes["cell"]) % 10, 10,
            batch_size=BATCH, augment_crops=augment,
        )

    def time_batch(self, augment):
        self.batches[0]

    def peakmem_batch(self, augment):
        self.batches[0]
