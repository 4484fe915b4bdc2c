"""What the user sees: sizes in `cpzarr info`, one progress-bar style, warnings that name their
stage, the training plot, and no Keras noise."""

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cpzarr.cli import main


@pytest.fixture(scope="module")
def located(tmp_path_factory):
    from cpzarr.cells import import_locations, write_cells
    from cpzarr.ingest import ingest
    from cpzarr.store import open_screen
    from cpzarr.synthetic import make_screen

    root = tmp_path_factory.mktemp("output")
    screen = make_screen(root / "images", plates=1, batches=1, sites=2, image_size=64, cells_per_site=6,
                         moas=2, compounds_per_moa=1, dmso_wells=1, nucleus_radius=4)
    ingest(screen.load_data, root / "s.zarr", platemap=screen.platemap, progress=False, scheduler="sync")
    write_cells(root / "s.zarr", import_locations(open_screen(root / "s.zarr"), screen.locations))
    return root / "s.zarr"


def _folder_bytes(path):
    return sum(os.path.getsize(Path(d) / f) for d, _, files in os.walk(path) for f in files)


def test_info_ratio_compares_the_images_with_their_raw_pixels(located):
    import xarray as xr

    from cpzarr.features.cnn import write_features
    from cpzarr.store import open_node

    raw = 1 * 3 * 2 * 5 * 64 * 64 * 2  # plates x wells x sites x channels x pixels x uint16
    expected = f"(ratio {_folder_bytes(located / 'images') / raw:.2f})"
    cells = open_node(located, "cells")
    n = cells.sizes["cell"]
    noise = np.random.default_rng(0).normal(size=(n, 20000)).astype("float32")  # incompressible, > the images
    features = xr.DataArray(noise, dims=("cell", "feature"),
                            coords={"cell": np.arange(n), "feature": [f"f{i}" for i in range(20000)]})
    write_features(located, "big", features.chunk({"cell": n}), progress=False, scheduler="sync")
    assert _folder_bytes(located / "features") > _folder_bytes(located / "images")
    out = CliRunner().invoke(main, ["info", str(located)])
    assert out.exit_code == 0, out.output
    (size,) = [line for line in out.output.splitlines() if line.startswith("size")]
    assert size.endswith(expected), (size, expected)


def test_detect_uses_the_same_tqdm_bar(located, capsys):
    from cpzarr.cells import detect_nuclei
    from cpzarr.store import open_screen

    detect_nuclei(open_screen(located), min_area=5, progress=True)
    err = capsys.readouterr().err
    assert "detect nuclei: 100%" in err and "6/6" in err  # one tick per site
    assert "[#" not in err  # not dask's own bar


def test_stage_warnings_are_one_line_naming_the_stage():
    from cpzarr.run import _stage_warnings

    lines = []
    with _stage_warnings("profiles", lines.append):
        warnings.warn("the 8 fitting samples span 6 of 226 feature directions", UserWarning)
    assert lines == ["[profiles] UserWarning: the 8 fitting samples span 6 of 226 feature directions"]


def test_training_plot_shows_the_learning_rate():
    from cpzarr.train._run import _history_figure

    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [2.0, 1.5, 1.2], "accuracy": [0.2, 0.4, 0.5],
                            "val_loss": [2.1, 1.7, 1.4], "val_accuracy": [0.2, 0.3, 0.4],
                            "learning_rate": [0.02, 0.01, 0.0]})
    fig = _history_figure(history)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["loss", "accuracy", "learning rate (end of epoch)"]
    np.testing.assert_array_equal(fig.axes[2].lines[0].get_ydata(), history["learning_rate"])


@pytest.mark.slow
def test_converting_lite0_weights_says_nothing(tmp_path, monkeypatch):
    from cpzarr.features import _lite0

    monkeypatch.setenv("CPZARR_CACHE", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        path, info = _lite0.imagenet_weights()
    assert path.is_file() and info["sha256"] == _lite0.sha256(path)
