"""The profiles stage of ``cpzarr run`` resumes: a re-run keeps every profiles node that is complete
and was made from the same input node with the same options, and recomputes only the others."""

import json

import numpy as np
import pytest
import xarray as xr

import cpzarr.cluster
from cpzarr.config import load_config
from cpzarr.run import RunState, run
from cpzarr.stages import COMPARISON_TABLE, MADE_FROM

CONFIG = """
name: profiles-resume
input:
  synthetic: {plates: 2, batches: 2, sites: 1, image_size: 128, cells_per_site: 10, moas: 2,
              compounds_per_moa: 2, dmso_wells: 4, seed: 3}
locate: {method: import}
crops: {box: 32, edge: pad}
features: {model: classical}
profiles:
  aggregate: mean
  pipelines:
    raw: []
    spherized:
      - {normalize: {method: standardize, samples: "control == 'negcon'"}}
      - {spherize: {method: ZCA-cor, samples: "control == 'negcon'", epsilon: 0.001}}
  compare: {criterion: score}
  consensus: {operation: median, replicate_columns: [compound, dose]}
evaluate: {level: well, groups: moa, metrics: [precision_recall], k: [1]}
cluster: {n_workers: 1, threads_per_worker: 2, processes: false}
output: {store: out/screen.zarr, report: out/report}
"""

#: The real run_task, before any test wraps it.
RUN_TASK = cpzarr.cluster.run_task

NODES = ("aggregated", "raw", "raw_consensus", "spherized", "spherized_consensus")


class Tasks:
    """Records the name of every task the stages run (``run_task``'s key, less its ``-classical…``)."""

    def __init__(self, monkeypatch, stop_after=None):
        self.names = []

        def counted(client, key, func, *args, **kwargs):
            if stop_after is not None and len(self.names) == stop_after:
                raise KeyboardInterrupt  # Ctrl-C between two steps
            self.names.append(key.replace("-classical", ""))
            return RUN_TASK(client, key, func, *args, **kwargs)

        monkeypatch.setattr(cpzarr.cluster, "run_task", counted)

    def profiles(self):
        return [n for n in self.names if not n.startswith("evaluate")]


def _config(folder, text=CONFIG):
    folder.mkdir(exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(text)
    return path


def _nodes(folder):
    """Every profiles node as written (data, coordinates, attributes), without the run's record."""
    from cpzarr.profiles import read_profiles

    out = {}
    for node in NODES:
        prof = read_profiles(folder / "out" / "screen.zarr", node=f"profiles/classical/{node}").load()
        record = json.loads(prof.attrs.pop(MADE_FROM))
        out[node] = (prof, record)
    return out


def _assert_same_nodes(got, want):
    for node in NODES:
        xr.testing.assert_identical(got[node][0], want[node][0])  # bit for bit, attributes included
        assert got[node][0].dtype == want[node][0].dtype


def _table(folder):
    return (folder / "out" / "report" / "tables" / COMPARISON_TABLE).read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run's nodes and comparison table."""
    folder = tmp_path_factory.mktemp("reference")
    run(_config(folder), until="profiles", progress=False, echo=None)
    return _nodes(folder), _table(folder)


def test_interrupted_profiles_stage_computes_only_the_missing_steps(tmp_path, monkeypatch, reference):
    nodes, table = reference
    path = _config(tmp_path)
    run(path, until="features", progress=False, echo=None)

    # Ctrl-C after the aggregate and the first pipeline.
    Tasks(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        run(path, until="profiles", progress=False, echo=None)
    assert str(stopped.value).startswith("Interrupted during profiles (2 of 5 profile nodes written);")
    assert "profiles" not in RunState(tmp_path / "out" / "screen.zarr").data["stages"]

    tasks = Tasks(monkeypatch)
    lines = []
    result = run(path, until="profiles", progress=False, echo=lines.append)
    assert result.ran == ["profiles"]
    # raw's consensus, then spherized and its consensus: aggregate and raw are kept, and so is
    # raw's comparison row (no re-scoring).
    assert tasks.profiles() == ["consensus-raw", "normalize-spherized", "consensus-spherized"]
    assert "[profiles] kept 2 complete node(s) made from the same inputs and options; computed 3" in lines
    again = _nodes(tmp_path)
    _assert_same_nodes(again, nodes)
    assert _table(tmp_path) == table  # the kept pipeline still has its row: the same table, byte for byte

    # An incomplete node (its marker false, as an interrupted writer on an object store leaves it)
    # is computed again, and so is what was made from it; the rest is kept.
    meta_path = tmp_path / "out" / "screen.zarr" / "profiles" / "classical" / "spherized" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["cpzarr_complete"] = False
    meta_path.write_text(json.dumps(meta))
    _forget_finished_profiles(tmp_path)
    tasks = Tasks(monkeypatch)
    run(path, until="profiles", progress=False, echo=None)
    assert tasks.profiles() == ["normalize-spherized", "consensus-spherized"]
    _assert_same_nodes(_nodes(tmp_path), nodes)
    assert _table(tmp_path) == table


def _forget_finished_profiles(folder):
    """The run state an interrupted profiles stage leaves: started, not finished."""
    state = RunState(folder / "out" / "screen.zarr")
    del state.data["stages"]["profiles"]
    state._write()


def test_changed_pipeline_recomputes_that_pipeline_and_its_consensus_only(tmp_path, monkeypatch, reference):
    from cpzarr.profiles import pipeline, read_profiles
    from cpzarr.stages import _steps

    nodes, table = reference
    path = _config(tmp_path)
    run(path, until="profiles", progress=False, echo=None)
    before = _nodes(tmp_path)
    _assert_same_nodes(before, nodes)

    changed = CONFIG.replace("epsilon: 0.001", "epsilon: 0.1")
    path = _config(tmp_path, changed)
    tasks = Tasks(monkeypatch)
    result = run(path, until="profiles", progress=False, echo=None)
    assert result.ran == ["profiles"]
    assert tasks.profiles() == ["normalize-spherized", "consensus-spherized"]
    after = _nodes(tmp_path)
    for node in ("aggregated", "raw", "raw_consensus"):  # the very same writes, kept
        assert after[node][1]["write"] == before[node][1]["write"]
        xr.testing.assert_identical(after[node][0], before[node][0])
    for node in ("spherized", "spherized_consensus"):
        assert after[node][1]["write"] != before[node][1]["write"]
    # The recomputed pipeline is the new spec applied to the kept well profiles.
    store = tmp_path / "out" / "screen.zarr"
    well = read_profiles(store, node="profiles/classical/aggregated").load()
    spec = load_config(path).get("profiles.pipelines")["spherized"]
    expected = pipeline(well, _steps(spec)).compute()
    np.testing.assert_array_equal(after["spherized"][0].values, expected.values)
    assert not np.array_equal(after["spherized"][0].values, before["spherized"][0].values)
    assert after["spherized_consensus"][1]["input"] == after["spherized"][1]["write"]
    # raw's row of the comparison is the kept one, byte for byte.
    raw_row = [line for line in _table(tmp_path).splitlines() if line.startswith(b"raw,")]
    assert raw_row == [line for line in table.splitlines() if line.startswith(b"raw,")]

    # Other comparison options: every node kept, each pipeline scored again from its node.
    path = _config(tmp_path, changed.replace("compare: {criterion: score}",
                                              "compare: {criterion: score, percentile: 95.0}"))
    tasks = Tasks(monkeypatch)
    run(path, until="profiles", progress=False, echo=None)
    assert tasks.profiles() == ["score-raw", "score-spherized"]
    assert {n: r["write"] for n, (_, r) in _nodes(tmp_path).items()} == \
        {n: r["write"] for n, (_, r) in after.items()}

    # --force (the CLI's --force, the API's force=True) recomputes every node.
    tasks = Tasks(monkeypatch)
    run(path, start="profiles", until="profiles", force=True, progress=False, echo=None)
    assert tasks.profiles() == ["aggregate", "normalize-raw", "consensus-raw", "normalize-spherized",
                                "consensus-spherized"]


def test_recomputed_aggregate_makes_everything_downstream_stale(tmp_path, monkeypatch):
    path = _config(tmp_path)
    run(path, until="profiles", progress=False, echo=None)
    before = _nodes(tmp_path)
    # The aggregated node deleted (as if its write never finished): it and everything made from
    # it are computed again, though their own options did not change.
    import shutil

    shutil.rmtree(tmp_path / "out" / "screen.zarr" / "profiles" / "classical" / "aggregated")
    _forget_finished_profiles(tmp_path)
    tasks = Tasks(monkeypatch)
    run(path, until="profiles", progress=False, echo=None)
    assert tasks.profiles() == ["aggregate", "normalize-raw", "consensus-raw", "normalize-spherized",
                                "consensus-spherized"]
    _assert_same_nodes(_nodes(tmp_path), before)


def test_profiles_warnings_name_the_pipeline(tmp_path):
    """Issue 20: a warning of the profiles stage says which pipeline it comes from, in one line."""
    path = _config(tmp_path)
    lines = []
    run(path, until="profiles", progress=False, echo=lines.append)
    spherize = [line for line in lines if "fitting samples span" in line]
    # 8 DMSO wells fit the whitening: only the spherized pipeline warns, and says so
    assert spherize and all(line.startswith("[profiles] SpherizeWarning: profiles/classical/spherized: spherize:")
                            for line in spherize), lines
    assert not any("profiles/classical/raw" in line for line in lines)
