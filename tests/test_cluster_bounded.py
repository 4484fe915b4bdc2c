"""The stages submit bounded batches: the tasks the scheduler holds at once do not grow with the
screen (issue 15, item 3), measured through the real stages on a distributed cluster."""

import functools
import time

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from cpzarr.features import cnn
from cpzarr.run import run
from cpzarr.synthetic import make_screen

CONFIG = """
name: bounded
input: {{images: {load_data}, platemap: {platemap}}}
locate: {{method: import, path: {locations}}}
crops: {{box: 24, edge: pad, scale: minmax}}
features: {{model: classical}}
output: {{store: {out}/screen.zarr, report: {out}/report}}
"""

#: Cells per features unit in these tests, so that a small screen has many units (the stage's
#: default, 1,024, would give one unit per plate here).
UNIT = 16


class MostHeld(SchedulerPlugin):
    """The largest number of tasks the scheduler knew at once since the last reset."""

    def __init__(self, scheduler):
        self.scheduler, self.most = scheduler, 0

    def transition(self, *args, **kwargs):
        self.most = max(self.most, len(self.scheduler.tasks))


def _screen(folder, plates):
    screen = make_screen(folder / "images", plates=plates, batches=1, wells=12, sites=1, image_size=64,
                         cells_per_site=6, moas=2, compounds_per_moa=2, dmso_wells=4, doses=(1.0,),
                         labels=False, seed=5)
    config = folder / "bounded.yaml"
    config.write_text(CONFIG.format(load_data=screen.load_data, platemap=screen.platemap,
                                    locations=screen.locations, out=folder / "out"))
    return config


def _most_held_per_stage(config):
    """Run ingest, locate and features on a one-worker, two-thread cluster; most tasks held in each."""
    held = {}
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster):
        plugin = MostHeld(cluster.scheduler)
        cluster.scheduler.add_plugin(plugin)
        for stage in ("ingest", "locate", "features"):
            deadline = time.monotonic() + 30
            while cluster.scheduler.tasks and time.monotonic() < deadline:  # the last stage's releases
                time.sleep(0.05)
            plugin.most = 0
            run(config, start=stage, until=stage, scheduler=cluster.scheduler_address, progress=False, echo=None)
            held[stage] = plugin.most
    return held


@pytest.fixture(scope="module")
def sizes(tmp_path_factory):
    """Most tasks held per stage for a 1-plate and a 4-plate screen, with units of 16 cells."""
    patch = pytest.MonkeyPatch()
    patch.setattr(cnn, "write_features", functools.partial(cnn.write_features, chunk_cells=UNIT))
    try:
        out = {}
        for plates in (1, 4):
            folder = tmp_path_factory.mktemp(f"plates{plates}")
            config = _screen(folder, plates)
            out[plates] = (_most_held_per_stage(config), folder / "out" / "screen.zarr")
        return out
    finally:
        patch.undo()


def test_the_screen_is_4_times_larger_and_every_unit_was_written(sizes):
    # the premise of the next test: 4x the wells, sites and units, all of them computed
    (_, small), (_, big) = sizes[1], sizes[4]
    fs = xr.open_zarr(small, group="features/classical", consolidated=False)
    fb = xr.open_zarr(big, group="features/classical", consolidated=False)
    assert fb.sizes["unit"] >= 3.5 * fs.sizes["unit"] >= 3.5 * 4  # both beyond a window of 2 units
    assert bool(fs["unit_complete"].all()) and bool(fb["unit_complete"].all())
    assert np.isfinite(fb["features"].values).all()
    assert xr.open_zarr(big, group="cells", consolidated=False).sizes["cell"] > 3.5 * xr.open_zarr(
        small, group="cells", consolidated=False).sizes["cell"]


@pytest.mark.parametrize("stage", ["ingest", "locate", "features"])
def test_tasks_held_on_the_scheduler_do_not_grow_with_the_screen(sizes, stage):
    # Submitting everything at once holds one task per well in ingest (12 -> 48), one per site's
    # `present` chunk in locate (13 -> 49) and every unit's crops in features; bounded batches
    # hold the same window at both sizes: ingest 8 wells (4 a thread), locate 1 task, features
    # 2 units (1 a thread) of 2-3 sites each (22-29 tasks measured, with the one just finished).
    small, big = sizes[1][0][stage], sizes[4][0][stage]
    assert big <= 1.5 * small + 2, (stage, small, big)  # a unit's task count varies with its sites
    assert big <= {"ingest": 16, "locate": 4, "features": 40}[stage], (stage, small, big)
