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

from cpzarr import cells, evaluate, features, profiles, synthetic  # noqa: E402
from cpzarr.config import load_config  # noqa: E402
from cpzarr.crops import Sampler, crops, sample  # noqa: E402
from cpzarr.ingest import ingest  # noqa: E402
from cpzarr.run import demo, run  # noqa: E402
from cpzarr.store import open_screen  # noqa: E402

#: ``cpzarr.crops.sample`` reads as the issue's random-access sampler.
crops.sample = sample
crops.Sampler = Sampler

__all__ = [
    "ingest",
    "open_screen",
    "cells",
    "crops",
    "sample",
    "Sampler",
    "features",
    "profiles",
    "evaluate",
    "synthetic",
    "load_config",
    "run",
    "demo",
    "__version__",
]
