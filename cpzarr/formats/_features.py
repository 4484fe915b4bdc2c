"""The result every ``features`` reader returns: a Dataset laid out as a ``/features/<name>`` node."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["CELL_COORDS", "features_dataset"]

#: Coordinates along ``cell`` of every imported features Dataset.
CELL_COORDS = ("plate", "well", "site", "x", "y")


def features_dataset(table, values, names, attrs):
    """Features Dataset sorted by plate, well, site, then y, x.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per cell: plate, well, site, x, y (and object_id).
    values : ndarray (cell, feature)
    names : sequence of str
        Feature names.
    attrs : dict
        ``source`` and ``importer``.

    Returns
    -------
    Dataset (cell, feature)
        ``features`` float32 with the cell coordinates along ``cell``.
    """
    table = table.reset_index(drop=True)
    order = np.lexsort(
        (
            table["x"].to_numpy(),
            table["y"].to_numpy(),
            table["site"].to_numpy(),
            table["well"].to_numpy(str),
            table["plate"].to_numpy(str),
        )
    )
    table = table.iloc[order].reset_index(drop=True)
    coords = {
        "plate": ("cell", table["plate"].astype(str).to_numpy(object)),
        "well": ("cell", table["well"].astype(str).to_numpy(object)),
        "site": ("cell", table["site"].to_numpy(np.int64)),
        "x": ("cell", table["x"].to_numpy(np.float64)),
        "y": ("cell", table["y"].to_numpy(np.float64)),
        "feature": np.asarray(names, dtype=object),
    }
    if "object_id" in table:
        coords["object_id"] = ("cell", table["object_id"].to_numpy(np.int64))
    features = np.ascontiguousarray(values[order], dtype=np.float32)
    return xr.Dataset({"features": (("cell", "feature"), features)}, coords=coords, attrs=attrs)
