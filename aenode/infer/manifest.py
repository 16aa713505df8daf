"""Model package manifests (``model.toml``), validated.

A model package is a folder with ``model.onnx`` and ``model.toml``.  The manifest says
everything the node needs to run the model without code: which series it accepts, how
to turn a CT volume into its input tensor, what its outputs mean (coded classes for the
SR, optional lesion/lung maps), and which classes raise an alert.  Errors name the key
(``selection.slice_thickness_mm: ...``) so a packager can fix the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from aenode.config import read_toml, validation_problems
from aenode.select.rules import SelectionRules

MANIFEST_NAME = "model.toml"


class ManifestError(Exception):
    """A model package problem, phrased for the operator (``path: key: problem``)."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodingScheme(_Section):
    """A (private) coding scheme, declared in the SR's Coding Scheme Identification Sequence."""

    designator: str = Field(min_length=1, max_length=16)
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    responsible_organization: str | None = None
    uid: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)*$")


class InputSpec(_Section):
    name: str = Field(min_length=1)
    # [batch, channels, z, y, x]; batch may be -1 or a symbolic name (dynamic axis)
    shape: list[int | str] = Field(min_length=5, max_length=5)
    dtype: Literal["float32", "float16"] = "float32"

    @field_validator("shape")
    @classmethod
    def _static_spatial(cls, v: list[int | str]) -> list[int | str]:
        for dim in v[1:]:
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError("channel and spatial dimensions (shape[1:]) must be positive integers")
        if v[1] != 1:
            raise ValueError("only single-channel CT input is supported (shape[1] = 1)")
        return v

    @property
    def size_zyx(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.shape[2:])  # type: ignore[return-value]


class Preprocessing(_Section):
    # Array axis order fed to the model: z (inferior->superior), y (anterior->posterior),
    # x (right->left), i.e. DICOM LPS patient axes.
    orientation: Literal["LPS"] = "LPS"
    # "spacing": resample at spacing_mm around the volume centre, crop/pad to the input size.
    # "fit": resample the whole series extent onto the input size.
    mode: Literal["spacing", "fit"] = "spacing"
    spacing_mm: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=3, max_length=3)
    hu_window: list[float] = Field(min_length=2, max_length=2)
    normalisation: Literal["minmax", "zscore"] = "minmax"
    mean: float = 0.0
    std: float = Field(1.0, gt=0)
    pad_hu: float = -1000.0
    # Average blocks of voxels before interpolating (anti-aliasing when downsampling).
    antialias: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Preprocessing:
        if self.hu_window[0] >= self.hu_window[1]:
            raise ValueError("hu_window: low must be below high")
        if self.mode == "spacing" and self.spacing_mm is None:
            raise ValueError("spacing_mm: required when mode = \"spacing\"")
        return self


class ClassSpec(_Section):
    name: str = Field(min_length=1)
    code_value: str = Field(min_length=1, max_length=16)
    scheme_designator: str = Field(min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)
    alert: bool = False
    alert_threshold: float = Field(0.5, ge=0, le=1)


class MapSpec(_Section):
    name: str = Field(min_length=1)  # ONNX output tensor name, shape [batch, 1, z, y, x]
    threshold: float = Field(0.5, gt=0, lt=1)


class Outputs(_Section):
    probabilities: str = Field(min_length=1)  # ONNX output tensor name, shape [batch, n_classes]
    # What that tensor holds: softmax "probabilities" (the reference model) or raw "logits".
    scores: Literal["probabilities", "logits"] = "probabilities"
    # Temperature scaling (fitted on held-out data, see training/calibrate.py): softmax of
    # logits / T; for probabilities, log(p) stands in for the logits (same softmax).
    temperature: float = Field(1.0, gt=0.05, le=20.0)
    classes: list[ClassSpec] = Field(min_length=2)
    lesion_map: MapSpec | None = None
    lung_map: MapSpec | None = None
    # Also write the lesion and lung maps as a DICOM Segmentation (needs lesion_map).
    seg: bool = False

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[ClassSpec]) -> list[ClassSpec]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        return v


class FeatureDistance(_Section):
    """A distance of the study's deep features from its training set's, computed inside the
    ONNX graph (the reference statistics are sealed in the model file with the weights)."""

    output: str = Field(min_length=1)  # ONNX output tensor name, shape [batch, 1]
    max: float = Field(gt=0.0)         # the largest distance still inside the domain


class DomainSpec(_Section):
    """Statistics of the training data (see :mod:`aenode.infer.domain`): a study whose
    measured value falls outside a range gets no category."""

    lung_median_hu: list[float] | None = Field(None, min_length=2, max_length=2)
    lung_volume_ml: list[Annotated[float, Field(ge=0)]] | None = Field(None, min_length=2, max_length=2)
    feature_distance: FeatureDistance | None = None
    # Alert ("AI could not assess; needs a radiologist's review") when the gate fires, on
    # the channels that take the model's alert classes (or list "out-of-domain").
    alert: bool = True

    @model_validator(mode="after")
    def _ranges(self) -> DomainSpec:
        for key in ("lung_median_hu", "lung_volume_ml"):
            r = getattr(self, key)
            if r is not None and r[0] >= r[1]:
                raise ValueError(f"{key}: low must be below high")
        return self


class Algorithm(_Section):
    manufacturer: str = "aenode project"
    source: str | None = None


class Manifest(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    intended_use: str = Field(min_length=10)
    onnx: str = "model.onnx"
    algorithm: Algorithm = Field(default_factory=Algorithm)
    coding_scheme: list[CodingScheme] = Field(default_factory=list)
    input: InputSpec
    preprocessing: Preprocessing
    selection: SelectionRules = Field(default_factory=SelectionRules)
    outputs: Outputs
    domain: DomainSpec | None = None

    @model_validator(mode="after")
    def _domain_needs_lung_map(self) -> Manifest:
        if self.domain is not None and self.outputs.lung_map is None:
            raise ValueError("domain: the image-level checks need outputs.lung_map")
        if self.outputs.seg and self.outputs.lesion_map is None:
            raise ValueError("outputs.seg: a Segmentation needs outputs.lesion_map")
        return self

    @model_validator(mode="after")
    def _schemes_declared(self) -> Manifest:
        declared = {s.designator for s in self.coding_scheme}
        standard = {"DCM", "SCT", "LN", "UCUM"}
        for i, cls in enumerate(self.outputs.classes):
            if cls.scheme_designator not in declared | standard:
                raise ValueError(
                    f"outputs.classes[{i}].scheme_designator: {cls.scheme_designator!r} is not declared "
                    "in [[coding_scheme]]")
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.outputs.classes]


def parse_manifest(data: dict, source: str = "<manifest>") -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ManifestError(source, problems) from None


def load_manifest(package_dir: str | Path) -> Manifest:
    path = Path(package_dir) / MANIFEST_NAME
    try:
        data = read_toml(path)
    except ValueError as exc:
        raise ManifestError(str(path), [str(exc)]) from None
    return parse_manifest(data, str(path))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_onnx(package_dir: str | Path, manifest: Manifest) -> Path:
    """The ONNX file's path, once its sha256 matches the manifest (else ManifestError)."""
    onnx_path = Path(package_dir) / manifest.onnx
    if not onnx_path.is_file():
        raise ManifestError(str(Path(package_dir) / MANIFEST_NAME), [f"onnx: file {onnx_path.name} not found"])
    actual = file_sha256(onnx_path)
    if actual != manifest.sha256:
        raise ManifestError(
            str(Path(package_dir) / MANIFEST_NAME),
            [f"sha256: {onnx_path.name} has sha256 {actual}, the manifest says {manifest.sha256}; "
             "the model file was changed or corrupted, refusing to load it"])
    return onnx_path
