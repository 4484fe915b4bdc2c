"""annotate: join platemap and compound (MOA) tables onto samples as coordinates."""

import warnings

import numpy as np
import pandas as pd

from cpzarr.errors import InputError
from cpzarr.profiles._io import PREFIX
from cpzarr.profiles._samples import check_profiles, metadata_frame, record_step


def annotate(
    profiles,
    platemap=None,
    join_on=(("well", "well_position"),),
    external_metadata=None,
    external_join_on=("broad_sample", "broad_sample"),
    composite_columns=("moa", "target"),
    add_control=True,
    separator="|",
):
    """Add platemap and external (e.g. MOA) columns to the samples, LINCS-style.

    Parameters
    ----------
    profiles : DataArray (sample, feature)
    platemap : pandas.DataFrame, optional
        One row per well (LINCS platemap: ``plate_map_name``, ``well_position``,
        ``broad_sample``, ``mmoles_per_liter``, ...). ``Metadata_`` prefixes are stripped.
    join_on : sequence of (coordinate, platemap column) pairs
        Keys matching samples to platemap rows, default the well. Add
        ``("plate_map_name", "plate_map_name")`` when one frame holds several maps.
    external_metadata : pandas.DataFrame, optional
        Compound annotations (e.g. the repurposing MOA map), joined after the platemap.
    external_join_on : (coordinate, column)
        Key of ``external_metadata``.
    composite_columns : sequence of str
        External columns made into one composite label per compound: all values of the
        compound's rows, split on ``separator``, de-duplicated, sorted and joined, so ``b|a`` and
        two rows ``a`` and ``b`` give the same label ``a|b``.
    add_control : bool, default True
        When no ``control`` coordinate exists, add one: ``negcon`` where ``broad_sample`` is
        missing, empty or ``DMSO`` (LINCS DMSO wells), ``trt`` elsewhere.
    separator : str, default "|"

    Returns
    -------
    profiles : DataArray (sample, feature)
        The same data with the new coordinates (samples without a match get missing values
        and a warning names them).

    Examples
    --------
    >>> import xarray as xr
    >>> p = xr.DataArray(np.zeros((2, 1)), dims=("sample", "feature"),
    ...                  coords={"well": ("sample", ["A01", "A02"])})
    >>> pm = pd.DataFrame({"well_position": ["A01", "A02"], "broad_sample": [np.nan, "BRD-1"]})
    >>> annotate(p, pm).control.values.tolist()
    ['negcon', 'trt']
    """
    p = check_profiles(profiles)
    meta = metadata_frame(p)
    added = {}
    if platemap is not None:
        pairs = [tuple(pair) for pair in join_on]
        added.update(_join(meta, _strip(platemap), pairs, "platemap", composite=(), separator=separator))
    if external_metadata is not None:
        current = meta.assign(**added)
        added.update(_join(current, _strip(external_metadata), [tuple(external_join_on)], "external metadata",
                           composite=composite_columns, separator=separator))
    known = {**{c: meta[c].to_numpy() for c in meta.columns}, **added}
    if add_control and "control" not in known and "broad_sample" in known:
        sample = pd.Series(known["broad_sample"], dtype=object)
        negcon = sample.isna() | sample.astype(str).str.strip().isin(["", "DMSO", "nan"])
        added["control"] = np.where(negcon, "negcon", "trt").astype(object)
    out = p.assign_coords({name: ("sample", values) for name, values in added.items()})
    record_step(out, "annotate", {"join_on": [list(pair) for pair in join_on], "added": sorted(added)})
    return out


def _strip(table):
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"annotation tables must be pandas DataFrames, got {type(table).__name__}")
    return table.rename(columns=lambda c: c[len(PREFIX):] if str(c).startswith(PREFIX) else str(c))


def _join(meta, table, pairs, what, composite, separator):
    missing = [c for c, _ in pairs if c not in meta.columns] + [t for _, t in pairs if t not in table.columns]
    if missing:
        raise InputError(f"{what} join columns not found (samples have {list(meta.columns)}, "
                         f"{what} has {list(table.columns)})", missing)
    keys = [t for _, t in pairs]
    if composite:
        table = _composite(table, keys, [c for c in composite if c in table.columns], separator)
    duplicated = table[table.duplicated(keys, keep=False)]
    if len(duplicated):
        raise InputError(f"{what} has several rows for one key {keys}",
                         [", ".join(map(str, row)) for row in duplicated[keys].drop_duplicates().to_numpy()])
    new = [c for c in table.columns if c not in keys]
    clash = [c for c in new if c in meta.columns]
    if clash:
        raise InputError(f"{what} columns already exist as coordinates; drop or rename them first", clash)
    left = meta[[c for c, _ in pairs]].astype(str).set_axis(keys, axis=1)
    right = table.assign(**{k: table[k].astype(str) for k in keys})
    joined = left.merge(right, on=keys, how="left", indicator=True)
    # Samples without a key (DMSO wells have no broad_sample) are expected to stay unannotated.
    has_key = meta[[c for c, _ in pairs]].notna().all(axis=1).to_numpy()
    unmatched = (joined["_merge"] == "left_only").to_numpy() & has_key
    if unmatched.any():
        shown = left[unmatched].drop_duplicates().astype(str).agg("/".join, axis=1).tolist()
        warnings.warn(f"{int(unmatched.sum())} samples have no {what} row: {shown[:20]}", UserWarning, stacklevel=3)
    return {c: joined[c].to_numpy() for c in new}


def _composite(table, keys, columns, separator):
    def label(values):
        parts = {part.strip() for v in values.dropna() for part in str(v).split(separator) if part.strip()}
        return separator.join(sorted(parts)) if parts else np.nan

    others = [c for c in table.columns if c not in keys and c not in columns]
    grouped = table.groupby(keys, dropna=False, sort=False)
    result = grouped[others].first() if others else grouped.size().to_frame().drop(columns=0)
    for column in columns:
        result[column] = grouped[column].agg(label)
    return result.reset_index()[list(table.columns)]
