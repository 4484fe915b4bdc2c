"""`cpzarr run` on a cluster: task names of every stage, separate scheduler and worker processes,
a worker killed mid-features."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client, LocalCluster, get_task_stream

from cpzarr.run import run

REPO = Path(__file__).resolve().parents[1]

TINY = """
name: tiny
input:
  synthetic: {plates: 2, batches: 2, sites: 1, image_size: 128, cells_per_site: 10, moas: 2,
              compounds_per_moa: 2, dmso_wells: 4, seed: 3}
locate: {method: import}
crops: {box: 32, edge: pad, scale: minmax}
features: {model: classical}
profiles:
  aggregate: mean
  pipelines:
    raw: []
    spherized:
      - {normalize: {method: standardize, samples: "control == 'negcon'"}}
      - {spherize: {method: ZCA-cor, samples: "control == 'negcon'", epsilon: 0.001}}
  consensus: {operation: median, replicate_columns: [compound, dose]}
evaluate: {level: well, groups: moa, k: [1, 2], percentiles: [95, 90]}
cluster: {n_workers: 1, threads_per_worker: 2, processes: false}
output: {store: out/screen.zarr, report: out/report}
"""

#: Task name prefixes each stage must show on the dashboard.
STAGE_TASKS = {
    "ingest": "ingest-well-",
    "crops": "crops-",
    "features": "features-classical-",
    "aggregate": "aggregate-classical-",
    "normalize": "normalize-classical-spherized-",
    "consensus": "consensus-classical-spherized-",
    "evaluate": "evaluate-spherized-",
    "report": "replicates-spherized-",
}


def _config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(TINY)
    return path


def _key_name(key) -> str:
    return str(key[0] if isinstance(key, tuple) else key)


def test_every_stage_names_its_tasks_on_the_cluster(tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client, get_task_stream(client) as stream:
        result = run(_config(tmp_path), scheduler=cluster.scheduler_address, until="report",
                     progress=False, echo=None)
    assert result.ran == ["ingest", "locate", "features", "profiles", "evaluate", "report"]
    names = [_key_name(t["key"]) for t in stream.data]
    for stage, prefix in STAGE_TASKS.items():
        assert any(n.startswith(prefix) for n in names), (stage, sorted(set(names)))
    # one task per profile step and per evaluated set: the tables never pass through the client
    assert sum(n.startswith("aggregate-") for n in names) == 1
    assert sum(n.startswith("evaluate-") for n in names) == 4  # 2 sets + their batch enrichment
    # what the report reads of every well or cell runs on a worker: replicate reproducibility
    # (all pairs of wells) once per set, the cells per well and the montage's draw once
    assert sum(n.startswith("replicates-") for n in names) == 2
    assert sum(n.startswith("report-cells-per-well-") for n in names) == 1
    assert sum(n.startswith("report-montage-cells-") for n in names) == 1
    assert sum(n.startswith("report-pca-") for n in names) == 2  # read, fitted and drawn there
    assert sum(n.startswith("report-similarity-") for n in names) == 2
    page = (tmp_path / "out" / "report" / "report.html").read_text()
    for section in ("random cells per compound", "Cells per well", "percent replicating", "PCA of well profiles",
                    "Pearson correlation of consensus profiles"):
        assert section in page, section


# --- separate processes -----------------------------------------------------------------------

def _env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


class ProcessCluster:
    """``dask scheduler`` and ``dask worker`` as separate OS processes on 127.0.0.1."""

    def __init__(self, folder: Path, n_workers: int = 2):
        self.folder = folder
        self.file = folder / "scheduler.json"
        self.procs = []
        log = open(folder / "cluster.log", "w")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(self.file)], env=_env(), stdout=log, stderr=log))
        deadline = time.time() + 120
        while not self.file.exists():
            assert time.time() < deadline, (folder / "cluster.log").read_text()
            time.sleep(0.2)
        for i in range(n_workers):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
                 "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                env=_env(), stdout=log, stderr=log))
        self.client = Client(scheduler_file=str(self.file), timeout=120)
        self.client.wait_for_workers(n_workers, timeout=180)
        self.address = self.client.scheduler.address

    def close(self):
        self.client.close()
        for proc in self.procs[::-1]:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs[::-1]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The undisturbed local run (threads in one process), through report."""
    folder = tmp_path_factory.mktemp("local")
    run(_config(folder), progress=False, echo=None)
    return folder


@pytest.fixture
def process_cluster(tmp_path):
    cluster = ProcessCluster(tmp_path)
    yield cluster
    cluster.close()


def _assert_same_store(a: Path, b: Path):
    sa, sb = a / "out" / "screen.zarr", b / "out" / "screen.zarr"
    fa = xr.open_zarr(sa, group="features/classical", consolidated=False)
    fb = xr.open_zarr(sb, group="features/classical", consolidated=False)
    assert bool(fb["unit_complete"].all())
    np.testing.assert_array_equal(fa["features"].values, fb["features"].values)
    for node in ("aggregated", "raw", "spherized", "spherized_consensus"):
        pa = xr.open_zarr(sa, group=f"profiles/classical/{node}", consolidated=False)["profiles"]
        pb = xr.open_zarr(sb, group=f"profiles/classical/{node}", consolidated=False)["profiles"]
        np.testing.assert_array_equal(pa.values, pb.values)
        assert set(pa.coords) == set(pb.coords)
        for name in pa.coords:
            np.testing.assert_array_equal(pa[name].values, pb[name].values)
    ha = pd.read_csv(a / "out" / "report" / "tables" / "headline.csv")
    hb = pd.read_csv(b / "out" / "report" / "tables" / "headline.csv")
    pd.testing.assert_frame_equal(ha, hb)


@pytest.mark.slow
def test_cli_run_on_separate_scheduler_and_worker_processes(reference, process_cluster, tmp_path):
    config = _config(tmp_path / "cluster")
    workers = set(process_cluster.client.scheduler_info()["workers"])
    with get_task_stream(process_cluster.client) as stream:
        done = subprocess.run([sys.executable, "-m", "cpzarr.cli", "run", str(config), "--no-progress",
                               "--scheduler", process_cluster.address], cwd=config.parent, env=_env(),
                              capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "cluster" / "out" / "report" / "report.html").exists()
    _assert_same_store(reference, tmp_path / "cluster")
    # every stage's tasks ran in the worker processes
    by_name = {}
    for t in stream.data:
        by_name.setdefault(_key_name(t["key"]).split("-")[0], set()).add(t["worker"])
    for stage in ("ingest", "crops", "features", "aggregate", "normalize", "consensus", "evaluate"):
        assert by_name.get(stage) and by_name[stage] <= workers, (stage, by_name)


@pytest.mark.slow
def test_a_worker_killed_mid_features_leaves_an_identical_store(reference, process_cluster, tmp_path):
    client = process_cluster.client
    pids = client.run(os.getpid)
    config = _config(tmp_path / "killed")
    errors = []

    def go():
        try:
            run(config, scheduler=process_cluster.address, progress=False, echo=None)
        except BaseException as err:  # noqa: BLE001 (reported by the test below)
            errors.append(err)

    thread = threading.Thread(target=go)
    thread.start()
    killed = None
    deadline = time.time() + 600
    while killed is None and thread.is_alive() and time.time() < deadline:
        for worker, keys in client.processing().items():
            if any(_key_name(k).startswith(("features-", "crops-")) for k in keys):
                os.kill(pids[worker], signal.SIGKILL)
                killed = worker
                break
        time.sleep(0.02)
    thread.join(timeout=600)
    assert killed is not None, "the features stage ended before a worker could be killed"
    assert not errors, errors
    assert killed not in client.scheduler_info()["workers"]  # the nanny started a new worker process
    _assert_same_store(reference, tmp_path / "killed")


#: The demo config's features (configs/demo.yaml: EfficientNet-Lite0 with the ImageNet weights,
#: 64-px boxes) on the tiny screen.
DEMO_MODEL = TINY.replace("crops: {box: 32, edge: pad, scale: minmax}", "crops: {box: 64, edge: pad, scale: minmax}").replace(
    "features: {model: classical}", "features: {model: efficientnet-lite0, weights: imagenet, batch_size: null}")


@pytest.mark.slow
def test_demo_model_on_separate_processes_gives_the_local_metrics(process_cluster, tmp_path):
    # through report, TensorFlow in two `dask worker` processes, against the local run (threads in
    # one process): the same features, bit for bit, and the same metrics (46 s here at load 0.5)
    local, remote = tmp_path / "local", tmp_path / "remote"
    for folder in (local, remote):
        folder.mkdir()
        (folder / "tiny.yaml").write_text(DEMO_MODEL)
    run(local / "tiny.yaml", progress=False, echo=None)
    done = subprocess.run([sys.executable, "-m", "cpzarr.cli", "run", str(remote / "tiny.yaml"), "--no-progress",
                           "--scheduler", process_cluster.address], cwd=remote, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (remote / "out" / "report" / "report.html").exists()
    fa = xr.open_zarr(local / "out" / "screen.zarr", group="features/efficientnet-lite0", consolidated=False)
    fb = xr.open_zarr(remote / "out" / "screen.zarr", group="features/efficientnet-lite0", consolidated=False)
    assert fa.sizes["feature"] == 5 * 1280 and bool(fb["unit_complete"].all())
    np.testing.assert_array_equal(fa["features"].values, fb["features"].values)
    ha = pd.read_csv(local / "out" / "report" / "tables" / "headline.csv")
    hb = pd.read_csv(remote / "out" / "report" / "tables" / "headline.csv")
    pd.testing.assert_frame_equal(ha, hb)
