"""The analysis worker: completed studies -> selection -> loading -> every model -> results.

Loaded by :mod:`aenode.pipeline` as ``"aenode.infer.worker:AnalysisWorker"``.  Models are
loaded once when the worker starts (warm ONNX Runtime sessions).  Per study: claim it,
analyse it, record each model's result, publish SR/SC when the report stage is installed,
and finish the study as ``analysed``, ``skipped`` (no eligible series, with the reason) or
``error`` (with the reason).  Nothing a study contains can stop the worker.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from aenode.config import Config
from aenode.infer.analyse import StudyAnalysis, analyse_instances
from aenode.infer.registry import ModelRegistry
from aenode.logs import get_logger
from aenode.select.rules import InstanceInfo

log = get_logger("aenode.infer.worker")


def _publisher() -> tuple[Any, Any] | None:
    try:
        from aenode.report.adapters import report_input_from_outcome
        from aenode.report.publish import publish_result
    except ImportError:
        return None
    return report_input_from_outcome, publish_result


class AnalysisWorker:
    def __init__(self, config: Config, index: Any, *, registry: ModelRegistry | None = None,
                 poll_seconds: float = 0.5, publish: bool = True):
        self.config = config
        self.index = index
        self.registry = registry if registry is not None else ModelRegistry.from_config(config)
        self.poll_seconds = poll_seconds
        self.name = f"infer-{os.getpid()}-{threading.get_ident() % 10000}"
        self.publish = _publisher() if publish else None
        log.info("analysis worker ready", models=[m.name for m in self.registry],
                 refused=sorted(self.registry.failed))

    def run(self, stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            try:
                claim = self.index.claim_next_complete(self.name)
            except Exception:  # noqa: BLE001 - a locked or busy index: try again later
                log.exception("claim failed")
                stop_event.wait(self.poll_seconds)
                continue
            if claim is None:
                stop_event.wait(self.poll_seconds)
                continue
            self.process(claim.study_uid, claim.revision)

    def process(self, study_uid: str, revision: int) -> str:
        """Analyse one claimed study revision; returns the final state recorded."""
        t0 = time.perf_counter()
        try:
            state, reason = self._analyse(study_uid, revision)
        except Exception as exc:  # noqa: BLE001 - never let one study stop the node
            log.exception("analysis failed", revision=revision)
            state, reason = "error", f"internal error during analysis: {type(exc).__name__}"
        try:
            self.index.finish_study(study_uid, revision, state, reason)
        except Exception:  # noqa: BLE001
            log.exception("finish_study failed", revision=revision)
        log.info("study analysed", state=state, revision=revision, seconds=round(time.perf_counter() - t0, 2))
        return state

    def _analyse(self, study_uid: str, revision: int) -> tuple[str, str | None]:
        if not len(self.registry):
            refused = "; ".join(f"{k}: {v}" for k, v in self.registry.failed.items())
            return "error", "no model loaded" + (f" ({refused})" if refused else f" from {self.config.model.path}")
        rows = self.index.instances(study_uid)
        infos = [InstanceInfo.from_row(r) for r in rows]
        analysis = analyse_instances(infos, list(self.registry), own_ae_titles=[self.config.node.ae_title],
                                     keep_volumes=self.publish is not None)
        self._record(study_uid, revision, analysis)
        reason = analysis.reason
        if analysis.state == "analysed" and self.publish is not None:
            problem = self._publish(study_uid, revision, analysis)
            if problem:
                return "error", problem
        return analysis.state, reason

    def _record(self, study_uid: str, revision: int, analysis: StudyAnalysis) -> None:
        for o in analysis.outcomes:
            if o.state != "analysed" or o.prediction is None:
                continue
            p = o.prediction
            detail = {
                "version": o.version, "alerts": p.alerts, "timings_s": {k: round(v, 3) for k, v in o.timings.items()},
                "volume_warnings": o.volume_warnings, "lesion_volume_ml": p.lesion_volume_ml,
                "lung_volume_ml": p.lung_volume_ml,
                "skipped_series": [{"series_uid": uid, "reason": why} for uid, why in o.selection.skipped.items()],
            }
            self.index.record_result(study_uid, revision, o.model, p.category,
                                     probabilities={k: round(v, 4) for k, v in p.probabilities.items()},
                                     selected_series=o.selected_series, involvement=p.involvement_percent,
                                     detail=detail)

    def _publish(self, study_uid: str, revision: int, analysis: StudyAnalysis) -> str | None:
        assert self.publish is not None
        to_input, publish = self.publish
        for o in analysis.outcomes:
            if o.state != "analysed" or o.prediction is None or o.selected_series is None:
                continue
            volume = analysis.volumes.get(o.selected_series)
            if volume is None:
                continue
            try:
                model = self.registry.get(o.model)
                publish(self.config, to_input(model.manifest, o.prediction, volume, o.selected_series, revision))
            except Exception as exc:  # noqa: BLE001
                log.exception("publishing results failed", model=o.model, revision=revision)
                return f"{o.model}: results could not be published ({type(exc).__name__}: {exc})"
        return None
