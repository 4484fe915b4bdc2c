"""DeepProfiler's project files, behind the :mod:`cpzarr.formats` contract.

* ``deepprofiler_index`` (kind ``images``): ``index.csv``, one row per site, one column of image
  paths per channel (relative to the index's folder);
* ``deepprofiler_locations`` (kind ``locations``): ``locations/<plate>/<well>-<site>-Nuclei.csv``;
* ``deepprofiler_npz`` (kind ``features``): ``features/<plate>/<well>_<site>.npz`` single-cell
  features, their pickled metadata read without running code.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cpzarr._tables import IMAGE_SUFFIXES, is_blank, normalize_well
from cpzarr.errors import InputError
from cpzarr.formats._contract import Format, register
from cpzarr.formats._csv import X_COLUMNS, Y_COLUMNS, head, numbers, pick_column, read_location_csv

__all__ = ["INDEX", "LOCATIONS", "NPZ", "read_index", "read_locations", "read_npz"]

_KEYS = {"metadata_plate", "metadata_well", "metadata_site"}
_LOCATION = re.compile(r"^[A-Za-z]+\d+-[^-]+-Nuclei\.csv(\.gz)?$")
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


def read_locations(path):
    """Nucleus centres of DeepProfiler location files: a DataFrame of the ``locations`` contract.

    Rows (plate, well, site, x, y, file, row) from ``<plate>/<well>-<site>-Nuclei.csv`` files under
    ``path`` or ``path/locations``; an empty file (a site without cells) is still the site's file
    (``attrs["sites"]``).
    """
    folder = _location_folder(Path(path))
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


def read_npz(path, **options):
    """DeepProfiler single-cell features; options as :func:`cpzarr.features.import_deepprofiler`."""
    from cpzarr.features.imports import import_deepprofiler

    return import_deepprofiler(path, **options)


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
