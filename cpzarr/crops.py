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
    ``edge="pad"`` (the default, as for ``cpzarr profile --edge`` and the config's ``crops.edge``)
    keeps cells whose box leaves the image and fills the outside with zeros: DeepProfiler's
    behaviour (``crop_and_resize`` extrapolates with 0), so every cell DeepProfiler profiles is
    profiled. ``edge="skip"`` leaves them out (a crop that is half zeros is a different picture
    of a cell). Either way the view's ``attrs`` count them (``cells_at_edge``,
    ``cells_left_out``, see :func:`edge_counts`), and the ``cell`` coordinate holds each crop's
    index in the ``/cells`` node.
Scaling
    ``scale=None`` keeps the store's dtype. ``scale="minmax"`` maps every crop and channel to
    [0, 1] with ``(v - min) / (max - min)`` (float32; a constant crop gives zeros).
    ``scale="deepprofiler"`` reproduces DeepProfiler's own formula ``(v - min) / max`` (a crop whose
    maximum is 0 gives zeros), for models trained by DeepProfiler.
Sizes
    The box size is an argument and the image size is read from the store, never from a config.
Random access
    :func:`sample` (one batch) and :class:`Sampler` (a training loop's stream) draw cells across
    the whole screen and read only the sites drawn, in a thread pool. A store opened by
    ``open_screen`` is read straight from its shard files, and of a Blosc chunk only the blocks
    under the drawn boxes (and channels) are decoded. Decoding is the cost of a site read: with
    the ingest's 1 MiB Blosc blocks a cell's bands span most of a 5-channel site, so about
    7 ms of one core per site read, and throughput grows with the cells taken per site read
    (``cells_per_site``) or with fewer channels; with small blocks (64 KiB) one cell costs a
    quarter of a site (``benchmarks/benchmark_crops.py``).
"""

import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.cells import cells_table, screen_parts, site_positions
from cpzarr.errors import InputError, StoreError

__all__ = ["CropPlan", "Sampler", "crops", "sample"]

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


def _cut_site(planes, rows, columns, box):
    """Cut the boxes at ``rows, columns`` out of one site's ``planes`` (channel, y, x); zeros outside."""
    n_channels, height, width = planes.shape
    inside = _inside(rows, columns, box, height, width)
    out = (np.empty if inside.all() else np.zeros)((len(rows), n_channels, box, box), dtype=planes.dtype)
    for i, (r, c) in enumerate(zip(rows, columns)):
        if inside[i]:
            out[i] = planes[:, r : r + box, c : c + box]
            continue
        r0, r1 = max(r, 0), min(r + box, height)
        c0, c1 = max(c, 0), min(c + box, width)
        if r0 < r1 and c0 < c1:
            out[i, :, r0 - r : r1 - r, c0 - c : c1 - c] = planes[:, r0:r1, c0:c1]
    return out


def _cut(sites, which, rows, columns, box, channel_index, scale):
    """Cut the boxes of cells out of site images (the body of one dask task).

    ``sites`` is a list of image blocks of shape (1, 1, 1, channel, y, x); ``which[i]`` names the
    block of cell ``i``; cells of one block are consecutive.
    """
    if not sites:
        return _scale(np.zeros((0, 0, box, box), np.uint8), scale)
    bounds = np.r_[0, np.flatnonzero(np.diff(which)) + 1, len(which)]
    parts = [
        _cut_site(sites[which[lo]][0, 0, 0][channel_index], rows[lo:hi], columns[lo:hi], box)
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]
    return _scale(_joined(parts), scale)


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
    # read here, on threads: through a cluster it would be one task per well's chunk
    present = np.asarray(root["present"].transpose("plate", "well", "site").compute(scheduler="threads").values)
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


def _read_and_cut(read, sites, which, rows, columns, box, channel_index, scale):
    """Read ``sites`` (positions, one row each) with ``read`` and cut their cells (one dask task)."""
    planes = [read(*(int(v) for v in site))[channel_index] for site in sites]
    if not planes:
        return _scale(np.zeros((0, 0, box, box), np.uint8), scale)
    bounds = np.r_[0, np.flatnonzero(np.diff(which)) + 1, len(which)]
    parts = [_cut_site(planes[which[lo]], rows[lo:hi], columns[lo:hi], box) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return _scale(_joined(parts), scale)


def _joined(parts):
    # one site's crops (the usual task) need no second copy
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _crop_array(images, rows, columns, pos, box, channel_index, n_channels, scale, chunks, read=None):
    """Dask array (cell, channel, y, x) over cells already sorted by site; one task per site or well.

    With ``read`` (a :class:`_StoreSites` of the store's own array) each task reads its sites
    itself, so a site's pixels live only inside the task that cuts them; otherwise the tasks
    depend on the blocks of the images' dask array.
    """
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
        which = np.searchsorted(first_cells, np.arange(lo, hi), side="right") - 1
        if read is not None:
            layer[(name, k, 0, 0, 0)] = (
                _read_and_cut, read, pos[first_cells], which, rows[lo:hi], columns[lo:hi], box, channel_index, scale,
            )
            continue
        site_keys = [(data.name, *map(int, pos[i]), 0, 0, 0) for i in first_cells]
        layer[(name, k, 0, 0, 0)] = (
            _cut, site_keys, which, rows[lo:hi], columns[lo:hi], box, channel_index, scale,
        )
    sizes = np.diff(bounds).tolist()
    dtype = np.dtype(np.float32) if scale else data.dtype
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[] if read is not None else [data])
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


def crops(screen, box=128, channels=None, edge="pad", scale=None, chunks="site", *, cells=None, illumination=None):
    """Lazy single-cell crops of a screen.

    Parameters
    ----------
    screen : DataTree or Dataset
        The store (``open_screen``) or a Dataset with ``images (plate, well, site, channel, y, x)``.
    box : int
        Side of the square box in pixels (DeepProfiler's default is 128).
    channels : list of str, optional
        Channels to keep, in this order; all by default.
    edge : {"pad", "skip"}, default "pad"
        Zero-pad the boxes of cells whose box leaves the image (DeepProfiler's behaviour), or
        leave those cells out.
    scale : {None, "minmax", "deepprofiler"}
        Per-crop, per-channel intensity scaling (float32 result), see the module docstring.
    chunks : {"site", "well"}
        One dask chunk (and one task) per site, or per well.
    cells : Dataset or pandas.DataFrame, optional
        Cells to crop instead of the store's ``/cells`` node (any subset of it, in any order).
    illumination : bool or DataArray (plate, channel, y, x), optional
        Divide the images by their illumination fields first (lazily, float32): True takes the
        store's ``/illumination`` node (:mod:`cpzarr.illumination`), a DataArray is used as given.

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
    return CropPlan(screen, box=box, channels=channels, edge=edge, scale=scale, chunks=chunks, cells=cells,
                    illumination=illumination).view()


class CropPlan:
    """Which cells a crop view holds, in order, with the graph of any range of them made on demand.

    :func:`crops` is ``CropPlan(...).view()``. A stage that computes a screen in batches asks
    for the view of one range of cells at a time (:meth:`view` with :meth:`chunk_range`), so
    the client holds the cell table but never the task graph of the whole screen. The
    parameters are those of :func:`crops`.

    Attributes
    ----------
    n_cells : int
        Cells in the view.
    coords : dict
        The view's ``cell`` coordinates (``cell``, ``plate``, ``well``, ``site``, ``x``, ``y``).
    attrs : dict
        The view's attributes (box, edge, scale and :func:`edge_counts`).
    """

    def __init__(self, screen, box=128, channels=None, edge="pad", scale=None, chunks="site", *, cells=None,
                 illumination=None):
        _check_options(box, edge, scale, chunks)
        if illumination is not None and illumination is not False:
            from cpzarr.illumination import corrected_screen

            screen = corrected_screen(screen, illumination)
        images, root, table, keep, rows, columns, pos, channel_index, channel_names = _prepared(
            screen, cells, box, edge, channels
        )
        index = np.flatnonzero(keep)
        index = index[np.lexsort((index, pos[index, 2], pos[index, 1], pos[index, 0]))]
        _check_present(root, images, pos[index])
        read = _StoreSites(images, root)
        self._images, self._read = images, read if read.shards is not None else None
        self._rows, self._columns, self._pos = rows[index], columns[index], pos[index]
        self._box, self._channel_index, self._channels, self._scale, self._chunks = (
            box, channel_index, channel_names, scale, chunks)
        # where a chunk (a site, or a well) starts, as in _crop_array
        used = 3 if chunks == "site" else 2
        changed = (np.diff(self._pos[:, :used], axis=0) != 0).any(axis=1)
        self._starts = np.flatnonzero(np.r_[True, changed]) if len(index) else np.zeros(0, np.int64)
        picked = table.iloc[index]
        at_edge = int((~_inside(rows, columns, box, images.sizes["y"], images.sizes["x"])).sum())
        self.n_cells = len(index)
        self.coords = {
            "cell": ("cell", index.astype(np.int64)),
            "plate": ("cell", picked["plate"].to_numpy(object)),
            "well": ("cell", picked["well"].to_numpy(object)),
            "site": ("cell", picked["site"].to_numpy(np.int64)),
            "x": ("cell", picked["x"].to_numpy(np.float64)),
            "y": ("cell", picked["y"].to_numpy(np.float64)),
        }
        self.attrs = {"box": int(box), "edge": edge, "scale": str(scale), **edge_counts(len(table), at_edge, edge)}

    def chunk_range(self, lo, hi):
        """The smallest range of whole chunks (sites, or wells) that holds cells ``lo:hi``."""
        if hi <= lo:
            return lo, lo
        first = self._starts[np.searchsorted(self._starts, lo, side="right") - 1]
        after = np.searchsorted(self._starts, hi, side="left")
        last = self._starts[after] if after < len(self._starts) else self.n_cells
        return int(first), int(last)

    def view(self, lo=0, hi=None):
        """The lazy crops of cells ``lo:hi`` of the view (all by default), a DataArray as :func:`crops`.

        A range that starts and ends on chunk boundaries (:meth:`chunk_range`) has exactly the
        chunks, and so the tasks' values, of the whole view over those cells.
        """
        hi = self.n_cells if hi is None else hi
        part = slice(lo, hi)
        array = _crop_array(
            self._images, self._rows[part], self._columns[part], self._pos[part], self._box, self._channel_index,
            len(self._channels), self._scale, self._chunks, read=self._read,
        )
        coords = {k: (dim, values[part]) for k, (dim, values) in self.coords.items()}
        coords["channel"] = ("channel", np.asarray(self._channels, dtype=object))
        return xr.DataArray(array, dims=("cell", "channel", "y", "x"), coords=coords, name="crops",
                            attrs=dict(self.attrs))


def edge_counts(cells, at_edge, edge):
    """The ``attrs`` that say how many cells a crop view left out, and why.

    Parameters
    ----------
    cells : int
        Cells located.
    at_edge : int
        Of them, cells whose box leaves the image.
    edge : {"skip", "pad"}

    Returns
    -------
    dict
        ``cells_located``, ``cells_at_edge`` (zero-padded with ``"pad"``), ``cells_left_out``
        and ``left_out_because`` (empty when none was).

    Examples
    --------
    >>> edge_counts(739, 523, "skip")["cells_left_out"]
    523
    """
    left_out = at_edge if edge == "skip" else 0
    return {"cells_located": int(cells), "cells_at_edge": int(at_edge), "cells_left_out": int(left_out),
            "left_out_because": "their box leaves the image (edge='skip')" if left_out else ""}


# ---------------------------------------------------------------------------------------------
# Random access: sample() and Sampler read the drawn sites in a thread pool (the decode releases
# the GIL) and cut the drawn cells out of them, without building a dask graph per batch.


class _StoreSites:
    """Whole site images ``(channel, y, x)`` by positional (plate, well, site); safe across threads.

    The store's own reader (:func:`cpzarr.store.site_reader`) is used when ``images`` is the
    store's ``images`` variable as opened (no selection, no computation on it) from a local disk;
    anything else (an object store, an in-memory Dataset, a subset, a computed array) is read
    block by block through its dask or numpy array. The store's reader reads its shard files
    (:class:`cpzarr._shards.SiteReader`): a site costs one read of its chunk's bytes and its
    decode, where a call of the Zarr array also re-reads and checks the shard index and hands the
    chunk through Zarr's event-loop thread and buffers (30-45 % more CPU time per 8-bit
    LINCS-like site, about twice as much per 16-bit one). There a random draw, which needs a few
    boxes of a site, decodes only the Blosc blocks under them (``need``). Shard indexes are
    cached: a finished store's images do not change.
    """

    def __init__(self, images, root):
        from cpzarr.store import site_reader

        self.shards = site_reader(images)
        # kept only when needed: a task graph that carries this reader stays small to ship
        self.data = images.data if self.shards is None else None

    def __call__(self, p, w, s, need=None):
        """The site's pixels; ``need = (rows, box, channels)`` allows leaving every other row unread."""
        if self.shards is not None:
            return self.shards.site(p, w, s, need)
        block = self.data[p, w, s]
        return np.asarray(block.compute(scheduler="sync") if hasattr(block, "compute") else block)


class _Draws:
    """A screen prepared for random draws: its cells, their boxes, and the eligible cells by site."""

    def __init__(self, screen, cells, box, edge, channels):
        (self.images, self.root, self.table, keep, self.rows, self.columns, self.pos,
         self.channel_index, self.channel_names) = _prepared(screen, cells, box, edge, channels)
        eligible = np.flatnonzero(keep)
        if not len(eligible):
            raise InputError("no cell can be sampled: the screen has no cells whose box fits the image")
        self.eligible = eligible
        order = eligible[np.lexsort((eligible, self.pos[eligible, 2], self.pos[eligible, 1], self.pos[eligible, 0]))]
        changed = np.r_[True, (np.diff(self.pos[order], axis=0) != 0).any(axis=1)]
        self.members = order  # eligible cells, site after site
        self.starts = np.flatnonzero(changed)
        self.counts = np.diff(np.r_[self.starts, len(order)])
        self.well_labels = _well_labels(self.root)
        n_wells = self.images.sizes["well"]
        self.well_row = self.pos[:, 0] * n_wells + self.pos[:, 1]
        self.read = _StoreSites(self.images, self.root)
        self.channel_list = np.arange(self.images.sizes["channel"])[self.channel_index]
        self.box = box
        self._cdf = {}

    def site_cdf(self, cells_per_site):
        """Cumulative site probabilities that make every eligible cell equally likely.

        A site of ``n`` cells gives ``min(k, n)`` of them when drawn, so drawing it with weight
        ``n / min(k, n)`` gives each of its cells the probability ``weight * min(k, n) / n = 1``
        (up to the common normalisation): uniform over cells, whatever the sites' sizes.
        """
        cdf = self._cdf.get(cells_per_site)
        if cdf is None:
            cdf = np.cumsum(self.counts / np.minimum(self.counts, cells_per_site))
            cdf = self._cdf[cells_per_site] = cdf / cdf[-1]
        return cdf

    def draw_sites(self, rng, n_sites, cells_per_site):
        """``n_sites`` sites (indices into the eligible sites) and, for each, its drawn cells."""
        sites = np.minimum(np.searchsorted(self.site_cdf(cells_per_site), rng.random(n_sites), side="right"),
                           len(self.counts) - 1)
        cells = [
            self.members[self.starts[s] + rng.choice(self.counts[s], size=min(cells_per_site, self.counts[s]),
                                                     replace=False)]
            for s in sites
        ]
        return sites, cells

    def labels(self, drawn):
        """The table rows of ``drawn`` cells with their well's metadata (the sampler's labels)."""
        labels = self.table.iloc[drawn].reset_index()
        if self.well_labels is None:
            return labels
        extra = self.well_labels.iloc[self.well_row[drawn]].drop(columns=["plate", "well"])
        return pd.concat([labels, extra.reset_index(drop=True)], axis=1)

    def crops_of_site(self, cells, scale):
        """Crops ``(cell, channel, box, box)`` of ``cells``, all in one site (one task of the pool)."""
        need = (self.rows[cells], self.box, self.channel_list)
        planes = self.read(*(int(v) for v in self.pos[cells[0]]), need=need)[self.channel_index]
        return _scale(_cut_site(planes, self.rows[cells], self.columns[cells], self.box), scale)


# The last screen prepared for drawing, reused by consecutive sample() calls (a training loop) so
# that a batch costs its site reads only; the objects themselves are kept, so an id is never reused.
_SAMPLE_CACHE = {}


def _draws_for(screen, cells, box, edge, channels):
    key = (id(screen), id(cells), box, edge, None if channels is None else tuple(np.atleast_1d(channels)))
    hit = _SAMPLE_CACHE.get(key)
    if hit is not None and hit[0] is screen and hit[1] is cells:
        return hit[2]
    draws = _Draws(screen, cells, box, edge, channels)
    _SAMPLE_CACHE.clear()
    _SAMPLE_CACHE[key] = (screen, cells, draws)
    return draws


def _well_labels(root):
    """Per-(plate, well) metadata of the root node, one row per well in (plate, well) order."""
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


def _check_sampling(box, edge, scale, cells_per_site, workers):
    _check_options(box, edge, scale)
    if not isinstance(cells_per_site, (int, np.integer)) or cells_per_site < 1:
        raise InputError(f"cells_per_site must be a positive integer, not {cells_per_site!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"workers must be a positive number of threads, not {workers!r}")


def _generator(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sample(
    screen, n, *, box=128, seed=None, channels=None, edge="pad", scale=None, cells=None,
    cells_per_site=1, workers=2,
):
    """Random cells of the whole screen, cropped: one batch (see :class:`Sampler` for a stream).

    Only the sites of the drawn cells are read, each once per call, ``workers`` at a time. The
    screen's cell table is prepared on the first call and reused while the same ``screen`` (and
    ``cells``) objects are passed again, so a training loop pays only for the sites it reads.

    The draw: with ``cells_per_site=1`` the ``n`` cells are drawn uniformly from the eligible
    cells, without replacement (with replacement only when the screen has fewer than ``n``).
    With ``cells_per_site=k`` sites are drawn with replacement and ``k`` cells of each without
    replacement (all of a site with fewer), the sites weighted so that every eligible cell is
    equally likely; cells of one site come together, so a batch reads about ``n / k`` sites.

    Parameters
    ----------
    screen : DataTree or Dataset
        The store (``open_screen``) or a Dataset with ``images``.
    n : int
        Number of cells to draw.
    box : int
        Box side in pixels.
    seed : int or numpy.random.Generator, optional
        Random state; the same seed draws the same cells.
    channels : list of str, optional
        Channels to keep, in this order.
    edge : {"pad", "skip"}, default "pad"
        Cells whose box leaves the image are drawn and zero-padded, or never drawn.
    scale : {None, "minmax", "deepprofiler"}
        Per-crop, per-channel scaling, as :func:`crops`.
    cells : Dataset or pandas.DataFrame, optional
        Cells to draw from instead of the store's ``/cells`` node (e.g. a training split).
    cells_per_site : int
        Cells drawn from each drawn site (1: cells drawn independently).
    workers : int
        Threads reading and cutting sites at once.

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
    from concurrent.futures import ThreadPoolExecutor

    _check_sampling(box, edge, scale, cells_per_site, workers)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive number of cells, not {n!r}")
    draws = _draws_for(screen, cells, box, edge, channels)
    rng = _generator(seed)
    if cells_per_site == 1:
        drawn = rng.choice(draws.eligible, size=n, replace=n > len(draws.eligible))
    else:
        drawn, total = [], 0
        while total < n:
            _, picked = draws.draw_sites(rng, -(-(n - total) // cells_per_site), int(cells_per_site))
            drawn += picked
            total += sum(len(p) for p in picked)
        drawn = np.concatenate(drawn)[:n]
    pos = draws.pos
    order = np.lexsort((np.arange(len(drawn)), pos[drawn, 2], pos[drawn, 1], pos[drawn, 0]))
    by_site = drawn[order]
    _check_present(draws.root, draws.images, pos[by_site])
    bounds = np.r_[0, np.flatnonzero((np.diff(pos[by_site], axis=0) != 0).any(axis=1)) + 1, len(by_site)]
    groups = [by_site[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(min(int(workers), len(groups))) as pool:
        parts = list(pool.map(lambda g: draws.crops_of_site(g, scale), groups))
    values = np.concatenate(parts)
    out = np.empty_like(values)
    out[order] = values
    return out, draws.labels(drawn)


class Sampler:
    """An endless stream of random training batches of crops drawn across the whole screen.

    Sites are drawn at random and read by a pool of ``workers`` threads ahead of the consumer
    (the zstd decode releases the GIL, so the reads run beside the training step); each read site
    gives ``cells_per_site`` random cells, which join a pool of ``pool_batches * batch_size``
    crops; each batch takes ``batch_size`` crops at random out of the pool, which is topped up
    again. So consecutive batches mix crops of many sites (about ``pool_batches * batch_size /
    cells_per_site``), as DeepProfiler trains from a queue of crops of loaded images, while every
    site read serves several cells.

    The statistics of the draw: sites are drawn independently, with replacement, each with weight
    ``n / min(k, n)`` for its ``n`` eligible cells, and give ``min(k, n)`` distinct cells: every
    eligible cell of the screen is equally likely to enter the pool (uniform over cells, not over
    sites). Cells of a site enter the pool together, and the pool leaves each one in a batch
    uniformly at random, so a batch is close to, but not exactly, a uniform draw of cells: it may
    hold several cells of one site, and a cell may come back in a later batch.

    The stream is reproducible for a given ``seed`` whatever the thread timing: draws are made in
    the calling thread, and site reads join the pool in the order they were drawn.

    Parameters
    ----------
    screen : DataTree or Dataset
        The store (``open_screen``) or a Dataset with ``images``.
    batch_size : int
        Crops per batch.
    box : int
        Box side in pixels.
    cells_per_site : int
        Cells taken from each site read (``k``).
    pool_batches : int
        Size of the crop pool in batches (1: a batch is the crops of the sites read just for it).
    seed : int or numpy.random.Generator, optional
        Random state of the whole stream.
    channels : list of str, optional
        Channels to keep, in this order.
    edge : {"pad", "skip"}, default "pad"
        Cells whose box leaves the image are drawn and zero-padded, or never drawn.
    scale : {None, "minmax", "deepprofiler"}
        Per-crop, per-channel scaling, as :func:`crops` (done by the reading threads).
    cells : Dataset or pandas.DataFrame, optional
        Cells to draw from instead of the store's ``/cells`` node (e.g. a training split).
    workers : int
        Threads reading sites.
    prefetch_batches : int
        Batches' worth of sites kept in flight ahead of the consumer.

    Yields
    ------
    crops : ndarray (batch_size, channel, box, box)
        Dtype of the images, float32 when scaled.
    cells : pandas.DataFrame
        One row per crop, as :func:`sample` returns.

    Examples
    --------
    >>> with Sampler(screen, 256, cells_per_site=8, seed=0, scale="minmax") as batches:  # doctest: +SKIP
    ...     for step in range(1000):
    ...         x, labels = next(batches)
    """

    def __init__(
        self, screen, batch_size=256, *, box=128, cells_per_site=8, pool_batches=4, seed=None, channels=None,
        edge="pad", scale=None, cells=None, workers=2, prefetch_batches=2,
    ):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        _check_sampling(box, edge, scale, cells_per_site, workers)
        for name, value in (("batch_size", batch_size), ("pool_batches", pool_batches),
                            ("prefetch_batches", prefetch_batches)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be a positive integer, not {value!r}")
        self.batch_size, self.cells_per_site, self.scale = int(batch_size), int(cells_per_site), scale
        self._draws = draws = _draws_for(screen, cells, box, edge, channels)
        _check_present(draws.root, draws.images, draws.pos[draws.members[draws.starts]])
        # two streams: which sites and cells are read, and how the pool is mixed into batches
        self._site_rng, self._mix_rng = _generator(seed).spawn(2)
        self._pool_size = int(pool_batches) * self.batch_size
        capacity = self._pool_size + self.cells_per_site - 1
        dtype = np.float32 if scale else draws.images.dtype
        self._pool = np.empty((capacity, len(draws.channel_names), box, box), dtype=dtype)
        self._pool_cells = np.empty(capacity, dtype=np.int64)
        self._n = 0
        self._ahead = -(-int(prefetch_batches) * self.batch_size // self.cells_per_site)
        self._futures = deque()
        self._executor = ThreadPoolExecutor(int(workers), thread_name_prefix="cpzarr-sampler")
        self._submit(self._ahead + -(-self._pool_size // self.cells_per_site))

    def _submit(self, n_sites):
        if n_sites <= 0:
            return
        _, picked = self._draws.draw_sites(self._site_rng, n_sites, self.cells_per_site)
        for cells in picked:
            self._futures.append((cells, self._executor.submit(self._draws.crops_of_site, cells, self.scale)))

    def _fill(self):
        while self._n < self._pool_size:
            if len(self._futures) <= self._ahead:
                self._submit(self._ahead + 1 - len(self._futures))
            cells, future = self._futures.popleft()
            crops = future.result()
            self._pool[self._n : self._n + len(cells)] = crops
            self._pool_cells[self._n : self._n + len(cells)] = cells
            self._n += len(cells)

    def __iter__(self):
        return self

    def __next__(self):
        self._fill()
        n, size = self._n, self.batch_size
        pick = self._mix_rng.choice(n, size=size, replace=False)
        crops, cells = self._pool[pick], self._pool_cells[pick]
        # the crops left at the pool's end fill the holes the batch left, so the pool stays packed
        left = n - size
        holes = pick[pick < left]
        taken = np.zeros(size, dtype=bool)
        taken[pick[pick >= left] - left] = True
        tail = left + np.flatnonzero(~taken)
        self._pool[holes] = self._pool[tail]
        self._pool_cells[holes] = self._pool_cells[tail]
        self._n = left
        if len(self._futures) < self._ahead:
            self._submit(self._ahead - len(self._futures))
        return crops, self._draws.labels(cells)

    def close(self):
        """Stop reading: cancel the site reads not started and let the threads end."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._futures.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
