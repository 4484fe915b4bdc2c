"""Generic helpers for the tables that describe a screen: well names, metadata columns, blanks.

The readers of the field's tables live in :mod:`cpzarr.formats` (one module per format:
``load_data``, ``deepprofiler``, ``platemap``, ...); this module keeps what they and ingest share.

Metadata column names are normalised to the store's names: ``Metadata_`` is dropped, names are
lower-cased, ``well_position`` becomes ``well``, ``control_type`` becomes ``control``,
``pert_iname`` (filled from ``broad_sample`` where empty) becomes ``compound`` and
``mmoles_per_liter`` (or ``concentration``) becomes ``dose`` when the table has no column of that
name, and ``batch_number`` (or ``batch_id``) becomes ``batch``.

``read_table``, ``read_image_table`` and ``read_platemap`` are still importable from here (they
moved to :mod:`cpzarr.formats._csv`, :mod:`cpzarr.formats._image_table` and
:mod:`cpzarr.formats.platemap`).
"""

from __future__ import annotations

import re
import numpy as np
import pandas as pd

from cpzarr.errors import InputError

#: Channel order of the store when the table has the five Cell Painting channels.
CELL_PAINTING_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")

#: Well metadata every store has, filled with "" / NaN when the sources lack them.
REQUIRED_METADATA = ("compound", "dose", "moa", "control")

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")

_KEY_COLUMNS = {"metadata_plate": "plate", "metadata_well": "well", "metadata_site": "site"}
_RENAMES = {"well_position": "well", "control_type": "control"}
_BATCH_ALIASES = ("batch", "batch_number", "batch_id")
_WELL_RE = re.compile(r"^([A-Za-z]+)0*(\d+)$")


def normalize_well(name) -> str:
    """Return a well name in the store's form: row letters upper-case, column zero-padded.

    Parameters
    ----------
    name : str
        A well name as written by an acquisition system (``a1``, ``A01``, ``AF048``).

    Returns
    -------
    str
        ``A01``-style name; unchanged when it does not look like a well name.

    Examples
    --------
    >>> normalize_well("b3")
    'B03'
    """
    text = str(name).strip()
    match = _WELL_RE.match(text)
    if not match:
        return text
    return f"{match.group(1).upper()}{int(match.group(2)):02d}"


def well_sort_key(name: str) -> tuple:
    """Sort key that orders wells row by row (``B02`` before ``AA01``, ``A02`` before ``A10``)."""
    match = _WELL_RE.match(name)
    if not match:
        return (1, name, 0)
    row = match.group(1)
    return (0, len(row), row, int(match.group(2)))


def normalize_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop ``Metadata_`` prefixes, lower-case names and apply the field's renames.

    Returns a new frame; when two source columns map to one name, the first wins. Its
    ``attrs["source_names"]`` maps each new name to the column's name as written (without
    ``Metadata_``), so that exports can restore it.

    Examples
    --------
    >>> normalize_columns(pd.DataFrame({"Metadata_Plate": ["P1"], "well_position": ["A01"]})).columns.tolist()
    ['plate', 'well']
    """
    names = []
    for col in frame.columns:
        name = str(col)
        if name.lower().startswith("metadata_"):
            name = name[len("metadata_"):]
        name = name.lower()
        names.append(_RENAMES.get(name, name))
    out = frame.copy()
    out.columns = names
    out = out.loc[:, ~out.columns.duplicated()]
    written = {}
    for name, col in zip(names, frame.columns):
        col = str(col)
        written.setdefault(name, col[len("metadata_"):] if col.lower().startswith("metadata_") else col)
    out.attrs["source_names"] = written
    return out


def derive_store_metadata(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Fill ``compound``, ``dose``, ``moa``, ``control`` and ``batch`` from the field's synonyms.

    Parameters
    ----------
    frame : DataFrame
        Well metadata with normalised column names.

    Returns
    -------
    frame : DataFrame
        With the required columns present.
    notes : list of str
        What was derived or filled, for a warning.
    """
    out = frame.copy()
    notes = []
    if "compound" not in out.columns:
        if "pert_iname" in out.columns:
            compound = out["pert_iname"].astype(object)
            if "broad_sample" in out.columns:
                empty = compound.map(is_blank)
                compound = compound.where(~empty, out["broad_sample"])
                notes.append("compound taken from pert_iname, or broad_sample where pert_iname is empty")
            else:
                notes.append("compound taken from pert_iname")
            out["compound"] = compound
        elif "broad_sample" in out.columns:
            out["compound"] = out["broad_sample"]
            notes.append("compound taken from broad_sample")
        if "compound" in out.columns and "solvent" in out.columns:
            # LINCS platemaps leave broad_sample empty in the solvent-only (DMSO) wells
            empty = out["compound"].map(is_blank) & ~out["solvent"].map(is_blank)
            if empty.any():
                out["compound"] = out["compound"].astype(object).where(~empty, out["solvent"])
                notes.append("compound taken from solvent where it is otherwise empty (solvent-only wells)")
    if "dose" not in out.columns:
        for alias in ("mmoles_per_liter", "concentration"):
            if alias in out.columns:
                out["dose"] = pd.to_numeric(out[alias], errors="coerce")
                notes.append(f"dose taken from {alias}")
                break
    if "control" not in out.columns and "compound" in out.columns:
        is_dmso = out["compound"].map(lambda v: not is_blank(v) and str(v).strip().upper() == "DMSO")
        out["control"] = np.where(is_dmso, "negcon", "trt").astype(object)
        notes.append("control inferred: negcon where compound is DMSO, trt elsewhere")
    if "batch" not in out.columns:
        for alias in _BATCH_ALIASES[1:]:
            if alias in out.columns:
                out["batch"] = out[alias]
                notes.append(f"batch taken from {alias}")
                break
    for col in REQUIRED_METADATA:
        if col not in out.columns:
            out[col] = np.nan if col == "dose" else ""
            notes.append(f"no {col} column in the image table or platemap: filled with {'NaN' if col == 'dose' else 'empty strings'}")
    return out, notes


def as_store_column(values: pd.Series) -> np.ndarray:
    """Return a column as float64 (numeric columns) or object strings ("" for missing)."""
    if pd.api.types.is_bool_dtype(values):
        return values.map(lambda v: "" if is_blank(v) else str(v)).to_numpy(dtype=object)
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64)
    return values.map(lambda v: "" if is_blank(v) else as_label(v)).to_numpy(dtype=object)


def as_label(value) -> str:
    """A metadata value as a text label (``1.0`` read from a CSV becomes ``"1"``)."""
    # CSV readers turn integer columns with gaps into floats; "1" reads better than "1.0" as a label.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


#: Well metadata that must be one value per well: the store's names and the field's synonyms
#: that become them (see :func:`derive_store_metadata`). Other columns varying within a well
#: (per-site acquisition details) are left out of the well metadata.
WELL_LEVEL = REQUIRED_METADATA + ("pert_iname", "broad_sample", "mmoles_per_liter", "concentration") + _BATCH_ALIASES


def _constant_within_wells(raw: pd.DataFrame, source: str = "the image table") -> pd.DataFrame:
    """Keep the columns that have one value per (plate, well); one row per well.

    A column of :data:`WELL_LEVEL` that differs within a well (a typo in one row) is refused
    naming the wells and values: dropping it would replace ``compound`` for the whole screen by
    another column, or blank ``batch`` on every plate.
    """
    raw = normalize_columns(raw)
    cols = [c for c in raw.columns if c not in ("plate", "well")]
    grouped = raw.groupby(["plate", "well"], sort=False, dropna=False)
    problems = []
    for c in cols:
        counts = grouped[c].nunique(dropna=False)
        if c in WELL_LEVEL and (counts > 1).any():
            for plate, well in counts.index[counts.to_numpy() > 1][:10]:
                values = raw.loc[(raw["plate"] == plate) & (raw["well"] == well), c]
                shown = ", ".join(repr(v) for v in pd.unique(values.map(lambda v: "" if is_blank(v) else v)))
                problems.append(f"{plate}/{well}: {c} is {shown}")
    if problems:
        raise InputError(
            f"The image table {source} gives different well metadata on the sites of one well; "
            "make each well's rows agree (nothing was written).", problems,
        )
    keep = [c for c in cols if (grouped[c].nunique(dropna=False) <= 1).all()]
    return grouped[keep].first().reset_index() if keep else grouped.size().reset_index()[["plate", "well"]]


def is_blank(value) -> bool:
    """True for None, NaN and empty or blank strings: a cell the table leaves empty."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


#: Names that moved to cpzarr.formats, still importable from here (old import paths).
_MOVED = {
    "read_table": "cpzarr.formats._csv",
    "read_image_table": "cpzarr.formats._image_table",
    "read_platemap": "cpzarr.formats.platemap",
    "_absolute": "cpzarr.formats._image_table",
}


def __getattr__(name):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
