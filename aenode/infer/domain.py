"""The domain gate: does this study look like the data the model was trained on?

A model only knows its training domain; outside it, it still answers, often confidently
(issue 12: a real COVID-19 CT read as Atypical with p = 0.97 by a phantom-trained model).
So each package declares, in ``[domain]`` of its ``model.toml``, image-level statistics of
its training data, and the engine measures them on every study from what the model
already produces (its input tensor and its lung map; no second model, no extra pass):

* ``lung_median_hu``: the median HU of the voxels inside the model's lung mask (inflated
  lung, real or phantom, near -850 HU on the model grid; emphysema below; soft tissue or a
  non-chest volume far above);
* ``lung_volume_ml``: the volume of that mask (no lungs, half a chest, a non-chest scan).

* ``feature_distance``: how far the study's deep features (what the classifier reads) lie
  from the training set's, as a Mahalanobis distance computed inside the ONNX graph from
  reference statistics sealed with the weights (a normal-looking study whose texture the
  model never saw can pass the two image checks and still be far in feature space).

A value outside its declared range puts the study outside the domain: it gets no
category, and the reason names the measured value.  A declared statistic that cannot be
measured (no lung found, distance output missing) fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aenode.infer.manifest import DomainSpec, Preprocessing

OUT_OF_DOMAIN = "out-of-domain"


@dataclass(frozen=True)
class DomainCheck:
    """One statistic, measured, against its declared range (``value`` None: not measurable)."""

    name: str
    value: float | None
    low: float
    high: float
    unit: str

    @property
    def inside(self) -> bool:
        return self.value is not None and self.low <= self.value <= self.high

    def describe(self) -> str:
        label = _LABELS.get(self.name, self.name)
        if self.value is None:
            why = "no lung found" if self.name.startswith("lung_") else "not computed"
            return f"{label} not measurable ({why})"
        if self.name == "feature_distance":
            return f"{label} {self.value:.1f} above the validated maximum {self.high:g}"
        return (f"{label} {self.value:.0f} {self.unit} outside the validated range "
                f"{self.low:g} to {self.high:g} {self.unit}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": None if self.value is None else round(self.value, 1),
                "low": self.low, "high": self.high, "unit": self.unit, "inside": self.inside}


_LABELS = {"lung_median_hu": "median lung attenuation", "lung_volume_ml": "lung volume",
           "feature_distance": "distance of the image features from the training data"}


@dataclass(frozen=True)
class DomainResult:
    checks: tuple[DomainCheck, ...]

    @property
    def inside(self) -> bool:
        return all(c.inside for c in self.checks)

    @property
    def reason(self) -> str | None:
        """Why the study is outside the domain, with the measured values; None when inside."""
        failed = [c.describe() for c in self.checks if not c.inside]
        return "; ".join(failed) if failed else None

    def as_dict(self) -> dict[str, Any]:
        return {"inside": self.inside, "reason": self.reason, "checks": [c.as_dict() for c in self.checks]}


def lung_hu(x: np.ndarray, lung: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """HU of the lung voxels of the model input (the normalisation undone, within the window)."""
    v = np.asarray(x).reshape(lung.shape)[lung].astype(np.float32)
    if prep.normalisation == "minmax":
        lo, hi = prep.hu_window
        return v * np.float32(hi - lo) + np.float32(lo)
    return v * np.float32(prep.std) + np.float32(prep.mean)


def check_domain(spec: DomainSpec, x: np.ndarray, lung: np.ndarray | None, voxel_volume_ml: float,
                 prep: Preprocessing, feature_distance: float | None = None) -> DomainResult:
    """Measure the declared statistics on one study (``x``: the model input, ``lung``: the
    model's lung mask on the model grid, ``feature_distance``: the graph's distance output)."""
    checks = []
    n = 0 if lung is None else int(lung.sum())
    if spec.lung_median_hu is not None:
        median = float(np.median(lung_hu(x, lung, prep))) if lung is not None and n else None
        low, high = spec.lung_median_hu
        checks.append(DomainCheck("lung_median_hu", median, low, high, "HU"))
    if spec.lung_volume_ml is not None:
        low, high = spec.lung_volume_ml
        checks.append(DomainCheck("lung_volume_ml", n * voxel_volume_ml if lung is not None else None,
                                  low, high, "ml"))
    if spec.feature_distance is not None:
        value = feature_distance if feature_distance is not None and np.isfinite(feature_distance) else None
        checks.append(DomainCheck("feature_distance", value, 0.0, spec.feature_distance.max, ""))
    return DomainResult(tuple(checks))
