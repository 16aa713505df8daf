"""Results as DICOM: the TID 1500 SR and the secondary capture (written, not sent).

Public API::

    from aenode.report import ReportInput, build_sr, build_sc, result_uids
    from aenode.report.publish import write_results, results_path
"""

from aenode.report.models import (
    ClassConcept,
    CodingScheme,
    ModelInfo,
    PredecessorRef,
    ReportInput,
    SourceRef,
    header_from_dataset,
)
from aenode.report.sc import build_sc
from aenode.report.sr import build_sr
from aenode.report.uids import ResultUIDs, result_uids

__all__ = [
    "ClassConcept", "CodingScheme", "ModelInfo", "PredecessorRef", "ReportInput", "SourceRef",
    "header_from_dataset", "ResultUIDs", "result_uids", "build_sr", "build_sc",
]
