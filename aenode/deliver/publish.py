"""Results on their way to PACS: the report stage's files, queued for every destination.

``publish_result(config, report_input)`` writes the SR/SC (:mod:`aenode.report.publish`)
and adds one outbox row per (object, destination); a retry after a crash finds the same
files and the same rows (both are keyed by the result's deterministic UIDs).
:class:`OutboxPublisher` is what :mod:`aenode.node` hands the analysis worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage, generate_uid

from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.deliver.worker import notify
from aenode.infer.analyse import ModelOutcome
from aenode.infer.engine import Model
from aenode.load.volume import Volume
from aenode.logs import get_logger
from aenode.report import (
    ClassConcept,
    CodingScheme,
    ModelInfo,
    ReportInput,
    SourceRef,
    build_sr,
    header_from_dataset,
    result_uids,
)
from aenode.report.adapters import report_input_from_outcome
from aenode.report.publish import RESULT_PARTS, write_results

log = get_logger("aenode.deliver")


def enqueue_results(config: Config, paths: list[Path], study_uid: str, *, outbox: Outbox) -> list[int]:
    """One outbox row per (file, destination); returns the row ids."""
    ids = []
    for p in paths:
        sop_uid = str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for dest in config.destinations:
            ids.append(outbox.enqueue(dest.type, dest.name, sop_uid, str(p), study_uid=study_uid))
    notify()
    return ids


def publish_result(config: Config, report_input: ReportInput, *, outbox: Outbox | None = None,
                   send: bool = True, parts: Collection[str] = RESULT_PARTS) -> list[Path]:
    """Write the SR/SC/SEG of ``report_input`` (those in ``parts``) under
    ``config.node.data_dir`` and enqueue them for every ``config.destinations`` entry (none
    when ``send`` is false).  Idempotent per revision."""
    box = outbox if outbox is not None else Outbox.for_config(config)
    ids: list[int] = []

    def queue(path: Path) -> None:  # the SR leaves while the SC is still being drawn
        if send:
            ids.extend(enqueue_results(config, [path], report_input.study_instance_uid, outbox=box))
            log.info("result_queued", study_uid=report_input.study_instance_uid, model=report_input.model.name,
                     object=path.stem, revision=report_input.revision)  # the latency path's timeline

    try:
        paths = write_results(config.node.data_dir, report_input, node_name=config.node.name, on_written=queue,
                              parts=parts)
    finally:
        if outbox is None:
            box.close()
    log.info("result_published", study_uid=report_input.study_instance_uid, objects=len(paths),
             outbox_rows=len(ids), revision=report_input.revision, model=report_input.model.name)
    return paths


class OutboxPublisher:
    """The analysis worker's :class:`aenode.infer.worker.ResultPublisher`: SR/SC into the outbox."""

    def __init__(self, config: Config, outbox: Outbox, hold: Callable[[str], bool] | None = None):
        self.config = config
        self.outbox = outbox
        self.hold = hold  # study UID -> True: write the SR/SC but send them nowhere (backfilled studies)

    def publish(self, study_uid: str, revision: int, model: Model, outcome: ModelOutcome,
                volume: Volume, parts: Collection[str] = RESULT_PARTS) -> list[str]:
        assert outcome.prediction is not None and outcome.selected_series is not None
        inp = report_input_from_outcome(model.manifest, outcome.prediction, volume, outcome.selected_series,
                                        revision, images=bool({"sc", "seg"} & set(parts)))
        paths = publish_result(self.config, inp, outbox=self.outbox,
                               send=not (self.hold is not None and self.hold(study_uid)), parts=parts)
        return [str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                for p in paths]

    def warm_up(self, model: Model) -> float:
        """Build one SR for a made-up study in memory (nothing written or sent): highdicom
        reads its IOD tables on first use (~0.3 s on a 2-core machine), which would
        otherwise be paid by the first study's SR; returns the seconds it took."""
        t0 = time.perf_counter()
        m = model.manifest
        header = header_from_dataset(Dataset())
        header.StudyInstanceUID = generate_uid()
        classes = [ClassConcept(c.name, c.code_value, c.scheme_designator, c.meaning) for c in m.outputs.classes]
        inp = ReportInput(
            header=header, series_instance_uid=generate_uid(),
            source_refs=[SourceRef(CTImageStorage, generate_uid())], classes=classes,
            probabilities=[1.0 / len(classes)] * len(classes), category=classes[0].name,
            model=ModelInfo(m.name, m.version, m.algorithm.manufacturer, m.sha256),
            coding_schemes=[CodingScheme(s.designator, s.name, s.version, s.responsible_organization, s.uid)
                            for s in m.coding_scheme])
        build_sr(inp, node_name=self.config.node.name,
                 uids=result_uids(inp.study_instance_uid, inp.series_instance_uid, m.sha256, 1))
        return time.perf_counter() - t0
