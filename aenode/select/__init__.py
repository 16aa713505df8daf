"""Series selection: which series of a study a model analyses, and why the others not.

Pure functions over the store's instance headers (:class:`aenode.store.meta.InstanceHeader`),
which come either from the index or from DICOM headers read off disk (``aenode predict``),
and the ``[selection]`` rules of a model manifest (:class:`SelectionRules`).
"""

from aenode.select.rules import (
    SelectionResult,
    SelectionRules,
    SeriesSummary,
    group_series,
    select_series,
    summarise_series,
)

__all__ = [
    "SelectionResult",
    "SelectionRules",
    "SeriesSummary",
    "group_series",
    "select_series",
    "summarise_series",
]
