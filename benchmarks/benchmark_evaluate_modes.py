"""Benchmarks of the copairs modes, pooled precision/recall, NSCB and mp-value, beside copairs.

Profiles from ``cpzarr.synthetic.make_profiles`` as in ``benchmark_evaluate``: 1,144 consensus
profiles (one per compound) and 10,000 well profiles (5 replicates per compound, 24 DMSO wells
per plate); phenotypic activity also at 8,818 wells (beside copairs) and at 100,000 wells x 1,280
features (cpzarr alone, target < 4 GiB; only with ``CPZARR_BENCH_LARGE=1``).

By hand, one figure at a time, with time and peak memory::

    /usr/bin/time -v python -m benchmarks.benchmark_evaluate_modes activity 8818 1280
    /usr/bin/time -v python -m benchmarks.benchmark_evaluate_modes copairs_activity 8818 1280
"""

import os
import tempfile

import numpy as np

import cpzarr.evaluate as ev

from .benchmark_evaluate import TREATED, consensus_profiles, well_profiles

NULL = 10_000


def _copairs_activity(profiles, null_size=NULL):
    """copairs 0.5.5's activity recipe (reference index, Pearson) on the same profiles."""
    from copairs.map import average_precision, mean_average_precision
    from copairs.matching import assign_reference_index

    meta = ev.sample_table(profiles)[["compound", "control"]]
    meta = assign_reference_index(meta, "control == 'negcon'", reference_col="ref")
    ap = average_precision(meta, np.asarray(profiles.values), ["compound", "ref"], [], [],
                           ["compound", "ref"], distance="correlation", progress_bar=False)
    ap = ap[ap["control"] != "negcon"]
    with tempfile.TemporaryDirectory() as cache:
        return mean_average_precision(ap, ["compound"], null_size=null_size, threshold=0.05,
                                      seed=0, progress_bar=False, cache_dir=cache)


def _copairs_consistency(profiles, null_size=NULL):
    from copairs.map import average_precision, mean_average_precision

    keep = profiles["control"].values != "negcon"
    meta = ev.sample_table(profiles)[["moa"]][keep].reset_index(drop=True)
    ap = average_precision(meta, np.asarray(profiles.values[keep]), ["moa"], [], [], ["moa"],
                           distance="correlation", progress_bar=False)
    with tempfile.TemporaryDirectory() as cache:
        return mean_average_precision(ap, ["moa"], null_size=null_size, threshold=0.05, seed=0,
                                      progress_bar=False, cache_dir=cache)


def _copairs_replicates(profiles, null_size=NULL):
    """Same compound on another plate against other compounds (copairs' rule mode)."""
    from copairs.map import average_precision, mean_average_precision

    keep = profiles["control"].values != "negcon"
    meta = ev.sample_table(profiles)[["compound", "plate"]][keep].reset_index(drop=True)
    ap = average_precision(meta, np.asarray(profiles.values[keep]), ["compound"], ["plate"], [],
                           ["compound"], distance="correlation", progress_bar=False)
    with tempfile.TemporaryDirectory() as cache:
        return mean_average_precision(ap, ["compound"], null_size=null_size, threshold=0.05,
                                      seed=0, progress_bar=False, cache_dir=cache)


def activity(profiles, null_size=NULL):
    return ev.phenotypic_activity(profiles, "compound", "control == 'negcon'", null_size=null_size)


def consistency(profiles, null_size=NULL):
    return ev.phenotypic_consistency(profiles, "moa", mask=TREATED, null_size=null_size)


def replicates(profiles, null_size=NULL):
    return ev.mean_average_precision(profiles, mask=TREATED, pos_sameby=["compound"],
                                     pos_diffby=["plate"], neg_sameby=[], neg_diffby=["compound"],
                                     null_size=null_size)


def pooled(profiles):
    return ev.precision_recall(profiles, "moa", k=[1, 5, 10, 50, 100], mask=TREATED, pooled=True)


def nscb(profiles, null_size=NULL):
    return ev.nscb(profiles, "moa", compound="compound", batch="batch", mask=TREATED,
                   null_size=null_size)


class Consensus:
    """Modes on 1,144 consensus profiles x 6,400 features (groups = MOA), copairs beside."""

    timeout = 900
    number = 1
    repeat = 1

    def setup(self):
        try:
            import copairs  # noqa: F401
        except ImportError:
            copairs = None
        self.has_copairs = copairs is not None
        self.profiles = consensus_profiles()

    def time_consistency(self):
        consistency(self.profiles)

    def time_copairs_consistency(self):
        if not self.has_copairs:
            raise NotImplementedError("copairs is not installed")
        _copairs_consistency(self.profiles)

    def time_pooled_precision_recall(self):
        pooled(self.profiles)

    def time_nscb(self):
        nscb(self.profiles)


class Wells:
    """Modes on 10,000 well profiles x 6,400 features, copairs beside."""

    timeout = 1800
    number = 1
    repeat = 1

    def setup(self):
        self.profiles = well_profiles()

    def time_activity(self):
        activity(self.profiles)

    def time_copairs_activity(self):
        _copairs_activity(self.profiles)

    def time_replicates_other_plate(self):
        replicates(self.profiles)

    def time_copairs_replicates_other_plate(self):
        _copairs_replicates(self.profiles)

    def time_pooled_precision_recall(self):
        pooled(self.profiles)

    def time_nscb(self):
        nscb(self.profiles)

    def peakmem_activity(self):
        activity(self.profiles)


class ActivityLINCS:
    """Phenotypic activity at 8,818 wells x 1,280 features, cpzarr and copairs."""

    timeout = 1800
    number = 1
    repeat = 1

    def setup(self):
        self.profiles = well_profiles(8818, 1280)

    def time_activity(self):
        activity(self.profiles)

    def peakmem_activity(self):
        activity(self.profiles)

    def time_copairs_activity(self):
        _copairs_activity(self.profiles)

    def peakmem_copairs_activity(self):
        _copairs_activity(self.profiles)


class ActivityLarge:
    """Phenotypic activity at 100,000 wells x 1,280 features (cpzarr alone; target < 4 GiB)."""

    timeout = 3600
    number = 1
    repeat = 1

    def setup(self):
        if not os.environ.get("CPZARR_BENCH_LARGE"):
            raise NotImplementedError("set CPZARR_BENCH_LARGE=1 to run the 100,000-profile benchmark")
        self.profiles = well_profiles(100_000, 1280)

    def peakmem_activity(self):
        activity(self.profiles, null_size=1000)


class MpValue:
    """mp-value of 4 plates' compounds (5 replicates each, 96 DMSO wells) x 1,280 features."""

    timeout = 900
    number = 1
    repeat = 1

    def setup(self):
        self.profiles = well_profiles(1000, 1280)

    def time_mp_value(self):
        ev.mp_value(self.profiles, "compound", "control == 'negcon'", n_permutations=100)


if __name__ == "__main__":
    import sys
    import time

    modes = {
        "activity": activity, "copairs_activity": _copairs_activity,
        "consistency": consistency, "copairs_consistency": _copairs_consistency,
        "replicates": replicates, "copairs_replicates": _copairs_replicates,
        "pooled": pooled, "nscb": nscb,
    }
    mode, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    null = int(sys.argv[4]) if len(sys.argv) > 4 else NULL
    profiles = consensus_profiles(n_compounds=n, n_features=d) if mode.endswith("consistency") \
        else well_profiles(n, d)
    start, cpu = time.perf_counter(), time.process_time()
    out = modes[mode](profiles) if mode in ("pooled",) else modes[mode](profiles, null)
    print(f"{mode} on {profiles.shape}: {time.perf_counter() - start:.1f} s wall, "
          f"{time.process_time() - cpu:.1f} s CPU", flush=True)
