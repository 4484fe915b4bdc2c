"""Benchmarks of the JUMP-recipe and batch-correction steps at LINCS-subset scale, and Harmony at 100,000 wells.

``Steps`` times each step on the LINCS evaluation subset's shape (8,818 wells × 6,400 float32
features, 136 plates in 5 batches, 24 DMSO wells per plate) held as a dask array of 1,024-well
chunks, computing the result into one preallocated array (``peakmem_`` includes the 226 MB
input and the 226 MB result). ``Harmony`` runs ``harmony`` on a 100,000-well × 50-component
embedding (``n_components=None``: the embedding is the input) in 5 batches.

Run one figure without asv (as the closing notes do)::

    python -c "from benchmarks.benchmark_recipes import run; run('tvn')"
"""

import resource
import time
import warnings

import numpy as np
import xarray as xr

STEPS = ("inverse_normal", "rank_inverse_normal", "correct_well_position", "regress_cell_count",
         "pca", "tvn", "coral", "spherize", "harmony")
NEGCON = 'control == "negcon"'
CHUNK = 1024


def _profiles(cache=None):
    """The LINCS-shaped profiles, dask-backed; with ``cache`` (a folder) generated once and read back,
    so that a process measuring a step never held the generator's temporaries."""
    import pickle
    from pathlib import Path

    if cache is not None and (Path(cache) / "lincs.npy").exists():
        values = np.load(Path(cache) / "lincs.npy")
        with open(Path(cache) / "lincs.pickle", "rb") as f:
            coords = pickle.load(f)
        p = xr.DataArray(values, dims=("sample", "feature"), coords=coords, name="profiles")
        return p.chunk({"sample": CHUNK})
    from cpzarr.synthetic import make_profiles

    p = make_profiles()
    rng = np.random.default_rng(0)
    p = p.assign_coords(cell_count=("sample", rng.integers(500, 3000, p.sizes["sample"])))
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        np.save(Path(cache) / "lincs.npy", p.values)
        with open(Path(cache) / "lincs.pickle", "wb") as f:
            pickle.dump({k: (c.dims, c.values) for k, c in p.coords.items()}, f)
    return p.chunk({"sample": CHUNK})


def _call(step, p):
    from cpzarr import profiles as pr

    if step == "inverse_normal":
        return pr.normalize(p, method="inverse_normal", by="plate", samples=NEGCON)
    if step == "rank_inverse_normal":
        return pr.normalize(p, method="rank_inverse_normal", by=None)
    if step == "correct_well_position":
        return pr.correct_well_position(p)
    if step == "regress_cell_count":
        return pr.regress_cell_count(p)
    if step == "pca":
        return pr.pca(p, n_components=50)
    if step == "tvn":
        return pr.tvn(p)
    if step == "coral":
        return pr.coral(p)
    if step == "spherize":
        return pr.spherize(p, method="ZCA-cor", samples=NEGCON)
    if step == "harmony":
        return pr.harmony(p, n_components=50)
    raise ValueError(step)


def _hold(result):
    data = result.data
    if hasattr(data, "compute"):
        import dask.array as da

        out = np.empty(result.shape, dtype=result.dtype)
        da.store(data, out, lock=False)
        return out
    return np.asarray(data)


class Steps:
    params = list(STEPS)
    param_names = ["step"]
    number = repeat = 1
    timeout = 1800

    def setup(self, step):
        warnings.simplefilter("ignore")
        self.profiles = _profiles()

    def time_step(self, step):
        _hold(_call(step, self.profiles))

    def peakmem_step(self, step):
        _hold(_call(step, self.profiles))


def _embedding(n=100_000, k=50, batches=5, seed=0):
    rng = np.random.default_rng(seed)
    batch = np.arange(n) * batches // n
    groups = rng.integers(0, 200, n)
    data = rng.standard_normal((200, k))[groups] + rng.standard_normal((batches, k))[batch] * 2
    data += rng.standard_normal((n, k)) * 0.5
    return xr.DataArray(data, dims=("sample", "feature"),
                        coords={"batch": ("sample", np.array([f"B{b}" for b in batch], dtype=object)),
                                "feature": [f"PC{i}" for i in range(1, k + 1)]})


class Harmony:
    number = repeat = 1
    timeout = 3600

    def setup(self):
        self.embedding = _embedding()

    def time_harmony_100k_wells_50_pcs(self):
        from cpzarr.profiles import harmony

        harmony(self.embedding, n_components=None)

    def peakmem_harmony_100k_wells_50_pcs(self):
        from cpzarr.profiles import harmony

        harmony(self.embedding, n_components=None)


def _current_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run(step, cache="/tmp/cpzarr-bench-recipes"):
    """Time one step (or ``"harmony_100k"``) in this process and print seconds and peak RSS.

    The input is generated once into ``cache`` and read back by later calls."""
    warnings.simplefilter("ignore")
    if step == "harmony_100k":
        from cpzarr.profiles import harmony

        data = _embedding()
        before = _current_mb()
        start = time.perf_counter()
        harmony(data, n_components=None)
    else:
        p = _profiles(cache)
        before = _current_mb()
        start = time.perf_counter()
        _hold(_call(step, p))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{step}: {seconds:.1f} s, peak RSS {peak:.0f} MB (RSS before the call {before:.0f} MB; "
          "the peak may be the input's generation)")


#: The pipelines of the closing note's comparison (rows: raw, MAD, spherize, TVN, CORAL, Harmony,
#: and recipe pipelines among which the comparison picks).
COMPARED = {
    "raw": [],
    "mad": "profiles_mad",
    "spherize": "mad_robustize_select_spherize",
    "tvn": ["tvn"],
    "coral": "profiles_mad_coral",
    "harmony": "profiles_mad_harmony",
    "var_mad_int_featselect_harmony": "profiles_var_mad_int_featselect_harmony",
    "mad_int_featselect": "profiles_mad_int_featselect",
    "mad_featselect_tvn": "profiles_mad_featselect_tvn",
    "mad_tvn_coral": "profiles_mad_tvn_coral",
    "mad_int_featselect_sphering": "profiles_mad_int_featselect_sphering",
}


def batchy_profiles(stain_scale=0.3, seed=0, **options):
    """make_profiles with a batch effect, plus a per-batch, per-feature multiplicative factor.

    ``make_profiles`` shifts each batch in its latent space (an additive batch effect); the
    factor ``exp(N(0, stain_scale))`` per batch and feature adds the multiplicative part a
    batch's staining intensity gives (as ``cpzarr.synthetic.make_screen``'s batch stain scale).
    """
    from cpzarr.synthetic import make_profiles

    sizes = dict(n_plates=20, n_batches=5, n_negcon=16, n_compounds=160, n_replicates=5, n_moas=40,
                 n_features=300, n_samples=None, batch_effect=1.0, dtype="float64", seed=seed)
    sizes.update(options)
    p = make_profiles(**sizes)
    rng = np.random.default_rng(seed + 1)
    batches, index = np.unique(p.batch.values, return_inverse=True)
    factor = np.exp(rng.normal(0.0, stain_scale, (len(batches), p.sizes["feature"])))
    return p.copy(data=p.values * factor[index])


def comparison(**options):
    """The closing note's table: ``compare_pipelines`` over ``COMPARED`` on ``batchy_profiles``."""
    from cpzarr.profiles import compare_pipelines, sweep

    warnings.simplefilter("ignore")
    grid = dict(COMPARED)
    grid.update(sweep("mad_robustize_select_spherize", "spherize", {"epsilon": [1e-6, 1e-2, 1.0]}, label="spherize"))
    grid.update(sweep(["tvn"], "tvn", {"n_components": [20, 50]}, label="tvn"))
    return compare_pipelines(batchy_profiles(**options), grid)
