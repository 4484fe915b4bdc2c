"""Profile tables as ``DataArray[sample, feature]`` and their Pycytominer-convention files.

A Pycytominer table is a pandas frame whose metadata columns start with ``Metadata_``; every other
numeric column is a feature. Conversion keeps what is needed to rebuild the frame exactly (column
order, feature dtypes, index, unprefixed metadata columns) in the DataArray's attributes, so
``to_pycytominer(from_pycytominer(df))`` equals ``df``.
"""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.errors import InputError, StoreError

PREFIX = "Metadata_"
_RESERVED = ("sample", "feature")
#: The store's key coordinates and Pycytominer's names for them.
KEY_NAMES = {"plate": "Plate", "well": "Well", "site": "Site"}
#: ``DataFrame.attrs`` key mapping each renamed metadata column back to its coordinate.
CPZARR_COORDS = "cpzarr_coords"


def _refuse_mostly_numeric(df, candidates):
    """Refuse unprefixed text columns that are numbers but for a few cells: a feature column
    with a typo would otherwise become metadata and silently leave the profiles."""
    problems = []
    for column in candidates:
        values = df[column]
        if pd.api.types.is_bool_dtype(values) or values.dtype != object:
            continue
        given = values.notna() & (values.astype(str).str.strip() != "")
        numbers = pd.to_numeric(values.where(given), errors="coerce").notna()
        bad = given & ~numbers
        if numbers.sum() > 0 and numbers.sum() >= bad.sum():
            rows = [f"row {i} ({values.iloc[i]!r})" for i in np.flatnonzero(bad.to_numpy())[:5]]
            problems.append(f"column {column!r}: {int(bad.sum())} non-numeric of {int(given.sum())} values, "
                            f"first at {', '.join(rows)}")
    if problems:
        raise InputError(
            "profile table: feature columns hold non-numeric values (rows counted from 0 after the "
            "header); fix them, or prefix true metadata columns with 'Metadata_'", problems
        )


def from_pycytominer(df, features="infer"):
    """Convert a Pycytominer-convention frame to a profile DataArray.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per sample; ``Metadata_*`` columns are metadata, the other columns features.
    features : list of str or "infer", default "infer"
        Feature columns. ``"infer"`` takes every column that does not start with ``Metadata_``;
        non-numeric columns among them are kept as metadata (without a prefix to strip), except
        a column of numbers with some non-numeric cells (a typo), which is refused with its rows.

    Returns
    -------
    profiles : DataArray (sample, feature)
        Named ``profiles``; metadata as coordinates along ``sample`` without the prefix, and
        ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` as the store's ``plate``,
        ``well``, ``site``.

    Examples
    --------
    >>> df = pd.DataFrame({"Metadata_Plate": ["p", "p"], "Cells_x": [1.0, 2.0]})
    >>> from_pycytominer(df).coords["plate"].values.tolist()
    ['p', 'p']
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"from_pycytominer expects a pandas DataFrame, got {type(df).__name__}")
    columns = [str(c) for c in df.columns]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise InputError("profile table has duplicated columns", duplicated)
    if features == "infer":
        features = [
            c for c in columns
            if not c.startswith(PREFIX) and pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_bool_dtype(df[c])
        ]
        _refuse_mostly_numeric(df, [c for c in columns if not c.startswith(PREFIX) and c not in features])
    else:
        features = [str(f) for f in features]
        missing = [f for f in features if f not in columns]
        if missing:
            raise InputError("feature columns are not in the profile table", missing)
        bad = [f for f in features if not pd.api.types.is_numeric_dtype(df[f])]
        if bad:
            raise InputError("feature columns must be numeric", bad)
    feature_set = set(features)
    metadata = [c for c in columns if c not in feature_set]

    coords, unprefixed = {}, []
    keys = {v: k for k, v in KEY_NAMES.items()}
    written = df.attrs.get(CPZARR_COORDS) or {}  # column → coordinate, kept by Parquet and .h5ad
    for column in metadata:
        name = column[len(PREFIX):] if column.startswith(PREFIX) else column
        if column.startswith(PREFIX):
            name = keys.get(name, name)  # Metadata_Plate, _Well, _Site → the store's plate, well, site
        name = written.get(column, name)
        if not column.startswith(PREFIX):
            unprefixed.append(column)
        if name in coords or name in _RESERVED:
            raise InputError(
                f"metadata column {column!r} maps to coordinate {name!r}, which is already taken; "
                "rename the column"
            )
        coords[name] = ("sample", df[column].to_numpy())

    dtypes = {f: str(df[f].dtype) for f in features}
    common = np.result_type(*[df[f].dtype for f in features]) if features else np.float64
    values = df[features].to_numpy(dtype=common) if features else np.empty((len(df), 0))
    coords["feature"] = ("feature", np.asarray(features, dtype=object))
    index = df.index
    if not isinstance(index, pd.RangeIndex) or index.start != 0 or index.step != 1:
        coords["sample"] = ("sample", index.to_numpy())
    attrs = {
        "pycytominer_columns": json.dumps(columns),
        "pycytominer_unprefixed": json.dumps(unprefixed),
    }
    if len(set(dtypes.values())) > 1:
        attrs["pycytominer_dtypes"] = json.dumps(dtypes)
    return xr.DataArray(values, dims=("sample", "feature"), coords=coords, name="profiles", attrs=attrs)


def to_pycytominer(profiles, names=None):
    """Convert a profile DataArray to a Pycytominer-convention frame.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Computed if dask-backed.
    names : dict, optional
        Coordinate → column name (without ``Metadata_``) for metadata columns. By default a
        column keeps the name :func:`from_pycytominer` read it under; otherwise the name the
        platemap or image table wrote (``attrs["pycytominer_names"]``, which the store's well
        metadata carry: ``control`` → ``control_type``, ``plate_map_name`` → ``Plate_Map_Name``);
        ``plate``, ``well`` and ``site`` become ``Plate``, ``Well`` and ``Site``.

    Returns
    -------
    pandas.DataFrame
        ``Metadata_``-prefixed metadata columns, then features (or the column order recorded by
        :func:`from_pycytominer` when the columns are still the same).

    Examples
    --------
    >>> df = pd.DataFrame({"Metadata_Plate": ["p"], "Cells_x": [1.0]})
    >>> to_pycytominer(from_pycytominer(df)).equals(df)
    True
    """
    _check_profiles(profiles)
    unprefixed = set(json.loads(profiles.attrs.get("pycytominer_unprefixed", "[]")))
    recorded = json.loads(profiles.attrs.get("pycytominer_columns", "[]"))
    written = {**KEY_NAMES, **json.loads(profiles.attrs.get("pycytominer_names", "{}")), **(names or {})}
    data, coords_of = {}, {}
    order = list(KEY_NAMES)  # plate, well, site first
    keys_first = sorted(profiles.coords.items(), key=lambda item: order.index(item[0]) if item[0] in order else 3)
    for name, coord in keys_first:
        if name in _RESERVED or coord.dims != ("sample",):
            continue
        if name in unprefixed:
            column = name
        elif PREFIX + name in recorded and not (names and name in names):
            column = PREFIX + name
        else:
            column = PREFIX + written.get(name, name)
        if column in data:
            raise InputError(f"metadata {name!r} and another coordinate both become the column {column!r}; "
                             "rename one or pass names=")
        data[column] = coord.values
        if column != PREFIX + name and column != name:
            coords_of[column] = name
    values = np.asarray(profiles.transpose("sample", "feature").values)
    features = [str(f) for f in profiles["feature"].values]
    dtypes = json.loads(profiles.attrs.get("pycytominer_dtypes", "{}"))
    for j, feature in enumerate(features):
        column = values[:, j]
        if feature in dtypes:
            column = column.astype(dtypes[feature])
        data[feature] = column
    index = None
    if "sample" in profiles.coords:
        index = pd.Index(profiles["sample"].values)
    frame = pd.DataFrame(data, index=index)
    if recorded and set(recorded) == set(frame.columns):
        frame = frame[recorded]
    if coords_of:  # Parquet and .h5ad keep this, so reading the file back restores the coordinates
        frame.attrs[CPZARR_COORDS] = coords_of
    return frame


def read_profiles(path, node=None, features="infer"):
    """Read a profile table from Parquet, CSV(.gz) or a Zarr store node.

    Parameters
    ----------
    path : str or Path
        ``.parquet``, ``.csv`` or ``.csv.gz`` in the Pycytominer convention, an AnnData ``.h5ad``
        file, or a Zarr store.
    node : str, optional
        For a Zarr store, the group holding ``profiles``, e.g. ``"profiles/efficientnet/well"``.
    features : list of str or "infer"
        Feature columns of a Parquet/CSV table (see :func:`from_pycytominer`).

    Returns
    -------
    profiles : DataArray (sample, feature)
        Dask-backed when read from Zarr.

    Notes
    -----
    Reading or writing a Zarr node gives Zarr's thread pool (created once per process) as many
    threads as dask has workers, unless ``zarr.config`` sets ``threading.max_workers``: more
    would only idle, each keeping freed chunk buffers in its own malloc arena.

    Examples
    --------
    >>> profiles = read_profiles("SQ00015054_normalized_feature_select.csv.gz")  # doctest: +SKIP
    """
    from cpzarr.store import as_location, zarr_target

    path = as_location(path)
    if not path.exists():
        raise InputError(f"profile file {path} does not exist")
    kind = _kind(path)
    if kind == "parquet":
        source, options = _source(path)
        frame = pd.read_parquet(source, storage_options=options)
        # Parquet gives None for missing strings where CSV and the written frame had NaN.
        for column in frame.columns[frame.dtypes == object]:
            frame[column] = frame[column].where(frame[column].notna(), np.nan)
        return from_pycytominer(frame, features=features)
    if kind == "csv":
        source, options = _source(path)
        try:
            frame = pd.read_csv(source, storage_options=options, float_precision="round_trip")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as error:
            raise InputError(f"profile file {path} is not a readable CSV table: {error}") from None
        try:
            return from_pycytominer(frame, features=features)
        except InputError as error:
            raise InputError(f"{path}: {error}") from None
    if kind == "h5ad":
        from cpzarr.formats.h5ad import read_h5ad

        frame, names = read_h5ad(path)
        return from_pycytominer(frame, features=names if features == "infer" else features)
    _zarr_threads_like_dask()
    from cpzarr.store import STORE_ATTRS, node_status

    status = node_status(path, node or "")
    if status.exists and not status.complete:
        raise StoreError(f"node {node or '/'!r} of store {path} is {status.describe()}; re-run the command "
                         "that writes it")
    try:
        dataset = xr.open_zarr(zarr_target(path, read_only=True), group=node, zarr_format=3, consolidated=False)
    except Exception as error:  # zarr raises several types for a missing group
        raise StoreError(f"cannot open node {node!r} of store {path}: {error}") from error
    dataset.attrs = {k: v for k, v in dataset.attrs.items() if k not in STORE_ATTRS}
    if "profiles" not in dataset:
        raise StoreError(f"node {node!r} of store {path} has no 'profiles' variable")
    profiles = dataset["profiles"]
    # Zarr v3 strings come back as numpy StringDType; metadata code compares object strings.
    strings = {k: c.astype(object) for k, c in profiles.coords.items() if c.dtype.kind == "T"}
    profiles = profiles.assign_coords(strings)
    # Zarr lists a group's arrays in the order their metadata arrive, which varies from read to
    # read; coordinates in name order make tables written from a node come out the same each time.
    profiles = xr.DataArray(profiles.variable, coords={k: profiles.coords[k] for k in sorted(profiles.coords)},
                            name=profiles.name)
    profiles.attrs.update(dataset.attrs)
    return profiles


def write_profiles(profiles, path, node=None, mode="w", overwrite=False):
    """Write a profile table to Parquet, CSV(.gz) or a Zarr store node.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    path : str or Path
        ``.parquet``, ``.csv`` or ``.csv.gz`` (Pycytominer convention), ``.h5ad`` (AnnData: metadata
        in ``obs``, features in ``X``; needs ``anndata``), anything else is a Zarr store.
    node : str, optional
        Group inside the Zarr store, e.g. ``"profiles/efficientnet/well"``. Into an existing
        store (a screen store included) only this node is written, atomically, under the
        store's lock; the rest of the store is never touched. Without a node the table is the
        store's root, which a screen store refuses.
    mode : {"w", "w-"}, default "w"
        Zarr write mode: overwrite the node (or the profiles-only store), or fail if it exists.
    overwrite : bool
        Replace ``path`` when it exists and is not a Zarr store of profiles (a folder of other
        files, a Zarr store without profiles at its root); without it that raises StoreError.

    Returns
    -------
    Path
        The path written.

    Examples
    --------
    >>> write_profiles(profiles, "plate_normalized.parquet")  # doctest: +SKIP
    """
    from cpzarr.store import as_location

    _check_profiles(profiles)
    path = as_location(path)
    kind = _kind(path)
    if kind in ("parquet", "csv", "h5ad") and not isinstance(path, Path):
        raise InputError(f"{path}: write a table to an object store as a Zarr node (or to a local file)")
    if kind in ("parquet", "csv"):
        if path.is_dir():
            raise StoreError(f"{path} is a folder; a {kind} table is written as a file")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            frame = to_pycytominer(profiles)
            if kind == "parquet":
                frame.to_parquet(tmp)
            else:
                frame.to_csv(tmp, index=False, compression="gzip" if path.name.lower().endswith(".gz") else None)
            os.replace(tmp, path)  # a crash leaves the old table or the new one, never half of one
        finally:
            tmp.unlink(missing_ok=True)
    elif kind == "h5ad":
        from cpzarr.formats.h5ad import write_h5ad

        write_h5ad(to_pycytominer(profiles), path, features=[str(f) for f in profiles["feature"].values])
    else:
        _zarr_threads_like_dask()
        profiles = profiles.rename("profiles")
        chunks = profiles.chunks
        if chunks is not None and any(len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]) for c in chunks):
            # Zarr needs a regular chunk grid; operations on groups leave irregular dask chunks.
            profiles = profiles.chunk({dim: max(c) for dim, c in zip(profiles.dims, chunks)})
        for name, coord in profiles.coords.items():
            if coord.dtype == object:
                # Zarr v3 variable-length strings cannot hold NaN; missing metadata becomes "".
                values = np.array(["" if _missing(v) else str(v) for v in coord.values], dtype=object)
                profiles = profiles.assign_coords({name: (coord.dims, values)})
        dataset = profiles.to_dataset()
        dataset.attrs = dict(profiles.attrs)
        dataset["profiles"].attrs = {}
        for variable in dataset.variables.values():
            # Encodings read from another node (its chunks, its codecs) would conflict with
            # this write's chunks.
            variable.encoding = {}
        _write_zarr(dataset, path, node, mode=mode, overwrite=overwrite)
    return path


def _write_zarr(dataset, path, node, *, mode, overwrite):
    """Write the profiles ``dataset`` as ``node`` of the Zarr store ``path`` (its root when None).

    Atomic, under the store's lock: a node is written beside the store and renamed in
    (:func:`cpzarr.store.write_node`), a profiles-only store likewise as a whole.
    """
    import zarr

    from cpzarr.store import _write, is_store, root_attrs, store_lock, zarr_target

    if mode not in ("w", "w-"):
        raise InputError(f"mode must be 'w' or 'w-', not {mode!r}")
    encoding = {"profiles": {"compressors": _profile_compressor()}}
    with store_lock(path, "write profiles"):
        _write.sweep_scratch(path, partials=False)  # a killed write's folder
        attrs = root_attrs(path)
        occupied = path.exists() and not (path.is_dir() and not any(path.iterdir()))
        if occupied and attrs is None and not overwrite:
            raise StoreError(
                f"{path} exists and is not a Zarr store; refusing to replace it (pass overwrite=True, "
                "--overwrite, to replace it, or choose another target)")
        if occupied and attrs is not None and node is None:
            if is_store(path):
                raise StoreError(
                    f"{path} is a screen store; writing profiles at its root would replace it. Name a node "
                    "(--out-node profiles/<features>/<level>) to add the table to it.")
            if not (path / "profiles" / "zarr.json").is_file() and not overwrite:
                raise StoreError(
                    f"{path} is a Zarr store that holds no profile table at its root; refusing to replace it "
                    "(pass overwrite=True, --overwrite, or name a node)")
            if mode == "w-":
                raise StoreError(f"{path} already holds profiles (mode 'w-')")
        if node is None or (occupied and attrs is None):
            def build(tmp):
                if node is None:
                    _write._write_marked(dataset, tmp, encoding)
                else:
                    zarr.open_group(zarr_target(tmp), mode="w", zarr_format=3)
                    _write.write_node(tmp, node, dataset, encoding=encoding)

            _write.create_store(path, build, replace=True)
            return
        if attrs is None:
            zarr.open_group(zarr_target(path), mode="a", zarr_format=3)
        _write.write_node(path, node, dataset, encoding=encoding, overwrite=mode == "w")


def _source(path):
    """``(path or URL, storage_options)`` as pandas takes them."""
    if isinstance(path, Path):
        return path, None
    return path.url, path.storage_options or None


def _zarr_threads_like_dask():
    """Give Zarr's thread pool as many threads as dask has workers, unless it was configured.

    Each dask task waits for its own chunk, so Zarr threads beyond dask's only add threads, each
    keeping the chunk buffers it freed in its own malloc arena: with asyncio's default pool (CPU
    count + 4 threads) a LINCS-scale normalize from node to node peaked about 35 MB higher on 2
    CPUs. Zarr creates its pool once per process, so this applies from the first node read or
    written.
    """
    import zarr

    from cpzarr.cluster import local_threads

    if zarr.config.get("threading.max_workers", None) is None:
        zarr.config.set({"threading.max_workers": local_threads()})


def _profile_compressor():
    """LZ4 inside Blosc with byte shuffle: profiles are dense floats that no codec shrinks much
    (zstd keeps about 70 % of float64 profiles, this about 90 %), and zstd's encoder made the
    write several times slower than the aggregation that produced them."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _missing(value):
    return value is None or (isinstance(value, float) and np.isnan(value))


def _kind(path):
    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".csv") or name.endswith(".csv.gz") or name.endswith(".tsv"):
        return "csv"
    if name.endswith(".h5ad"):
        return "h5ad"
    return "zarr"


def _check_profiles(profiles):
    if not isinstance(profiles, xr.DataArray):
        raise InputError(f"expected a profiles DataArray, got {type(profiles).__name__}")
    if set(profiles.dims) != {"sample", "feature"} or profiles.ndim != 2:
        raise InputError(f"profiles must have dims ('sample', 'feature'), got {profiles.dims}")
