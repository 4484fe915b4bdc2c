"""The trained model: a CNN backbone with a k-channel input, a named profile layer and a classifier.

ImageNet initialisation with k ≠ 3 channels: the first convolution's RGB kernel is replaced by its
mean over RGB, replicated k times and scaled by 3/k (``cpzarr.features._lite0.adapt_stem_kernel``),
so an image whose k channels are one gray plane excites the first layer as ImageNet's model is
excited by that gray image. EfficientNet-Lite0 does this in its own builder; for the Keras
applications the backbone is built twice, with 3 channels and ImageNet weights and with k channels,
and every weight is copied over, the stem kernel adapted as above and the input normalisation's
per-channel mean and variance replaced by their RGB mean.
"""

from __future__ import annotations

from pathlib import Path

from cpzarr.errors import ConfigError, WeightsError

__all__ = ["ARCHITECTURES", "build_model", "load_trained"]

#: Backbones accepted for ``architecture``; ``tiny`` is a three-convolution CNN for tests and demos.
ARCHITECTURES = ("efficientnet-lite0", "efficientnet-b0", "resnet50", "tiny")


# keras.applications.efficientnet.IMAGENET_STDDEV_RGB
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _backbone(architecture, x, weights):
    """Apply ``architecture``'s pooled feature extractor to the tensor ``x`` (flat, not nested)."""
    import keras

    if architecture == "tiny":
        for i, filters in enumerate((16, 32, 64)):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                                    name=f"conv{i + 1}")(x)
            # A fast-moving average: a test-sized run has few steps to settle the statistics.
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
            x = keras.layers.Activation("relu", name=f"relu{i + 1}")(x)
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if architecture == "efficientnet-lite0":
        from cpzarr.features._lite0 import build_lite0

        # The Lite recipe's input is (v − 127) / 128 for 0–255 pixels; crops arrive in [0, 1].
        x = keras.layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="to_lite")(x)
        lite0 = build_lite0(tuple(x.shape[1:]), include_top=False, pooling="avg", weights=weights)
        return lite0(x)
    # Keras' EfficientNetB0 expects 0–255 inputs and rescales itself; ResNet50 expects Caffe-style
    # 0–255 inputs centred on the ImageNet mean (≈ 115 averaged over BGR).
    if architecture == "efficientnet-b0":
        x = keras.layers.Rescaling(255.0, name="to_255")(x)
        app = keras.applications.EfficientNetB0
    else:
        x = keras.layers.Rescaling(255.0, offset=-114.8, name="to_caffe")(x)
        app = keras.applications.ResNet50
    return app(include_top=False, weights=weights, input_tensor=x, pooling="avg").output


def _adapt(source, target):
    """Copy ``source``'s weights into ``target`` layer by layer, RGB axes averaged to k channels."""
    import numpy as np

    from cpzarr.features._lite0 import adapt_stem_kernel

    src_layers = [layer for layer in source.layers if layer.weights]
    dst_layers = [layer for layer in target.layers if layer.weights]
    for src, dst in zip(src_layers, dst_layers):
        values = []
        for w_src, w_dst in zip(src.get_weights(), dst.weights):
            shape = tuple(w_dst.shape)
            if w_src.shape != shape:
                axes = [a for a, (s, d) in enumerate(zip(w_src.shape, shape)) if s != d]
                if len(w_src.shape) != len(shape) or len(axes) != 1 or w_src.shape[axes[0]] != 3:
                    raise WeightsError(
                        f"cannot adapt weight {w_dst.path!r}: ImageNet shape {w_src.shape}, "
                        f"model shape {shape}"
                    )
                if w_src.ndim == 4 and axes[0] == 2:
                    w_src = adapt_stem_kernel(w_src, shape[2])
                elif "variance" in w_dst.path and len(values) == 1:
                    # Keras' ImageNet EfficientNetB0 divides by sqrt(stddev) after its
                    # Normalization layer; only the 3-channel model has that layer, so it is
                    # folded into the variance: (x − m) / sqrt(v) / sqrt(s) = (x − m) / sqrt(v·s).
                    w_src = np.full(shape, np.mean(w_src * np.asarray(_IMAGENET_STDDEV_RGB)))
                else:
                    w_src = np.repeat(w_src.mean(axis=axes[0], keepdims=True), shape[axes[0]], axes[0])
            values.append(w_src)
        dst.set_weights(values)


def _with_weight_decay(model, weight_decay):
    """Rebuild ``model`` with an L2 penalty on every kernel; saved with the model's config."""
    import keras

    if not weight_decay:
        return model
    penalty = keras.regularizers.serialize(keras.regularizers.L2(weight_decay))

    def visit(node):
        if isinstance(node, dict):
            for key in ("kernel_regularizer", "depthwise_regularizer"):
                if key in node:
                    node[key] = penalty
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    config = model.get_config()
    visit(config)
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def build_model(
    n_classes: int,
    *,
    architecture: str = "efficientnet-lite0",
    box: int = 128,
    n_channels: int = 5,
    weights: str | None = "imagenet",
    profile_layer: str = "profile",
    weight_decay: float = 1e-4,
):
    """Build the classifier that weak supervision trains: backbone → profile layer → softmax.

    Parameters
    ----------
    n_classes : int
        Number of treatment classes.
    architecture : {"efficientnet-lite0", "efficientnet-b0", "resnet50", "tiny"}
        Backbone; its global-average-pooled output (1280 features for the EfficientNets, 2048
        for ResNet50, 64 for ``tiny``) is the profile layer.
    box, n_channels : int
        Crop side in pixels and number of channels; the input is ``(box, box, n_channels)``
        float32 crops scaled to [0, 1] per crop and channel, channels last.
    weights : {"imagenet", None} or str
        ``"imagenet"`` (first layer adapted to ``n_channels`` as this module explains), ``None``
        for random initialisation, or a weights file for the Lite0 builder.
    profile_layer : str
        Name given to the pooled layer, the one the features stage reads.
    weight_decay : float
        L2 penalty on every convolution and dense kernel (DeepProfiler: 1e-4).

    Returns
    -------
    keras.Model
        Inputs ``(batch, box, box, n_channels)``, outputs class probabilities (float32).

    Examples
    --------
    >>> model = build_model(4, architecture="tiny", box=32, weights=None)  # doctest: +SKIP
    >>> model.get_layer("profile").output.shape  # doctest: +SKIP
    (None, 64)
    """
    import keras

    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r}", [f"choose one of {ARCHITECTURES}"])
    if weights == "imagenet" and architecture == "tiny":
        raise ConfigError("architecture 'tiny' has no ImageNet weights; use weights: random")

    def assemble(channels, backbone_weights):
        inputs = keras.Input((box, box, channels), name="crops")
        pooled = _backbone(architecture, inputs, backbone_weights)
        profile = keras.layers.Identity(name=profile_layer)(pooled)
        outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32",
                                     name="classes")(profile)
        return keras.Model(inputs, outputs, name=f"cpzarr-{architecture}")

    model = assemble(n_channels, None)
    if weights == "imagenet" and architecture != "efficientnet-lite0":
        try:
            rgb = assemble(3, "imagenet")
        except Exception as err:  # a failed download surfaces as URLError, OSError, …
            raise WeightsError(
                f"ImageNet weights for {architecture} cannot be had ({err}); they download once "
                "into ~/.keras/models — copy them there on an offline machine, or use "
                "architecture efficientnet-lite0 (offline weights) or weights: random"
            ) from err
        _adapt(rgb, model)
    elif weights is not None and architecture == "efficientnet-lite0":
        model = assemble(n_channels, weights)
    return _with_weight_decay(model, weight_decay)


def load_trained(checkpoint, layer: str = "profile"):
    """Load a trained checkpoint as a feature model: crops → the profile layer.

    Parameters
    ----------
    checkpoint : str or Path
        A ``.keras`` file written by :func:`cpzarr.train.train` (``best.keras``, ``epoch-NNN.keras``).
    layer : str
        The layer whose output is the profile: the pooled ``"profile"`` layer (default), or
        ``"classes"`` for the softmax, or any other layer name of the model.

    Returns
    -------
    keras.Model
        Inputs ``(batch, box, box, channel)`` float32 crops scaled to [0, 1] per crop and channel
        (channels last, channels in the store's order); outputs ``(batch, features)``.

    Examples
    --------
    >>> model = load_trained("runs/train/best.keras")  # doctest: +SKIP
    >>> features = model.predict(crops)  # doctest: +SKIP
    """
    import keras

    # Importing the schedule registers it, so the optimizer of a checkpoint deserialises.
    from cpzarr.train._schedules import EpochSchedule  # noqa: F401

    path = Path(checkpoint)
    if not path.is_file():
        raise WeightsError(f"trained checkpoint {str(path)!r} does not exist")
    model = keras.models.load_model(path, compile=False)
    try:
        out = model.get_layer(layer).output
    except ValueError as err:
        names = [lay.name for lay in model.layers]
        raise WeightsError(
            f"checkpoint {str(path)!r} has no layer {layer!r}; last layers: {names[-5:]}"
        ) from err
    return keras.Model(model.inputs, out, name=f"{model.name}-{layer}")
