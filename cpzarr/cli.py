"""The ``cpzarr`` command: a thin layer over the Python API, one command per stage."""

import os
import re

import click

# A keyword argument quoted in an API message (``weights='x'``, ``weights=None``), said as the
# command-line option it comes from (``--weights x``).
_KWARG = re.compile(r"\b(weights|samples|box|edge|channels|layer|batch_size|chunk_cells|dtype)="
                    r"('[^']*'|<[^>]*>|None|[\w./-]+)")


def _cli_words(message: str) -> str:
    def option(match):
        value = match.group(2).strip("'")
        value = {"None": "random", "<checkpoint>": "CHECKPOINT"}.get(value, value)
        return f"--{match.group(1).replace('_', '-')} {value}"

    return _KWARG.sub(option, message)


def _message(err) -> str:
    """An error's message in the CLI's words; a single listed problem joins the first line."""
    text = str(err)
    problems = getattr(err, "problems", None) or []
    if len(problems) == 1:
        text = f"{text.splitlines()[0]}: {problems[0]}"
    return _cli_words(text)


class _Verbs(click.Group):
    """The command group: cpzarr's own errors print as their message alone (exit code 1), and
    Ctrl-C as one line saying how to resume (exit code 130), from every verb."""

    def invoke(self, ctx):
        from cpzarr.errors import CpzarrError

        try:
            return super().invoke(ctx)
        except CpzarrError as err:
            raise click.ClickException(_message(err)) from None
        except KeyboardInterrupt as err:
            click.echo(str(err) or "Interrupted; run the same command again to resume.", err=True)
            ctx.exit(130)


@click.group(cls=_Verbs)
@click.version_option(package_name="cpzarr")
def main():
    """Array-native image-based profiling of Cell Painting screens."""


# Each stage's command lives below in data-flow order; keep every command a thin wrapper.


class _PathOrURL(click.ParamType):
    """A local path (checked as ``click.Path`` checks it) or an fsspec URL (``s3://…``), taken as is."""

    name = "path-or-url"

    def __init__(self, **path_kwargs):
        self.path = click.Path(**path_kwargs)

    def convert(self, value, param, ctx):
        text = str(value)
        if "://" in text and not text.startswith("file://"):
            return text
        return self.path.convert(text.removeprefix("file://"), param, ctx)


def _parse_storage_options(values):
    """``--storage-options`` values (a JSON object, or KEY=VALUE, repeatable) as one dict, or None."""
    import json

    import yaml

    options = {}
    for value in values or ():
        value = value.strip()
        if value.startswith("{"):
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise click.BadParameter(f"{value!r} is not a JSON object: {exc}", param_hint="--storage-options")
            options.update(parsed)
        elif "=" in value:
            key, raw = value.split("=", 1)
            options[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        else:
            raise click.BadParameter(f"{value!r} is neither a JSON object nor KEY=VALUE", param_hint="--storage-options")
    return options or None


_storage_options = click.option(
    "--storage-options", "storage_options", multiple=True, metavar="JSON|KEY=VALUE",
    help="fsspec options of a store or input given as a URL (s3://…), e.g. "
         "'{\"endpoint_url\": \"http://host:9000\"}' or anon=true (repeatable).")


def _store(store, storage_options):
    """STORE as the API takes it: a path, or a URL with its storage options."""
    from cpzarr.store import as_location

    return as_location(store, _parse_storage_options(storage_options))

# --- ingest / info ---


@main.command("ingest")
@click.argument("table", type=_PathOrURL(exists=True))
@click.argument("store", type=_PathOrURL(file_okay=False))
@click.option("--platemap", type=_PathOrURL(exists=True, dir_okay=False),
              help="Well metadata CSV/TSV keyed by (plate, well) or by well, or a LINCS barcode_platemap.csv.")
@click.option("--channels", help="Comma-separated channels to ingest, in store order (default: all).")
@click.option("--scheduler", help="Dask scheduler address (tcp://host:8786) or threads / processes / sync.")
@click.option("--workers", type=int, help="Workers of the local scheduler (default: one per core).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store made from other inputs.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar over wells.")
@_storage_options
def ingest_command(table, store, platemap, channels, scheduler, workers, overwrite, progress, storage_options):
    """Ingest the site images of TABLE (load_data CSV, DeepProfiler index.csv or OME-Zarr HCS plate) into STORE.

    Re-running the same command resumes an interrupted ingest.
    """
    from cpzarr.errors import CpzarrError
    from cpzarr.ingest import ingest
    from cpzarr.store import format_info, screen_info

    options = _parse_storage_options(storage_options)
    try:
        ingest(table, store, platemap=platemap, scheduler=scheduler, n_workers=workers, progress=progress,
               channels=[c.strip() for c in channels.split(",")] if channels else None, overwrite=overwrite,
               storage_options=options)
    except CpzarrError as exc:
        raise click.ClickException(_message(exc)) from None
    click.echo(format_info(screen_info(_store(store, storage_options))))


@main.command("export")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--ome-zarr", "ome_zarr", is_flag=True, help="Write the images as an OME-NGFF 0.5 HCS plate.")
@click.option("--node", help="Write this node instead: features/<model> or profiles/<model>/<level>, "
              "to OUT .parquet, .csv(.gz) or .h5ad with Pycytominer's column names.")
@click.option("--plate", help="With --ome-zarr: only this plate.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT plate.")
def export_command(store, out, ome_zarr, node, plate, overwrite):
    """Export STORE's images (--ome-zarr) or one of its nodes (--node) to OUT for other tools."""
    from cpzarr.errors import CpzarrError
    from cpzarr.export import export_ome_zarr, export_table

    if bool(ome_zarr) == bool(node):
        raise click.UsageError("give either --ome-zarr or --node NODE")
    try:
        if ome_zarr:
            for path in export_ome_zarr(store, out, plate=plate, overwrite=overwrite):
                click.echo(f"wrote OME-Zarr HCS plate {path}")
        else:
            click.echo(f"wrote {export_table(store, node, out)}")
    except CpzarrError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("info")
@click.argument("store", type=_PathOrURL(exists=True, file_okay=False))
@_storage_options
def info_command(store, storage_options):
    """Summarise STORE: plates, wells, sites, channels, sizes and the nodes it holds (INCOMPLETE ones named)."""
    from cpzarr.errors import CpzarrError
    from cpzarr.store import format_info, screen_info

    try:
        click.echo(format_info(screen_info(_store(store, storage_options))))
    except CpzarrError as exc:
        raise click.ClickException(_message(exc)) from None


# --- locate ---

@main.command("locate")
@click.argument("store", type=_PathOrURL(exists=True, file_okay=False))
@click.option("--from", "source", type=_PathOrURL(exists=True),
              help="DeepProfiler locations folder, or CellProfiler Nuclei.csv (+ Image.csv) / their folder; "
                   "a path or a URL (read with the store's --storage-options).")
@click.option("--kind", type=click.Choice(["auto", "deepprofiler", "cellprofiler"]), default="auto", show_default=True)
@click.option("--on-invalid", type=click.Choice(["raise", "drop"]), default="raise", show_default=True,
              help="Locations with NaN, outside the image or in sites the store lacks: stop, or drop with a warning.")
@click.option("--detect", is_flag=True, help="Detect nuclei on the DNA channel instead of importing locations.")
@click.option("--channel", default="DNA", show_default=True, help="Nuclear channel for --detect.")
@click.option("--sigma", type=float, default=2.0, show_default=True, help="Gaussian smoothing (px) for --detect.")
@click.option("--threshold", default="li", show_default=True, help="otsu, li, triangle or a number, for --detect.")
@click.option("--min-distance", type=int, default=7, show_default=True, help="Closest nuclei centres (px) for --detect.")
@click.option("--min-area", type=int, default=60, show_default=True, help="Smallest nucleus (px) for --detect.")
@click.option("--max-area", type=int, default=5000, show_default=True, help="Largest nucleus (px) for --detect.")
@click.option("--keep-border/--exclude-border", default=False, show_default=True,
              help="Keep nuclei touching the image border (--detect).")
@click.option("--progress/--no-progress", default=True, help="Progress bar over sites (--detect).")
@_storage_options
def locate_command(store, source, kind, on_invalid, detect, channel, sigma, threshold, min_distance, min_area,
                   max_area, keep_border, progress, storage_options):
    """Find the cells of STORE (import location files or detect nuclei) and write its /cells node."""
    from cpzarr.cells import detect_nuclei, import_locations, write_cells
    from cpzarr.store import open_screen

    if bool(source) == bool(detect):
        raise click.UsageError("give either --from PATH or --detect")
    store = _store(store, storage_options)
    screen = open_screen(store)
    if detect:
        try:
            threshold = float(threshold)
        except ValueError:
            pass
        cells = detect_nuclei(screen, channel=channel, sigma=sigma, threshold=threshold, min_distance=min_distance,
                              min_area=min_area, max_area=max_area, exclude_border=not keep_border, progress=progress)
    else:
        cells = import_locations(screen, source, kind=kind, on_invalid=on_invalid,
                                 storage_options=_parse_storage_options(storage_options))
    path = write_cells(store, cells)
    sites = int((cells["cell_count"] > 0).sum())
    click.echo(f"{cells.sizes['cell']} cells in {sites} sites written to {path}")


# --- import (features computed elsewhere) ---

@main.command("import")
@click.argument("store", type=_PathOrURL(exists=True, file_okay=False))
@click.option("--from", "source", type=_PathOrURL(exists=True), required=True,
              help="DeepProfiler features folder (or .npz), or CellProfiler tables (folder, .sqlite, CytoTable "
                   ".parquet); a path or a URL (read with the store's --storage-options).")
@click.option("--kind", type=click.Choice(["deepprofiler", "cellprofiler"]), required=True,
              help="Which tool made the features (the config's features.model).")
@click.option("--name", default=None, help="Node name under /features (default: the kind).")
@click.option("--channels", default=None, help="DeepProfiler: comma-separated channel order of the feature blocks.")
@_storage_options
def import_command(store, source, kind, name, channels, storage_options):
    """Import single-cell features computed elsewhere into STORE as /features/NAME (and /cells if absent)."""
    from cpzarr.errors import CpzarrError
    from cpzarr.features import import_cellprofiler, import_deepprofiler

    options = _parse_storage_options(storage_options)
    store = _store(store, storage_options)
    name = name or kind
    try:
        if kind == "deepprofiler":
            ds = import_deepprofiler(source, store=store, name=name, storage_options=options,
                                     channels=channels.split(",") if channels else None)
        else:
            ds = import_cellprofiler(source, store=store, name=name, storage_options=options)
    except CpzarrError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{ds.sizes['cell']} cells x {ds.sizes['feature']} features written to {store}/features/{name}")

# --- illumination ---

@main.command("illumination")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--downsample", type=int, default=4, show_default=True, help="Block-mean downsampling factor.")
@click.option("--median-size", type=int, default=24, show_default=True,
              help="Median filter side, in downsampled pixels.")
@click.option("--percentile", type=float, default=2.0, show_default=True, help="Robust minimum the field is divided by.")
@click.option("--overwrite", is_flag=True, help="Replace an existing /illumination node.")
def illumination_command(store, downsample, median_size, percentile, overwrite):
    """Estimate each plate's and channel's illumination field of STORE into its /illumination node."""
    from cpzarr import illumination
    from cpzarr.errors import CpzarrError

    try:
        field = illumination.write(store, overwrite=overwrite, downsample=downsample, median_size=median_size,
                                   percentile=percentile)
    except CpzarrError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"illumination fields of {field.sizes['plate']} plates x {field.sizes['channel']} channels "
               f"written to {store}/illumination (max/min per field: "
               f"{float((field.max(('y', 'x')) / field.min(('y', 'x'))).max()):.2f})")

# --- profile (features) ---

@main.command("profile")
@click.argument("store", type=_PathOrURL(exists=True, file_okay=False))
@click.option("--model", type=click.Choice(["efficientnet-lite0", "efficientnet-b0", "resnet50", "trained"]),
              default="efficientnet-lite0", show_default=True, help="Network; lite0 works offline.")
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet', a weights file (a .keras checkpoint for --model trained), or 'random'.")
@click.option("--layer", default=None, help="Named layer instead of the pooled output (spatially averaged).")
@click.option("--name", default=None, help="Node name under /features (default: the model name).")
@click.option("--box", type=int, default=128, show_default=True, help="Crop side in pixels.")
@click.option("--channels", default=None, help="Comma-separated channels (default: all, store order).")
@click.option("--edge", type=click.Choice(["pad", "skip"]), default="pad", show_default=True,
              help="Cells whose box leaves the image: zero-pad (DeepProfiler), or leave out.")
@click.option("--batch-size", type=int, default=None,
              help="Planes per forward pass (default: 8 on a CPU, 512 on a GPU).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--mixed-precision", type=click.Choice(["off", "float16", "bfloat16"]), default="off",
              show_default=True, help="Keras mixed-precision policy for the network.")
@click.option("--chunk-cells", type=int, default=1024, show_default=True, help="Cells per chunk and work unit.")
@click.option("--scheduler", default=None, help="Dask scheduler address (default: threads in this process).")
@click.option("--workers", type=int, default=None, help="Threads of the local scheduler (default: cores).")
@click.option("--overwrite", is_flag=True, help="Start the node afresh instead of resuming it.")
@click.option("--illumination", is_flag=True, help="Crop images divided by the store's /illumination fields.")
@click.option("--progress/--no-progress", default=True)
@_storage_options
def profile_command(store, model, weights, layer, name, box, channels, edge, batch_size, dtype, mixed_precision,
                    chunk_cells, scheduler, workers, overwrite, illumination, progress, storage_options):
    """Compute CNN features of every cell of STORE into /features/<name> (resumable)."""
    import dask

    from cpzarr.cluster import local_threads, tensorflow_threads
    from cpzarr.crops import crops
    from cpzarr.features.cnn import extract, write_features
    from cpzarr.store import open_screen

    from cpzarr.store import is_store, node_exists

    store = _store(store, storage_options)
    if not is_store(store):
        raise click.ClickException(f"{store} is not a cpzarr store; make one with `cpzarr ingest`")
    if not node_exists(store, "cells"):
        raise click.ClickException(f"{store} has no cells yet; run `cpzarr locate {store} --from PATH` "
                                   "(or --detect) first")
    if weights not in ("imagenet", "random") and not os.path.isfile(weights):
        raise click.ClickException(f"--weights {weights}: no such file")
    if not scheduler:  # this process's threads each run their own forward passes
        os.environ.update(tensorflow_threads(workers or local_threads()))
    view = crops(open_screen(store), box=box, channels=channels.split(",") if channels else None, edge=edge,
                 illumination=True if illumination else None)
    features = extract(view, model=model, weights=None if weights == "random" else weights, layer=layer,
                       batch_size=batch_size, dtype=dtype,
                       mixed_precision=False if mixed_precision == "off" else mixed_precision)
    name = name or (model if layer is None else f"{model}-{layer}")
    if scheduler:
        from cpzarr.cluster import get_client

        with get_client(scheduler) as client:  # nothing at the address: a ClusterError at once
            path = write_features(store, name, features, chunk_cells=chunk_cells, overwrite=overwrite,
                                  scheduler=client, progress=progress)
    else:
        with dask.config.set(num_workers=workers):
            path = write_features(store, name, features, chunk_cells=chunk_cells, overwrite=overwrite,
                                  scheduler="threads", progress=progress)
    click.echo(f"{features.sizes['cell']} cells x {features.sizes['feature']} features written to {path}")
    left_out, at_edge, located = (view.attrs.get(k, 0) for k in ("cells_left_out", "cells_at_edge", "cells_located"))
    if left_out:
        click.echo(f"{left_out} of {located} cells left out: their {box}-px box leaves the image "
                   "(--edge skip; --edge pad keeps them)")
    else:
        click.echo(f"no cell left out; {at_edge} of {located} boxes leave the image and were zero-padded (--edge pad)")

# --- train ---


@main.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue from the last finished epoch of the output folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=20 (repeatable).")
@click.option("--progress/--no-progress", default=True, help="Show Keras' progress bar.")
def train_command(config, resume, overrides, progress):
    """Train a cell encoder with the train: section of CONFIG on the run's store.

    Writes per-epoch checkpoints, best.keras, history.csv/.png, train.json and split.csv to
    train.output (default: a train folder beside the store).
    """
    from cpzarr.config import load_config
    from cpzarr.errors import CpzarrError
    from cpzarr.train import train_from_config

    try:
        result = train_from_config(load_config(config, list(overrides)), resume=resume, progress=progress)
    except CpzarrError as exc:
        raise click.ClickException(_message(exc)) from None
    last = result.history.iloc[-1]
    click.echo(f"trained {len(result.history)} epochs; val_accuracy {last.get('val_accuracy', float('nan')):.3f}; "
               f"best checkpoint {result.best}")

# --- profiles ---


def _profiles_io(source, target, node, out_node, operation, groups_option=None):
    """Read SOURCE (a file, or a store with --node), apply ``operation``, write TARGET.

    ``groups_option`` (``"--by plate"``) names the option that gave the grouping coordinates.
    Into a screen store only the node ``--out-node`` is written; a TARGET that exists and is not a
    Zarr store of profiles is refused unless ``--overwrite``.
    """
    from cpzarr.errors import InputError
    from cpzarr.profiles import read_profiles, write_profiles
    from cpzarr.store import is_url

    params = click.get_current_context().params
    overwrite, options = params.get("overwrite", False), params.get("storage_options")
    if node is None and not is_url(source) and os.path.isfile(os.path.join(source, "zarr.json")):
        raise click.ClickException(f"{source} is a Zarr store: name the node of profiles with --node, "
                               "e.g. --node profiles/efficientnet-lite0/aggregated")
    try:
        result = operation(read_profiles(_store(source, options), node=node))
    except InputError as err:
        if groups_option and str(err).startswith("grouping coordinates not found"):
            raise click.ClickException(f"{groups_option}: {_message(err)}") from None
        raise
    write_profiles(result, _store(target, options), node=out_node, overwrite=overwrite)
    click.echo(f"wrote {result.sizes['sample']} samples x {result.sizes['feature']} features to {target}"
               + (f" node {out_node}" if out_node else ""))


_IN_OUT = [
    click.argument("source", type=_PathOrURL(exists=True)),
    click.argument("target", type=_PathOrURL()),
    click.option("--node", default=None, help="Input node of a Zarr store, e.g. profiles/efficientnet-lite0/aggregated."),
    click.option("--out-node", default=None, help="Output node when TARGET is a Zarr store (into a screen "
                 "store only this node is written)."),
    click.option("--overwrite", is_flag=True, help="Replace TARGET when it exists and is not a Zarr store of "
                 "profiles."),
    _storage_options,
]


def _in_out(function):
    for decorator in reversed(_IN_OUT):
        function = decorator(function)
    return function


@main.group("profiles")
def profiles_group():
    """Profile operations (Pycytominer's conventions) on Parquet, CSV(.gz) or store nodes."""


@profiles_group.command("normalize")
@_in_out
@click.option("--method", type=click.Choice(["standardize", "robustize", "mad_robustize"]), default="mad_robustize",
              show_default=True)
@click.option("--by", default="plate", show_default=True, help="Coordinate(s), comma-separated; 'none' for one group.")
@click.option("--samples", default="all", show_default=True, help='Fitting samples, e.g. \'control == "negcon"\'.')
@click.option("--match-pycytominer", is_flag=True, help="Divide zero-MAD features by epsilon, as Pycytominer.")
def profiles_normalize(source, target, node, out_node, overwrite, storage_options, method, by, samples, match_pycytominer):
    """Normalize SOURCE per group and write TARGET."""
    from cpzarr.profiles import normalize

    groups = None if by.lower() == "none" else by.split(",")
    _profiles_io(source, target, node, out_node, lambda p: normalize(
        p, method=method, by=groups, samples=samples, match_pycytominer=match_pycytominer),
        groups_option=f"--by {by}")


@profiles_group.command("feature-select")
@_in_out
@click.option("--operation", "operations", multiple=True,
              default=("variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"),
              show_default=True, help="Repeat for several operations, applied in order.")
@click.option("--samples", default="all", show_default=True)
@click.option("--corr-threshold", type=float, default=0.9, show_default=True)
@click.option("--outlier-cutoff", type=float, default=500, show_default=True)
def profiles_feature_select(source, target, node, out_node, overwrite, storage_options, operations, samples, corr_threshold, outlier_cutoff):
    """Drop features of SOURCE by Pycytominer's rules and write TARGET."""
    from cpzarr.profiles import feature_select

    _profiles_io(source, target, node, out_node, lambda p: feature_select(
        p, operation=list(operations), samples=samples, corr_threshold=corr_threshold,
        outlier_cutoff=outlier_cutoff))


@profiles_group.command("spherize")
@_in_out
@click.option("--method", type=click.Choice(["ZCA-cor", "ZCA", "PCA-cor", "PCA"]), default="ZCA-cor",
              show_default=True)
@click.option("--samples", default='control == "negcon"', show_default=True)
@click.option("--epsilon", type=float, default=1e-6, show_default=True)
def profiles_spherize(source, target, node, out_node, overwrite, storage_options, method, samples, epsilon):
    """Whiten SOURCE with a transform fitted on SAMPLES and write TARGET."""
    from cpzarr.profiles import spherize

    _profiles_io(source, target, node, out_node, lambda p: spherize(p, method=method, samples=samples,
                                                                     epsilon=epsilon))


@profiles_group.command("consensus")
@_in_out
@click.option("--operation", type=click.Choice(["median", "mean", "modz"]), default="median", show_default=True)
@click.option("--replicate-columns", default="compound,dose", show_default=True)
def profiles_consensus(source, target, node, out_node, overwrite, storage_options, operation, replicate_columns):
    """Collapse the replicates of SOURCE into one profile per treatment and write TARGET."""
    from cpzarr.profiles import consensus

    _profiles_io(source, target, node, out_node, lambda p: consensus(
        p, replicate_columns=replicate_columns.split(","), operation=operation),
        groups_option=f"--replicate-columns {replicate_columns}")


@profiles_group.command("pipeline")
@_in_out
@click.option("--recipe", required=True, help="spherize_only, mad_robustize_select_spherize, "
              "mad_robustize_select_outliers, a JUMP-recipe-style name (profiles_mad_int_featselect_harmony), "
              "or a YAML file with a list of steps.")
def profiles_pipeline(source, target, node, out_node, overwrite, storage_options, recipe):
    """Apply a recipe of profile steps to SOURCE and write TARGET."""
    from pathlib import Path

    from cpzarr.profiles import pipeline

    steps = recipe
    if Path(recipe).is_file():
        import yaml

        steps = yaml.safe_load(Path(recipe).read_text())
    _profiles_io(source, target, node, out_node, lambda p: pipeline(p, steps))


# --- evaluate ---


@main.command("evaluate")
@click.argument("profiles", type=_PathOrURL(exists=True))
@click.option("--groups", "-g", multiple=True, required=True,
              help="Sample coordinate(s) defining positives, e.g. --groups moa or Metadata_moa (repeatable).")
@click.option("--mask", default=None, metavar="QUERY",
              help="Samples to keep, a query on the metadata (see README, Queries), e.g. \"control != 'negcon'\".")
@click.option("--node", default=None,
              help="Store node holding the profiles (Zarr input); without it the profile nodes are listed.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default="evaluation",
              show_default=True, help="Folder for the metric tables (CSV) and plots (PNG).")
@click.option("--k", "ks", multiple=True, type=int, default=None,
              help="K values of Precision@K and Recall@K (repeatable; default: those of 1, 5, 10, 20, "
                   "50, 100 not above the largest group).")
@click.option("--percentile", "percentiles", multiple=True, type=float, default=None,
              help="Enrichment percentiles (repeatable; default: those of 99.5 ... 97 whose top holds "
                   "at least 20 pairs).")
@click.option("--null-size", default=10_000, show_default=True, help="Permutations of the mAP null.")
@click.option("--seed", default=0, show_default=True, help="Seed of the mAP null.")
@click.option("--method", type=click.Choice(["pearson", "cosine"]), default="pearson", show_default=True)
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="Precision of the similarity products (float32: about twice as fast).")
@click.option("--block-size", type=int, default=None, help="Queries per block (default: about 2**24 similarities).")
@click.option("--pooled", is_flag=True,
              help="Also Cytominer-eval's grouped Precision/Recall@K (precision_recall_pooled.csv).")
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@_storage_options
def evaluate_command(profiles, groups, mask, node, output, ks, percentiles, null_size, seed, method,
                     dtype, block_size, pooled, plots, progress, storage_options):
    """Precision/Recall@K, Precision@R, AP/mAP with p-values, Hit@K and Enrichment of PROFILES.

    PROFILES is a Pycytominer table (.parquet, .csv, .csv.gz) or a Zarr store (with --node).
    The tables and headline are those of the evaluate stage of `cpzarr run` for the same options.
    """
    import warnings
    from pathlib import Path

    from cpzarr.errors import CpzarrError
    from cpzarr.evaluate import DEFAULT_METRICS, evaluate, plots as figures
    from cpzarr.profiles import read_profiles

    if node is None and Path(profiles).is_dir():
        found = _profile_nodes(Path(profiles))
        listing = "\n".join(f"  {n}" for n in found) if found else "  (none: run the profiles stage first)"
        raise click.ClickException(
            f"{profiles} is a Zarr store; choose its profiles with --node NODE. Profile nodes:\n{listing}")
    try:
        table = read_profiles(_store(profiles, storage_options), node=node)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            metrics = DEFAULT_METRICS + (("precision_recall_pooled",) if pooled else ())
            results = evaluate(table, list(groups), mask=mask, k=ks or None, metrics=metrics,
                               percentiles=percentiles or None, null_size=null_size, seed=seed,
                               method=method, dtype=dtype, block_size=block_size, progress=progress)
    except CpzarrError as exc:
        raise click.ClickException(_message(exc)) from None
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        if name not in ("hits", "summary"):
            result.to_csv(folder / f"{name}.csv", index=False)
    if plots:
        figures.enrichment(results["enrichment"], folder / "enrichment.png")
        figures.precision_recall(results["precision_recall"], folder / "precision_recall.png")
        figures.hitk(results["hitk"], folder / "hitk.png")
    click.echo(results["headline"].to_string(index=False, header=False))
    click.echo(f"tables and plots in {folder}")


def _profile_nodes(store):
    """Nodes of a Zarr store folder that hold a ``profiles`` array, as ``a/b`` paths."""
    found = []
    for meta in sorted(store.rglob("profiles/zarr.json")):
        node = meta.parent.parent
        if (node / "zarr.json").exists():
            found.append(node.relative_to(store).as_posix())
    return found


# --- run / demo ---

_STAGE_NAMES = ["ingest", "locate", "train", "features", "profiles", "evaluate", "report"]


@main.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--from", "start", type=click.Choice(_STAGE_NAMES), help="First stage to (re)run.")
@click.option("--until", type=click.Choice(_STAGE_NAMES), help="Last stage to run.")
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://host:8786).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set features.batch_size=32 (repeatable).")
@click.option("--force", is_flag=True, help="Re-run the selected stages even when up to date.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def run_command(config, start, until, scheduler, overrides, force, no_progress):
    """Run the experiment described by CONFIG, resuming stages that already finished."""
    from cpzarr.errors import CpzarrError
    from cpzarr.run import run

    try:
        run(config, start=start, until=until, scheduler=scheduler, overrides=list(overrides),
            force=force, progress=not no_progress, echo=click.echo)
    except CpzarrError as err:
        raise click.ClickException(_message(err)) from None


@main.command("demo")
@click.option("--out", default="cpzarr-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the synthetic screen, the store and the report.")
@click.option("--scheduler", help="Address of an existing Dask scheduler.")
@click.option("--force", is_flag=True, help="Re-run every stage.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def demo_command(out, scheduler, force, no_progress):
    """Generate a small synthetic screen and profile it end to end, offline; writes a report."""
    from cpzarr.errors import CpzarrError
    from cpzarr.run import demo

    try:
        result = demo(out, scheduler=scheduler, force=force, progress=not no_progress, echo=click.echo)
    except CpzarrError as err:
        raise click.ClickException(_message(err)) from None
    if result.report:
        click.echo(f"Open the report: {result.report}")


if __name__ == "__main__":
    main()
