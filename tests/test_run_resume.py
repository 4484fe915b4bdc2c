"""Interrupted runs: a re-run keeps the finished units of every stage; Ctrl-C ends in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from cpzarr.run import RunState, run

CONFIG = """
name: resume
input:
  synthetic: {plates: 2, batches: 2, sites: 1, image_size: 128, cells_per_site: 10, moas: 2,
              compounds_per_moa: 2, dmso_wells: 4, seed: 3}
locate: {method: import}
crops: {box: 32, edge: pad}
features: {model: classical}
profiles: {pipelines: {raw: []}, consensus: null}
evaluate: {level: well, groups: moa, metrics: [precision_recall], k: [1]}
cluster: {n_workers: 1, threads_per_worker: 2, processes: false}
output: {store: out/screen.zarr, report: out/report}
"""

#: Cells per work unit: the tiny screen's ~130 cells make several units.
UNIT = 32


def _small_units(monkeypatch):
    import cpzarr.features.cnn as cnn

    original = cnn.write_features
    monkeypatch.setattr(cnn, "write_features", lambda *a, **k: original(*a, **{**k, "chunk_cells": UNIT}))


def _node(tmp_path):
    return zarr.open_group(str(tmp_path / "out" / "screen.zarr" / "features" / "classical"), mode="r+")


def test_interrupted_features_stage_computes_only_the_missing_unit(tmp_path, monkeypatch):
    _small_units(monkeypatch)
    path = tmp_path / "resume.yaml"
    path.write_text(CONFIG)
    first = run(path, until="features", progress=False, echo=None)
    assert first.ran == ["ingest", "locate", "features"]
    node = _node(tmp_path)
    reference = node["features"][:]
    n_units = node["unit_complete"].shape[0]
    assert n_units >= 4 and node["unit_complete"][:].all()

    # What Ctrl-C leaves with all units but one written: unit 0 not marked, the stage started but not
    # finished. The finished units hold a sentinel, so recomputing one shows.
    node["unit_complete"][0] = False
    sentinel = np.full_like(reference[UNIT:], -7.0)
    node["features"][UNIT:] = sentinel
    state = RunState(tmp_path / "out" / "screen.zarr")
    assert state.started("features") is not None
    del state.data["stages"]["features"]
    state._write()

    lines = []
    again = run(path, until="features", progress=False, echo=lines.append)
    assert again.skipped == ["ingest", "locate"] and again.ran == ["features"]
    node = _node(tmp_path)
    n_units = node["unit_complete"].shape[0]
    assert n_units >= 4 and node["unit_complete"][:].all()
    # Unit 0 was computed again (equal to the first run), units 1-3 were not touched: 1 of 4.
    np.testing.assert_array_equal(node["features"][:UNIT], reference[:UNIT])
    np.testing.assert_array_equal(node["features"][UNIT:], sentinel)

    # --force starts afresh: every unit is computed again.
    run(path, until="features", force=True, progress=False, echo=None)
    np.testing.assert_array_equal(_node(tmp_path)["features"][:], reference)


SCRIPT = """
import sys, time
import cpzarr.features.cnn as cnn

original_write, original_unit = cnn.write_features, cnn._write_unit

def slow_unit(block, path, units, chunk_cells, block_info=None):
    time.sleep(1.5)
    return original_unit(block, path, units, chunk_cells, block_info=block_info)

cnn._write_unit = slow_unit
cnn.write_features = lambda *a, **k: original_write(*a, **{**k, "chunk_cells": %d})
from cpzarr.cli import main
main(["run", sys.argv[1], "--no-progress"])
""" % UNIT


def test_ctrl_c_ends_with_one_line_and_the_store_resumes(tmp_path, monkeypatch):
    _small_units(monkeypatch)
    path = tmp_path / "resume.yaml"
    path.write_text(CONFIG)
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    node = tmp_path / "out" / "screen.zarr" / "features" / "classical"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (node / "unit_complete").exists() and _node(tmp_path)["unit_complete"][:].any():
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("Interrupted during features ("), out
    assert "units written); finished: ingest, locate. Run the same command again to resume" in last
    written = int(last.split("(")[1].split(" of ")[0])
    total = int(last.split(" of ")[1].split(" ")[0])
    assert 1 <= written < total

    # The store resumes: the re-run skips ingest and locate and keeps the written units.
    done_before = _node(tmp_path)["unit_complete"][:].copy()
    state = json.loads((tmp_path / "out" / "screen.zarr.run.json").read_text())
    assert set(state["stages"]) == {"ingest", "locate"}
    result = run(path, until="features", progress=False, echo=None)
    assert result.skipped == ["ingest", "locate"] and result.ran == ["features"]
    # (a unit already running when Ctrl-C came may finish while the cluster shuts down)
    assert _node(tmp_path)["unit_complete"][:].all() and done_before.sum() >= written
