"""GPU check: Lite0 features of a LINCS-like store on one GPU worker, timed, checked and split.

Run by ``benchmarks/gpu/check.sh`` on a machine with a GPU (see the README's "GPU inference"). It

1. writes a LINCS-like store (1080 x 1080 sites, 5 channels, about 230 cells a site; the crops
   benchmark's ``write_lincs_like_store``),
2. starts a one-worker Dask cluster whose worker advertises ``GPU=1`` and has one thread per
   core, so that crop tasks (read, decode, cut) run on the other threads while the inference
   task holds the GPU,
3. computes Lite0 features of every cell whose 128 px box fits and writes them to the store's
   ``/features`` node (``cpzarr.features.extract`` + ``write_features``), after a warm-up site,
   while sampling ``nvidia-smi`` for the GPU's utilisation,
4. compares the features of a sample of cells with the same network run on the CPU in a fresh
   process (``CUDA_VISIBLE_DEVICES=""``),
5. times the parts of one site on their own: decode (read the site from the store), crop (cut
   the boxes), transfer (the float32 planes to the device) and network (forward pass minus
   transfer),
6. optionally trains a short run (``--train-cells``) and reports its cells/s,

and prints one JSON summary (also written to ``$OUT/gpu_check.json`` when ``OUT`` is set).
``--allow-cpu`` runs it all without a GPU (for the test of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: DeepProfiler's pre-trained profiling on one A100, seconds per site (the study's reference).
DEEPPROFILER_S_PER_SITE = 0.25
TARGET_S_PER_SITE = 0.05
BOX = 128


def _gpu_sampler(stop, samples):
    """Append (utilisation %, memory MiB) from nvidia-smi every half second until ``stop``."""
    query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
    while not stop.is_set():
        try:
            line = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
            util, memory = (float(v) for v in line.split(","))
            samples.append((util, memory))
        except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
            return
        stop.wait(0.5)


def _cpu_features(store, cells, backend, batch_size):
    """Features of ``cells`` computed with ``backend`` on the CPU, in a fresh process."""
    script = (
        "import sys, numpy as np\n"
        "from cpzarr.crops import crops\n"
        "from cpzarr.features.cnn import extract\n"
        "from cpzarr.store import open_screen\n"
        f"view = crops(open_screen({str(store)!r}), box={BOX}, edge='skip')\n"
        f"cells = np.load(sys.argv[1])\n"
        f"print(extract(view.isel(cell=cells), batch_size={batch_size}).compute(scheduler='sync').values.tolist())\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "cells.npy"
        np.save(index, cells)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", KERAS_BACKEND=backend, PYTHONPATH=str(ROOT),
                   JAX_PLATFORMS="cpu")
        done = subprocess.run([sys.executable, "-c", script, str(index)], env=env, capture_output=True,
                              text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"CPU reference failed:\n{done.stderr[-3000:]}")
    return np.asarray(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)


def _split_one_site(screen, backend, batch_size, max_cells=None):
    """Seconds of one site's decode, crop, transfer and network, each on its own (one stream)."""
    from cpzarr.crops import crops
    from cpzarr.features import cnn

    images = screen["images"].isel(plate=0, well=0, site=0)
    t0 = time.perf_counter()
    pixels = images.values  # read and decode the site's shard chunk
    t1 = time.perf_counter()
    view = crops(screen, box=BOX, edge="skip")
    first = view.isel(cell=np.flatnonzero((view["plate"].values == view["plate"].values[0])
                                          & (view["well"].values == view["well"].values[0])
                                          & (view["site"].values == view["site"].values[0]))[:max_cells])
    t2 = time.perf_counter()
    block = first.values  # cut every box of the site (reads the site again: subtracted below)
    t3 = time.perf_counter()
    crop_s = max((t3 - t2) - (t1 - t0), 0.0)
    n, channels = block.shape[:2]
    model = cnn._cached_model("efficientnet-lite0", "imagenet", None, (BOX, BOX), False)
    planes = cnn._scaled(block.reshape(n * channels, 1, BOX, BOX), "efficientnet-lite0").reshape(-1, BOX, BOX, 1)
    planes = np.concatenate([planes, np.zeros((-len(planes) % batch_size, BOX, BOX, 1), np.float32)])
    forward = cnn._forward_pass(model)
    forward(planes[:batch_size])  # compile this shape
    transfer = 0.0
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            t4 = time.perf_counter()
            for i in range(0, len(planes), batch_size):
                torch.from_numpy(planes[i : i + batch_size]).cuda()
            torch.cuda.synchronize()
            transfer = time.perf_counter() - t4
    elif backend == "jax":
        import jax

        if jax.default_backend() != "cpu":
            t4 = time.perf_counter()
            for i in range(0, len(planes), batch_size):
                jax.device_put(planes[i : i + batch_size]).block_until_ready()
            transfer = time.perf_counter() - t4
    t5 = time.perf_counter()
    for i in range(0, len(planes), batch_size):
        np.asarray(forward(planes[i : i + batch_size]))
    t6 = time.perf_counter()
    return {"cells": int(n), "planes": int(n * channels), "decode_s": t1 - t0, "crop_s": crop_s,
            "transfer_s": transfer, "network_s": max((t6 - t5) - transfer, 0.0), "image_shape": list(pixels.shape)}


def _train(store, cells, client):
    """One short training run on the GPU worker; cells/s of its second epoch."""
    from cpzarr.store import open_screen
    from cpzarr.train import train

    out = Path(store).parent / "train-check"
    shutil.rmtree(out, ignore_errors=True)
    started = []

    import keras

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.append(time.perf_counter())

        def on_train_end(self, logs=None):
            started.append(time.perf_counter())

    options = {"label": "compound", "split": "cells", "architecture": "efficientnet-lite0", "epochs": 2,
               "batch_size": 128, "cells_per_epoch": cells, "val_cells": 128, "weights": "random",
               "mixed_precision": "bfloat16", "workers": 8}
    train(open_screen(store), out, options, box=BOX, callbacks=(Clock(),), progress=False)
    epoch = started[-1] - started[-2]
    return {"cells_per_epoch": cells, "second_epoch_s": epoch, "cells_per_s": cells / epoch}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=60, help="wells of 4 sites each (default 60: 240 sites)")
    parser.add_argument("--store", default=None, help="where to write the store (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the GPU worker")
    parser.add_argument("--batch-size", type=int, default=None, help="planes per forward pass (default: cpzarr's)")
    parser.add_argument("--compare-cells", type=int, default=64, help="cells compared with the CPU result")
    parser.add_argument("--train-cells", type=int, default=0, help="cells per epoch of a short training run (0: none)")
    parser.add_argument("--max-cells", type=int, default=None,
                        help="profile only the first cells (for a run on the CPU; default: all)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (tests the script)")
    args = parser.parse_args(argv)

    from benchmarks.benchmark_crops import write_lincs_like_store
    from cpzarr.cluster import get_client
    from cpzarr.crops import crops
    from cpzarr.features import backend as keras_backend
    from cpzarr.features import cnn
    from cpzarr.store import open_screen

    info = keras_backend.device_info()
    print(f"backend {info['backend']} on {info['device']}", flush=True)
    if not info["gpu"] and not args.allow_cpu:
        sys.exit(f"no GPU seen by Keras's {info['backend']} backend (KERAS_BACKEND); --allow-cpu runs on the CPU")
    batch_size = args.batch_size or (cnn.BATCH_GPU if info["gpu"] else cnn.BATCH_CPU)

    folder = Path(args.store or tempfile.mkdtemp(prefix="cpzarr-gpu-"))
    store = folder / "lincs.zarr"
    t = time.perf_counter()
    n_cells = write_lincs_like_store(store, plates=1, wells=args.wells, sites=4, dtype="uint8")
    print(f"store: {args.wells * 4} sites, {n_cells} cells, written in {time.perf_counter() - t:.1f} s", flush=True)

    screen = open_screen(store)
    view = crops(screen, box=BOX, edge="skip")
    if args.max_cells:
        view = view.isel(cell=slice(0, args.max_cells))
    sites = len(set(zip(view["plate"].values, view["well"].values, view["site"].values)))
    summary = {"device": info, "sites": sites, "cells": int(view.sizes["cell"]), "batch_size": batch_size,
               "threads": args.threads}
    samples, stop = [], threading.Event()
    with get_client(n_workers=1, threads_per_worker=args.threads, gpu=1, processes=False,
                    dashboard_address=None) as client:
        warm = view.isel(cell=slice(0, min(256, view.sizes["cell"])))
        cnn.write_features(store, "warm-up", cnn.extract(warm, batch_size=batch_size, scheduler=client),
                           overwrite=True, progress=False, scheduler=client)
        sampler = threading.Thread(target=_gpu_sampler, args=(stop, samples), daemon=True)
        sampler.start()
        t = time.perf_counter()
        features = cnn.extract(view, batch_size=batch_size, scheduler=client)
        cnn.write_features(store, "efficientnet-lite0", features, overwrite=True, progress=False,
                           scheduler=client)
        wall = time.perf_counter() - t
        stop.set()
        summary.update({"wall_s": wall, "s_per_site": wall / sites, "sites_per_s": sites / wall,
                        "cells_per_s": summary["cells"] / wall, "target_s_per_site": TARGET_S_PER_SITE,
                        "deepprofiler_s_per_site": DEEPPROFILER_S_PER_SITE})
        if samples:
            util = np.array([s[0] for s in samples])
            summary["gpu_utilisation_pct"] = {"mean": float(util.mean()), "max": float(util.max()),
                                              "samples": len(util)}
            summary["gpu_memory_mib_max"] = float(max(s[1] for s in samples))
        if args.train_cells:
            summary["training"] = _train(store, args.train_cells, client)

    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(summary["cells"], min(args.compare_cells, summary["cells"]), replace=False))
    import xarray as xr

    node = xr.open_zarr(store, group="features/efficientnet-lite0", consolidated=False)
    got = node["features"].values[chosen]
    reference = _cpu_features(store, chosen, info["backend"], cnn.BATCH_CPU)
    summary["compare"] = {"cells": len(chosen), "max_abs_diff": float(np.abs(got - reference).max()),
                          "tolerance": 1e-3}
    summary["split_one_site"] = _split_one_site(screen, info["backend"], batch_size, args.max_cells)
    text = json.dumps(summary, indent=2)
    print(text)
    print(f"\n{summary['s_per_site']:.4f} s/site (target <= {TARGET_S_PER_SITE}, DeepProfiler "
          f"{DEEPPROFILER_S_PER_SITE}); {summary['cells_per_s']:.0f} cells/s; features equal to the CPU's "
          f"within {summary['compare']['max_abs_diff']:.2e}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)
    if args.store is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if summary["compare"]["max_abs_diff"] <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
