"""The analysis worker: completed studies -> selection -> loading -> every model -> results.

Built by :mod:`aenode.node`.  Models are loaded once when the worker starts (warm ONNX
Runtime sessions).  Per study: claim it, analyse it, hand each model's outcome to the
:class:`ResultPublisher` (SR/SC written and queued for PACS), then record the result in
the index -- in that order, so that whatever follows a recorded result (alerts, the
dashboard) only ever sees results whose SR/SC are durably on their way -- and finish the
study as ``analysed``, ``skipped`` (no eligible series, with the reason) or ``error``
(with the reason).  Nothing a study contains can stop the worker.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection
from typing import Protocol

from aenode.config import Config
from aenode.infer.analyse import ModelOutcome, analyse_instances
from aenode.infer.engine import Model
from aenode.infer.registry import ModelRegistry
from aenode.load.volume import Volume
from aenode.logs import get_logger
from aenode.store.db import is_transient
from aenode.store.index import COMPLETE, ERROR, Index, node_identity
from aenode.store.stabilise import wait_for_completed

log = get_logger("aenode.infer.worker")

# Transient faults (disk full, out of memory...) are retried with exponential backoff:
# 30 s, 1 min, 2 min ... capped at 15 min, for about a day; then the study is ``error``
# with the reason, and ``aenode retry --studies`` queues it again.  Only invalid input
# (no eligible series, an undecodable file) ends in ``error`` at once.
RETRY_BASE_SECONDS = 30.0
RETRY_CAP_SECONDS = 900.0
RETRY_MAX_ATTEMPTS = 100


def claim_prefix(pid: int, node: str) -> str:
    """How the studies of the analysis process ``pid`` of this node (``node_identity``)
    are marked as claimed (so that the supervisor can hand them back when that process
    dies, and a restarted node recognises its own)."""
    return f"{node}/infer-{pid}-"


# The result's objects in two passes (names as in aenode.report.publish.RESULT_PARTS): every
# model's SR leaves before any model's SC and SEG are drawn.
SR_PASS = ("sr",)
IMAGES_PASS = ("sc", "seg")


class ResultPublisher(Protocol):
    """What the analysis stage needs from the stages after it (report + deliver)."""

    def publish(self, study_uid: str, revision: int, model: Model, outcome: ModelOutcome,
                volume: Volume, parts: Collection[str] = ...) -> list[str]:
        """Write the result's objects of ``parts`` (default: all) durably and queue them;
        returns their SOP Instance UIDs.  Idempotent per (study, revision, model)."""


class AnalysisWorker:
    def __init__(self, config: Config, index: Index, registry: ModelRegistry,
                 publisher: ResultPublisher | None, *, poll_seconds: float = 0.5,
                 retry_base_seconds: float = RETRY_BASE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.retry_base_seconds = retry_base_seconds
        self._clock = clock
        self._deferred: dict[tuple[str, int], float] = {}   # claimed studies waiting to retry
        self._attempts: dict[tuple[str, int], int] = {}
        self.index = index
        self.registry = registry
        self.publisher = publisher
        self.poll_seconds = poll_seconds
        # Claims name the node and the process (so a restarted node takes back only its own
        # studies, the supervisor those of a dead process) and are leased: renewed while a
        # study is analysed, taken over by any node after that.
        node = node_identity(config.node.name, config.node.port)
        self.name = f"{claim_prefix(os.getpid(), node)}{threading.get_ident() % 10000}"
        self.lease_seconds = config.database.lease_seconds
        log.info("analysis_worker_ready", models=[m.name for m in self.registry],
                 refused=sorted(self.registry.failed))

    def warm_up(self) -> None:
        """Pay the results' first-use costs before the first study does (the publisher may
        offer ``warm_up(model)``: it is optional in :class:`ResultPublisher`)."""
        warm = getattr(self.publisher, "warm_up", None)
        models = list(self.registry)
        if not callable(warm) or not models:
            return
        try:
            log.info("results_warmed_up", seconds=round(float(warm(models[0])), 3))
        except Exception:  # noqa: BLE001 - only a speed-up: the first study pays it instead
            log.exception("results_warm_up_failed")

    def run(self, stop_event: threading.Event) -> None:
        self.warm_up()
        while not stop_event.is_set():
            due = self.next_due()
            if due is not None:
                if self._still_claimed(*due):
                    self.process(*due)
                continue
            try:
                claim = self.index.claim_next_complete(self.name, self.lease_seconds)
            except Exception:  # noqa: BLE001 - a locked or busy index: try again later
                log.exception("study_claim_failed")
                stop_event.wait(self.poll_seconds)
                continue
            if claim is None:
                # Woken as soon as the stabiliser completes a study; the poll is the fallback.
                wait_for_completed(min(self.poll_seconds, self._until_next_due()))
                continue
            log.info("study_claimed", study_uid=claim.study_uid, revision=claim.revision)
            self.process(claim.study_uid, claim.revision)

    def process(self, study_uid: str, revision: int) -> str:
        """Analyse one claimed study revision; returns the final state recorded."""
        t0 = time.perf_counter()
        renewing = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(study_uid, revision, renewing),
                                   name="aenode-lease", daemon=True)
        renewer.start()
        try:
            state, reason = self._analyse(study_uid, revision)
        except Exception as exc:  # noqa: BLE001 - never let one study stop the node
            if is_transient(exc) and self._defer(study_uid, revision, exc):
                return COMPLETE
            log.exception("analysis_failed", study_uid=study_uid, revision=revision)
            state, reason = ERROR, f"internal error during analysis: {type(exc).__name__}"
        finally:
            renewing.set()
            renewer.join()
        self._attempts.pop((study_uid, revision), None)
        try:
            self.index.finish_study(study_uid, revision, state, reason)
        except Exception:  # noqa: BLE001
            log.exception("study_finish_failed", study_uid=study_uid, revision=revision)
        log.info("study_analysed", study_uid=study_uid, state=state, revision=revision,
                 seconds=round(time.perf_counter() - t0, 2))
        return state

    def _renew(self, study_uid: str, revision: int, done: threading.Event) -> None:
        """Keep this worker's claim alive while it analyses (a third of the lease each time),
        so other nodes take the study over only when this one died."""
        while not done.wait(self.lease_seconds / 3):
            try:
                if not self.index.renew_lease(study_uid, revision, self.name, self.lease_seconds):
                    log.warning("study_lease_lost", study_uid=study_uid, revision=revision)
                    return
            except Exception:  # noqa: BLE001 - the database may be restarting: try again next time
                log.warning("study_lease_renew_failed", study_uid=study_uid, revision=revision)

    def _defer(self, study_uid: str, revision: int, exc: BaseException) -> bool:
        """Keep the claim and retry later after a transient fault; False once retries are
        used up.  Nothing needs writing for this (the disk may be full): the worker remembers
        the study, and a restart re-queues every ``analysing`` study anyway."""
        key = (study_uid, revision)
        attempts = self._attempts.get(key, 0)
        if attempts >= RETRY_MAX_ATTEMPTS:
            self._attempts.pop(key, None)
            return False
        delay = min(RETRY_CAP_SECONDS, self.retry_base_seconds * 2 ** attempts)
        self._attempts[key] = attempts + 1
        self._deferred[key] = self._clock() + delay
        why = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
        try:
            self.index.note_retry(study_uid, revision, f"waiting to retry after a transient fault ({why})")
            # The claim must outlive the wait, or another claimer (any node) takes it sooner.
            self.index.renew_lease(study_uid, revision, self.name, delay + self.lease_seconds)
        except Exception:  # noqa: BLE001 - best effort: the database may be as full as the disk
            log.warning("study_retry_note_failed", study_uid=study_uid, revision=revision)
        log.warning("analysis_deferred", study_uid=study_uid, revision=revision, attempt=attempts + 1,
                    retry_in_s=round(delay, 1), error=type(exc).__name__)
        return True

    def _until_next_due(self) -> float:
        if not self._deferred:
            return 3600.0
        return max(0.0, min(self._deferred.values()) - self._clock())

    def _still_claimed(self, study_uid: str, revision: int) -> bool:
        """Before retrying a deferred study: is it still this worker's?  (A late instance
        or another node may have taken it meanwhile.)  Unsure (database down): yes."""
        try:
            if self.index.renew_lease(study_uid, revision, self.name, self.lease_seconds):
                return True
        except Exception:  # noqa: BLE001 - the retry itself will meet the fault again
            return True
        log.info("study_claim_gone", study_uid=study_uid, revision=revision)
        return False

    def next_due(self) -> tuple[str, int] | None:
        """A deferred study whose retry time has come, if any."""
        now = self._clock()
        for key, due in sorted(self._deferred.items(), key=lambda kv: kv[1]):
            if due <= now:
                del self._deferred[key]
                return key
        return None

    def _analyse(self, study_uid: str, revision: int) -> tuple[str, str | None]:
        if not len(self.registry):
            refused = "; ".join(f"{k}: {v}" for k, v in self.registry.failed.items())
            return ERROR, "no model loaded" + (f" ({refused})" if refused else f" from {self.config.model.path}")
        problems: list[str] = []
        # Published SRs whose SC, SEG and result row wait until every model's SR has left.
        images_due: list[tuple[ModelOutcome, Volume, list[str]]] = []

        def publish_sr(outcome: ModelOutcome, volume: Volume) -> bool:
            """Each model's SR leaves as soon as its result exists (before the next model
            runs, and before any SC or SEG is drawn); a result that cannot be published
            ends the study in ``error``."""
            if not outcome.has_result:  # analysed, or out-of-domain (a result without a category)
                return True
            shadow = self.config.model_mode(outcome.model) == "shadow"
            if self.publisher is None or shadow:  # shadow: recorded, never sent to PACS
                self._record(study_uid, revision, outcome, [], mode="shadow" if shadow else "active")
                return True
            result_uids: list[str] = []
            problem = self._publish(study_uid, revision, outcome, volume, result_uids, SR_PASS)
            if problem:
                problems.append(problem)
                return False
            images_due.append((outcome, volume, result_uids))
            return True

        analysis = analyse_instances(self.index.instances(study_uid), list(self.registry),
                                     own_ae_titles=[self.config.node.ae_title], study_uid=study_uid,
                                     max_voxels=self.config.limits.max_volume_voxels,
                                     on_result=publish_sr)
        # The SC and SEG, then the result row (which the alerts and the dashboard read), as
        # before: a result is recorded only once all its objects are queued.
        for outcome, volume, result_uids in images_due:
            if problems:
                break
            problem = self._publish(study_uid, revision, outcome, volume, result_uids, IMAGES_PASS)
            if problem:
                problems.append(problem)
                break
            self._record(study_uid, revision, outcome, result_uids, mode="active")
        if problems:
            return ERROR, problems[0]
        return analysis.state, analysis.reason

    def _publish(self, study_uid: str, revision: int, outcome: ModelOutcome, volume: Volume,
                 result_uids: list[str], parts: tuple[str, ...]) -> str | None:
        assert self.publisher is not None
        try:
            result_uids += self.publisher.publish(study_uid, revision, self.registry.get(outcome.model),
                                                  outcome, volume, parts=parts)
        except Exception as exc:  # noqa: BLE001 - reported on the study, the worker goes on
            if is_transient(exc):
                raise  # disk full and the like: the study waits and is analysed again
            log.exception("result_publish_failed", study_uid=study_uid, model=outcome.model, revision=revision)
            return f"{outcome.model}: results could not be published ({type(exc).__name__}: {exc})"
        return None

    def _record(self, study_uid: str, revision: int, o: ModelOutcome, result_uids: list[str],
                mode: str = "active") -> None:
        p = o.prediction
        assert p is not None
        detail = {
            "version": o.version, "alerts": p.alerts, "timings_s": {k: round(v, 3) for k, v in o.timings.items()},
            "volume_warnings": o.volume_warnings, "lesion_volume_ml": p.lesion_volume_ml,
            "lung_volume_ml": p.lung_volume_ml, "result_uids": result_uids,
            "findings": p.findings(),  # laterality, distribution (aenode.infer.findings)
            "skipped_series": [{"series_uid": uid, "reason": why} for uid, why in o.selection.skipped.items()],
            "mode": mode,   # "shadow": the alert worker and PACS ignore it; admins compare it
            "state": o.state,   # "analysed" or "out-of-domain" (category None, domain says why)
            "domain": None if p.domain is None else p.domain.as_dict(),
        }
        probabilities: dict[str, float] | None = {k: round(v, 4) for k, v in p.probabilities.items()}
        involvement = p.involvement_percent
        if p.out_of_domain:  # no category: nothing that reads as one either (kept for audit only)
            detail["withheld_probabilities"], probabilities, involvement = probabilities, None, None
        self.index.record_result(study_uid, revision, o.model, p.category, probabilities=probabilities,
                                 selected_series=o.selected_series, involvement=involvement, detail=detail)
