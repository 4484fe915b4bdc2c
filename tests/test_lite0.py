"""EfficientNet-Lite0: the torch-free checkpoint reader, the Keras build, ImageNet sanity."""

import io
import pickle
import struct
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest

from cpzarr.errors import WeightsError
from cpzarr.features import _lite0


pytestmark = pytest.mark.usefixtures("cache")


@pytest.fixture(scope="module")
def imagenet_top():
    return _lite0.build_lite0((224, 224, 3), include_top=True, weights="imagenet")


def test_reader_equals_shared_npz(shared_models):
    state = _lite0.read_pth(_lite0.checkpoint_path())
    reference = np.load(shared_models / "efficientnet_lite0_imagenet.npz")
    assert list(state) == list(reference.keys())
    for key in reference.keys():
        assert state[key].dtype == reference[key].dtype, key
        np.testing.assert_array_equal(state[key], reference[key], err_msg=key)


def _legacy_file(payload, storages=()):
    """A legacy-format checkpoint: header pickles, the state-dict pickle ``payload``, the storage
    keys, then each storage's element count and little-endian bytes."""
    buf = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(head, buf)
    buf.write(payload)
    pickle.dump([key for key, _ in storages], buf)
    for _, values in storages:
        buf.write(struct.pack("<q", values.size) + values.tobytes())
    return buf.getvalue()


def test_reader_refuses_foreign_globals(tmp_path):
    # A pickle that would call os.system when loaded by plain pickle.
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file(evil))
    with pytest.raises(WeightsError, match="os.system"):
        _lite0.read_pth(path)


def _torch_like_pickle(state, monkeypatch):
    """Pickle ``state`` (name -> (storage key, dtype name, numel, offset, size, stride)) the way
    torch's legacy ``save`` does, with stand-ins registered under torch's module names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Storage:
        def __init__(self, key, kind, numel):
            self.pid = ("storage", getattr(torch, kind), key, "cpu", numel, None)

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, Storage) else None

    storages = {}
    tensors = OrderedDict()
    for name, (key, kind, numel, offset, size, stride) in state.items():
        storages.setdefault(key, Storage(key, kind, numel))
        tensors[name] = Tensor(storages[key], offset, size, stride)
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(tensors)
    return buf.getvalue()


def test_reader_rebuilds_strided_tensor(tmp_path, monkeypatch):
    # One float storage of 6 values viewed as a 2x2 tensor at offset 1 with strides (1, 2)
    # (a transposed view), and a batch-norm counter in a LongStorage, which is dropped.
    payload = _torch_like_pickle(
        {
            "w": ("0", "FloatStorage", 6, 1, (2, 2), (1, 2)),
            "bn.num_batches_tracked": ("1", "LongStorage", 1, 0, (), ()),
        },
        monkeypatch,
    )
    storages = [("0", np.arange(6, dtype="<f4")), ("1", np.array([7], "<i8"))]
    path = tmp_path / "tiny.pth"
    path.write_bytes(_legacy_file(payload, storages))
    state = _lite0.read_pth(path)
    assert list(state) == ["w"]
    np.testing.assert_array_equal(state["w"], np.array([[1.0, 3.0], [2.0, 4.0]], "f4"))


def test_architecture_counts():
    model = _lite0.build_lite0((224, 224, 3), include_top=True, weights=None)
    # 4,694,024 parameters including batch-norm statistics (shared/models/README.md).
    assert model.count_params() == 4_694_024
    assert not any("se_" in layer.name for layer in model.layers)
    assert _lite0.build_lite0((128, 128, 3)).output_shape == (None, 1280)
    assert _lite0.build_lite0((128, 128, 3), pooling=None).output_shape == (None, 4, 4, 1280)


def _top5(model, image):
    from skimage import transform

    x = transform.resize(image, (224, 224), preserve_range=True, anti_aliasing=True)
    probs = np.asarray(model(_lite0.preprocess_input(x)[None], training=False))[0]
    return list(np.argsort(probs)[::-1][:5])


def test_imagenet_cat_and_espresso(imagenet_top):
    from skimage import data

    cat = _top5(imagenet_top, data.chelsea())
    assert {285, 281, 282} & set(cat), cat  # Egyptian cat, tabby, tiger cat
    assert 967 in _top5(imagenet_top, data.coffee())  # espresso


def test_cache_written_once_and_repaired(cache, imagenet_top):
    path, info = _lite0.imagenet_weights()
    assert info["source_sha256"] == _lite0.CHECKPOINT_SHA256
    assert info["sha256"] == _lite0.sha256(path)
    mtime = path.stat().st_mtime_ns
    assert _lite0.imagenet_weights()[0].stat().st_mtime_ns == mtime
    path.write_bytes(b"corrupt")
    repaired, info2 = _lite0.imagenet_weights()
    assert info2["sha256"] == info["sha256"] == _lite0.sha256(repaired)
    assert not [p for p in cache.iterdir() if p.name.startswith(".lite0-")]


def test_adapted_stem_sees_grey_like_rgb(imagenet_top):
    # A grey image on all planes must give the same features to the 3- and 5-plane models.
    rgb = _lite0.build_lite0((64, 64, 3), weights="imagenet")
    five = _lite0.build_lite0((64, 64, 5), weights="imagenet")
    grey = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 1)).astype("float32")
    a = np.asarray(rgb(np.repeat(grey, 3, axis=-1), training=False))
    b = np.asarray(five(np.repeat(grey, 5, axis=-1), training=False))
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    kernel = rgb.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_allclose(
        _lite0.adapt_stem_kernel(kernel, 5)[:, :, 4], kernel.mean(axis=2) * 3 / 5, rtol=1e-6
    )


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nope.weights.h5"):
        _lite0.build_lite0(weights=tmp_path / "nope.weights.h5")


def test_folded_batch_norm_computes_the_same_function():
    model = _lite0.build_lite0((48, 48, 3), weights="imagenet")
    folded = _lite0.fold_batch_norm(model)
    assert not [layer for layer in folded.layers if "BatchNormalization" in type(layer).__name__]
    assert "top_activation" in [layer.name for layer in folded.layers]
    x = np.random.default_rng(2).uniform(-1, 1, (3, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), np.asarray(model(x, training=False)),
                               rtol=1e-4, atol=1e-4)


def test_one_plane_fold_equals_three_copied_planes():
    model = _lite0.build_lite0((48, 48, 3), weights="imagenet")
    grey = _lite0.fold_batch_norm(model, planes=1)
    assert grey.input_shape[-1] == 1
    plane = np.random.default_rng(3).uniform(-1, 1, (3, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(grey(plane, training=False)),
        np.asarray(model(np.repeat(plane, 3, axis=-1), training=False)),
        rtol=1e-4, atol=1e-4,
    )


class _Touch:
    """Unpickled by plain pickle, this creates the file ``path`` (it calls builtins.open)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("position", ["magic", "protocol", "system", "state", "keys"])
def test_reader_runs_no_pickle_code(tmp_path, position):
    """Issue 21 item 5: each of the checkpoint's pickles goes through a restricted unpickler."""
    target = tmp_path / "pwned.txt"
    evil = pickle.dumps(_Touch(target), protocol=2)
    parts = {
        "magic": pickle.dumps(0x1950A86A20F9469CFC6C), "protocol": pickle.dumps(1001),
        "system": pickle.dumps({"little_endian": True}), "state": pickle.dumps(OrderedDict()),
        "keys": pickle.dumps([]),
    }
    parts[position] = evil
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(parts.values()))
    with pytest.raises(WeightsError, match="builtins.open|io.open"):
        _lite0.read_pth(path)
    assert not target.exists()


@pytest.mark.parametrize("position, value, message", [
    ("magic", "not a number", "magic number is a str"),
    ("keys", {"0": 1}, "storage keys is a dict"),
    ("keys", ["9"], "storage '9' is listed"),
    ("state", [1, 2], "not a state dict"),
])
def test_reader_refuses_odd_plain_data(tmp_path, position, value, message):
    parts = {
        "magic": pickle.dumps(0x1950A86A20F9469CFC6C), "protocol": pickle.dumps(1001),
        "system": pickle.dumps({"little_endian": True}), "state": pickle.dumps(OrderedDict()),
        "keys": pickle.dumps([]),
    }
    parts[position] = pickle.dumps(value)
    path = tmp_path / "odd.pth"
    path.write_bytes(b"".join(parts.values()))
    with pytest.raises(WeightsError, match=message):
        _lite0.read_pth(path)
