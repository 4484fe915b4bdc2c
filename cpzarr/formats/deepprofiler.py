"""DeepProfiler's project files, behind the :mod:`cpzarr.formats` contract.

* ``deepprofiler_index`` (kind ``images``): ``index.csv``, one row per site, one column of image
  paths per channel (relative to the index's folder);
* ``deepprofiler_locations`` (kind ``locations``): ``locations/<plate>/<well>-<site>-Nuclei.csv``;
* ``deepprofiler_npz`` (kind ``features``): ``features/<plate>/<well>_<site>.npz`` single-cell
  features, their pickled metadata read without running code (:func:`read_npz`;
  :func:`cpzarr.features.import_deepprofiler` also writes the result into a store).

Locations and features may be local paths or fsspec URLs (``storage_options`` for credentials).
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from cpzarr._tables import IMAGE_SUFFIXES, is_blank, normalize_well
from cpzarr.errors import InputError
from cpzarr.formats._contract import Format, register
from cpzarr.formats._csv import X_COLUMNS, Y_COLUMNS, head, numbers, pick_column, read_location_csv
from cpzarr.formats._features import features_dataset
from cpzarr.formats._fs import as_path

__all__ = ["INDEX", "LOCATIONS", "NPZ", "read_index", "read_locations", "read_npz"]

_KEYS = {"metadata_plate", "metadata_well", "metadata_site"}
_LOCATION = re.compile(r"^[A-Za-z]+\d+-[^-]+-Nuclei\.csv(\.gz)?$")
_SITE_FILE = re.compile(r"^(?P<well>[A-Za-z]+\d+)_(?P<site>[^/]+)$")
_DP_NAME = re.compile(r"^(?P<well>[A-Za-z]+\d+)-(?P<site>\d+)-Nuclei\.csv(\.gz)?$")


def _detect_index(path):
    frame = head(path, rows=20)
    if frame is None:
        return False
    names = {str(c).lower() for c in frame.columns}
    if not _KEYS <= names or any(n.startswith("filename_orig") for n in names):
        return False
    return any(
        not str(c).lower().startswith("metadata_")
        and any(str(v).strip().lower().endswith(IMAGE_SUFFIXES) for v in frame[c].dropna())
        for c in frame.columns
    )


def read_index(path, channels=None, storage_options=None):
    """Read a DeepProfiler index.csv (path or URL): see :func:`cpzarr.formats._image_table.read_image_table`."""
    from cpzarr.formats._image_table import read_image_table

    result = read_image_table(path, channels, storage_options=storage_options)
    if result[3]["format"] != "index":
        raise InputError(f"{path} is a load_data CSV, not a DeepProfiler index.csv; read it as 'load_data'")
    return result


def index_paths(frame, base, source):
    """``{channel: [absolute path or None per row]}`` and the channels of an index.csv.

    A channel is a non-``Metadata_`` column of image paths; its paths are relative to ``base``
    (the index's folder or URL) unless absolute.
    """
    from cpzarr.formats._image_table import absolute

    found = [c for c in frame.columns if not c.lower().startswith("metadata_") and _looks_like_images(frame[c])]
    if not found:
        raise InputError(
            f"The image table {source} has neither FileName_Orig<Channel> columns (load_data CSV) "
            f"nor columns of image paths ending in {', '.join(IMAGE_SUFFIXES)} (DeepProfiler index.csv)."
        )
    _refuse_odd_image_paths(frame, found, source)
    paths = {}
    for ch in found:
        paths[ch] = [None if is_blank(v) else str(absolute(base, str(v).strip())) for v in frame[ch]]
    return paths, found


def _looks_like_images(column: pd.Series) -> bool:
    """A column of image paths: at least one of its values ends in an image suffix.

    One odd value (``.jpg``, a typo) must not hide the whole channel; those are refused by
    :func:`_refuse_odd_image_paths` instead.
    """
    return any(str(v).strip().lower().endswith(IMAGE_SUFFIXES) for v in column if not is_blank(v))


def _refuse_odd_image_paths(frame, channels, source):
    """Refuse values of image-path columns that do not end in a readable image suffix."""
    problems = []
    for ch in channels:
        for i, value in enumerate(frame[ch]):
            if not is_blank(value) and not str(value).strip().lower().endswith(IMAGE_SUFFIXES):
                problems.append(f"line {i + 2}, channel {ch}: {str(value)!r} is not a {'/'.join(IMAGE_SUFFIXES)} file")
    if problems:
        raise InputError(
            f"The image table {source} lists files cpzarr cannot read as images (nothing was written).",
            problems,
        )


def _location_folder(path: Path) -> Path:
    return path / "locations" if (path / "locations").is_dir() else path


def _detect_locations(path):
    if not path.is_dir():
        return False
    folder = _location_folder(path)
    return any(_LOCATION.match(p.name) for p in folder.glob("*/*-Nuclei.csv*"))


def read_locations(path, storage_options=None):
    """Nucleus centres of DeepProfiler location files: a DataFrame of the ``locations`` contract.

    Rows (plate, well, site, x, y, file, row) from ``<plate>/<well>-<site>-Nuclei.csv`` files under
    ``path`` or ``path/locations`` (a local path or an fsspec URL, with ``storage_options``); an
    empty file (a site without cells) is still the site's file (``attrs["sites"]``).
    """
    folder = _location_folder(as_path(path, storage_options))
    frames, problems, sites = [], [], set()
    for file in sorted(folder.glob("*/*-Nuclei.csv*")):
        match = _DP_NAME.match(file.name)
        if not match:
            problems.append(f"{file}: name is not <well>-<site>-Nuclei.csv")
            continue
        try:
            frame = read_location_csv(file)
            x, y = pick_column(frame, X_COLUMNS, file), pick_column(frame, Y_COLUMNS, file)
            x, y = numbers(x, file), numbers(y, file)
        except InputError as err:
            problems.append(str(err))
            continue
        sites.add((file.parent.name, normalize_well(match["well"]), int(match["site"])))
        frames.append(pd.DataFrame({
            "plate": file.parent.name, "well": normalize_well(match["well"]),
            "site": int(match["site"]), "x": x, "y": y,
            "file": str(file), "row": np.arange(len(frame)) + 2,
        }))
    if problems:
        raise InputError(f"unreadable location files under {folder}", problems)
    if not frames:
        raise InputError(
            f"no location files <plate>/<well>-<site>-Nuclei.csv under {folder}; "
            "pass the DeepProfiler locations folder (or its parent)"
        )
    table = pd.concat(frames, ignore_index=True)
    # an empty file (a site without cells) leaves no rows but is still the site's file
    table.attrs["sites"] = sites
    return table


def _detect_npz(path):
    if path.is_file():
        return path.suffix == ".npz"
    return path.is_dir() and next(iter(path.glob("**/*.npz")), None) is not None


def read_npz(path, *, channels=None, config=None, storage_options=None):
    """Read DeepProfiler's single-cell feature files into a features Dataset.

    DeepProfiler's ``profile`` step writes one file per site, ``<plate>/<well>_<site>.npz`` (or
    ``<plate>/<well>/<site>.npz``) under its ``features`` folder, holding ``features`` (cell ×
    feature), ``locations`` (cell × 2: x, y) and a pickled ``metadata`` dict
    (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, the channel file names,
    ``Metadata_Model`` …). The dict is read with an unpickler that only rebuilds plain values and
    numpy arrays, so a crafted file cannot run code.

    Plate, well and site come from the metadata (the path when a key is missing); sites such as
    ``s1`` become 1. Feature names: ``<channel>_<i:04d>`` when the channel order is known
    (``channels``, or ``dataset.images.channels`` of the DeepProfiler ``config`` that made the
    files); otherwise Pycytominer's ``<Metadata_Model>_<i>`` (``efficientnet_0`` …), because the
    metadata lists channel file names in the index table's column order, not in the order the
    model saw them.

    Parameters
    ----------
    path : str or Path
        DeepProfiler's ``features`` folder, one plate folder, or a single ``.npz`` file; a local
        path or an fsspec URL (``s3://bucket/features``).
    channels : sequence of str, optional
        Channel order of the feature blocks (e.g. ``["DNA", "RNA", "ER", "AGP", "Mito"]``).
    config : str or Path, optional
        DeepProfiler config JSON to take the channel order from.
    storage_options : dict, optional
        fsspec options of a URL ``path`` (credentials, ``endpoint_url``).

    Returns
    -------
    Dataset (cell, feature)
        ``features`` float32 with coordinates plate, well, site, x, y along ``cell``.

    Raises
    ------
    InputError
        No files; unreadable files or missing arrays; feature widths that differ between files
        or do not split into the given channels; every offending file is named.

    Examples
    --------
    >>> ds = read_npz("../shared/data/deepprofiler_single_cell_lincs/features")  # doctest: +SKIP
    >>> ds.sizes["feature"]  # doctest: +SKIP
    6400
    """
    root = as_path(path, storage_options)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(set(root.glob("**/*.npz")))
    else:
        raise InputError(f"DeepProfiler features: {root} does not exist")
    if not files:
        raise InputError(f"DeepProfiler features: no .npz files under {root}")
    if config is not None and channels is None:
        channels = _config_channels(config, storage_options)

    frames, blocks, problems, model, seen = [], [], [], None, {}
    for file in files:
        try:
            with file.open("rb") as handle, np.load(handle, allow_pickle=False) as npz:
                missing = [k for k in ("features", "locations") if k not in npz.files]
                if missing:
                    problems.append(f"{file}: no {' or '.join(missing)} array")
                    continue
                features = np.asarray(npz["features"], np.float32)
                locations = np.asarray(npz["locations"], np.float64)
            metadata = _npz_metadata(file)
        except (OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
            problems.append(f"{file}: unreadable ({err})")
            continue
        if features.size == 0 and locations.size == 0:
            continue  # a site without cells
        if features.ndim != 2 or locations.shape != (features.shape[0], 2):
            problems.append(f"{file}: features {features.shape} and locations {locations.shape} do not pair up")
            continue
        try:
            plate, well, site = _dp_site(file, root, metadata)
        except ValueError as err:
            problems.append(f"{file}: {err}")
            continue
        if (plate, well, site) in seen:
            first = seen[plate, well, site]
            problems.append(f"{file}: plate {plate}, well {well}, site {site} again (also in {first})")
            continue
        seen[plate, well, site] = file
        model = model or metadata.get("Metadata_Model")
        frames.append(
            pd.DataFrame(
                {"plate": plate, "well": well, "site": site, "x": locations[:, 0], "y": locations[:, 1]}
            )
        )
        blocks.append(features)
    if not problems:
        widths = {b.shape[1] for b in blocks}
        if len(widths) > 1:
            common = max(widths, key=[b.shape[1] for b in blocks].count)
            problems += [
                f"{f}: {b.shape[1]} features, most files have {common}"
                for f, b in zip(seen.values(), blocks)
                if b.shape[1] != common
            ]
    if problems:
        raise InputError("DeepProfiler features: some files cannot be imported", problems)
    if not blocks:
        raise InputError(f"DeepProfiler features: the files under {root} hold no cells")

    width = blocks[0].shape[1]
    if channels is not None:
        channels = [str(c) for c in channels]
        if width % len(channels):
            raise InputError(
                f"DeepProfiler features: {width} features do not split into {len(channels)} channels {channels}"
            )
        per = width // len(channels)
        names = [f"{ch}_{i:04d}" for ch in channels for i in range(per)]
    else:
        names = [f"{model or 'DP'}_{i}" for i in range(width)]
    table = pd.concat(frames, ignore_index=True)
    return features_dataset(table, np.concatenate(blocks), names, {"source": str(root), "importer": "deepprofiler"})


def _config_channels(config, storage_options=None):
    try:
        value = json.loads(as_path(config, storage_options).read_text())["dataset"]["images"]["channels"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"DeepProfiler config {config}: cannot read dataset.images.channels ({err})") from None
    return list(value)


class _PlainUnpickler(pickle.Unpickler):
    """Rebuilds plain Python values and numpy arrays/scalars, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the metadata")


def _npz_metadata(file):
    """The ``metadata`` dict of a DeepProfiler npz, read without trusting the pickle."""
    with file.open("rb") as handle, zipfile.ZipFile(handle) as archive:
        if "metadata.npy" not in archive.namelist():
            return {}
        stream = io.BytesIO(archive.read("metadata.npy"))
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        _, _, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype != object:
        return {}
    value = _PlainUnpickler(stream).load()
    value = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    if not isinstance(value, dict):
        raise ValueError(f"metadata is a {type(value).__name__}, not a dict")
    return value


def _dp_site(file, root, metadata):
    """(plate, well, site) of a DeepProfiler file, from its metadata or else its path."""
    # the path below root, without the suffix (parts, not relative_to: a URL's UPath too)
    parts = (*file.parts[len(root.parts):-1], file.stem) if file != root else (file.stem,)
    match = _SITE_FILE.match(parts[-1])
    if match:
        from_path = {"plate": parts[-2] if len(parts) > 1 else None, "well": match["well"], "site": match["site"]}
    else:  # <plate>/<well>/<site>.npz
        from_path = {
            "plate": parts[-3] if len(parts) > 2 else None,
            "well": parts[-2] if len(parts) > 1 else None,
            "site": parts[-1],
        }
    plate = metadata.get("Metadata_Plate", from_path["plate"])
    well = metadata.get("Metadata_Well", from_path["well"])
    site = metadata.get("Metadata_Site", from_path["site"])
    if plate is None or well is None:
        raise ValueError("no plate/well in the metadata and none in the path (<plate>/<well>_<site>.npz)")
    digits = re.fullmatch(r"\D*(\d+)", str(site))
    if not digits:
        raise ValueError(f"site {site!r} is not a site number")
    return str(plate), normalize_well(well), int(digits.group(1))

INDEX = register(Format(
    name="deepprofiler_index", kind="images",
    description="DeepProfiler index.csv (one column of image paths per channel)",
    detect=_detect_index, reader=read_index,
))
LOCATIONS = register(Format(
    name="deepprofiler_locations", kind="locations",
    description="DeepProfiler locations/<plate>/<well>-<site>-Nuclei.csv files",
    detect=_detect_locations, reader=read_locations,
))
NPZ = register(Format(
    name="deepprofiler_npz", kind="features",
    description="DeepProfiler features/<plate>/<well>_<site>.npz files (or one file)",
    detect=_detect_npz, reader=read_npz,
))
