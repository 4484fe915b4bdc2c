"""Synthetic Cell Painting screens written to disk the way acquisitions arrive.

:func:`make_screen` renders a seeded, deterministic screen: cells with nuclei, cytoplasm and
the five Cell Painting stains, compounds whose mechanism of action (MOA) sets a morphology
signature, DMSO negative controls, and batches with their own staining intensity and
illumination. Demos, tests and benchmarks draw their image data from here.

On-disk layout under ``path``::

    images/<plate>/<plate>_<well>_s<site>_<channel>.tif   one TIFF per site and channel
    labels/<plate>/<well>-<site>.tif                      nucleus label image (uint16, 0 = none)
    locations/<plate>/<well>-<site>-Nuclei.csv            Nuclei_Location_Center_X, _Y
    load_data.csv       CellProfiler: Metadata_Plate, Metadata_Well, Metadata_Site, then
                        FileName_Orig<Ch>, PathName_Orig<Ch> per channel (absolute folder)
    index.csv           DeepProfiler: Metadata_Plate, Metadata_Well, Metadata_Site,
                        Plate_Map_Name, one column per channel (path relative to the index
                        file's folder), Nuclei_Locations, and Metadata_<name> for each platemap
                        column (compound, dose, moa, control, batch, broad_sample)
    platemap.csv        one row per (plate, well): plate, well, compound, dose, moa, control,
                        batch, broad_sample
    truth.csv           every rendered cell: plate, well, site, object_id, x, y, area
                        (nucleus pixels), cell_area (cell-body pixels)
    batch_effects.csv   batch, channel, scale: the staining intensity factor each batch applies

The model:

- A cell is a nucleus (an ellipse, bright and textured in DNA, with nucleoli that are dark in
  DNA and bright in RNA) inside a body (a wobbly disc). Every pixel belongs to its nearest
  cell centre, so crowded cells touch along shared borders; nuclei keep apart and touch only
  now and then. ER is reticular and perinuclear, RNA fills the cytoplasm and the nucleoli,
  AGP marks membranes and actin fibres, Mito is punctate around the nucleus.
- Each MOA draws a signature: log-multipliers of the :data:`TRAITS` (nucleus size and shape,
  cell size, each stain's intensity, textures, cell count). Each compound is its MOA's
  signature plus a smaller compound-specific deviation, so same-MOA compounds are more alike
  than compounds of different MOAs. At dose ``c`` a compound shows ``c / (c + ec50)`` of its
  effect (``ScreenInfo.effects``); DMSO shows none. Cells vary around their well's values.
- Plates are named ``P01``, ``P02``, ... and split into contiguous blocks of batches ``B1``,
  ``B2``, ...: plate ``i`` (from 0) of ``n`` belongs to batch ``i * batches // n``, as plates
  stained and imaged together are. A batch multiplies each channel's stain by its own factor
  (``batch_effects.csv``), applies a smooth illumination field (tilt and vignetting, mean 1
  over the field of view) and its own focus (a Gaussian blur of 0.3–1.5 px, ``focus_sigma``)
  shared by its plates, visible in the DMSO wells.

Conventions:

- Positions follow CellProfiler: ``x`` is the column, ``y`` the row, in pixels, and a
  nucleus's location is the mean (column, row) index of its label pixels, so ``truth.csv``
  holds the exact centroid of each nucleus as rendered. ``object_id`` is the value of the
  nucleus in its label image.
- Sites in ``missing_sites`` were never acquired: they have no files and appear in no table.
- One platemap layout is shared by every plate, so replicate wells of a condition sit at the
  same well position on different plates. DMSO wells have ``control == "negcon"``,
  ``compound == "DMSO"``, ``moa == ""`` and ``dose == 0``; treatments have ``control == "trt"``.
- Images are camera counts: offset + illuminated signal with shot and read noise. ``uint8``
  screens are the same counts scaled by 255 / 6000, so the brightest pixels saturate
  rarely, as in contrast-stretched 8-bit exports.
- Each site is drawn from its own random stream, seeded by ``seed`` and the site's (plate,
  well, site) position, so the same arguments give the same files, byte for byte, and a
  missing site does not change the others.

:func:`render_site` renders one site in memory (for benchmarks and detector tests).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import string
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cpzarr.errors import InputError

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")

# Morphology traits a treatment can change, as log-multipliers on a cell's properties.
TRAITS = (
    "nucleus_size",
    "nucleus_elongation",
    "cell_size",
    "DNA",
    "ER",
    "RNA",
    "AGP",
    "Mito",
    "chromatin_texture",
    "mito_puncta",
    "actin_fibres",
    "nucleoli",
    "er_reticulum",
    "cell_count",
)
# Typical size of an MOA's effect on each trait (log units at full effect).
_TRAIT_SCALE = np.array(
    [0.22, 0.35, 0.18, 0.35, 0.35, 0.35, 0.35, 0.35, 0.5, 0.5, 0.6, 0.5, 0.5, 0.3]
)
# How far a compound strays from its MOA's signature, relative to the signature's scale.
_COMPOUND_SPREAD = 0.3
_T = {name: i for i, name in enumerate(TRAITS)}

# Stain brightness of a DMSO cell, in 12-bit-like camera counts above the offset.
_BASE_INTENSITY = {"DNA": 2600.0, "ER": 900.0, "RNA": 750.0, "AGP": 850.0, "Mito": 1000.0}
_HAZE = {"DNA": 25.0, "ER": 30.0, "RNA": 25.0, "AGP": 30.0, "Mito": 20.0}
_CAMERA_OFFSET = 100.0
_READ_NOISE = 4.0
_UINT8_FACTOR = 255.0 / 6000.0

_WELL_ROWS = string.ascii_uppercase[:16]
_WELL_COLUMNS = 24


@dataclasses.dataclass(frozen=True, eq=False)
class ScreenInfo:
    """Where :func:`make_screen` wrote a screen, and what is in it.

    Attributes
    ----------
    root : Path
        The screen's folder.
    load_data, index, platemap, truth, batch_effects : Path
        The CellProfiler load_data CSV, the DeepProfiler index.csv, the platemap, the table
        of every rendered cell, and the per-batch channel scales.
    locations : Path
        The ``locations/`` folder of per-site nucleus location CSVs.
    labels : Path or None
        The ``labels/`` folder of nucleus label images, None when not written.
    plates, wells : tuple of str
        Plate names and well names (every plate has every well).
    sites : tuple of int
        Site numbers, from 1.
    channels : tuple of str
        Channel names in file order.
    image_shape : tuple of int
        ``(height, width)`` of every image.
    dtype : str
        ``"uint16"`` or ``"uint8"``.
    missing_sites : tuple of tuple
        ``(plate, well, site)`` of sites that were not acquired.
    annotation : pandas.DataFrame
        One row per (plate, well): the platemap.
    effects : pandas.DataFrame
        One row per compound: ``compound``, ``moa``, ``ec50`` and the full-effect
        log-multiplier of each morphology trait (columns of :data:`TRAITS`).
    """

    root: Path
    load_data: Path
    index: Path
    platemap: Path
    locations: Path
    truth: Path
    batch_effects: Path
    labels: Path | None
    plates: tuple
    wells: tuple
    sites: tuple
    channels: tuple
    image_shape: tuple
    dtype: str
    missing_sites: tuple
    annotation: pd.DataFrame
    effects: pd.DataFrame


def make_screen(
    path,
    *,
    plates=4,
    batches=2,
    wells=None,
    sites=2,
    image_size=256,
    cells_per_site=20,
    moas=3,
    compounds_per_moa=2,
    dmso_wells=4,
    doses=(10.0,),
    channels=CHANNELS,
    dtype="uint16",
    missing_sites=(),
    nucleus_radius=9.0,
    labels=True,
    overwrite=False,
    seed=0,
    progress=False,
):
    """Write a synthetic Cell Painting screen to disk as an acquisition would arrive.

    Each compound is a variation of its MOA's morphology signature (nucleus size and shape,
    cell size, stain intensities, textures, cell count), scaled by a dose-response curve,
    so that same-MOA compounds look alike and DMSO wells are the baseline. The layout on
    disk is described in the module docstring of :mod:`cpzarr.synthetic._screen`.

    Parameters
    ----------
    path : str or Path
        Folder to write; created if absent. It must be empty unless ``overwrite``.
    plates : int
        Number of plates, named ``P01``, ``P02``, ...
    batches : int
        Number of batches; plates are split into contiguous blocks (see module docstring).
    wells : None, int or sequence of str
        Well positions. None: one well per (compound, dose) plus ``dmso_wells``, placed from
        A01 in row-major order of a 384-well plate. An int: that many positions, the
        conditions repeated to fill them. A sequence: these well names (``"B03"``).
    sites : int
        Sites (fields of view) per well, numbered from 1.
    image_size : int or (int, int)
        Image side, or ``(height, width)``, in pixels.
    cells_per_site : float
        Mean number of cells in a DMSO site (treatments change it).
    moas, compounds_per_moa : int
        Number of MOAs and of compounds per MOA.
    dmso_wells : int
        DMSO (``negcon``) wells per plate.
    doses : sequence of float
        Doses (µM) each compound is tested at; the effect grows as ``dose / (dose + ec50)``.
    channels : sequence of str
        Channels to write, a subset of ``("DNA", "ER", "RNA", "AGP", "Mito")`` in any order.
    dtype : {"uint16", "uint8"}
        Image data type.
    missing_sites : sequence of (str, str, int)
        ``(plate, well, site)`` that were not acquired: no files, absent from every table.
    nucleus_radius : float
        Mean nucleus radius of a DMSO cell, in pixels.
    labels : bool
        Also write nucleus label images under ``labels/``.
    overwrite : bool
        Replace a screen an earlier ``make_screen`` wrote at ``path`` (recognised by its marker
        file ``.cpzarr-synthetic.json``; only what it wrote is removed). Any other non-empty
        folder is refused.
    seed : int
        Seed of everything random; same arguments give byte-identical files.
    progress : bool
        Show a progress bar over sites.

    Returns
    -------
    info : ScreenInfo
        Paths of the tables and folders written, the screen's dimensions and its annotation.

    Raises
    ------
    InputError
        If any argument is out of range (every offender is listed), or ``path`` is not empty.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from cpzarr.synthetic import make_screen
    >>> info = make_screen(Path(tempfile.mkdtemp()) / "screen", plates=2, batches=1, sites=1)
    >>> info.plates, info.wells[:3], info.image_shape
    (('P01', 'P02'), ('A01', 'A02', 'A03'), (256, 256))
    >>> info.annotation.loc[6, ["plate", "well", "compound", "control"]].tolist()
    ['P01', 'A07', 'DMSO', 'negcon']
    """
    shape, channels, layout, plate_names = _checked(
        plates=plates, batches=batches, wells=wells, sites=sites, image_size=image_size,
        cells_per_site=cells_per_site, moas=moas, compounds_per_moa=compounds_per_moa,
        dmso_wells=dmso_wells, doses=doses, channels=channels, dtype=dtype,
        missing_sites=missing_sites, nucleus_radius=nucleus_radius,
    )
    root = Path(path)
    _prepare_folder(root, overwrite)

    well_names = tuple(layout["well"])
    site_numbers = tuple(range(1, sites + 1))
    missing = {(str(p), str(w), int(s)) for p, w, s in missing_sites}
    batch_names = tuple(f"B{b + 1}" for b in range(batches))
    plate_batch = {p: batch_names[i * batches // plates] for i, p in enumerate(plate_names)}

    design_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    effects = _compound_effects(design_rng, layout)
    batch_scale = {
        b: dict(zip(CHANNELS, np.exp(design_rng.normal(0.0, 0.2, len(CHANNELS)))))
        for b in batch_names
    }
    illumination = {b: _illumination(design_rng, shape) for b in batch_names}
    # Focus differs between imaging sessions: unlike stain scale and illumination, which per-crop
    # intensity scaling removes, blur changes texture, so the batch shows in image features too.
    spread = design_rng.permutation(len(batch_names)) / max(len(batch_names) - 1, 1)
    focus = {b: float(0.3 + 1.2 * f) for b, f in zip(batch_names, spread)}

    annotation = pd.concat(
        [layout.assign(plate=p, batch=plate_batch[p]) for p in plate_names], ignore_index=True
    )[["plate", "well", "compound", "dose", "moa", "control", "batch", "broad_sample"]]
    strength = _dose_strength(layout, effects)

    load_rows, index_rows, truth_frames = [], [], []
    todo = [
        (pi, p, wi, w, s)
        for pi, p in enumerate(plate_names)
        for wi, w in enumerate(well_names)
        for s in site_numbers
        if (p, w, s) not in missing
    ]
    if progress:
        from tqdm.auto import tqdm

        todo = tqdm(todo, desc="synthetic sites", unit="site")
    image_root = (root / "images").resolve()
    for pi, plate, wi, well, site in todo:
        batch = plate_batch[plate]
        well_rng = np.random.default_rng(np.random.SeedSequence([seed, 2, pi, wi]))
        well_effect = strength[wi] + well_rng.normal(0.0, 0.04, len(TRAITS)) * _TRAIT_SCALE
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, pi, wi, site]))
        cells = _draw_cells(rng, well_effect, cells_per_site, nucleus_radius, shape)
        signal, label, cell_label = _render_site(rng, cells, shape, channels)
        signal = [ndi.gaussian_filter(c, focus[batch]) for c in signal]
        images = _camera(rng, signal, channels, batch_scale[batch], illumination[batch], dtype)

        folder = image_root / plate
        folder.mkdir(parents=True, exist_ok=True)
        load_row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
        index_row = {
            "Metadata_Plate": plate,
            "Metadata_Well": well,
            "Metadata_Site": site,
            "Plate_Map_Name": "synthetic-map-1",
        }
        for channel, image in zip(channels, images):
            name = f"{plate}_{well}_s{site}_{channel}.tif"
            _write_tiff(folder / name, image)
            load_row[f"FileName_Orig{channel}"] = name
            load_row[f"PathName_Orig{channel}"] = str(folder)
            index_row[channel] = f"images/{plate}/{name}"

        truth = _nucleus_table(label, cell_label, len(cells.x))
        truth.insert(0, "site", site)
        truth.insert(0, "well", well)
        truth.insert(0, "plate", plate)
        truth_frames.append(truth)
        location = root / "locations" / plate / f"{well}-{site}-Nuclei.csv"
        location.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {"Nuclei_Location_Center_X": truth["x"], "Nuclei_Location_Center_Y": truth["y"]}
        ).to_csv(location, index=False)
        index_row["Nuclei_Locations"] = f"locations/{plate}/{well}-{site}-Nuclei.csv"
        if labels:
            label_path = root / "labels" / plate / f"{well}-{site}.tif"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            _write_tiff(label_path, label.astype(np.uint16))
        load_rows.append(load_row)
        index_rows.append(index_row)

    paths = {
        "load_data": root / "load_data.csv",
        "index": root / "index.csv",
        "platemap": root / "platemap.csv",
        "truth": root / "truth.csv",
        "batch_effects": root / "batch_effects.csv",
    }
    pd.DataFrame(load_rows, columns=_load_data_columns(channels)).to_csv(
        paths["load_data"], index=False
    )
    index = pd.DataFrame(index_rows, columns=_index_columns(channels))
    meta = annotation.rename(columns=lambda c: f"Metadata_{c}").rename(
        columns={"Metadata_plate": "Metadata_Plate", "Metadata_well": "Metadata_Well"}
    )
    index.merge(meta, on=["Metadata_Plate", "Metadata_Well"], how="left").to_csv(
        paths["index"], index=False
    )
    annotation.to_csv(paths["platemap"], index=False)
    truth_columns = ["plate", "well", "site", "object_id", "x", "y", "area", "cell_area"]
    truth_all = pd.concat(truth_frames, ignore_index=True) if truth_frames else None
    if truth_all is None:
        truth_all = pd.DataFrame(columns=truth_columns)
    truth_all.to_csv(paths["truth"], index=False)
    pd.DataFrame(
        [
            {"batch": b, "channel": c, "scale": batch_scale[b][c], "focus_sigma": focus[b]}
            for b in batch_names
            for c in channels
        ]
    ).to_csv(paths["batch_effects"], index=False)

    return ScreenInfo(
        root=root,
        locations=root / "locations",
        labels=root / "labels" if labels else None,
        plates=plate_names,
        wells=well_names,
        sites=site_numbers,
        channels=channels,
        image_shape=shape,
        dtype=str(np.dtype(dtype)),
        missing_sites=tuple(sorted(missing)),
        annotation=annotation,
        effects=effects,
        **paths,
    )


def render_site(
    *,
    image_size=1080,
    cells_per_site=230,
    effect=None,
    channels=CHANNELS,
    dtype="uint16",
    nucleus_radius=9.0,
    seed=0,
):
    """Render one site in memory, as :func:`make_screen` renders each site (no batch effect).

    Parameters
    ----------
    image_size : int or (int, int)
        Image side, or ``(height, width)``, in pixels. LINCS sites are 1080 x 1080.
    cells_per_site : float
        Mean number of cells (LINCS sites hold about 230).
    effect : mapping of str to float, optional
        Log-multiplier of each morphology trait (keys from :data:`TRAITS`); None for DMSO.
    channels : sequence of str
        Channels to render, a subset of ``("DNA", "ER", "RNA", "AGP", "Mito")``.
    dtype : {"uint16", "uint8"}
        Image data type.
    nucleus_radius : float
        Mean nucleus radius in pixels.
    seed : int
        Seed; the same arguments give the same site.

    Returns
    -------
    site : xarray.Dataset
        ``images`` (channel, y, x) camera counts; ``labels`` (y, x) nucleus labels and
        ``cell_labels`` (y, x) cell-body labels (0 = none, else the cell's ``object_id``);
        along ``cell``: ``object_id``, ``nucleus_x``, ``nucleus_y`` (exact nucleus
        centroid, x = column), ``area`` and ``cell_area`` in pixels.

    Examples
    --------
    >>> from cpzarr.synthetic._screen import render_site
    >>> site = render_site(image_size=128, cells_per_site=10, seed=1)
    >>> site["images"].dims
    ('channel', 'y', 'x')
    """
    import xarray as xr

    shape = _image_shape(image_size)
    channels = tuple(channels)
    effect = dict(effect or {})
    unknown = sorted(set(effect) - set(TRAITS))
    if unknown:
        raise InputError(f"render_site: unknown traits {unknown}; choose from {list(TRAITS)}")
    _check_arguments(
        plates=1,
        batches=1,
        sites=1,
        shape=shape,
        cells_per_site=cells_per_site,
        channels=channels,
        dtype=dtype,
        nucleus_radius=nucleus_radius,
        layout=pd.DataFrame({"well": ["A01"]}),
        missing_sites=(),
        plate_names=("P01",),
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    vector = np.array([effect.get(t, 0.0) for t in TRAITS])
    cells = _draw_cells(rng, vector, cells_per_site, nucleus_radius, shape)
    signal, label, cell_label = _render_site(rng, cells, shape, channels)
    flat = np.ones(shape, np.float32)
    images = _camera(rng, signal, channels, dict.fromkeys(CHANNELS, 1.0), flat, dtype)
    table = _nucleus_table(label, cell_label, len(cells.x))
    return xr.Dataset(
        {
            "images": (("channel", "y", "x"), np.stack(images)),
            "labels": (("y", "x"), label),
            "cell_labels": (("y", "x"), cell_label),
            "object_id": ("cell", table["object_id"].to_numpy()),
            "nucleus_x": ("cell", table["x"].to_numpy()),
            "nucleus_y": ("cell", table["y"].to_numpy()),
            "area": ("cell", table["area"].to_numpy()),
            "cell_area": ("cell", table["cell_area"].to_numpy()),
        },
        coords={"channel": np.array(channels, dtype=object)},
    )


# --- arguments and layout ---


def _is_count(value, minimum=1):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def _image_shape(image_size):
    if np.ndim(image_size) == 0:
        return (int(image_size), int(image_size))
    return tuple(int(v) for v in image_size)


def _well_name(position):
    row, column = divmod(position, _WELL_COLUMNS)
    return f"{_WELL_ROWS[row]}{column + 1:02d}"


def _dose_values(doses):
    """Doses as a tuple of floats; empty when they are not all positive numbers."""
    try:
        values = tuple(float(d) for d in np.atleast_1d(doses))
    except (TypeError, ValueError):
        return ()
    return values if all(np.isfinite(v) and v > 0 for v in values) else ()


def _layout(moas, compounds_per_moa, doses, dmso_wells, wells):
    """The platemap shared by all plates: one row per well position (plate-independent)."""
    rows = []
    if _is_count(moas, 0) and _is_count(compounds_per_moa):
        for m in range(moas):
            for c in range(compounds_per_moa):
                for dose in doses:
                    rows.append(
                        {
                            "compound": f"cpd{m + 1:02d}_{c + 1}",
                            "dose": float(dose),
                            "moa": f"moa{m + 1:02d}",
                            "control": "trt",
                            "broad_sample": f"BRD-S{m + 1:03d}{c + 1:02d}",
                        }
                    )
    if _is_count(dmso_wells, 0):
        dmso = {"compound": "DMSO", "dose": 0.0, "moa": "", "control": "negcon"}
        rows += [{**dmso, "broad_sample": "DMSO"} for _ in range(dmso_wells)]
    layout = pd.DataFrame(rows, columns=["compound", "dose", "moa", "control", "broad_sample"])
    plate_size = len(_WELL_ROWS) * _WELL_COLUMNS
    if wells is None:
        names = [_well_name(i) for i in range(min(len(layout), plate_size))]
    elif isinstance(wells, (int, np.integer)):
        names = [_well_name(i) for i in range(min(max(wells, 0), plate_size))]
    else:
        names = [str(w) for w in np.atleast_1d(wells)]
    if len(layout) and len(names) > len(layout):
        layout = layout.iloc[np.arange(len(names)) % len(layout)].reset_index(drop=True)
    layout.attrs["given_wells"] = names
    if len(names) == len(layout):
        layout.insert(0, "well", names)
    else:
        # Reported by _check_arguments; keep the frame well-formed meanwhile.
        layout.insert(0, "well", (names + [""] * len(layout))[: len(layout)])
        layout.attrs["well_shortage"] = (len(names), len(layout))
    return layout


def _check_arguments(
    *,
    plates,
    batches,
    sites,
    shape,
    cells_per_site,
    channels,
    dtype,
    nucleus_radius,
    layout,
    missing_sites,
    plate_names,
    moas=0,
    compounds_per_moa=1,
    dmso_wells=0,
    doses=(1.0,),
):
    problems = []
    if not _is_count(moas, 0):
        problems.append(f"moas={moas!r}: need an integer >= 0")
    if not _is_count(compounds_per_moa):
        problems.append(f"compounds_per_moa={compounds_per_moa!r}: need an integer >= 1")
    if not _is_count(dmso_wells, 0):
        problems.append(f"dmso_wells={dmso_wells!r}: need an integer >= 0")
    if not _dose_values(doses):
        problems.append(f"doses={doses!r}: need a non-empty sequence of positive numbers")
    if not _is_count(plates):
        problems.append(f"plates={plates!r}: need an integer >= 1")
    if not _is_count(batches) or (_is_count(plates) and batches > plates):
        problems.append(f"batches={batches!r}: need an integer between 1 and plates")
    if not _is_count(sites):
        problems.append(f"sites={sites!r}: need an integer >= 1")
    if len(shape) != 2 or min(shape) < 32:
        problems.append(f"image_size={shape!r}: need a side (or height, width) of >= 32 pixels")
    if not np.isfinite(cells_per_site) or cells_per_site < 0:
        problems.append(f"cells_per_site={cells_per_site!r}: need a number >= 0")
    if not np.isfinite(nucleus_radius) or not 3 <= nucleus_radius <= min(shape) / 4:
        problems.append(f"nucleus_radius={nucleus_radius!r}: need 3 <= radius <= side / 4")
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        problems.append(f"channels: unknown {unknown}; choose from {list(CHANNELS)}")
    if len(set(channels)) != len(channels) or not channels:
        problems.append(f"channels={list(channels)!r}: need distinct names, at least one")
    if str(dtype) not in ("uint16", "uint8"):
        problems.append(f"dtype={dtype!r}: need 'uint16' or 'uint8'")
    if len(layout) == 0:
        problems.append("no wells: need moas * compounds_per_moa * len(doses) + dmso_wells >= 1")
    if "well_shortage" in layout.attrs:
        given, needed = layout.attrs["well_shortage"]
        problems.append(
            f"wells: {given} positions for {needed} conditions "
            "(moas * compounds_per_moa * len(doses) + dmso_wells); give more wells, "
            "at most 384 (one 384-well plate)"
        )
    names = layout.attrs.get("given_wells", list(layout["well"]))
    bad = [w for w in names if len(w) != 3 or w[0] not in _WELL_ROWS or not w[1:].isdigit()]
    if bad:
        problems.append(f"wells: not 384-well names like 'A01': {bad}")
    if len(set(names)) != len(names):
        problems.append("wells: duplicate well names")
    for entry in missing_sites:
        try:
            plate, well, site = entry
            known = plate in plate_names and well in names and 1 <= int(site) <= sites
        except (TypeError, ValueError):
            known = False
        if not known:
            problems.append(f"missing_sites: {entry!r} is not a (plate, well, site) of this screen")
    if problems:
        raise InputError("make_screen: invalid arguments", problems)


def _checked(*, plates, batches, wells, sites, image_size, cells_per_site, moas, compounds_per_moa,
             dmso_wells, doses, channels, dtype, missing_sites, nucleus_radius):
    """The screen's image shape, channels, layout and plate names; InputError lists every problem."""
    try:
        shape = _image_shape(image_size)
        channels = tuple(channels)
        cells_per_site, nucleus_radius = float(cells_per_site), float(nucleus_radius)
        missing_sites = list(missing_sites)
    except (TypeError, ValueError) as err:
        raise InputError("make_screen: invalid arguments", [
            f"image_size, channels, cells_per_site, nucleus_radius or missing_sites has the wrong type ({err})"
        ]) from None
    layout = _layout(moas, compounds_per_moa, _dose_values(doses), dmso_wells, wells)
    plate_names = tuple(f"P{i + 1:02d}" for i in range(plates)) if _is_count(plates) else ()
    _check_arguments(
        plates=plates, batches=batches, sites=sites, shape=shape, cells_per_site=cells_per_site,
        channels=channels, dtype=dtype, nucleus_radius=nucleus_radius, layout=layout,
        missing_sites=missing_sites, plate_names=plate_names, moas=moas,
        compounds_per_moa=compounds_per_moa, dmso_wells=dmso_wells, doses=doses,
    )
    return shape, channels, layout, plate_names


def check_screen_arguments(**arguments):
    """Check :func:`make_screen` arguments without writing anything (configs are checked so).

    Raises
    ------
    InputError
        Listing every argument out of range.

    Examples
    --------
    >>> check_screen_arguments(plates=2, sites=0)
    Traceback (most recent call last):
    ...
    cpzarr.errors.InputError: make_screen: invalid arguments
      - sites=0: need an integer >= 1
    """
    import inspect

    defaults = {n: p.default for n, p in inspect.signature(make_screen).parameters.items()
                if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(arguments) - set(defaults))
    if unknown:
        raise InputError("make_screen: unknown arguments", unknown)
    values = {**defaults, **arguments}
    _checked(**{k: values[k] for k in inspect.signature(_checked).parameters})


#: The file that marks a folder as written by :func:`make_screen`, and what it may hold.
MARKER = ".cpzarr-synthetic.json"
_WRITTEN = ("images", "labels", "locations", "load_data.csv", "index.csv", "platemap.csv",
            "truth.csv", "batch_effects.csv")


def _prepare_folder(root, overwrite):
    """Make ``root`` ready; with ``overwrite`` remove only what an earlier make_screen wrote there.

    A folder is recognised as make_screen's by its marker file; any other non-empty folder is
    refused even with ``overwrite``, so that a user's folder of that name is never emptied.
    """
    if root.exists() and not root.is_dir():
        raise InputError(f"make_screen: {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise InputError(
                f"make_screen: {root} is not empty; pass overwrite=True or choose a new folder"
            )
        marker = root / MARKER
        if not marker.is_file():
            held = sorted(p.name for p in root.iterdir())
            raise InputError(
                f"make_screen: {root} is not empty and was not written by cpzarr (no {MARKER}); "
                "refusing to replace it. Choose another folder or remove it yourself",
                [f"holds {name}" for name in held],
            )
        try:
            written = json.loads(marker.read_text()).get("written", [])
        except (OSError, ValueError, AttributeError) as error:
            raise InputError(f"make_screen: cannot read the marker {marker}: {error}") from None
        for name in set(written) & set(_WRITTEN):
            target = root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({"written_by": "cpzarr.synthetic.make_screen", "written": list(_WRITTEN)}))


def _load_data_columns(channels):
    columns = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for c in channels:
        columns += [f"FileName_Orig{c}", f"PathName_Orig{c}"]
    return columns


def _index_columns(channels):
    base = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Plate_Map_Name"]
    return base + list(channels) + ["Nuclei_Locations"]


# --- biology ---


def _compound_effects(rng, layout):
    """Each MOA's signature, and each compound as a variation of it."""
    treated = layout[layout["control"] == "trt"].drop_duplicates("compound")
    signatures = {}
    rows = []
    for compound, moa in zip(treated["compound"], treated["moa"]):
        if moa not in signatures:
            signatures[moa] = rng.normal(0.0, 1.0, len(TRAITS))
        effect = (signatures[moa] + rng.normal(0.0, _COMPOUND_SPREAD, len(TRAITS))) * _TRAIT_SCALE
        ec50 = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
        rows.append({"compound": compound, "moa": moa, "ec50": ec50, **dict(zip(TRAITS, effect))})
    return pd.DataFrame(rows, columns=["compound", "moa", "ec50", *TRAITS])


def _dose_strength(layout, effects):
    """Per well position, the log-multiplier of every trait at that well's dose."""
    table = effects.set_index("compound")
    out = np.zeros((len(layout), len(TRAITS)))
    for i, (compound, dose) in enumerate(zip(layout["compound"], layout["dose"])):
        if compound in table.index:
            row = table.loc[compound]
            out[i] = row[list(TRAITS)].to_numpy(float) * dose / (dose + row["ec50"])
    return out


def _illumination(rng, shape):
    """A smooth multiplicative field: tilt plus vignetting, mean 1 over the field."""
    h, w = shape
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    gy, gx = rng.normal(0.0, 0.08, 2)
    vignette = rng.uniform(0.08, 0.2)
    field = 1.0 + gx * x + gy * y - vignette * (x * x + y * y)
    return (field / field.mean()).astype(np.float32)


@dataclasses.dataclass
class _Cells:
    """Per-cell rendering parameters of one site (arrays of length n)."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray  # nucleus semi-axes (a >= b) and orientation
    b: np.ndarray
    theta: np.ndarray
    radius: np.ndarray  # mean cell-body radius
    outline: np.ndarray  # (n, 4): 2nd and 3rd harmonic of the cell outline, cos/sin parts
    intensity: dict  # channel -> (n,)
    chromatin: np.ndarray
    mito_density: np.ndarray
    fibres: np.ndarray
    fibre_angle: np.ndarray
    nucleoli: np.ndarray  # count
    nucleoli_brightness: np.ndarray
    reticulum: np.ndarray


def _draw_cells(rng, effect, cells_per_site, nucleus_radius, shape):
    """Draw a site's cells: their traits from the well's effect, their places in the field."""
    e = dict(zip(TRAITS, effect))
    wanted = rng.poisson(cells_per_site * np.exp(e["cell_count"]))
    n = int(wanted)

    def spread(sd):
        return rng.normal(0.0, sd, n)

    size = nucleus_radius * np.exp(e["nucleus_size"] + spread(0.12))
    aspect = np.exp(np.abs(0.18 + e["nucleus_elongation"] + spread(0.1)))
    a = size * np.sqrt(aspect)
    b = size / np.sqrt(aspect)
    radius = np.maximum(size * 2.3 * np.exp(e["cell_size"] + spread(0.12)), a * 1.6)
    keep = _place(rng, a, radius, shape)

    theta = rng.uniform(0.0, np.pi, n)
    # Cell bodies stretch along their nucleus's long axis, more so for elongated nuclei.
    harmonics = rng.uniform(0.0, 0.18, (n, 2))
    harmonics[:, 0] = np.minimum(harmonics[:, 0] + 0.5 * np.log(aspect), 0.35)
    phases = rng.uniform(0.0, 2 * np.pi, (n, 2))
    aligned = rng.random(n) < 0.7
    phases[aligned, 0] = theta[aligned] + rng.normal(0.0, 0.3, aligned.sum())
    outline = np.column_stack(
        [
            harmonics[:, 0] * np.cos(2 * phases[:, 0]),
            harmonics[:, 0] * np.sin(2 * phases[:, 0]),
            harmonics[:, 1] * np.cos(3 * phases[:, 1]),
            harmonics[:, 1] * np.sin(3 * phases[:, 1]),
        ]
    )
    intensity = {c: _BASE_INTENSITY[c] * np.exp(e[c] + spread(0.15)) for c in CHANNELS}
    cells = _Cells(
        x=keep[0],
        y=keep[1],
        a=a,
        b=b,
        theta=theta,
        radius=radius,
        outline=outline,
        intensity=intensity,
        chromatin=0.22 * np.exp(e["chromatin_texture"] + spread(0.15)),
        mito_density=0.035 * np.exp(e["mito_puncta"] + spread(0.15)),
        fibres=0.6 * np.exp(e["actin_fibres"] + spread(0.2)),
        fibre_angle=theta + rng.normal(0.0, 0.4, n),
        nucleoli=1 + rng.poisson(1.6 * np.exp(e["nucleoli"]), n),
        nucleoli_brightness=0.9 * np.exp(0.5 * e["nucleoli"] + spread(0.2)),
        reticulum=np.clip(0.6 * np.exp(e["er_reticulum"] + spread(0.1)), 0.05, 1.0),
    )
    placed = ~np.isnan(cells.x)
    return _subset(cells, placed)


def _subset(cells, mask):
    values = {}
    for field in dataclasses.fields(cells):
        value = getattr(cells, field.name)
        if isinstance(value, dict):
            values[field.name] = {k: v[mask] for k, v in value.items()}
        else:
            values[field.name] = value[mask]
    return _Cells(**values)


def _place(rng, a, radius, shape, clumping=0.5, attempts=30):
    """Dart-throw cell centres; half the darts land beside an earlier cell so cells touch.

    Nuclei keep apart by about the sum of their major semi-axes (rarely touching); cells
    that find no room after ``attempts`` darts are left out (NaN position).
    """
    h, w = shape
    n = len(a)
    xs = np.full(n, np.nan)
    ys = np.full(n, np.nan)
    placed = []
    for k in range(n):
        for _ in range(attempts):
            if placed and rng.random() < clumping:
                j = placed[rng.integers(len(placed))]
                angle = rng.uniform(0.0, 2 * np.pi)
                dist = (radius[j] + radius[k]) * rng.uniform(0.7, 1.05)
                x, y = xs[j] + dist * np.cos(angle), ys[j] + dist * np.sin(angle)
            else:
                x, y = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
            if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                continue
            if placed:
                others = np.asarray(placed)
                gap = np.hypot(xs[others] - x, ys[others] - y)
                if np.any(gap < 0.85 * (a[others] + a[k]) + 1.0):
                    continue
            xs[k], ys[k] = x, y
            placed.append(k)
            break
    return xs, ys


# --- rendering ---


@functools.lru_cache(maxsize=4)
def _grid(shape):
    yy, xx = np.indices(shape, dtype=np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndi.gaussian_filter(noise, sigma, mode="wrap")
    return smooth * np.float32(2.0 * sigma * np.sqrt(np.pi))


def _spots(shape, y, x, weight, sigma):
    """Gaussian spots of peak ``weight`` at sub-pixel positions (rounded to pixels)."""
    h, w = shape
    iy = np.rint(y).astype(np.int64)
    ix = np.rint(x).astype(np.int64)
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    flat = np.bincount(iy[inside] * w + ix[inside], weight[inside], minlength=h * w)
    image = flat.reshape(shape).astype(np.float32)
    return ndi.gaussian_filter(image, sigma) * np.float32(2 * np.pi * sigma * sigma)


def _render_site(rng, cells, shape, channels):
    """Render the stains' signal (before camera and batch) and the nucleus labels.

    Every pixel belongs to its nearest cell centre (a Voronoi partition, so touching cells
    meet along a shared border); the cell's nucleus is an ellipse around its centre and its
    body a wobbly disc clipped by that partition. Geometry is computed only for the pixels
    within reach of their owner's body; the rest of the field is haze.
    """
    f32 = np.float32
    n = len(cells.x)
    signal = [np.full(shape, _HAZE[c], np.float32) for c in channels]
    label = np.zeros(shape, np.int32)
    if n == 0:
        return signal, label, label.copy()
    yy, xx = _grid(shape)
    seeds = np.zeros(shape, np.int32)
    seeds[np.rint(cells.y).astype(int), np.rint(cells.x).astype(int)] = np.arange(1, n + 1)
    seed_distance, (oy, ox) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    owner_image = seeds[oy, ox] - 1
    del oy, ox

    # Textures are drawn over the whole field so that they do not depend on the cell layout.
    ruffle = np.clip(_smooth_noise(rng, (shape[0] // 2 + 1, shape[1] // 2 + 1), 2.0), -3, 3)
    fine = _smooth_noise(rng, shape, 1.0)
    mid = _smooth_noise(rng, shape, 2.5)

    reach = cells.radius * (1 + np.abs(cells.outline).sum(1)) * 1.25 + 4
    idx = np.flatnonzero(seed_distance.ravel() < reach[owner_image.ravel()])
    owner = owner_image.ravel()[idx]

    def per_pixel(values):
        return np.asarray(values, f32)[owner]

    py, px = yy.ravel()[idx], xx.ravel()[idx]
    dx = px - per_pixel(cells.x)
    dy = py - per_pixel(cells.y)
    d = np.sqrt(dx * dx + dy * dy)
    inv = 1.0 / np.maximum(d, f32(1e-3))
    c1, s1 = dx * inv, dy * inv
    c2, s2 = c1 * c1 - s1 * s1, 2 * s1 * c1
    c3, s3 = c1 * (4 * c1 * c1 - 3), s1 * (3 - 4 * s1 * s1)

    cos_t, sin_t = per_pixel(np.cos(cells.theta)), per_pixel(np.sin(cells.theta))
    a, b = per_pixel(cells.a), per_pixel(cells.b)
    u = dx * cos_t + dy * sin_t
    v = dy * cos_t - dx * sin_t
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    nucleus = rho < 1
    label.ravel()[idx[nucleus]] = owner[nucleus] + 1

    wobble = (
        c2 * per_pixel(cells.outline[:, 0])
        + s2 * per_pixel(cells.outline[:, 1])
        + c3 * per_pixel(cells.outline[:, 2])
        + s3 * per_pixel(cells.outline[:, 3])
    )
    edge_ruffle = ruffle[(py // 2).astype(np.intp), (px // 2).astype(np.intp)]
    edge = per_pixel(cells.radius) * (1 + wobble) * (1 + f32(0.08) * edge_ruffle)
    body = (d < edge) | nucleus
    cytoplasm = body & ~nucleus
    # Position between the nuclear envelope (0) and the cell edge (1) along the ray from the centre.
    envelope_at = d / np.maximum(rho, f32(1e-3))
    depth = np.clip((d - envelope_at) / np.maximum(edge - envelope_at, f32(1.0)), 0, 1)
    perinuclear = np.exp(-depth / f32(0.35)) * cytoplasm
    fine, mid = fine.ravel()[idx], mid.ravel()[idx]
    nuclear_profile = np.clip((1 - rho) * a / f32(1.2) + f32(0.5), 0, 1)
    cell_label = np.zeros(shape, np.int32)
    cell_label.ravel()[idx[body]] = owner[body] + 1

    # Puncta: nucleoli inside the nucleus, mitochondria in the cytoplasm, mostly perinuclear.
    which = np.repeat(np.arange(n), cells.nucleoli)
    r = 0.55 * np.sqrt(rng.uniform(0, 1, which.size))
    alpha = rng.uniform(0, 2 * np.pi, which.size)
    pu, pv = r * cells.a[which] * np.cos(alpha), r * cells.b[which] * np.sin(alpha)
    ct, st = np.cos(cells.theta[which]), np.sin(cells.theta[which])
    nucleoli = _spots(
        shape,
        cells.y[which] + pu * st + pv * ct,
        cells.x[which] + pu * ct - pv * st,
        cells.nucleoli_brightness[which] * rng.uniform(0.6, 1.2, which.size),
        1.5,
    ).ravel()[idx]
    mito_count = rng.poisson(cells.mito_density * np.pi * cells.radius**2)
    which = np.repeat(np.arange(n), mito_count)
    phi = rng.uniform(0, 2 * np.pi, which.size)
    rel = phi - cells.theta[which]
    nuc_edge = (cells.a * cells.b)[which] / np.hypot(
        cells.b[which] * np.cos(rel), cells.a[which] * np.sin(rel)
    )
    o = cells.outline[which]
    cell_edge = cells.radius[which] * (
        1
        + o[:, 0] * np.cos(2 * phi)
        + o[:, 1] * np.sin(2 * phi)
        + o[:, 2] * np.cos(3 * phi)
        + o[:, 3] * np.sin(3 * phi)
    )
    dist = nuc_edge + rng.beta(1.2, 2.8, which.size) * np.maximum(cell_edge - nuc_edge, 0) * 0.95
    mito = _spots(
        shape,
        cells.y[which] + dist * np.sin(phi),
        cells.x[which] + dist * np.cos(phi),
        rng.lognormal(0.0, 0.35, which.size),
        1.0,
    ).ravel()[idx]

    for out, channel in zip(signal, channels):
        level = per_pixel(cells.intensity[channel])
        if channel == "DNA":
            chromatin = 1 + per_pixel(cells.chromatin) * fine
            holes = 1 - f32(0.45) * np.minimum(nucleoli, 1)
            image = level * nuclear_profile * (1 - f32(0.2) * rho * rho) * chromatin * holes
        elif channel == "ER":
            contrast = per_pixel(cells.reticulum)
            reticulum = np.exp(-((mid / f32(0.4)) ** 2))
            envelope = np.exp(-(((rho - 1) * a / f32(1.3)) ** 2))
            cyto = (f32(0.25) * cytoplasm + f32(0.75) * perinuclear) * (
                1 - contrast + 2 * contrast * reticulum
            )
            image = level * (cyto + f32(0.5) * envelope * body + f32(0.08) * nucleus)
        elif channel == "RNA":
            cyto = cytoplasm * (f32(0.35) + f32(0.35) * np.exp(-depth / f32(0.6)))
            image = level * (
                cyto * (1 + f32(0.3) * fine) + f32(0.22) * nuclear_profile + nucleoli * nucleus
            )
        elif channel == "AGP":
            border = ndi.gaussian_filter(_cell_borders(cell_label), 1.0)
            rim = np.exp(-(((edge - d) / f32(1.3)) ** 2))
            membrane = np.maximum(rim, border.ravel()[idx] * f32(1.6))
            angle = cells.fibre_angle
            across = dy * per_pixel(np.cos(angle)) - dx * per_pixel(np.sin(angle))
            stripes = f32(0.5) + f32(0.5) * np.cos(across * f32(2 * np.pi / 5.0) + 2 * mid)
            fibres = per_pixel(cells.fibres) * stripes**6 * cytoplasm
            image = level * (membrane + fibres + f32(0.15) * body)
        else:  # Mito
            image = level * (mito * body + f32(0.12) * perinuclear)
        # Texture noise can dip a dim pixel below zero; stains cannot.
        out.ravel()[idx] += np.maximum(image, 0)
    return signal, label, cell_label


def _cell_borders(cell_label):
    """Pixels where two cell bodies meet (float mask)."""
    border = np.zeros(cell_label.shape, np.float32)
    for axis in (0, 1):
        this = [slice(None)] * 2
        that = [slice(None)] * 2
        this[axis], that[axis] = slice(None, -1), slice(1, None)
        this, that = tuple(this), tuple(that)
        a, b = cell_label[this], cell_label[that]
        meet = (a != b) & (a > 0) & (b > 0)
        border[this] += meet
        border[that] += meet
    return np.minimum(border, 1)


def _camera(rng, signal, channels, scale, illumination, dtype):
    """Turn stain signal into camera counts: batch scale, illumination, shot and read noise."""
    out = []
    top = np.iinfo(dtype).max
    for channel_signal, channel in zip(signal, channels):
        photons = channel_signal * np.float32(scale[channel]) * illumination
        # Shot noise (variance = signal) and read noise, drawn together as one Gaussian.
        sd = np.sqrt(photons + np.float32(_READ_NOISE**2))
        noisy = photons + sd * rng.standard_normal(photons.shape, dtype=np.float32)
        noisy += np.float32(_CAMERA_OFFSET)
        if str(dtype) == "uint8":
            noisy *= np.float32(_UINT8_FACTOR)
        out.append(np.clip(np.rint(noisy), 0, top).astype(dtype))
    return out


def _nucleus_table(label, cell_label, n):
    """Each nucleus's id, exact centroid (x = column, y = row) and area, and its cell's area."""
    ids = label.ravel()
    yy, xx = _grid(label.shape)
    area = np.bincount(ids, minlength=n + 1)[1:]
    x = np.bincount(ids, xx.ravel().astype(np.float64), minlength=n + 1)[1:]
    y = np.bincount(ids, yy.ravel().astype(np.float64), minlength=n + 1)[1:]
    return pd.DataFrame(
        {
            "object_id": np.arange(1, n + 1),
            "x": x / area,
            "y": y / area,
            "area": area,
            "cell_area": np.bincount(cell_label.ravel(), minlength=n + 1)[1:],
        }
    )


def _write_tiff(path, image):
    import tifffile

    tifffile.imwrite(path, image, photometric="minisblack", metadata=None)
