"""Run a whole experiment from a config: ingest → locate → [train] → features → profiles → evaluate → report.

Each stage records, when it finishes, a fingerprint of the config sections it depends on in a
small state file beside the store (``<store>.run.json``). A re-run skips every stage whose
fingerprint still matches and whose outputs exist, so a run killed between stages (or by Ctrl-C)
resumes where it stopped, and changing a section re-runs that stage and everything after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpzarr._files import write_atomic
from cpzarr.config import STAGES, Config, check_paths, load_config
from cpzarr.errors import ConfigError, StoreError, resource_error

logger = logging.getLogger("cpzarr")

__all__ = ["run", "demo", "RunResult", "RunInterrupted", "DEPENDS"]

#: The config sections each stage's output depends on (changing one re-runs the stage).
DEPENDS = {
    "ingest": ("input",),
    "locate": ("input", "locate"),
    "train": ("input", "locate", "crops", "train"),
    "features": ("input", "locate", "crops", "features", "train"),
    "profiles": ("input", "locate", "crops", "features", "train", "profiles"),
    "evaluate": ("input", "locate", "crops", "features", "train", "profiles", "evaluate"),
    "report": ("input", "locate", "crops", "features", "train", "profiles", "evaluate", "output"),
}


@dataclass
class RunResult:
    """What a run did: stages run and skipped, timings, headline metrics, where the report is."""

    store: Path
    report: Path | None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: Any = None


def _fingerprint(cfg: Config, stage: str) -> str:
    parts = {k: cfg.to_dict().get(k) for k in DEPENDS[stage]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunState:
    """The per-store record of finished stages, written atomically after each stage."""

    def __init__(self, store: Path):
        # beside the store: on an object store as the object <store>.run.json (a put is atomic)
        self.path = store.with_name(store.name + ".run.json") if not isinstance(store, Path) else \
            Path(str(store).rstrip("/") + ".run.json")
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.data = {}

    def done(self, stage: str, fingerprint: str) -> bool:
        return self.data.get("stages", {}).get(stage, {}).get("fingerprint") == fingerprint

    def started(self, stage: str) -> str | None:
        """The fingerprint the stage last started with (finished or not), or None."""
        return self.data.get("started", {}).get(stage)

    def begin(self, stage: str, fingerprint: str) -> None:
        """Record that ``stage`` starts with ``fingerprint``, so an interrupted run can resume it."""
        self.data.setdefault("started", {})[stage] = fingerprint
        self._write()

    def mark(self, stage: str, fingerprint: str, seconds: float, **info: Any) -> None:
        self.data.setdefault("stages", {})[stage] = {
            "fingerprint": fingerprint, "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info
        }
        self._write()

    def _write(self) -> None:
        if not isinstance(self.path, Path):  # an object beside a store on an object store
            self.path.write_text(json.dumps(self.data, indent=2, default=str))
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data, indent=2, default=str))

    def info(self, stage: str) -> dict:
        return self.data.get("stages", {}).get(stage, {})


def run(
    config: Config | str | os.PathLike,
    *,
    start: str | None = None,
    until: str | None = None,
    scheduler: str | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    force: bool = False,
    echo: Callable[[str], None] | None = print,
) -> RunResult:
    """Run the stages of an experiment config in order, resuming finished ones.

    Parameters
    ----------
    config : Config or path
        The experiment (see :mod:`cpzarr.config`).
    start, until : str, optional
        First and last stage to run (``ingest``, ``locate``, ``train``, ``features``,
        ``profiles``, ``evaluate``, ``report``). Stages from ``start`` on are re-run even when done.
    scheduler : str, optional
        Address of an existing Dask scheduler; overrides ``cluster.scheduler``.
    overrides : list of str, optional
        ``"key.path=value"`` config overrides.
    progress : bool
        Progress bars per stage.
    force : bool
        Re-run every selected stage.
    echo : callable, optional
        Where the dashboard link, stage lines and the summary are printed.

    Returns
    -------
    RunResult

    Examples
    --------
    >>> result = run("configs/demo.yaml")  # doctest: +SKIP
    >>> result.report  # doctest: +SKIP
    PosixPath('.../cpzarr-demo/report/report.html')
    """
    from cpzarr import stages as stage_impl
    from cpzarr.cluster import dashboard_link, get_client
    from cpzarr.features.backend import use_backend

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    say = echo or (lambda s: None)
    order = list(cfg.stages)
    for name, value in (("--from", start), ("--until", until)):
        if value is not None and value not in STAGES:
            raise ConfigError(f"{name} {value!r} is not a stage (stages: {', '.join(STAGES)})")
        if value is not None and value not in order:
            raise ConfigError(f"{name} {value!r}: this config does not run that stage "
                              f"(it runs: {', '.join(order)})")
    first = order.index(start) if start else 0
    last = order.index(until) if until else len(order) - 1
    check_paths(cfg)  # every input path, before hours of ingest

    from cpzarr.store import as_location

    store = as_location(cfg.get("output.store") or cfg.get("input.store"), cfg.get("output.storage_options"))
    state = RunState(store)
    result = RunResult(store=store, report=None)
    ctx = stage_impl.Context(cfg=cfg, store=store, state=state, progress=progress, echo=say)
    cl = cfg["cluster"]
    from cpzarr.store import store_lock

    # Worker processes of a local cluster inherit the environment, KERAS_BACKEND included.
    use_backend(cl.get("keras_backend"))
    # one run writes a store at a time: a second gets an error naming this one
    with store_lock(store, f"cpzarr run {cfg['name']}"), get_client(
        scheduler or cl["scheduler"],
        n_workers=cl["n_workers"],
        threads_per_worker=cl["threads_per_worker"],
        memory_limit=cl["memory_limit"],
        gpu=cl["gpu"] or None,
        processes=cl["processes"],
        profile=cl["profile"],
        dashboard_address=cl["dashboard"],
    ) as client:
        ctx.client = client
        say(f"cpzarr run: {cfg['name']}")
        say(f"Dask dashboard: {dashboard_link(client)}")
        invalidated = False
        for i, stage in enumerate(order):
            if i > last:
                break
            fp = _fingerprint(cfg, stage)
            finished = state.done(stage, fp) and stage_impl.outputs_exist(ctx, stage)
            if i < first:
                if not finished:
                    raise StoreError(f"stage {stage!r} has not finished for this config; "
                                     f"run without --from, or with --from {stage}")
                result.skipped.append(stage)
                continue
            rerun = force or invalidated or start is not None
            if finished and not rerun:
                result.skipped.append(stage)
                say(f"[{stage}] up to date, skipped")
                continue
            say(f"[{stage}] running")
            ctx.fingerprint, ctx.force = fp, force
            # Keep the finished units of an interrupted attempt with this very config; start
            # afresh when asked to, when re-running a finished stage, or when its config changed.
            previous = state.started(stage)
            ctx.rerun = force or finished
            ctx.fresh = ctx.rerun or (previous is not None and previous != fp)
            state.begin(stage, fp)
            t0 = time.perf_counter()
            try:
                with _stage_warnings(stage, echo):
                    info = getattr(stage_impl, f"stage_{stage}")(ctx) or {}
            except KeyboardInterrupt:
                raise RunInterrupted(_interrupted_text(ctx, stage, result.ran + result.skipped)) from None
            except (OSError, MemoryError) as err:  # ENOSPC, MemoryError: say where and that re-running resumes
                raise resource_error(f"stage {stage!r}", ctx.store, err) from err
            seconds = time.perf_counter() - t0
            state.mark(stage, fp, seconds, **info)
            result.ran.append(stage)
            result.timings[stage] = seconds
            invalidated = True
            say(f"[{stage}] done in {seconds:.1f} s")
    for stage in order:
        result.timings.setdefault(stage, state.info(stage).get("seconds", float("nan")))
    result.summary = ctx.summary()
    result.metrics = ctx.headline()
    report = Path(cfg.get("output.report")) / "report.html"
    result.report = report if report.exists() else None
    say(_summary_text(result))
    return result


@contextlib.contextmanager
def _stage_warnings(stage: str, echo: Callable[[str], None] | None):
    """Warnings raised in this process during ``stage`` printed through ``echo`` as one line naming
    the stage (``[profiles] SpherizeWarning: ...``) instead of with the source line that raised them."""
    if echo is None:
        yield
        return

    def show(message, category, filename, lineno, file=None, line=None):
        echo(f"[{stage}] {category.__name__}: {message}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a stage; the message says what had finished and that re-running resumes."""


def _interrupted_text(ctx: Any, stage: str, finished: list[str]) -> str:
    from cpzarr import stages as stage_impl

    done = f"finished: {', '.join(finished)}" if finished else "no stage had finished"
    try:
        units = stage_impl.stage_progress(ctx, stage)
    except Exception:  # a half-written node must not hide the message
        units = None
    where = f"{stage} ({units})" if units else stage
    return (f"Interrupted during {where}; {done}. Run the same command again to resume; "
            "finished work is kept.")


def demo(out: str | os.PathLike = "cpzarr-demo", **kwargs: Any) -> RunResult:
    """Run the embedded demo: a small synthetic screen profiled end to end, offline.

    Parameters
    ----------
    out : path
        Folder receiving the synthetic images, the store (``screen.zarr``) and the report.
    **kwargs
        Passed to :func:`run` (``scheduler``, ``force``, ``progress``, ``echo``, ``overrides``).

    Returns
    -------
    RunResult
        ``result.report`` is the HTML report.

    Examples
    --------
    >>> result = demo("cpzarr-demo")  # doctest: +SKIP
    """
    from importlib.resources import files

    out = Path(out).resolve()
    overrides = [f"output.store={out / 'screen.zarr'}", f"output.report={out / 'report'}"]
    overrides += list(kwargs.pop("overrides", None) or [])
    cfg = load_config(text=files("cpzarr").joinpath("demo.yaml").read_text(), overrides=overrides)
    return run(cfg, **kwargs)


def _summary_text(result: RunResult) -> str:
    lines = ["", "Summary"]
    for k, v in result.summary.items():
        lines.append(f"  {k}: {v}")
    if result.metrics is not None and len(result.metrics):
        lines.append("  headline metrics:")
        for row in result.metrics.itertuples(index=False):
            lines.append("    " + "  ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    if result.report:
        lines.append(f"  report: {result.report}")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Versions of cpzarr and the libraries whose numbers a result depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("cpzarr", "numpy", "scipy", "pandas", "dask", "distributed", "xarray", "zarr", "keras",
                "tensorflow-cpu", "tensorflow", "scikit-image"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out
