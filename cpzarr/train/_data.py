"""Training data: which cells train and which validate (splits), and the batch stream over crops.

The crops are a ``DataArray[cell, channel, y, x]`` (the lazy ``cpzarr.crops`` view of a store, or
any in-memory array with the same coordinates); batches are read from it at random, cell by cell,
so no crop is ever exported to disk.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pandas as pd

from cpzarr.errors import InputError
from cpzarr.query import query_mask
from cpzarr.train._augment import augment, minmax_scale

logger = logging.getLogger("cpzarr")

__all__ = ["SPLITS", "split_cells", "cell_table", "make_batches"]

#: Names accepted for ``split``.
SPLITS = ("replicate", "cells", "dose", "custom")


def cell_table(crops, label: str) -> pd.DataFrame:
    """One row per cell of ``crops``: its coordinates along ``cell`` (plate, well, dose, …).

    Raises :class:`~cpzarr.errors.InputError` when the label coordinate is missing.
    """
    coords = {name: c.values for name, c in crops.coords.items() if c.dims == ("cell",)}
    if label not in coords:
        raise InputError(
            f"the crops have no {label!r} coordinate along 'cell' to use as the training label; "
            f"available: {sorted(coords)}"
        )
    table = pd.DataFrame(coords).reset_index(drop=True)
    missing = table[label].isna() | (table[label].astype(str) == "")
    if missing.any():
        wells = sorted(set(zip(table.loc[missing, "plate"], table.loc[missing, "well"]))) \
            if {"plate", "well"} <= set(table) else []
        raise InputError(
            f"{int(missing.sum())} cells have no {label!r}; fix the platemap or drop those wells",
            [f"plate {p} well {w}" for p, w in wells],
        )
    return table


def split_cells(
    cells: pd.DataFrame,
    split: str = "replicate",
    *,
    label: str = "compound",
    val_fraction: float = 0.2,
    train_dose: float | None = None,
    val_dose: float | None = None,
    split_coordinate: str | None = None,
    split_query: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Assign each cell to ``"train"``, ``"val"`` or ``""`` (unused) as one of the study's splits.

    Parameters
    ----------
    cells : DataFrame
        One row per cell with at least ``plate``, ``well`` and ``label`` (see :func:`cell_table`).
    split : {"replicate", "cells", "dose", "custom"}
        ``replicate`` ("split two"): one replicate well of each label, picked at random, is held out
        for validation; labels with a single well train only. ``cells`` ("split three"):
        ``val_fraction`` of the cells of every well validate, the rest train. ``dose``: cells at
        ``train_dose`` train and cells at ``val_dose`` validate (the study's honest split); wells
        at other doses are unused. ``custom``: the coordinate ``split_coordinate`` holds
        ``"train"`` / ``"val"`` (anything else is unused), or ``split_query`` is a :mod:`cpzarr.query`
        selecting the validation cells (the others train).
    label : str
        The class coordinate.
    val_fraction : float
        Share of each well's cells that validate (``cells``).
    train_dose, val_dose : float
        Doses of the ``dose`` split; matched with ``numpy.isclose``.
    split_coordinate, split_query : str
        The ``custom`` split.
    seed : int
        Makes the random choices repeatable.

    Returns
    -------
    ndarray of str (cell,)

    Examples
    --------
    >>> cells = pd.DataFrame({"plate": "P1", "well": ["A01", "A01", "A02", "A02"],
    ...                       "compound": "x"})
    >>> split_cells(cells, "replicate", seed=0).tolist()
    ['val', 'val', 'train', 'train']
    """
    rng = np.random.default_rng(seed)
    n = len(cells)
    side = np.full(n, "", dtype=object)
    if split == "replicate":
        wells = cells[["plate", "well", label]].drop_duplicates().sort_values(["plate", "well"])
        held = set()
        for _, group in wells.groupby(label, sort=True):
            if len(group) > 1:
                row = group.iloc[int(rng.integers(len(group)))]
                held.add((row["plate"], row["well"]))
        if not held:
            raise InputError(
                "split 'replicate' needs at least one label with two or more wells; "
                "use split 'cells' for a screen without replicates"
            )
        counts = wells.groupby(label).size()
        singles = sorted(map(str, counts.index[counts == 1]))
        if singles:
            logger.warning("labels with one well train only: %s", ", ".join(map(str, singles)))
        is_held = np.fromiter(
            ((p, w) in held for p, w in zip(cells["plate"], cells["well"])), bool, n
        )
        side[:] = np.where(is_held, "val", "train")
    elif split == "cells":
        if not 0 < val_fraction < 1:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        side[:] = "train"
        for _, rows in cells.groupby(["plate", "well"], sort=True).indices.items():
            take = rng.permutation(rows)[: int(round(len(rows) * val_fraction))]
            side[take] = "val"
    elif split == "dose":
        if "dose" not in cells:
            raise InputError("split 'dose' needs a 'dose' coordinate on the cells")
        if train_dose is None or val_dose is None or np.isclose(train_dose, val_dose):
            raise InputError(
                f"split 'dose' needs two different doses, got train_dose={train_dose!r}, "
                f"val_dose={val_dose!r}; doses present: {sorted(pd.unique(cells['dose']))}"
            )
        dose = cells["dose"].to_numpy(dtype=float)
        side[np.isclose(dose, train_dose)] = "train"
        side[np.isclose(dose, val_dose)] = "val"
    elif split == "custom":
        if (split_coordinate is None) == (split_query is None):
            raise InputError("split 'custom' needs exactly one of split_coordinate or split_query")
        if split_coordinate is not None:
            if split_coordinate not in cells:
                raise InputError(
                    f"split_coordinate {split_coordinate!r} is not a cell coordinate; "
                    f"available: {sorted(cells.columns)}"
                )
            values = cells[split_coordinate].astype(str).to_numpy()
            side[values == "train"] = "train"
            side[values == "val"] = "val"
        else:
            chosen = query_mask(split_query, cells, what="split_query")
            side[:] = np.where(chosen, "val", "train")
    else:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    problems = [f"no {s} cells" for s in ("train", "val") if not (side == s).any()]
    if problems:
        raise InputError(f"split {split!r} leaves a side empty", problems)
    return side.astype(str)


def make_batches(*args, **kwargs):
    """Build the :class:`keras.utils.PyDataset` of crop batches (Keras is imported on first use).

    Parameters are those of ``CellBatches`` below: ``crops`` (DataArray[cell, channel, y, x]),
    ``cells`` (indices into ``crops``), ``labels`` (class index per cell), ``n_classes`` and the
    keywords ``batch_size``, ``cells_per_epoch``, ``augment_crops``, ``seed``, ``epoch``, ``fixed``
    (one plan for every epoch, for validation), ``workers``, ``max_queue_size``.
    """
    return _cell_batches_class()(*args, **kwargs)


@functools.cache
def _cell_batches_class():
    import keras


    class CellBatches(keras.utils.PyDataset):
        """Class-balanced batches of scaled (and optionally augmented) crops with one-hot labels.

        Each epoch draws ``cells_per_epoch`` cells, the same number from every class as
        DeepProfiler does (with replacement only for classes smaller than their share), in an
        order fixed by ``(seed, epoch)``. ``epoch`` is set by the training loop's
        ``on_epoch_begin`` callback, before Keras starts the epoch's loader threads, so a resumed
        run sees the batches an uninterrupted run would. Keras must not reorder the batches
        (``fit(shuffle=False)``): the plan is already shuffled, reproducibly.
        """

        def __init__(self, crops, cells, labels, n_classes, *, batch_size=32,
                     cells_per_epoch=None, augment_crops=False, seed=0, epoch=0,
                     fixed=False, workers=1, max_queue_size=10):
            super().__init__(workers=workers, use_multiprocessing=False,
                             max_queue_size=max_queue_size)
            self.crops = crops
            self.cells = np.asarray(cells, dtype=np.int64)
            self.labels = np.asarray(labels, dtype=np.int64)
            self.n_classes = int(n_classes)
            self.batch_size = int(batch_size)
            self.cells_per_epoch = int(cells_per_epoch or len(self.cells))
            if self.cells_per_epoch < self.batch_size:
                raise InputError(
                    f"cells_per_epoch ({self.cells_per_epoch}) is smaller than batch_size "
                    f"({self.batch_size})"
                )
            self.augment_crops = augment_crops
            self.seed = int(seed)
            self.epoch = int(epoch)
            self.fixed = fixed
            self._plans = {}

        @property
        def num_batches(self):
            return self.cells_per_epoch // self.batch_size

        def plan(self, epoch):
            """Positions (into ``cells``) drawn for ``epoch``; a fixed plan ignores the epoch."""
            key = 0 if self.fixed else epoch
            if key not in self._plans:
                rng = np.random.default_rng([self.seed, key])
                classes = np.unique(self.labels)
                share = -(-self.cells_per_epoch // len(classes))
                drawn = []
                for c in classes:
                    members = np.flatnonzero(self.labels == c)
                    replace = len(members) < share
                    drawn.append(rng.choice(members, size=share, replace=replace))
                order = rng.permutation(np.concatenate(drawn))
                self._plans = {key: order[: self.num_batches * self.batch_size]}
            return self._plans[key]

        def read(self, positions):
            """Scaled crops ``(n, y, x, channel)`` float32 of the cells at ``positions``."""
            index = self.cells[positions]
            unique, inverse = np.unique(index, return_inverse=True)
            # Local threads, never a distributed client: on a Dask worker the training task holds
            # the worker, so crop reads sent back to the cluster would wait on it forever.
            block = self.crops.isel(cell=unique).compute(scheduler="threads").values[inverse]
            return np.moveaxis(minmax_scale(block, channel_axis=1), 1, -1)

        def __getitem__(self, i):
            positions = self.plan(self.epoch)[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.read(positions)
            if self.augment_crops:
                x = augment(x, np.random.default_rng([self.seed, self.epoch, i, 1]))
            y = np.eye(self.n_classes, dtype=np.float32)[self.labels[positions]]
            return x, y

    return CellBatches
