"""Single-cell features: pre-trained CNN features, classical measurements, and imports.

``load_model`` and ``extract`` (CNN features, :mod:`cpzarr.features.cnn`), ``classical``
(:mod:`cpzarr.features.classic`), ``import_deepprofiler`` and ``import_cellprofiler``
(:mod:`cpzarr.features.imports`). Attributes are imported on first use, so that
``import cpzarr.features`` does not load Keras or TensorFlow.
"""

import importlib

__all__ = [
    "load_model",
    "preprocess",
    "extract",
    "write_features",
    "build_lite0",
    "classical",
    "import_deepprofiler",
    "import_cellprofiler",
]

_WHERE = {
    "load_model": "cnn",
    "preprocess": "cnn",
    "extract": "cnn",
    "write_features": "cnn",
    "build_lite0": "_lite0",
    "classical": "classic",
    "import_deepprofiler": "imports",
    "import_cellprofiler": "imports",
}


def __getattr__(name):
    if name in _WHERE:
        module = importlib.import_module(f"{__name__}.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
