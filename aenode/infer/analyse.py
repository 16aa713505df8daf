"""One study through selection, loading and every model: the node's analysis step.

Used by the worker (studies from the store) and ``aenode predict`` (a folder).  Each model
selects its own series; a series is loaded once even when several models choose it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aenode.infer.domain import OUT_OF_DOMAIN
from aenode.infer.engine import Model, Prediction
from aenode.infer.preprocess import ModelGrid
from aenode.load.volume import DEFAULT_MAX_VOXELS, LoadError, Volume, load_series
from aenode.logs import get_logger
from aenode.select.rules import SelectionResult, select_series
from aenode.store.db import is_transient
from aenode.store.meta import InstanceHeader

log = get_logger("aenode.infer")


@dataclass
class ModelOutcome:
    model: str
    version: str
    # analysed | out-of-domain | skipped | error.  "out-of-domain": the model ran but its
    # domain gate fired, so the result has no category (reason: the measured values).  Not
    # "indeterminate-out-of-domain": Indeterminate is one of the RSNA categories this very
    # model reports (and alerts on); the state must never be read as that category.
    state: str
    reason: str | None
    selection: SelectionResult
    prediction: Prediction | None = None
    volume_warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def has_result(self) -> bool:
        """A result to record and publish (with or without a category)."""
        return self.state in ("analysed", OUT_OF_DOMAIN) and self.prediction is not None

    @property
    def selected_series(self) -> str | None:
        return self.selection.selected.series_uid if self.selection.selected else None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "version": self.version, "state": self.state, "reason": self.reason,
            "selection": self.selection.as_dict(), "volume_warnings": self.volume_warnings,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }
        if self.prediction is not None:
            out.update({k: v for k, v in self.prediction.as_dict().items()
                        if k not in ("model", "version", "timings_s")})
        return out


@dataclass
class StudyAnalysis:
    outcomes: list[ModelOutcome]
    volumes: dict[str, Volume] = field(default_factory=dict, repr=False)

    @property
    def state(self) -> str:
        """error if any model failed, else analysed if any model ran (out-of-domain
        included: it has a result, without a category), else skipped."""
        states = {o.state for o in self.outcomes}
        if "error" in states:
            return "error"
        if "analysed" in states or OUT_OF_DOMAIN in states:
            return "analysed"
        return "skipped"

    @property
    def reason(self) -> str | None:
        if not self.outcomes:
            return "no models loaded"
        if self.state == "analysed":  # the domain gate's reasons, else none
            ood = [f"{o.model}: {OUT_OF_DOMAIN}: {o.reason}" for o in self.outcomes if o.state == OUT_OF_DOMAIN]
            return "; ".join(ood) or None
        wanted = "error" if self.state == "error" else "skipped"
        return "; ".join(f"{o.model}: {o.reason}" for o in self.outcomes if o.state == wanted)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "models": [o.as_dict() for o in self.outcomes]}


def analyse_instances(
    instances: Sequence[InstanceHeader],
    models: Iterable[Model],
    *,
    own_ae_titles: Iterable[str] = (),
    own_series_uids: Iterable[str] = (),
    keep_volumes: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    study_uid: str | None = None,
    on_result: Callable[[ModelOutcome, Volume], bool] | None = None,
) -> StudyAnalysis:
    """Select, load and run every model on one study's instances (``study_uid`` names the
    study in log lines).

    ``on_result(outcome, volume)`` is called as soon as a model has a result (before the
    next model runs, so the first SR can leave while the others are computed); returning
    False stops the analysis there."""
    own_ae = tuple(own_ae_titles)
    own_series = tuple(own_series_uids)
    volumes: dict[tuple[str, str, float], Volume | LoadError] = {}
    prepared: dict[tuple[object, ...], tuple[np.ndarray, ModelGrid]] = {}
    outcomes: list[ModelOutcome] = []
    for model in models:
        m = model.manifest
        rules = m.selection
        sel = select_series(instances, rules, own_ae_titles=own_ae, own_series_uids=own_series)
        if sel.selected is None:
            outcomes.append(ModelOutcome(m.name, m.version, "skipped", sel.reason, sel))
            continue
        key = (sel.selected.series_uid, rules.tilt, rules.max_tilt_deg)
        t0 = time.perf_counter()
        loaded_now = key not in volumes
        if loaded_now:
            try:
                volumes[key] = load_series(list(sel.selected.instances), tilt=rules.tilt,
                                           max_tilt_deg=rules.max_tilt_deg, max_voxels=max_voxels)
            except LoadError as exc:
                volumes[key] = exc
        t_load = time.perf_counter() - t0
        vol = volumes[key]
        if loaded_now:  # timeline of the latency path (no patient data: sizes and seconds)
            log.info("series_loaded", study_uid=study_uid, seconds=round(t_load, 4),
                     slices=None if isinstance(vol, LoadError) else vol.shape[0])
        if isinstance(vol, LoadError):
            outcomes.append(ModelOutcome(m.name, m.version, "error",
                                         f"series {sel.selected.description or sel.selected.series_uid}: {vol.reason}",
                                         sel))
            continue
        try:
            input_key = (sel.selected.series_uid, model.input_key())
            t_prep = time.perf_counter()
            if input_key not in prepared:
                prepared[input_key] = model.prepare(vol)
            t_prep = time.perf_counter() - t_prep
            if t_prep > 1e-4:
                log.info("input_prepared", study_uid=study_uid, model=m.name, seconds=round(t_prep, 4),
                         method=model.last_prepare_method)
            pred = model.predict(vol, prepared[input_key])
            pred.timings["preprocess"] = t_prep  # zero for a model that shared another's input
            log.info("model_run", study_uid=study_uid, model=m.name,
                     **{f"{k}_s": round(v, 4) for k, v in pred.timings.items() if k != "preprocess"})
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the others
            if is_transient(exc):
                raise  # out of memory or disk: the whole study is retried later
            log.error("inference_failed", study_uid=study_uid, model=m.name, error=type(exc).__name__)
            outcomes.append(ModelOutcome(m.name, m.version, "error", f"inference failed: {type(exc).__name__}: {exc}", sel))
            continue
        timings = {"load": t_load, **pred.timings}
        timings["total"] = sum(timings.values())
        if pred.out_of_domain:
            reason = pred.domain.reason if pred.domain is not None else None
            log.warning("domain_gate_fired", study_uid=study_uid, model=m.name, reason=reason)
            outcome = ModelOutcome(m.name, m.version, OUT_OF_DOMAIN, reason, sel, pred, list(vol.warnings), timings)
        else:
            outcome = ModelOutcome(m.name, m.version, "analysed", None, sel, pred, list(vol.warnings), timings)
        outcomes.append(outcome)
        if on_result is not None and not on_result(outcome, vol):
            break
    kept = {k[0]: v for k, v in volumes.items() if isinstance(v, Volume)} if keep_volumes else {}
    return StudyAnalysis(outcomes, kept)
