"""Progress bars end at total/total, also when the last units finish faster than tqdm redraws.

tqdm draws an update only when its refresh interval (0.1 s) has passed since the last drawing; a
bar that does not stay (``leave=False``: the bars of ``cpzarr run``) is not drawn again when it
closes. When the last wells of an ingest finished together, the log's last bar line stopped short
(issue 20: "the ingest bar stops at 71 %"). A long refresh interval makes that deterministic here.
"""

import re

import pytest
import tqdm.auto

from cpzarr.cluster import map_batches


@pytest.fixture
def slow_redraw(monkeypatch):
    """Every bar redraws at most once an hour: only its first drawing and what close() draws show."""
    base = tqdm.auto.tqdm

    class SlowRedraw(base):
        def __init__(self, *args, **kwargs):
            kwargs["mininterval"] = 3600
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", SlowRedraw)


def _last_bar_line(err: str, label: str) -> str:
    """The last drawing of the bar ``label`` in captured stderr (``\\r``-separated redraws)."""
    lines = [part.strip() for part in re.split(r"[\r\n]", err) if part.strip().startswith(label)]
    assert lines, err
    return lines[-1]


def test_map_batches_bar_ends_at_total(slow_redraw, capsys):
    assert map_batches(lambda x: x + 1, list(range(50)), key_prefix="square", progress=True) == list(range(1, 51))
    assert "50/50" in _last_bar_line(capsys.readouterr().err, "square")


def test_map_batches_bar_on_a_cluster_ends_at_total(slow_redraw, capsys):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        capsys.readouterr()
        map_batches(abs, [-i for i in range(30)], key_prefix="absolute", batch_size=4, client=client)
    assert "30/30" in _last_bar_line(capsys.readouterr().err, "absolute")


def test_run_ingest_and_features_bars_end_at_total(slow_redraw, tmp_path, capsys):
    """``cpzarr run`` ingests and profiles on its cluster: each bar's last line counts every unit."""
    from cpzarr.run import run

    config = tmp_path / "run.yaml"
    config.write_text("""
name: bars
input:
  synthetic: {plates: 2, batches: 1, sites: 1, image_size: 64, cells_per_site: 4, moas: 2,
              compounds_per_moa: 2, dmso_wells: 3, seed: 1}
locate: {method: import}
crops: {box: 16}
features: {model: classical}
cluster: {n_workers: 1, threads_per_worker: 2, processes: false}
output: {store: out/screen.zarr, report: out/report}
""")
    run(config, until="features", echo=None)
    err = capsys.readouterr().err
    line = _last_bar_line(err, "ingest-well")
    wells = 2 * (2 * 2 + 3)  # plates × (compounds + DMSO wells)
    assert f"{wells}/{wells}" in line and "100%" in line, line
    line = _last_bar_line(err, "features classical")
    units = re.search(r"(\d+)/(\d+)", line)
    assert units and units[1] == units[2] and "100%" in line, line
