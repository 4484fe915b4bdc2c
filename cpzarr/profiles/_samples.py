"""Selecting and grouping samples by their metadata coordinates, and recording steps in attrs."""

import json

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.profiles._io import _check_profiles
from cpzarr.query import query_mask


def check_profiles(profiles):
    """Validate dims and return the profiles ordered ``(sample, feature)``."""
    _check_profiles(profiles)
    return profiles.transpose("sample", "feature")


def metadata_frame(profiles):
    """The sample coordinates as a small pandas frame (metadata only, never features)."""
    data = {
        name: coord.values for name, coord in profiles.coords.items()
        if coord.dims == ("sample",) and name != "sample"
    }
    return pd.DataFrame(data)


def sample_mask(profiles, samples):
    """Boolean numpy mask over ``sample`` from "all", a mask, or a query on the coordinates.

    Queries are in the language of :mod:`cpzarr.query` (comparisons, ``in``, ``and``/``or``/``not``
    on coordinate names, e.g. ``'control == "negcon"'``; Pycytominer-style ``Metadata_`` prefixes
    are accepted); they are parsed, never run as Python.
    """
    n = profiles.sizes["sample"]
    if samples is None or (isinstance(samples, str) and samples == "all"):
        return np.ones(n, dtype=bool)
    if isinstance(samples, str):
        mask = query_mask(samples, metadata_frame(profiles), what="samples")
        if mask.dtype != bool or mask.shape != (n,):
            raise InputError(f"samples query {samples!r} does not give one True/False per sample")
        return mask
    if isinstance(samples, xr.DataArray):
        samples = samples.values
    mask = np.asarray(samples)
    if mask.dtype != bool or mask.shape != (n,):
        raise InputError(f"samples mask must be boolean with {n} entries, got {mask.dtype} {mask.shape}")
    return mask


def group_codes(profiles, by):
    """Integer group code per sample (groups sorted by key) and the keys as a frame.

    ``by`` is a coordinate name, a list of names, or None for one group. Missing values form
    their own group, as ``groupby(dropna=False)`` in Pycytominer.
    """
    n = profiles.sizes["sample"]
    if by is None:
        return np.zeros(n, dtype=np.int64), pd.DataFrame(index=[0])
    names = [by] if isinstance(by, str) else list(by)
    available = [c for c, v in profiles.coords.items() if v.dims == ("sample",)]
    missing = [name for name in names if name not in available]
    if missing:
        raise InputError(f"grouping coordinates not found (available: {available})", missing)
    frame = metadata_frame(profiles)[names]
    grouped = frame.groupby(names, dropna=False, sort=True)
    codes = grouped.ngroup().to_numpy()
    keys = grouped.size().reset_index()[names]
    return codes.astype(np.int64), keys


def constant_coords(profiles, codes, order, lengths, exclude=()):
    """Coordinates along ``sample`` that are constant within every group, one value per group."""
    meta = metadata_frame(profiles).drop(columns=list(exclude))
    if not len(meta.columns) or not len(lengths):
        return {}
    constant = meta.astype(str).groupby(codes).nunique(dropna=False).eq(1).all()
    first = meta.iloc[order[np.concatenate([[0], np.cumsum(lengths)[:-1]])]]
    return {name: ("sample", first[name].to_numpy()) for name in constant.index[constant.to_numpy()]}


def as_dask(profiles, chunks="auto"):
    """The data as a dask array chunked whole along ``feature``."""
    data = profiles.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(chunks, -1))
    elif data.numblocks[1] != 1:
        data = data.rechunk({1: -1})
    return data


def like_input(profiles, result):
    """Compute the result when the input was in memory, so numpy in gives numpy out."""
    if not isinstance(profiles.data, da.Array) and isinstance(result.data, da.Array):
        return result.compute()
    return result


def record_step(result, step, params):
    """Append one step's name and parameters to ``attrs["cpzarr_steps"]`` (a JSON list)."""
    steps = json.loads(result.attrs.get("cpzarr_steps", "[]"))
    steps.append({"step": step, **{k: _jsonable(v) for k, v in params.items()}})
    result.attrs["cpzarr_steps"] = json.dumps(steps)
    return result


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, xr.DataArray)):
        return f"<mask of {int(np.asarray(value).sum())} samples>"
    return repr(value)
