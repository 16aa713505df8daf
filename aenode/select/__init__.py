"""Series selection: which series of a study a model analyses, and why the others not.

Pure functions over per-instance header facts (:class:`InstanceInfo`), which come either
from the store's index rows or from DICOM headers read off disk (``aenode predict``).
"""

from aenode.select.rules import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    InstanceInfo,
    SelectionResult,
    SeriesSummary,
    group_series,
    select_series,
    summarise_series,
)

__all__ = [
    "CT_IMAGE_STORAGE",
    "ENHANCED_CT_IMAGE_STORAGE",
    "InstanceInfo",
    "SelectionResult",
    "SeriesSummary",
    "group_series",
    "select_series",
    "summarise_series",
]
