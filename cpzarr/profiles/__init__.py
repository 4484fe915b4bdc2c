"""Profile operations on ``DataArray[sample, feature]``: Pycytominer's steps as out-of-core reductions.

Metadata are coordinates along ``sample`` (without the ``Metadata_`` prefix); statistics are
computed in passes over dask chunks, so tables larger than memory work the same as small ones.
"""

from cpzarr.profiles._aggregate import aggregate
from cpzarr.profiles._annotate import annotate
from cpzarr.profiles._batch import coral, harmony, pca, tvn
from cpzarr.profiles._choose import (
    choose_pipeline, compare_pipelines, pipeline_metrics, rank_pipelines, sweep,
)
from cpzarr.profiles._consensus import consensus, modz_weights
from cpzarr.profiles._correct import correct_well_position, regress_cell_count
from cpzarr.profiles._io import from_pycytominer, read_profiles, to_pycytominer, write_profiles
from cpzarr.profiles._normalize import ZeroScaleWarning, normalize
from cpzarr.profiles._pipeline import RECIPE_STEPS, RECIPES, pipeline, recipe_steps
from cpzarr.profiles._select import correlation_matrix, default_blocklist, feature_select
from cpzarr.profiles._spherize import SpherizeWarning, spherize

__all__ = [
    "from_pycytominer", "to_pycytominer", "read_profiles", "write_profiles",
    "aggregate", "annotate", "normalize", "feature_select", "spherize", "consensus", "pipeline",
    "RECIPES", "RECIPE_STEPS", "recipe_steps",
    "correct_well_position", "regress_cell_count", "pca", "tvn", "coral", "harmony",
    "sweep", "compare_pipelines", "rank_pipelines", "choose_pipeline", "pipeline_metrics",
    "correlation_matrix", "default_blocklist", "modz_weights",
    "ZeroScaleWarning", "SpherizeWarning",
]
