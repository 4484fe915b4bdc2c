"""The GPU check script (benchmarks/gpu/check.py) run on the CPU, up to where it needs a GPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_compares_with_the_cpu_features(tmp_path, cache):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    env = dict(os.environ, KERAS_BACKEND="torch", OUT=str(tmp_path), PYTHONPATH=str(ROOT),
               CPZARR_CACHE=str(cache))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu/check.py"), "--wells", "1", "--allow-cpu",
         "--compare-cells", "6", "--threads", "2", "--max-cells", "24", "--store", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["device"] == {"backend": "torch", "gpu": False, "device": "cpu"}
    assert summary["cells"] == 24 and 1 <= summary["sites"] <= 4
    # Features written through the GPU-resource worker equal a fresh CPU process's.
    assert summary["compare"]["cells"] == 6 and summary["compare"]["max_abs_diff"] <= 1e-3
    assert summary["s_per_site"] == pytest.approx(summary["wall_s"] / summary["sites"])
    split = summary["split_one_site"]
    assert split["cells"] == 24 and split["planes"] == 5 * 24 and split["image_shape"] == [5, 1080, 1080]
    assert split["decode_s"] > 0 and split["network_s"] > 0
    assert "s/site (target <= 0.05, DeepProfiler 0.25)" in done.stdout
