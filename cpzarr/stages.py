"""The stages of ``cpzarr run``: each one a short composition of the public API.

Every ``stage_<name>(ctx)`` reads the config from ``ctx`` and calls the same functions a user
calls from Python; nothing here computes anything the API does not expose.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cpzarr.config import Config
from cpzarr.errors import ConfigError, StoreError
from cpzarr.query import query_mask

__all__ = ["Context", "outputs_exist"]

#: Well metadata carried from the store onto every profile.
METADATA = ("compound", "dose", "moa", "control")


@dataclass
class Context:
    """What the stages of one run share: config, store, run state, Dask client, printing."""

    cfg: Config
    store: Path
    state: Any
    progress: bool = True
    echo: Any = print
    client: Any = None
    fingerprint: str | None = None
    force: bool = False
    #: Start the stage afresh instead of keeping the finished units of an earlier attempt.
    fresh: bool = False
    #: Recompute all: ``--force``, or a finished stage run again (``--from``, an earlier stage
    #: re-ran). Unlike ``fresh``, not set by a changed config alone: a stage that records what
    #: each node was made from (profiles) keeps the nodes the change does not touch.
    rerun: bool = False

    @property
    def report_dir(self) -> Path:
        return Path(self.cfg.get("output.report"))

    @property
    def tables_dir(self) -> Path:
        return self.report_dir / "tables"

    @property
    def synthetic_dir(self) -> Path:
        return self.store.parent / (self.store.name.removesuffix(".zarr") + "-images")

    def feature_sets(self) -> list[str]:
        """Names of the ``/features/<name>`` nodes this run makes (the primary one first)."""
        f = self.cfg["features"]
        names = [f["name"] or f["model"]]
        if f["compare_imagenet"] and f["model"] == "trained":
            names.append("efficientnet-lite0")
        return names

    def summary(self) -> dict:
        info = self.state.info("profiles").get("summary") or self.state.info("features").get("summary") or {}
        info = dict(info)
        feats = self.state.info("features")
        if "cells_left_out" in feats:  # cells the crops left out (crops.edge: skip), and padded
            info["cells left out (box leaves the image)"] = feats["cells_left_out"]
            info["cells zero-padded at the image edge"] = feats["cells_at_edge"] - feats["cells_left_out"]
        return info

    def headline(self) -> pd.DataFrame | None:
        path = self.tables_dir / "headline.csv"
        return pd.read_csv(path) if path.exists() else None


def outputs_exist(ctx: Context, stage: str) -> bool:
    """True when the outputs of ``stage`` are on disk (the state file alone is not trusted)."""
    from cpzarr.store import is_store, node_status

    def complete(group):
        return node_status(ctx.store, group).complete

    if stage == "ingest":
        return is_store(ctx.store)
    if stage == "locate":
        return complete("cells")
    if stage == "train":
        return (_train_dir(ctx) / "best.keras").exists()
    if stage == "features":
        return all(complete(f"features/{n}") for n in ctx.feature_sets())
    if stage == "profiles":
        return all(complete(f"profiles/{n}/aggregated") for n in ctx.feature_sets())
    if stage == "evaluate":
        return (ctx.tables_dir / "headline.csv").exists()
    if stage == "report":
        return (ctx.report_dir / "report.html").exists()
    raise ValueError(stage)


# --- ingest ---------------------------------------------------------------------------------

def stage_ingest(ctx: Context) -> dict:
    from cpzarr.ingest import ingest

    inp = ctx.cfg["input"]
    info: dict[str, Any] = {}
    if inp["synthetic"] is not None:
        from cpzarr.synthetic import make_screen

        screen = make_screen(ctx.synthetic_dir, overwrite=True, progress=ctx.progress, **inp["synthetic"])
        table, platemap = screen.load_data, screen.platemap
        info["locations"] = str(screen.locations)
        info["images"] = str(screen.root)
    else:
        table, platemap = inp["images"], inp["platemap"]
    # Same inputs: resume (complete wells are skipped). Other inputs, or --force: start afresh.
    ingest(table, ctx.store, platemap=platemap, scheduler=ctx.client, progress=ctx.progress,
           overwrite=ctx.fresh, storage_options=input_options(ctx.cfg))
    _save_config(ctx)
    return info


def input_options(cfg) -> dict | None:
    """fsspec options of the inputs given as URLs (images, platemap, locations, imported features).

    ``input.storage_options``, or, when the config gives none, the store's
    ``output.storage_options``: inputs and store usually sit on the same object store.
    """
    options = cfg.get("input.storage_options")
    return options if options is not None else cfg.get("output.storage_options")


def _local_file(ctx: Context, path) -> str:
    """A checkpoint or weights file on disk: a URL's object is copied into cpzarr's cache first.

    Training outputs sit beside the store, so a URL is read with the store's storage options
    (``output.storage_options``, else ``input.storage_options``).
    """
    from cpzarr.store import is_url, local_copy

    if not is_url(path):
        return path
    options = ctx.cfg.get("output.storage_options")
    try:
        return str(local_copy(path, options if options is not None else ctx.cfg.get("input.storage_options")))
    except FileNotFoundError as err:
        raise StoreError(f"features: {err}") from None


def _save_config(ctx: Context) -> None:
    from cpzarr.store import record_provenance

    record_provenance(ctx.store, "run", {"config": ctx.cfg.to_dict()})


# --- locate ---------------------------------------------------------------------------------

def stage_locate(ctx: Context) -> dict:
    from cpzarr.cells import detect_nuclei, write_cells
    from cpzarr.cluster import run_task
    from cpzarr.store import open_screen

    loc = ctx.cfg["locate"]
    if loc["method"] == "detect":
        cells = detect_nuclei(open_screen(ctx.store), scheduler=ctx.client, progress=ctx.progress, **loc["detect"])
        write_cells(ctx.store, cells)
        return {"cells": int(cells.sizes["cell"])}
    source = loc["path"] or ctx.state.info("ingest").get("locations")
    if not source:
        raise ConfigError("locate.path is required to import locations")
    # One task on a worker reads the location files and the store's `present` array and writes
    # /cells: neither the client's memory nor the scheduler's task count grows with the screen.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n_cells = run_task(ctx.client, "locate-import", _import_cells, ctx.store, str(source), loc["kind"],
                           input_options(ctx.cfg))
    for w in caught:
        ctx.echo(f"[locate] warning: {w.message}")
    return {"cells": n_cells}


def _import_cells(store, source: str, kind: str, storage_options: dict | None = None) -> int:
    """Import the location files ``source`` into ``store``'s ``/cells``; the number of cells."""
    from cpzarr.cells import import_locations, write_cells
    from cpzarr.store import open_screen

    cells = import_locations(open_screen(store), source, kind=kind, on_invalid="drop",
                             storage_options=storage_options)
    write_cells(store, cells)
    return int(cells.sizes["cell"])


# --- train ----------------------------------------------------------------------------------

def _train_dir(ctx: Context) -> Path:
    from cpzarr.train._run import output_folder

    return output_folder(ctx.cfg, ctx.store)


def stage_train(ctx: Context) -> dict:
    from cpzarr.store import open_screen
    from cpzarr.train import train

    crops = ctx.cfg["crops"]
    out = _train_dir(ctx)
    started = (out / "state.json").exists()
    result = train(
        open_screen(ctx.store), out, ctx.cfg["train"] or {}, box=crops["box"], channels=crops["channels"],
        edge=crops["edge"], resume=started, client=ctx.client, progress=ctx.progress,
    )
    last = result.history.iloc[-1]
    return {"checkpoint": str(result.best), "val_accuracy": float(last.get("val_accuracy", np.nan)),
            "classes": len(result.classes)}


# --- features -------------------------------------------------------------------------------

def stage_features(ctx: Context) -> dict:
    from cpzarr.store import open_screen

    f = ctx.cfg["features"]
    model = f["model"]
    if model in ("deepprofiler", "cellprofiler"):
        from cpzarr.features import import_cellprofiler, import_deepprofiler

        from cpzarr.store import is_store

        importer = import_deepprofiler if model == "deepprofiler" else import_cellprofiler
        name = f["name"] or model
        options = input_options(ctx.cfg)
        if is_store(ctx.store):
            ds = importer(f["path"], store=ctx.store, name=name, storage_options=options)
        else:
            # No images: the features are the first thing this run stores.
            ds = importer(f["path"], storage_options=options)
            _write_plain_node(ctx.store, f"features/{name}", ds)
        return {"cells": int(ds.sizes["cell"])}

    from cpzarr.crops import CropPlan
    from cpzarr.features.cnn import extract, write_features

    screen = open_screen(ctx.store)
    c = ctx.cfg["crops"]
    if c["illumination"]:
        from cpzarr import illumination
        from cpzarr.store import node_exists

        if not node_exists(ctx.store, illumination.NODE):
            illumination.write(ctx.store)
    light = True if c["illumination"] else None
    n_cells = 0
    for name in ctx.feature_sets():
        if model == "classical" and name == ctx.feature_sets()[0]:
            from cpzarr.features import classical

            # Classical measurements read raw intensities unless crops.scale says otherwise.
            scale, measure = c["scale"], classical
        elif model == "trained" and name == ctx.feature_sets()[0]:
            checkpoint = f["checkpoint"] or ctx.state.info("train").get("checkpoint")
            if not checkpoint:
                raise StoreError("features: no trained checkpoint (run the train stage first)")
            scale = c["scale"] or "minmax"
            measure = functools.partial(extract, model="trained", weights=_local_file(ctx, checkpoint), layer=f["layer"],
                                        batch_size=f["batch_size"], dtype=f["dtype"])
        else:
            arch = model if model not in ("trained", "classical") else "efficientnet-lite0"
            scale = c["scale"] or "minmax"
            weights = f["weights"] if f["weights"] in (None, "imagenet") else _local_file(ctx, f["weights"])
            measure = functools.partial(extract, model=arch, weights=weights, layer=f["layer"],
                                        batch_size=f["batch_size"], dtype=f["dtype"])
        plan = CropPlan(screen, box=c["box"], channels=c["channels"], edge=c["edge"], illumination=light,
                        scale=scale)
        feats, part = _planned_features(plan, measure)
        counts = {k: plan.attrs[k] for k in ("edge", "cells_located", "cells_at_edge", "cells_left_out",
                                              "left_out_because") if k in plan.attrs}
        feats.attrs.update(counts)  # on the node, for whoever reads it later
        # Same config as an interrupted attempt: its complete units are kept (write_features
        # refuses to resume a node of other features).
        write_features(ctx.store, name, feats, overwrite=ctx.fresh, scheduler=ctx.client,
                       progress=ctx.progress, part=part)
        n_cells = int(feats.sizes["cell"])
    ctx.echo(f"[features] {_edge_line(counts, c['box'])}")
    return {"cells": n_cells, "cells_left_out": counts.get("cells_left_out", 0),
            "cells_at_edge": counts.get("cells_at_edge", 0)}


def _planned_features(plan, measure):
    """The features of a crop plan as ``write_features`` takes them built range by range.

    Returns the node's template (coordinates, feature names, dtype, attributes; its data is
    never computed) and ``part(lo, hi)``, the features of cells ``lo:hi``, measured over the
    whole sites that hold them so that every task is the one the whole view would have made.
    """
    import dask.array as da

    if plan.n_cells == 0:
        whole = measure(plan.view())
        return whole, None
    head = measure(plan.view(*plan.chunk_range(0, 1)))
    template = xr.DataArray(
        da.zeros((plan.n_cells, head.sizes["feature"]), dtype=head.dtype, chunks=(plan.n_cells, -1)),
        dims=("cell", "feature"), coords={**plan.coords, "feature": head["feature"].values},
        name="features", attrs=dict(head.attrs),
    )

    def part(lo, hi):
        first, last = plan.chunk_range(lo, hi)
        return measure(plan.view(first, last)).isel(cell=slice(lo - first, hi - first))

    return template, part


def _edge_line(counts: dict, box: int) -> str:
    """What became of the cells whose box leaves the image, in the config's words."""
    located, at_edge = counts.get("cells_located", 0), counts.get("cells_at_edge", 0)
    if counts.get("cells_left_out"):
        return (f"{counts['cells_left_out']} of {located} cells left out: their {box}-px box leaves the "
                "image (crops.edge: skip; crops.edge: pad keeps them, zero-padded as DeepProfiler does)")
    if at_edge:
        return f"all {located} cells profiled; {at_edge} boxes leaving the image zero-padded (crops.edge: pad)"
    return f"all {located} cells profiled (no box leaves the image)"


def stage_progress(ctx: Context, stage: str) -> str | None:
    """How much of an unfinished ``stage`` is on disk, e.g. ``"3 of 4 units written"``."""
    from cpzarr.store import node_status

    if stage == "profiles":
        kept, total = _profiles_kept(ctx)
        return f"{kept} of {total} profile nodes written" if total else None
    if stage != "features":
        return None
    done = total = 0
    for name in ctx.feature_sets():
        status = node_status(ctx.store, f"features/{name}")  # the units' markers, on any store
        if not status.units:
            continue
        done, total = done + status.units - len(status.missing), total + status.units
    return f"{done} of {total} units written" if total else None


def _write_plain_node(store: Path, group: str, dataset) -> None:
    """Write a node of a store that has no images (imported features), atomically."""
    from cpzarr.store import write_node

    write_node(store, group, dataset, overwrite=True, create=True)


# --- profiles -------------------------------------------------------------------------------

def well_metadata(ctx: Context, profiles):
    """Attach the store's well metadata (compound, dose, moa, control, batch, …) to well profiles."""
    from cpzarr.export import attach_metadata
    from cpzarr.store import open_screen

    if ctx.cfg.get("input.store") is None and ctx.cfg.get("input.images") is None \
            and ctx.cfg.get("input.synthetic") is None:
        return _platemap_metadata(ctx, profiles)
    return attach_metadata(profiles, open_screen(ctx.store).to_dataset())


def _platemap_metadata(ctx: Context, profiles):
    path = ctx.cfg.get("input.platemap")
    if not path:
        return profiles
    table = pd.read_csv(path, sep=None, engine="python")
    table.columns = [c.removeprefix("Metadata_").lower() for c in table.columns]
    keys = [k for k in ("plate", "well") if k in table.columns]
    # Keep what describes a well (constant within it), not per-site columns such as image paths.
    constant = table.groupby(keys).nunique(dropna=False).le(1).all()
    wanted = [c for c in constant.index[constant] if c != "site"]
    table = table.drop_duplicates(keys).set_index(keys)
    index = pd.MultiIndex.from_arrays([profiles[k].values for k in keys]) if len(keys) > 1 \
        else pd.Index(profiles[keys[0]].values)
    picked = table.reindex(index)
    coords = {c: ("sample", picked[c].values) for c in wanted if c not in profiles.coords}
    return profiles.assign_coords(coords)


def _steps(spec: list | str) -> list | str:
    if isinstance(spec, str):  # a recipe name: profiles_mad_int_featselect_harmony
        return spec
    return [(op, dict(params or {})) for step in spec for op, params in step.items()]


#: The pipeline comparison of a run (``profiles.compare``), one row per feature set × pipeline.
COMPARISON_TABLE = "pipeline_comparison.csv"


def stage_profiles(ctx: Context) -> dict:
    """Aggregate, then each pipeline and its consensus, each one task on the run's cluster.

    Every step reads its input node from the store and writes its output node there, so the
    client holds no table; fitted matrices (a 6,400² whitening matrix is 330 MB) stay on the
    worker that fitted them. With ``profiles.compare`` each pipeline's task also returns its
    metrics, and the comparison is written to the tables (``COMPARISON_TABLE``).

    A node is kept, not recomputed, when it is complete and its record (``MADE_FROM``) says it
    was made from the very write of its input node now in the store and with the step options
    of this config; a recomputed node makes every node downstream of it stale. An interrupted
    stage thus resumes, and a changed pipeline recomputes that pipeline and its consensus only.
    ``--force`` and re-running a finished stage (``--from``, an earlier stage re-ran)
    recompute every node.
    """
    from cpzarr.cluster import run_task
    from cpzarr.profiles import rank_pipelines

    p = ctx.cfg["profiles"]
    remote = _remote(ctx)
    summary: dict[str, Any] = {}
    compare = p.get("compare")
    compare = {} if compare is True else (dict(compare) if compare else None)
    metrics = None if compare is None else {k: v for k, v in compare.items() if k != "criterion"}
    fresh = ctx.force or ctx.rerun
    rows = []
    kept, made = [], []

    def step(task: str, group: str, made_from: dict, func, *args):
        """The record of ``group``: kept when it matches ``made_from``, else made by ``func``."""
        record = None if fresh else _kept_record(ctx.store, group, made_from)
        if record is not None:
            kept.append(group)
            return record
        made.append(group)
        return _naming_warnings(group, run_task, ctx.client, task, func, remote, made_from, *args)

    for name in ctx.feature_sets():
        agg = step(f"aggregate-{name}", f"profiles/{name}/aggregated",
                   {"input": _features_token(ctx, name), "step": {"aggregate": p["aggregate"]}},
                   _aggregate_node, name)
        summary.update(agg["result"])
        for pname, spec in p["pipelines"].items():
            node = f"profiles/{name}/{pname}"
            out = step(f"normalize-{name}-{pname}", node,
                       {"input": agg["write"], "step": {"pipeline": spec}}, _pipeline_node, name, pname, spec,
                       metrics)
            if metrics is not None:
                done = out.get("result") or {}
                row = done.get("row") if _canonical(done.get("metrics")) == _canonical(metrics) else None
                if row is None:  # kept, scored with other options: score it again (cheap)
                    row = _naming_warnings(node, run_task, ctx.client, f"score-{name}-{pname}", _pipeline_row,
                                           remote, node, metrics)
                rows.append({"pipeline": pname if len(ctx.feature_sets()) == 1 else f"{name} {pname}", **row})
            if p["consensus"]:
                step(f"consensus-{name}-{pname}", f"{node}_consensus",
                     {"input": out["write"], "step": {"consensus": p["consensus"]}}, _consensus_node, name, pname)
    if kept and ctx.echo:
        ctx.echo(f"[profiles] kept {len(kept)} complete node(s) made from the same inputs and options; "
                 f"computed {len(made)}")
    if rows:
        table = rank_pipelines(rows, compare.get("criterion", "score"))
        ctx.tables_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(ctx.tables_dir / COMPARISON_TABLE, index=False)
        summary["chosen_pipeline"] = table.attrs["chosen"]
    return {"summary": summary}


def _profiles_kept(ctx: Context) -> tuple[int, int]:
    """Profile nodes of this config a re-run would keep, and all of them (the stage's chain
    walked as :func:`stage_profiles` walks it, computing nothing)."""
    p = ctx.cfg["profiles"]
    kept = total = 0
    for name in ctx.feature_sets():
        agg = _kept_record(ctx.store, f"profiles/{name}/aggregated",
                           {"input": _features_token(ctx, name), "step": {"aggregate": p["aggregate"]}})
        total += 1 + len(p["pipelines"]) * (2 if p["consensus"] else 1)
        if agg is None:
            continue
        kept += 1
        for pname, spec in p["pipelines"].items():
            out = _kept_record(ctx.store, f"profiles/{name}/{pname}", {"input": agg["write"], "step": {"pipeline": spec}})
            if out is None:
                continue
            kept += 1
            if p["consensus"] and _kept_record(ctx.store, f"profiles/{name}/{pname}_consensus",
                                               {"input": out["write"], "step": {"consensus": p["consensus"]}}):
                kept += 1
    return kept, total


def _naming_warnings(where: str, func, *args):
    """``func(*args)``; the warnings it raises are raised again with ``where`` (the node being
    made, which names the feature set and the pipeline) in front of their message."""
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return func(*args)
    finally:  # outside the recording, so that they reach the run's own printing
        for w in caught:
            try:
                named = w.category(f"{where}: {w.message}")
            except Exception:  # noqa: BLE001 - a warning class taking other arguments
                named = UserWarning(f"{where}: {w.message}")
            warnings.warn(named, stacklevel=3)


#: Attribute of a profiles node written by ``cpzarr run``: JSON of what it was made from
#: (``input``: the write of its input node, ``step``: the step's options), this write's id
#: (``write``) and what the step returned (``result``: summary, comparison row).
MADE_FROM = "cpzarr_made_from"


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _kept_record(store, group: str, made_from: dict) -> dict | None:
    """The record of the complete node ``group`` when it was made as ``made_from`` says, else None."""
    from cpzarr.store import as_location, node_status

    if not node_status(store, group).complete:
        return None
    try:
        meta = json.loads((as_location(store) / group / "zarr.json").read_text())
        record = json.loads(meta.get("attributes", {})[MADE_FROM])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict) or "write" not in record:
        return None
    same = all(_canonical(record.get(k)) == _canonical(made_from[k]) for k in ("input", "step"))
    return record if same else None


def _features_token(ctx: Context, name: str) -> str:
    """Identifies the write of ``features/<name>`` in the store: its provenance record (written
    with a time by each write) and the features stage's record in the run state."""
    import hashlib

    from cpzarr.store import read_provenance

    try:
        record = read_provenance(ctx.store).get(f"features/{name}")
    except StoreError:
        record = None
    stage = {k: v for k, v in ctx.state.info("features").items() if k in ("fingerprint", "finished")}
    return hashlib.sha256(_canonical([record, stage]).encode()).hexdigest()[:16]


def _write_made(profiles, store, group: str, made_from: dict, result) -> dict:
    """Write ``profiles`` as ``group`` with its record; the record."""
    import uuid

    from cpzarr.profiles import write_profiles

    record = {**made_from, "write": uuid.uuid4().hex, "result": result}
    text = json.dumps(record, default=str)
    write_profiles(profiles.assign_attrs({MADE_FROM: text}), store, node=group)
    return json.loads(text)  # as a kept node's record reads: the same row either way


def _remote(ctx: Context) -> Context:
    """What a stage's tasks need of ``ctx`` (no client, no printing), to ship to a worker."""
    from dataclasses import replace

    return replace(ctx, client=None, echo=None)


def _aggregate_node(ctx: Context, made_from: dict, name: str) -> dict:
    """Well profiles of ``features/<name>`` with the store's metadata, written; its record, whose
    ``result`` is their summary."""
    from cpzarr.profiles import aggregate
    from cpzarr.store import open_node

    feats = open_node(ctx.store, f"features/{name}")
    well = aggregate(feats["features"], operation=ctx.cfg["profiles"]["aggregate"])
    well = well_metadata(ctx, well).compute()
    summary = dict(
        plates=int(np.unique(well["plate"].values).size),
        wells=int(well.sizes["sample"]),
        cells=int(well["cell_count"].sum()) if "cell_count" in well.coords else None,
        features=int(well.sizes["feature"]),
    )
    if "compound" in well.coords:
        summary["treatments"] = int(np.unique(well["compound"].values.astype(str)).size)
    return _write_made(well, ctx.store, f"profiles/{name}/aggregated", made_from, summary)


def _pipeline_node(ctx: Context, made_from: dict, name: str, pname: str, spec: list | str,
                   metrics: dict | None = None) -> dict:
    """One profile pipeline (normalize, feature_select, spherize …) of the well profiles, written;
    its record, whose ``result`` holds, with ``metrics`` (``profiles.compare`` options less the
    criterion), its comparison row."""
    from cpzarr.profiles import pipeline, read_profiles

    well = read_profiles(ctx.store, node=f"profiles/{name}/aggregated").load()
    out = (pipeline(well, _steps(spec)) if spec else well).compute()
    result = None if metrics is None else {"metrics": metrics, "row": _comparison_row(out, metrics)}
    return _write_made(out, ctx.store, f"profiles/{name}/{pname}", made_from, result)


def _comparison_row(out, metrics: dict) -> dict:
    from cpzarr.profiles import pipeline_metrics

    return {**pipeline_metrics(out, **metrics), "steps": out.attrs.get("cpzarr_pipeline", "[]")}


def _pipeline_row(ctx: Context, group: str, metrics: dict) -> dict:
    """The comparison row of the pipeline node ``group`` as written."""
    from cpzarr.profiles import read_profiles

    return _comparison_row(read_profiles(ctx.store, node=group).load(), metrics)


def _consensus_node(ctx: Context, made_from: dict, name: str, pname: str) -> dict:
    """Treatment profiles of one pipeline's output, written; its record."""
    from cpzarr.profiles import consensus, read_profiles

    out = read_profiles(ctx.store, node=f"profiles/{name}/{pname}").load()
    cons = consensus(out, **ctx.cfg["profiles"]["consensus"])
    return _write_made(cons.compute(), ctx.store, f"profiles/{name}/{pname}_consensus", made_from, None)


# --- evaluate -------------------------------------------------------------------------------

def profile_sets(ctx: Context, level: str | None = None) -> dict[str, Any]:
    """``{label: profiles}`` for every feature set × pipeline at the evaluation level."""
    from cpzarr.profiles import read_profiles

    level = level or ctx.cfg.get("evaluate.level")
    sets = {}
    for name in ctx.feature_sets():
        for pname in ctx.cfg.get("profiles.pipelines"):
            node = f"profiles/{name}/{pname}"
            if level == "consensus" and ctx.cfg.get("profiles.consensus"):
                node += "_consensus"
            label = pname if len(ctx.feature_sets()) == 1 else f"{name} {pname}"
            sets[label] = read_profiles(ctx.store, node=node)
    return sets


def stage_evaluate(ctx: Context) -> dict:
    """Every profile set through :func:`cpzarr.evaluate.evaluate` (the code path of
    ``cpzarr evaluate``), one task per set on the run's cluster: its tables, and its headline
    rows labelled by profile set, written here."""
    from cpzarr import evaluate as ev
    from cpzarr.cluster import run_task

    e = ctx.cfg["evaluate"]
    ctx.tables_dir.mkdir(parents=True, exist_ok=True)
    headlines = []
    results: dict[str, dict[str, pd.DataFrame]] = {}
    for label, prof in profile_sets(ctx).items():
        set_headline, res = run_task(ctx.client, f"evaluate-{_slug(label)}", _evaluate_set, prof,
                                     label, e)
        headlines.append(set_headline)
        results[label] = res
    if "batch_enrichment" in e["metrics"]:
        for label, prof in profile_sets(ctx, level="well").items():
            if ev.resolve_name(prof, e["batch"]) is None or ev.resolve_name(prof, "control") is None:
                continue
            be = run_task(ctx.client, f"evaluate-batch-{_slug(label)}", _batch_enrichment, prof,
                          label, e)
            results.setdefault(label, {})["batch_enrichment"] = be
            top = ev.headline_percentile(be)
            headlines.append(pd.DataFrame({
                "metric": [f"DMSO batch enrichment@{top['percentile']:g}"],
                "value": [float(top["odds_ratio"])], "profiles": [label]}))
    for label, res in results.items():
        for metric, table in res.items():
            table.to_csv(ctx.tables_dir / f"{_slug(label)}.{metric}.csv", index=False)
    headline = (pd.concat(headlines, ignore_index=True) if headlines
                else pd.DataFrame(columns=["profiles", "metric", "value"]))
    headline = headline[["profiles", "metric", "value"]]
    headline.to_csv(ctx.tables_dir / "headline.csv", index=False)
    (ctx.tables_dir / "sets.json").write_text(json.dumps({_slug(k): k for k in results}))
    return {}


def _evaluate_options(e: dict) -> dict:
    """cpzarr.evaluate.evaluate's keyword arguments from the evaluate config section."""
    return dict(
        k=e["k"], percentiles=e["percentiles"], null_size=e.get("null_size", 10_000),
        seed=e.get("seed", 0), threshold=e.get("threshold", 0.05),
    )


def _evaluate_set(prof, label: str, e: dict) -> tuple[pd.DataFrame, dict]:
    """Headline rows and metric tables of one profile set (run as one task)."""
    from cpzarr import evaluate as ev

    groups = e["groups"]
    mask = f"~({e['exclude']})" if e["exclude"] else None
    prof = prof.load()
    res: dict[str, pd.DataFrame] = {}
    headline = pd.DataFrame(columns=["metric", "value", "profiles"])
    wanted = [m for m in ev.METRICS if m in e["metrics"]]
    if wanted:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            out = ev.evaluate(prof, groups, mask=mask, metrics=wanted, **_evaluate_options(e))
        for warning in caught:  # say which profile set a data-size warning is about
            warnings.warn(f"evaluate {label}: {warning.message}", warning.category, stacklevel=2)
        res.update({k: v for k, v in out.items() if k not in ("hits", "headline", "summary")})
        headline = out["headline"].assign(profiles=label)
    if "replicate_reproducibility" in e["metrics"]:
        score, medians = ev.replicate_reproducibility(prof, groups, mask=mask)
        res["replicate_reproducibility"] = medians.assign(score=score)
    return headline, res


def _batch_enrichment(prof, label: str, e: dict) -> pd.DataFrame:
    """DMSO batch enrichment of one set of well profiles (run as one task)."""
    from cpzarr import evaluate as ev

    prof = prof.load()
    n_controls = int((ev.sample_table(prof)[ev.resolve_name(prof, "control")] == "negcon").sum())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        wanted = ev.default_percentiles(n_controls, e["percentiles"])
    for warning in caught:
        warnings.warn(f"DMSO batch enrichment {label}: {warning.message}", warning.category,
                      stacklevel=2)
    return ev.batch_enrichment(prof, batch=e["batch"], percentiles=wanted)


def _headline_percentile(table: pd.DataFrame, min_pairs: int = 20) -> pd.Series:
    """Kept for callers of the old name: :func:`cpzarr.evaluate.headline_percentile`."""
    from cpzarr.evaluate import headline_percentile

    return headline_percentile(table, min_pairs)


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)


def _load_results(ctx: Context) -> dict[str, dict[str, pd.DataFrame]]:
    labels = json.loads((ctx.tables_dir / "sets.json").read_text())
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for path in sorted(ctx.tables_dir.glob("*.csv")):
        if path.name in ("headline.csv", COMPARISON_TABLE):
            continue
        slug, metric = path.stem.split(".", 1)
        out.setdefault(labels.get(slug, slug), {})[metric] = pd.read_csv(path)
    return out


# --- report ---------------------------------------------------------------------------------

def stage_report(ctx: Context) -> dict:
    from cpzarr.evaluate import plots
    from cpzarr.report import is_count, write_report
    from cpzarr.run import versions

    results = _load_results(ctx)
    headline = pd.read_csv(ctx.tables_dir / "headline.csv")
    groups = ctx.cfg.get("evaluate.groups")
    figures: dict[str, list] = {}
    tables: dict[str, list] = {}
    notes: dict[str, list[str]] = {}
    sets = profile_sets(ctx, level="well")  # lazy: each helper loads one set at a time

    headline = pd.concat([headline, _report_replicates(ctx, sets, figures, tables, notes)],
                         ignore_index=True)
    if headline["profiles"].nunique() > 1:
        # Precision/Recall@K have their own curves below; the bars compare the summary metrics.
        key = headline[~headline["metric"].str.match(r"(precision|recall)@\d")
                       & ~headline["metric"].map(is_count)]
        figures["comparison"] = [("Summary metrics of each profile pipeline (inf drawn to the "
                                  "panel's edge and labelled)", plots.compare(key))]
    comparison = ctx.tables_dir / COMPARISON_TABLE
    if comparison.exists():  # profiles.compare: the pipelines scored and the one chosen
        table = pd.read_csv(comparison)
        tables["comparison"] = [("Pipelines scored by profiles.compare (replicate mAP and MOA mAP: higher "
                                 "is better; DMSO batch enrichment: 1 means no batch effect; the chosen "
                                 "pipeline has chosen = True)", table)]
        scores = table.melt(id_vars="pipeline", value_vars=[c for c in ("replicate_map", "moa_map",
                                                                          "batch_enrichment", "score")
                                                             if c in table],
                            var_name="metric", value_name="value").rename(columns={"pipeline": "profiles"})
        figures.setdefault("comparison", []).append(
            ("Pipelines scored by profiles.compare", plots.compare(scores)))
    summary = ctx.summary()
    _report_quality(ctx, summary, figures, tables, notes)
    _report_crops(ctx, figures, notes)
    _report_map(results, groups, figures, tables, notes)

    def collect(metric):
        return {label: res[metric] for label, res in results.items() if metric in res}

    for metric, section, caption, plot in (
        ("enrichment", "enrichment", "Enrichment odds ratio vs percentile (groups: {g})", plots.enrichment),
        ("batch_enrichment", "enrichment", "DMSO batch enrichment (lower = weaker batch effect)",
         plots.enrichment),
        ("precision_recall", "precision_recall", "Precision@K and Recall@K (groups: {g})", plots.precision_recall),
        ("hitk", "hitk", "Hit@K normalized accumulated score (groups: {g})", plots.hitk),
    ):
        data = collect(metric)
        if data:
            figures.setdefault(section, []).append((caption.format(g=groups), plot(data)))
    if any("enrichment" in res or "batch_enrichment" in res for res in results.values()):
        notes["enrichment"] = [
            "An odds ratio is infinite when no pair of different groups lies above the percentile's "
            "threshold (common on small screens); such points are drawn as ▲ labelled inf at the top "
            "of the axes, and the legend counts them. Full tables: tables/*.enrichment.csv."]
    _report_profiles(ctx, sets, figures, notes)
    train_dir = _train_dir(ctx)
    if (train_dir / "history.png").exists():
        figures["training"] = [("Training and validation loss / accuracy per epoch",
                                (train_dir / "history.png").read_bytes())]

    config = ctx.cfg.to_dict()
    provenance = {
        "created": pd.Timestamp.now().isoformat(timespec="seconds"),
        "store": str(ctx.store),
        "versions": versions(),
        "config": config,
    }
    records = _store_records(ctx, config)
    if records:
        provenance["store records"] = records
    # the stages' times as recorded; the report's own is not known while its page is written, and
    # the one recorded is an earlier report's
    timings = {s: v.get("seconds", float("nan")) for s, v in ctx.state.data.get("stages", {}).items()
               if s != "report"}
    write_report(
        ctx.report_dir,
        title=f"cpzarr report: {ctx.cfg['name']}",
        summary=summary,
        metrics=headline,
        figures=figures,
        provenance=provenance,
        timings=timings,
        tables=tables,
        notes=notes,
    )
    return {}


def _store_records(ctx: Context, config: dict) -> dict:
    """The store's provenance records, less the run's config when it is the one shown already."""
    from cpzarr.store import read_provenance

    try:
        records = dict(read_provenance(ctx.store))
    except StoreError:
        return {}
    run = records.get("run")
    if isinstance(run, dict) and run.get("config") == config:
        run = {k: v for k, v in run.items() if k != "config"}
        if run:
            records["run"] = run
        else:
            records.pop("run")
    return records


def _report_replicates(ctx: Context, sets: dict, figures: dict, tables: dict, notes: dict) -> pd.DataFrame:
    """Replicate reproducibility of each well-level profile set; its headline rows."""
    from cpzarr.cluster import run_task
    from cpzarr.evaluate import plots
    from cpzarr.report import percent_replicating

    cons = ctx.cfg.get("profiles.consensus") or {}
    columns = cons.get("replicate_columns") or ["compound", "dose"]
    rows, medians, failed = [], {}, []
    for label, prof in sets.items():
        present = [c for c in columns if c in prof.coords]
        if not present:
            failed.append(f"{label}: no replicate columns {columns} on the profiles")
            continue
        # all pairs of wells: a reduction in blocks, on a worker like evaluate's, not in the client
        score, med = run_task(ctx.client, f"replicates-{_slug(label)}", _replicates_of_set, prof, present,
                              ctx.cfg.get("evaluate.exclude"))
        if isinstance(med, str):
            failed.append(f"{label}: {med}")
            continue
        medians[label] = med
        rows.append((label, "percent replicating", percent_replicating(med)))
        rows.append((label, "replicate pairs above null", score))
    if medians:
        threshold = {label: float(m["threshold"].iloc[0]) for label, m in medians.items() if len(m)}
        tables["replicates"] = [("", pd.DataFrame({
            "profiles": [r[0] for r in rows[::2]],
            "replicate groups": [len(medians[r[0]]) for r in rows[::2]],
            "null threshold (95th pct of non-replicate pairs)": [threshold.get(r[0], np.nan) for r in rows[::2]],
            "percent replicating": [r[2] for r in rows[::2]],
            "replicate pairs above null": [r[2] for r in rows[1::2]],
        }))]
        figures["replicates"] = [(
            "Median correlation of each replicate group's wells (well-level profiles, "
            f"replicates = same {' + '.join(columns)}); dashed: null threshold", plots.replicate_medians(medians))]
        notes["replicates"] = [
            "Percent replicating (Cytominer-eval): the share of replicate groups whose median pairwise "
            "correlation is above the 95th percentile of correlations between non-replicate wells; "
            "replicate pairs above null: the same, counted over pairs "
            "(cpzarr.evaluate.replicate_reproducibility). Controls left out as in evaluate.exclude."]
    if failed:
        notes.setdefault("replicates", []).append("Not computed for " + "; ".join(failed))
    return pd.DataFrame(rows, columns=["profiles", "metric", "value"])


def _replicates_of_set(prof, columns: list, exclude: str | None):
    """:func:`cpzarr.evaluate.replicate_reproducibility` of one profile set with ``exclude``
    left out (run as one task); ``(None, message)`` when it cannot be computed."""
    from cpzarr.errors import InputError
    from cpzarr.evaluate import replicate_reproducibility, sample_table

    try:
        prof = prof.load()
        mask = None if not exclude else ~query_mask(exclude, sample_table(prof), what="evaluate.exclude")
        return replicate_reproducibility(prof, columns, mask=mask)
    except InputError as err:
        return None, str(err)


def _report_quality(ctx: Context, summary: dict, figures: dict, tables: dict, notes: dict) -> None:
    """Cells per well (heat map and per-plate table) and the cells located but not profiled."""
    from cpzarr.report import cells_per_well_summary, plot_cells_per_well
    from cpzarr.store import node_exists, open_node

    counts = _cells_per_well(ctx)
    if counts is not None:
        figures["cells"] = [("Cells per well (plate layout)", plot_cells_per_well(counts))]
        tables["cells"] = [("Cells per well, by plate", cells_per_well_summary(counts))]
    if not node_exists(ctx.store, "cells"):
        return
    cells = open_node(ctx.store, "cells")
    located = int(cells.sizes["cell"])
    summary["cells located"] = located
    try:
        dropped = json.loads(cells.attrs.get("dropped") or "{}")
    except (TypeError, ValueError):
        dropped = {}
    if isinstance(dropped, dict) and dropped:
        n = sum(int(p.get("count", 0)) for p in dropped.values() if isinstance(p, dict))
        notes.setdefault("summary", []).append(
            f"locate: {n} invalid locations left out ({', '.join(map(str, dropped))})")
    for name in ctx.feature_sets():
        if not node_exists(ctx.store, f"features/{name}"):
            continue
        node = open_node(ctx.store, f"features/{name}")
        profiled = int(node.sizes["cell"])
        left = located - profiled
        key = "cells profiled" if len(ctx.feature_sets()) == 1 else f"cells profiled ({name})"
        summary[key] = profiled
        # What the features stage recorded about cells it left out or padded (any such count).
        recorded = {k: v for k, v in node.attrs.items()
                    if any(w in k.lower() for w in ("left_out", "leftout", "skipped", "dropped", "edge"))
                    and v not in ("", None)}
        line = (f"features/{name}: {profiled} of {located} located cells profiled, "
                f"{left} left out ({left / located:.1%})" if located else f"features/{name}: no cells")
        edge = ctx.cfg.get("crops.edge")
        if left and edge == "skip":
            line += "; crops.edge is 'skip', so cells whose box leaves the image are not profiled"
        elif edge == "pad":
            line += "; crops.edge is 'pad': boxes that leave the image are zero-padded"
        if recorded:
            line += "; recorded by the features stage: " + ", ".join(f"{k} = {v}" for k, v in recorded.items())
        notes.setdefault("summary", []).append(line)


def _report_crops(ctx: Context, figures: dict, notes: dict, per_group: int = 4) -> None:
    """A montage of a few cells per treatment, read lazily from the store."""
    from cpzarr.cluster import run_task
    from cpzarr.crops import crops
    from cpzarr.errors import CpzarrError, InputError
    from cpzarr.report import plot_crop_montage
    from cpzarr.store import node_exists, open_screen

    if not node_exists(ctx.store, "cells"):
        return
    try:
        screen = open_screen(ctx.store)
        if "images" not in screen.to_dataset(inherit=False):
            return
        box = int(ctx.cfg.get("crops.box"))
        by = "compound"
        # the draw reads the whole cell table: on a worker, which returns the few cells drawn
        drawn = run_task(ctx.client, "report-montage-cells", _montage_cells, ctx.store, by, per_group, box)
        if isinstance(drawn, str):
            raise InputError(drawn)
        view = crops(screen, box=box, edge="pad", cells=drawn[["plate", "well", "site", "x", "y"]])
        label = drawn[by].astype(str)
        if "moa" in drawn.columns:
            label = label + np.where(drawn["moa"].astype(str) != "", " · " + drawn["moa"].astype(str), "")
        view = view.assign_coords({by: ("cell", label.to_numpy()[view["cell"].values])}).compute()
        figure = plot_crop_montage(view, by=by)
    except (CpzarrError, ValueError, KeyError) as err:
        notes["crops"] = [f"No sample cells: {err}"]
        return
    rgb = ", ".join(f"{c} {ch}" for c, ch in zip(("red", "green", "blue"), figure.cpzarr_channels))
    figures["crops"] = [(f"{per_group} random cells per {by} ({box}-px boxes; {rgb}; each channel "
                         "scaled to its 0.5–99.5 percentiles over the montage)", figure)]


def _montage_cells(store, by, per_group, box):
    """:func:`cpzarr.report.montage_cells` of the store (one task); the error's text when it
    cannot draw."""
    from cpzarr.errors import CpzarrError
    from cpzarr.report import montage_cells
    from cpzarr.store import open_screen

    try:
        return montage_cells(open_screen(store), by=by, per_group=per_group, box=box)
    except (CpzarrError, ValueError, KeyError) as err:
        return str(err)


def _report_map(results: dict, groups, figures: dict, tables: dict, notes: dict) -> None:
    """Per-group mAP tables, and mAP against −log10 p when the tables carry p-values.

    Any evaluation table with a mAP column per group counts (``mean_average_precision`` as
    cpzarr and copairs write it), whatever its metric's name (``mean_average_precision``,
    ``phenotypic_activity``, …); p-values are ``corrected_p_value`` or ``p_value``.
    """
    from cpzarr.evaluate.plots import fraction_retrieved, map_columns, map_pvalues

    metrics = list(dict.fromkeys(m for res in results.values() for m, t in res.items() if map_columns(t)))
    for metric in metrics:
        per_set = {label: res[metric] for label, res in results.items() if metric in res}
        name = metric.replace("_", " ")
        wide = _map_wide(per_set)
        tables.setdefault("map", []).append((f"{name} per group (groups: {groups}), best first", wide))
        with_p = {label: t for label, t in per_set.items() if map_columns(t)[1] is not None}
        if with_p:
            figures.setdefault("map", []).append(
                (f"{name}: mAP vs −log10 p per group; dashed line p = 0.05", map_pvalues(with_p)))
            retrieved = ", ".join(f"{label} {fraction_retrieved(t):.0%}" for label, t in with_p.items())
            notes.setdefault("map", []).append(f"{name}: fraction retrieved (corrected p < 0.05): {retrieved}.")
        else:
            notes.setdefault("map", []).append(
                f"{name}: the evaluation tables hold no p-values, so no mAP vs p plot.")


def _map_wide(per_set: dict) -> pd.DataFrame:
    """One row per group: its keys, then mAP, p-value and retrieved per profile set."""
    from cpzarr.evaluate.plots import map_columns

    derived = {"n_queries", "mean_average_precision", "mAP", "map", "p_value", "corrected_p_value",
               "below_p", "below_corrected_p"}
    wide = None
    for label, table in per_set.items():
        m_col, p_col = map_columns(table)
        keys = [c for c in table.columns if c not in derived
                and not pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
        part = table[keys].astype(str).copy()
        if "n_queries" in table.columns and wide is None:
            part["queries"] = table["n_queries"].to_numpy()
        part[f"{label} mAP"] = table[m_col].to_numpy(dtype=float)
        if p_col is not None:
            part[f"{label} {'corrected p' if p_col == 'corrected_p_value' else 'p'}"] = table[p_col].to_numpy(float)
        if "below_corrected_p" in table.columns:
            part[f"{label} retrieved"] = table["below_corrected_p"].astype(bool).to_numpy()
        wide = part if wide is None else wide.merge(part, on=keys, how="outer")
    m_cols = [c for c in wide.columns if c.endswith(" mAP")]
    order = wide[m_cols].mean(axis=1).sort_values(ascending=False, kind="stable").index
    return wide.loc[order].reset_index(drop=True)


def _report_profiles(ctx: Context, sets: dict, figures: dict, notes: dict, max_heatmaps: int = 4) -> None:
    """PCA of the well profiles and the similarity of treatments (consensus when made)."""
    from cpzarr.cluster import run_task

    pcas = []
    for label, prof in sets.items():
        color = tuple(c for c in ("batch", "control") if c in prof.coords)
        if not color:
            continue
        # the profiles are read, fitted and drawn on a worker; the client gets the picture
        figure, clipped = run_task(ctx.client, f"report-pca-{_slug(label)}", _plot_on_worker, "pca", prof,
                                   color=color)
        if figure is None:
            notes.setdefault("pca", []).append(f"{label}: no PCA: {clipped}")
            continue
        extra = f"; {clipped} samples beyond the axes, on the border" if clipped else ""
        pcas.append((f"PCA of well profiles: {label}{extra}", figure))
    if pcas:
        figures["pca"] = pcas
        notes["pca"] = ["Axes are robust: each spans the 5th–95th percentiles of its scores, widened "
                        "by half that range on each side (never beyond the data), so a few extreme wells "
                        "do not squash the rest; wells beyond are drawn as hollow triangles on the "
                        "border and counted in the panel's title."]
    level = "consensus" if ctx.cfg.get("profiles.consensus") else "well"
    heat = []
    labels = list(profile_sets(ctx, level=level).items())
    for label, prof in labels[:max_heatmaps]:
        figure, problem = run_task(ctx.client, f"report-similarity-{_slug(label)}", _plot_on_worker,
                                   "similarity_heatmap", prof)
        if figure is None:
            notes.setdefault("similarity", []).append(f"{label}: no heat map: {problem}")
        else:
            heat.append((f"Pearson correlation of {level} profiles: {label}, ordered by MOA", figure))
    if heat:
        figures["similarity"] = heat
    if len(labels) > max_heatmaps:
        notes.setdefault("similarity", []).append(
            f"{len(labels) - max_heatmaps} more profile sets not drawn ({max_heatmaps} at most).")


def _plot_on_worker(plot: str, prof, **options):
    """``cpzarr.evaluate.plots.<plot>`` of the profiles ``prof`` read here, as the report's PNG
    (one task): ``(png, samples clipped at the axes)``, or ``(None, why not)``."""
    import matplotlib.pyplot as plt

    from cpzarr.errors import InputError
    from cpzarr.evaluate import plots
    from cpzarr.report import _png_bytes

    try:
        figure = getattr(plots, plot)(prof.load(), **options)
    except InputError as err:
        return None, str(err)
    try:
        return _png_bytes(figure), len(getattr(figure, "cpzarr_clipped", ()))
    finally:
        plt.close(figure)


def _cells_per_well(ctx: Context):
    """Cells per (plate, well) over every well of the store (0 where a well has no cell),
    counted on a worker (the cell table never comes to the client)."""
    from cpzarr.cluster import run_task
    from cpzarr.store import node_exists

    if not node_exists(ctx.store, "cells"):
        return None
    return run_task(ctx.client, "report-cells-per-well", _count_cells, ctx.store)


def _count_cells(store):
    """The body of :func:`_cells_per_well` (one task)."""
    import xarray as xr

    from cpzarr.store import open_node, open_screen

    cells = open_node(store, "cells")
    table = pd.DataFrame({"plate": np.asarray(cells["plate"].values, dtype=object),
                          "well": np.asarray(cells["well"].values, dtype=object)})
    root = open_screen(store)
    plates = [str(p) for p in root["plate"].values]
    wells = [str(w) for w in root["well"].values]
    grid = table.groupby(["plate", "well"]).size().unstack(fill_value=0)
    grid = grid.reindex(index=plates, columns=wells, fill_value=0).astype(float)
    return xr.DataArray(grid.values, dims=("plate", "well"), coords={"plate": plates, "well": wells})
