"""CNN features over crops: equality with direct Keras calls, chunking, weights, the store node."""

import json
import os

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cpzarr.errors import InputError, StoreError, WeightsError
from cpzarr.features import _lite0, cnn

CHANNELS = ["DNA", "RNA", "Mito"]


pytestmark = pytest.mark.usefixtures("cache")


def make_crops(n=7, box=32, chunks=(3, 4), seed=0):
    """Random uint16 crops with drawn blobs, a constant crop, and the crops' cell coordinates."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4000, (n, len(CHANNELS), box, box)).astype(np.uint16)
    yy, xx = np.mgrid[:box, :box]
    values[:, 0] += (20000 * ((yy - box / 2) ** 2 + (xx - box / 2) ** 2 < (box / 4) ** 2)).astype(np.uint16)
    values[min(1, n - 1), 2] = 500  # a constant crop: scaled to zeros, no division by zero
    return xr.DataArray(
        da.from_array(values, chunks=(chunks, -1, -1, -1)),
        dims=("cell", "channel", "y", "x"),
        coords={
            "cell": ("cell", np.arange(n) + 10),
            "plate": ("cell", np.array(["P1"] * n, dtype=object)),
            "well": ("cell", np.array(["A01"] * 4 + ["B02"] * (n - 4), dtype=object)[:n]),
            "site": ("cell", np.ones(n, dtype=np.int64)),
            "x": ("cell", rng.uniform(0, 100, n)),
            "y": ("cell", rng.uniform(0, 100, n)),
            "channel": ("channel", np.array(CHANNELS, dtype=object)),
        },
    )


def by_hand(values, channel, model):
    """Min-max per crop in plain numpy, x255, Lite0's (x - 127) / 128, three planes, one call."""
    x = values[:, channel].astype(np.float64)
    low = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - low
    x = np.where(span > 0, (x - low) / np.where(span > 0, span, 1), 0) * 255
    x = ((x - 127) / 128).astype(np.float32)
    return np.asarray(model(np.stack([x, x, x], axis=-1), training=False))


@pytest.fixture(scope="module")
def lite0_32():
    return _lite0.build_lite0((32, 32, 3), weights="imagenet")


def test_extract_equals_direct_keras_per_channel(lite0_32):
    crops = make_crops()
    features = cnn.extract(crops, batch_size=4)
    assert features.sizes == {"cell": 7, "feature": 3 * 1280}
    assert list(features.feature.values[[0, 1279, 1280, 3839]]) == ["DNA_0000", "DNA_1279", "RNA_0000", "Mito_1279"]
    for name in ("cell", "plate", "well", "site", "x", "y"):
        np.testing.assert_array_equal(features[name].values, crops[name].values)
    assert features.attrs["weights_sha256"] == _lite0.imagenet_weights()[1]["sha256"]
    got = features.compute(scheduler="sync").values
    values = crops.values
    for c, channel in enumerate(CHANNELS):
        block = got[:, c * 1280 : (c + 1) * 1280]
        np.testing.assert_allclose(block, by_hand(values, c, lite0_32), rtol=1e-4, atol=1e-4, err_msg=channel)
    assert got.std() > 0.1  # pretrained features are not degenerate


def test_independent_of_chunking_batch_and_workers():
    reference = cnn.extract(make_crops(chunks=(7,)), batch_size=64).compute(scheduler="sync").values
    other = cnn.extract(make_crops(chunks=(2, 2, 1, 2)), batch_size=5)
    np.testing.assert_allclose(other.compute(scheduler="threads", num_workers=2).values, reference,
                               rtol=1e-5, atol=1e-5)


def test_long_chunks_are_cut_into_near_equal_tasks(monkeypatch):
    # 130 cells -> 3 parts (64 at most): 44, 43, 43; 64 and shorter chunks stay whole
    assert cnn._task_chunks((130, 64, 5, 65)) == (44, 43, 43, 64, 5, 33, 32)
    monkeypatch.setattr(cnn, "TASK_CELLS", 3)
    crops = make_crops(chunks=(7,))
    features = cnn.extract(crops)
    assert features.chunks[0] == (3, 2, 2)
    reference = cnn.extract(make_crops(chunks=(7,)), batch_size=64).compute(scheduler="sync").values
    np.testing.assert_allclose(features.compute(scheduler="sync").values, reference, rtol=1e-5, atol=1e-5)


def test_default_batch_is_the_cpu_batch(monkeypatch):
    block = cnn._features_block
    calls = []

    class Model:
        output_shape = (None, 2)
        input_shape = (None, 32, 32, 1)

        def predict_on_batch(self, batch):
            calls.append(len(batch))
            return np.zeros((len(batch), 2), np.float32)

    monkeypatch.setattr(cnn, "_cached_model", lambda *args: Model())
    block(np.zeros((7, 3, 32, 32), np.uint8), "efficientnet-lite0", "imagenet", None, None, "float32", False)
    assert cnn.BATCH_CPU == 8
    assert calls == [8, 8, 8]  # 21 planes: 8, 8, then 5 padded to the next power of two
    calls.clear()
    block(np.zeros((7, 3, 32, 32), np.uint8), "efficientnet-lite0", "imagenet", None, 6, "float32", False)
    assert calls == [6, 6, 6, 4]  # 3 left: padded to 4
    calls.clear()
    block(np.zeros((11, 1, 32, 32), np.uint8), "efficientnet-lite0", "imagenet", None, 6, "float32", False)
    assert calls == [6, 6]  # 5 left: the next power of two, 8, is more than a batch


def test_tensorflow_runs_the_model_with_constant_weights(monkeypatch):
    model = _lite0.fold_batch_norm(_lite0.build_lite0((32, 32, 3), weights="imagenet"), planes=1)
    x = np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 1)).astype(np.float32)
    expected = np.asarray(model.predict_on_batch(x))
    forward = cnn._forward_pass(model)
    assert forward is cnn._forward_pass(model)  # made once per model
    np.testing.assert_allclose(forward(x), expected, rtol=1e-5, atol=1e-5)
    # The weights were copied into the graph: changing the model's variables leaves it alone.
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    assert np.abs(np.asarray(model.predict_on_batch(x))).max() == 0
    np.testing.assert_allclose(forward(x), expected, rtol=1e-5, atol=1e-5)

    from tensorflow.python.framework import convert_to_constants

    def cannot(*args, **kwargs):
        raise ValueError("no")

    monkeypatch.setattr(convert_to_constants, "convert_variables_to_constants_v2", cannot)
    other = _lite0.build_lite0((32, 32, 3), weights=None)
    with pytest.warns(RuntimeWarning, match="cannot freeze the graph of model efficientnet-lite0"):
        fallback = cnn._forward_pass(other)
    assert fallback == other.predict_on_batch


def test_layer_is_spatially_averaged(lite0_32):
    crops = make_crops(n=3, chunks=(3,))
    features = cnn.extract(crops, layer="block6a_expand_activation").compute(scheduler="sync")
    assert features.sizes["feature"] == 3 * 672
    inner = lite0_32.get_layer("block6a_expand_activation").output
    import keras

    probe = keras.Model(lite0_32.inputs, inner)
    x = cnn.preprocess(crops.values)[:, 1]
    expected = np.asarray(probe(x, training=False)).mean(axis=(1, 2))
    np.testing.assert_allclose(features.sel(feature=features.feature.str.startswith("RNA")).values,
                               expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="no layer 'nope'"):
        cnn.load_model(layer="nope", input_shape=(32, 32, 3))


def test_float16_output():
    features = cnn.extract(make_crops(n=2, chunks=(2,)), dtype="float16")
    assert features.dtype == np.float16 and features.compute(scheduler="sync").dtype == np.float16


def test_b0_from_local_file_equals_keras_applications(tmp_path):
    import keras

    # Random B0 weights saved to a local file stand in for the ImageNet file (no network).
    reference = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                  pooling="avg")
    path = tmp_path / "b0.weights.h5"
    reference.save_weights(path)
    crops = make_crops(n=3, chunks=(2, 1))
    features = cnn.extract(crops, model="efficientnet-b0", weights=path).compute(scheduler="sync")
    x = crops.values[:, 2].astype(np.float64)
    low, high = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    x = np.where(high > low, (x - low) / np.where(high > low, high - low, 1), 0) * 255
    expected = np.asarray(reference(np.stack([x] * 3, axis=-1).astype(np.float32), training=False))
    np.testing.assert_allclose(features.values[:, 2 * 1280 :], expected, rtol=1e-4, atol=1e-4)
    assert features.attrs["weights"] == str(path)


def test_resnet50_preprocessing_is_caffe():
    x = np.random.default_rng(1).integers(0, 1000, (2, 1, 4, 4))
    scaled = (x - x.min(axis=(2, 3), keepdims=True)) / np.ptp(x, axis=(2, 3), keepdims=True) * 255
    got = cnn.preprocess(x, "resnet50")
    for plane, mean in enumerate([103.939, 116.779, 123.68]):  # BGR ImageNet means
        np.testing.assert_allclose(got[..., plane], scaled - mean, rtol=1e-5, atol=1e-4)


def test_weights_must_be_honest(tmp_path):
    fake = tmp_path / "efficientnetb0_notop.h5"
    fake.write_bytes(b"not the real file")
    with pytest.raises(WeightsError, match="md5"):
        cnn.load_model("efficientnet-b0", weights=fake)
    with pytest.raises(WeightsError, match="does not exist"):
        cnn.load_model("resnet50", weights=tmp_path / "missing.h5")
    with pytest.raises(InputError, match="unknown model"):
        cnn.extract(make_crops(n=1, chunks=(1,)), model="efficientnet-b7")
    assert cnn.weights_info("efficientnet-b0", None)["weights"] == "random"


def make_store(path):
    import zarr

    zarr.open_group(str(path), mode="w", zarr_format=3).attrs["provenance"] = "{}"
    return path


def test_write_features_node_and_resume(tmp_path):
    store = make_store(tmp_path / "screen.zarr")
    crops = make_crops(n=7, chunks=(3, 4))
    features = cnn.extract(crops)
    expected = features.compute(scheduler="sync")
    node = cnn.write_features(store, "efficientnet-lite0", features, chunk_cells=3, progress=False,
                              scheduler="sync")
    written = xr.open_zarr(store, group="features/efficientnet-lite0", consolidated=False)
    np.testing.assert_array_equal(written["features"].values, expected.values)
    assert written["features"].encoding["chunks"] == (3, 3 * 1280)
    (codec,) = written["features"].encoding["compressors"]
    assert (codec.cname.value, codec.shuffle.value) == ("lz4", "noshuffle")
    assert written["unit_complete"].values.tolist() == [True, True, True]
    for name in ("cell", "plate", "well", "site", "x", "y", "feature"):
        np.testing.assert_array_equal(written[name].values, expected[name].values)
    assert written.attrs["model"] == "efficientnet-lite0"
    provenance = json.loads(xr.open_zarr(store, consolidated=False).attrs["provenance"])
    assert provenance["features/efficientnet-lite0"]["weights_sha256"] == expected.attrs["weights_sha256"]

    # Interrupted run: unit 1 neither written nor marked. A second call redoes only that unit.
    import zarr

    group = zarr.open_group(str(node), mode="r+")
    group["features"][3:6] = 0
    group["unit_complete"][1] = False
    group["features"][0:3] = -1  # marked complete: must be left alone
    cnn.write_features(store, "efficientnet-lite0", features, chunk_cells=3, progress=False, scheduler="sync")
    again = xr.open_zarr(store, group="features/efficientnet-lite0", consolidated=False)
    np.testing.assert_array_equal(again["features"].values[3:], expected.values[3:])
    assert (again["features"].values[:3] == -1).all()

    other = cnn.extract(crops, layer="top_conv")
    with pytest.raises(StoreError, match="overwrite=True"):
        cnn.write_features(store, "efficientnet-lite0", other, chunk_cells=3, progress=False)
    cnn.write_features(store, "efficientnet-lite0", features, chunk_cells=3, progress=False,
                       overwrite=True, scheduler="sync")
    fresh = xr.open_zarr(store, group="features/efficientnet-lite0", consolidated=False)
    np.testing.assert_array_equal(fresh["features"].values, expected.values)
    assert not [p for p in (store / "features").iterdir() if p.name.startswith(".")]
    assert not (tmp_path / ".screen.zarr.cpzarr-tmp").exists()


def test_mixed_precision_choice_is_checked():
    with pytest.raises(InputError, match="mixed_precision"):
        cnn.extract(make_crops(n=1, chunks=(1,)), mixed_precision="int8")


def test_trained_checkpoint_sees_all_channels(tmp_path):
    from cpzarr.train import build_model, load_trained

    model = build_model(4, architecture="tiny", box=32, n_channels=3, weights=None)
    checkpoint = tmp_path / "best.keras"
    model.save(checkpoint)
    crops = make_crops(n=5, chunks=(2, 3))
    features = cnn.extract(crops, model="trained", weights=checkpoint, batch_size=4).compute(scheduler="sync")
    assert features.sizes["feature"] == 64 and features.feature.values[0] == "profile_0000"
    x = crops.values.astype(np.float64)
    low, high = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
    x = np.where(high > low, (x - low) / np.where(high > low, high - low, 1), 0).transpose(0, 2, 3, 1)
    expected = np.asarray(load_trained(checkpoint)(x.astype(np.float32), training=False))
    np.testing.assert_allclose(features.values, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(WeightsError, match="checkpoint"):
        cnn.extract(crops, model="trained")


def write_tiny_screen(path, size=96):
    """A two-well, one-site, three-channel store in the contract's layout with a /cells node."""
    import pandas as pd
    import zarr

    from cpzarr import __version__
    from cpzarr.cells import cells_from_table, write_cells

    rng = np.random.default_rng(5)
    root = xr.Dataset(
        {"present": (("plate", "well", "site"), np.ones((1, 2, 1), bool))},
        coords={"plate": np.array(["P1"], object), "well": np.array(["A01", "A02"], object),
                "site": [1], "channel": np.array(CHANNELS, object)},
        attrs={"cpzarr_version": __version__, "complete": True, "provenance": "{}"},
    )
    root.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    images = group.create_array("images", shape=(1, 2, 1, 3, size, size), dtype="uint16",
                                chunks=(1, 1, 1, 3, size, size), fill_value=0,
                                dimension_names=["plate", "well", "site", "channel", "y", "x"])
    images[:] = rng.integers(0, 3000, images.shape).astype(np.uint16)
    table = pd.DataFrame({"plate": "P1", "well": ["A01"] * 3 + ["A02"] * 2, "site": 1,
                          "x": [30.0, 50.0, 70.0, 40.0, 60.0], "y": [30.0, 60.0, 40.0, 50.0, 45.0]})
    write_cells(path, cells_from_table(table, xr.open_zarr(path, consolidated=False)["images"]))
    return path


def test_cli_profile_store_to_store(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cpzarr.cli import main
    from cpzarr.crops import crops
    from cpzarr.store import open_screen

    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)  # absent now, and again after the test
    store = write_tiny_screen(tmp_path / "screen.zarr")
    result = CliRunner().invoke(main, ["profile", str(store), "--box", "32", "--channels", "DNA,Mito",
                                       "--chunk-cells", "2", "--no-progress", "--workers", "3"])
    assert result.exit_code == 0, result.output
    # each of the 3 threads runs its own single-threaded forward passes
    assert (os.environ["TF_NUM_INTRAOP_THREADS"], os.environ["TF_NUM_INTEROP_THREADS"]) == ("1", "3")
    assert "5 cells x 2560 features" in result.output
    node = open_screen(store, node="features/efficientnet-lite0")
    view = crops(open_screen(store), box=32, channels=["DNA", "Mito"])
    expected = cnn.extract(view).compute(scheduler="sync")
    np.testing.assert_allclose(node["features"].values, expected.values, rtol=1e-6, atol=1e-6)
    assert list(node["well"].values) == ["A01"] * 3 + ["A02"] * 2
    assert node["feature"].values[1280] == "Mito_0000"


def test_gpu_workers_get_gpu_tasks():
    from distributed import Client, LocalCluster

    crops = make_crops(n=4, chunks=(2, 2))
    plain = cnn.extract(crops)
    assert not any(layer.annotations for layer in plain.data.dask.layers.values())
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, resources={"GPU": 1},
                      dashboard_address=None) as cluster, Client(cluster) as client:
        features = cnn.extract(crops, scheduler=client)
        layers = [layer for name, layer in features.data.dask.layers.items() if name.startswith("features-")]
        assert layers and layers[0].annotations == {"resources": {"GPU": 1}}
        got = client.compute(features.data).result()
    np.testing.assert_allclose(got, plain.compute(scheduler="sync").values, rtol=1e-5, atol=1e-5)


def test_write_features_extracts_each_crop_chunk_once(tmp_path, monkeypatch):
    # Units of 2 cells straddle the crop chunks of 3 and 4: each chunk must still go through the
    # network once, not once per unit it feeds.
    seen = []
    original = cnn._features_block

    def counting(block, *args):
        seen.append(block.shape[0])
        return original(block, *args)

    monkeypatch.setattr(cnn, "_features_block", counting)
    store = make_store(tmp_path / "screen.zarr")
    features = cnn.extract(make_crops(n=7, chunks=(3, 4)))
    cnn.write_features(store, "efficientnet-lite0", features, chunk_cells=2, progress=False, scheduler="threads")
    assert sorted(seen) == [3, 4]
