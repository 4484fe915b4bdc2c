"""Illumination correction: one smooth multiplicative field per plate and channel.

The method of CellProfiler's CorrectIlluminationCalculate as Cell Painting pipelines and
DeepProfiler use it: per plate and channel, the **mean of all sites** (a dask reduction over the
store, one task per site, never more than one site per task in memory), **downsampled** by block
means, **smoothed with a large median filter**, scaled back to the image size and **divided by a
robust minimum** (its 2nd percentile), so that the field is about 1 in the dimmest parts and
dividing an image by it evens the bright parts down to them.

:func:`estimate` returns ``illumination[plate, channel, y, x]``; :func:`write` stores it as the
node ``/illumination``; :func:`correct` divides images by it lazily, and ``cpzarr.crops(...,
illumination=True)`` (config ``crops: {illumination: true}``) crops the corrected images.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from cpzarr.errors import InputError, StoreError

__all__ = ["estimate", "smooth", "write", "read", "correct", "NODE"]

#: The store node (and its variable) holding the fields.
NODE = "illumination"


def smooth(mean, *, downsample=4, median_size=24, percentile=2.0):
    """Turn one mean image into an illumination field (CellProfiler/DeepProfiler's recipe).

    Parameters
    ----------
    mean : ndarray (y, x)
        The mean of a plate's sites in one channel.
    downsample : int
        Block-mean downsampling factor before smoothing (speed; the field is smooth anyway).
    median_size : int
        Side of the median filter, in downsampled pixels (24 at factor 4 is 96 image pixels).
    percentile : float
        The robust minimum the field is divided by.

    Returns
    -------
    ndarray (y, x) float32
        The field, of ``mean``'s shape; its ``percentile``-th percentile is 1.

    Examples
    --------
    >>> field = smooth(np.ones((64, 64)), downsample=4, median_size=5)
    >>> float(field.min()), float(field.max())
    (1.0, 1.0)
    """
    from scipy import ndimage
    from skimage.transform import resize

    mean = np.asarray(mean, dtype=np.float64)
    h, w = mean.shape
    f = max(int(downsample), 1)
    hh, ww = max(h // f, 1), max(w // f, 1)
    small = mean[: hh * f, : ww * f].reshape(hh, min(f, h), ww, min(f, w)).mean(axis=(1, 3)) if f > 1 else mean
    size = max(1, min(int(median_size), min(small.shape)))
    small = ndimage.median_filter(small, size=size, mode="nearest")
    field = resize(small, (h, w), order=1, mode="edge", anti_aliasing=False, preserve_range=True)
    floor = np.percentile(field, percentile)
    if not np.isfinite(floor) or floor <= 0:
        raise InputError(f"the smoothed mean image has a {percentile}th percentile of {floor}: no signal to "
                         "estimate an illumination field from (are the sites empty?)")
    return (field / floor).astype(np.float32)


def estimate(screen, *, downsample=4, median_size=24, percentile=2.0, scheduler=None):
    """Estimate the illumination field of every plate and channel of a screen.

    Parameters
    ----------
    screen : DataTree or Dataset
        The store (:func:`cpzarr.open_screen`) or a Dataset with ``images`` and ``present``.
    downsample, median_size, percentile
        As for :func:`smooth`.
    scheduler : optional
        Dask scheduler of the mean's reduction (default: dask's current one).

    Returns
    -------
    DataArray (plate, channel, y, x) float32
        Named ``illumination``; ``attrs`` record the parameters and the sites averaged per plate.

    Examples
    --------
    >>> field = estimate(cpzarr.open_screen("screen.zarr"))  # doctest: +SKIP
    """
    images = screen["images"]
    present = screen["present"]
    count = present.sum(dim=("well", "site"))
    array = _store_images(screen)
    if array is not None:  # the store as opened: each task reads whole well shards
        total = xr.DataArray(_well_sums(array, images.shape), dims=("plate", "channel", "y", "x"),
                             coords={"plate": images["plate"].values, "channel": images["channel"].values})
    else:
        total = images.sum(dim=("well", "site"), dtype=np.float64)  # absent sites hold zeros
    total, count = xr.align(*_computed(total, count, scheduler=scheduler))
    if (count.values == 0).any():
        empty = [str(p) for p, c in zip(count["plate"].values, count.values) if c == 0]
        raise InputError(f"plates without any site cannot have an illumination field: {', '.join(empty)}")
    mean = total / count
    fields = np.stack([
        np.stack([smooth(mean.isel(plate=p, channel=c).values, downsample=downsample, median_size=median_size,
                         percentile=percentile) for c in range(mean.sizes["channel"])])
        for p in range(mean.sizes["plate"])
    ])
    coords = {name: images[name].values for name in ("plate", "channel") if name in images.coords}
    return xr.DataArray(
        fields, dims=("plate", "channel", "y", "x"), coords=coords, name=NODE,
        attrs={"method": "mean of sites, block-mean downsampled, median filtered, divided by a robust minimum",
               "downsample": int(downsample), "median_size": int(median_size), "percentile": float(percentile),
               "sites": [int(v) for v in count.values]},
    )


def _store_images(screen):
    """The path of the store's own ``images`` array when ``screen`` holds it as opened, else None.

    ``cpzarr.store.site_reader`` answers only for the variable as :func:`cpzarr.open_screen`
    opened it from a local store; a selection or computation on it is read through dask instead.
    """
    from cpzarr.store import site_reader

    source = _store_path(screen)
    if not source or site_reader(screen["images"]) is None:
        return None
    return f"{source}/images"


def _wells_sum(path, p, wells):
    """The sum of the sites of some wells of plate ``p``: each well's shard read whole, summed in place.

    Integer images are summed as uint32 (exact for up to 65,537 16-bit sites), which halves the
    memory traffic of float64.
    """
    import zarr

    array = zarr.open_array(path, mode="r")
    kind = np.uint32 if np.dtype(array.dtype).kind in "ui" and np.dtype(array.dtype).itemsize <= 2 else np.float64
    total = np.zeros(array.shape[3:], dtype=kind)
    for w in wells:
        block = array[p, w]  # the well's shard: (site, channel, y, x)
        np.add(total, block.sum(axis=0, dtype=kind), out=total)
    return total.astype(np.float64)


def _well_sums(path, shape, wells_per_task=8):
    """Dask array (plate, channel, y, x): the sum of every plate's sites, a task per group of wells."""
    import dask
    import dask.array as da

    n_plates, n_wells, _, n_channels, ny, nx = shape
    plates = []
    for p in range(n_plates):
        parts = []
        for start in range(0, n_wells, wells_per_task):
            wells = list(range(start, min(start + wells_per_task, n_wells)))
            task = dask.delayed(_wells_sum, pure=True)(path, p, wells,
                                                       dask_key_name=f"illumination-wells-{p}-{start}")
            parts.append(da.from_delayed(task, shape=(n_channels, ny, nx), dtype=np.float64))
        plates.append(da.stack(parts).sum(axis=0))
    return da.stack(plates)


def _computed(*arrays, scheduler=None):
    import dask

    return dask.compute(*arrays, scheduler=scheduler) if scheduler is not None else dask.compute(*arrays)


def write(store, field=None, *, overwrite=False, **kwargs):
    """Write the illumination fields as the node ``/illumination`` of ``store``.

    Parameters
    ----------
    store : str or Path
        A store made by :func:`cpzarr.ingest`.
    field : DataArray (plate, channel, y, x), optional
        Default: :func:`estimate` of the store, with ``kwargs``.
    overwrite : bool
        Replace an existing node.

    Returns
    -------
    DataArray (plate, channel, y, x)

    Examples
    --------
    >>> write("screen.zarr")  # doctest: +SKIP
    """
    from cpzarr.store import open_screen, write_node

    if field is None:
        field = estimate(open_screen(store), **kwargs)
    dataset = field.rename(NODE).to_dataset()
    dataset[NODE].attrs = {k: v for k, v in field.attrs.items()}
    provenance = {"stage": "illumination", "function": "cpzarr.illumination.estimate",
                  **{k: v for k, v in field.attrs.items() if k in ("downsample", "median_size", "percentile")}}
    write_node(store, NODE, dataset, provenance=provenance, overwrite=overwrite)
    return field


def read(store):
    """The ``/illumination`` node's fields (plate, channel, y, x), loaded.

    Raises
    ------
    StoreError
        The store has no such node (run ``cpzarr illumination STORE``).
    """
    from cpzarr.store import node_exists, open_node

    if not node_exists(store, NODE):
        raise StoreError(f"The store {store} has no /{NODE} node; compute it with `cpzarr illumination {store}` "
                         "or cpzarr.illumination.write(store).")
    field = open_node(store, NODE)[NODE].load()
    return field.assign_coords({k: v.astype(object) for k, v in field.coords.items() if v.dtype.kind in "TU"})


def correct(images, field):
    """Divide images by their plate's and channel's illumination field, lazily.

    Parameters
    ----------
    images : DataArray (plate, well, site, channel, y, x)
    field : DataArray (plate, channel, y, x)
        From :func:`estimate` or :func:`read`; matched to the images by plate and channel label.

    Returns
    -------
    DataArray (plate, well, site, channel, y, x) float32
        Dask-backed when ``images`` is, chunked as ``images``.

    Examples
    --------
    >>> flat = correct(screen["images"], read("screen.zarr"))  # doctest: +SKIP
    """
    missing = [f"{dim} {v}" for dim in ("plate", "channel")
               for v in images[dim].values if v not in set(field[dim].values)]
    if missing:
        raise InputError(f"the illumination field has no {', '.join(missing[:5])}; re-estimate it for this store")
    if field.sizes["y"] != images.sizes["y"] or field.sizes["x"] != images.sizes["x"]:
        raise InputError(f"the illumination field is {field.sizes['y']} x {field.sizes['x']}, the images "
                         f"{images.sizes['y']} x {images.sizes['x']}")
    f = field.sel(plate=images["plate"].values, channel=images["channel"].values).astype(np.float32)
    f = f.drop_vars([c for c in f.coords if c not in ("plate", "channel")])
    out = images.astype(np.float32) / f.assign_coords(plate=images["plate"].values, channel=images["channel"].values)
    return out.transpose(*images.dims).rename(images.name)


def corrected_screen(screen, illumination=True):
    """The screen with its images divided by the illumination fields (for ``crops``).

    ``illumination`` is True (the store's ``/illumination`` node) or a field DataArray.
    """
    if illumination is True:
        source = _store_path(screen)
        if source is None:
            raise InputError("illumination=True needs a screen opened from a store; pass the field instead")
        illumination = read(source)
    images = correct(screen["images"], illumination)
    out = screen.copy()
    out["images"] = images
    return out


def _store_path(screen):
    root = screen.to_dataset() if hasattr(screen, "to_dataset") else screen
    source = root.encoding.get("source") or root["images"].encoding.get("source")
    return source
