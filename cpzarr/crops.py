"""Single-cell crops as lazy views of the screen store; nothing is ever written to disk.

Conventions
-----------
Centre
    A cell at (x, y) (CellProfiler's pixel convention, see :mod:`cpzarr.cells`) lies in pixel
    ``(cy, cx) = (floor(y + 0.5), floor(x + 0.5))`` (halves round up, not to even). Its box covers
    rows ``[cy - box // 2, cy - box // 2 + box)`` and the same for columns: an exact slice of the
    image, no resampling. DeepProfiler instead resamples the box ``y ± box/2`` bilinearly
    (``tf.image.crop_and_resize``), which shifts pixels by less than one pixel.
Edges
    ``edge="skip"`` (the default) leaves out cells whose box leaves the image; ``edge="pad"`` keeps
    them and fills the outside with zeros. Zero padding is DeepProfiler's behaviour
    (``crop_and_resize`` extrapolates with 0), so use ``"pad"`` to get every cell DeepProfiler
    profiles. Skipping is the default because a crop that is half zeros is a different picture of
    a cell. Either way the ``cell`` coordinate holds each crop's index in the ``/cells`` node.
Scaling
    ``scale=None`` keeps the store's dtype. ``scale="minmax"`` maps every crop and channel to
    [0, 1] with ``(v - min) / (max - min)`` (float32; a constant crop gives zeros).
    ``scale="deepprofiler"`` reproduces DeepProfiler's own formula ``(v - min) / max`` (a crop whose
    maximum is 0 gives zeros), for models trained by DeepProfiler.
Sizes
    The box size is an argument and the image size is read from the store, never from a config.
"""

import numpy as np
import xarray as xr

from cpzarr.cells import cells_table, screen_parts, site_positions
from cpzarr.errors import InputError, StoreError

__all__ = ["crops", "sample"]

EDGES = ("skip", "pad")
SCALES = (None, "minmax", "deepprofiler")
CHUNKINGS = ("site", "well")


def _check_options(box, edge, scale, chunks=None):
    problems = []
    if not isinstance(box, (int, np.integer)) or isinstance(box, bool) or box < 1:
        problems.append(f"box must be a positive integer number of pixels, not {box!r}")
    if edge not in EDGES:
        problems.append(f"edge must be one of {EDGES}, not {edge!r}")
    if scale not in SCALES:
        problems.append(f"scale must be one of {SCALES}, not {scale!r}")
    if chunks is not None and chunks not in CHUNKINGS:
        problems.append(f"chunks must be one of {CHUNKINGS}, not {chunks!r}")
    if problems:
        raise InputError("invalid crop options", problems)


def _channel_index(images, channels):
    names = [str(c) for c in images["channel"].values]
    if channels is None:
        return slice(None), names
    if isinstance(channels, str):
        channels = [channels]
    unknown = [c for c in channels if c not in names]
    if unknown:
        raise InputError(f"unknown channels {unknown}; the store has {names}")
    index = [names.index(c) for c in channels]
    if index == list(range(index[0], index[-1] + 1)):
        return slice(index[0], index[-1] + 1), list(channels)
    return np.asarray(index), list(channels)


def box_origins(x, y, box):
    """Top-left pixel (row, column) of each cell's box.

    Parameters
    ----------
    x, y : ndarray (cell,)
        Cell centres, CellProfiler's pixel convention.
    box : int
        Box side in pixels.

    Returns
    -------
    rows, columns : ndarray (cell,) of int64

    Examples
    --------
    >>> box_origins(np.array([10.5]), np.array([3.2]), 4)
    (array([1]), array([9]))
    """
    rows = np.floor(np.asarray(y, np.float64) + 0.5).astype(np.int64) - box // 2
    columns = np.floor(np.asarray(x, np.float64) + 0.5).astype(np.int64) - box // 2
    return rows, columns


def _inside(rows, columns, box, height, width):
    return (rows >= 0) & (columns >= 0) & (rows + box <= height) & (columns + box <= width)


def _cut(sites, which, rows, columns, box, channel_index, scale):
    """Cut the boxes of cells out of site images (the body of one dask task).

    ``sites`` is a list of image blocks of shape (1, 1, 1, channel, y, x); ``which[i]`` names the
    block of cell ``i``.
    """
    planes = [s[0, 0, 0][channel_index] for s in sites]
    n_channels, height, width = planes[0].shape if planes else (0, 0, 0)
    inside = _inside(rows, columns, box, height, width)
    dtype = planes[0].dtype if planes else np.uint8
    out = (np.empty if inside.all() else np.zeros)((len(rows), n_channels, box, box), dtype=dtype)
    for i, (b, r, c) in enumerate(zip(which, rows, columns)):
        if inside[i]:
            out[i] = planes[b][:, r : r + box, c : c + box]
            continue
        r0, r1 = max(r, 0), min(r + box, height)
        c0, c1 = max(c, 0), min(c + box, width)
        if r0 < r1 and c0 < c1:
            out[i, :, r0 - r : r1 - r, c0 - c : c1 - c] = planes[b][:, r0:r1, c0:c1]
    return _scale(out, scale)


def _scale(out, scale):
    if scale is None:
        return out
    out = out.astype(np.float32)
    low = out.min(axis=(2, 3), keepdims=True)
    high = out.max(axis=(2, 3), keepdims=True)
    span = (high - low) if scale == "minmax" else high
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(span > 0, (out - low) / np.where(span > 0, span, 1), 0)
    return scaled.astype(np.float32)


def _site_blocks(images):
    """The images' dask array with one chunk per site (all channels, whole image)."""
    data = images.data
    if not hasattr(data, "dask"):
        import dask.array as da

        data = da.from_array(np.asarray(data), chunks=(1, 1, 1) + data.shape[3:])
    wanted = tuple((1,) * n for n in data.shape[:3]) + tuple((n,) for n in data.shape[3:])
    if data.chunks != wanted:
        data = data.rechunk(wanted)
    return data


def _eligible(table, images, box, edge):
    rows, columns = box_origins(table["x"].to_numpy(), table["y"].to_numpy(), box)
    if edge == "skip":
        keep = _inside(rows, columns, box, images.sizes["y"], images.sizes["x"])
    else:
        keep = np.ones(len(table), dtype=bool)
    return keep, rows, columns


def _check_present(root, images, pos):
    if "present" not in root or not len(pos):
        return
    present = np.asarray(root["present"].transpose("plate", "well", "site").values)
    absent = ~present[pos[:, 0], pos[:, 1], pos[:, 2]]
    if absent.any():
        bad = np.unique(pos[absent], axis=0)
        shown = ", ".join(
            f"{images.plate.values[p]}/{images.well.values[w]}/site {images.site.values[s]}" for p, w, s in bad[:5]
        )
        raise StoreError(
            f"{int(absent.sum())} cells lie in {len(bad)} sites whose images were never written "
            f"(present is False), e.g. {shown}; re-run the ingest or re-import the cells"
        )


def _crop_array(images, rows, columns, pos, box, channel_index, n_channels, scale, chunks):
    """Dask array (cell, channel, y, x) over cells already sorted by site; one task per site or well."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    data = _site_blocks(images)

    def starts(columns_used):
        # positions where the (plate, well[, site]) of consecutive cells changes
        changed = (np.diff(pos[:, :columns_used], axis=0) != 0).any(axis=1)
        return np.flatnonzero(np.r_[True, changed]) if len(pos) else np.zeros(0, np.int64)

    site_starts = starts(3)
    chunk_starts = site_starts if chunks == "site" else starts(2)
    bounds = np.r_[chunk_starts, len(pos)]
    name = "crops-" + tokenize(data.name, rows, columns, pos, box, str(channel_index), scale, chunks)
    layer = {}
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        first_cells = site_starts[np.searchsorted(site_starts, lo) : np.searchsorted(site_starts, hi)]
        site_keys = [(data.name, *map(int, pos[i]), 0, 0, 0) for i in first_cells]
        which = np.searchsorted(first_cells, np.arange(lo, hi), side="right") - 1
        layer[(name, k, 0, 0, 0)] = (
            _cut, site_keys, which, rows[lo:hi], columns[lo:hi], box, channel_index, scale,
        )
    sizes = np.diff(bounds).tolist()
    dtype = np.dtype(np.float32) if scale else data.dtype
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])
    return da.Array(
        graph, name, chunks=(tuple(sizes) or (0,), (n_channels,), (box,), (box,)),
        dtype=dtype, meta=np.empty((0, 0, 0, 0), dtype=dtype),
    )


def _prepared(screen, cells, box, edge, channels):
    images, cells, root = screen_parts(screen, cells)
    table = cells_table(cells)
    channel_index, channel_names = _channel_index(images, channels)
    keep, rows, columns = _eligible(table, images, box, edge)
    pos = site_positions(table, images)
    return images, root, table, keep, rows, columns, pos, channel_index, channel_names


# The last screen's cell table, reused by consecutive sample() calls (a training loop) so that a
# batch costs its site reads only; the objects themselves are kept, so an id is never reused.
_SAMPLE_CACHE = {}


def _prepared_for_sampling(screen, cells, box, edge, channels):
    key = (id(screen), id(cells), box, edge, None if channels is None else tuple(np.atleast_1d(channels)))
    hit = _SAMPLE_CACHE.get(key)
    if hit is not None and hit[0] is screen and hit[1] is cells:
        return hit[2]
    prepared = _prepared(screen, cells, box, edge, channels)
    _SAMPLE_CACHE.clear()
    _SAMPLE_CACHE[key] = (screen, cells, (*prepared, _well_labels(prepared[1])))
    return _SAMPLE_CACHE[key][2]


def crops(screen, box=128, channels=None, edge="skip", scale=None, chunks="site", *, cells=None):
    """Lazy single-cell crops of a screen.

    Parameters
    ----------
    screen : DataTree or Dataset
        The store (``open_screen``) or a Dataset with ``images (plate, well, site, channel, y, x)``.
    box : int
        Side of the square box in pixels (DeepProfiler's default is 128).
    channels : list of str, optional
        Channels to keep, in this order; all by default.
    edge : {"skip", "pad"}
        Leave out cells whose box leaves the image, or zero-pad them (DeepProfiler's behaviour).
    scale : {None, "minmax", "deepprofiler"}
        Per-crop, per-channel intensity scaling (float32 result), see the module docstring.
    chunks : {"site", "well"}
        One dask chunk (and one task) per site, or per well.
    cells : Dataset or pandas.DataFrame, optional
        Cells to crop instead of the store's ``/cells`` node (any subset of it, in any order).

    Returns
    -------
    crops : DataArray (cell, channel, y, x)
        Dask-backed; coordinates along ``cell``: ``cell`` (index in the cells given), ``plate``,
        ``well``, ``site``, ``x``, ``y``. Cells come in store order (plate, well, site). Computing
        any subset reads only the sites it needs, each once.

    Examples
    --------
    >>> screen = cpzarr.open_screen("screen.zarr")  # doctest: +SKIP
    >>> view = crops(screen, box=128, channels=["DNA", "RNA"])  # doctest: +SKIP
    >>> view.isel(cell=slice(0, 32)).values.shape  # doctest: +SKIP
    (32, 2, 128, 128)
    """
    _check_options(box, edge, scale, chunks)
    images, root, table, keep, rows, columns, pos, channel_index, channel_names = _prepared(
        screen, cells, box, edge, channels
    )
    index = np.flatnonzero(keep)
    index = index[np.lexsort((index, pos[index, 2], pos[index, 1], pos[index, 0]))]
    _check_present(root, images, pos[index])
    array = _crop_array(
        images, rows[index], columns[index], pos[index], box, channel_index,
        len(channel_names), scale, chunks,
    )
    picked = table.iloc[index]
    coords = {
        "cell": ("cell", index.astype(np.int64)),
        "plate": ("cell", picked["plate"].to_numpy(object)),
        "well": ("cell", picked["well"].to_numpy(object)),
        "site": ("cell", picked["site"].to_numpy(np.int64)),
        "x": ("cell", picked["x"].to_numpy(np.float64)),
        "y": ("cell", picked["y"].to_numpy(np.float64)),
        "channel": ("channel", np.asarray(channel_names, dtype=object)),
    }
    return xr.DataArray(
        array, dims=("cell", "channel", "y", "x"), coords=coords, name="crops",
        attrs={"box": int(box), "edge": edge, "scale": str(scale)},
    )


def _well_labels(root):
    """Per-(plate, well) metadata of the root node as a frame keyed by plate and well."""
    names = [
        n for n, v in root.data_vars.items()
        if set(v.dims) == {"plate", "well"} and n not in ("plate", "well")
    ]
    if not names:
        return None
    frame = root[names].transpose("plate", "well").to_dataframe().reset_index()
    frame["plate"] = frame["plate"].map(str)
    frame["well"] = frame["well"].map(str)
    return frame


def _draw(rng, n, eligible, pos, cells_per_site):
    if not len(eligible):
        raise InputError("no cell can be sampled: the screen has no cells whose box fits the image")
    if cells_per_site == 1:
        return rng.choice(eligible, size=n, replace=n > len(eligible))
    site_of = np.ravel_multi_index(pos[eligible].T, pos.max(axis=0) + 1)
    sites, inverse = np.unique(site_of, return_inverse=True)
    by_site = np.split(eligible[np.argsort(inverse, kind="stable")], np.cumsum(np.bincount(inverse))[:-1])
    weights = np.array([len(c) for c in by_site], dtype=np.float64)
    drawn = []
    while sum(len(d) for d in drawn) < n:
        need = n - sum(len(d) for d in drawn)
        n_sites = -(-need // cells_per_site)
        for s in rng.choice(len(sites), size=n_sites, p=weights / weights.sum()):
            pool = by_site[s]
            drawn.append(rng.choice(pool, size=min(cells_per_site, len(pool)), replace=False))
    return np.concatenate(drawn)[:n]


def sample(
    screen, n, *, box=128, seed=None, channels=None, edge="skip", scale=None, cells=None,
    cells_per_site=1, scheduler="threads",
):
    """Random cells of the whole screen, cropped, for training batches.

    Only the sites of the drawn cells are read, each once per call. The screen's cell table is
    prepared on the first call and reused while the same ``screen`` (and ``cells``) objects are
    passed again, so a training loop pays only for the sites it reads.

    Parameters
    ----------
    screen : DataTree or Dataset
        The store (``open_screen``) or a Dataset with ``images``.
    n : int
        Number of cells to draw (with replacement only when the screen has fewer cells).
    box : int
        Box side in pixels.
    seed : int or numpy.random.Generator, optional
        Random state; the same seed draws the same cells.
    channels : list of str, optional
        Channels to keep, in this order.
    edge : {"skip", "pad"}
        Cells whose box leaves the image are never drawn, or are drawn and zero-padded.
    scale : {None, "minmax", "deepprofiler"}
        Per-crop, per-channel scaling, as :func:`crops`.
    cells : Dataset or pandas.DataFrame, optional
        Cells to draw from instead of the store's ``/cells`` node (e.g. a training split).
    cells_per_site : int
        Cells drawn from each drawn site. 1 draws cells independently; larger values draw sites
        (weighted by their cell count) and several cells in each, so that a batch reads fewer
        sites, as DeepProfiler's sampler does.
    scheduler : str
        Dask scheduler for reading the sites ("threads" reads them in parallel).

    Returns
    -------
    crops : ndarray (n, channel, box, box)
        In drawing order; dtype of the images, float32 when scaled.
    cells : pandas.DataFrame
        One row per crop: ``cell`` (index in the cells), plate, well, site, x, y and every
        well-level variable of the store (compound, moa, control, ...) as labels.

    Examples
    --------
    >>> batch, labels = sample(screen, 256, seed=0, scale="minmax")  # doctest: +SKIP
    >>> batch.shape, labels["compound"].iloc[0]  # doctest: +SKIP
    ((256, 5, 128, 128), 'DMSO')
    """
    _check_options(box, edge, scale)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive number of cells, not {n!r}")
    if not isinstance(cells_per_site, (int, np.integer)) or cells_per_site < 1:
        raise InputError(f"cells_per_site must be a positive integer, not {cells_per_site!r}")
    images, root, table, keep, rows, columns, pos, channel_index, channel_names, well_labels = (
        _prepared_for_sampling(screen, cells, box, edge, channels)
    )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    drawn = _draw(rng, int(n), np.flatnonzero(keep), pos, int(cells_per_site))
    order = np.lexsort((np.arange(len(drawn)), pos[drawn, 2], pos[drawn, 1], pos[drawn, 0]))
    by_site = drawn[order]
    _check_present(root, images, pos[by_site])
    array = _crop_array(
        images, rows[by_site], columns[by_site], pos[by_site], box, channel_index,
        len(channel_names), scale, "site",
    )
    values = array.compute(scheduler=scheduler)
    out = np.empty_like(values)
    out[order] = values
    labels = table.iloc[drawn].reset_index()
    if well_labels is not None:
        labels = labels.merge(well_labels, on=["plate", "well"], how="left", sort=False)
    return out, labels
