"""What the README's examples and the shipped configs write is ignored by git (issue 20)."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Files the README's commands write when run from the repository's root, one per example.
WRITTEN = [
    "demo_screen/index.csv", "demo.zarr/zarr.json", "demo2.zarr/zarr.json", "screen.zarr/zarr.json",
    "screen.zarr.run.json", "cpzarr-demo/report/report.html", "cells.parquet", "wells.h5ad",
    "wells_normalized.parquet", "consensus.csv.gz", "consensus.parquet", "spherized.parquet",
    "runs/train-20/best.keras", "train/best.keras", "evaluation/headline.csv",
    # the shipped configs' outputs (relative to configs/)
    "train-demo/screen.zarr/zarr.json", "classical-demo/report/report.html",
]
#: Sources that must stay tracked although they share a name with an output.
SOURCES = ["cpzarr/train/_run.py", "configs/demo.yaml", "tests/test_train.py"]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_readme_outputs_are_ignored_and_sources_are_not():
    def ignored(paths):
        out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
        return set(out.stdout.split())

    assert ignored(WRITTEN) == set(WRITTEN)
    assert ignored(SOURCES) == set()
