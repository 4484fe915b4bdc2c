"""Benchmarks of cpzarr.profiles side by side with Pycytominer on the same synthetic data.

Every class is parametrized by ``engine`` ("cpzarr", "pycytominer") and by ``scale``: "lincs" is
the LINCS evaluation subset (8,818 wells × 6,400 float32 features, 136 plates, 24 DMSO wells per
plate, 1,144 compounds × ≤5 replicates), "quarter" a quarter of its plates and compounds for
quick runs. The ratio of the two engines' figures in one run is the result to read. Pycytominer
at "lincs" scale takes minutes per call (see the issue's figures), hence ``number = repeat = 1``
and long timeouts.
"""

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.profiles import (
    aggregate, consensus, feature_select, normalize, spherize, to_pycytominer,
)
from cpzarr.synthetic import make_profiles

SCALES = {
    "lincs": {},
    "quarter": {"n_plates": 34, "n_compounds": 286, "n_moas": 60, "n_samples": None},
}
NEGCON = 'control == "negcon"'
PEER_NEGCON = "Metadata_control == 'negcon'"


def _profiles(scale):
    return make_profiles(**SCALES[scale])


class _Peer:
    params = (["cpzarr", "pycytominer"], list(SCALES))
    param_names = ["engine", "scale"]
    number = 1
    repeat = 1
    timeout = 1200

    def setup(self, engine, scale):
        self.profiles = _profiles(scale)
        if engine == "pycytominer":
            import pycytominer  # noqa: F401  (skip the benchmark when it is absent)

            self.frame = to_pycytominer(self.profiles)
            self.features = [str(f) for f in self.profiles["feature"].values]
            self.meta = [c for c in self.frame.columns if c.startswith("Metadata_")]


class Normalize(_Peer):
    """mad_robustize fitted on DMSO per plate (Pycytominer: one call per plate, as LINCS)."""

    def time_mad_robustize_per_plate(self, engine, scale):
        if engine == "cpzarr":
            normalize(self.profiles.chunk({"sample": 1024}), method="mad_robustize", by="plate",
                      samples=NEGCON).compute()
        else:
            from pycytominer import normalize as peer

            pd.concat([
                peer(plate, features=self.features, meta_features=self.meta, samples=PEER_NEGCON,
                     method="mad_robustize")
                for _, plate in self.frame.groupby("Metadata_plate")
            ])


class Spherize(_Peer):
    """ZCA fitted on all DMSO wells at once, applied to all wells."""

    def _run(self, engine):
        if engine == "cpzarr":
            spherize(self.profiles.chunk({"sample": 1024}), method="ZCA", samples=NEGCON).compute()
        else:
            from pycytominer import normalize as peer

            peer(self.frame, features=self.features, meta_features=self.meta, samples=PEER_NEGCON,
                 method="spherize", spherize_method="ZCA")

    def time_zca(self, engine, scale):
        self._run(engine)

    def peakmem_zca(self, engine, scale):
        self._run(engine)


class Consensus(_Peer):
    """Replicates → compound consensus (compound + dose)."""

    def _run(self, engine, operation):
        if engine == "cpzarr":
            consensus(self.profiles.chunk({"sample": 1024}), replicate_columns=["compound", "dose"],
                      operation=operation).compute()
        else:
            from pycytominer import consensus as peer

            peer(self.frame, replicate_columns=["Metadata_compound", "Metadata_dose"], operation=operation,
                 features=self.features)

    def time_modz(self, engine, scale):
        self._run(engine, "modz")

    def time_median(self, engine, scale):
        self._run(engine, "median")


class CorrelationThreshold(_Peer):
    """feature_select correlation_threshold (0.9, Pearson) over all wells."""

    def _run(self, engine):
        if engine == "cpzarr":
            feature_select(self.profiles.chunk({"sample": 1024}), operation="correlation_threshold")
        else:
            from pycytominer import feature_select as peer

            peer(self.frame, features=self.features, operation="correlation_threshold")

    def time_correlation_threshold(self, engine, scale):
        self._run(engine)

    def peakmem_correlation_threshold(self, engine, scale):
        self._run(engine)


class Chain(_Peer):
    """Per-plate mad_robustize → spherize ZCA on DMSO → MODZ consensus, end to end."""

    def _run(self, engine):
        if engine == "cpzarr":
            z = normalize(self.profiles.chunk({"sample": 1024}), method="mad_robustize", samples=NEGCON)
            w = spherize(z, method="ZCA", samples=NEGCON)
            consensus(w, replicate_columns=["compound", "dose"], operation="modz").compute()
        else:
            from pycytominer import consensus as peer_consensus
            from pycytominer import normalize as peer

            z = pd.concat([
                peer(plate, features=self.features, meta_features=self.meta, samples=PEER_NEGCON,
                     method="mad_robustize")
                for _, plate in self.frame.groupby("Metadata_plate")
            ])
            w = peer(z, features=self.features, meta_features=self.meta, samples=PEER_NEGCON,
                     method="spherize", spherize_method="ZCA")
            peer_consensus(w, replicate_columns=["Metadata_compound", "Metadata_dose"], operation="modz",
                           features=self.features)

    def time_chain(self, engine, scale):
        self._run(engine)

    def peakmem_chain(self, engine, scale):
        self._run(engine)


def _single_cells(n_cells, n_features, cells_per_well, chunk=4096):
    """Lazily generated single-cell features sorted by plate and well (never all in memory)."""
    n_wells = n_cells // cells_per_well
    well_index = np.repeat(np.arange(n_wells), cells_per_well)
    plates = np.array([f"P{i:03d}" for i in range(n_wells // 384 + 1)], dtype=object)
    wells = np.array([f"W{i:03d}" for i in range(384)], dtype=object)
    x = da.random.default_rng(0).standard_normal((len(well_index), n_features), chunks=(chunk, n_features),
                                                 dtype=np.float32)
    return xr.DataArray(x, dims=("cell", "feature"), coords={
        "plate": ("cell", plates[well_index // 384]), "well": ("cell", wells[well_index % 384])})

