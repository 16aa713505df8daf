"""Deterministic, obviously synthetic identities: UIDs, names, dates (no clock, no randomness
beyond the seed), so the same seed writes byte-identical files."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

ROOT = "aenode.phantom.v1"


def uid(*parts) -> str:
    """A 2.25.<int> UID (ISO/IEC 9834-8 UUID-derived form) from a SHA-256 of the parts.

    pydicom's generate_uid(prefix=None) ignores entropy_srcs (it is random), so the
    deterministic 128-bit value is derived here."""
    h = hashlib.sha256("\x1f".join([ROOT, *(str(p) for p in parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(h[:16], 'big')}"


@dataclass(frozen=True)
class Identity:
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    study_date: str
    study_time: str
    accession: str
    weight_kg: float
    size_m: float


def make_identity(pattern: str, seed: int, name: str | None = None, pid: str | None = None,
                  body_a: float = 160.0) -> Identity:
    rng = np.random.default_rng([seed, 97])
    d = date(2020, 3, 1) + timedelta(days=int(seed) % 900)
    minutes = int(rng.integers(7 * 60, 19 * 60))
    secs = int(rng.integers(0, 60))
    age = int(rng.integers(22, 88))
    born = d - timedelta(days=age * 365 + int(rng.integers(0, 365)))
    sex = "M" if rng.random() < 0.5 else "F"
    return Identity(
        patient_name=name or f"PHANTOM^{pattern.upper()}^{int(seed):04d}",
        patient_id=pid or f"PH-{pattern[:3].upper()}-{int(seed):06d}",
        birth_date=born.strftime("%Y%m%d"), sex=sex, age=f"{age:03d}Y",
        study_date=d.strftime("%Y%m%d"), study_time=f"{minutes // 60:02d}{minutes % 60:02d}{secs:02d}",
        accession=f"PHA{int(seed) % 10**9:09d}"[:16],
        weight_kg=round(float(45 + (body_a - 130) * 1.1 + rng.uniform(-5, 5)), 1),
        size_m=round(float(rng.uniform(1.50, 1.92)), 2),
    )


def add_seconds(hhmmss: str, s: float) -> str:
    t = int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:6]) + int(s)
    t %= 86400
    return f"{t // 3600:02d}{t % 3600 // 60:02d}{t % 60:02d}"
