"""The GPU path on CPU: other Keras backends give TensorFlow's features; GPU tasks go to GPU workers.

The cross-backend tests run the network in a fresh Python process with ``KERAS_BACKEND`` set (a
process's backend is fixed when Keras is imported) and skip only when that backend's package is
not installed: CI installs PyTorch's CPU build (``.ci/run``), JAX where it is installed.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.features import backend, cnn

pytestmark = pytest.mark.usefixtures("cache")

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
BOX = 128

# The features of a saved block of crops, computed in this process's Keras backend.
_RUN = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    from cpzarr.features import cnn
    crops = np.load(sys.argv[1])
    out = cnn._features_block(crops, "efficientnet-lite0", "imagenet", None, None, "float32", False)
    np.save(sys.argv[2], out)
    print(keras.backend.backend())
    """
)


@pytest.fixture(scope="module")
def lincs_crops(shared_data):
    """128-px crops of 6 real LINCS nuclei (5 channels), cut in numpy around their centres."""
    root = shared_data / "lincs_images_SQ00015198_SQ00015230"
    index = pd.read_csv(root / "index.csv")
    row = index.iloc[0]
    site = np.stack([iio.imread(root / row[c]) for c in CHANNELS])
    centres = pd.read_csv(root / row["Nuclei_Locations"]).to_numpy()
    h, w = site.shape[1:]
    inside = [(x, y) for x, y in centres if BOX // 2 <= x < w - BOX // 2 and BOX // 2 <= y < h - BOX // 2]
    crops = []
    for x, y in inside[:6]:
        x0, y0 = int(round(x)) - BOX // 2, int(round(y)) - BOX // 2
        crops.append(site[:, y0 : y0 + BOX, x0 : x0 + BOX])
    return np.stack(crops)


def _features_in(backend_name, crops, tmp_path):
    path_in, path_out = tmp_path / "crops.npy", tmp_path / f"{backend_name}.npy"
    np.save(path_in, crops)
    env = dict(os.environ, KERAS_BACKEND=backend_name, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", _RUN, str(path_in), str(path_out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == backend_name
    return np.load(path_out)


@pytest.fixture(scope="module")
def tensorflow_features(lincs_crops, tmp_path_factory):
    return _features_in("tensorflow", lincs_crops, tmp_path_factory.mktemp("tensorflow"))


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_gpu_backends_equal_tensorflow_on_real_lincs_crops(name, lincs_crops, tensorflow_features, tmp_path):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    reference = tensorflow_features
    got = _features_in(name, lincs_crops, tmp_path)
    assert got.shape == reference.shape == (len(lincs_crops), 5 * 1280)
    assert np.isfinite(got).all()
    # The features differ only by float32 rounding between the backends' kernels.
    assert np.abs(got - reference).max() <= 1e-3
    # ... and they are features, not zeros: ReLU6 pooled values of real cells spread out.
    assert reference.std() > 0.05


def test_prefetch_gives_the_same_rows_in_order():
    calls = []

    class Model:
        output_shape = (None, 1)

    def forward(batch):
        calls.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :1] * 2

    inputs = np.arange(23, dtype=np.float32).reshape(23, 1)
    cnn._FORWARD[model := Model()] = forward
    plain = cnn._predict(model, inputs, 4, lambda b: b + 1)
    fetched = cnn._predict(model, inputs, 4, lambda b: b + 1, prefetch=True)
    np.testing.assert_array_equal(plain, (inputs + 1) * 2)
    np.testing.assert_array_equal(fetched, plain)
    assert calls == [4] * 5 + [4] + [4] * 5 + [4]  # 23 rows: 5 full batches, then 3 padded to 4


def test_use_backend_names_the_problem():
    with pytest.raises(InputError, match="keras_backend must be one of"):
        backend.use_backend("theano")
    import keras

    running = keras.backend.backend()
    other = "jax" if running != "jax" else "torch"
    with pytest.raises(InputError, match=f"already runs Keras on {running}.*KERAS_BACKEND={other}"):
        backend.use_backend(other)
    assert backend.use_backend(running) == running
    info = backend.device_info()
    assert info == {"backend": running, "gpu": False, "device": "cpu"}


def _crops(n=6, box=32, chunks=2):
    rng = np.random.default_rng(3)
    values = rng.integers(0, 4000, (n, 2, box, box)).astype(np.uint16)
    return xr.DataArray(da.from_array(values, chunks=(chunks, -1, -1, -1)), dims=("cell", "channel", "y", "x"),
                        coords={"channel": ["DNA", "RNA"]})


def test_inference_tasks_run_only_on_workers_that_advertise_a_gpu(tmp_path):
    """A CPU worker with ``GPU=1`` beside one without: every features task goes to the first,
    crop reads go to either, and the node written equals the one computed without a cluster."""
    import zarr
    from distributed import Client, Scheduler, SpecCluster, Worker, get_task_stream

    crops = _crops()
    reference = cnn.extract(crops, batch_size=4).compute(scheduler="sync").values
    store = tmp_path / "screen.zarr"
    zarr.open_group(str(store), mode="w", zarr_format=3).attrs["provenance"] = "{}"
    workers = {
        "gpu": {"cls": Worker, "options": {"nthreads": 2, "resources": {"GPU": 1}}},
        "cpu": {"cls": Worker, "options": {"nthreads": 2}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        gpu_address = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"])
        features = cnn.extract(crops, batch_size=4, scheduler=client)
        # On a GPU cluster a task keeps its whole crop chunk, not cut for a CPU core.
        assert features.chunks[0] == crops.chunks[0]
        with get_task_stream(client=client) as stream:
            cnn.write_features(store, "efficientnet-lite0", features, chunk_cells=2, progress=False,
                               scheduler=client)
    # Inference keys are ("features-<model>-<token>", i, 0); the crop reads before them are not.
    inference = [r["worker"] for r in stream.data if str(r["key"]).lstrip("('\"").startswith("features-")]
    assert len(inference) == 3, [(r["key"], r["worker"]) for r in stream.data]
    assert set(inference) == {gpu_address}
    written = xr.open_zarr(store, group="features/efficientnet-lite0", consolidated=False)
    np.testing.assert_allclose(written["features"].values, reference, rtol=1e-5, atol=1e-5)


def test_keras_imports_without_tensorflows_native_start_up_lines(tmp_path):
    """TensorFlow's absl notice and INFO lines are dropped; other standard-error lines still show."""
    script = textwrap.dedent(
        """
        import os, sys
        from cpzarr.features.backend import import_keras, quiet_native_logs
        keras = import_keras()
        import numpy as np
        keras.Sequential([keras.layers.Dense(2)])(np.zeros((1, 3)))
        with quiet_native_logs():
            os.write(2, b"I0000 00:00:1.0 1 port.cc:153] native info\\n")
            os.write(2, b"W0000 00:00:1.0 1 port.cc:153] native warning\\n")
            print("a Python warning line", file=sys.stderr)
        print(keras.backend.backend())
        """
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "tensorflow"
    assert "absl::InitializeLog" not in done.stderr and "oneDNN custom operations" not in done.stderr
    assert "native info" not in done.stderr
    assert "native warning" in done.stderr and "a Python warning line" in done.stderr
