"""Which Keras backend runs the networks, and on what device.

Keras 3 runs one model code on TensorFlow, JAX or PyTorch; the backend of a process is fixed when
``keras`` is first imported, from the ``KERAS_BACKEND`` environment variable (TensorFlow when it
is unset). cpzarr's models (:mod:`cpzarr.features._lite0`, :mod:`cpzarr.train`) use only
``keras.layers``/``keras.ops``, so every backend computes the same features; only the
TensorFlow frozen graph of :func:`cpzarr.features.cnn.extract` is a TensorFlow-only CPU
optimisation. TensorFlow is the CPU default (the fastest of the three on CPU for Lite0); PyTorch or
JAX with CUDA run the GPU path (see the README's "GPU inference" section).

A local cluster started by :func:`cpzarr.cluster.get_client` passes ``keras_backend`` to its
worker processes; a worker of an external cluster takes it from its own environment
(``KERAS_BACKEND=torch dask worker … --resources GPU=1``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile

from cpzarr.errors import InputError

__all__ = ["BACKENDS", "use_backend", "backend_name", "has_gpu", "device_info", "import_keras", "quiet_native_logs"]

#: The Keras backends cpzarr supports.
BACKENDS = ("tensorflow", "jax", "torch")


def use_backend(name: str | None) -> str:
    """Make ``name`` the Keras backend of this process and of processes it starts.

    Sets ``KERAS_BACKEND``. Keras reads it once, when it is first imported; if this process
    already runs another backend, the error says so rather than silently using the old one.

    Parameters
    ----------
    name : {"tensorflow", "jax", "torch"} or None
        ``None`` keeps the environment's choice.

    Returns
    -------
    str
        The backend now chosen.
    """
    if name is None:
        return os.environ.get("KERAS_BACKEND", "tensorflow")
    if name not in BACKENDS:
        raise InputError(f"keras_backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    if "keras" in sys.modules:
        running = sys.modules["keras"].backend.backend()
        if running != name:
            raise InputError(
                f"this Python process already runs Keras on {running}; keras_backend {name!r} takes "
                f"effect only in a fresh process (set KERAS_BACKEND={name} before starting Python)"
            )
    os.environ["KERAS_BACKEND"] = name
    return name


def backend_name() -> str:
    """The Keras backend of this process (imports Keras)."""
    return import_keras().backend.backend()


# TensorFlow's native start-up lines: absl's notice that it logs before being initialised, and
# INFO lines ("I1204 …" or "I0000 … port.cc:153] oneDNN custom operations are on …").
# TF_CPP_MIN_LOG_LEVEL no longer hides them in TensorFlow 2.21, and they land inside progress bars.
_NATIVE_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called|I\d{4} )")


@contextlib.contextmanager
def quiet_native_logs():
    """Hold back what native code writes to standard error meanwhile, and drop its INFO lines.

    Standard error (file descriptor 2) goes to a temporary file while the block runs; afterwards
    every line but TensorFlow's native INFO lines and absl's start-up notice is written to
    standard error, so warnings and errors still show (after the block rather than during it).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not _NATIVE_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_keras():
    """``keras``, imported without TensorFlow's native start-up lines on standard error."""
    if "keras" not in sys.modules:
        with quiet_native_logs():
            import keras  # noqa: F401
    return sys.modules["keras"]


@functools.cache
def has_gpu() -> bool:
    """Whether the Keras backend of this process computes on a GPU (asked once per process)."""
    backend = backend_name()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    return False


def device_info() -> dict:
    """The backend and the device that computes, for logs and the GPU check.

    Returns
    -------
    dict
        ``backend`` (``"torch"``, …), ``gpu`` (bool) and ``device`` (the accelerator's name,
        or ``"cpu"``).

    Examples
    --------
    >>> device_info()  # doctest: +SKIP
    {'backend': 'torch', 'gpu': True, 'device': 'NVIDIA H200'}
    """
    backend, gpu, device = backend_name(), has_gpu(), "cpu"
    if gpu and backend == "torch":
        import torch

        device = torch.cuda.get_device_name(0)
    elif gpu and backend == "jax":
        import jax

        device = jax.devices()[0].device_kind
    elif gpu and backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return {"backend": backend, "gpu": gpu, "device": device}
