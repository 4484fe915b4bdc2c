import os

import dask

from cpzarr.cluster import batched, get_client, local_threads, map_batches


def test_map_batches_in_process_keeps_order():
    assert map_batches(lambda x: x * x, [3, 1, 2], key_prefix="sq", progress=False) == [9, 1, 4]


def test_local_threads_follow_dask():
    from dask.system import CPU_COUNT

    with dask.config.set(num_workers=None):
        assert local_threads() == CPU_COUNT
    with dask.config.set(num_workers=3):
        assert local_threads() == 3


def test_batched():
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]


def test_local_client_names_tasks_and_bounds_batches():
    with get_client(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == 1
        assert next(iter(info["workers"].values()))["nthreads"] == 2

        def work(item):
            from distributed import get_worker

            return item + 1, get_worker().get_current_task()

        out = map_batches(work, [10, 20, 30], key_prefix="ingest-well", names=["P1-A01", "P1-A02", "P2-A01"],
                          batch_size=2, client=client, progress=False)
    assert [v for v, _ in out] == [11, 21, 31]
    assert [k for _, k in out] == ["ingest-well-P1-A01", "ingest-well-P1-A02", "ingest-well-P2-A01"]


def test_worker_processes_size_tensorflow_pools_to_their_threads(monkeypatch):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "7")  # the user's own setting wins
    with get_client(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as client:
        seen = client.run(lambda: (os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("TF_NUM_INTEROP_THREADS")))
        profiled = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
    assert list(seen.values()) == [("1", "7")]
    assert list(profiled.values()) == [False]  # the stack sampler is off unless asked for


def test_profiler_on_request_and_a_slow_tick():
    with get_client(n_workers=1, processes=False, dashboard_address=None, profile=True) as client:
        profiled = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
        ticks = client.run(lambda dask_worker: dask_worker.periodic_callbacks["tick"].callback_time)
        scheduler_tick = client.cluster.scheduler.periodic_callbacks["tick"].callback_time
    assert list(profiled.values()) == [True]
    assert list(ticks.values()) == [500] and scheduler_tick == 500  # ms; distributed's default is 20
    with dask.config.set({"distributed.admin.tick.interval": "2s"}):  # a slower tick is the user's
        with get_client(n_workers=1, processes=False, dashboard_address=None) as client:
            ticks = client.run(lambda dask_worker: dask_worker.periodic_callbacks["tick"].callback_time)
    assert list(ticks.values()) == [2000]


def _page_faults_of_reused_blocks():
    """Minor page faults of four 8 MiB arrays made and freed in turn, after two warm-up ones."""
    import resource

    import numpy as np

    for _ in range(2):
        a = np.ones(1 << 20)
        del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        a = np.ones(1 << 20)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_worker_processes_reuse_freed_memory(monkeypatch):
    # distributed's nanny leaves MALLOC_TRIM_THRESHOLD_ behind in this process; workers must not
    # start with it, or every large array is mapped afresh and faults in (about 2,000 faults here)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with get_client(n_workers=1, processes=True, dashboard_address=None) as client:
        seen = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), _page_faults_of_reused_blocks()))
    (threshold, faults), = seen.values()
    assert threshold is None
    assert faults < 100
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's environment is left as it was
