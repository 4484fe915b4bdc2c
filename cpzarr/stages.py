"""The stages of ``cpzarr run``: each one a short composition of the public API.

Every ``stage_<name>(ctx)`` reads the config from ``ctx`` and calls the same functions a user
calls from Python; nothing here computes anything the API does not expose.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
        return dict(info)

    def headline(self) -> pd.DataFrame | None:
        path = self.tables_dir / "headline.csv"
        return pd.read_csv(path) if path.exists() else None


def outputs_exist(ctx: Context, stage: str) -> bool:
    """True when the outputs of ``stage`` are on disk (the state file alone is not trusted)."""
    from cpzarr.store import is_store, node_exists

    if stage == "ingest":
        return is_store(ctx.store)
    if stage == "locate":
        return node_exists(ctx.store, "cells")
    if stage == "train":
        return (_train_dir(ctx) / "best.keras").exists()
    if stage == "features":
        return all(node_exists(ctx.store, f"features/{n}") for n in ctx.feature_sets())
    if stage == "profiles":
        return all(node_exists(ctx.store, f"profiles/{n}/aggregated") for n in ctx.feature_sets())
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
    previous = ctx.state.info("ingest").get("fingerprint")
    overwrite = ctx.force or (previous is not None and previous != ctx.fingerprint)
    ingest(table, ctx.store, platemap=platemap, scheduler=ctx.client, progress=ctx.progress,
           overwrite=overwrite)
    _save_config(ctx)
    return info


def _save_config(ctx: Context) -> None:
    from cpzarr.store import record_provenance

    record_provenance(ctx.store, "run", {"config": ctx.cfg.to_dict()})


# --- locate ---------------------------------------------------------------------------------

def stage_locate(ctx: Context) -> dict:
    from cpzarr.cells import detect_nuclei, import_locations, write_cells
    from cpzarr.store import open_screen

    loc = ctx.cfg["locate"]
    screen = open_screen(ctx.store)
    if loc["method"] == "detect":
        cells = detect_nuclei(screen, scheduler=ctx.client, progress=ctx.progress, **loc["detect"])
    else:
        source = loc["path"] or ctx.state.info("ingest").get("locations")
        if not source:
            raise ConfigError("locate.path is required to import locations")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cells = import_locations(screen, source, kind=loc["kind"], on_invalid="drop")
        for w in caught:
            ctx.echo(f"[locate] warning: {w.message}")
    write_cells(ctx.store, cells)
    return {"cells": int(cells.sizes["cell"])}


# --- train ----------------------------------------------------------------------------------

def _train_dir(ctx: Context) -> Path:
    return ctx.store.parent / (ctx.store.name.removesuffix(".zarr") + "-train")


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
        if is_store(ctx.store):
            ds = importer(f["path"], store=ctx.store, name=name)
        else:
            # No images: the features are the first thing this run stores.
            ds = importer(f["path"])
            _write_plain_node(ctx.store, f"features/{name}", ds)
        return {"cells": int(ds.sizes["cell"])}

    from cpzarr.crops import crops as make_crops
    from cpzarr.features.cnn import extract, write_features

    screen = open_screen(ctx.store)
    c = ctx.cfg["crops"]
    n_cells = 0
    for name in ctx.feature_sets():
        if model == "classical" and name == ctx.feature_sets()[0]:
            from cpzarr.features import classical

            view = make_crops(screen, box=c["box"], channels=c["channels"], edge=c["edge"], scale=None)
            feats = classical(view)
        elif model == "trained" and name == ctx.feature_sets()[0]:
            view = make_crops(screen, box=c["box"], channels=c["channels"], edge=c["edge"], scale="minmax")
            checkpoint = f["checkpoint"] or ctx.state.info("train").get("checkpoint")
            if not checkpoint:
                raise StoreError("features: no trained checkpoint (run the train stage first)")
            feats = extract(view, model="trained", weights=checkpoint, layer=f["layer"],
                            batch_size=f["batch_size"], dtype=f["dtype"])
        else:
            arch = model if model not in ("trained", "classical") else "efficientnet-lite0"
            view = make_crops(screen, box=c["box"], channels=c["channels"], edge=c["edge"], scale="minmax")
            feats = extract(view, model=arch, weights=f["weights"], layer=f["layer"],
                            batch_size=f["batch_size"], dtype=f["dtype"])
        write_features(ctx.store, name, feats, overwrite=True, scheduler=ctx.client, progress=ctx.progress)
        n_cells = int(feats.sizes["cell"])
    return {"cells": n_cells}


def _write_plain_node(store: Path, group: str, dataset) -> None:
    """Write a node of a store that has no images (imported features), atomically by rename."""
    import os
    import shutil
    import tempfile

    import zarr

    store.mkdir(parents=True, exist_ok=True)
    parent = store
    zarr.open_group(parent, mode="a", zarr_format=3)
    for part in group.split("/")[:-1]:
        parent = parent / part
        zarr.open_group(parent, mode="a", zarr_format=3)
    tmp = Path(tempfile.mkdtemp(dir=store, prefix=".tmp-"))
    try:
        dataset.to_zarr(tmp / "node", mode="w", zarr_format=3, consolidated=False)
        target = store / group
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / "node", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- profiles -------------------------------------------------------------------------------

def well_metadata(ctx: Context, profiles):
    """Attach the store's well metadata (compound, dose, moa, control, batch, …) to well profiles."""
    from cpzarr.store import open_screen

    if ctx.cfg.get("input.store") is None and ctx.cfg.get("input.images") is None \
            and ctx.cfg.get("input.synthetic") is None:
        return _platemap_metadata(ctx, profiles)
    root = open_screen(ctx.store).to_dataset()
    plates = profiles["plate"].values
    wells = profiles["well"].values
    pi = pd.Index(root["plate"].values.astype(str)).get_indexer(plates.astype(str))
    wi = pd.Index(root["well"].values.astype(str)).get_indexer(wells.astype(str))
    coords = {}
    for name, var in root.data_vars.items():
        if var.dims == ("plate", "well") and name not in profiles.coords:
            coords[name] = ("sample", np.asarray(var.values)[pi, wi])
        elif var.dims == ("plate",) and name not in profiles.coords:
            coords[name] = ("sample", np.asarray(var.values)[pi])
    return profiles.assign_coords(coords)


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


def _steps(spec: list) -> list:
    return [(op, dict(params or {})) for step in spec for op, params in step.items()]


def stage_profiles(ctx: Context) -> dict:
    import dask

    # Profile tables are small next to images: reductions run in this process's threads, which
    # spares shipping fitted matrices (a 6,400² whitening matrix is 330 MB) to the workers.
    with dask.config.set(scheduler="threads"):
        return _profiles(ctx)


def _profiles(ctx: Context) -> dict:
    from cpzarr.profiles import aggregate, consensus, pipeline, write_profiles
    from cpzarr.store import open_node

    p = ctx.cfg["profiles"]
    summary: dict[str, Any] = {}
    for name in ctx.feature_sets():
        feats = open_node(ctx.store, f"features/{name}")
        well = aggregate(feats["features"], operation=p["aggregate"])
        well = well_metadata(ctx, well).compute()
        write_profiles(well, ctx.store, node=f"profiles/{name}/aggregated")
        summary.update(
            plates=int(np.unique(well["plate"].values).size),
            wells=int(well.sizes["sample"]),
            cells=int(well["cell_count"].sum()) if "cell_count" in well.coords else None,
            features=int(well.sizes["feature"]),
        )
        if "compound" in well.coords:
            summary["treatments"] = int(np.unique(well["compound"].values.astype(str)).size)
        for pname, spec in p["pipelines"].items():
            out = (pipeline(well, _steps(spec)) if spec else well).compute()
            write_profiles(out, ctx.store, node=f"profiles/{name}/{pname}")
            if p["consensus"]:
                cons = consensus(out, **p["consensus"])
                write_profiles(cons.compute(), ctx.store, node=f"profiles/{name}/{pname}_consensus")
    return {"summary": summary}


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
    from cpzarr import evaluate as ev

    e = ctx.cfg["evaluate"]
    ctx.tables_dir.mkdir(parents=True, exist_ok=True)
    groups = e["groups"]
    rows = []
    results: dict[str, dict[str, pd.DataFrame]] = {}
    for label, prof in profile_sets(ctx).items():
        prof = prof.load()
        if e["exclude"]:
            prof = prof.isel(sample=~query_mask(e["exclude"], ev.sample_table(prof), what="evaluate.exclude"))
        res = results.setdefault(label, {})
        if "precision_recall" in e["metrics"]:
            pr = ev.precision_recall(prof, groups, k=tuple(e["k"]))
            res["precision_recall"] = pr
            rows += [(label, f"precision@{k}", v) for k, v in pr.groupby("k")["precision"].mean().items()]
            rows += [(label, f"recall@{k}", v) for k, v in pr.groupby("k")["recall"].mean().items()]
        if "mean_average_precision" in e["metrics"]:
            ap = ev.average_precision(prof, groups)
            m = ev.mean_average_precision(groups=groups, ap=ap, null_size=2000)
            res["average_precision"], res["mean_average_precision"] = ap, m
            rows.append((label, "mAP", float(m["mean_average_precision"].mean())))
            rows.append((label, "precision@R", float(ap["precision_at_r"].mean())))
            rows.append((label, "fraction retrieved (corrected p<0.05)", float(m["below_corrected_p"].mean())))
        if "enrichment" in e["metrics"]:
            en = ev.enrichment(prof, groups, percentiles=tuple(e["percentiles"]))
            res["enrichment"] = en
            top = _headline_percentile(en)
            rows.append((label, f"enrichment@{top['percentile']:g}", float(top["odds_ratio"])))
        if "hitk" in e["metrics"]:
            hits, scores = ev.hitk(prof, groups)
            res["hitk"] = scores
        if "replicate_reproducibility" in e["metrics"]:
            rr = ev.replicate_reproducibility(prof, groups)
            res["replicate_reproducibility"] = rr
    if "batch_enrichment" in e["metrics"]:
        for label, prof in profile_sets(ctx, level="well").items():
            if e["batch"] not in prof.coords or "control" not in prof.coords:
                continue
            be = ev.batch_enrichment(prof.load(), batch=e["batch"], percentiles=tuple(e["percentiles"]))
            results.setdefault(label, {})["batch_enrichment"] = be
            top = _headline_percentile(be)
            rows.append((label, f"DMSO batch enrichment@{top['percentile']:g}", float(top["odds_ratio"])))
    for label, res in results.items():
        for metric, table in res.items():
            table.to_csv(ctx.tables_dir / f"{_slug(label)}.{metric}.csv", index=False)
    headline = pd.DataFrame(rows, columns=["profiles", "metric", "value"])
    headline.to_csv(ctx.tables_dir / "headline.csv", index=False)
    (ctx.tables_dir / "sets.json").write_text(json.dumps({_slug(k): k for k in results}))
    return {}


def _headline_percentile(table: pd.DataFrame, min_pairs: int = 20) -> pd.Series:
    """The row of the highest percentile whose "similar" side holds at least ``min_pairs`` pairs.

    On a small screen the top 0.5 % of pairs can be a handful, whose odds ratio is noise (often
    infinite); the full curve is in the tables and the report.
    """
    ordered = table.sort_values("percentile", ascending=False)
    above = ordered["same_above"] + ordered["different_above"]
    enough = ordered[above >= min_pairs]
    return enough.iloc[0] if len(enough) else ordered.iloc[-1]


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)


def _load_results(ctx: Context) -> dict[str, dict[str, pd.DataFrame]]:
    labels = json.loads((ctx.tables_dir / "sets.json").read_text())
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for path in sorted(ctx.tables_dir.glob("*.csv")):
        if path.name == "headline.csv":
            continue
        slug, metric = path.stem.split(".", 1)
        out.setdefault(labels.get(slug, slug), {})[metric] = pd.read_csv(path)
    return out


# --- report ---------------------------------------------------------------------------------

def stage_report(ctx: Context) -> dict:
    from cpzarr.evaluate import plots
    from cpzarr.report import plot_cells_per_well, write_report
    from cpzarr.run import versions
    from cpzarr.store import read_provenance

    results = _load_results(ctx)
    headline = pd.read_csv(ctx.tables_dir / "headline.csv")
    figures: dict[str, list] = {}
    counts = _cells_per_well(ctx)
    if counts is not None:
        figures["cells"] = [("Cells per well (plate layout)", plot_cells_per_well(counts))]

    sets = profile_sets(ctx, level="well")
    pcas = []
    for label, prof in sets.items():
        color = tuple(c for c in ("batch", "control") if c in prof.coords)
        if color:
            pcas.append((f"PCA of well profiles: {label}", plots.pca(prof.load(), color=color)))
    if pcas:
        figures["pca"] = pcas

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
            figures.setdefault(section, []).append(
                (caption.format(g=ctx.cfg.get("evaluate.groups")), plot(data)))
    train_dir = _train_dir(ctx)
    if (train_dir / "history.png").exists():
        figures["training"] = [("Training and validation loss / accuracy per epoch",
                                (train_dir / "history.png").read_bytes())]

    provenance = {
        "created": pd.Timestamp.now().isoformat(timespec="seconds"),
        "store": str(ctx.store),
        "versions": versions(),
        "config": ctx.cfg.to_dict(),
    }
    try:
        provenance["store provenance"] = read_provenance(ctx.store)
    except StoreError:
        pass
    timings = {s: v.get("seconds", float("nan")) for s, v in ctx.state.data.get("stages", {}).items()}
    write_report(
        ctx.report_dir,
        title=f"cpzarr report: {ctx.cfg['name']}",
        summary=ctx.summary(),
        metrics=headline,
        figures=figures,
        provenance=provenance,
        timings=timings,
    )
    return {}


def _cells_per_well(ctx: Context):
    """Cells per (plate, well) over every well of the store (0 where a well has no cell)."""
    import xarray as xr

    from cpzarr.store import node_exists, open_node, open_screen

    if not node_exists(ctx.store, "cells"):
        return None
    cells = open_node(ctx.store, "cells")
    table = pd.DataFrame({"plate": np.asarray(cells["plate"].values, dtype=object),
                          "well": np.asarray(cells["well"].values, dtype=object)})
    root = open_screen(ctx.store)
    plates = [str(p) for p in root["plate"].values]
    wells = [str(w) for w in root["well"].values]
    grid = table.groupby(["plate", "well"]).size().unstack(fill_value=0)
    grid = grid.reindex(index=plates, columns=wells, fill_value=0).astype(float)
    return xr.DataArray(grid.values, dims=("plate", "well"), coords={"plate": plates, "well": wells})
