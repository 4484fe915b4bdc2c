"""Weakly supervised training: learn a cell encoder by classifying each cell's treatment.

DeepProfiler's training step without its crop export: batches are cut from the Zarr store on the
fly (:func:`make_batches` over the lazy ``cpzarr.crops`` view), class-balanced per epoch,
augmented on the fly; the model is a Keras backbone with a 5-channel input whose pooled layer
(``profile``) becomes the feature extractor (:func:`load_trained`).
"""

from cpzarr.train._augment import augment, minmax_scale
from cpzarr.train._data import SPLITS, make_batches, split_cells
from cpzarr.train._model import ARCHITECTURES, build_model, load_trained
from cpzarr.train._run import (
    TrainOptions,
    TrainResult,
    train,
    train_from_config,
    validate_train_config,
)
from cpzarr.train._schedules import SCHEDULES, learning_rate

__all__ = [
    "train",
    "train_from_config",
    "TrainOptions",
    "TrainResult",
    "validate_train_config",
    "load_trained",
    "build_model",
    "make_batches",
    "split_cells",
    "augment",
    "minmax_scale",
    "learning_rate",
    "ARCHITECTURES",
    "SCHEDULES",
    "SPLITS",
]
