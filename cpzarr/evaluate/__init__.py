"""Profile-quality metrics, exact and blocked so they scale past 100,000 profiles.

Every function takes ``profiles``, a DataArray (sample, feature) with metadata coordinates along
``sample``, and the name(s) of the grouping coordinate(s); results are tidy pandas DataFrames.
Similarities are computed one block of queries at a time (``block_size``), never as an n × n
matrix. Conventions follow Cytominer-eval (Precision/Recall@K, Enrichment, Hit@K, replicate
reproducibility, grit) and copairs 0.5.5 (average precision, mAP, p-values); each function's
docstring states them.
"""

from . import plots
from ._enrichment import batch_enrichment, enrichment
from ._evaluate import (
    DEFAULT_METRICS,
    METRICS,
    default_k,
    default_percentiles,
    evaluate,
    headline,
    headline_percentile,
)
from ._hitk import hitk
from ._map import add_p_values, average_precision, benjamini_hochberg, mean_average_precision
from ._mp_value import mp_value
from ._modes import (
    expected_average_precision,
    fraction_retrieved,
    nscb,
    phenotypic_activity,
    phenotypic_consistency,
    well_position_effect,
)
from ._precision import precision_recall
from ._replicates import grit, replicate_reproducibility
from ._similarity import resolve_name, sample_table, similarity

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "default_k",
    "default_percentiles",
    "headline",
    "headline_percentile",
    "add_p_values",
    "average_precision",
    "batch_enrichment",
    "benjamini_hochberg",
    "enrichment",
    "evaluate",
    "expected_average_precision",
    "fraction_retrieved",
    "grit",
    "hitk",
    "mean_average_precision",
    "mp_value",
    "nscb",
    "phenotypic_activity",
    "phenotypic_consistency",
    "plots",
    "precision_recall",
    "replicate_reproducibility",
    "resolve_name",
    "sample_table",
    "similarity",
    "well_position_effect",
]
