"""Which results alert on which channel.

Per model, from its manifest: the classes with ``alert = true`` (for COVID-19: Typical and
Indeterminate), each when its probability reaches the class's ``alert_threshold``.  Per
channel, ``[alerts.<channel>] categories = [...]`` replaces the manifest's list (e.g.
e-mail only for Typical); the thresholds still come from the manifest.

The decision per (study, model, channel) compares the newest result revision with the
last alert sent on that channel:

==========================  ===========================  ====================================
last alert on the channel   new revision                 action
==========================  ===========================  ====================================
none / a "cleared" update   alerting class X             alert X (an update if one was sent)
alerting X                  alerting X                   nothing (no duplicate)
alerting X                  alerting Y != X              update: Y, previous_category X
alerting X                  not alerting (Negative...)   update: cleared, previous_category X
none / a "cleared" update   not alerting                 nothing
==========================  ===========================  ====================================

Outside a model's validated domain (its domain gate fired) a result has no category; the
node then alerts with the pseudo-category :data:`OUT_OF_DOMAIN` ("AI could not assess;
needs a radiologist's review"), never a class of the model.  It is one of the model's
alert classes when its manifest has ``[domain]`` with ``alert = true`` (the default); a
channel with its own ``categories`` list gets it only when that list names "out-of-domain".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from aenode.config import Config
from aenode.infer.manifest import MANIFEST_NAME, Manifest, ManifestError, load_manifest
from aenode.logs import get_logger

log = get_logger("aenode.alert")

OUT_OF_DOMAIN = "out-of-domain"
NOT_ASSESSED_MESSAGE = "AI could not assess; needs a radiologist's review"
OUT_OF_DOMAIN_CODE = {"code_value": "OUTDOMAIN", "scheme_designator": "99AENODER",
                      "meaning": "Outside the validated domain of the model - no AI category"}


@dataclass(frozen=True)
class ClassRule:
    name: str
    alert: bool
    threshold: float
    code: dict[str, str] | None  # code_value, scheme_designator, meaning


@dataclass(frozen=True)
class ModelRules:
    model: str
    version: str | None
    classes: dict[str, ClassRule]
    domain_alert: bool = False  # alert when the domain gate fires (OUT_OF_DOMAIN)

    @property
    def alert_classes(self) -> list[str]:
        return [c.name for c in self.classes.values() if c.alert] + ([OUT_OF_DOMAIN] if self.domain_alert else [])

    def code(self, name: str | None) -> dict[str, str] | None:
        if name == OUT_OF_DOMAIN:
            return dict(OUT_OF_DOMAIN_CODE)
        c = self.classes.get(name or "")
        return c.code if c else None


@dataclass(frozen=True)
class Decision:
    alerting: bool
    category: str          # the alert category (or, when not alerting, the result category)
    probability: float | None


def _package_dirs(path: Path) -> list[Path]:
    if (path / MANIFEST_NAME).is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if (p / MANIFEST_NAME).is_file())


@lru_cache(maxsize=64)
def _manifests(path: str) -> dict[str, Manifest]:
    out: dict[str, Manifest] = {}
    for pkg in _package_dirs(Path(path)):
        try:
            m = load_manifest(pkg)
        except ManifestError as exc:
            log.warning("alert_manifest_unreadable", package=pkg.name, problem=str(exc))
            continue
        out.setdefault(m.name, m)
    return out


def rules_from_manifest(m: Manifest) -> ModelRules:
    return ModelRules(m.name, m.version, {
        c.name: ClassRule(c.name, c.alert, c.alert_threshold,
                          {"code_value": c.code_value, "scheme_designator": c.scheme_designator,
                           "meaning": c.meaning})
        for c in m.outputs.classes}, domain_alert=m.domain is not None and m.domain.alert)


def result_category(category: str | None, detail: dict[str, Any] | None) -> str | None:
    """The category the rules decide on: the result's, or :data:`OUT_OF_DOMAIN` for a result
    the domain gate kept without one (``detail["state"]``, written by the analysis stage)."""
    if category:
        return category
    if isinstance(detail, dict) and detail.get("state") == OUT_OF_DOMAIN:
        return OUT_OF_DOMAIN
    return None


def model_rules(config: Config, model: str, detail: dict[str, Any] | None = None) -> ModelRules | None:
    """The rules of ``model`` from its manifest under ``[model] path``.

    Without a manifest (package removed since the result was recorded) the result's own
    record of its alert classes (``detail["alerts"]``, written by the inference stage) is
    used; None if neither is available.
    """
    name = model.split("@", 1)[0]
    m = _manifests(str(config.model.path)).get(name)
    if m is not None:
        return rules_from_manifest(m)
    if detail and isinstance(detail.get("alerts"), list):
        names = [str(a) for a in detail["alerts"]]
        return ModelRules(name, detail.get("version"),
                          {n: ClassRule(n, True, 0.0, None) for n in names})
    return None


def channel_classes(config: Config, channel: str, rules: ModelRules) -> list[str]:
    cfg = config.alerts.channels().get(channel)
    override = cfg.categories if cfg is not None else None
    return list(override) if override is not None else rules.alert_classes


def decide(rules: ModelRules, classes: list[str], category: str | None,
           probabilities: dict[str, float] | None) -> Decision | None:
    """Whether a result alerts for a channel's classes; None when there is no category."""
    if not category:
        return None
    if category == OUT_OF_DOMAIN:  # no probabilities: the model's answer is not used
        return Decision(OUT_OF_DOMAIN in classes, OUT_OF_DOMAIN, None)
    probs = probabilities or {}
    passing: list[tuple[str, float | None]] = []
    for name in classes:
        rule = rules.classes.get(name)
        threshold = rule.threshold if rule is not None else 0.5
        p = probs.get(name)
        if p is None:
            # No probabilities recorded: the category itself decides.
            if name == category:
                passing.append((name, None))
        elif p >= threshold:
            passing.append((name, p))
    if not passing:
        return Decision(False, category, probs.get(category))
    for name, p in passing:
        if name == category:
            return Decision(True, name, p)
    name, p = max(passing, key=lambda t: t[1] or 0.0)
    return Decision(True, name, p)


def action(previous: dict[str, Any] | None, now: Decision) -> tuple[bool, bool] | None:
    """(send, update) given the last alert sent on the channel, or None for nothing to send."""
    prev_alerting = bool(previous and previous["alerting"])
    if now.alerting:
        if prev_alerting and previous is not None and previous["category"] == now.category:
            return None
        return (True, previous is not None)
    if prev_alerting:
        return (True, True)
    return None


__all__ = ["NOT_ASSESSED_MESSAGE", "OUT_OF_DOMAIN", "ClassRule", "Decision", "ModelRules", "action",
           "channel_classes", "decide", "model_rules", "result_category", "rules_from_manifest"]
