"""Cells whose box leaves the image are padded by default, and always counted when left out."""

import numpy as np
import pytest
from click.testing import CliRunner

from cpzarr.cli import main

BOX = 32


@pytest.fixture(scope="module")
def located(tmp_path_factory):
    from cpzarr.cells import import_locations, write_cells
    from cpzarr.ingest import ingest
    from cpzarr.store import open_screen
    from cpzarr.synthetic import make_screen

    root = tmp_path_factory.mktemp("edge")
    screen = make_screen(root / "images", plates=1, batches=1, sites=2, image_size=96, cells_per_site=8,
                         moas=1, compounds_per_moa=1, dmso_wells=1, nucleus_radius=4)
    ingest(screen.load_data, root / "s.zarr", platemap=screen.platemap, progress=False, scheduler="sync")
    write_cells(root / "s.zarr", import_locations(open_screen(root / "s.zarr"), screen.locations))
    return root / "s.zarr"


def _expected_at_edge(store):
    """Boxes leaving the 96-px image, worked from the cell centres (halves round up)."""
    from cpzarr.store import open_node

    cells = open_node(store, "cells")
    x, y = cells["x"].values, cells["y"].values
    cx, cy = np.floor(x + 0.5) - BOX // 2, np.floor(y + 0.5) - BOX // 2
    return int(((cx < 0) | (cy < 0) | (cx + BOX > 96) | (cy + BOX > 96)).sum()), x.size


def test_crop_views_count_cells_at_the_edge(located):
    from cpzarr.crops import crops
    from cpzarr.store import open_screen

    at_edge, total = _expected_at_edge(located)
    assert 0 < at_edge < total
    skip = crops(open_screen(located), box=BOX, edge="skip")
    pad = crops(open_screen(located), box=BOX, edge="pad")
    assert skip.sizes["cell"] == total - at_edge and pad.sizes["cell"] == total
    assert skip.attrs["cells_left_out"] == at_edge and skip.attrs["cells_at_edge"] == at_edge
    assert skip.attrs["left_out_because"] == "their box leaves the image (edge='skip')"
    assert pad.attrs["cells_left_out"] == 0 and pad.attrs["cells_at_edge"] == at_edge
    assert pad.attrs["cells_located"] == skip.attrs["cells_located"] == total


def test_profile_pads_by_default():
    result = CliRunner().invoke(main, ["profile", "--help"])
    option = " ".join(result.output.split("--edge", 1)[1].split("--batch-size")[0].split())
    assert option.startswith("[pad|skip]") and "[default: pad]" in option


def test_one_default_edge_pad_across_api_cli_and_config(located):
    """The Python API pads by default, as the CLI and the config do: no cell is dropped silently."""
    import inspect

    from cpzarr.config import load_config
    from cpzarr.crops import Sampler, crops, sample
    from cpzarr.store import open_screen
    from cpzarr.train import train

    at_edge, total = _expected_at_edge(located)
    view = crops(open_screen(located), box=BOX)
    assert view.sizes["cell"] == total and view.attrs["edge"] == "pad"
    assert view.attrs["cells_at_edge"] == at_edge and view.attrs["cells_left_out"] == 0
    # sample() draws edge cells too: with 2 of every 3 draws at the edge, 200 draws hit some
    _, labels = sample(open_screen(located), 200, box=BOX, seed=0)
    x, y = labels["x"].to_numpy(), labels["y"].to_numpy()
    cx, cy = np.floor(x + 0.5) - BOX // 2, np.floor(y + 0.5) - BOX // 2
    assert ((cx < 0) | (cy < 0) | (cx + BOX > 96) | (cy + BOX > 96)).any()
    defaults = {f.__name__: inspect.signature(f).parameters["edge"].default for f in (crops, sample, Sampler, train)}
    assert defaults == dict.fromkeys(defaults, "pad")
    assert load_config(text="input: {synthetic: {}}").get("crops.edge") == "pad"


def test_run_reports_cells_left_out(tmp_path):
    from cpzarr.run import run
    from cpzarr.store import open_node

    path = tmp_path / "c.yaml"
    path.write_text("""
input:
  synthetic: {plates: 1, batches: 1, sites: 2, image_size: 96, cells_per_site: 8, moas: 1,
              compounds_per_moa: 1, dmso_wells: 1, nucleus_radius: 4}
locate: {method: import}
crops: {box: 32, edge: skip}
features: {model: classical}
cluster: {n_workers: 1, threads_per_worker: 1, processes: false}
output: {store: out/s.zarr, report: out/report}
""")
    lines = []
    result = run(path, until="features", progress=False, echo=lines.append)
    store = tmp_path / "out" / "s.zarr"
    at_edge, total = _expected_at_edge(store)
    assert f"[features] {at_edge} of {total} cells left out: their 32-px box leaves the image " \
           "(crops.edge: skip; crops.edge: pad keeps them, zero-padded as DeepProfiler does)" in lines
    attrs = open_node(store, "features/classical").attrs
    assert attrs["cells_left_out"] == at_edge and attrs["edge"] == "skip"
    assert result.summary["cells left out (box leaves the image)"] == at_edge
    assert open_node(store, "features/classical").sizes["cell"] == total - at_edge
