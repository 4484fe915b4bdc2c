"""Cells of a screen: the ``/cells`` node, imported from location files or detected.

A cell is a nucleus centre. The ``/cells`` node (see ``docs/architecture.md``) lists every cell
along the ``cell`` dimension, sorted by plate, well and site (then y, x), with

- ``plate``, ``well``, ``site`` coordinates along ``cell``;
- ``x``, ``y`` (float64, pixel units, CellProfiler's convention: the centre of the top-left pixel
  is (0, 0), x is the column, y the row), optional ``area`` and ``object_id``;
- ``cell_start``, ``cell_count`` over (plate, well, site): the cells of a site are
  ``cell_start : cell_start + cell_count``.

xarray cannot hold both a ``plate`` coordinate along ``cell`` and one along ``plate`` in the same
node, so the (plate, well, site) dimensions of ``cell_start``/``cell_count`` carry no labels of their
own: they are positional and follow the order of the root node's ``plate``, ``well`` and ``site``
coordinates (the node's ``attrs`` repeat those labels for readers of the node alone).

Three ways to get the node:

- :func:`import_locations` reads DeepProfiler location files
  (``locations/<plate>/<well>-<site>-Nuclei.csv``) or CellProfiler object tables
  (``Nuclei.csv`` + ``Image.csv``);
- :func:`detect_nuclei` segments nuclei on the DNA channel with scikit-image;
- :func:`write_cells` writes either into the store.
"""

import contextlib
import json
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.errors import InputError, StoreError
from cpzarr._tables import normalize_well as _normalize_well
from cpzarr.formats._fs import as_path
from cpzarr.formats.cellprofiler import locations_kind as _locations_kind
from cpzarr.formats.cellprofiler import read_locations as _cellprofiler_locations
from cpzarr.formats.deepprofiler import read_locations as _deepprofiler_locations

__all__ = ["import_locations", "detect_nuclei", "write_cells", "cells_table"]

_SITE_DIMS = ("plate", "well", "site")
_CELL_COLUMNS = ("plate", "well", "site", "x", "y")


# --------------------------------------------------------------------------------------------
# The screen and its parts
# --------------------------------------------------------------------------------------------


def screen_parts(screen, cells=None, *, need_cells=True):
    """Split a screen into its ``images`` array and its ``/cells`` node.

    Parameters
    ----------
    screen : DataTree or Dataset
        The whole store (``open_screen``) or a Dataset holding ``images``.
    cells : Dataset or pandas.DataFrame, optional
        A ``/cells`` node (or a table with plate, well, site, x, y columns) to use instead of the
        store's own.
    need_cells : bool
        Raise when no cells are found.

    Returns
    -------
    images : DataArray (plate, well, site, channel, y, x)
    cells : Dataset (cell) or None
    root : Dataset
        The root node (images, present, well metadata).

    Examples
    --------
    >>> images, cells, root = screen_parts(open_screen("screen.zarr"))  # doctest: +SKIP
    """
    if isinstance(screen, xr.DataTree):
        root = screen.to_dataset(inherit=False)
        if cells is None and "cells" in screen.children:
            cells = screen["cells"].to_dataset(inherit=False)
    elif isinstance(screen, xr.Dataset):
        root = screen
    else:
        raise InputError(
            f"screen must be an xarray DataTree (cpzarr.open_screen) or a Dataset with 'images', "
            f"not {type(screen).__name__}"
        )
    if "images" not in root:
        raise StoreError("the screen has no 'images' variable; open a cpzarr store with open_screen")
    images = root["images"]
    missing = [d for d in (*_SITE_DIMS, "channel", "y", "x") if d not in images.dims]
    if missing:
        raise StoreError(f"'images' lacks the dimensions {missing}; expected {_SITE_DIMS + ('channel', 'y', 'x')}")
    images = images.transpose(*_SITE_DIMS, "channel", "y", "x")
    if isinstance(cells, pd.DataFrame):
        cells = cells_from_table(cells, images)
    elif cells is not None:
        cells = _with_site_labels(cells, images)
    if cells is None and need_cells:
        raise StoreError(
            "the screen has no /cells node: run cpzarr.cells.import_locations or "
            "cpzarr.cells.detect_nuclei and write_cells first, or pass cells="
        )
    return images, cells, root


def _with_site_labels(cells, images):
    """Give each cell its plate, well and site labels again when the node lost them.

    Opening a store as a chunked DataTree lets the root's ``plate``/``well``/``site`` index
    coordinates shadow the node's coordinates of the same names along ``cell``; the offsets
    determine them, since cells are sorted by site.
    """
    if all(name in cells.variables and cells[name].dims == ("cell",) for name in _SITE_DIMS):
        return cells
    if "cell_count" not in cells:
        raise StoreError("the /cells node has neither plate/well/site along cell nor cell_count offsets")
    count = np.asarray(cells["cell_count"].transpose(*_SITE_DIMS).values).ravel()
    if int(count.sum()) != cells.sizes["cell"]:
        raise StoreError(f"the /cells node's cell_count adds up to {int(count.sum())}, not its {cells.sizes['cell']} cells")
    grid = np.meshgrid(*(np.asarray(site_labels(images, d)) for d in _SITE_DIMS), indexing="ij")
    labels = {d: ("cell", np.repeat(g.ravel(), count)) for d, g in zip(_SITE_DIMS, grid)}
    return cells.drop_vars([d for d in _SITE_DIMS if d in cells.variables]).assign_coords(labels)


def cells_table(cells):
    """The cells of a ``/cells`` node as a pandas DataFrame.

    Parameters
    ----------
    cells : Dataset (cell)
        A ``/cells`` node.

    Returns
    -------
    pandas.DataFrame
        One row per cell: plate, well, site, x, y (and area, object_id when present), indexed by
        the cell's position in the node.

    Examples
    --------
    >>> table = cells_table(screen["cells"].to_dataset())  # doctest: +SKIP
    """
    columns = {}
    for name in cells.variables:
        if cells[name].dims == ("cell",):
            columns[name] = np.asarray(cells[name].values)
    frame = pd.DataFrame(columns)
    for name in ("plate", "well"):
        if name in frame:
            frame[name] = frame[name].astype(str).astype(object)
    frame.index.name = "cell"
    return frame


def _as_labels(values, dim):
    """Plates and wells as object arrays of ``str`` (whatever string dtype they came in), sites as int64."""
    values = np.asarray(values)
    if dim == "site":
        return values.astype(np.int64)
    return np.array([str(v) for v in values.astype(object)], dtype=object)


def site_labels(images, dim):
    """The store's labels along ``plate``, ``well`` or ``site`` as a pandas Index.

    Examples
    --------
    >>> list(site_labels(images, "well"))  # doctest: +SKIP
    ['A01', 'A02']
    """
    return pd.Index(_as_labels(images[dim].values, dim))


def site_positions(table, images):
    """Positional (plate, well, site) indices of each cell in the ``images`` array.

    Parameters
    ----------
    table : pandas.DataFrame
        Cells with plate, well, site columns.
    images : DataArray (plate, well, site, channel, y, x)

    Returns
    -------
    ndarray (cell, 3) of int64

    Raises
    ------
    InputError
        Naming every (plate, well, site) of the table that the store does not have.

    Examples
    --------
    >>> site_positions(cells_table(cells), images)[:2]  # doctest: +SKIP
    array([[0, 0, 0],
           [0, 0, 0]])
    """
    positions = []
    unknown = np.zeros(len(table), dtype=bool)
    for dim in _SITE_DIMS:
        found = site_labels(images, dim).get_indexer(_as_labels(table[dim].to_numpy(), dim))
        unknown |= found < 0
        positions.append(found)
    if unknown.any():
        bad = table.loc[unknown, list(_SITE_DIMS)].drop_duplicates()
        raise InputError(
            f"{int(unknown.sum())} cells lie in {len(bad)} sites the store does not have",
            [f"plate {p}, well {w}, site {s}" for p, w, s in bad.itertuples(index=False)],
        )
    return np.stack(positions, axis=1).astype(np.int64)


def cells_from_table(table, images, *, attrs=None):
    """Build a ``/cells`` node from a table of cells.

    Parameters
    ----------
    table : pandas.DataFrame
        Columns plate, well, site, x, y and optionally area, object_id.
    images : DataArray (plate, well, site, channel, y, x)
        The store's images, whose plate/well/site order the offsets follow.
    attrs : dict, optional
        Attributes for the node (provenance).

    Returns
    -------
    Dataset (cell)
        Sorted by plate, well, site (in store order), then y, x, with ``cell_start`` and
        ``cell_count`` over (plate, well, site).

    Examples
    --------
    >>> table = pd.DataFrame({"plate": ["P1"], "well": ["A01"], "site": [1], "x": [5.0], "y": [7.0]})
    >>> cells = cells_from_table(table, screen["images"])  # doctest: +SKIP
    """
    missing = [c for c in _CELL_COLUMNS if c not in table]
    if missing:
        raise InputError(f"the cell table lacks the columns {missing}")
    table = table.reset_index(drop=True)
    pos = site_positions(table, images)
    order = np.lexsort((table["x"].to_numpy(), table["y"].to_numpy(), pos[:, 2], pos[:, 1], pos[:, 0]))
    table = table.iloc[order].reset_index(drop=True)
    pos = pos[order]
    shape = tuple(images.sizes[d] for d in _SITE_DIMS)
    flat = np.ravel_multi_index(pos.T, shape) if len(pos) else np.zeros(0, np.int64)
    count = np.bincount(flat, minlength=int(np.prod(shape))).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    data = {
        "x": ("cell", table["x"].to_numpy(np.float64)),
        "y": ("cell", table["y"].to_numpy(np.float64)),
        "cell_start": (_SITE_DIMS, start.reshape(shape)),
        "cell_count": (_SITE_DIMS, count.reshape(shape)),
    }
    if "area" in table:
        data["area"] = ("cell", table["area"].to_numpy(np.float64))
    if "object_id" in table:
        data["object_id"] = ("cell", table["object_id"].to_numpy(np.int64))
    coords = {
        "plate": ("cell", table["plate"].astype(str).to_numpy(object)),
        "well": ("cell", table["well"].astype(str).to_numpy(object)),
        "site": ("cell", table["site"].to_numpy(np.int64)),
    }
    node_attrs = {
        "offset_plates": json.dumps(list(site_labels(images, "plate"))),
        "offset_wells": json.dumps(list(site_labels(images, "well"))),
        "offset_sites": json.dumps([int(v) for v in site_labels(images, "site")]),
    }
    node_attrs.update(attrs or {})
    return xr.Dataset(data, coords=coords, attrs=node_attrs)


# --------------------------------------------------------------------------------------------
# Import of location files
# --------------------------------------------------------------------------------------------

_EXAMPLES = 5


# The readers of the location files live in cpzarr.formats (deepprofiler, cellprofiler); the old
# names stay importable from here.
normalize_well = _normalize_well
_read_deepprofiler = _deepprofiler_locations
_read_cellprofiler = _cellprofiler_locations
_detect_kind = _locations_kind


def _validate(table, images, root):
    """Split the rows into valid ones and problems grouped by kind."""
    height, width = images.sizes["y"], images.sizes["x"]
    problems = {}
    nan = table["x"].isna() | table["y"].isna()
    outside = ~nan & ((table["x"] < 0) | (table["y"] < 0) | (table["x"] > width - 1) | (table["y"] > height - 1))
    pos = np.stack([site_labels(images, d).get_indexer(_as_labels(table[d].to_numpy(), d)) for d in _SITE_DIMS], 1)
    unknown = (pos < 0).any(axis=1)
    if "present" in root and (~unknown).any():
        present = np.asarray(root["present"].transpose(*_SITE_DIMS).values)
        known = np.flatnonzero(~unknown)
        unknown[known[~present[tuple(pos[known].T)]]] = True

    def examples(mask, describe):
        rows = table[mask]
        return {"count": int(mask.sum()), "examples": [describe(r) for r in rows.head(_EXAMPLES).itertuples()]}

    if nan.any():
        problems["NaN coordinates"] = examples(nan, lambda r: f"{r.file} row {r.row}")
    if outside.any():
        problems[f"outside the {width}x{height} image"] = examples(
            outside, lambda r: f"{r.file} row {r.row}: x={r.x:.1f}, y={r.y:.1f}")
    if unknown.any():
        bad_sites = table[unknown].drop_duplicates(["plate", "well", "site"])
        problems["in sites the store does not have"] = {
            "count": int(unknown.sum()),
            "examples": [f"{r.file}: plate {r.plate}, well {r.well}, site {r.site}" for r in bad_sites.head(_EXAMPLES).itertuples()],
            "sites": int(len(bad_sites)),
        }
    return ~(nan | outside | unknown), problems


def import_locations(screen, source, *, kind="auto", on_invalid="raise", storage_options=None):
    """Read nucleus locations into a ``/cells`` node.

    Parameters
    ----------
    screen : DataTree or Dataset
        The store (``open_screen``) or a Dataset with ``images``; gives the sites and image size.
    source : str or Path
        ``kind="deepprofiler"``: the ``locations`` folder (or its parent) holding
        ``<plate>/<well>-<site>-Nuclei.csv`` with ``Nuclei_Location_Center_X/Y``.
        ``kind="cellprofiler"``: a ``Nuclei.csv`` (``ImageNumber``, ``ObjectNumber``,
        ``Location_Center_X/Y`` or ``Nuclei_Location_Center_X/Y``) with an ``Image.csv``
        (``ImageNumber``, ``Metadata_Plate/Well/Site``) beside it, a folder holding both, or a
        folder of such folders (one per site, as CellProfiler's per-site output). ``.csv.gz`` too.
        A local path or an fsspec URL (``s3://bucket/locations``).
    kind : {"auto", "deepprofiler", "cellprofiler"}
        ``auto`` picks CellProfiler when a ``Nuclei.csv`` is found.
    on_invalid : {"raise", "drop"}
        What to do with locations that have NaN coordinates, lie outside the image, or belong to
        sites the store does not have (or whose images are absent): raise an
        :class:`~cpzarr.errors.InputError` listing every kind with its count and examples, or
        drop them with a warning saying the same. The report is kept in ``attrs["dropped"]``.
    storage_options : dict, optional
        fsspec options of a URL ``source`` (credentials, ``endpoint_url``).

    Returns
    -------
    cells : Dataset (cell)
        The ``/cells`` node: plate, well, site, x, y (and object_id for CellProfiler tables),
        sorted by plate, well, site, y, x, with ``cell_start``/``cell_count``.

    Examples
    --------
    >>> cells = import_locations(screen, "lincs/locations")  # doctest: +SKIP
    >>> write_cells("screen.zarr", cells)  # doctest: +SKIP
    """
    if on_invalid not in ("raise", "drop"):
        raise InputError(f"on_invalid must be 'raise' or 'drop', not {on_invalid!r}")
    if kind not in ("auto", "deepprofiler", "cellprofiler"):
        raise InputError(f"kind must be 'auto', 'deepprofiler' or 'cellprofiler', not {kind!r}")
    images, _, root = screen_parts(screen, need_cells=False)
    source = as_path(source, storage_options)
    if not source.exists():
        raise InputError(f"location source {source} does not exist")
    if kind == "auto":
        kind = _locations_kind(source)
    table = _read_deepprofiler(source) if kind == "deepprofiler" else _read_cellprofiler(source)
    valid, problems = _validate(table, images, root)
    if problems:
        lines = [f"{what}: {p['count']} locations, e.g. " + "; ".join(p["examples"]) for what, p in problems.items()]
        if on_invalid == "raise":
            raise InputError(
                f"{int((~valid).sum())} of {len(table)} locations from {source} are invalid "
                "(pass on_invalid='drop' to leave them out)", lines,
            )
        warnings.warn(
            f"dropped {int((~valid).sum())} of {len(table)} locations from {source}:\n  " + "\n  ".join(lines),
            stacklevel=2,
        )
    if kind == "deepprofiler" and "present" in root:
        _warn_sites_without_files(table, images, root, source)
    attrs = {
        "source": str(source), "kind": kind, "dropped": json.dumps(problems),
        "provenance": json.dumps({"function": "cpzarr.cells.import_locations", "source": str(source), "kind": kind, "on_invalid": on_invalid}),
    }
    return cells_from_table(table[valid].drop(columns=["file", "row"]), images, attrs=attrs)


def _warn_sites_without_files(table, images, root, source):
    present = root["present"].transpose(*_SITE_DIMS).to_series()
    present = present[present]
    have = table.attrs["sites"]
    missing = [(str(p), str(w), int(s)) for p, w, s in present.index if (str(p), str(w), int(s)) not in have]
    if missing:
        shown = ", ".join(f"{p}/{w}-{s}" for p, w, s in missing[:_EXAMPLES])
        warnings.warn(
            f"{len(missing)} sites of the store have no location file in {source} and get no cells, e.g. {shown}",
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# Writing the node
# --------------------------------------------------------------------------------------------


def write_cells(store, cells):
    """Write a ``/cells`` node into a store, replacing the old one atomically.

    The node goes through :func:`cpzarr.store.write_node`: written beside the store, then moved
    in with one rename, so a reader never sees a half-written ``/cells``. The node's provenance
    attribute is recorded in the root's provenance under ``cells``.

    Parameters
    ----------
    store : str or Path
        A store made by :func:`cpzarr.ingest`.
    cells : Dataset (cell)
        From :func:`import_locations` or :func:`detect_nuclei`.

    Returns
    -------
    Path
        The node's directory.

    Examples
    --------
    >>> write_cells("screen.zarr", cells)  # doctest: +SKIP
    """
    from cpzarr.store import write_node

    missing = [n for n in ("plate", "well", "site", "x", "y", "cell_start", "cell_count") if n not in cells.variables]
    if missing:
        raise InputError(f"the cells to write lack {missing}; build them with import_locations or detect_nuclei")
    provenance = json.loads(cells.attrs.get("provenance", "{}")) or {"function": "cpzarr.cells.write_cells"}
    provenance["stage"] = "locate"
    provenance["cells"] = int(cells.sizes["cell"])
    return write_node(store, "cells", cells, provenance=provenance, overwrite=True)


# --------------------------------------------------------------------------------------------
# Nuclei detection
# --------------------------------------------------------------------------------------------


def segment_nuclei(image, *, sigma=2.0, threshold="li", threshold_scale=1.0, min_distance=7,
                   min_area=60, max_area=5000, exclude_border=True):
    """Label the nuclei of one DNA image.

    Gaussian smoothing, an automatic global threshold, then a watershed on the distance
    transform (seeded by its local maxima at least ``min_distance`` apart) splits touching
    nuclei; objects outside ``[min_area, max_area]`` pixels, and (optionally) objects touching the
    image border, are removed, as CellProfiler's IdentifyPrimaryObjects does by default.

    Parameters
    ----------
    image : ndarray (y, x)
        One DNA image, any integer or float dtype.
    sigma : float
        Gaussian smoothing in pixels before thresholding.
    threshold : {"otsu", "li", "triangle"} or float
        Automatic method (scikit-image) or a fixed threshold in image units.
    threshold_scale : float
        Factor applied to the automatic threshold (below 1 keeps dimmer nuclei).
    min_distance : int
        Smallest distance in pixels between two seeds of the watershed.
    min_area, max_area : int
        Size limits in pixels.
    exclude_border : bool
        Drop nuclei that touch the image border.

    Returns
    -------
    labels : ndarray (y, x) of int32
        0 for background, 1..n for the nuclei kept (relabelled consecutively).

    Examples
    --------
    >>> image = np.zeros((40, 40)); image[10:20, 10:20] = 100.0
    >>> int(segment_nuclei(image, min_area=20).max())
    1
    """
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, segmentation

    smoothed = filters.gaussian(np.asarray(image, dtype=np.float32), sigma=sigma, preserve_range=True)
    if isinstance(threshold, str):
        methods = {"otsu": filters.threshold_otsu, "li": filters.threshold_li, "triangle": filters.threshold_triangle}
        if threshold not in methods:
            raise InputError(f"threshold must be one of {sorted(methods)} or a number, not {threshold!r}")
        # every other pixel of a smoothed image gives the same threshold at a quarter of the cost
        level = methods[threshold](smoothed[::2, ::2]) * threshold_scale
    else:
        level = float(threshold)
    mask = ndi.binary_fill_holes(smoothed > level)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndi.distance_transform_edt(mask)
    components = measure.label(mask)
    peaks = feature.peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    if exclude_border:
        labels = segmentation.clear_border(labels)
    areas = np.bincount(labels.ravel())
    bad = (areas < min_area) | (areas > max_area)
    bad[0] = True
    labels[bad[labels]] = 0
    return segmentation.relabel_sequential(labels)[0].astype(np.int32)


def _nuclei_table(image, plate, well, site, options):
    """Detected nuclei of one site block (1, 1, 1, 1, y, x) as a table (one dask task)."""
    from skimage import measure

    labels = segment_nuclei(image[0, 0, 0, 0], **options)
    props = measure.regionprops_table(labels, properties=("label", "centroid", "area"))
    return pd.DataFrame({
        "plate": plate, "well": well, "site": site,
        "x": props["centroid-1"].astype(np.float64), "y": props["centroid-0"].astype(np.float64),
        "area": props["area"].astype(np.float64), "object_id": props["label"].astype(np.int64),
    })


def detect_nuclei(screen, *, channel="DNA", sigma=2.0, threshold="li", threshold_scale=1.0,
                  min_distance=7, min_area=60, max_area=5000, exclude_border=True,
                  scheduler=None, progress=False):
    """Find nuclei on the DNA channel of every present site, one dask task per site.

    The defaults were tuned on the real LINCS A549 sites in the shared data (8-bit, 1080×1080,
    20× objective): against CellProfiler's nucleus centres (one-to-one within 6 px) they give
    precision 0.93 / recall 0.91 (SQ00015198) and 0.93 / 0.94 (SQ00015230). Scale ``sigma``,
    ``min_distance`` and the areas with the nucleus size of other data.

    Parameters
    ----------
    screen : DataTree or Dataset
        The store (``open_screen``) or a Dataset with ``images``.
    channel : str
        The nuclear stain's channel.
    sigma, threshold, threshold_scale, min_distance, min_area, max_area, exclude_border
        Segmentation parameters, see :func:`segment_nuclei`.
    scheduler : str or distributed.Client, optional
        Dask scheduler for the per-site tasks (default: dask's current one).
    progress : bool
        Show a progress bar (local schedulers).

    Returns
    -------
    cells : Dataset (cell)
        The ``/cells`` node with ``area`` (pixels) and ``object_id`` (the nucleus' label in its
        site), centres as the labels' centroids (CellProfiler's ``Location_Center``).

    Examples
    --------
    >>> cells = detect_nuclei(screen, channel="DNA")  # doctest: +SKIP
    >>> write_cells("screen.zarr", cells)  # doctest: +SKIP
    """
    import dask
    import dask.array as da

    images, _, root = screen_parts(screen, need_cells=False)
    names = [str(c) for c in images["channel"].values]
    if channel not in names:
        raise InputError(f"channel {channel!r} is not in the store; it has {names}")
    options = dict(sigma=sigma, threshold=threshold, threshold_scale=threshold_scale, min_distance=min_distance,
                   min_area=min_area, max_area=max_area, exclude_border=exclude_border)
    data = images.data if isinstance(images.data, da.Array) else da.asarray(images.data)
    k = names.index(channel)
    dna = data[:, :, :, k : k + 1]
    dna = dna.rechunk(tuple((1,) * n for n in dna.shape[:4]) + tuple((n,) for n in dna.shape[4:]))
    blocks = dna.to_delayed()
    # read here, on threads: through a cluster it would be one task per well's chunk
    present = (np.asarray(root["present"].transpose(*_SITE_DIMS).compute(scheduler="threads").values)
               if "present" in root else np.ones(dna.shape[:3], bool))
    tasks = []
    for p, w, s in zip(*np.nonzero(present)):
        plate, well, site = str(images.plate.values[p]), str(images.well.values[w]), int(images.site.values[s])
        tasks.append(dask.delayed(_nuclei_table)(
            blocks[p, w, s, 0, 0, 0], plate, well, site, options,
            dask_key_name=f"detect-nuclei-{plate}-{well}-{site}",
        ))
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="detect nuclei", unit="site", disable=not progress)

    class _Sites(Callback):  # the same tqdm bar as every other step, one tick per site
        def _posttask(self, key, result, dsk, state, worker_id):
            if str(key).startswith("detect-nuclei-"):
                bar.update(1)

    try:
        if hasattr(scheduler, "scheduler_info"):  # a distributed client: a window of sites at a time
            from cpzarr.cluster import compute_bounded

            tables = compute_bounded(scheduler, tasks, on_done=lambda _: bar.update(1))
        else:
            with (_Sites() if progress else contextlib.nullcontext()):
                tables = dask.compute(*tasks, scheduler=scheduler)
    finally:
        bar.close()
    columns = ["plate", "well", "site", "x", "y", "area", "object_id"]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
    provenance = {"function": "cpzarr.cells.detect_nuclei", "channel": channel, **options}
    return cells_from_table(table, images, attrs={"source": "detect_nuclei", "provenance": json.dumps(provenance)})
