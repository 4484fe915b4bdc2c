"""aggregate: single-cell features → site or well profiles, chunk by chunk."""

import warnings

import numpy as np
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.profiles._samples import as_dask, constant_coords, group_codes, record_step
from cpzarr.profiles._segments import BLOCK_BYTES, segment_reduce, segments_in_input_order

OPERATIONS = ("mean", "median")


def aggregate(features, strata=("plate", "well"), operation="mean", block_bytes=BLOCK_BYTES):
    """Aggregate single-cell features to one profile per stratum (well, or site), with cell counts.

    Parameters
    ----------
    features : DataArray (cell, feature) or Dataset
        The ``/features/<model>`` node (its ``features`` variable) with ``plate``, ``well``,
        ``site`` coordinates along ``cell``, ideally sorted by them (as the store writes it).
    strata : sequence of str, default ("plate", "well")
        Coordinates defining a profile: ``("plate", "well")`` for wells, add ``"site"`` for sites.
    operation : {"mean", "median"}, default "mean"
        Per feature, NaN ignored (as pandas in Pycytominer).
    block_bytes : int
        Target size of a block of cells; a block always holds whole strata, so memory is bounded
        by ``max(block_bytes, one stratum's cells)``, never by the screen.

    Returns
    -------
    profiles : DataArray (sample, feature)
        float64, lazy (dask); one sample per stratum sorted by the strata; coordinates are the
        strata, ``cell_count`` and every cell coordinate constant within each stratum.

    Notes
    -----
    Cells are re-chunked so that every chunk ends at a stratum boundary, then each chunk is
    reduced on its own (``np.add.reduceat`` for the mean, per-stratum medians). Cells that are
    not sorted by the strata are gathered first (a shuffle; slower, same result).

    Examples
    --------
    >>> cells = xr.DataArray(np.arange(8.0).reshape(4, 2), dims=("cell", "feature"),
    ...     coords={"plate": ("cell", ["p"] * 4), "well": ("cell", ["A01", "A01", "A01", "B01"])})
    >>> aggregate(cells).values.tolist()
    [[2.0, 3.0], [6.0, 7.0]]
    """
    if operation not in OPERATIONS:
        raise InputError(f"aggregate operation {operation!r} is not one of {OPERATIONS}")
    if isinstance(features, xr.Dataset):
        if "features" not in features:
            raise InputError(f"the dataset has no 'features' variable (has {list(features.data_vars)})")
        features = features["features"]
    if not isinstance(features, xr.DataArray) or set(features.dims) != {"cell", "feature"}:
        raise InputError("aggregate expects features with dims ('cell', 'feature')")
    cells = features.transpose("cell", "feature")
    if "cell" in cells.coords:
        cells = cells.drop_vars("cell")
    cells = cells.rename({"cell": "sample"})
    strata = [strata] if isinstance(strata, str) else list(strata)
    codes, keys = group_codes(cells, strata)
    order, lengths, to_key_order = segments_in_input_order(codes)
    x = as_dask(cells)

    def reduce(block, lengths):
        return _reduce(block, lengths, operation)

    data = segment_reduce(x, lengths, reduce, x.shape[1], order=order, block_bytes=block_bytes)
    if not np.array_equal(to_key_order, np.arange(len(to_key_order))):
        data = data[to_key_order]
    lengths = lengths[to_key_order]
    order = np.argsort(codes, kind="stable")
    coords = {c: ("sample", keys[c].to_numpy()) for c in strata}
    coords.update(constant_coords(cells, codes, order, lengths, exclude=strata))
    coords["cell_count"] = ("sample", lengths.astype(np.int64))
    coords["feature"] = cells["feature"]
    out = xr.DataArray(data, dims=("sample", "feature"), coords=coords, name="profiles", attrs=dict(cells.attrs))
    record_step(out, "aggregate", {"strata": strata, "operation": operation})
    return out


def _reduce(block, lengths, operation):
    block = np.asarray(block, dtype=np.float64)
    if operation == "mean":
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        present = ~np.isnan(block)
        sums = np.add.reduceat(np.where(present, block, 0.0), starts, axis=0)
        counts = np.add.reduceat(present, starts, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts
    out = np.empty((len(lengths), block.shape[1]))
    start = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features give NaN, as pandas
        for i, n in enumerate(lengths):
            out[i] = np.nanmedian(block[start:start + n], axis=0)
            start += n
    return out
