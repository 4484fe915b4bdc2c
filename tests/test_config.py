from pathlib import Path

import pytest

from cpzarr.config import load_config
from cpzarr.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_types():
    cfg = load_config(text="input: {synthetic: {}}\nfeatures: {model: classical}")
    assert cfg.get("features.model") == "classical"
    assert cfg.get("crops.box") == 128
    assert cfg.get("crops.edge") == "pad"  # what DeepProfiler does; skip leaves cells out
    assert cfg.get("evaluate.percentiles") is None  # picked from the data (cpzarr.evaluate)
    assert cfg.get("evaluate.null_size") == 10_000
    assert "spherized" in cfg.get("profiles.pipelines")


def test_unknown_key_suggests_and_all_errors_reported_at_once():
    text = """
input: {synthetic: {}}
crops: {boxx: 64, edge: wrap}
features: {model: efficientnet-lite, batch_size: zero}
evaluate: {percentiles: [99.5, 150], k: [0, 5]}
"""
    with pytest.raises(ConfigError) as err:
        load_config(text=text)
    msg = str(err.value)
    problems = err.value.problems
    assert any(p.startswith("crops.boxx: unknown key; did you mean 'box'?") for p in problems)
    assert any(p.startswith("crops.edge: 'wrap' is not allowed") for p in problems)
    assert any("features.model: 'efficientnet-lite'" in p and "efficientnet-lite0" in p for p in problems)
    assert any(p.startswith("features.batch_size: 'zero' is a str") for p in problems)
    assert any("evaluate.percentiles: 150" in p for p in problems)
    assert any("evaluate.k: 0" in p for p in problems)
    assert len(problems) == 6, msg


def test_unknown_section_and_bad_step():
    text = """
input: {synthetic: {}}
profile: {aggregate: mean}
profiles:
  pipelines:
    a: [{spherise: {method: ZCA}}]
    b: {normalize: {}}
"""
    with pytest.raises(ConfigError) as err:
        load_config(text=text)
    problems = err.value.problems
    assert any(p.startswith("profile: unknown key; did you mean 'profiles'?") for p in problems)
    assert any("unknown step 'spherise'; did you mean 'spherize'?" in p for p in problems)
    assert any(p.startswith("profiles.pipelines.b: expected a list of steps") for p in problems)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "c.yaml").write_text("input: {images: data/load_data.csv}\noutput: {store: out/s.zarr}\n"
                                "locate: {method: detect}\n")
    cfg = load_config(sub / "c.yaml")
    assert cfg.get("input.images") == str(sub / "data" / "load_data.csv")
    assert cfg.get("output.store") == str(sub / "out" / "s.zarr")


def test_precedence_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: {synthetic: {}}\nfeatures: {batch_size: 8, model: classical}\n")
    env = {"CPZARR__FEATURES__BATCH_SIZE": "16", "CPZARR__CROPS__BOX": "64"}
    cfg = load_config(path, environ=env)
    assert cfg.get("features.batch_size") == 16 and cfg.get("crops.box") == 64
    cfg = load_config(path, ["features.batch_size=32"], environ=env)
    assert cfg.get("features.batch_size") == 32 and cfg.get("crops.box") == 64
    with pytest.raises(ConfigError, match="features.batch_size"):
        load_config(path, ["features.batch_size=-1"], environ={})


def test_stages_follow_the_inputs():
    cfg = load_config(text="input: {synthetic: {}}\nlocate: {method: detect}")
    assert cfg.stages == ("ingest", "locate", "features", "profiles", "evaluate", "report")
    cfg = load_config(text="features: {model: deepprofiler, path: /tmp/x}")
    assert cfg.stages == ("features", "profiles", "evaluate", "report")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.to_dict()["name"]
    assert load_config(text=cfg.to_yaml()).to_dict()["features"] == cfg.to_dict()["features"]


def test_packaged_demo_config_is_the_shipped_one():
    packaged = Path(__file__).resolve().parents[1] / "cpzarr" / "demo.yaml"
    assert packaged.read_text() == (CONFIGS / "demo.yaml").read_text()
