"""Profile operations on ``DataArray[sample, feature]``: Pycytominer's steps as out-of-core reductions.

Metadata are coordinates along ``sample`` (without the ``Metadata_`` prefix); statistics are
computed in passes over dask chunks, so tables larger than memory work the same as small ones.
"""

from cpzarr.profiles._io import from_pycytominer, read_profiles, to_pycytominer, write_profiles

__all__ = ["from_pycytominer", "to_pycytominer", "read_profiles", "write_profiles"]
