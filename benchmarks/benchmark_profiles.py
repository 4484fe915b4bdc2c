"""Benchmarks of cpzarr.profiles side by side with Pycytominer on the same synthetic data.

Every class is parametrized by ``engine`` ("cpzarr", "cpzarr-store", "pycytominer") and by
``scale``: "lincs" is the LINCS evaluation subset (8,818 wells × 6,400 float32 features, 136
plates, 24 DMSO wells per plate, 1,144 compounds × ≤5 replicates), "quarter" a quarter of its
plates and compounds for quick runs. The ratio of the engines' figures in one run is the result
to read. Pycytominer at "lincs" scale takes minutes per call (see the issue's figures), hence
``number = repeat = 1`` and long timeouts.

Each engine holds its input as it would in use, and nothing more: cpzarr a float32 dask array
(one in-memory block per 1,024 wells, the profiles as read from a store node), Pycytominer a
pandas frame (metadata columns, then one float32 block of features, as read from Parquet). Both
are filled block by block from a file written once by ``setup_cache``, so neither process ever
held a second copy before the measured call (``peakmem_`` is the peak of the whole process).
Results are held in memory as the peer's are: cpzarr's lazy results are computed into one
preallocated array (``_hold``).

"cpzarr-store" is cpzarr as a run uses it, out of core: the measured call reads the profiles
lazily from a store node (``read_profiles``; float32, 128 wells (3.3 MB) per chunk, written once
by ``setup_cache``) and writes the result to another node (``write_profiles``), so neither the
input nor the result is ever whole in memory. Chunks of a few MB, because reading or writing a
Zarr chunk holds about four copies of it at once (node-to-node normalize peaked at 292-304 MB
with 256-well chunks, 260-262 MB with 128, at 0.5-3 s more).

``setup`` also runs each engine once on a few wells (read from files that ``setup_cache`` wrote,
so the benchmark process never imports what only the synthetic generator needs), so that imports
done on first use (dask loads ``distributed`` on its first rechunk) are not timed.
"""

import pickle
import shutil
import tempfile
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.profiles import (
    consensus, feature_select, normalize, read_profiles, spherize, to_pycytominer, write_profiles,
)

SCALES = {
    "lincs": {},
    "quarter": {"n_plates": 34, "n_compounds": 286, "n_moas": 60, "n_samples": None},
}
# The warm-up's few wells (16 features: rank-deficient by design).
TOY = {"n_plates": 4, "n_batches": 2, "n_negcon": 4, "n_compounds": 8, "n_replicates": 3, "n_moas": 4,
       "n_features": 16, "n_samples": None}
NODE = "profiles/bench/well"
NEGCON = 'control == "negcon"'
PEER_NEGCON = "Metadata_control == 'negcon'"
CHUNK = 1024
STORE_CHUNK = 128


def _write(folder, scale, options):
    from cpzarr.synthetic import make_profiles  # imported here: scipy.ndimage comes with it

    profiles = make_profiles(**options)
    np.save(folder / f"{scale}.npy", profiles.values)
    coords = {name: (c.dims, c.values) for name, c in profiles.coords.items()}
    with open(folder / f"{scale}.pickle", "wb") as f:
        pickle.dump((coords, dict(profiles.attrs)), f)
    write_profiles(profiles.chunk({"sample": STORE_CHUNK}), folder / f"{scale}.zarr", node=NODE)


def _row_blocks(folder, scale):
    """The profile values as blocks of CHUNK rows, each read from the file into its own array."""
    path = folder / f"{scale}.npy"
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        for start in range(0, shape[0], CHUNK):
            rows = min(CHUNK, shape[0] - start)
            yield start, np.fromfile(f, dtype=dtype, count=rows * shape[1]).reshape(rows, shape[1])


def _load(folder, scale, engine):
    folder = Path(folder)
    if engine == "cpzarr-store":
        return folder / f"{scale}.zarr"
    with open(folder / f"{scale}.pickle", "rb") as f:
        coords, attrs = pickle.load(f)
    n, d = len(coords["plate"][1]), len(coords["feature"][1])
    if engine == "cpzarr":
        blocks = {("profiles-input", i, 0): block for i, (_, block) in enumerate(_row_blocks(folder, scale))}
        chunks = (tuple(b.shape[0] for b in blocks.values()), (d,))
        data = da.Array(blocks, "profiles-input", chunks, dtype=np.float32)
        return xr.DataArray(data, dims=("sample", "feature"), coords=coords, name="profiles", attrs=attrs)
    features = [str(f) for f in coords["feature"][1]]
    columns = np.empty((d, n), dtype=np.float32)  # pandas' own layout: one row per feature
    for start, block in _row_blocks(folder, scale):
        columns[:, start:start + len(block)] = block.T
    frame = pd.DataFrame(columns.T, columns=features, copy=False)
    meta = to_pycytominer(xr.DataArray(np.empty((n, 0)), dims=("sample", "feature"), coords={
        k: v for k, v in coords.items() if k != "feature"}))
    for i, column in enumerate(meta.columns):
        frame.insert(i, column, meta[column].to_numpy())
    return frame


def _hold(result):
    """A lazy result computed into one array (dask's compute would also keep every block until
    it concatenates them, doubling the result's memory)."""
    out = np.empty(result.shape, dtype=result.dtype)
    da.store(result.data, out, lock=False)
    return out


def _store_call(store, operation, output):
    """One out-of-core call: the profiles node of ``store`` through ``operation`` into ``output``."""
    write_profiles(operation(read_profiles(store, node=NODE)), output, node=NODE)


def _chain(profiles):
    z = normalize(profiles, method="mad_robustize", samples=NEGCON)
    w = spherize(z, method="ZCA", samples=NEGCON)
    return consensus(w, replicate_columns=["compound", "dose"], operation="modz")


def _warm_up(folder, engine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 16-feature toy is rank-deficient by design
        _run_small(folder, engine)


def _run_small(folder, engine):
    small = _load(folder, "toy", "cpzarr" if engine == "cpzarr-store" else engine)
    if engine == "cpzarr":
        _chain(small).compute()
        feature_select(small, operation="correlation_threshold")
    elif engine == "cpzarr-store":
        output = Path(tempfile.mkdtemp())
        try:
            _store_call(_load(folder, "toy", engine), _chain, output / "toy.zarr")
            _store_call(_load(folder, "toy", engine), lambda p: consensus(p, operation="median"),
                        output / "toy.zarr")
        finally:
            shutil.rmtree(output)
    else:
        from pycytominer import consensus as peer_consensus
        from pycytominer import feature_select as peer_select
        from pycytominer import normalize as peer

        frame = small
        features = [c for c in frame.columns if not c.startswith("Metadata_")]
        z = peer(frame, features=features, samples=PEER_NEGCON, method="mad_robustize")
        peer_consensus(z, replicate_columns=["Metadata_compound", "Metadata_dose"], operation="modz",
                       features=features)
        peer_select(frame, features=features, operation="correlation_threshold")


class _Peer:
    params = (["cpzarr", "cpzarr-store", "pycytominer"], list(SCALES))
    param_names = ["engine", "scale"]
    number = 1
    repeat = 1
    # One call, the first after setup: asv's default warm-up would time a second call (after the
    # first faulted in its memory) and run Pycytominer's slowest calls twice.
    warmup_time = 0
    timeout = 1800

    def setup_cache(self):
        folder = Path.cwd()  # asv runs setup_cache in a folder it deletes afterwards
        for scale, options in SCALES.items():
            _write(folder, scale, options)
        _write(folder, "toy", TOY)
        return str(folder)

    def setup(self, folder, engine, scale):
        if engine == "pycytominer":
            import pycytominer  # noqa: F401  (skip the benchmark when it is absent)
        _warm_up(folder, engine)
        if engine == "cpzarr":
            self.profiles = _load(folder, scale, engine)
        elif engine == "cpzarr-store":
            self.store = _load(folder, scale, engine)
            self.output = Path(tempfile.mkdtemp())
        else:
            self.frame = _load(folder, scale, engine)
            self.features = [c for c in self.frame.columns if not c.startswith("Metadata_")]
            self.meta = [c for c in self.frame.columns if c.startswith("Metadata_")]

    def teardown(self, folder, engine, scale):
        if engine == "cpzarr-store":
            shutil.rmtree(self.output, ignore_errors=True)

    def _store(self, operation):
        _store_call(self.store, operation, self.output / "result.zarr")


class Normalize(_Peer):
    """mad_robustize fitted on DMSO per plate (Pycytominer: one call per plate, as LINCS)."""

    @staticmethod
    def _cpzarr(profiles):
        return normalize(profiles, method="mad_robustize", by="plate", samples=NEGCON)

    def _run(self, engine):
        if engine == "cpzarr":
            _hold(self._cpzarr(self.profiles))
        elif engine == "cpzarr-store":
            self._store(self._cpzarr)
        else:
            from pycytominer import normalize as peer

            pd.concat([
                peer(plate, features=self.features, meta_features=self.meta, samples=PEER_NEGCON,
                     method="mad_robustize")
                for _, plate in self.frame.groupby("Metadata_plate")
            ])

    def time_mad_robustize_per_plate(self, folder, engine, scale):
        self._run(engine)

    def peakmem_mad_robustize_per_plate(self, folder, engine, scale):
        self._run(engine)


class Spherize(_Peer):
    """ZCA fitted on all DMSO wells at once, applied to all wells."""

    @staticmethod
    def _cpzarr(profiles):
        return spherize(profiles, method="ZCA", samples=NEGCON)

    def _run(self, engine):
        if engine == "cpzarr":
            _hold(self._cpzarr(self.profiles))
        elif engine == "cpzarr-store":
            self._store(self._cpzarr)
        else:
            from pycytominer import normalize as peer

            peer(self.frame, features=self.features, meta_features=self.meta, samples=PEER_NEGCON,
                 method="spherize", spherize_method="ZCA")

    def time_zca(self, folder, engine, scale):
        self._run(engine)

    def peakmem_zca(self, folder, engine, scale):
        self._run(engine)


class Consensus(_Peer):
    """Replicates → compound consensus (compound + dose)."""

    def _run(self, engine, operation):
        def run(profiles):
            return consensus(profiles, replicate_columns=["compound", "dose"], operation=operation)

        if engine == "cpzarr":
            run(self.profiles).compute()
        elif engine == "cpzarr-store":
            self._store(run)
        else:
            from pycytominer import consensus as peer

            peer(self.frame, replicate_columns=["Metadata_compound", "Metadata_dose"], operation=operation,
                 features=self.features)

    def time_modz(self, folder, engine, scale):
        self._run(engine, "modz")

    def peakmem_modz(self, folder, engine, scale):
        self._run(engine, "modz")

    def time_median(self, folder, engine, scale):
        self._run(engine, "median")

    def peakmem_median(self, folder, engine, scale):
        self._run(engine, "median")


class CorrelationThreshold(_Peer):
    """feature_select correlation_threshold (0.9, Pearson) over all wells."""

    @staticmethod
    def _cpzarr(profiles):
        return feature_select(profiles, operation="correlation_threshold")

    def _run(self, engine):
        if engine == "cpzarr":
            self._cpzarr(self.profiles)
        elif engine == "cpzarr-store":
            self._store(self._cpzarr)
        else:
            from pycytominer import feature_select as peer

            peer(self.frame, features=self.features, operation="correlation_threshold")

    def time_correlation_threshold(self, folder, engine, scale):
        self._run(engine)

    def peakmem_correlation_threshold(self, folder, engine, scale):
        self._run(engine)


class Chain(_Peer):
    """Per-plate mad_robustize → spherize ZCA on DMSO → MODZ consensus, end to end."""

    def _run(self, engine):
        if engine == "cpzarr":
            _chain(self.profiles).compute()
        elif engine == "cpzarr-store":
            self._store(_chain)
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

    def time_chain(self, folder, engine, scale):
        self._run(engine)

    def peakmem_chain(self, folder, engine, scale):
        self._run(engine)
