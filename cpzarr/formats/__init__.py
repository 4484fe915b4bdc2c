from cpzarr.formats import cytotable  # noqa: F401
from cpzarr.formats import lincs  # noqa: F401
from cpzarr.formats import ome_zarr  # noqa: F401
from cpzarr.formats import sqlite  # noqa: F401
