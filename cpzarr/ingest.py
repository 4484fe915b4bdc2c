"""Ingest site images into a screen store, one Dask task per well, resumably.

``ingest`` reads an image table (CellProfiler load_data CSV or DeepProfiler index.csv, see
:mod:`cpzarr._tables`) and an optional platemap, checks everything before writing anything, then
writes the store described in ``docs/architecture.md``:

1. validation: every file exists and decodes as a 2-D image of one shape and dtype, every
   (plate, well, site) appears once, the channels asked for exist, every imaged well is in the
   platemap — all offenders reported in one :class:`~cpzarr.errors.InputError`;
2. the store's skeleton (coordinates, well metadata, ``batch``, empty ``images`` and ``present``
   arrays, root attribute ``complete: false``) is written beside the target and renamed into place;
3. one task per well (named ``ingest-well-<plate>-<well>``) reads the well's files into one block
   and writes its shard of ``images``, then its chunk of ``present``, the well's completion marker.
   Both are written whole by :class:`cpzarr._shards.ShardWriter`, byte for byte what zarr would
   write, in the task's thread: decoding, Blosc and file I/O release the GIL, so local threads
   work in parallel;
4. when every well's marker is in place, the root attribute ``complete`` becomes true.

Re-running the same ingest skips the wells whose ``present`` chunk is already written and
correct, so killing an ingest and running it again gives the same store as one uninterrupted run.
Source images are only ever opened for reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cpzarr import _tables
from cpzarr.errors import InputError, StoreError, resource_error
from cpzarr.formats._image_table import read_image_table
from cpzarr.formats.platemap import read_platemap
from cpzarr.store import as_location, write_block, write_unit

logger = logging.getLogger("cpzarr")

__all__ = ["ingest", "read_image", "image_header"]

_LOCAL_SCHEDULERS = ("threads", "threading", "processes", "multiprocessing", "sync", "synchronous", "single-threaded")
from cpzarr.store._layout import BLOSC_BLOCK as _BLOSC_BLOCK  # noqa: E402  (kept for benchmarks)
_PIL_DTYPES = {"L": "uint8", "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "I": "int32", "F": "float32"}


def ingest(
    table,
    store,
    *,
    platemap=None,
    channels=None,
    scheduler=None,
    n_workers=None,
    batch_size=256,
    compression_level=1,
    progress=True,
    overwrite=False,
    storage_options=None,
):
    """Ingest the site images listed in an image table into a screen store.

    Parameters
    ----------
    table : str, Path or DataFrame
        A path or fsspec URL (``s3://…``) of a CellProfiler load_data CSV (``FileName_Orig<Ch>``, ``PathName_Orig<Ch>``) or a
        DeepProfiler index.csv (one column of paths per channel, relative to the CSV's folder);
        the format is recognised from the columns. Or an OME-Zarr HCS plate (NGFF 0.4 / Zarr v2
        or 0.5 / Zarr v3), or a folder of plates (:mod:`cpzarr.formats.ome_zarr`). Its other ``Metadata_*`` columns that are
        constant within a well become well metadata.
    store : str, Path or cpzarr.store.Location
        The store to create (or resume): a local directory or an fsspec URL
        (``s3://bucket/screen.zarr``).
    platemap : str, Path or DataFrame, optional
        Well metadata keyed by (plate, well), or by well only when one layout serves every plate
        (``well_position`` is accepted); or a LINCS ``barcode_platemap.csv`` beside its
        ``platemap/<Plate_Map_Name>.txt`` files (:mod:`cpzarr.formats.lincs`). Its columns win over the image table's. Field names are
        normalised (``control_type`` → ``control``, ``pert_iname``/``broad_sample`` →
        ``compound``, ``mmoles_per_liter`` → ``dose``, ``Batch_Number`` → ``batch``). Every imaged
        well must be in it.
    channels : sequence of str, optional
        Channels to ingest, in store order; default every channel of the table (DNA, ER, RNA, AGP,
        Mito first).
    scheduler : str or distributed.Client, optional
        ``None`` or a local Dask scheduler name (``"threads"``, ``"processes"``, ``"sync"``); a
        ``distributed.Client``; or a scheduler address (``"tcp://host:8786"``). The store must be
        on a file system the workers share.
    n_workers : int, optional
        Workers of the local scheduler; default one per core.
    batch_size : int
        Wells submitted at once, so the task graph stays bounded on huge screens. On a
        distributed cluster at most :func:`cpzarr.cluster.in_flight` of its workers' threads
        (4 a thread) are in flight, whatever this is.
    compression_level : int
        zstd level of the images (zstd inside Blosc with byte shuffle, bit shuffle for 8-bit
        images); 1 is fast and within a few percent of the size at higher levels.
    progress : bool
        Show a progress bar over wells.
    overwrite : bool
        Replace an existing store made from other inputs. Without it, an existing store made by the
        same ingest is resumed and any other existing store raises StoreError.
    storage_options : dict, optional
        fsspec options (credentials, ``endpoint_url``) for a URL store and for image tables,
        platemaps and images given as URLs.

    Returns
    -------
    xarray.DataTree
        The store, opened by :func:`cpzarr.open_screen`.

    Raises
    ------
    InputError
        The inputs are inconsistent; ``problems`` lists every offender. Nothing was written.
    StoreError
        ``store`` exists and holds something else.

    Examples
    --------
    >>> from cpzarr.synthetic import make_screen
    >>> info = make_screen("demo_screen", plates=2, sites=2)  # doctest: +SKIP
    >>> screen = ingest(info.load_data, "demo.zarr", platemap=info.platemap)  # doctest: +SKIP
    >>> screen["images"].sel(plate=info.plates[0], well="A01", site=1, channel="DNA")  # doctest: +SKIP
    """
    from cpzarr import __version__
    from cpzarr.store import open_screen, store_lock

    from cpzarr.store import Location, as_location

    from cpzarr.formats.ome_zarr import is_hcs, plan_hcs
    from cpzarr.store import is_url

    if not is_url(table) and is_hcs(table):
        plan = plan_hcs(table, platemap=platemap, channels=channels)
    else:
        plan = plan_ingest(table, platemap=platemap, channels=channels, storage_options=storage_options)
    # a Location keeps its own options; storage_options then serve the inputs
    store = as_location(store, None if isinstance(store, Location) else storage_options)
    with store_lock(store, "ingest"):
        _ingest_locked(store, plan, __version__, overwrite=overwrite, compression_level=compression_level,
                       scheduler=scheduler, n_workers=n_workers, batch_size=batch_size, progress=progress)
    return open_screen(store)


def _ingest_locked(store, plan, __version__, *, overwrite, compression_level, scheduler, n_workers, batch_size,
                   progress):
    """The writing part of :func:`ingest`, run while holding the store's lock."""
    from cpzarr.store import sweep_scratch

    params = {
        "stage": "ingest",
        "table": plan.source,
        "format": plan.format,
        "platemap": plan.platemap_source,
        "channels": plan.channels,
        "compression": {"codec": "blosc-zstd", "level": int(compression_level), "blocksize": _BLOSC_BLOCK},
        "cpzarr_version": __version__,
    }
    # what a killed run left: half-written shard files (*.partial), scratch folders
    sweep_scratch(store)
    created = _prepare_store(store, plan, params, overwrite=overwrite, compression_level=compression_level)

    # a store just created has no markers to check: every well is to write
    todo = plan.wells_with_sites if created else _wells_to_write(store, plan)
    logger.info("ingest %s: %d of %d wells to write", store, len(todo), len(plan.wells_with_sites))
    try:
        unreadable = _run_wells(store, plan, todo, scheduler=scheduler, n_workers=n_workers,
                                batch_size=batch_size, progress=progress)
    except (OSError, MemoryError) as err:
        raise resource_error("ingest", store, err) from err
    if unreadable:
        from cpzarr.store import _update_root_attrs

        paths = sorted({path for path, _ in unreadable})
        # The replaced files will have new sizes and times: leave them out of the fingerprint, so
        # that the re-run resumes instead of asking for --overwrite.
        _update_root_attrs(store, {"ingest_fingerprint": plan.fingerprint_without(paths),
                                   "ingest_unreadable": paths})
        raise InputError(
            f"The ingest of {store} could not decode these image files (their headers read fine); "
            "their wells were not written and the store stays incomplete. Replace the files and "
            "re-run the same command: the wells already written are kept.",
            [problem for _, problem in unreadable],
        )

    unfinished = _wells_to_write(store, plan)
    if unfinished:
        names = [f"{plan.plates[p]}/{plan.wells[w]}" for p, w in unfinished]
        raise StoreError(f"The ingest of {store} left {len(unfinished)} well(s) unwritten: {', '.join(names[:10])}; re-run it.")
    _finish(store, params, plan.fingerprint)


@dataclass
class IngestPlan:
    """Everything ingest knows after validation, before it writes anything."""

    source: str
    format: str
    platemap_source: str | None
    channels: list
    plates: list
    wells: list
    sites: np.ndarray
    shape: tuple
    dtype: str
    files: dict = field(repr=False)  # (plate index, well index) -> [(site index, [path per channel])]
    metadata: object = field(repr=False)  # xarray.Dataset of well metadata and batch
    fingerprint: str = ""
    storage_options: dict = field(default_factory=dict, repr=False)  # for images given as URLs
    signatures: object = field(default=(), repr=False)  # (path, size, mtime_ns) per source file, by path

    def fingerprint_without(self, paths) -> str:
        """The fingerprint with the size and time of ``paths`` left out (files found undecodable,
        which the user replaces before re-running)."""
        paths = set(paths)
        return _fingerprint(self, [(p, None, None) if p in paths else (p, n, t) for p, n, t in self.signatures])

    @property
    def wells_with_sites(self):
        return sorted(self.files)

    def expected_present(self, p, w) -> np.ndarray:
        mask = np.zeros(len(self.sites), dtype=bool)
        for s, _ in self.files[(p, w)]:
            mask[s] = True
        return mask


def plan_ingest(table, *, platemap=None, channels=None, storage_options=None) -> IngestPlan:
    """Read and validate the image table and platemap; nothing is written.

    Parameters
    ----------
    table, platemap, channels, storage_options
        As for :func:`ingest`.

    Returns
    -------
    IngestPlan
        Plates, wells, sites, image shape and dtype, the files of each well and the well metadata.

    Raises
    ------
    InputError
        With every problem found: missing or unreadable files, images of another shape or dtype,
        duplicate (plate, well, site), negative site numbers or one so large that the site axis
        would be far longer than the sites present, unknown channels, wells missing from the
        platemap, well metadata that differs between the rows of one well, image paths that are
        not .tif/.tiff/.png.

    Examples
    --------
    >>> plan = plan_ingest("index.csv")  # doctest: +SKIP
    >>> plan.shape, plan.dtype  # doctest: +SKIP
    ((1080, 1080), 'uint8')
    """
    sites, table_meta, channels, info = read_image_table(table, channels, storage_options=storage_options)
    source = info["source"]
    problems: list[str] = [
        f"channel {c!r} is not in the table, which has {', '.join(info['found_channels'])}"
        for c in info["unknown_channels"]
    ]

    bad_key = sites["plate"].eq("") | sites["well"].eq("") | sites["site"].isna()
    for row in sites[bad_key].itertuples():
        problems.append(f"line {row.line}: plate, well or site is empty")
    non_int = ~bad_key & (sites["site"] % 1 != 0)
    for row in sites[non_int].itertuples():
        problems.append(f"line {row.line}: site {row.site} is not a whole number")
    negative = ~bad_key & ~non_int & (sites["site"] < 0)
    for row in sites[negative].itertuples():
        problems.append(f"line {row.line}: site {row.site:g} is negative")
    good = sites[~bad_key & ~non_int & ~negative].copy()
    good["site"] = good["site"].astype(np.int64)
    problems += _sparse_sites(good)
    dups = good[good.duplicated(["plate", "well", "site"], keep=False)]
    for (plate, well, site), rows in dups.groupby(["plate", "well", "site"]):
        problems.append(f"{plate}/{well} site {site} appears on several lines: {', '.join(map(str, rows['line']))}")
    for ch in channels:
        for line in good.loc[good[ch].isna(), "line"]:
            problems.append(f"line {line}: no file for channel {ch}")

    metadata_frame, platemap_source, notes = _join_metadata(table_meta, good, platemap, problems, storage_options)

    headers = _read_headers(good, channels, storage_options)
    shape, dtype = headers.common()
    problems += headers.problems((shape, dtype))
    if problems:
        raise InputError(f"Cannot ingest {source}: fix these problems (nothing was written).", problems)
    if good.empty:
        raise InputError(f"The image table {source} lists no sites.")
    for note in notes:
        warnings.warn(f"ingest {source}: {note}", stacklevel=3)

    plates = sorted(good["plate"].unique())
    wells = sorted(good["well"].unique(), key=_tables.well_sort_key)
    smin, smax = int(good["site"].min()), int(good["site"].max())
    site_numbers = np.arange(min(1, smin), smax + 1, dtype=np.int64)
    p_index = {p: i for i, p in enumerate(plates)}
    w_index = {w: i for i, w in enumerate(wells)}
    files: dict = {}
    ordered = good.sort_values(["plate", "well", "site"])
    # channel names need not be identifiers ("488nm"), so rows are zipped, not itertuples'd
    paths = zip(*(ordered[ch] for ch in channels))
    for plate, well, site, site_paths in zip(ordered["plate"], ordered["well"], ordered["site"], paths):
        key = (p_index[plate], w_index[well])
        files.setdefault(key, []).append((int(site - site_numbers[0]), list(site_paths)))
    metadata = _metadata_dataset(metadata_frame, plates, wells, site_numbers, channels)
    plan = IngestPlan(
        source=source,
        format=info["format"],
        platemap_source=platemap_source,
        channels=list(channels),
        plates=plates,
        wells=wells,
        sites=site_numbers,
        shape=shape,
        dtype=dtype,
        files=files,
        metadata=metadata,
        storage_options=dict(storage_options or {}),
    )
    plan.signatures = headers.signatures()
    plan.fingerprint = _fingerprint(plan, plan.signatures)
    return plan


def read_image(path, shape=None, dtype=None, out=None, storage_options=None) -> np.ndarray:
    """Decode one single-channel image (TIFF with tifffile, PNG with Pillow), read-only.

    Parameters
    ----------
    path : str or Path
        The image file.
    shape, dtype : optional
        When given, the decoded image must have them (the files may have changed since
        validation).
    out : ndarray (y, x), optional
        Decode into this array (of the image's shape and dtype) instead of a new one; a TIFF's
        pixels are then read straight into it.
    storage_options : dict, optional
        fsspec options when ``path`` is a URL (``s3://…``).

    Returns
    -------
    ndarray (y, x)
        ``out`` when given.

    Examples
    --------
    >>> read_image("r01c01f01p01-ch1sk1fk1fl1.png").shape  # doctest: +SKIP
    (1080, 1080)
    """
    if hasattr(path, "read_plane"):  # one channel of an OME-Zarr field (cpzarr.formats.ome_zarr)
        return path.read_plane(shape, dtype, out)
    path = str(path)
    if out is not None:
        shape, dtype = out.shape, out.dtype
    source = _source(path, storage_options)
    if _is_tiff(path):
        import tifffile

        with tifffile.TiffFile(source) as tif:
            page, found = _tiff_page(tif)
            _check_decoded(path, found, shape, dtype)
            if page is not None and out is not None:
                page.asarray(out=out.reshape(page.shape))
                return out
            image = np.squeeze(tif.asarray() if page is None else page.asarray())
    else:
        from PIL import Image

        with Image.open(source) as im:
            image = np.squeeze(np.asarray(im))
    _check_decoded(path, (image.shape, str(image.dtype)), shape, dtype)
    if out is None:
        return image
    out[...] = image
    return out


def image_header(path, storage_options=None) -> tuple[tuple, str]:
    """Return ``(shape, dtype)`` of a single-channel image without decoding its pixels.

    Raises OSError (or a decoder error) when the file is missing or unreadable.

    Examples
    --------
    >>> image_header("site.tif")  # doctest: +SKIP
    ((256, 256), 'uint16')
    """
    path = str(path)
    source = _source(path, storage_options)
    if _is_tiff(path):
        import tifffile

        with tifffile.TiffFile(source) as tif:
            return _tiff_page(tif)[1]
    from PIL import Image

    with Image.open(source) as im:
        if im.mode not in _PIL_DTYPES:
            return (im.size[1], im.size[0], len(im.getbands())), f"PIL mode {im.mode}"
        return (im.size[1], im.size[0]), _PIL_DTYPES[im.mode]


def _source(path: str, storage_options):
    """A local path as it is; a URL's bytes, fetched whole (one request per image file)."""
    from cpzarr.store import is_url

    if not is_url(path):
        return path
    import io

    import fsspec

    with fsspec.open(path, "rb", **(storage_options or {})) as f:
        return io.BytesIO(f.read())


def _is_tiff(path: str) -> bool:
    return path.lower().endswith((".tif", ".tiff"))


def _tiff_page(tif):
    """A one-page TIFF's page (None for a multi-page file) and the image's ``(shape, dtype)``.

    Parsing only the first page's tags costs about half of building tifffile's series; a
    multi-page file (a stack, not one image) gets the series' shape, so validation rejects it.
    """
    if len(tif.pages) > 1:
        series = tif.series[0]
        return None, (tuple(s for s in series.shape if s != 1), str(series.dtype))
    page = tif.pages.first
    return page, (tuple(s for s in page.shape if s != 1), str(page.dtype))


def _check_decoded(path, found, shape, dtype):
    if shape is not None and (tuple(found[0]) != tuple(shape) or str(found[1]) != str(np.dtype(dtype))):
        raise InputError(
            f"{path} decodes to {_fmt(found)}, not {_fmt((tuple(shape), str(np.dtype(dtype))))}; "
            "did it change since the ingest started?"
        )


# --- validation helpers ----------------------------------------------------------------------


def _join_metadata(table_meta, sites, platemap, problems, storage_options=None):
    """Well metadata frame keyed by (plate, well): image-table metadata under the platemap's."""
    imaged = sites[["plate", "well"]].drop_duplicates()
    frame = imaged.merge(table_meta, on=["plate", "well"], how="left")
    platemap_source = None
    if platemap is not None:
        pm, platemap_source = read_platemap(platemap, storage_options)
        keys = ["plate", "well"] if "plate" in pm.columns else ["well"]
        joined = imaged.merge(pm, on=keys, how="left", indicator=True)
        missing = joined[joined["_merge"] == "left_only"]
        for row in missing.itertuples():
            problems.append(f"{row.plate}/{row.well} is imaged but not in the platemap ({platemap_source})")
        joined = joined.drop(columns="_merge")
        pm_cols = [c for c in joined.columns if c not in ("plate", "well")]
        frame = frame.drop(columns=[c for c in pm_cols if c in frame.columns]).merge(
            joined, on=["plate", "well"], how="left"
        )
    # each column's name as the sources wrote it, kept for Pycytominer-named exports
    frame.attrs["source_names"] = {**table_meta.attrs.get("source_names", {}),
                                   **(pm.attrs.get("source_names", {}) if platemap is not None else {})}
    frame, notes = _tables.derive_store_metadata(frame)
    if "batch" in frame.columns:
        per_plate = frame.groupby("plate")["batch"].nunique()
        for plate in per_plate[per_plate > 1].index:
            values = sorted(map(str, frame.loc[frame["plate"] == plate, "batch"].dropna().unique()))
            problems.append(f"plate {plate} has several batches: {', '.join(values)}")
    else:
        notes.append("no batch column (batch, Batch_Number): batch filled with empty strings")
    return frame, platemap_source, notes


def _sparse_sites(sites, slack=2, extra=8) -> list[str]:
    """Rows whose site number would make the site axis far longer than the sites present.

    The site axis runs from 1 (or 0) to the largest site number; a typo (``1000000000`` for
    ``10``) would allocate it for every well. An axis longer than ``slack`` times the distinct
    site numbers plus ``extra`` is refused, naming the rows beyond that length.
    """
    if sites.empty:
        return []
    distinct = np.unique(sites["site"].to_numpy())
    start = min(1, int(distinct[0]))
    limit = start + slack * len(distinct) + extra
    if distinct[-1] - start + 1 <= slack * len(distinct) + extra:
        return []
    far = sites[sites["site"] >= limit]
    return [
        f"line {row.line}: site {row.site} would make a site axis of {row.site - start + 1:,} for "
        f"{len(distinct)} distinct site numbers (a typo?)"
        for row in far.itertuples()
    ]


class _Headers:
    """What validation learnt of every source file, a few bytes a file.

    A screen's image table lists millions of files; the client keeps, for each, an index into
    the distinct formats found (or -1 when the file cannot be read) and the file's size and time
    (the resume fingerprint) in arrays, and the messages of unreadable files only. The files
    themselves are named again, when needed, from the table (:meth:`jobs`).
    """

    def __init__(self, sites, channels):
        self._rows = sites[["line", *channels]]
        self._channels = list(channels)
        self.n = int(self._rows[self._channels].notna().to_numpy().sum())
        self.formats: list = []  # distinct (shape, dtype)
        self.codes = np.full(self.n, -1, dtype=np.int32)  # index into formats; -1: unreadable
        self.errors: dict = {}  # file index -> what is wrong with it
        self.sizes = np.zeros(self.n, dtype=np.int64)
        self.mtimes = np.full(self.n, -1, dtype=np.int64)  # -1: none kept (objects in a store)

    def jobs(self):
        """``(line, channel, path)`` of every file, in the order of the arrays."""
        rows = zip(self._rows["line"], *(self._rows[ch] for ch in self._channels))
        for line, *paths in rows:
            for ch, path in zip(self._channels, paths):
                if path is not None and path == path:
                    yield line, ch, path

    def common(self):
        """The most frequent ``(shape, dtype)``, or ``(None, None)`` when no file could be read."""
        counts = np.bincount(self.codes[self.codes >= 0], minlength=len(self.formats))
        if not counts.size or not counts.any():
            return None, None
        return self.formats[int(np.argmax(counts))]

    def problems(self, expected):
        """One message per file that cannot be read or whose format is not ``expected``."""
        want = self.formats.index(expected) if expected in self.formats else -2
        odd = np.flatnonzero(self.codes != want)
        if not odd.size:
            return []
        odd_set, out = set(odd.tolist()), []
        for i, (line, ch, path) in enumerate(self.jobs()):
            if i in odd_set:
                what = self.errors.get(i) or (
                    f"is {_fmt(self.formats[self.codes[i]])}, the other images are {_fmt(expected)}")
                out.append(f"line {line}, channel {ch}: {path} {what}")
        return out

    def signatures(self) -> "_Signatures":
        paths = np.fromiter((path for _, _, path in self.jobs()), dtype=object, count=self.n)
        order = np.argsort(paths, kind="stable")
        return _Signatures(paths[order], self.sizes[order], self.mtimes[order])


class _Signatures:
    """``(path, size, mtime_ns)`` of every source file sorted by path, held as three arrays."""

    def __init__(self, paths, sizes, mtimes):
        self.paths, self.sizes, self.mtimes = paths, sizes, mtimes

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        for path, size, mtime in zip(self.paths, self.sizes.tolist(), self.mtimes.tolist()):
            yield path, size, (None if mtime < 0 else mtime)


def _read_headers(sites, channels, storage_options=None, *, batch=2048) -> _Headers:
    """Read the header, size and time of every file listed in ``sites``.

    The files are read by 8 threads, ``batch`` at a time, so that the pool never holds a future
    for every file of the screen.
    """
    from itertools import islice

    from cpzarr.store import is_url

    def check(path):
        """(shape, dtype) or what is wrong, with the file's size and time."""
        try:
            if is_url(path):
                return image_header(path, storage_options), _size(path, storage_options), -1
            if not os.path.isfile(path):
                return "does not exist", 0, -1
            stat = os.stat(path)
            return image_header(path), stat.st_size, stat.st_mtime_ns
        except FileNotFoundError:
            return "does not exist", 0, -1
        except Exception as exc:  # any decoder failure means the same thing to the user
            return f"cannot be read as an image ({type(exc).__name__}: {exc})", 0, -1

    headers = _Headers(sites, channels)
    index: dict = {}
    jobs = (path for _, _, path in headers.jobs())
    start = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        while paths := list(islice(jobs, batch)):
            for i, (header, size, mtime) in enumerate(pool.map(check, paths), start):
                if isinstance(header, str):
                    headers.errors[i] = header
                else:
                    if header not in index:
                        index[header] = len(headers.formats)
                        headers.formats.append(header)
                    headers.codes[i] = index[header]
                headers.sizes[i], headers.mtimes[i] = size, mtime
            start += len(paths)
    return headers


def _fmt(header) -> str:
    shape, dtype = header
    return f"{' x '.join(map(str, shape))} {dtype}"


def _metadata_dataset(frame, plates, wells, sites, channels):
    import xarray as xr

    names = frame.attrs.get("source_names", {})
    frame = frame.set_index(["plate", "well"])
    frame.attrs["source_names"] = names
    grid = pd.MultiIndex.from_product([plates, wells], names=["plate", "well"])
    full = frame.reindex(grid)
    ds = xr.Dataset(
        coords={
            "plate": np.array(plates, dtype=object),
            "well": np.array(wells, dtype=object),
            "site": sites,
            "channel": np.array(channels, dtype=object),
        }
    )
    batch = frame["batch"].groupby(level="plate").first().reindex(plates) if "batch" in frame.columns else None
    for col in full.columns:
        if col == "batch":
            continue
        values = _tables.as_store_column(full[col]).reshape(len(plates), len(wells))
        ds[col] = (("plate", "well"), values)
        written = frame.attrs.get("source_names", {}).get(col)
        if written and written != col:
            ds[col].attrs["source_name"] = written
    # batch is a label even when the source numbers it (LINCS Batch_Number 1, 3)
    batch_values = (
        batch.map(lambda v: "" if _tables.is_blank(v) else _tables.as_label(v)).to_numpy(dtype=object)
        if batch is not None
        else np.array([""] * len(plates), dtype=object)
    )
    ds["batch"] = (("plate",), batch_values)
    return ds


def _fingerprint(plan, signatures) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([plan.channels, plan.plates, plan.wells, plan.sites.tolist(), list(plan.shape), plan.dtype]).encode())
    for key in sorted(plan.files):
        digest.update(json.dumps([key, plan.files[key]]).encode())
    # the JSON of the whole list, written a file at a time (the list is not built)
    digest.update(b"[")
    for i, signature in enumerate(signatures):
        digest.update((", " if i else "").encode() + json.dumps(list(signature)).encode())
    digest.update(b"]")
    wells = plan.metadata.drop_dims(["site", "channel"])
    digest.update(wells.to_dataframe().to_csv().encode())
    return digest.hexdigest()


def _size(path, storage_options):
    from cpzarr.store import is_url

    if not is_url(path):
        return os.path.getsize(path)
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return int(fs.size(inner))


# --- writing ---------------------------------------------------------------------------------


def _prepare_store(store: Path, plan: IngestPlan, params: dict, *, overwrite: bool, compression_level: int) -> bool:
    """Create the store's skeleton (True), or find the same ingest's store to resume (False)."""
    from cpzarr.store import _root_attrs, create_store, is_store

    if store.exists():
        attrs = _root_attrs(store)
        expected = plan.fingerprint
        if attrs and attrs.get("ingest_unreadable"):
            expected = plan.fingerprint_without(attrs["ingest_unreadable"])
        if is_store(store) and attrs.get("ingest_fingerprint") == expected and not overwrite:
            return False
        if not overwrite:
            what = (
                "a store made from other inputs (the image table, platemap, channels, or a source "
                "file's size or modification time differ)"
                if is_store(store) else "something that is not a cpzarr store"
            )
            raise StoreError(
                f"{store} already exists and holds {what}; pass overwrite=True (--overwrite) to replace it "
                "or choose another path."
            )
        if attrs is None and not (store.is_dir() and not any(store.iterdir())):
            raise StoreError(f"{store} is neither a Zarr store nor empty; refusing to delete it. Choose another path.")
    create_store(store, lambda tmp: _write_skeleton(tmp, plan, params, compression_level), replace=True)
    return True


def _write_skeleton(path: Path, plan: IngestPlan, params: dict, compression_level: int):
    import zarr

    from cpzarr import __version__
    from cpzarr.store import image_chunks, image_codec, now_iso, present_codec, zarr_target

    ds = plan.metadata.copy()
    ds.attrs = {
        "cpzarr_version": __version__,
        "created": now_iso(),
        "source": plan.source,
        "complete": False,
        "ingest_fingerprint": plan.fingerprint,
        "provenance": "{}",
    }
    target = zarr_target(path)
    ds.to_zarr(target, mode="w", zarr_format=3, consolidated=False)
    group = zarr.open_group(target, mode="r+", zarr_format=3)
    n_p, n_w, n_s, n_c = len(plan.plates), len(plan.wells), len(plan.sites), len(plan.channels)
    ny, nx = plan.shape
    chunks, shards = image_chunks(n_s, n_c, plan.shape)
    images = group.create_array(
        "images",
        shape=(n_p, n_w, n_s, n_c, ny, nx),
        chunks=chunks,
        shards=shards,
        dtype=plan.dtype,
        compressors=image_codec(plan.dtype, compression_level),
        fill_value=0,
        dimension_names=["plate", "well", "site", "channel", "y", "x"],
    )
    images.attrs["description"] = "site images as acquired; one chunk per site, one shard per well"
    present = group.create_array(
        "present",
        shape=(n_p, n_w, n_s),
        chunks=(1, 1, n_s),
        dtype="bool",
        compressors=present_codec(compression_level),
        fill_value=False,
        dimension_names=["plate", "well", "site"],
    )
    present.attrs["description"] = "site acquired; each well's chunk is written after its images"


def _wells_to_write(store: Path, plan: IngestPlan) -> list:
    """Wells whose ``present`` chunk is missing, unreadable or not what the plan expects."""
    import zarr

    from cpzarr.store import zarr_target

    present = zarr.open_array(zarr_target(store / "present", read_only=True), mode="r", zarr_format=3)
    try:
        whole = np.asarray(present[...])
    except Exception:  # some marker is damaged: find it well by well below
        whole = None
    todo = []
    for p, w in plan.wells_with_sites:
        if whole is not None:
            stored = whole[p, w]
        else:
            try:
                stored = np.asarray(present[p, w])
            except Exception:  # a damaged marker means the well must be written again
                todo.append((p, w))
                continue
        if not np.array_equal(stored, plan.expected_present(p, w)):
            todo.append((p, w))
    return todo


def write_well(store, p, w, n_sites, site_files, shape, dtype, storage_options=None) -> int:
    """Read one well's files and write its shard of ``images``, then its ``present`` chunk.

    This is the body of each ``ingest-well-<plate>-<well>`` task; it is a module-level function so
    that distributed workers can unpickle it.

    Parameters
    ----------
    store : str, Path or cpzarr.store.Location
        The store.
    p, w : int
        Plate and well index.
    n_sites : int
        Sites per well in the store.
    site_files : list of (int, list of str)
        Site index and the path of each channel's image.
    shape, dtype
        Expected image shape and dtype.
    storage_options : dict, optional
        fsspec options of images given as URLs.

    Returns
    -------
    int
        Sites written.
    """
    n_channels = len(site_files[0][1])
    block = np.zeros((1, 1, n_sites, n_channels) + tuple(shape), dtype=dtype)
    mask = np.zeros((1, 1, n_sites), dtype=bool)
    unreadable = []
    for s, paths in site_files:
        for c, path in enumerate(paths):
            try:
                read_image(path, shape, dtype, out=block[0, 0, s, c], storage_options=storage_options)
            except (OSError, ValueError, EOFError) as err:  # truncated or damaged pixel data
                unreadable.append((path, f"{path}: {type(err).__name__}: {err}"))
        mask[0, 0, s] = True
    if unreadable:
        # Nothing of this well is written: it stays to do, and the store incomplete.
        raise UnreadableImages(unreadable)
    # the well's shard, then its present chunk: the unit's completion marker
    store = as_location(store)
    write_unit([(store / "images", (p, w, 0, 0, 0, 0), block)], (store / "present", (p, w, 0), mask))
    return len(site_files)


def _write_block(path: Path, index: tuple, block: np.ndarray):
    """Write one whole shard (or chunk) ``index`` of the array at ``path`` (:func:`cpzarr.store.write_block`)."""
    write_block(path, index, block)


def _run_wells(store, plan, todo, *, scheduler, n_workers, batch_size, progress):
    """Write the wells ``todo``; returns the files that could not be decoded (their wells unwritten)."""
    if not todo:
        return []
    items = [(store if not isinstance(store, Path) else str(store), p, w, len(plan.sites), plan.files[(p, w)],
              plan.shape, plan.dtype, plan.storage_options or None) for p, w in todo]
    names = [f"{plan.plates[p]}-{plan.wells[w]}" for p, w in todo]
    client = scheduler if _is_client(scheduler) else None
    if client is None and isinstance(scheduler, str) and scheduler not in _LOCAL_SCHEDULERS:
        from cpzarr.cluster import get_client

        with get_client(scheduler) as remote:
            results = _run_distributed(remote, items, names, batch_size, progress)
    elif client is not None:
        results = _run_distributed(client, items, names, batch_size, progress)
    else:
        results = _run_local(items, names, scheduler or "threads", n_workers, batch_size, progress)
    return [problem for result in results or () if isinstance(result, list) for problem in result]


def _run_distributed(client, items, names, batch_size, progress):
    from cpzarr.cluster import in_flight, map_batches

    # A window the cluster's threads keep busy, not the screen's size: the scheduler then holds
    # the same few tasks for 100 wells as for 100,000 (issue 15).
    batch_size = max(1, min(int(batch_size), in_flight(client)))
    return map_batches(_write_well_item, items, key_prefix="ingest-well", names=names, batch_size=batch_size,
                       client=client, progress=progress)


def _write_well_item(item):
    return _write_well_reporting(*item)


class UnreadableImages(InputError):
    """Image files of one well whose pixels cannot be decoded (their headers were fine)."""

    def __init__(self, unreadable):
        self.unreadable = list(unreadable)  # (path, problem)
        super().__init__("images cannot be decoded", [problem for _, problem in self.unreadable])


def _write_well_reporting(*item):
    """:func:`write_well`, giving the list of undecodable files instead of raising, so that one
    bad file does not stop the other wells and every bad file is named at the end."""
    try:
        return write_well(*item)
    except UnreadableImages as err:
        return err.unreadable


def _run_local(items, names, scheduler, n_workers, batch_size, progress):
    import dask
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc="ingest", unit="well", disable=not progress)

    class _WellProgress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            bar.update(1)

    results = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            tasks = [
                dask.delayed(_write_well_reporting, pure=False)(*items[i], dask_key_name=f"ingest-well-{names[i]}")
                for i in chunk
            ]
            with _WellProgress():
                results += dask.compute(*tasks, scheduler=scheduler, num_workers=n_workers)
    finally:
        bar.close()
    return results


def _is_client(obj) -> bool:
    return type(obj).__name__ == "Client" and hasattr(obj, "submit")


def _finish(store: Path, params: dict, fingerprint: str):
    from cpzarr.store import _root_attrs, _update_root_attrs, now_iso, read_provenance

    attrs = _root_attrs(store)
    if attrs.get("complete"):
        return
    records = read_provenance(store)
    records["/"] = dict(params, time=now_iso())
    updates = {"complete": True, "provenance": json.dumps(records, sort_keys=True, default=str)}
    if attrs.get("ingest_unreadable"):  # the replaced files count again
        updates.update(ingest_fingerprint=fingerprint, ingest_unreadable=[])
    _update_root_attrs(store, updates)
