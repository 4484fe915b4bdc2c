"""OME-Zarr HCS plates (OME-NGFF): read one into an ingest plan, write a store's images as one.

Reading (``cpzarr ingest PLATE.zarr STORE``): NGFF 0.4 plates on Zarr v2 (metadata at the top of
``.zattrs``) and NGFF 0.5 plates on Zarr v3 (under ``"ome"`` in ``zarr.json``). The hierarchy is
plate → row → column (the well) → field (a site) → multiscale level; cpzarr reads the full
resolution level (the first dataset of ``multiscales``) of every field. A field's axes must be
``[t,] [c,] [z,] y, x`` with ``t`` and ``z`` of size 1; channel names are the ``omero`` channel
labels (``c0``, ``c1`` … without them). Site numbers: the ``cpzarr`` attribute of a field written
by :func:`export_ome_zarr`, else the field's path plus one when the path is a number (ome-zarr-py
names fields ``0``, ``1`` …), else its position in the well plus one. Well metadata written by
:func:`export_ome_zarr` come back with the images.

Writing (:func:`export_ome_zarr`): one NGFF 0.5 plate per store plate on Zarr v3. Rows and
columns are the wells' own (``A`` / ``01``); each present site is one field, an array ``(c, y, x)``
with one chunk per channel, compressed as the store is (Blosc zstd, same level); ``omero`` gives
each channel its name, a colour and a display window; the well's metadata (compound, dose, moa,
control, platemap columns) sit beside the NGFF keys under ``"cpzarr"`` in the well's attributes.
The store itself stays one array per screen (a 6-D ``images`` sharded by well), which no HCS layout
can express: see the README for why export and not a store that doubles as an HCS plate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cpzarr.errors import InputError, StoreError

__all__ = ["is_hcs", "hcs_plates", "plan_hcs", "export_ome_zarr", "ZarrPlane", "NGFF_VERSION"]

NGFF_VERSION = "0.5"
#: Display colours of the Cell Painting channels (others are white).
COLOURS = {"DNA": "0000FF", "ER": "00FF00", "RNA": "FFFF00", "AGP": "FF0000", "Mito": "FF00FF"}


# --- recognising and reading plates ----------------------------------------------------------


def _ome_attrs(path: Path) -> dict | None:
    """The NGFF attributes of the group at ``path`` (0.5: under "ome"; 0.4: top level), or None."""
    for name in ("zarr.json", ".zattrs"):
        meta = path / name
        if meta.is_file():
            try:
                doc = json.loads(meta.read_text())
            except (OSError, ValueError):
                return None
            attrs = doc.get("attributes", {}) if name == "zarr.json" else doc
            if name == "zarr.json" and doc.get("node_type") != "group":
                return None
            return attrs.get("ome", attrs) if isinstance(attrs, dict) else None
    return None


def _all_attrs(path: Path) -> dict:
    for name in ("zarr.json", ".zattrs"):
        meta = path / name
        if meta.is_file():
            doc = json.loads(meta.read_text())
            return doc.get("attributes", {}) if name == "zarr.json" else doc
    return {}


def is_hcs(path) -> bool:
    """True for an OME-Zarr HCS plate, or a folder whose children are such plates.

    Examples
    --------
    >>> is_hcs("load_data.csv")
    False
    """
    return bool(hcs_plates(path))


def hcs_plates(path) -> list[Path]:
    """The OME-Zarr HCS plates at ``path``: itself when it is one, else its child plates, sorted.

    Examples
    --------
    >>> hcs_plates("plates/")  # doctest: +SKIP
    [PosixPath('plates/P1.ome.zarr'), PosixPath('plates/P2.ome.zarr')]
    """
    if not isinstance(path, (str, Path)):
        return []
    path = Path(path)
    if not path.is_dir():
        return []
    attrs = _ome_attrs(path)
    if attrs and "plate" in attrs:
        return [path]
    if (path / "zarr.json").is_file() or (path / ".zgroup").is_file():
        return []  # some other Zarr group (a cpzarr store): not a folder of plates
    return [child for child in sorted(path.iterdir()) if child.is_dir() and (_ome_attrs(child) or {}).get("plate")]


@dataclass(frozen=True)
class ZarrPlane:
    """One channel of one field of an OME-Zarr plate: what ingest reads in place of an image file.

    ``read_plane`` is the hook :func:`cpzarr.ingest.read_image` calls; it is a plain picklable value
    so that distributed workers can receive it.
    """

    array: str
    index: tuple

    def read_plane(self, shape=None, dtype=None, out=None):
        import zarr

        plane = np.asarray(zarr.open_array(self.array, mode="r")[self.index])
        if shape is not None and (plane.shape != tuple(shape) or plane.dtype != np.dtype(dtype)):
            raise InputError(f"{self.array} {list(self.index)} is {plane.shape} {plane.dtype}, not "
                             f"{tuple(shape)} {np.dtype(dtype)}; did the plate change since the ingest started?")
        if out is None:
            return plane
        out[...] = plane
        return out

    def __str__(self):
        return f"{self.array}[{','.join(map(str, self.index))}]"


def _plate_fields(plate_path: Path, problems: list) -> tuple[str, list, dict, dict]:
    """(plate name, [site rows], {well: metadata}, {store name: written name}) of one plate."""
    from cpzarr._tables import normalize_well

    attrs = _all_attrs(plate_path)
    ome = attrs.get("ome", attrs)
    own = attrs.get("cpzarr", {})
    plate = ome.get("plate", {})
    stem = plate_path.name
    for suffix in (".zarr", ".ome"):
        stem = stem.removesuffix(suffix)
    name = str(own.get("plate") or plate.get("name") or stem)
    rows = [r.get("name") for r in plate.get("rows", [])]
    columns = [c.get("name") for c in plate.get("columns", [])]
    sites, metadata = [], {}
    for entry in plate.get("wells", []):
        well_path = str(entry.get("path", ""))
        parts = well_path.split("/")
        if len(parts) != 2:
            problems.append(f"{plate_path}: well path {well_path!r} is not row/column")
            continue
        if "rowIndex" in entry and "columnIndex" in entry:
            try:
                if rows[entry["rowIndex"]] != parts[0] or columns[entry["columnIndex"]] != parts[1]:
                    problems.append(f"{plate_path}: well {well_path} does not match its rowIndex/columnIndex")
            except (IndexError, TypeError):
                problems.append(f"{plate_path}: well {well_path} has rowIndex/columnIndex outside rows/columns")
        well_dir = plate_path / well_path
        well_attrs = _all_attrs(well_dir) if well_dir.is_dir() else {}
        well_ome = well_attrs.get("ome", well_attrs).get("well")
        if well_ome is None:
            problems.append(f"{well_dir}: no well metadata (missing or not an NGFF well group)")
            continue
        well_own = well_attrs.get("cpzarr", {})
        well = str(well_own.get("well") or normalize_well(parts[0] + parts[1]))
        values = dict(well_own.get("metadata") or {})
        if own.get("batch") not in (None, ""):
            values["batch"] = own["batch"]
        if values:
            metadata[well] = values
        for position, image in enumerate(well_ome.get("images", [])):
            field = str(image.get("path", ""))
            site = _field_site(plate_path / well_path / field, field, position, problems)
            if site is not None:
                sites.append({"plate": name, "well": well, "site": site, "field": plate_path / well_path / field})
    return name, sites, metadata, own.get("source_names", {})


def _field_site(field_dir: Path, field: str, position: int, problems: list):
    attrs = _all_attrs(field_dir) if field_dir.is_dir() else None
    if attrs is None:
        problems.append(f"{field_dir}: the field listed by its well does not exist")
        return None
    if "site" in attrs.get("cpzarr", {}):
        return int(attrs["cpzarr"]["site"])
    return int(field) + 1 if field.isdigit() else position + 1


def _field_array(field_dir: Path, problems: list):
    """(array path, leading index for each channel, channel labels, (shape, dtype)) of a field."""
    import zarr

    attrs = _all_attrs(field_dir)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales") or []
    if not multiscales or not multiscales[0].get("datasets"):
        problems.append(f"{field_dir}: no multiscales datasets")
        return None
    ms = multiscales[0]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])]
    array_path = field_dir / ms["datasets"][0]["path"]
    try:
        array = zarr.open_array(array_path, mode="r")
    except Exception as err:  # zarr raises several types for a missing or broken array
        problems.append(f"{array_path}: cannot be opened as a Zarr array ({type(err).__name__}: {err})")
        return None
    if not axes:  # NGFF 0.3 and older: tczyx
        axes = ["t", "c", "z", "y", "x"][-array.ndim:]
    if len(axes) != array.ndim or axes[-2:] != ["y", "x"]:
        problems.append(f"{array_path}: axes {axes} do not end in y, x for an array of {array.ndim} dimensions")
        return None
    shape = dict(zip(axes, array.shape))
    for axis in axes[:-2]:
        if axis not in ("t", "c", "z"):
            problems.append(f"{array_path}: unknown axis {axis!r}")
            return None
        if axis != "c" and shape[axis] != 1:
            problems.append(f"{array_path}: axis {axis} has {shape[axis]} planes; cpzarr ingests 2-D sites "
                            "(project z-stacks and split time points first)")
            return None
    n_channels = shape.get("c", 1)
    labels = [str(ch.get("label", "")) for ch in (ome.get("omero") or {}).get("channels", [])]
    if len(labels) != n_channels or not all(labels) or len(set(labels)) != len(labels):
        labels = [f"c{i}" for i in range(n_channels)]
    planes = []
    for c in range(n_channels):
        planes.append(tuple(c if axis == "c" else 0 for axis in axes[:-2]))
    return str(array_path), planes, labels, ((shape["y"], shape["x"]), str(array.dtype))


def plan_hcs(plates, *, platemap=None, channels=None):
    """Validate OME-Zarr HCS plate(s) and return the plan :func:`cpzarr.ingest` writes from.

    Parameters
    ----------
    plates : str, Path or list of them
        A plate, a folder of plates, or several.
    platemap, channels
        As for :func:`cpzarr.ingest`.

    Returns
    -------
    cpzarr.ingest.IngestPlan

    Raises
    ------
    InputError
        Every problem found: wells or fields missing, fields of other shapes, dtypes or channels,
        z-stacks, duplicate sites, unknown channels, wells missing from the platemap.

    Examples
    --------
    >>> plan = plan_hcs("plate.ome.zarr")  # doctest: +SKIP
    """
    from cpzarr import _tables
    from cpzarr.ingest import IngestPlan, _join_metadata, _metadata_dataset

    items = plates if isinstance(plates, (list, tuple)) else [plates]
    paths = [p for item in items for p in hcs_plates(item)]
    if not paths:
        raise InputError(f"{plates} is not an OME-Zarr HCS plate (no 'plate' metadata)")
    source = ", ".join(str(Path(p).resolve()) for p in paths)
    problems: list[str] = []
    rows, metadata, names = [], {}, {}
    for path in paths:
        name, sites, meta, written = _plate_fields(Path(path).resolve(), problems)
        rows.extend(sites)
        metadata.update({(name, well): values for well, values in meta.items()})
        names.update(written)
    frame = pd.DataFrame(rows, columns=["plate", "well", "site", "field"])
    arrays = {}
    for field in frame["field"]:
        found = _field_array(field, problems)
        if found is not None:
            arrays[field] = found
    formats = pd.Series([(a[2], a[3]) for a in arrays.values()])
    if formats.empty:
        raise InputError(f"Cannot ingest {source}: no readable fields.", problems or None)
    labels, (shape, dtype) = formats.value_counts().index[0]
    for field, (array, _, found_labels, header) in arrays.items():
        if (found_labels, header) != (labels, (shape, dtype)):
            problems.append(f"{array} has channels {found_labels}, {header[0]} {header[1]}; the other fields "
                            f"have {labels}, {shape} {dtype}")
    wanted = list(labels) if channels is None else list(channels)
    problems += [f"channel {c!r} is not in the plate, which has {', '.join(labels)}" for c in wanted if c not in labels]
    dup = frame[frame.duplicated(["plate", "well", "site"], keep=False)]
    for (plate, well, site), group in dup.groupby(["plate", "well", "site"]):
        problems.append(f"{plate}/{well} site {site} appears as several fields: {', '.join(map(str, group['field']))}")
    frame = frame[frame["field"].isin(arrays)].reset_index(drop=True)
    frame["line"] = frame["field"].map(str)
    table_meta = pd.DataFrame([{"plate": p, "well": w, **m} for (p, w), m in metadata.items()])
    if table_meta.empty:
        table_meta = frame[["plate", "well"]].drop_duplicates()
    table_meta.attrs["source_names"] = names
    metadata_frame, platemap_source, _notes = _join_metadata(table_meta, frame, platemap, problems)
    if problems:
        raise InputError(f"Cannot ingest {source}: fix these problems (nothing was written).", problems)

    channel_index = [labels.index(c) for c in wanted]
    plates_sorted = sorted(frame["plate"].unique())
    wells = sorted(frame["well"].unique(), key=_tables.well_sort_key)
    smin, smax = int(frame["site"].min()), int(frame["site"].max())
    site_numbers = np.arange(min(1, smin), smax + 1, dtype=np.int64)
    p_index = {p: i for i, p in enumerate(plates_sorted)}
    w_index = {w: i for i, w in enumerate(wells)}
    files: dict = {}
    digest = hashlib.sha256(
        json.dumps([wanted, plates_sorted, wells, site_numbers.tolist(), list(shape), dtype]).encode())
    for row in frame.sort_values(["plate", "well", "site"]).itertuples(index=False):
        array, planes, _, _ = arrays[row.field]
        key = (p_index[row.plate], w_index[row.well])
        planes_used = [ZarrPlane(array, planes[c]) for c in channel_index]
        files.setdefault(key, []).append((int(row.site - site_numbers[0]), planes_used))
        digest.update(json.dumps([key, int(row.site), array, _mtime(array)]).encode())
    plan = IngestPlan(
        source=source,
        format="ome-zarr",
        platemap_source=platemap_source,
        channels=wanted,
        plates=plates_sorted,
        wells=wells,
        sites=site_numbers,
        shape=tuple(shape),
        dtype=dtype,
        files=files,
        metadata=_metadata_dataset(metadata_frame, plates_sorted, wells, site_numbers, wanted),
    )
    digest.update(plan.metadata.drop_dims(["site", "channel"]).to_dataframe().to_csv().encode())
    plan.fingerprint = digest.hexdigest()
    return plan


def _mtime(array: str) -> float:
    for name in ("zarr.json", ".zarray"):
        meta = Path(array) / name
        if meta.is_file():
            return meta.stat().st_mtime
    return 0.0


# --- writing ---------------------------------------------------------------------------------


def export_ome_zarr(store, out, *, plate=None, n_workers=None, overwrite=False):
    """Write a store's images as OME-NGFF 0.5 HCS plate(s) that ome-zarr-py and napari open.

    Parameters
    ----------
    store : str or Path
        A store made by :func:`cpzarr.ingest`.
    out : str or Path
        The plate to write. A store of several plates (and no ``plate``) writes one plate per
        store plate inside ``out``: ``out/<plate>.ome.zarr``.
    plate : str, optional
        Export only this plate, as ``out``.
    n_workers : int, optional
        Threads writing wells (default: the CPU count).
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    list of Path
        The plates written.

    Raises
    ------
    StoreError
        ``out`` exists (without ``overwrite``), or ``plate`` is not in the store.

    Examples
    --------
    >>> export_ome_zarr("screen.zarr", "plate.ome.zarr")  # doctest: +SKIP
    [PosixPath('plate.ome.zarr')]
    """
    import zarr

    from cpzarr.export import root_metadata
    from cpzarr.store import _root_attrs, is_store

    store, out = Path(store), Path(out)
    if not is_store(store) or not (_root_attrs(store) or {}).get("complete"):
        raise StoreError(f"{store} is not a complete cpzarr store; run (or finish) `cpzarr ingest` first.")
    root = root_metadata(store)
    plates = [str(p) for p in root["plate"].values]
    if plate is not None and plate not in plates:
        raise StoreError(f"The store {store} has no plate {plate!r}; it has {', '.join(plates)}.")
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; pass overwrite=True (--overwrite) or choose another path.")
    if plate is not None or len(plates) == 1:
        targets = {plate or plates[0]: out}
    else:
        targets = {p: out / f"{p}.ome.zarr" for p in plates}
    group = zarr.open_group(store, mode="r", zarr_format=3)
    images = group["images"]
    present = np.asarray(group["present"][...], dtype=bool)
    codec = images.compressors[0] if images.compressors else None
    tmp = out.parent / f".{out.name}.cpzarr-tmp-{uuid.uuid4().hex}"
    try:
        for name, target in targets.items():
            p = plates.index(name)
            _write_plate(tmp / target.relative_to(out) if target != out else tmp, root, images, present, p,
                         codec, n_workers)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return list(targets.values())


def _split_well(well: str) -> tuple[str, str]:
    letters = "".join(ch for ch in well if ch.isalpha())
    return letters, well[len(letters):]


def _jsonable(value):
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value if value is None or isinstance(value, (str, int, bool)) else str(value)


def _write_plate(path: Path, root, images, present, p, codec, n_workers):
    import zarr

    from cpzarr.export import metadata_names

    plate = str(root["plate"].values[p])
    wells = [str(w) for w in root["well"].values]
    sites = [int(s) for s in root["site"].values]
    channels = [str(c) for c in root["channel"].values]
    acquired = [w for w in range(len(wells)) if present[p, w].any()]
    rows = sorted({_split_well(wells[w])[0] for w in acquired}, key=lambda r: (len(r), r))
    columns = sorted({_split_well(wells[w])[1] for w in acquired}, key=lambda c: (len(c), c))
    well_vars = [n for n, v in root.data_vars.items() if v.dims == ("plate", "well")]
    entries = []
    for w in acquired:
        r, c = _split_well(wells[w])
        entries.append({"path": f"{r}/{c}", "rowIndex": rows.index(r), "columnIndex": columns.index(c)})
    field_count = int(present[p].sum(axis=1).max()) if acquired else 0
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs.update({
        "ome": {"version": NGFF_VERSION, "plate": {
            "name": plate, "rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in columns],
            "wells": entries, "field_count": field_count,
            "acquisitions": [{"id": 0, "name": plate}]}},
        "cpzarr": {"plate": plate, "batch": _jsonable(root["batch"].values[p]) if "batch" in root else "",
                   "channels": channels, "source_names": metadata_names(root)},
    })
    for r in rows:  # created here: threads creating one row group at once would collide
        group.create_group(r)
    window = _windows(images, present, p, acquired)
    dtype = np.dtype(images.dtype)

    def write_well(w):
        r, c = _split_well(wells[w])
        block = np.asarray(images[p, w])  # the well's shard: (site, channel, y, x)
        well_group = zarr.open_group(path / r, mode="r+", zarr_format=3).create_group(c)
        fields = [s for s in range(len(sites)) if present[p, w, s]]
        well_group.attrs.update({
            "ome": {"version": NGFF_VERSION, "well": {"images": [{"path": str(s), "acquisition": 0} for s in fields]}},
            "cpzarr": {"plate": plate, "well": wells[w],
                       "metadata": {n: _jsonable(root[n].values[p, w]) for n in well_vars}},
        })
        for s in fields:
            field = well_group.create_group(str(s))
            field.attrs.update({
                "ome": {"version": NGFF_VERSION,
                        "multiscales": [{
                            "name": f"{plate}/{wells[w]}/{sites[s]}",
                            "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                                     {"name": "x", "type": "space"}],
                            "datasets": [{"path": "0", "coordinateTransformations": [
                                {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
                        }],
                        "omero": {"channels": [
                            {"label": ch, "color": COLOURS.get(ch, "FFFFFF"), "active": True,
                             "window": {"min": float(_dtype_min(dtype)), "max": float(_dtype_max(dtype)),
                                        "start": window[i][0], "end": window[i][1]}}
                            for i, ch in enumerate(channels)],
                            "rdefs": {"model": "color"}}},
                "cpzarr": {"site": sites[s]},
            })
            array = field.create_array("0", shape=block.shape[1:], chunks=(1,) + block.shape[2:], dtype=dtype,
                                       compressors=codec, fill_value=0, dimension_names=["c", "y", "x"])
            array[...] = block[s]
        return len(fields)

    with ThreadPoolExecutor(max_workers=n_workers or os.cpu_count() or 1) as pool:
        list(pool.map(write_well, acquired))


def _dtype_min(dtype):
    return np.iinfo(dtype).min if dtype.kind in "ui" else 0.0


def _dtype_max(dtype):
    return np.iinfo(dtype).max if dtype.kind in "ui" else 1.0


def _windows(images, present, p, acquired):
    """Display window per channel: the 0.1 and 99.9 percentiles of the plate's first site."""
    if not acquired:
        return [(0.0, 1.0)] * images.shape[3]
    w = acquired[0]
    s = int(np.flatnonzero(present[p, w])[0])
    site = np.asarray(images[p, w, s])
    return [(float(np.percentile(plane, 0.1)), float(max(np.percentile(plane, 99.9), np.percentile(plane, 0.1) + 1)))
            for plane in site]
