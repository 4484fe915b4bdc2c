"""Crops and aggregation read speed on local stores (and an S3 server), for before/after figures.

``python scripts/bench_store_reads.py setup FOLDER`` writes the benchmark stores (the uint8
LINCS-like store of ``benchmarks/benchmark_crops.py`` and the ``peer_sixth`` features node of
``benchmarks/benchmark_aggregate.py``); ``... crops FOLDER`` and ``... aggregate FOLDER`` print
cells/s and seconds over ``--repeat`` runs, with the code on ``PYTHONPATH`` (so one folder serves
two checkouts). ``... s3 FOLDER`` copies both stores to a moto server started here and times the
same reads there (figures only).
"""

import sys
import time
import warnings
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: the code measured
warnings.simplefilter("ignore")


def setup(folder):
    from benchmarks.benchmark_aggregate import make_features_node, well_sizes
    from benchmarks.benchmark_crops import write_lincs_like_store

    folder.mkdir(parents=True, exist_ok=True)
    print("cells", write_lincs_like_store(folder / "uint8.zarr", dtype="uint8"))
    make_features_node(folder / "peer_sixth.zarr", well_sizes("peer_sixth"))


def crops_rate(store, storage_options=None):
    import dask
    import numpy as np

    from benchmarks.benchmark_crops import BOX, _first_pixels
    from cpzarr.crops import crops
    from cpzarr.store import open_screen

    # edge="skip" as benchmark_crops.CropsSequential: the 5,800 cells whose box fits, comparable across versions
    view = crops(open_screen(store, **({"storage_options": storage_options} if storage_options else {})), box=BOX,
                 edge="skip")
    start = time.perf_counter()
    blocks = view.data.map_blocks(_first_pixels, drop_axis=[1, 2, 3], dtype=np.float64)
    dask.compute(blocks, scheduler="threads", num_workers=2)
    return view.sizes["cell"] / (time.perf_counter() - start)


def aggregate_seconds(store, storage_options=None):
    import dask.array as da
    from dask.system import CPU_COUNT

    from benchmarks.benchmark_aggregate import NODE, _read_files
    from cpzarr.profiles import aggregate
    from cpzarr.store import open_node

    da.zeros(4 * CPU_COUNT, chunks=1).sum().compute()
    if storage_options is None:
        _read_files(Path(store) / "features" / NODE)
    start = time.perf_counter()
    node = open_node(store, f"features/{NODE}")
    aggregate(node["features"], operation="mean").compute()
    return time.perf_counter() - start


def main():
    mode, folder = sys.argv[1], Path(sys.argv[2])
    repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    if mode == "setup":
        setup(folder)
    elif mode == "crops":
        rates = [crops_rate(folder / "uint8.zarr") for _ in range(repeat)]
        print("crops uint8 sequential cells/s:", " ".join(f"{r:.0f}" for r in rates), f"best {max(rates):.0f}")
    elif mode == "aggregate":
        times = [aggregate_seconds(folder / "peer_sixth.zarr") for _ in range(repeat)]
        print("aggregate mean peer_sixth s:", " ".join(f"{t:.2f}" for t in times), f"best {min(times):.2f}")
    elif mode == "s3":
        s3(folder, repeat)


def s3(folder, repeat):
    import logging
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    from cpzarr.store import Location

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("bench")
    for name in ("uint8.zarr", "peer_sixth.zarr"):
        fs.put(str(folder / name), f"bench/{name}", recursive=True)
    rates = [crops_rate(Location("s3://bench/uint8.zarr", options)) for _ in range(repeat)]
    print("S3 crops uint8 sequential cells/s:", " ".join(f"{r:.0f}" for r in rates))
    times = [aggregate_seconds(Location("s3://bench/peer_sixth.zarr", options), options) for _ in range(repeat)]
    print("S3 aggregate mean peer_sixth s:", " ".join(f"{t:.2f}" for t in times))
    server.stop()


if __name__ == "__main__":
    main()
