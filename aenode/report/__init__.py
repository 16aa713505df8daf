"""Results into PACS, part one: the TID 1500 SR and the secondary capture.

Public API::

    from aenode.report import ReportInput, build_sr, build_sc, result_uids, is_node_output
    from aenode.report.publish import publish_result, write_results
"""

from aenode.report.marks import OUTPUT_DESCRIPTION_PREFIX, is_node_output
from aenode.report.models import (
    ClassConcept,
    CodingScheme,
    ModelInfo,
    PredecessorRef,
    ReportInput,
    SourceRef,
    header_from_dataset,
)
from aenode.report.uids import ResultUIDs, result_uids

__all__ = [
    "OUTPUT_DESCRIPTION_PREFIX", "is_node_output", "ClassConcept", "CodingScheme", "ModelInfo",
    "PredecessorRef", "ReportInput", "SourceRef", "header_from_dataset", "ResultUIDs", "result_uids",
    "build_sr", "build_sc",
]


def build_sr(*args, **kwargs):  # lazy: highdicom import is slow-ish; ingest only needs is_node_output
    from aenode.report.sr import build_sr as _b

    return _b(*args, **kwargs)


def build_sc(*args, **kwargs):
    from aenode.report.sc import build_sc as _b

    return _b(*args, **kwargs)
