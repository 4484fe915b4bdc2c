"""Experiment configs: one YAML file describes a whole run, validated strictly before anything runs.

Values come from the file, then environment variables, then command-line overrides (later wins):

- ``CPZARR__FEATURES__BATCH_SIZE=32`` sets ``features.batch_size`` (sections and keys joined by
  double underscores; the value is parsed as YAML);
- ``--set features.batch_size=32`` on the command line does the same.

Unknown keys are errors (with a suggestion), never silently ignored; every problem in a file is
reported at once with its key path, the bad value and what is allowed. Relative paths are
resolved against the config file's folder. Parameters that are passed on to a stage function
(nuclei detection, pipeline steps) are checked against that function's signature.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cpzarr.errors import ConfigError

__all__ = ["Config", "load_config", "validate_config", "check_paths", "STAGES", "SCHEMA"]

#: The stages of a run, in order.
STAGES = ("ingest", "locate", "train", "features", "profiles", "evaluate", "report")


@dataclass(frozen=True)
class Key:
    """One config key: accepted types, default, allowed values and whether it is a path."""

    types: tuple
    default: Any = None
    choices: tuple | None = None
    path: bool = False
    help: str = ""
    minimum: float | None = None


_num = (int, float)
_opt_str = (str, type(None))

#: The schema: section → key → Key. ``None`` marks a free mapping checked elsewhere.
SCHEMA: dict[str, Any] = {
    "name": Key((str,), "experiment", help="name of the experiment, used in the report"),
    "input": {
        "synthetic": Key((dict, type(None)), None, help="make_screen parameters for a synthetic screen"),
        "images": Key(_opt_str, None, path=True, help="a CellProfiler load_data CSV or a DeepProfiler index.csv"),
        "platemap": Key(_opt_str, None, path=True, help="platemap / well metadata table"),
        "store": Key(_opt_str, None, path=True, help="an existing store (skips ingest when no images)"),
        "storage_options": Key((dict, type(None)), None,
                               help="fsspec options (credentials, endpoint_url) for inputs given as URLs"),
    },
    "locate": {
        "method": Key((str,), "import", choices=("import", "detect"), help="import location files or detect nuclei"),
        "path": Key(_opt_str, None, path=True, help="locations folder or CellProfiler tables (import)"),
        "kind": Key((str,), "auto", choices=("auto", "deepprofiler", "cellprofiler")),
        "detect": Key((dict,), {}, help="detect_nuclei parameters"),
    },
    "crops": {
        "box": Key((int,), 128, minimum=8, help="crop box size in pixels"),
        "edge": Key((str,), "pad", choices=("skip", "pad"),
                    help="cells whose box leaves the image: zero-pad (DeepProfiler) or leave out"),
        "scale": Key(_opt_str, None, choices=(None, "minmax", "deepprofiler"),
                     help="crop scaling; null: the model's own (raw for classical, minmax for networks)"),
        "channels": Key((list, type(None)), None, help="channels to use (default: all)"),
        "illumination": Key((bool,), False, help="divide images by the /illumination fields (computed if missing)"),
    },
    "features": {
        "model": Key(
            (str,),
            "efficientnet-lite0",
            choices=("efficientnet-lite0", "efficientnet-b0", "resnet50", "classical", "deepprofiler",
                     "cellprofiler", "trained"),
        ),
        "weights": Key(_opt_str, "imagenet", help="'imagenet', a weights file, or null for random (explicit)"),
        "checkpoint": Key(_opt_str, None, path=True, help="trained checkpoint (model: trained)"),
        "layer": Key(_opt_str, None, help="named layer to take features from (spatially averaged)"),
        "path": Key(_opt_str, None, path=True, help="DeepProfiler / CellProfiler outputs to import"),
        "name": Key(_opt_str, None, help="node name under /features (default: the model name)"),
        "batch_size": Key((int, type(None)), None, minimum=1, help="planes per forward pass (null: 8 on a CPU, 512 on a GPU)"),
        "dtype": Key((str,), "float32", choices=("float32", "float16")),
        "compare_imagenet": Key((bool,), False, help="also profile the same architecture with ImageNet weights"),
    },
    "train": Key((dict, type(None)), None, help="cpzarr.train parameters (validated by cpzarr.train)"),
    "profiles": {
        "aggregate": Key((str,), "mean", choices=("mean", "median")),
        "pipelines": Key((dict, list, type(None)), None,
                         help="named profile sets: name → list of steps or a recipe name "
                              "(profiles_mad_int_featselect_harmony); a list of recipe names names each by itself"),
        "sweeps": Key((list, type(None)), None,
                      help="more pipelines: [{pipeline: name, step: spherize, values: {epsilon: [1e-6, 1e-2]}}]"),
        "compare": Key((dict, bool, type(None)), None,
                       help="compare the pipelines (replicate mAP, MOA mAP, DMSO batch enrichment) into "
                            "tables/pipeline_comparison.csv: true or cpzarr.profiles.compare_pipelines options"),
        "consensus": Key((dict, type(None)), {"operation": "median", "replicate_columns": ["compound", "dose"]}),
    },
    "evaluate": {
        "level": Key((str,), "consensus", choices=("well", "consensus")),
        "groups": Key((str, list), "moa", help="coordinate(s) whose equal values make positives"),
        "exclude": Key(_opt_str, "control == 'negcon'", help="query of samples left out of MOA metrics"),
        "metrics": Key(
            (list,),
            ["mean_average_precision", "precision_recall", "enrichment", "hitk", "batch_enrichment"],
        ),
        "percentiles": Key((list, type(None)), None,
                           help="enrichment percentiles (null: those of 99.5…97 the data supports)"),
        "k": Key((list, type(None)), None,
                 help="K of Precision/Recall@K (null: those of 1…100 the group sizes support)"),
        "batch": Key((str,), "batch", help="coordinate holding the batch, for the batch enrichment score"),
        "null_size": Key((int,), 10_000, minimum=1, help="random rankings of the mAP null"),
        "seed": Key((int,), 0, help="seed of the mAP null"),
        "threshold": Key((float, int), 0.05, help="significance level of the corrected p-values"),
    },
    "cluster": {
        "scheduler": Key(_opt_str, None, help="address of an existing Dask scheduler"),
        "n_workers": Key((int, type(None)), None, minimum=1),
        "threads_per_worker": Key((int, type(None)), None, minimum=1),
        "memory_limit": Key((str, int, float), "auto", help="per worker: 'auto', '4GiB', bytes or a fraction"),
        "gpu": Key((int,), 0, minimum=0),
        "keras_backend": Key(_opt_str, None, choices=(None, "tensorflow", "jax", "torch"),
                             help="Keras backend of the local workers (null: KERAS_BACKEND, else tensorflow)"),
        "processes": Key((bool,), True),
        "profile": Key((bool,), False, help="run distributed's stack-sampling profiler in local workers"),
        "dashboard": Key(_opt_str, "127.0.0.1:0",
                         help="host:port of the local cluster's dashboard (this machine only by default; "
                              "0.0.0.0:8787 serves every network interface); null turns it off"),
    },
    "output": {
        "store": Key((str,), "screen.zarr", path=True, help="the Zarr store of the run: a path or an fsspec URL "
                     "(s3://bucket/screen.zarr)"),
        "storage_options": Key((dict, type(None)), None,
                               help="fsspec options (credentials, endpoint_url) of a store given as a URL"),
        "report": Key((str,), "report", path=True, help="folder of the report"),
    },
}

_METRICS = ("mean_average_precision", "precision_recall", "enrichment", "hitk", "batch_enrichment",
            "replicate_reproducibility", "grit", "precision_recall_pooled")
# Node names that would clash with the store's coordinates or its aggregated level.
_RESERVED = ("plate", "well", "site", "channel", "cell", "sample", "feature", "aggregated")
_STEPS = ("normalize", "feature_select", "spherize", "consensus", "correct_well_position", "regress_cell_count",
          "pca", "tvn", "coral", "harmony")


@dataclass
class Config:
    """A validated experiment config.

    Attributes
    ----------
    values : dict
        The resolved config (defaults filled in, paths absolute).
    source : Path or None
        The file it came from.
    """

    values: dict
    source: Path | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, dotted: str, default: Any = None) -> Any:
        """Value at a dotted key path such as ``"features.model"``."""
        node: Any = self.values
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def to_dict(self) -> dict:
        """A deep copy of the resolved config, safe to store in attributes."""
        return copy.deepcopy(self.values)

    def to_yaml(self) -> str:
        """The resolved config as YAML text."""
        return yaml.safe_dump(self.values, sort_keys=False)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this config runs, in order."""
        out = []
        for stage in STAGES:
            if stage == "ingest" and not (self.get("input.images") or self.get("input.synthetic") is not None):
                continue
            if stage == "locate" and self.get("features.model") in ("deepprofiler", "cellprofiler"):
                continue
            if stage == "train" and self.get("train") is None:
                continue
            out.append(stage)
        return tuple(out)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    text: str | None = None,
) -> Config:
    """Read, merge and validate an experiment config.

    Parameters
    ----------
    path : path, optional
        The YAML file.
    overrides : mapping or list of ``"key.path=value"``, optional
        Command-line overrides; values in ``"k=v"`` strings are parsed as YAML.
    environ : mapping, optional
        Environment to read ``CPZARR__SECTION__KEY`` variables from (default ``os.environ``).
    text : str, optional
        YAML text instead of a file (relative paths then resolve against the current folder).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Listing every problem with its key path.

    Examples
    --------
    >>> cfg = load_config(text="{input: {synthetic: {}}, features: {model: classical}}")
    >>> cfg.get("features.model"), cfg.get("crops.box")
    ('classical', 128)
    """
    where = "<text>"
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        text = p.read_text()
        where = str(p)
        base = p.resolve().parent
    try:
        raw = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections, not {type(raw).__name__}")

    env = os.environ if environ is None else environ
    origins: dict[str, str] = {}  # key path -> where a value that is not in the file came from
    for name, value in env.items():
        if name.startswith("CPZARR__"):
            keys = [k.lower() for k in name[len("CPZARR__"):].split("__")]
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise ConfigError(f"environment variable {name}: its value is not valid YAML: {err}") from None
            _set(raw, keys, parsed)
            origins[".".join(keys)] = f"environment variable {name}"
    if overrides:
        items = overrides.items() if isinstance(overrides, Mapping) else [_split(o) for o in overrides]
        for key, value in items:
            _set(raw, key.split("."), value)
            origins[key] = f"override {key}={value!r}" if isinstance(overrides, Mapping) \
                else f"--set {key}"

    try:
        values = validate_config(raw, base=base, where=where)
    except ConfigError as err:
        if not origins:
            raise
        problems = [_with_origin(p, origins) for p in err.problems]
        raise ConfigError(f"{where}: {len(problems)} problem(s) in the config", problems) from None
    return Config(values=values, source=Path(path).resolve() if path is not None else None)


def _with_origin(problem: str, origins: Mapping[str, str]) -> str:
    """``problem`` (``"crops.boxx: unknown key"``) naming the variable or flag that set its key."""
    key = problem.split(":", 1)[0].split("[", 1)[0]
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        origin = origins.get(".".join(parts[:n]))
        if origin:
            return f"{problem} (set by {origin})"
    return problem


def check_paths(cfg: Config) -> None:
    """Check that every file and folder the config reads exists, before any stage runs.

    Paths that a stage of the same run writes (the store, a checkpoint the train stage makes)
    are not required to exist.

    Raises
    ------
    ConfigError
        Listing every missing path with its key.
    """
    stages = cfg.stages
    wanted = [("input.images", "file", "ingest" in stages), ("input.platemap", "file", "ingest" in stages)]
    wanted.append(("input.store", "dir", "ingest" not in stages and cfg.get("input.store") is not None))
    wanted.append(("locate.path", "any", "locate" in stages and cfg.get("locate.method") == "import"))
    model = cfg.get("features.model")
    wanted.append(("features.path", "any", model in ("deepprofiler", "cellprofiler")))
    wanted.append(("features.checkpoint", "file", model == "trained"))
    weights = cfg.get("features.weights")
    wanted.append(("features.weights", "file", weights not in (None, "imagenet")
                   and model not in ("classical", "deepprofiler", "cellprofiler", "trained")))
    problems = []
    for key, kind, needed in wanted:
        value = cfg.get(key)
        if not needed or not value:
            continue
        if "://" in str(value):  # a URL: checked where it is read (ingest names every missing file)
            continue
        path = Path(value)
        missing = not path.exists()
        if missing or (kind == "file" and not path.is_file()) or (kind == "dir" and not path.is_dir()):
            what = {"file": "file", "dir": "folder", "any": "file or folder"}[kind]
            problems.append(f"{key}: {'no such' if missing else 'not a'} {what}: {value}")
    if problems:
        where = cfg.source or "config"
        raise ConfigError(f"{where}: {len(problems)} path(s) the run reads cannot be found", problems)


def _split(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, value = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {err}") from None


def _set(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def validate_config(raw: Mapping[str, Any], *, base: Path | None = None, where: str = "config") -> dict:
    """Check ``raw`` against :data:`SCHEMA` and return it resolved (defaults, absolute paths).

    Raises
    ------
    ConfigError
        With one line per problem.
    """
    base = base or Path.cwd()
    problems: list[str] = []
    values = _check_mapping(raw, SCHEMA, "", base, problems)
    weights = values["features"].get("weights")
    if isinstance(weights, str) and weights != "imagenet":  # a file, relative to the config
        values["features"]["weights"] = str((base / os.path.expanduser(weights)).resolve())
    _check_semantics(values, problems)
    if problems:
        raise ConfigError(f"{where}: {len(problems)} problem(s) in the config", problems)
    return values


def _check_mapping(raw: Any, schema: Mapping[str, Any], prefix: str, base: Path, problems: list[str]) -> dict:
    out: dict = {}
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix.rstrip('.') or '<top>'}: expected a mapping of keys, got {raw!r}")
        raw = {}  # the defaults stand in, so that the other checks still run
    for key in raw:
        if key not in schema:
            guess = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            allowed = ", ".join(sorted(schema))
            problems.append(f"{prefix}{key}: unknown key{hint} (allowed: {allowed})")
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        if isinstance(spec, dict):
            out[key] = _check_mapping(raw.get(key), spec, path + ".", base, problems)
            continue
        value = raw.get(key, copy.deepcopy(spec.default))
        out[key] = _check_value(value, spec, path, base, problems)
    return out


def _check_value(value: Any, spec: Key, path: str, base: Path, problems: list[str]) -> Any:
    if isinstance(value, bool) and bool not in spec.types:
        problems.append(f"{path}: {value!r} is a boolean; expected {_names(spec.types)}")
        return value
    if not isinstance(value, spec.types):
        if float in spec.types and isinstance(value, int):
            value = float(value)
        else:
            problems.append(f"{path}: {value!r} is a {type(value).__name__}; expected {_names(spec.types)}")
            return value
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join("null" if c is None else repr(c) for c in spec.choices)
        guess = difflib.get_close_matches(str(value), [str(c) for c in spec.choices if c], n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        problems.append(f"{path}: {value!r} is not allowed{hint} (allowed: {allowed})")
    if spec.minimum is not None and isinstance(value, _num) and value < spec.minimum:
        problems.append(f"{path}: {value!r} is below the minimum {spec.minimum}")
    if spec.path and isinstance(value, str) and "://" not in value:  # URLs are taken as they are
        value = str((base / os.path.expanduser(value)).resolve())
    return value


def _names(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_semantics(values: dict, problems: list[str]) -> None:
    # A value of the wrong type was reported already; the checks below skip it instead of crashing.
    inp = values["input"]
    synthetic = inp.get("synthetic")
    if synthetic is not None and inp.get("images"):
        problems.append("input: give either synthetic or images, not both")
    if not (synthetic is not None or inp.get("images") or inp.get("store")):
        feats = values["features"]["model"]
        if feats not in ("deepprofiler", "cellprofiler"):
            problems.append("input: one of synthetic, images or store is required")
    if isinstance(synthetic, Mapping):
        if _check_kwargs("input.synthetic", synthetic, "cpzarr.synthetic", "make_screen", problems,
                         skip=("path",)):
            _check_screen(synthetic, problems)
    loc = values["locate"]
    if loc["method"] == "import" and not loc.get("path") and synthetic is None:
        if values["features"]["model"] not in ("deepprofiler", "cellprofiler"):
            problems.append("locate.path: required when locate.method is 'import' (or use method: detect)")
    if loc["method"] == "detect" and isinstance(loc.get("detect"), Mapping) and loc["detect"]:
        if _check_kwargs("locate.detect", loc["detect"], "cpzarr.cells", "detect_nuclei", problems,
                         skip=("screen",)):
            _check_numbers("locate.detect", _lookup("cpzarr.cells", "detect_nuclei"), loc["detect"], problems)
    channels = values["crops"].get("channels")
    if isinstance(channels, list) and (not channels or not all(isinstance(c, str) for c in channels)
                                       or len(set(channels)) != len(channels)):
        problems.append(f"crops.channels: {channels!r} must be distinct channel names such as [DNA, RNA]")
    feats = values["features"]
    if feats["model"] == "trained" and not feats.get("checkpoint") and values.get("train") is None:
        problems.append("features.checkpoint: required for model 'trained' unless a train section is given")
    if feats["model"] in ("deepprofiler", "cellprofiler") and not feats.get("path"):
        problems.append(f"features.path: required to import {feats['model']} outputs")
    _check_memory(values["cluster"].get("memory_limit"), problems)
    pipelines = values["profiles"].get("pipelines")
    if pipelines is None:
        values["profiles"]["pipelines"] = pipelines = {
            "spherized": [
                {"normalize": {"method": "standardize", "samples": "control == 'negcon'"}},
                {"spherize": {"method": "ZCA-cor", "samples": "control == 'negcon'"}},
            ]
        }
    if isinstance(pipelines, list):
        if not all(isinstance(n, str) for n in pipelines):
            problems.append(f"profiles.pipelines: a list must hold recipe names, got {pipelines!r}")
            pipelines = {}
        values["profiles"]["pipelines"] = pipelines = {n: n for n in pipelines}
    if not isinstance(pipelines, Mapping):
        pipelines = {}
    _expand_sweeps(values["profiles"], pipelines, problems)
    for name, steps in pipelines.items():
        if isinstance(steps, str):
            _check_recipe(f"profiles.pipelines.{name}", steps, problems)
            continue
        if name in _RESERVED:
            problems.append(f"profiles.pipelines.{name}: the name is reserved (names a store node; "
                            f"avoid {', '.join(_RESERVED)})")
        if steps is None:
            values["profiles"]["pipelines"][name] = steps = []
        if not isinstance(steps, list):
            problems.append(f"profiles.pipelines.{name}: expected a list of steps, got {steps!r}")
            continue
        for i, step in enumerate(steps):
            where = f"profiles.pipelines.{name}[{i}]"
            if not (isinstance(step, Mapping) and len(step) == 1):
                problems.append(f"{where}: a step is a one-key mapping such as {{spherize: {{method: ZCA}}}}")
                continue
            (op, params), = step.items()
            if op not in _STEPS:
                guess = difflib.get_close_matches(str(op), _STEPS, n=1)
                hint = f"; did you mean {guess[0]!r}?" if guess else ""
                problems.append(f"{where}: unknown step {op!r}{hint} (allowed: {', '.join(_STEPS)})")
                continue
            if params is not None and not isinstance(params, Mapping):
                problems.append(f"{where}.{op}: parameters must be a mapping, got {params!r}")
                continue
            if _check_kwargs(f"{where}.{op}", params or {}, "cpzarr.profiles", op, problems, skip=("profiles",)):
                _check_step_values(f"{where}.{op}", op, params or {}, problems)
    compare = values["profiles"].get("compare")
    if isinstance(compare, Mapping):
        _check_kwargs("profiles.compare", compare, "cpzarr.profiles", "compare_pipelines", problems,
                      skip=("profiles", "pipelines"))
        _check_kwargs("profiles.compare", {k: v for k, v in compare.items() if k != "criterion"},
                      "cpzarr.profiles", "pipeline_metrics", problems, skip=("profiles",))
    cons = values["profiles"].get("consensus")
    if isinstance(cons, Mapping) and cons:
        if _check_kwargs("profiles.consensus", cons, "cpzarr.profiles", "consensus", problems, skip=("profiles",)):
            _check_step_values("profiles.consensus", "consensus", cons, problems)
    ev = values["evaluate"]
    for m in ev["metrics"] if isinstance(ev["metrics"], list) else []:
        if m not in _METRICS:
            guess = difflib.get_close_matches(str(m), _METRICS, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            problems.append(f"evaluate.metrics: unknown metric {m!r}{hint} (allowed: {', '.join(_METRICS)})")
    for p in ev["percentiles"] if isinstance(ev["percentiles"], list) else []:
        if not isinstance(p, _num) or isinstance(p, bool) or not 0 < p < 100:
            problems.append(f"evaluate.percentiles: {p!r} is not a percentile in (0, 100)")
    for k in ev["k"] if isinstance(ev["k"], list) else []:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            problems.append(f"evaluate.k: {k!r} is not a positive integer")
    groups = ev["groups"]
    if isinstance(groups, list) and (not groups or not all(isinstance(g, str) for g in groups)):
        problems.append(f"evaluate.groups: {groups!r} must be coordinate names such as moa")
    if isinstance(ev.get("exclude"), str):
        _check_query("evaluate.exclude", ev["exclude"], problems)
    if values.get("train") is not None:
        validator = _lookup("cpzarr.train", "validate_train_config")
        if validator is not None:
            try:
                validator(values["train"])
            except ConfigError as err:
                problems.extend(f"train.{p}" for p in (err.problems or [str(err)]))


def _check_query(where: str, query: str, problems: list[str]) -> None:
    """A sample query must parse (the columns it names are known only when the data is)."""
    parse = _lookup("cpzarr.query", "parse_query")
    if parse is not None:
        try:
            parse(query)
        except Exception as err:  # noqa: BLE001 - any refusal of the parser is the user's to see
            problems.append(f"{where}: {query!r} is not a valid query ({err})")
        return
    import ast

    try:
        tree = ast.parse(query.replace("Metadata_", ""), mode="eval")
    except SyntaxError as err:
        problems.append(f"{where}: {query!r} is not a valid query ({err.msg} at column {err.offset})")
        return
    if any(isinstance(node, (ast.Call, ast.Attribute, ast.Subscript, ast.Lambda)) for node in ast.walk(tree)):
        problems.append(f"{where}: {query!r} is not a valid query (comparisons of columns with values, "
                        "and/or/not only: no calls, attributes or indexing)")


def _check_memory(limit: Any, problems: list[str]) -> None:
    if isinstance(limit, bool) or not isinstance(limit, (str, int, float)):
        return  # its type was reported
    if isinstance(limit, str) and limit != "auto":
        from dask.utils import parse_bytes

        try:
            parse_bytes(limit)
        except (ValueError, TypeError):
            problems.append(f"cluster.memory_limit: {limit!r} is not a size such as '4GiB', bytes, "
                            "a fraction of the machine's memory, or 'auto'")
    elif isinstance(limit, (int, float)) and limit < 0:
        problems.append(f"cluster.memory_limit: {limit!r} is negative")


def _check_screen(params: Mapping[str, Any], problems: list[str]) -> None:
    """Values of ``input.synthetic``, checked by the generator's own argument check."""
    check = _lookup("cpzarr.synthetic", "check_screen_arguments")
    if check is None:
        return
    try:
        check(**params)
    except ConfigError as err:
        problems.extend(f"input.synthetic.{p}" for p in err.problems or [str(err)])
    except Exception as err:  # noqa: BLE001 - InputError from the generator, or a bad type in it
        lines = getattr(err, "problems", None) or [str(err)]
        problems.extend(f"input.synthetic: {line}" for line in lines)


def _choices(op: str) -> dict[str, tuple]:
    """Allowed values of a profile step's string options, from the step's own module."""
    import importlib

    names = {"normalize": ("_normalize", {"method": "METHODS"}),
             "spherize": ("_spherize", {"method": "METHODS"}),
             "consensus": ("_consensus", {"operation": "OPERATIONS"}),
             "feature_select": ("_select", {"operation": "OPERATIONS"})}
    if op not in names:
        return {}
    module, keys = names[op]
    mod = importlib.import_module(f"cpzarr.profiles.{module}")
    out = {key: tuple(getattr(mod, const)) for key, const in keys.items() if hasattr(mod, const)}
    if op == "normalize" and "method" in out:  # other names of a method ("int": inverse_normal)
        out["method"] += tuple(getattr(mod, "ALIASES", {}))
    return out


def _check_step_values(where: str, op: str, params: Mapping[str, Any], problems: list[str]) -> None:
    """Values of a profile step: allowed choices, queries, and numbers where numbers are due."""
    choices = _choices(op)
    for key, value in params.items():
        if key in choices:
            given = value if isinstance(value, list) and op == "feature_select" else [value]
            for v in given:
                if v not in choices[key]:
                    guess = difflib.get_close_matches(str(v), [str(c) for c in choices[key]], n=1)
                    hint = f"; did you mean {guess[0]!r}?" if guess else ""
                    problems.append(f"{where}.{key}: {v!r} is not allowed{hint} "
                                    f"(allowed: {', '.join(map(str, choices[key]))})")
        elif key == "samples" and isinstance(value, str) and value != "all":
            _check_query(f"{where}.{key}", value, problems)
        else:
            _check_numbers(where, _lookup("cpzarr.profiles", op), {key: value}, problems)


def _check_numbers(where: str, func: Callable, params: Mapping[str, Any], problems: list[str]) -> None:
    """Numbers and booleans where ``func``'s defaults are numbers and booleans."""
    defaults = {n: p.default for n, p in inspect.signature(func).parameters.items()}
    for key, value in params.items():
        default = defaults.get(key)
        if isinstance(default, bool) and not isinstance(value, bool):
            problems.append(f"{where}.{key}: {value!r} is not true or false")
        elif isinstance(default, _num) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, _num)):
            problems.append(f"{where}.{key}: {value!r} is not a number")


def _lookup(module: str, name: str) -> Callable | None:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _check_recipe(where: str, name: str, problems: list[str]) -> None:
    try:
        from cpzarr.profiles import RECIPES, recipe_steps
    except ImportError:  # pragma: no cover
        return
    if name in RECIPES:
        return
    try:
        recipe_steps(name)
    except ValueError as err:
        problems.append(f"{where}: {str(err).splitlines()[0]} ({'; '.join(getattr(err, 'problems', []))})")


def _expand_sweeps(section: dict, pipelines: dict, problems: list[str]) -> None:
    """Add the pipelines of ``profiles.sweeps`` (copies of one pipeline with a step's parameters varied)."""
    for i, item in enumerate(section.get("sweeps") or []):
        where = f"profiles.sweeps[{i}]"
        if not (isinstance(item, Mapping) and set(item) <= {"pipeline", "step", "values"}
                and {"pipeline", "step", "values"} <= set(item)):
            problems.append(f"{where}: expected {{pipeline: <name>, step: <step>, values: {{param: [v, ...]}}}}")
            continue
        base = pipelines.get(item["pipeline"])
        if base is None:
            problems.append(f"{where}.pipeline: {item['pipeline']!r} is not one of profiles.pipelines "
                            f"({', '.join(map(str, pipelines))})")
            continue
        values = item["values"]
        if not (isinstance(values, Mapping) and all(isinstance(v, list) and v for v in values.values())):
            problems.append(f"{where}.values: expected a mapping of parameter → non-empty list")
            continue
        from cpzarr.profiles import sweep

        steps = base if isinstance(base, str) else [
            {"step": op, **(params or {})} for step in base for op, params in step.items()]
        try:
            grid = sweep(steps, item["step"], dict(values), label=str(item["pipeline"]))
        except ValueError as err:
            problems.append(f"{where}: {str(err).splitlines()[0]}")
            continue
        for name, candidate in grid.items():
            pipelines[name] = [{s["step"]: {k: v for k, v in s.items() if k != "step"}} for s in candidate]


def _check_kwargs(where: str, params: Mapping[str, Any], module: str, name: str, problems: list[str],
                  skip: tuple = ()) -> bool:
    """Check ``params`` against the keyword parameters of ``module.name`` when it can be imported.

    Returns True when every name is a parameter (so that their values can be checked next).
    """
    func = _lookup(module, name)
    if func is None:
        return False
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return False
    allowed = [n for n, p in sig.parameters.items()
               if n not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    before = len(problems)
    for key in params:
        if key not in allowed:
            guess = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            problems.append(f"{where}.{key}: not a parameter of {module}.{name}{hint} "
                            f"(allowed: {', '.join(allowed)})")
    return len(problems) == before
