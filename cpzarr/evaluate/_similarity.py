"""Similarity between profiles, computed one block of queries at a time.

Every metric of :mod:`cpzarr.evaluate` needs, for each query profile, its similarity to all other
profiles. Rows are standardized once (centred for Pearson, then scaled to unit norm), so one block
of similarities is a plain matrix product ``Z[block] @ Z.T``; a block of ``block_size`` queries
costs ``block_size * n`` numbers, never ``n * n``.
"""

import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.query import query_mask

METHODS = ("pearson", "cosine")


def _check_profiles(profiles):
    """Raise InputError unless ``profiles`` is a finite DataArray (sample, feature)."""
    if not isinstance(profiles, xr.DataArray):
        raise InputError(
            f"profiles must be an xarray.DataArray (sample, feature), got {type(profiles).__name__}; "
            "convert a Pycytominer frame with cpzarr.profiles.from_pycytominer"
        )
    if set(profiles.dims) != {"sample", "feature"}:
        raise InputError(f"profiles must have dims (sample, feature), got {profiles.dims}")
    profiles = profiles.transpose("sample", "feature")
    values = np.asarray(profiles.values)
    if values.dtype.kind not in "fiu":
        raise InputError(f"profiles must be numeric, got dtype {values.dtype}")
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        problems = [
            f"sample {_sample_label(profiles, r)}, feature {profiles['feature'].values[c]!s}"
            if "feature" in profiles.coords
            else f"sample {_sample_label(profiles, r)}, feature {c}"
            for r, c in zip(rows[:50], cols[:50])
        ]
        raise InputError(
            f"profiles hold {bad.sum()} NaN/inf values; drop or impute them first "
            "(cpzarr.profiles feature selection drops NaN columns)",
            problems,
        )
    return profiles, values


def _sample_label(profiles, row):
    """A human-readable name for sample ``row``: its plate/well when known, else its index."""
    parts = [
        f"{name}={profiles[name].values[row]}"
        for name in ("plate", "well")
        if name in profiles.coords and profiles[name].dims == ("sample",)
    ]
    return f"{row} ({', '.join(parts)})" if parts else str(row)


_PREFIX = "Metadata_"


def _sample_coords(profiles):
    """Names of the coordinates along ``sample``."""
    return [n for n, c in profiles.coords.items() if c.dims == ("sample",)]


def resolve_name(profiles, name):
    """The sample coordinate ``name`` refers to, accepting Pycytominer's ``Metadata_`` prefix.

    ``"Metadata_moa"`` names the coordinate ``moa`` and ``"moa"`` names ``Metadata_moa`` when only
    that one exists; an exact match always wins. None when neither exists.

    Examples
    --------
    >>> resolve_name(profiles, "Metadata_moa")  # doctest: +SKIP
    'moa'
    """
    known = _sample_coords(profiles)
    for candidate in (name, name.removeprefix(_PREFIX), _PREFIX + name):
        if candidate in known:
            return candidate
    return None


def _group_names(profiles, groups, what="groups", allow_empty=False):
    """Normalize ``groups`` to a list of sample-coordinate names, checking each exists.

    ``Metadata_``-prefixed names are accepted for un-prefixed coordinates and vice versa.
    """
    names = [] if groups is None else [groups] if isinstance(groups, str) else list(groups)
    if not names and not allow_empty:
        raise InputError(f"{what} must name at least one sample coordinate (e.g. 'moa')")
    resolved = [resolve_name(profiles, str(n)) for n in names]
    missing = [n for n, r in zip(names, resolved) if r is None]
    if missing:
        known = sorted(_sample_coords(profiles))
        raise InputError(
            f"{what} name coordinates that profiles lack along 'sample'; known: {known}", missing
        )
    return resolved


def _group_codes(profiles, names):
    """Integer code per sample; equal codes = equal metadata compared as strings.

    Strings, as Cytominer-eval compares metadata, so that missing values (NaN) match each other.
    """
    keys = pd.Series(
        ["\x1f".join(t) for t in zip(*[profiles[n].values.astype(str) for n in names])]
    )
    codes, _ = pd.factorize(keys)
    return codes.astype(np.int64)


def _sample_mask(profiles, mask, what="mask"):
    """Boolean numpy array over samples from None, a boolean array or a :mod:`cpzarr.query` string."""
    n = profiles.sizes["sample"]
    if mask is None:
        return np.ones(n, dtype=bool)
    if isinstance(mask, str):
        return query_mask(mask, sample_table(profiles), what=what)
    keep = np.asarray(mask.values if isinstance(mask, xr.DataArray) else mask)
    if keep.dtype != bool or keep.shape != (n,):
        raise InputError(f"{what} must be a boolean array of length {n} (one per sample)")
    return keep


def _query_table(profiles):
    """sample_table plus each coordinate's other spelling (``Metadata_moa`` for ``moa`` and the
    reverse), so that queries may use Pycytominer's names."""
    frame = sample_table(profiles)
    for name in list(frame.columns):
        other = name.removeprefix(_PREFIX) if name.startswith(_PREFIX) else _PREFIX + name
        if other not in frame.columns:
            frame[other] = frame[name]
    return frame


def sample_table(profiles):
    """The sample coordinates of ``profiles`` as a pandas DataFrame, one row per sample.

    Parameters
    ----------
    profiles : DataArray (sample, feature)

    Returns
    -------
    pandas.DataFrame
        One column per coordinate along ``sample``, in sample order, with a fresh RangeIndex.

    Examples
    --------
    >>> sample_table(profiles).head()  # doctest: +SKIP
    """
    columns = {
        name: coord.values for name, coord in profiles.coords.items() if coord.dims == ("sample",)
    }
    return pd.DataFrame(columns, index=pd.RangeIndex(profiles.sizes["sample"]))


def _standardize(values, method, dtype, rows=None, chunk=4096):
    """Rows ``values[rows]`` scaled so that a dot product is the similarity.

    Pearson centres each row first. Works in float64 on chunks of rows and stores ``dtype``, so
    memory is the output plus one chunk, whatever the input's dtype.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    rows = np.arange(values.shape[0]) if rows is None else np.asarray(rows)
    z = np.empty((rows.size, values.shape[1]), dtype=dtype)
    flat = []
    for start in range(0, rows.size, chunk):
        x = values[rows[start : start + chunk]].astype(np.float64)
        if method == "pearson":
            x -= x.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(x, axis=1)
        flat.extend(rows[start + np.flatnonzero(norms == 0)])
        with np.errstate(invalid="ignore", divide="ignore"):
            z[start : start + chunk] = x / norms[:, None]
    if flat:
        raise InputError(
            f"{len(flat)} profiles are constant (zero {'variance' if method == 'pearson' else 'norm'}), "
            "so their similarity is undefined; drop them",
            [f"sample {i}" for i in flat],
        )
    return z


# Default block: about this many similarities at once (128 MiB in float64), whatever n is.
_BLOCK_CELLS = 2**24


def _block_rows(block_size, n):
    """Queries per block: ``block_size``, or as many as fit _BLOCK_CELLS similarities."""
    if block_size is None:
        return max(1, _BLOCK_CELLS // max(n, 1))
    if int(block_size) != block_size or block_size < 1:
        raise InputError(f"block_size must be a positive integer or None, got {block_size!r}")
    return int(block_size)


# Ranking grid for float64 similarities: 2**-40 (about 1e-12). Mathematically equal similarities
# (duplicate profiles) come out of BLAS a few ulp apart depending on the block shape; on this grid
# they tie, so the tie rule and not the block size decides their order.
_GRID = 2.0**40


def _on_grid(sims):
    """Round float64 similarities in place onto the ranking grid; float32 is left as computed."""
    if sims.dtype == np.float64:
        np.multiply(sims, _GRID, out=sims)
        np.round(sims, out=sims)
        np.divide(sims, _GRID, out=sims)
    return sims


def _iter_blocks(n_queries, block_size, progress, desc):
    """Yield (start, stop) of query blocks, with a tqdm bar when ``progress``."""
    if block_size < 1:
        raise InputError(f"block_size must be a positive integer, got {block_size}")
    starts = range(0, n_queries, block_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="block")
    for start in starts:
        yield start, min(start + block_size, n_queries)


# Blocks run two at a time: sorting, binning and searching are single-threaded in numpy (and
# release the GIL), so two threads keep both cores of a small machine busy between BLAS calls.
_WORKERS = 2


def _map_blocks(work, n_items, block_size, progress, desc):
    """``work(start, stop)`` over consecutive blocks, two at a time, results in block order."""
    from concurrent.futures import ThreadPoolExecutor

    blocks = list(_iter_blocks(n_items, block_size, False, desc))
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        # At most _WORKERS + 1 blocks in flight keeps memory bounded.
        pending = []
        results = range(len(blocks))
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, desc=desc, unit="block")
        for i in results:
            while len(pending) <= _WORKERS and len(pending) + i < len(blocks):
                pending.append(pool.submit(work, *blocks[i + len(pending)]))
            yield pending.pop(0).result()


def similarity(profiles, query=None, method="pearson", dtype="float64"):
    """Similarity of query profiles to every profile.

    This materialises a (query, sample) matrix: use it for a few hundred queries, or to look at a
    neighbourhood. The metrics of :mod:`cpzarr.evaluate` compute the same numbers block by block.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
        Profiles, metadata as coordinates along ``sample``.
    query : None, boolean array (sample,) or str, optional
        Which samples are queries: all (default), a boolean mask, or a :mod:`cpzarr.query` string on the sample
        coordinates such as ``"control != 'negcon'"``.
    method : {"pearson", "cosine"}
        Pearson correlation between profiles (default) or cosine similarity.
    dtype : {"float64", "float32"}
        Precision of the matrix product.

    Returns
    -------
    DataArray (query, sample)
        Similarities; the queries' sample coordinates are repeated along ``query`` with a
        ``query_`` prefix, and ``query_index`` is their position along ``sample``.

    Examples
    --------
    >>> s = similarity(profiles, query="moa == 'tubulin inhibitor'")  # doctest: +SKIP
    """
    profiles, values = _check_profiles(profiles)
    z = _standardize(values, method, np.dtype(dtype))
    rows = np.flatnonzero(_sample_mask(profiles, query, "query"))
    sims = z[rows] @ z.T
    out = xr.DataArray(sims, dims=("query", "sample"), name="similarity")
    out = out.assign_coords(
        {
            name: ("sample", coord.values)
            for name, coord in profiles.coords.items()
            if coord.dims == ("sample",)
        }
    )
    out = out.assign_coords(
        {
            f"query_{name}": ("query", coord.values[rows])
            for name, coord in profiles.coords.items()
            if coord.dims == ("sample",)
        }
        | {"query_index": ("query", rows)}
    )
    return out
