"""Dask clients for cpzarr: a local cluster sized to the machine, or an existing scheduler.

Every stage submits its work in bounded batches (a plate or a few wells at a time) with task keys
that read like the pipeline (``ingest-well-P1-A01``, ``features-efficientnet-lite0-…``), so a
2-billion-cell screen never becomes one giant graph and the dashboard shows what is running.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

logger = logging.getLogger("cpzarr")

# glibc reads MALLOC_TRIM_THRESHOLD_ once, when a process starts: a value set before cpzarr was
# imported is the user's, one that appears later was put there by distributed's nanny.
_USER_TRIM_THRESHOLD = os.environ.get("MALLOC_TRIM_THRESHOLD_")

__all__ = ["get_client", "dashboard_link", "has_gpu_workers", "map_batches", "batched", "default_workers",
           "local_threads", "tensorflow_threads", "run_task", "compute_bounded", "in_flight", "DASHBOARD", "CONNECT_TIMEOUT"]

#: Where a local cluster's dashboard listens by default: this machine only, a free port.
DASHBOARD = "127.0.0.1:0"

#: Seconds to wait for an existing scheduler to accept a connection before giving up.
CONNECT_TIMEOUT = 10.0


def local_threads() -> int:
    """Threads of dask's local (threaded) scheduler: ``num_workers`` from dask's config, else
    dask's CPU count, which honours CPU affinity.

    Examples
    --------
    >>> import dask
    >>> with dask.config.set(num_workers=3):
    ...     local_threads()
    3
    """
    import dask
    from dask.system import CPU_COUNT

    return dask.config.get("num_workers", None) or CPU_COUNT


def default_workers(n_cores: int | None = None) -> tuple[int, int]:
    """Return ``(n_workers, threads_per_worker)`` for a local cluster on this machine.

    One process per core keeps the GIL out of the way of image decoding and Python-level loops; a
    single core gets one worker with one thread.

    Examples
    --------
    >>> default_workers(8)
    (8, 1)
    """
    n = n_cores or os.cpu_count() or 1
    return max(1, n), 1


@contextlib.contextmanager
def get_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = "auto",
    gpu: int | None = None,
    processes: bool = True,
    dashboard_address: str | None = DASHBOARD,
    profile: bool = False,
) -> Iterator[Any]:
    """Open a ``distributed.Client`` for one run and close what was opened on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``). When given, nothing is started
        and the cluster is left running on exit.
    n_workers, threads_per_worker : int, optional
        Size of the local cluster; default one single-threaded worker process per core.
    memory_limit : str or int, optional
        Per-worker memory limit of the local cluster (``"4GiB"``, bytes, or ``"auto"``).
    gpu : int, optional
        Number of ``GPU`` resources each local worker advertises; inference and training tasks
        ask for ``{"GPU": 1}`` when the cluster has them.
    processes : bool
        Use worker processes (default) or threads in this process (faster start, for tests).
    dashboard_address : str, optional
        Where the local cluster's dashboard listens, ``"host:port"``. By default
        :data:`DASHBOARD`, this machine only (``127.0.0.1``) on a free port; the dashboard
        shows logs, task details and worker pages, so another address (``"0.0.0.0:8787"``,
        every interface) is used only when given. ``None`` disables it. The workers' own
        HTTP pages listen on the same host.
    profile : bool
        Run distributed's statistical profiler in the local workers (the dashboard's Profile
        page). It samples every worker thread's stack each 10 ms, holding the GIL, which cost
        8 % of the CPU of Lite0 inference on two cores, so it is off unless asked for.

    Returns
    -------
    client : distributed.Client
        Yielded by the context manager.

    Examples
    --------
    >>> with get_client(n_workers=1, processes=False) as client:  # doctest: +SKIP
    ...     print(dashboard_link(client))

    Notes
    -----
    Local worker processes are started with Python's ``spawn`` method, which imports the
    calling script again in each worker. A script that starts a local cluster at its top level
    (``cpzarr.run("configs/demo.yaml")``) needs that call under ``if __name__ == "__main__":``
    to get worker processes; a script without the guard runs its local cluster on threads of
    its own process instead, with a warning saying what to write. The workers ignore Ctrl-C
    (the run's process stops them) and end without waiting on library finalizers once they
    have closed.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        client = _connect(scheduler)
        logger.info("connected to %s; dashboard %s", scheduler, dashboard_link(client))
        try:
            yield client
        finally:
            client.close()
        return
    _refuse_in_spawned_main()
    if processes and _unguarded_script():
        import warnings

        warnings.warn(_GUARD_WARNING, UserWarning, stacklevel=3)
        processes = False

    workers, threads = default_workers()
    kwargs: dict[str, Any] = dict(
        n_workers=n_workers or workers,
        threads_per_worker=threads_per_worker or threads,
        processes=processes,
        memory_limit=memory_limit,
        dashboard_address=dashboard_address,
    )
    if dashboard_address is not None:
        host = _host(dashboard_address)
        kwargs["worker_dashboard_address"] = f"{host}:0" if host else None
    if gpu:
        kwargs["resources"] = {"GPU": gpu}
    if processes:
        kwargs["env"] = tensorflow_threads(kwargs["threads_per_worker"])
    with _adaptive_malloc(processes), dask.config.set(_quiet_servers(profile)), _workers_ignore_sigint(processes):
        try:
            cluster = LocalCluster(**kwargs)
        except RuntimeError as err:
            raise _start_error(err) from err
        client = Client(cluster)
    client._cpzarr_dashboard = _local_link(client, dashboard_address)  # noqa: SLF001 (our own attribute)
    if processes:
        from cpzarr._worker_exit import QuietExit

        client.register_plugin(QuietExit(), name=QuietExit.name)
    ok = False
    # held until the client has closed: the loop runs the cancel callback before close's own
    with _no_sync_cancel_race():
        try:
            yield client
            ok = True
        finally:
            with _quiet_close(not ok):
                if not ok and processes:
                    with contextlib.suppress(Exception):  # workers that cannot be reached are killed anyway
                        client.run(_mute_distributed)
                client.close()
                cluster.close()


class _SyncCancelRace(logging.Filter):
    """Drops the one traceback distributed's ``sync`` logs when Ctrl-C lands before its call has
    started: its cancel callback then reads a variable not yet set (``NameError: cannot access
    free variable 'future'``), on the client's event-loop thread, as tornado's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NameError) and "'future'" in str(error)
                    and "sync.<locals>.cancel" in record.getMessage())


@contextlib.contextmanager
def _no_sync_cancel_race() -> Iterator[None]:
    """While a run holds its local cluster, that race's traceback is not printed (the run ends
    with its own one line on Ctrl-C)."""
    tornado_errors = logging.getLogger("tornado.application")
    race = _SyncCancelRace()
    tornado_errors.addFilter(race)
    try:
        yield
    finally:
        tornado_errors.removeFilter(race)


def _mute_distributed() -> None:
    """In a worker: no more of distributed's warnings (tasks cancelled by an interrupted run)."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _host(address: str) -> str:
    """The host part of ``"host:port"`` (empty for ``":port"``, every interface)."""
    return address.rsplit(":", 1)[0].strip("[]") if ":" in address else address


def _local_link(client: Any, address: str | None) -> str | None:
    """The dashboard URL of a local cluster, on the host it listens on.

    distributed names the link after the scheduler's address, which for an in-process cluster
    is the machine's network address even when the dashboard listens on 127.0.0.1 only.
    """
    if address is None:
        return None
    port = client.scheduler_info().get("services", {}).get("dashboard")
    if port is None:
        return None
    host = _host(address) or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        import socket

        host = socket.gethostname()
    return f"http://{host}:{port}/status"


def _connect(address: str) -> Any:
    """A client of the scheduler at ``address``, or :class:`ClusterError` within seconds.

    distributed retries a refused connection until its connect timeout (30 s by default) and
    then raises a bare ``OSError``; nothing listening is told at once here.
    """
    import socket
    from urllib.parse import urlsplit

    from distributed import Client

    from cpzarr.errors import ClusterError

    hint = ("start one (`dask scheduler` prints its address, then `dask worker ADDRESS` on each "
            "machine), or leave out --scheduler / cluster.scheduler to run on a local cluster")
    if "://" not in address:
        address = f"tcp://{address}"
    parts = urlsplit(address)
    if parts.scheme == "tcp":
        if parts.port is None:
            raise ClusterError(f"scheduler address {address!r} has no port (tcp://HOST:8786)")
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT).close()
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise ClusterError(f"no Dask scheduler at {address} ({reason}); {hint}") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except OSError as err:
        raise ClusterError(f"no Dask scheduler at {address} ({err}); {hint}") from None


_GUARD_WARNING = (
    "cpzarr runs its local cluster on threads of this process: this script has no "
    "`if __name__ == \"__main__\":` guard, and worker processes import the script again (and "
    "would run it again). For worker processes write\n\n"
    "    import cpzarr\n\n"
    "    if __name__ == \"__main__\":\n"
    "        cpzarr.run(\"configs/demo.yaml\")\n")

_GUARD = ("cpzarr started a local cluster at the top level of a script: its worker processes import "
          "the script again and would start clusters of their own. Put the call under "
          "`if __name__ == \"__main__\":`, for example\n\n"
          "    import cpzarr\n\n"
          "    if __name__ == \"__main__\":\n"
          "        cpzarr.run(\"configs/demo.yaml\")\n\n"
          "or run on threads in this process with cluster: {processes: false} "
          "(overrides=[\"cluster.processes=false\"]).")


def _refuse_in_spawned_main() -> None:
    """Raise :class:`ClusterError` in a spawned process that is re-running the user's script.

    ``spawn`` imports the parent's main script under the name ``__mp_main__`` in every child;
    a local cluster started there is an unguarded call in the parent's script.
    """
    import multiprocessing
    import sys

    from cpzarr.errors import ClusterError

    if multiprocessing.parent_process() is not None and "__mp_main__" in sys.modules:
        raise ClusterError(_GUARD)


def _unguarded_script() -> bool:
    """True when called from the top level of a main script that has no ``__main__`` guard.

    Worker processes started with ``spawn`` import such a script again and run its top level,
    cluster and all. Read from the script's syntax tree: a top-level
    ``if __name__ == "__main__":`` anywhere in it counts as a guard.
    """
    import ast
    import inspect
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return False
    frame = inspect.currentframe()
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return False
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
                    isinstance(n, ast.Constant) and n.value == "__main__" for n in names):
                return False
    return True


def _start_error(err: Exception) -> Exception:
    """The error for a local cluster that did not start (its workers' own errors are theirs)."""
    import sys

    from cpzarr.errors import ClusterError

    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None):
        return ClusterError(f"the local cluster's worker processes did not start ({err}). If this was "
                            f"called from a script: {_GUARD}")
    return ClusterError(f"the local cluster's worker processes did not start: {err}")


@contextlib.contextmanager
def _workers_ignore_sigint(processes: bool) -> Iterator[None]:
    """Worker processes spawned inside this context ignore SIGINT.

    Ctrl-C in a terminal signals every process of the foreground group, so each worker raised
    its own ``KeyboardInterrupt`` and printed its tracebacks while the run's process was
    already stopping them. An ignored signal stays ignored in a spawned child (and Python then
    installs no ``KeyboardInterrupt`` handler). The main thread ignores Ctrl-C only while the
    workers start.
    """
    import signal
    import threading

    if not processes or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _quiet_close(interrupted: bool) -> Iterator[None]:
    """Close a cluster without distributed's warnings when the run was interrupted.

    Workers interrupted mid-task are stopped and, after their grace period, killed; what they
    computed is either written (and marked complete) or not, so the warnings say nothing the
    user must act on.
    """
    if not interrupted:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("distributed", "distributed.nanny", "distributed.worker",
                                              "distributed.scheduler", "distributed.client")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


#: Slowest event-loop tick of a local cluster's servers (distributed's default is 20 ms).
TICK = "500ms"


def _quiet_servers(profile: bool) -> dict[str, Any]:
    """Dask config for the servers of a local cluster whose tasks are long computations.

    Every server (scheduler, nannies, workers) runs a "tick" callback that only measures how
    late its event loop is, by default every 20 ms. During Lite0 inference on two cores (15 s
    runs, profiler off) the client process's event loop, which hosts the scheduler and the
    nannies, used 0.54-0.77 s of CPU and each worker's 0.30-0.32 s; with a tick of
    :data:`TICK` 0.28-0.33 s and 0.16-0.19 s. A blocked loop is still reported. A slower tick
    the user configured is kept.
    """
    import dask
    from dask.utils import parse_timedelta

    tick = dask.config.get("distributed.admin.tick.interval")
    slowest = max(parse_timedelta(tick), parse_timedelta(TICK))
    return {"distributed.worker.profile.enabled": profile, "distributed.admin.tick.interval": f"{slowest}s"}


def tensorflow_threads(threads: int) -> dict[str, str]:
    """TensorFlow's thread pools for a process that runs ``threads`` inference tasks at once.

    TensorFlow sizes its pools to every core of the machine by default, so a process whose dask
    threads each run a forward pass (a threaded scheduler, or one worker process per core) runs
    more compute threads than there are cores; the oversubscription costs CPU in switching and
    spin-waiting (about 8 % on Lite0 with two dask threads on two cores). Each task instead runs
    single-threaded. Variables the user set in the environment are left out, so theirs win. The
    values take effect when set before TensorFlow runs its first operation in the process.

    Examples
    --------
    >>> os.environ.update(tensorflow_threads(2))  # doctest: +SKIP
    """
    wanted = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": str(threads)}
    return {k: v for k, v in wanted.items() if k not in os.environ}


@contextlib.contextmanager
def _adaptive_malloc(processes: bool) -> Iterator[None]:
    """Worker processes spawned inside this context keep glibc's adaptive malloc thresholds.

    distributed's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``, and any explicit
    threshold turns glibc's adaptive mmap threshold off: each tensor over 128 KiB that TensorFlow
    allocates is then a fresh mapping whose pages fault in again. On Lite0 that is 212 page faults
    and 0.4 ms of system time per plane, 15-20 % more CPU than in a plain process. The nanny also
    leaves the variable in this process's environment, where the next cluster would inherit it;
    it is removed while workers are spawned. A value the user set is kept.
    """
    import dask

    key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    if not processes or _USER_TRIM_THRESHOLD is not None:
        yield
        return
    left = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with dask.config.set({key: None}):
            yield
    finally:
        if left is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = left


def dashboard_link(client: Any) -> str | None:
    """Return the dashboard URL of ``client``'s cluster, or None when it has none."""
    if getattr(client, "_cpzarr_dashboard", False) is not False:
        return client._cpzarr_dashboard
    try:
        return client.dashboard_link
    except Exception:  # a scheduler started without the dashboard has no link
        return None


def has_gpu_workers(client: Any) -> bool:
    """True when at least one worker of ``client``'s cluster advertises a ``GPU`` resource."""
    info = client.scheduler_info()
    return any("GPU" in w.get("resources", {}) for w in info.get("workers", {}).values())


def map_batches(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    key_prefix: str,
    names: Sequence[str] | None = None,
    batch_size: int = 64,
    client: Any = None,
    resources: dict | None = None,
    progress: bool = True,
) -> list[Any]:
    """Apply ``func`` to each item, submitting at most ``batch_size`` tasks at a time.

    Parameters
    ----------
    func : callable
        Called once per item.
    items : sequence
        The units of work (wells, plates, cell ranges).
    key_prefix : str
        Task name shown in the dashboard (``"ingest-well"``); each task's key is
        ``f"{key_prefix}-{name}"``.
    names : sequence of str, optional
        One readable name per item (``"P1-A01"``); defaults to the item's position.
    batch_size : int
        Tasks in flight at once, so memory and graph size stay bounded.
    client : distributed.Client, optional
        Without one, items run in this process, in order.
    resources : dict, optional
        Worker resources each task needs (``{"GPU": 1}``).
    progress : bool
        Show a progress bar.

    Returns
    -------
    list
        ``func(item)`` for each item, in order.

    Examples
    --------
    >>> map_batches(lambda x: x * 2, [1, 2, 3], key_prefix="double", progress=False)
    [2, 4, 6]
    """
    from tqdm.auto import tqdm

    names = list(names) if names is not None else [str(i) for i in range(len(items))]
    results: list[Any] = [None] * len(items)
    bar = tqdm(total=len(items), desc=key_prefix, disable=not progress, leave=False)
    try:
        if client is None:
            for i, item in enumerate(items):
                results[i] = func(item)
                bar.update(1)
            return results
        from distributed import as_completed

        pending = iter(range(len(items)))
        index_of = {}
        futures = as_completed()

        def submit_next() -> bool:
            i = next(pending, None)
            if i is None:
                return False
            fut = client.submit(
                func, items[i], key=f"{key_prefix}-{names[i]}", resources=resources, pure=False
            )
            index_of[fut.key] = i
            futures.add(fut)
            return True

        for _ in range(batch_size):
            if not submit_next():
                break
        for fut in futures:
            results[index_of[fut.key]] = fut.result()
            bar.update(1)
            submit_next()
        return results
    finally:
        # Draw the count reached: updates closer together than tqdm's refresh interval are not
        # drawn, and a bar that does not stay (leave=False) is not drawn again by close(), so a
        # log's last line stopped short (71 %) when the last wells finished together.
        bar.refresh()
        bar.close()


def in_flight(client: Any, per_thread: int = 4, least: int = 8) -> int:
    """Work units to keep submitted at once on ``client``'s cluster: ``per_thread`` per worker thread.

    Enough that no thread waits for the next unit, few enough that the scheduler's task count
    and the client's futures do not grow with the screen. At least ``least``.
    """
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
    return max(least, per_thread * max(threads, 1))


def compute_bounded(
    client: Any,
    tasks: Sequence[Any],
    *,
    limit: int | None = None,
    on_done: Callable[[Any], None] | None = None,
    optimize_graph: bool = True,
    build: Callable[[list[Any]], Sequence[Any]] | None = None,
) -> list[Any]:
    """Compute dask collections on ``client``, at most ``limit`` submitted at a time.

    Parameters
    ----------
    client : distributed.Client
    tasks : sequence of dask collections, or of work units with ``build``
        Usually ``Delayed`` objects, one per work unit (a range of cells, a well).
    limit : int, optional
        Units in flight; by default :func:`in_flight` of the cluster. They are submitted in
        batches of half the limit, whenever half the window has finished.
    on_done : callable, optional
        Called with each result as it arrives (a progress bar).
    optimize_graph : bool
        Passed to ``Client.compute`` (dask fuses tasks, and drops their annotations, when true).
    build : callable, optional
        Called with a list of items of ``tasks`` right before they are submitted; returns one
        dask collection per item. The graph of a batch is then made only when the window takes
        it, so the client never holds the graph of the whole screen.

    Returns
    -------
    list
        The results, in the order of ``tasks``.
    """
    from distributed import as_completed

    limit = int(limit or in_flight(client))
    step = max(1, limit // 2)
    results: list[Any] = [None] * len(tasks)
    index_of: dict[str, int] = {}
    nxt = 0
    window = as_completed()

    def submit(count: int) -> None:
        nonlocal nxt
        chunk = list(range(nxt, min(nxt + count, len(tasks))))
        nxt += len(chunk)
        if not chunk:
            return
        batch = [tasks[i] for i in chunk]
        if build is not None:
            batch = list(build(batch))
        for i, future in zip(chunk, client.compute(batch, optimize_graph=optimize_graph)):
            index_of[future.key] = i
            window.add(future)

    submit(limit)
    running = len(index_of)
    for future in window:
        results[index_of.pop(future.key)] = value = future.result()
        future.release()
        running -= 1
        if on_done is not None:
            on_done(value)
        if running <= limit - step and nxt < len(tasks):
            before = len(index_of)
            submit(step)
            running += len(index_of) - before
    return results


def run_task(client: Any, key: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func(*args, **kwargs)`` as one task named ``key`` on ``client``'s cluster.

    For a step that is one out-of-core reduction over a table (aggregate, normalize, consensus,
    evaluate): the step runs on a worker, reading its input from the store and writing its
    output there, so the client neither computes nor holds it. Dask collections the step
    computes run on that worker's own threads (never back through the scheduler, where a
    worker waiting on its own tasks could starve the cluster). Warnings the step raised are
    raised again here, so they are printed where the run is watched.

    Parameters
    ----------
    client : distributed.Client or None
        Without one, ``func`` runs in this process.
    key : str
        Task name shown on the dashboard (``"aggregate-efficientnet-lite0"``); a short random
        suffix keeps it unique on a long-lived scheduler.
    func : callable
        A module-level function (shipped to the worker by reference).

    Returns
    -------
    object
        What ``func`` returned.

    Examples
    --------
    >>> run_task(None, "double", lambda x: 2 * x, 21)
    42
    """
    import uuid
    import warnings

    if client is None:
        return func(*args, **kwargs)
    future = client.submit(_task_in_worker, func, args, kwargs, key=f"{key}-{uuid.uuid4().hex[:8]}", pure=False)
    try:
        result, caught = future.result()
    finally:
        future.release()
    for category, message in caught:
        warnings.warn(message, category if isinstance(category, type) else UserWarning, stacklevel=2)
    return result


def _task_in_worker(func: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, list]:
    """Run a step inside a worker on its own threads; return its result and its warnings."""
    import warnings

    import dask

    threads = 1
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except ValueError:  # not in a worker
        threads = local_threads()
    with warnings.catch_warnings(record=True) as caught, dask.config.set(scheduler="threads", num_workers=threads):
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    seen, out = set(), []
    for w in caught:
        item = (w.category, str(w.message))
        if item[1] not in seen:
            seen.add(item[1])
            out.append(item)
    return result, out


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Yield consecutive lists of at most ``size`` items."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
