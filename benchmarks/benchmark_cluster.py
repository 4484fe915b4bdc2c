"""Bounded submission: what the scheduler holds while a screen's work units are computed.

Each unit is shaped like a features unit (a few site reads → crops → features → a write), a
small dask graph of its own. :func:`cpzarr.cluster.compute_bounded` keeps a window of units
submitted; the scheduler's largest task count should not grow with the number of units.
Measured on this machine (2 cores, in-process cluster, window of 8 units of 6 tasks;
``python benchmarks/benchmark_cluster.py``): 54 tasks held at most with 100 units and with 1,000
units; computing all units at once held 600 and 6,000.
"""

import dask
import numpy as np
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from cpzarr.cluster import compute_bounded


class MostHeld(SchedulerPlugin):
    """The most tasks the scheduler held at once."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.most = 0

    def transition(self, key, start, finish, *args, **kwargs):
        self.most = max(self.most, len(self.scheduler.tasks))


def _site(i):
    return np.full(64, i, dtype=np.float32)


def _features(*sites):
    return np.concatenate(sites).mean()


def _write(value):
    return float(value)


def units(n, sites_per_unit=4):
    """``n`` units of ``sites_per_unit`` reads, one features task and one write each."""
    out = []
    for u in range(n):
        reads = [dask.delayed(_site)(u * sites_per_unit + s, dask_key_name=f"read-{u}-{s}")
                 for s in range(sites_per_unit)]
        feats = dask.delayed(_features)(*reads, dask_key_name=f"features-{u}")
        out.append(dask.delayed(_write)(feats, dask_key_name=f"write-unit-{u}"))
    return out


def most_held(n_units, bounded=True, limit=8):
    """The scheduler's largest task count while ``n_units`` units are computed."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        plugin = MostHeld(cluster.scheduler)
        cluster.scheduler.add_plugin(plugin)
        tasks = units(n_units)
        if bounded:
            compute_bounded(client, tasks, limit=limit)
        else:
            client.gather(client.compute(tasks))
        return plugin.most


class BoundedSubmission:
    params = ([100, 1000], [True, False])
    param_names = ["units", "bounded"]
    timeout = 300

    def track_most_tasks_held(self, n_units, bounded):
        return most_held(n_units, bounded)

    track_most_tasks_held.unit = "tasks"


if __name__ == "__main__":
    for n in (100, 1000):
        print(n, "units: bounded", most_held(n, True), "tasks held at most; all at once", most_held(n, False))
