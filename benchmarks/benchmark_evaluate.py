"""Benchmarks of cpzarr.evaluate, side by side with copairs on the same synthetic profiles.

Profiles come from ``cpzarr.synthetic.make_profiles`` (MOA structure, batch effects, 6,400
features like EfficientNet profiles). Sizes follow the study: 1,144 consensus profiles (one per
compound), 10,000 well profiles, and 100,000 × 1,280 for the memory bound.
"""

import os
import tempfile

import numpy as np

import cpzarr.evaluate as ev
from cpzarr.synthetic import make_profiles

TREATED = "control != 'negcon'"


def consensus_profiles(n_compounds=1144, n_moas=235, n_features=6400):
    """One profile per compound (a consensus level), MOA classes of about 5 compounds."""
    return make_profiles(
        n_plates=4, n_batches=2, n_negcon=1, n_compounds=n_compounds, n_replicates=1,
        n_moas=n_moas, n_features=n_features, n_samples=None, seed=1,
    )


def well_profiles(n_samples=10_000, n_features=6400):
    """About n_samples well profiles: 5 replicates per compound, 24 DMSO wells per plate, and the
    LINCS subset's 1,144 / 235 ≈ 4.9 compounds per MOA."""
    n_plates = int(np.ceil(n_samples / 250))
    n_compounds = (n_samples - 24 * n_plates) // 5
    return make_profiles(
        n_plates=n_plates, n_batches=5, n_negcon=24, n_compounds=n_compounds, n_replicates=5,
        n_moas=max(1, round(n_compounds * 235 / 1144)), n_features=n_features, n_samples=None,
        seed=2,
    )


class Consensus:
    """Every metric on 1,144 consensus profiles x 6,400 features, groups = MOA.

    Three repeats, median reported: the first call in a fresh process also pays for touching
    ~150 MB of new memory (about 0.4 s of the first Enrichment call here).
    """

    timeout = 600
    number = 1
    repeat = 3

    def setup(self):
        self.profiles = consensus_profiles()

    def time_precision_recall(self):
        ev.precision_recall(self.profiles, "moa", k=[1, 5, 10, 50, 100], mask=TREATED)

    def time_enrichment(self):
        ev.enrichment(self.profiles, "moa", mask=TREATED)

    def time_hitk(self):
        ev.hitk(self.profiles, "moa", mask=TREATED)

    def time_mean_average_precision(self):
        ev.mean_average_precision(self.profiles, "moa", mask=TREATED, null_size=10_000)


class CopairsConsensus:
    """copairs 0.5.5 mAP (AP + mAP with p-values) on the same 1,144 profiles, by MOA."""

    timeout = 900
    number = 1
    repeat = 1

    def setup(self):
        try:
            from copairs.map import average_precision, mean_average_precision  # noqa: F401
        except ImportError:
            raise NotImplementedError("copairs is not installed")
        profiles = consensus_profiles()
        keep = profiles["control"].values != "negcon"
        self.meta = ev.sample_table(profiles)[["moa"]][keep].reset_index(drop=True)
        self.features = np.asarray(profiles.values[keep])

    def time_copairs_mean_average_precision(self):
        from copairs.map import average_precision, mean_average_precision

        ap = average_precision(
            self.meta, self.features, ["moa"], [], [], ["moa"],
            distance="correlation", progress_bar=False,
        )
        with tempfile.TemporaryDirectory() as cache:
            mean_average_precision(
                ap, ["moa"], null_size=10_000, threshold=0.05, seed=0,
                progress_bar=False, cache_dir=cache,
            )

    def peakmem_copairs_mean_average_precision(self):
        self.time_copairs_mean_average_precision()


class Wells:
    """mAP + Precision@R + Enrichment on 10,000 well profiles x 6,400 features (target < 30 s)."""

    params = (["float32", "float64"],)
    param_names = ["dtype"]
    timeout = 900
    number = 1
    repeat = 1

    def setup(self, dtype):
        self.profiles = well_profiles()

    def time_map_precision_at_r_enrichment(self, dtype):
        ap = ev.average_precision(self.profiles, "moa", mask=TREATED, dtype=dtype)
        ev.mean_average_precision(groups="moa", ap=ap)
        ev.enrichment(self.profiles, "moa", mask=TREATED, dtype=dtype)

    def peakmem_map_precision_at_r_enrichment(self, dtype):
        self.time_map_precision_at_r_enrichment(dtype)


class Large:
    """The memory bound: 100,000 profiles x 1,280 features (run once; minutes on 2 cores).

    Target: completes within 4 GiB. Runs under asv only with ``CPZARR_BENCH_LARGE=1``. By hand,
    with its time and peak memory:
    ``/usr/bin/time -v python benchmarks/benchmark_evaluate.py 100000 1280 float32``.
    """

    timeout = 3600
    number = 1
    repeat = 1

    def setup(self):
        # Tens of CPU-minutes: only when asked for, so a routine ``asv run`` stays short.
        if not os.environ.get("CPZARR_BENCH_LARGE"):
            raise NotImplementedError("set CPZARR_BENCH_LARGE=1 to run the 100,000-profile benchmark")
        self.profiles = well_profiles(100_000, 1280)

    def peakmem_map_precision_at_r_enrichment(self):
        ap = ev.average_precision(self.profiles, "moa", mask=TREATED, dtype="float32")
        ev.mean_average_precision(groups="moa", ap=ap)
        ev.enrichment(self.profiles, "moa", mask=TREATED, dtype="float32")


if __name__ == "__main__":
    import sys
    import time

    n, d = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (100_000, 1280)
    dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
    start = time.perf_counter()
    profiles = well_profiles(n, d)
    print(f"profiles {profiles.shape} made in {time.perf_counter() - start:.1f} s", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    ap = ev.average_precision(profiles, "moa", mask=TREATED, dtype=dtype, progress=True)
    maps = ev.mean_average_precision(groups="moa", ap=ap)
    print(f"AP + Precision@R + mAP: {time.perf_counter() - start:.1f} s wall, "
          f"{time.process_time() - cpu:.1f} s CPU", flush=True)
    middle, middle_cpu = time.perf_counter(), time.process_time()
    enrichment = ev.enrichment(profiles, "moa", mask=TREATED, dtype=dtype, progress=True)
    print(f"Enrichment: {time.perf_counter() - middle:.1f} s wall, "
          f"{time.process_time() - middle_cpu:.1f} s CPU", flush=True)
    print(f"total {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU; "
          f"mAP {maps['mean_average_precision'].mean():.4f}, "
          f"Precision@R {ap['precision_at_r'].mean():.4f}, "
          f"odds ratio @99.5 {enrichment['odds_ratio'].iloc[0]:.2f}")
