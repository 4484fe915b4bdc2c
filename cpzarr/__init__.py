"""cpzarr: array-native image-based profiling of Cell Painting screens.

The data flow, one module per stage::

    ingest → cells → crops → features → profiles → evaluate → report

Examples
--------
>>> import cpzarr
>>> screen = cpzarr.open_screen("screen.zarr")  # doctest: +SKIP
>>> view = cpzarr.crops(screen, box=128)  # doctest: +SKIP
"""

__version__ = "0.1.0"

import importlib
import os

# TensorFlow's C++ start-up lines would print inside the progress bars; it reads this variable
# once, when it is first imported (by cpzarr.features or cpzarr.train, in this process or a
# worker). A value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Light modules (numpy, pandas, xarray, yaml) are imported at once; ``crops`` must be, so that
# the name is the function (with ``sample`` and ``Sampler`` on it) and not the submodule that a
# later ``import cpzarr.crops`` would otherwise bind to it.
from cpzarr import cells  # noqa: E402
from cpzarr.config import load_config  # noqa: E402
from cpzarr.crops import Sampler, crops, sample  # noqa: E402
from cpzarr.export import export_ome_zarr  # noqa: E402
from cpzarr.ingest import ingest  # noqa: E402
from cpzarr.run import demo, run  # noqa: E402
from cpzarr.store import open_screen  # noqa: E402

#: ``cpzarr.crops.sample`` reads as the issue's random-access sampler.
crops.sample = sample
crops.Sampler = Sampler

# Subpackages imported on first use: evaluate loads scipy.stats and synthetic scipy.ndimage
# (about 50 MB of a process that only normalizes profiles).
_LAZY = ("evaluate", "features", "illumination", "profiles", "synthetic")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ingest",
    "export_ome_zarr",
    "open_screen",
    "cells",
    "crops",
    "sample",
    "Sampler",
    "features",
    "profiles",
    "evaluate",
    "illumination",
    "synthetic",
    "load_config",
    "run",
    "demo",
    "__version__",
]
