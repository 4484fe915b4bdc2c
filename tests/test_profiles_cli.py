"""The ``cpzarr profiles`` commands are thin wrappers: same numbers as the API."""

import re

import pytest
from click.testing import CliRunner

from cpzarr.cli import main
from cpzarr.profiles import consensus, normalize, read_profiles, write_profiles
from cpzarr.synthetic import make_profiles
from cpzarr.testing import assert_profiles_equal


def test_normalize_then_consensus_commands(tmp_path):
    profiles = make_profiles(n_plates=4, n_batches=2, n_negcon=6, n_compounds=8, n_replicates=3, n_moas=4,
                             n_features=12, n_samples=None, dtype="float64")
    source = tmp_path / "wells.parquet"
    write_profiles(profiles, source)
    runner = CliRunner()
    result = runner.invoke(main, ["profiles", "normalize", str(source), str(tmp_path / "store.zarr"),
                                  "--out-node", "profiles/demo/normalized", "--samples", 'control == "negcon"'])
    assert result.exit_code == 0, result.output
    normalized = read_profiles(tmp_path / "store.zarr", node="profiles/demo/normalized")
    expected = normalize(profiles, method="mad_robustize", samples='control == "negcon"')
    assert_profiles_equal(normalized, expected, rtol=1e-12, check_coords=False)
    result = runner.invoke(main, ["profiles", "consensus", str(tmp_path / "store.zarr"), str(tmp_path / "c.csv.gz"),
                                  "--node", "profiles/demo/normalized", "--operation", "modz",
                                  "--replicate-columns", "compound"])
    assert result.exit_code == 0, result.output
    written = read_profiles(tmp_path / "c.csv.gz")
    assert_profiles_equal(written, consensus(expected, "compound", operation="modz"), rtol=1e-9,
                          check_coords=False)


def test_pipeline_command_rejects_unknown_recipe(tmp_path):
    profiles = make_profiles(n_plates=2, n_batches=1, n_negcon=4, n_compounds=2, n_replicates=2, n_moas=1,
                             n_features=4, n_samples=None)
    write_profiles(profiles, tmp_path / "w.parquet")
    result = CliRunner().invoke(main, ["profiles", "pipeline", str(tmp_path / "w.parquet"),
                                       str(tmp_path / "o.parquet"), "--recipe", "nope"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown pipeline recipe 'nope'")  # the message, no traceback


@pytest.mark.parametrize("verb", ["normalize", "feature-select", "spherize", "consensus", "pipeline"])
def test_node_help_names_a_node_a_store_can_hold(verb):
    """Issue 20: the help named ``profiles/<model>/well``, a node the DataTree forbids (beside the
    ``well`` coordinate); the run writes ``…/aggregated``."""
    result = CliRunner().invoke(main, ["profiles", verb, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "profiles/efficientnet-lite0/aggregated" in text
    assert not re.search(r"profiles/[\w.-]+/well\b", text)
