"""The training run: options, outputs in a folder, resume after a crash, GPU worker when there is one."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpzarr.errors import ConfigError, InputError
from cpzarr.train._data import SPLITS, cell_table, make_batches, split_cells
from cpzarr.train._model import ARCHITECTURES, build_model
from cpzarr.train._schedules import SCHEDULES, check_schedule

logger = logging.getLogger("cpzarr")

__all__ = ["TrainOptions", "TrainResult", "validate_train_config", "train", "train_from_config"]


@dataclass(frozen=True)
class TrainOptions:
    """The knobs of a training run: the keys of the ``train:`` mapping of an experiment config.

    Attributes
    ----------
    label : str
        Well coordinate whose values are the classes (weak supervision: the treatment).
    architecture : {"efficientnet-lite0", "efficientnet-b0", "resnet50", "tiny"}
        Backbone (``tiny``: a three-convolution CNN for tests and demos).
    weights : str
        ``"imagenet"`` (first convolution adapted to the channels), ``"random"``, or a Lite0
        ``.weights.h5`` file.
    profile_layer : str
        Name of the pooled layer the features stage reads.
    split : {"replicate", "cells", "dose", "custom"}
        See :func:`cpzarr.train.split_cells`; with ``val_fraction``, ``train_dose``, ``val_dose``,
        ``split_coordinate``, ``split_query``, ``split_seed``.
    epochs, batch_size : int
        DeepProfiler's study: 10–30 epochs, batches of 32–256.
    cells_per_epoch, val_cells : int or None
        Cells drawn per epoch, class-balanced (default: the number of training cells), and cells
        drawn once, class-balanced, for validation (default: the number of validation cells).
    optimizer : {"sgd", "adam"}
        SGD with ``momentum`` (DeepProfiler's) or Adam.
    learning_rate, schedule, warmup_epochs, step_epochs, step_values
        See :func:`cpzarr.train.learning_rate` (study's best: cosine, 0.02).
    label_smoothing : float
        ``l`` in ``y·(1 − l) + l/N`` (study: 0–0.2).
    weight_decay : float
        L2 penalty on kernels (1e-4).
    augment : bool
        DeepProfiler's augmentations on the fly (:func:`cpzarr.train.augment`).
    mixed_precision : bool or {"float16", "bfloat16"}
        Mixed-precision compute on a GPU (``True``: float16, with Keras's loss scaling;
        ``"bfloat16"``: no scaling needed, for GPUs with bfloat16 units such as A100/H100/H200);
        ignored on CPU. The GPU is the Keras backend's (``KERAS_BACKEND``: TensorFlow, JAX
        or PyTorch; :mod:`cpzarr.features.backend`).
    deterministic : bool
        Deterministic kernels of the Keras backend (reproducible, slower on GPU).
    seed : int
        Seeds initial weights, epoch sampling and augmentation.
    workers : int
        Threads that read and augment batches ahead of the model.
    output : str or None
        Output folder (the runner picks one when None).
    """

    label: str = "compound"
    architecture: str = "efficientnet-lite0"
    weights: str = "imagenet"
    profile_layer: str = "profile"
    split: str = "replicate"
    val_fraction: float = 0.2
    train_dose: float | None = None
    val_dose: float | None = None
    split_coordinate: str | None = None
    split_query: str | None = None
    split_seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    cells_per_epoch: int | None = None
    val_cells: int | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    learning_rate: float = 0.02
    schedule: str = "cosine"
    warmup_epochs: float = 5
    step_epochs: list = field(default_factory=list)
    step_values: list = field(default_factory=list)
    label_smoothing: float = 0.0
    weight_decay: float = 1e-4
    augment: bool = True
    mixed_precision: bool = True
    deterministic: bool = False
    seed: int = 0
    workers: int = 2
    output: str | None = None


_TYPES = {
    "label": (str,), "architecture": (str,), "weights": (str,), "profile_layer": (str,),
    "split": (str,), "val_fraction": (int, float), "train_dose": (int, float, type(None)),
    "val_dose": (int, float, type(None)), "split_coordinate": (str, type(None)),
    "split_query": (str, type(None)), "split_seed": (int,), "epochs": (int,),
    "batch_size": (int,), "cells_per_epoch": (int, type(None)), "val_cells": (int, type(None)),
    "optimizer": (str,), "momentum": (int, float), "learning_rate": (int, float),
    "schedule": (str,), "warmup_epochs": (int, float), "step_epochs": (list,),
    "step_values": (list,), "label_smoothing": (int, float), "weight_decay": (int, float),
    "augment": (bool,), "mixed_precision": (bool, str), "deterministic": (bool,), "seed": (int,),
    "workers": (int,), "output": (str, type(None)),
}
_CHOICES = {
    "architecture": ARCHITECTURES, "split": SPLITS, "optimizer": ("sgd", "adam"),
    "schedule": SCHEDULES,
}


def validate_train_config(mapping: dict | None) -> TrainOptions:
    """Check a ``train:`` mapping strictly and return it as :class:`TrainOptions`.

    Unknown keys, wrong types and out-of-range values are all reported at once.

    Parameters
    ----------
    mapping : dict or None
        Keys of :class:`TrainOptions`; missing keys take their defaults.

    Returns
    -------
    TrainOptions

    Raises
    ------
    ConfigError
        With one problem per bad key.

    Examples
    --------
    >>> validate_train_config({"epochs": 3, "schedule": "step", "step_epochs": [2],
    ...                        "step_values": [0.1, 0.01]}).epochs
    3
    """
    mapping = dict(mapping or {})
    names = [f.name for f in dataclasses.fields(TrainOptions)]
    problems = []
    for key in mapping:
        if key not in names:
            guess = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            problems.append(f"{key}: unknown key{hint}")
    for key, value in mapping.items():
        types = _TYPES.get(key)
        if types is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            problems.append(f"{key}: expected {' or '.join(t.__name__ for t in types)}, got {value!r}")
        elif key in _CHOICES and value not in _CHOICES[key]:
            problems.append(f"{key}: {value!r} is not one of {', '.join(_CHOICES[key])}")
    if problems:
        raise ConfigError("invalid train section", problems)
    options = TrainOptions(**mapping)
    checks = [
        ("epochs", options.epochs >= 1, "must be ≥ 1"),
        ("batch_size", options.batch_size >= 1, "must be ≥ 1"),
        ("val_fraction", 0 < options.val_fraction < 1, "must be in (0, 1)"),
        ("momentum", 0 <= options.momentum < 1, "must be in [0, 1)"),
        ("label_smoothing", 0 <= options.label_smoothing < 1, "must be in [0, 1)"),
        ("weight_decay", options.weight_decay >= 0, "must be ≥ 0"),
        ("workers", options.workers >= 1, "must be ≥ 1"),
        ("mixed_precision", options.mixed_precision in (True, False, "float16", "bfloat16"),
         "must be true, false, 'float16' or 'bfloat16'"),
        ("cells_per_epoch", options.cells_per_epoch is None
         or options.cells_per_epoch >= options.batch_size, "must be ≥ batch_size"),
        ("val_cells", options.val_cells is None or options.val_cells >= options.batch_size,
         "must be ≥ batch_size"),
        ("weights", options.weights in ("imagenet", "random") or Path(options.weights).suffix == ".h5",
         "must be 'imagenet', 'random' or a .weights.h5 file"),
    ]
    problems = [f"{key}: {why}, got {getattr(options, key)!r}" for key, ok, why in checks if not ok]
    problems += check_schedule(
        options.schedule, base=options.learning_rate, epochs=options.epochs,
        warmup_epochs=options.warmup_epochs, step_epochs=options.step_epochs,
        step_values=options.step_values,
    )
    if options.split == "dose" and (options.train_dose is None or options.val_dose is None):
        problems.append("train_dose, val_dose: both required by split 'dose'")
    if options.split == "custom" and (options.split_coordinate is None) == (options.split_query is None):
        problems.append("split_coordinate, split_query: split 'custom' needs exactly one")
    if problems:
        raise ConfigError("invalid train section", problems)
    return options


@dataclass
class TrainResult:
    """What a training run left in its output folder.

    Attributes
    ----------
    output : Path
        The folder.
    best, last : Path
        Best checkpoint (highest validation accuracy) and the last epoch's checkpoint.
    history : DataFrame
        One row per epoch: ``epoch``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
        ``learning_rate``.
    classes : list of str
        Class names in the order of the model's outputs.
    """

    output: Path
    best: Path
    last: Path
    history: pd.DataFrame
    classes: list


def _screen_crops(screen, box, channels, edge):
    """The lazy crops of ``screen`` with its well metadata added as coordinates along ``cell``."""
    import xarray as xr

    from cpzarr.cells import screen_parts
    from cpzarr.crops import crops

    view = crops(screen, box=box, channels=channels, edge=edge, scale=None)
    _, _, root = screen_parts(screen)
    names = [n for n, v in root.data_vars.items() if set(v.dims) == {"plate", "well"}]
    wells = root[names].sel(
        plate=xr.DataArray(view["plate"].values, dims="cell"),
        well=xr.DataArray(view["well"].values, dims="cell"),
    )
    return view.assign_coords({n: ("cell", wells[n].values) for n in names})


def _atomic_save(model, path: Path):
    from cpzarr._keras import saving_weights

    tmp = path.with_name(f".{path.stem}.tmp.keras")
    with saving_weights():
        model.save(tmp)
    os.replace(tmp, path)


def _history_figure(history: pd.DataFrame):
    """Loss, accuracy (training and validation) and the learning rate per epoch."""
    from matplotlib.figure import Figure

    panels = [m for m in ("loss", "accuracy", "learning_rate") if m in history]
    fig = Figure(figsize=(4.5 * len(panels), 3.5))
    for ax, metric in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        if metric == "learning_rate":
            ax.plot(history["epoch"], history[metric], "o-", color="tab:gray")
            ax.set_ylabel("learning rate (end of epoch)")
        else:
            ax.plot(history["epoch"], history[metric], "o-", label="training")
            if f"val_{metric}" in history:
                ax.plot(history["epoch"], history[f"val_{metric}"], "o-", label="validation")
            ax.set_ylabel(metric)
            ax.legend()
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def _plot_history(history: pd.DataFrame, path: Path):
    fig = _history_figure(history)
    tmp = path.with_name(f".{path.name}")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


def _outputs_callback(folder: Path, history: list, best: float, batches, remote=None):
    import keras

    class Outputs(keras.callbacks.Callback):
        """Tells the batches the epoch; after it: checkpoint, best, history table and plot, state."""

        def __init__(self):
            super().__init__()
            self.best = best

        def on_epoch_begin(self, epoch, logs=None):
            batches.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            lr = self.model.optimizer.learning_rate
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                   "learning_rate": float(np.asarray(lr))}
            history.append(row)
            checkpoint = folder / "checkpoints" / f"epoch-{epoch + 1:03d}.keras"
            _atomic_save(self.model, checkpoint)
            score = row.get("val_accuracy", -row["loss"])
            if score > self.best:
                self.best = score
                _atomic_save(self.model, folder / "best.keras")
            table = pd.DataFrame(history)
            table.to_csv(folder / ".history.csv", index=False)
            os.replace(folder / ".history.csv", folder / "history.csv")
            _plot_history(table, folder / "history.png")
            # Written last: a crash before this line resumes from the previous epoch.
            state = {"epoch": epoch + 1, "checkpoint": checkpoint.name, "best": self.best}
            (folder / ".state.json").write_text(json.dumps(state))
            os.replace(folder / ".state.json", folder / "state.json")
            if remote is not None:  # an output URL: the epoch's files copied there, state.json last
                _mirror(folder, remote)

    return Outputs()


def train(
    source,
    output=None,
    options: TrainOptions | dict | None = None,
    *,
    box: int = 128,
    channels: list | None = None,
    edge: str = "pad",
    resume: bool = False,
    client: Any = None,
    callbacks: tuple = (),
    progress: bool = True,
    storage_options: dict | None = None,
) -> TrainResult:
    """Train a cell encoder by classifying each cell's treatment, reading crops from the store.

    Parameters
    ----------
    source : DataTree, Dataset or DataArray (cell, channel, y, x)
        A screen store (``cpzarr.open_screen``), whose crops are cut lazily with ``box``,
        ``channels`` and ``edge`` and labelled from the well metadata; or crops already made, with
        the label (and ``plate``, ``well``, and ``dose`` for the dose split) as coordinates along
        ``cell``. Intensities are min–max scaled per crop and channel here, as for profiling.
    output : str, Path or cpzarr.store.Location, optional
        Output folder, a local path or an fsspec URL (``s3://bucket/runs/train``: trained in a
        local staging folder of cpzarr's cache and copied there after every epoch, ``state.json``
        last); defaults to ``options.output``. It receives ``checkpoints/epoch-NNN.keras``
        (model and optimizer state), ``best.keras`` (best validation accuracy), ``history.csv``,
        ``history.png``, ``train.json`` (options, classes, channels, box), ``split.csv`` (each
        used cell's split) and ``state.json`` (the last finished epoch).
    options : TrainOptions or dict, optional
        The knobs (see :class:`TrainOptions`); a dict is validated by
        :func:`validate_train_config`.
    box, channels, edge
        Crop settings (the ``crops:`` section of an experiment config) used with a screen.
    resume : bool
        Continue from the last finished epoch of ``output``: model, optimizer state and epoch are
        restored, and batches depend only on ``(seed, epoch)``, so the run ends as an uninterrupted
        run would. Without ``resume`` an output folder with a finished epoch is an error.
    client : distributed.Client, optional
        When its cluster has a ``GPU`` worker, the run is submitted there (``resources={"GPU":
        1}``); otherwise it runs in this process.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, called after cpzarr's own (which save each epoch).
    progress : bool
        Keras' progress bar.
    storage_options : dict, optional
        fsspec options of an ``output`` URL (the store's, in a run).

    Returns
    -------
    TrainResult
        For an output URL its paths are :class:`cpzarr.store.Location` objects.

    Examples
    --------
    >>> screen = cpzarr.open_screen("screen.zarr")  # doctest: +SKIP
    >>> result = train(screen, "runs/train", {"epochs": 20, "batch_size": 64})  # doctest: +SKIP
    >>> result.history[["epoch", "val_accuracy"]].tail(1)  # doctest: +SKIP
    """
    if not isinstance(options, TrainOptions):
        options = validate_train_config(options)
    output = output if output is not None else options.output
    if output is None:
        raise ConfigError("train: no output folder given", ["output: required"])
    from cpzarr.store import as_location

    output = as_location(output, storage_options)  # a Path, or a Location for a URL
    kwargs = dict(output=output, options=options, box=box, channels=channels, edge=edge,
                  resume=resume, callbacks=callbacks, progress=progress)
    if client is not None:
        from cpzarr.cluster import has_gpu_workers

        if has_gpu_workers(client):
            future = client.submit(_train_here, source, **kwargs, resources={"GPU": 1},
                                   key=f"train-{options.architecture}-{output.name}",
                                   pure=False)
            return future.result()
    return _train_here(source, **kwargs)


def _train_here(source, *, output, options, box, channels, edge, resume, callbacks, progress):
    import xarray as xr

    from cpzarr.features.backend import has_gpu, import_keras

    keras = import_keras()

    from cpzarr.train._schedules import EpochSchedule

    remote = None
    if not isinstance(output, Path):  # a URL: train in a local staging folder, mirrored to it
        remote, output = output, _staging(output)
    folder = Path(output)
    state_file = folder / "state.json"
    if state_file.exists() and not resume:
        raise InputError(
            f"{folder} already holds a training run (state.json); pass resume=True (--resume) "
            "to continue it, or choose another output folder"
        )
    crops = source if isinstance(source, xr.DataArray) else _screen_crops(source, box, channels, edge)
    cells = cell_table(crops, options.label)
    side = split_cells(
        cells, options.split, label=options.label, val_fraction=options.val_fraction,
        train_dose=options.train_dose, val_dose=options.val_dose,
        split_coordinate=options.split_coordinate, split_query=options.split_query,
        seed=options.split_seed,
    )
    labels = cells[options.label].astype(str).to_numpy()
    classes = sorted(set(labels[side == "train"]))
    unseen = sorted(set(labels[side == "val"]) - set(classes))
    if unseen:
        logger.warning("validation labels absent from training are left out: %s", ", ".join(unseen))
        side[(side == "val") & np.isin(labels, unseen)] = ""
    if len(classes) < 2:
        raise InputError(f"training needs at least two classes of {options.label!r}, got {classes}")
    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code.get(v, -1) for v in labels])
    train_idx, val_idx = np.flatnonzero(side == "train"), np.flatnonzero(side == "val")
    if not len(val_idx):
        raise InputError("no validation cells left after removing labels unseen in training")

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints").mkdir(exist_ok=True)
    channel_names = [str(c) for c in crops["channel"].values] if "channel" in crops.coords else None
    record = {"options": dataclasses.asdict(options), "classes": classes, "box": int(crops.shape[-1]),
              "channels": channel_names, "edge": edge, "label": options.label}
    (folder / "train.json").write_text(json.dumps(record, indent=2, default=str))
    split_table = cells.loc[side != "", [c for c in ("plate", "well", "site", options.label)
                                         if c in cells]].copy()
    split_table.insert(0, "cell", crops["cell"].values[side != ""]
                       if "cell" in crops.coords else np.flatnonzero(side != ""))
    split_table["split"] = side[side != ""]
    split_table.to_csv(folder / "split.csv", index=False)

    keras.utils.set_random_seed(options.seed)
    if options.deterministic:
        _deterministic_ops()
    policy = keras.config.dtype_policy()
    if options.mixed_precision and has_gpu():
        keras.config.set_dtype_policy(
            "mixed_bfloat16" if options.mixed_precision == "bfloat16" else "mixed_float16"
        )
    try:
        batch_size = options.batch_size
        per_epoch = options.cells_per_epoch or len(train_idx)
        per_epoch = max(per_epoch, batch_size)
        val_cells = max(options.val_cells or len(val_idx), batch_size)
        initial_epoch, history, best = 0, [], -np.inf
        if resume and state_file.exists():
            state = json.loads(state_file.read_text())
            initial_epoch, best = int(state["epoch"]), float(state["best"])
            history = pd.read_csv(folder / "history.csv").to_dict("records")[:initial_epoch]
            model = keras.models.load_model(folder / "checkpoints" / state["checkpoint"])
            logger.info("resuming %s after epoch %d", folder, initial_epoch)
        else:
            model = build_model(
                len(classes), architecture=options.architecture, box=int(crops.shape[-1]),
                n_channels=int(crops.shape[1]),
                weights=None if options.weights == "random" else options.weights,
                profile_layer=options.profile_layer, weight_decay=options.weight_decay,
            )
            schedule = EpochSchedule(
                per_epoch // batch_size, options.schedule, base=options.learning_rate,
                epochs=options.epochs, warmup_epochs=options.warmup_epochs,
                step_epochs=options.step_epochs, step_values=options.step_values,
            )
            if options.optimizer == "sgd":
                optimizer = keras.optimizers.SGD(schedule, momentum=options.momentum)
            else:
                optimizer = keras.optimizers.Adam(schedule)
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
                metrics=["accuracy"],
            )
        training = make_batches(
            crops, train_idx, y[train_idx], len(classes), batch_size=batch_size,
            cells_per_epoch=per_epoch, augment_crops=options.augment, seed=options.seed,
            epoch=initial_epoch, workers=options.workers,
        )
        validation = make_batches(
            crops, val_idx, y[val_idx], len(classes), batch_size=batch_size,
            cells_per_epoch=val_cells, seed=options.seed + 1, fixed=True,
            workers=options.workers,
        )
        if initial_epoch < options.epochs:
            model.fit(
                training, validation_data=validation, epochs=options.epochs,
                initial_epoch=initial_epoch, verbose=1 if progress else 0, shuffle=False,
                callbacks=[_outputs_callback(folder, history, best, training, remote), *callbacks],
            )
    finally:
        keras.config.set_dtype_policy(policy)
    if remote is not None:
        _mirror(folder, remote)
    state = json.loads(state_file.read_text())
    where = folder if remote is None else remote
    return TrainResult(
        output=where, best=where / "best.keras",
        last=where / "checkpoints" / state["checkpoint"],
        history=pd.read_csv(folder / "history.csv"), classes=classes,
    )


def _staging(remote) -> Path:
    """A local folder holding what the output URL ``remote`` holds (for a resume), to train in.

    ``<cache>/train/<hash of the URL>``, emptied and filled from the URL (its files other than
    partial ones); :func:`_mirror` copies it back after every epoch.
    """
    import hashlib
    import shutil

    from cpzarr.features._lite0 import cache_dir

    folder = cache_dir() / "train" / hashlib.sha256(remote.url.encode()).hexdigest()[:24]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if remote.exists():
        for path in remote.fs.find(remote.root):
            relative = path.lstrip("/")[len(remote.root.lstrip("/")):].lstrip("/")
            if relative and not Path(relative).name.startswith("."):
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                remote.fs.get_file(path, str(folder / relative))
    return folder


def _mirror(folder: Path, remote) -> None:
    """Copy the training outputs of ``folder`` to the URL ``remote``; ``state.json`` last.

    An object store has no rename, so ``state.json`` (what a resume reads) is written only once
    the checkpoint it names and the history are there: a crash mid-copy resumes from the epoch
    before, as on a local disk.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in [p for p in files if p.name != "state.json"] + [p for p in files if p.name == "state.json"]:
        target = remote / path.relative_to(folder).as_posix()
        if path.parent.name == "checkpoints" and target.exists():
            continue  # an epoch's checkpoint never changes once written
        remote.fs.put_file(str(path), target.root)


def _deterministic_ops():
    """Ask the Keras backend of this process for deterministic kernels."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        logger.warning(
            "deterministic: on JAX, set XLA_FLAGS=--xla_gpu_deterministic_ops=true before starting "
            "Python for deterministic GPU kernels (CPU kernels already are)"
        )


def output_folder(config, store) -> Path:
    """Where a config's training writes: ``train.output`` (relative to the config's folder), else
    a ``train`` folder beside the store. ``cpzarr train`` and ``cpzarr run`` both use it."""
    from cpzarr.store import as_location, is_url

    output = (config.get("train") or {}).get("output")
    if output is None:
        return as_location(store).parent / "train"  # beside a store at a URL too
    if is_url(output):  # read and written with the store's storage options
        return as_location(output, config.get("output.storage_options"))
    if config.source is not None and not Path(output).is_absolute():
        return Path(config.source).resolve().parent / output
    return Path(output)


def train_from_config(config, *, resume: bool = False, client: Any = None,
                      progress: bool = True) -> TrainResult:
    """Run the ``train:`` section of an experiment config on the run's store.

    The store is ``output.store`` when it exists, else ``input.store``; crops use the ``crops:``
    section's ``box``, ``channels`` and ``edge`` (crops are always min–max scaled for training,
    whatever ``crops.scale`` says). The output folder is ``train.output``, by default a
    ``train`` folder beside the store.

    Parameters
    ----------
    config : cpzarr.config.Config
        A loaded experiment config (``cpzarr.config.load_config``).
    resume, client, progress
        As for :func:`train`.

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> from cpzarr.config import load_config  # doctest: +SKIP
    >>> result = train_from_config(load_config("configs/train_demo.yaml"))  # doctest: +SKIP
    """
    from cpzarr.store import open_screen

    options = validate_train_config(config.get("train"))
    candidates = [config.get("output.store"), config.get("input.store")]
    store = next((Path(p) for p in candidates if p and Path(p).exists()), None)
    if store is None:
        raise ConfigError(
            "train: no store to train on; run ingest and locate first",
            [f"output.store / input.store: {', '.join(str(p) for p in candidates if p) or 'unset'}"],
        )
    return train(
        open_screen(store), output_folder(config, store), options, box=config.get("crops.box", 128),
        channels=config.get("crops.channels"), edge=config.get("crops.edge", "pad"),
        resume=resume, client=client, progress=progress,
    )
