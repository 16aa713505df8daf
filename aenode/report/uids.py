"""Deterministic UIDs for the node's results.

A result object's UIDs are a pure function of (study, analysed series, model sha256,
revision, role), so building the same result twice - after a crash, a retry, a restart -
gives byte-for-byte the same identity and PACS stores one copy.  A later revision (a
late slice arrived) gets new UIDs and names its predecessor.

UIDs use the ``2.25`` root (ISO/IEC 9834-8: a UUID written as one integer), which needs
no registered organisation root: the first 128 bits of a SHA-256 digest of the inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_NAMESPACE = "aenode-result-v1"

ROLES = ("sr-series", "sr-instance", "sc-series", "sc-instance", "tracking", "device",
         "seg-series", "seg-instance", "seg-tracking-lesion", "seg-tracking-lung")


def derived_uid(*parts: str) -> str:
    """``2.25.<int>`` from the SHA-256 of the parts (at most 44 characters)."""
    if not parts:
        raise ValueError("derived_uid needs at least one part")
    text = "\x1f".join((_NAMESPACE, *parts))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    value = int.from_bytes(digest[:16], "big")
    # RFC 4122 variant/version bits, so the integer is a well-formed (name-based) UUID.
    value &= ~(0xF000 << 64)
    value |= 0x8000 << 64  # version 8 (custom)
    value &= ~(0xC000 << 48)
    value |= 0x8000 << 48
    return f"2.25.{value}"


@dataclass(frozen=True)
class ResultUIDs:
    """Identity of one revision of the node's result for one analysed series."""

    study_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    sc_series_instance_uid: str
    sc_sop_instance_uid: str
    tracking_uid: str
    revision: int
    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    seg_lesion_tracking_uid: str
    seg_lung_tracking_uid: str


def result_uids(study_instance_uid: str, series_instance_uid: str, model_sha256: str, revision: int) -> ResultUIDs:
    """The UIDs of revision ``revision`` (>= 1) of the result."""
    if not study_instance_uid or not series_instance_uid:
        raise ValueError("study and series instance UIDs are required")
    if not model_sha256:
        raise ValueError("model sha256 is required")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise ValueError(f"revision must be an integer >= 1, got {revision!r}")
    key = (study_instance_uid, series_instance_uid, model_sha256.lower(), str(revision))

    def uid(role: str) -> str:
        return derived_uid(*key, role)

    return ResultUIDs(
        study_instance_uid=study_instance_uid,
        sr_series_instance_uid=uid("sr-series"),
        sr_sop_instance_uid=uid("sr-instance"),
        sc_series_instance_uid=uid("sc-series"),
        sc_sop_instance_uid=uid("sc-instance"),
        tracking_uid=uid("tracking"),
        revision=revision,
        seg_series_instance_uid=uid("seg-series"),
        seg_sop_instance_uid=uid("seg-instance"),
        seg_lesion_tracking_uid=uid("seg-tracking-lesion"),
        seg_lung_tracking_uid=uid("seg-tracking-lung"),
    )


def device_uid(node_name: str) -> str:
    """A stable UID for the node as the SR's observer device."""
    return derived_uid("device", node_name)
