"""Pure logic: which results alert on which channel, and when an update is due."""

from aenode.alert.base import alert_key, hl7_control_id
from aenode.alert.rules import ClassRule, ModelRules, action, decide

RULES = ModelRules("m", "1", {
    "Typical": ClassRule("Typical", True, 0.5, None),
    "Indeterminate": ClassRule("Indeterminate", True, 0.4, None),
    "Atypical": ClassRule("Atypical", False, 0.5, None),
    "Negative": ClassRule("Negative", False, 0.5, None),
})
ALERTS = RULES.alert_classes


def test_alert_classes_from_manifest_flags():
    assert ALERTS == ["Typical", "Indeterminate"]


def test_decide_category_and_threshold():
    d = decide(RULES, ALERTS, "Typical", {"Typical": 0.8, "Indeterminate": 0.1})
    assert d.alerting and d.category == "Typical" and d.probability == 0.8
    d = decide(RULES, ALERTS, "Negative", {"Typical": 0.1, "Indeterminate": 0.1, "Negative": 0.8})
    assert not d.alerting and d.category == "Negative"
    # Argmax Atypical, but Indeterminate passes its own threshold: alert as Indeterminate.
    d = decide(RULES, ALERTS, "Atypical", {"Atypical": 0.5, "Indeterminate": 0.45})
    assert d.alerting and d.category == "Indeterminate"
    # Typical argmax below its threshold does not alert.
    assert not decide(RULES, ALERTS, "Typical", {"Typical": 0.35, "Negative": 0.34}).alerting
    assert decide(RULES, ALERTS, None, None) is None


def test_channel_override_restricts_classes():
    assert not decide(RULES, ["Typical"], "Indeterminate", {"Indeterminate": 0.9}).alerting
    assert decide(RULES, ["Typical"], "Typical", {"Typical": 0.9}).alerting


def test_action_table():
    T = decide(RULES, ALERTS, "Typical", {"Typical": 0.9})
    I = decide(RULES, ALERTS, "Indeterminate", {"Indeterminate": 0.9})
    N = decide(RULES, ALERTS, "Negative", {"Negative": 0.9})
    assert action(None, T) == (True, False)
    assert action(None, N) is None
    assert action({"alerting": True, "category": "Typical"}, T) is None
    assert action({"alerting": True, "category": "Typical"}, I) == (True, True)
    assert action({"alerting": True, "category": "Typical"}, N) == (True, True)
    assert action({"alerting": False, "category": "Negative"}, N) is None
    assert action({"alerting": False, "category": "Negative"}, T) == (True, True)


def test_keys_are_stable_and_distinct():
    k = alert_key("1.2.3", 1, "m", "webhook")
    assert k == alert_key("1.2.3", 1, "m", "webhook") and len(k) == 32
    assert len({k, alert_key("1.2.3", 2, "m", "webhook"), alert_key("1.2.3", 1, "m", "hl7")}) == 3
    assert len(hl7_control_id(k)) == 20
