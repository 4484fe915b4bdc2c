"""Readers for the tables that describe a screen: image tables and platemaps.

Two image-table formats are recognised from their columns:

* a CellProfiler ``load_data`` CSV: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and a
  ``FileName_Orig<Channel>`` / ``PathName_Orig<Channel>`` pair per channel (a relative
  ``PathName`` is taken relative to the CSV's folder);
* a DeepProfiler ``index.csv``: the same three metadata columns and one column per channel, named
  by the channel, holding each image's path relative to the index file's folder.

Both become one frame with a row per site (``plate``, ``well``, ``site``, ``line`` — the line of the
source file, for error messages — and one absolute path column per channel) plus the well
metadata found in the table's other ``Metadata_*`` columns.

Metadata column names are normalised to the store's names: ``Metadata_`` is dropped, names are
lower-cased, ``well_position`` becomes ``well``, ``control_type`` becomes ``control``,
``pert_iname`` (filled from ``broad_sample`` where empty) becomes ``compound`` and
``mmoles_per_liter`` (or ``concentration``) becomes ``dose`` when the table has no column of that
name, and ``batch_number`` (or ``batch_id``) becomes ``batch``.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def read_table(table, *, what: str = "table", storage_options=None) -> tuple[pd.DataFrame, str]:
    """Read a CSV/TSV path or fsspec URL, or accept a DataFrame; return ``(frame, name for messages)``."""
    from cpzarr.store import is_url

    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True).copy(), f"the {what} DataFrame"
    if is_url(table):
        return _read_url_table(str(table), what, storage_options)
    path = Path(str(table).removeprefix("file://")).resolve()
    if not path.is_file():
        raise InputError(f"The {what} {path} does not exist or is not a file.")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        frame = pd.read_csv(path, sep=sep, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"The {what} {path} cannot be read as a {sep!r}-separated table: {exc}") from exc
    return frame, str(path)


def _read_url_table(url, what, storage_options):
    import fsspec

    sep = "\t" if url.lower().endswith((".tsv", ".txt")) else ","
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            frame = pd.read_csv(f, sep=sep, low_memory=False)
    except FileNotFoundError as exc:
        raise InputError(f"The {what} {url} does not exist.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"The {what} {url} cannot be read as a {sep!r}-separated table: {exc}") from exc
    return frame, url


def read_image_table(table, channels=None, storage_options=None) -> tuple[pd.DataFrame, pd.DataFrame, list[str], dict]:
    """Read a load_data CSV or a DeepProfiler index.csv into a per-site frame.

    Parameters
    ----------
    table : str, Path or DataFrame
        The image table, a path or an fsspec URL (``s3://…``; its relative image paths are then
        relative to the URL's folder). A DataFrame's relative paths are taken relative to the
        working directory.
    channels : sequence of str, optional
        Channels to keep, in this order. Default: every channel of the table, Cell Painting
        channels first in the order DNA, ER, RNA, AGP, Mito.

    Returns
    -------
    sites : DataFrame
        One row per site: ``plate``, ``well``, ``site``, ``line`` and one absolute path column per
        channel.
    well_metadata : DataFrame
        ``Metadata_*`` columns constant within each (plate, well), normalised names, keyed by
        ``plate`` and ``well``.
    channels : list of str
        The channels, in store order.
    info : dict
        ``format`` (``"load_data"`` or ``"index"``), ``source`` (path or description),
        ``found_channels`` (every channel of the table) and ``unknown_channels`` (channels asked
        for that the table lacks; they are left out of ``channels``).

    Examples
    --------
    >>> sites, meta, channels, info = read_image_table("index.csv")  # doctest: +SKIP
    """
    from cpzarr.store import is_url

    frame, source = read_table(table, what="image table", storage_options=storage_options)
    if isinstance(table, pd.DataFrame):
        base = Path.cwd()
    elif is_url(table):
        base = str(table).rsplit("/", 1)[0]
    else:
        base = Path(source).parent
    lower = {c.lower(): c for c in frame.columns}
    missing = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if c.lower() not in lower]
    if missing:
        raise InputError(
            f"The image table {source} lacks the column(s) {', '.join(missing)}; a load_data CSV or "
            "DeepProfiler index.csv names each site by Metadata_Plate, Metadata_Well and Metadata_Site."
        )
    filename_cols = {c[len("FileName_Orig"):]: c for c in frame.columns if c.startswith("FileName_Orig")}
    if filename_cols:
        fmt = "load_data"
        paths, found = _load_data_paths(frame, filename_cols, base, source)
    else:
        fmt = "index"
        found = [c for c in frame.columns if not c.lower().startswith("metadata_") and _looks_like_images(frame[c])]
        if not found:
            raise InputError(
                f"The image table {source} has neither FileName_Orig<Channel> columns (load_data CSV) "
                f"nor columns of image paths ending in {', '.join(IMAGE_SUFFIXES)} (DeepProfiler index.csv)."
            )
        _refuse_odd_image_paths(frame, found, source)
        paths = {}
        for ch in found:
            col = frame[ch]
            paths[ch] = [None if is_blank(v) else str(_absolute(base, str(v).strip())) for v in col]
    if channels is None:
        order = [c for c in CELL_PAINTING_CHANNELS if c in found] + [c for c in found if c not in CELL_PAINTING_CHANNELS]
    else:
        if len(set(channels)) != len(list(channels)):
            raise InputError(f"channels lists a channel twice: {list(channels)}")
        order = [c for c in channels if c in found]

    keys = {name: frame[lower[col]] for col, name in _KEY_COLUMNS.items()}
    sites = pd.DataFrame(
        {
            "plate": keys["plate"].map(lambda v: "" if is_blank(v) else str(v).strip()),
            "well": keys["well"].map(lambda v: "" if is_blank(v) else normalize_well(v)),
            "site": pd.to_numeric(keys["site"], errors="coerce"),
            "line": np.arange(len(frame)) + 2,
        }
    )
    for ch in order:
        sites[ch] = paths[ch]

    meta_cols = [
        c for c in frame.columns
        if c.lower().startswith("metadata_") and c.lower() not in _KEY_COLUMNS
    ]
    raw = frame[meta_cols].copy()
    raw.columns = [c[len("Metadata_"):] for c in meta_cols]
    raw["plate"] = sites["plate"].values
    raw["well"] = sites["well"].values
    well_metadata = _constant_within_wells(raw, source)
    well_metadata.attrs["source_names"] = normalize_columns(raw).attrs["source_names"]
    unknown = [c for c in (channels or ()) if c not in found]
    return sites, well_metadata, order, {"format": fmt, "source": source, "unknown_channels": unknown, "found_channels": found}


def read_platemap(platemap, storage_options=None) -> tuple[pd.DataFrame, str]:
    """Read a platemap (CSV/TSV path or DataFrame) and normalise its column names.

    Parameters
    ----------
    platemap : str, Path or DataFrame
        Keyed by (plate, well), or by well only when one layout serves every plate
        (``well_position`` is accepted for ``well``, ``Metadata_`` prefixes are dropped).

    Returns
    -------
    frame : DataFrame
        Normalised columns; ``plate`` only when the platemap has one.
    source : str
        The path or a description, for messages.

    Examples
    --------
    >>> frame, source = read_platemap("platemap.csv")  # doctest: +SKIP
    """
    from cpzarr.formats.lincs import is_lincs_platemap, read_lincs_platemap
    from cpzarr.store import is_url

    if not is_url(platemap) and is_lincs_platemap(platemap):  # barcode_platemap.csv + platemap/<name>.txt
        frame, source = read_lincs_platemap(platemap), str(Path(platemap).resolve())
    else:
        frame, source = read_table(platemap, what="platemap", storage_options=storage_options)
    frame = normalize_columns(frame)
    names = frame.attrs["source_names"]
    if "well" not in frame.columns:
        raise InputError(f"The platemap {source} has no well column (well, well_position or Metadata_Well).")
    frame["well"] = frame["well"].map(normalize_well)
    if "plate" in frame.columns:
        frame["plate"] = frame["plate"].map(lambda v: "" if is_blank(v) else str(v).strip())
    keys = ["plate", "well"] if "plate" in frame.columns else ["well"]
    dup = frame[frame.duplicated(keys, keep=False)]
    if len(dup):
        rows = sorted({tuple(r) for r in dup[keys].itertuples(index=False)})
        raise InputError(
            f"The platemap {source} lists some wells more than once.",
            [f"{'/'.join(r)} appears {int((frame[keys].apply(tuple, axis=1) == r).sum())} times" for r in rows],
        )
    frame.attrs["source_names"] = names
    return frame, source


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


def _load_data_paths(frame, filename_cols, base, source):
    paths, found, problems = {}, [], []
    for ch, fcol in filename_cols.items():
        pcol = f"PathName_Orig{ch}"
        if pcol not in frame.columns:
            problems.append(f"{fcol} has no matching {pcol} column")
            continue
        found.append(ch)
        paths[ch] = [
            None if is_blank(f) or is_blank(p) else str(_absolute(base, str(p)) / str(f))
            for f, p in zip(frame[fcol], frame[pcol])
        ]
    if problems:
        raise InputError(f"The load_data CSV {source} is incomplete.", problems)
    return paths, found


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


def _absolute(base, path: str):
    """``path`` relative to ``base`` (a folder or a URL prefix) unless absolute or a URL."""
    from cpzarr.store import join_input, is_url

    if is_url(base) or is_url(path):
        return _Joined(join_input(base, path))
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base) / p


class _Joined(str):
    """A URL that, like a Path, takes ``/ name`` (load_data's PathName / FileName)."""

    def __truediv__(self, name):
        return _Joined(f"{self.rstrip('/')}/{name}")


def is_blank(value) -> bool:
    """True for None, NaN and empty or blank strings: a cell the table leaves empty."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()
