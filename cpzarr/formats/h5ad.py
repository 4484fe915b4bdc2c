"""AnnData ``.h5ad`` files of profiles: the single-cell ecosystem's (scanpy, scverse) table format.

A profile table becomes an AnnData object with ``X`` the (sample × feature) values, ``obs`` the
metadata under their Pycytominer names (``Metadata_Plate``, ``Metadata_Well`` …) and ``var`` indexed
by the feature names; :func:`read_h5ad` turns such a file back into a Pycytominer frame. Needs the
optional ``anndata`` package.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cpzarr.errors import InputError

__all__ = ["write_h5ad", "read_h5ad"]


def _anndata():
    try:
        import anndata
    except ImportError:
        raise InputError("writing or reading .h5ad needs the anndata package: pip install anndata") from None
    return anndata


def write_h5ad(frame: pd.DataFrame, path, features) -> None:
    """Write a Pycytominer frame as ``.h5ad``: ``features`` columns to ``X``, the rest to ``obs``.

    Parameters
    ----------
    frame : DataFrame
        One row per sample (a well or a cell).
    path : str or Path
        The ``.h5ad`` file.
    features : list of str
        The feature columns, in order.

    Examples
    --------
    >>> write_h5ad(to_pycytominer(profiles), "profiles.h5ad", list(profiles.feature.values))  # doctest: +SKIP
    """
    anndata = _anndata()
    features = [str(f) for f in features]
    obs = frame.drop(columns=features).reset_index(drop=True)
    obs.index = obs.index.astype(str)
    for column in obs.columns:
        if obs[column].dtype == object:  # h5ad stores text columns as strings; missing stays missing
            obs[column] = obs[column].map(lambda v: v if v is None or isinstance(v, str) or
                                          (isinstance(v, float) and np.isnan(v)) else str(v))
    values = frame[features].to_numpy()
    adata = anndata.AnnData(X=values, obs=obs, var=pd.DataFrame(index=pd.Index(features, dtype=object)))
    if frame.attrs.get("cpzarr_coords"):  # metadata column → cpzarr coordinate, for reading back
        adata.uns["cpzarr_coords"] = dict(frame.attrs["cpzarr_coords"])
    adata.write_h5ad(path)


def read_h5ad(path) -> tuple[pd.DataFrame, list]:
    """Read an ``.h5ad`` file as a Pycytominer frame (``obs`` columns, then ``X``) and its features.

    Examples
    --------
    >>> frame, features = read_h5ad("profiles.h5ad")  # doctest: +SKIP
    """
    anndata = _anndata()
    adata = anndata.read_h5ad(path)
    obs = adata.obs.reset_index(drop=True)
    for column in obs.columns:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].astype(object).where(obs[column].notna(), np.nan)
    features = [str(f) for f in adata.var_names]
    values = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X)
    frame = pd.concat([obs, pd.DataFrame(values, columns=features)], axis=1)
    if "cpzarr_coords" in adata.uns:
        frame.attrs["cpzarr_coords"] = {str(k): str(v) for k, v in adata.uns["cpzarr_coords"].items()}
    return frame, features
