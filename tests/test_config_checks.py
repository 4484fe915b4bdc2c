"""The config is checked whole before any stage: values, queries, paths, and where a value came from."""

import pytest

from cpzarr.config import check_paths, load_config
from cpzarr.errors import ConfigError

BASE = "input: {synthetic: {}}\nfeatures: {model: classical}\n"


def _problems(text, **kwargs):
    with pytest.raises(ConfigError) as err:
        load_config(text=text, environ=kwargs.pop("environ", {}), **kwargs)
    return err.value.problems


def test_scalar_for_a_list_and_a_section_as_a_list_are_problems_not_crashes():
    problems = _problems(BASE + "evaluate: {k: 5}\n")
    assert problems == ["evaluate.k: 5 is a int; expected list or null"]
    problems = _problems("input: {synthetic: {}}\nfeatures: [classical]\ncrops: [1, 2]\n")
    assert "features: expected a mapping of keys, got ['classical']" in problems
    assert "crops: expected a mapping of keys, got [1, 2]" in problems
    assert len(problems) == 2


@pytest.mark.parametrize("text, expected", [
    ("input: {synthetic: {plates: four}}", "input.synthetic: plates='four': need an integer >= 1"),
    ("input: {synthetic: {sites: 0}}", "input.synthetic: sites=0: need an integer >= 1"),
    ("profiles: {pipelines: {p: [{normalize: {method: zzz}}]}}",
     "profiles.pipelines.p[0].normalize.method: 'zzz' is not allowed"),
    ("profiles: {pipelines: {p: [{spherize: {method: ZCA-corr}}]}}",
     "profiles.pipelines.p[0].spherize.method: 'ZCA-corr' is not allowed; did you mean 'ZCA-cor'?"),
    ("profiles: {pipelines: {p: [{feature_select: {operation: [variance_threshold, nope]}}]}}",
     "profiles.pipelines.p[0].feature_select.operation: 'nope' is not allowed"),
    ("profiles: {pipelines: {p: [{normalize: {epsilon: small}}]}}",
     "profiles.pipelines.p[0].normalize.epsilon: 'small' is not a number"),
    ("profiles: {consensus: {operation: mode}}", "profiles.consensus.operation: 'mode' is not allowed"),
    ("evaluate: {exclude: \"control = 'negcon'\"}", "evaluate.exclude: \"control = 'negcon'\" is not a valid query"),
    ("profiles: {pipelines: {p: [{normalize: {samples: \"control == \"}}]}}",
     "profiles.pipelines.p[0].normalize.samples: 'control == ' is not a valid query"),
    ("cluster: {memory_limit: lots}", "cluster.memory_limit: 'lots' is not a size"),
    ("crops: {channels: [1, 2]}", "crops.channels: [1, 2] must be distinct channel names"),
    ("evaluate: {groups: [1]}", "evaluate.groups: [1] must be coordinate names"),
    ("locate: {method: detect, detect: {sigma: big}}", "locate.detect.sigma: 'big' is not a number"),
])
def test_invalid_values_are_refused_at_load_time(text, expected):
    text = text.replace("input: {synthetic: {", "input: {synthetic: {seed: 0, ")
    problems = _problems(text if text.startswith("input") else BASE + text)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_valid_values_still_pass():
    cfg = load_config(text=BASE + """
cluster: {memory_limit: 4GiB}
crops: {channels: [DNA, RNA]}
profiles:
  pipelines:
    p: [{normalize: {method: mad_robustize, samples: "control == 'negcon' and plate != 'P1'"}},
        {feature_select: {operation: variance_threshold, corr_threshold: 0.8}}]
evaluate: {exclude: "Metadata_control in ['negcon', 'poscon']", k: [1, 2]}
""", environ={})
    assert cfg.get("cluster.memory_limit") == "4GiB"


def test_an_environment_override_typo_names_the_variable(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"CPZARR__CROPS__BOXX": "64"})
    (problem,) = err.value.problems
    assert problem.startswith("crops.boxx: unknown key; did you mean 'box'?")
    assert problem.endswith("(set by environment variable CPZARR__CROPS__BOXX)")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["crops.box=big"], environ={})
    assert err.value.problems[0].endswith("(set by --set crops.box)")
    with pytest.raises(ConfigError, match="environment variable CPZARR__CROPS__BOX: its value is not valid YAML"):
        load_config(path, environ={"CPZARR__CROPS__BOX": "[1"})


def test_keys_that_did_nothing_are_gone_or_work():
    assert _problems(BASE.replace("{synthetic: {}}", "{synthetic: {}, moa: moa.csv}"))[0].startswith(
        "input.moa: unknown key")
    assert load_config(text=BASE, environ={}).get("crops.scale") is None  # the model's own scaling


def test_every_missing_path_is_reported_before_the_run(tmp_path):
    (tmp_path / "index.csv").write_text("x\n")
    cfg = load_config(text=f"""
input: {{images: {tmp_path / 'index.csv'}, platemap: {tmp_path / 'nope.csv'}}}
locate: {{method: import, path: {tmp_path / 'locations'}}}
features: {{model: efficientnet-lite0, weights: {tmp_path / 'w.h5'}}}
output: {{store: {tmp_path / 'out.zarr'}}}
""", environ={})
    with pytest.raises(ConfigError) as err:
        check_paths(cfg)
    assert err.value.problems == [
        f"input.platemap: no such file: {tmp_path / 'nope.csv'}",
        f"locate.path: no such file or folder: {tmp_path / 'locations'}",
        f"features.weights: no such file: {tmp_path / 'w.h5'}",
    ]


def test_run_checks_paths_before_the_first_stage(tmp_path):
    from cpzarr.run import run

    (tmp_path / "index.csv").write_text("x\n")
    path = tmp_path / "c.yaml"
    path.write_text("input: {images: index.csv}\nlocate: {path: no-locations}\nfeatures: {model: classical}\n"
                    "output: {store: out.zarr}\n")
    with pytest.raises(ConfigError, match="locate.path: no such file or folder"):
        run(path, progress=False, echo=None)
    assert not (tmp_path / "out.zarr").exists()  # ingest never started


@pytest.mark.parametrize("model, scale, expected", [
    ("classical", None, None), ("classical", "minmax", "minmax"),
    ("efficientnet-lite0", None, "minmax"), ("efficientnet-lite0", "deepprofiler", "deepprofiler"),
])
def test_crops_scale_reaches_the_crop_view(monkeypatch, tmp_path, model, scale, expected):
    import sys

    import cpzarr.store
    from cpzarr.run import RunState
    from cpzarr.stages import Context, stage_features

    seen = []

    class Stop(Exception):
        pass

    def plan(screen, **kwargs):  # the features stage builds its crops from a CropPlan
        seen.append(kwargs["scale"])
        raise Stop

    monkeypatch.setattr(sys.modules["cpzarr.crops"], "CropPlan", plan)  # the module, not cpzarr.crops the function
    monkeypatch.setattr(cpzarr.store, "open_screen", lambda store: None)
    cfg = load_config(text=f"input: {{synthetic: {{}}}}\nfeatures: {{model: {model}}}\n"
                           f"crops: {{scale: {'null' if scale is None else scale}}}\n", environ={})
    with pytest.raises(Stop):
        stage_features(Context(cfg=cfg, store=tmp_path / "s.zarr", state=RunState(tmp_path / "s.zarr")))
    assert seen == [expected]


def test_train_output_is_where_run_and_train_write(tmp_path):
    """``train.output`` (relative to the config's folder) is used by ``cpzarr run``'s train and
    features stages as by ``cpzarr train``; without it, a ``train`` folder beside the store."""
    from cpzarr.run import RunState
    from cpzarr.stages import Context, _train_dir
    from cpzarr.train._run import output_folder

    folder = tmp_path / "configs"
    folder.mkdir()
    text = ("input: {synthetic: {}}\ntrain: {label: compound, epochs: 2, warmup_epochs: 1, output: runs/t1}\n"
            "features: {model: trained}\noutput: {store: ../out/screen.zarr}\n")
    (folder / "x.yaml").write_text(text)
    cfg = load_config(folder / "x.yaml", environ={})
    store = tmp_path / "out" / "screen.zarr"
    ctx = Context(cfg=cfg, store=store, state=RunState(store))
    assert _train_dir(ctx) == output_folder(cfg, store) == folder / "runs" / "t1"
    (folder / "y.yaml").write_text(text.replace(", output: runs/t1", ""))
    cfg = load_config(folder / "y.yaml", environ={})
    assert _train_dir(Context(cfg=cfg, store=store, state=RunState(store))) == tmp_path / "out" / "train"
