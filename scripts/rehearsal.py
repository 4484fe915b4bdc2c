"""A JUMP-scale rehearsal: a synthetic JUMP-source-shaped screen through the whole pipeline on a
cluster of separate scheduler and worker processes, with per-stage figures.

The screen is generated first (outside the measured run), then ``dask scheduler`` and
``dask worker`` processes are started on 127.0.0.1 and ``cpzarr run --scheduler`` profiles it:
ingest → locate → features → profiles → evaluate → report. While it runs, every process's
resident memory and CPU time and the scheduler's task count are sampled; the figures per stage
are written to ``<out>/rehearsal.json`` and printed as a table.

Examples
--------
The two sizes run on a 2-core machine for docs/scaling.md (96 and 960 sites of 96 px with ~10
cells each; 2 and 9 minutes at a load average of 22)::

    python scripts/rehearsal.py --out /tmp/reh-s --plates 1 --wells 96 --sites 1
    python scripts/rehearsal.py --out /tmp/reh-b --plates 10 --wells 96 --sites 1

A stage measured again on the same screen and store (the client starts at that stage)::

    python scripts/rehearsal.py --out /tmp/reh-b --from report

A JUMP source's shape (20 plates × 384 wells × 9 sites × 5 channels, 96 px, ~10 cells a site:
69,120 sites, ~690,000 cells), on 16 workers with 2 GiB each::

    python scripts/rehearsal.py --out /scratch/rehearsal --plates 20 --wells 384 --sites 9 \\
        --workers 16 --memory-limit 2GiB --model efficientnet-lite0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "locate", "features", "profiles", "evaluate", "report")

CONFIG = """
name: rehearsal {plates} plates x {wells} wells x {sites} sites
input:
  images: {load_data}
  platemap: {platemap}
locate: {{method: import, path: {locations}}}
crops: {{box: {box}, edge: pad, scale: minmax}}
features: {{model: {model}}}
profiles:
  aggregate: mean
  pipelines:
    raw: []
    mad_robustize:
      - {{normalize: {{method: mad_robustize, samples: "control == 'negcon'"}}}}
      - {{feature_select: {{operation: [variance_threshold, drop_na_columns, drop_outliers], outlier_cutoff: 40}}}}
    spherized:
      - {{normalize: {{method: mad_robustize, samples: "control == 'negcon'"}}}}
      - {{feature_select: {{operation: [variance_threshold, drop_na_columns, drop_outliers], outlier_cutoff: 40}}}}
      - {{spherize: {{method: ZCA-cor, samples: "control == 'negcon'"}}}}
  consensus: {{operation: median, replicate_columns: [compound, dose]}}
evaluate:
  level: consensus
  groups: moa
  exclude: "control == 'negcon'"
  k: [1, 5, 10]
  percentiles: [99, 95, 90]
output: {{store: {store}, report: {report}}}
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def make_inputs(out: Path, args) -> tuple[Path, dict]:
    """Write the synthetic screen and the run's config; return the config path and the screen's size."""
    from cpzarr.synthetic import make_screen

    t0 = time.perf_counter()
    moas = 8
    screen = make_screen(
        out / "images", plates=args.plates, batches=min(args.plates, 4), wells=args.wells, sites=args.sites,
        image_size=args.image_size, cells_per_site=args.cells_per_site, moas=moas, compounds_per_moa=4,
        dmso_wells=max(2, args.wells // 12), doses=(1.0,), labels=False, overwrite=True, seed=0,
        progress=True,
    )
    seconds = time.perf_counter() - t0
    config = out / "rehearsal.yaml"
    config.write_text(CONFIG.format(
        plates=args.plates, wells=args.wells, sites=args.sites, load_data=screen.load_data,
        platemap=screen.platemap, locations=screen.locations, box=args.box, model=args.model,
        store=out / "screen.zarr", report=out / "report"))
    import pandas as pd

    cells = len(pd.read_csv(screen.truth, usecols=["plate"]))
    size = {"plates": args.plates, "wells_per_plate": args.wells, "sites_per_well": args.sites,
            "sites": args.plates * args.wells * args.sites, "cells": cells, "image_size": args.image_size,
            "channels": 5, "generate_seconds": round(seconds, 1),
            "source_bytes": _du(out / "images" / "images")}
    return config, size


class Cluster:
    """``dask scheduler`` + ``dask worker`` processes on 127.0.0.1 (each worker under a nanny)."""

    def __init__(self, folder: Path, n_workers: int, memory_limit: str):
        self.file = folder / "scheduler.json"
        self.file.unlink(missing_ok=True)
        self.log = open(folder / "cluster.log", "w")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(self.file)],
            env=_env(), stdout=self.log, stderr=self.log, start_new_session=True)
        while not self.file.exists():
            time.sleep(0.2)
        self.workers = [subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
             "--nthreads", "1", "--memory-limit", memory_limit, "--host", "127.0.0.1", "--no-dashboard",
             "--name", f"w{i}"], env=_env(), stdout=self.log, stderr=self.log, start_new_session=True)
            for i in range(n_workers)]
        from distributed import Client

        self.client = Client(scheduler_file=str(self.file), timeout=120)
        self.client.wait_for_workers(n_workers, timeout=300)
        self.address = self.client.scheduler.address
        self.client.register_plugin(TaskCounter(), name="rehearsal-counter")

    def close(self) -> None:
        self.client.close()
        for proc in [*self.workers, self.scheduler]:
            proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _scheduler_plugin_base():
    from distributed.diagnostics.plugin import SchedulerPlugin

    return SchedulerPlugin


class TaskCounter(_scheduler_plugin_base()):
    """On the scheduler: tasks finished per name prefix, and the most tasks it held at once."""

    name = "rehearsal-counter"

    def __init__(self):
        self.finished: dict[str, int] = {}
        self.most_held = 0

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish in ("memory", "erred") and start == "processing":
            name = str(key[0] if isinstance(key, tuple) else key)
            prefix = re.split(r"-(?=[0-9a-f]{8}|[0-9a-f]{32}|P\d)", name)[0]
            self.finished[prefix] = self.finished.get(prefix, 0) + 1
        self.most_held = max(self.most_held, len(self.scheduler.tasks))

    def read(self, reset: bool = True) -> dict:
        out = {"finished": dict(self.finished), "most_held": self.most_held}
        if reset:
            self.finished, self.most_held = {}, len(self.scheduler.tasks)
        return out


def _read_counter(dask_scheduler) -> dict:
    return dask_scheduler.plugins["rehearsal-counter"].read()


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def rehearse(config: Path, cluster: Cluster, interval: float = 0.25, start: str | None = None) -> dict:
    """Run ``cpzarr run`` on ``cluster`` (from ``start`` on, when given); sample memory, CPU and
    the scheduler per stage."""
    client = subprocess.Popen(
        [sys.executable, "-m", "cpzarr.cli", "run", str(config), "--no-progress", "--scheduler", cluster.address,
         *(["--from", start] if start else [])],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stage = {"name": None}
    stats: dict[str, dict] = {}
    lines: list[str] = []
    cpu_seen: dict[int, float] = {}
    processes: dict[int, psutil.Process] = {}

    def cpu_total() -> float:
        # CPU of every process that ever ran (a worker replaced by its nanny keeps what it used)
        for group in (_tree(client.pid), _tree(cluster.scheduler.pid), *[_tree(w.pid) for w in cluster.workers]):
            for p in group:
                processes.setdefault(p.pid, p)
        for pid, p in processes.items():
            try:
                t = p.cpu_times()
                cpu_seen[pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return sum(cpu_seen.values())

    def begin(name):
        stats[name] = {"start": time.perf_counter(), "cpu_start": cpu_total(), "client_rss": 0,
                       "scheduler_rss": 0, "worker_rss": {}}
        cluster.client.run_on_scheduler(_read_counter)  # reset the counters
        stage["name"] = name

    def end(name):
        s = stats[name]
        s["wall_s"] = time.perf_counter() - s.pop("start")
        s["cpu_s"] = cpu_total() - s.pop("cpu_start")
        counts = cluster.client.run_on_scheduler(_read_counter)
        s["tasks"] = counts["finished"]
        s["scheduler_most_tasks"] = counts["most_held"]
        stage["name"] = None

    def read_output():
        for line in client.stdout:
            lines.append(line.rstrip())
            print(line, end="", flush=True)
            m = re.match(r"\[(\w+)\] (running|done|up to date)", line)
            if m and m.group(2) == "running":
                begin(m.group(1))
            elif m and m.group(2) == "done" and m.group(1) in stats:
                end(m.group(1))

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    while client.poll() is None:
        name = stage["name"]
        if name in stats:
            s = stats[name]
            s["client_rss"] = max(s["client_rss"], sum(_rss(p) for p in _tree(client.pid)))
            s["scheduler_rss"] = max(s["scheduler_rss"], _rss(psutil.Process(cluster.scheduler.pid)))
            for i, w in enumerate(cluster.workers):
                # the worker process is the nanny's child; the nanny itself is small and constant
                rss = max((_rss(p) for p in _tree(w.pid)[1:]), default=0)
                s["worker_rss"][f"w{i}"] = max(s["worker_rss"].get(f"w{i}", 0), rss)
        time.sleep(interval)
    reader.join(timeout=30)
    if client.returncode != 0:
        raise SystemExit(f"cpzarr run failed (exit {client.returncode}):\n" + "\n".join(lines[-40:]))
    return stats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (screen, store, report)")
    parser.add_argument("--plates", type=int, default=2)
    parser.add_argument("--wells", type=int, default=96, help="wells per plate (JUMP: 384)")
    parser.add_argument("--sites", type=int, default=3, help="sites per well (JUMP: 9)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--cells-per-site", type=float, default=10)
    parser.add_argument("--box", type=int, default=32, help="crop box (px)")
    parser.add_argument("--model", default="classical", help="features.model (classical, efficientnet-lite0)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GiB", help="per worker")
    parser.add_argument("--from", dest="start", choices=STAGES[1:], default=None,
                        help="measure again from this stage on, with the screen and store of the rehearsal "
                             "already in --out (its client then starts fresh at this stage)")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.start:
        earlier = out / "rehearsal.json"
        if not earlier.exists():
            raise SystemExit(f"--from {args.start}: no earlier rehearsal in {out} (run it once without --from)")
        config, size = out / "rehearsal.yaml", json.loads(earlier.read_text())["size"]
    else:
        for leftover in (out / "screen.zarr", out / "report"):
            if leftover.exists():
                import shutil

                shutil.rmtree(leftover)
        (out / "screen.zarr.run.json").unlink(missing_ok=True)
        config, size = make_inputs(out, args)
    cluster = Cluster(out, args.workers, args.memory_limit)
    try:
        t0 = time.perf_counter()
        stats = rehearse(config, cluster, start=args.start)
        total = time.perf_counter() - t0
    finally:
        cluster.close()
    store = out / "screen.zarr"
    written = {"images": _du(store) - sum(_du(store / n) for n in ("cells", "features", "profiles")),
               "cells": _du(store / "cells"), "features": _du(store / "features"),
               "profiles": _du(store / "profiles"), "report": _du(out / "report")}
    log = (out / "cluster.log").read_text(errors="replace")
    memory_events = {what: log.count(what) for what in (
        "Unmanaged memory use is high", "spill", "Worker is at", "Restarting worker", "KilledWorker")}
    result = {"size": size, "workers": args.workers, "memory_limit": args.memory_limit, "model": args.model,
              "wall_s": round(total, 1), "stages": stats, "bytes_written": written,
              "memory_events": memory_events,
              "load_average": os.getloadavg(), "cores": os.cpu_count()}
    name = f"rehearsal-from-{args.start}.json" if args.start else "rehearsal.json"
    (out / name).write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    return result


def table(result: dict) -> str:
    """The per-stage figures as a Markdown table."""
    size = result["size"]
    mib = 2 ** 20
    rows = ["| stage | wall s | CPU s | CPU ms / site | CPU µs / cell | client MiB | scheduler MiB | "
            "worker MiB (peak each) | tasks | most tasks held |", "|" + " --- |" * 10]
    for name, s in result["stages"].items():
        workers = ", ".join(f"{v / mib:.0f}" for v in s["worker_rss"].values())
        rows.append(
            f"| {name} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | {1e3 * s['cpu_s'] / size['sites']:.2f} | "
            f"{1e6 * s['cpu_s'] / max(size['cells'], 1):.0f} | {s['client_rss'] / mib:.0f} | "
            f"{s['scheduler_rss'] / mib:.0f} | {workers} | {sum(s['tasks'].values())} | "
            f"{s['scheduler_most_tasks']} |")
    head = (f"{size['plates']} plates × {size['wells_per_plate']} wells × {size['sites_per_well']} sites "
            f"({size['sites']} sites, {size['cells']} cells, {size['image_size']} px, 5 channels); "
            f"{result['workers']} workers × 1 thread, {result['memory_limit']} each; model {result['model']}; "
            f"{result['wall_s']} s in all")
    written = ", ".join(f"{k} {v / mib:.1f} MiB" for k, v in result["bytes_written"].items())
    events = ", ".join(f"{k!r}: {v}" for k, v in result.get("memory_events", {}).items())
    return f"{head}\n\n" + "\n".join(rows) + f"\n\nwritten: {written}\nworker memory events in the log: {events}\n"


if __name__ == "__main__":
    main()
