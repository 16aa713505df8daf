"""TID 1500 Measurement Report (Comprehensive 3D SR) with highdicom.

One measurement group (TID 1501) per report:

* tracking identifier and UID (deterministic), finding type Pneumonia (SCT 233604007),
  finding site Lung (SCT 39607008), algorithm identification (TID 4019: name, version,
  manufacturer);
* the category as a coded qualitative evaluation (model's private scheme, declared in the
  Coding Scheme Identification Sequence);
* one numeric measurement per class: the class probability, UCUM ``{probability}``;
* lung involvement in UCUM ``%`` when the model gave a lesion map.

Outside the model's validated domain (its domain gate fired) the group carries no
category and no class probabilities: one coded evaluation "Outside the validated domain
of the model - no AI category" and the measured values that put it there.

Evidence: every instance of the analysed series (Current Requested Procedure Evidence
Sequence).  VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from aenode import __version__
from aenode.report.models import ClassConcept, PredecessorRef, ReportInput
from aenode.report.uids import ResultUIDs, device_uid, result_uids
from aenode.store.marks import NODE_MANUFACTURER, OUTPUT_DESCRIPTION_PREFIX, SOFTWARE_PREFIX

SR_SERIES_NUMBER = 9900
SR_SERIES_DESCRIPTION = OUTPUT_DESCRIPTION_PREFIX  # 34 characters, fits LO
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"

# Concepts of the node itself (not of any one model), in its own private scheme.
NODE_SCHEME_DESIGNATOR = "99AENODER"
NODE_SCHEME_NAME = "aenode report concepts"
NODE_SCHEME_VERSION = "1"
CONCEPT_CATEGORY = hd.sr.CodedConcept("CATEGORY", NODE_SCHEME_DESIGNATOR, "AI classification category")
CONCEPT_LUNG_INVOLVEMENT = hd.sr.CodedConcept("LUNGINV", NODE_SCHEME_DESIGNATOR, "Lung involvement")
# Outside the model's validated domain: this evaluation replaces the category.
CONCEPT_DOMAIN = hd.sr.CodedConcept("DOMAIN", NODE_SCHEME_DESIGNATOR, "AI validated domain")
OUT_OF_DOMAIN_TEXT = "Outside the validated domain of the model - no AI category"
OUTSIDE_DOMAIN = hd.sr.CodedConcept("OUTDOMAIN", NODE_SCHEME_DESIGNATOR, OUT_OF_DOMAIN_TEXT)
DOMAIN_MEASUREMENTS = {
    "lung_median_hu": (hd.sr.CodedConcept("LUNGHU", NODE_SCHEME_DESIGNATOR, "Median lung attenuation"),
                       hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")),
    "lung_volume_ml": (hd.sr.CodedConcept("LUNGVOL", NODE_SCHEME_DESIGNATOR, "Lung volume"),
                       hd.sr.CodedConcept("ml", "UCUM", "milliliter")),
}

PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
LUNG = hd.sr.CodedConcept("39607008", "SCT", "Lung")
CT_CHEST = hd.sr.CodedConcept("24627-2", "LN", "CT Chest")
UNIT_PROBABILITY = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
UNIT_PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")


def _concept(c: ClassConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(c.code_value, c.scheme_designator, c.meaning)


def _evidence(inp: ReportInput) -> list[Dataset]:
    """Minimal datasets naming each source instance; the first also carries the header."""
    study = inp.study_instance_uid
    out = []
    for i, ref in enumerate(inp.source_refs):
        ds = Dataset()
        if i == 0:
            for elem in inp.header:
                ds[elem.tag] = elem
        else:
            ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = inp.series_instance_uid
        ds.SOPClassUID = ref.sop_class_uid
        ds.SOPInstanceUID = ref.sop_instance_uid
        out.append(ds)
    return out


def _predecessors(inp: ReportInput) -> list[PredecessorRef]:
    """Explicit predecessors, else the previous revision's SR (derived, deterministic)."""
    if inp.predecessors is not None:
        return list(inp.predecessors)
    if inp.revision == 1:
        return []
    prev = result_uids(inp.study_instance_uid, inp.series_instance_uid, inp.model.sha256, inp.revision - 1)
    return [PredecessorRef(prev.study_instance_uid, prev.sr_series_instance_uid, prev.sr_sop_instance_uid)]


def _coding_scheme_items(inp: ReportInput) -> list[Dataset]:
    items = []
    seen = set()
    for s in (*inp.coding_schemes,):
        if s.designator in seen:
            continue
        seen.add(s.designator)
        item = Dataset()
        item.CodingSchemeDesignator = s.designator
        item.CodingSchemeName = s.name
        item.CodingSchemeVersion = s.version
        if s.responsible_organization:
            item.CodingSchemeResponsibleOrganization = s.responsible_organization
        if s.uid:
            item.CodingSchemeUID = s.uid
        items.append(item)
    if NODE_SCHEME_DESIGNATOR not in seen:
        item = Dataset()
        item.CodingSchemeDesignator = NODE_SCHEME_DESIGNATOR
        item.CodingSchemeName = NODE_SCHEME_NAME
        item.CodingSchemeVersion = NODE_SCHEME_VERSION
        item.CodingSchemeResponsibleOrganization = "aenode project"
        items.append(item)
    return items


def build_sr(inp: ReportInput, *, node_name: str = "aenode", uids: ResultUIDs | None = None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 SR of ``inp`` (a highdicom dataset, not yet written)."""
    if not isinstance(inp, ReportInput):
        raise TypeError("inp: must be a ReportInput")
    uids = uids or result_uids(inp.study_instance_uid, inp.series_instance_uid, inp.model.sha256, inp.revision)

    algorithm = hd.sr.AlgorithmIdentification(
        name=inp.model.name, version=inp.model.version, manufacturer=inp.model.manufacturer)
    if inp.category is None:
        # No category, and no class probabilities either: they would read as one.
        measurements = [
            hd.sr.Measurement(name=concept, value=round(float(inp.domain_values[key]), 1), unit=unit,
                              finding_sites=[hd.sr.FindingSite(LUNG)])
            for key, (concept, unit) in DOMAIN_MEASUREMENTS.items() if inp.domain_values.get(key) is not None]
        evaluation = hd.sr.QualitativeEvaluation(name=CONCEPT_DOMAIN, value=OUTSIDE_DOMAIN)
    else:
        measurements = [
            hd.sr.Measurement(name=_concept(c), value=p, unit=UNIT_PROBABILITY)
            for c, p in zip(inp.classes, inp.probabilities)
        ]
        evaluation = hd.sr.QualitativeEvaluation(name=CONCEPT_CATEGORY, value=_concept(inp.category_concept))
    if inp.lung_involvement_percent is not None and inp.category is not None:
        measurements.append(hd.sr.Measurement(
            name=CONCEPT_LUNG_INVOLVEMENT, value=round(inp.lung_involvement_percent, 3), unit=UNIT_PERCENT,
            finding_sites=[hd.sr.FindingSite(LUNG)]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid, identifier=f"{inp.model.name} result"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(LUNG)],
        measurements=measurements or None,
        qualitative_evaluations=[evaluation],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(node_name), name=node_name[:64], manufacturer_name=NODE_MANUFACTURER,
            model_name=f"{inp.model.name} {inp.model.version}"[:64]),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CT_CHEST,
        imaging_measurements=[group],
    )

    previous = []
    for p in _predecessors(inp):
        d = Dataset()
        d.StudyInstanceUID = p.study_instance_uid
        d.SeriesInstanceUID = p.series_instance_uid
        d.SOPInstanceUID = p.sop_instance_uid
        d.SOPClassUID = p.sop_class_uid
        previous.append(d)

    sr = hd.sr.Comprehensive3DSR(
        evidence=_evidence(inp),
        content=report[0],
        series_instance_uid=uids.sr_series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_sop_instance_uid,
        instance_number=inp.revision,
        manufacturer=NODE_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=previous or None,
        series_description=SR_SERIES_DESCRIPTION,
    )
    sr.SoftwareVersions = f"{SOFTWARE_PREFIX} {__version__}"
    sr.ManufacturerModelName = "aenode"
    sr.CodingSchemeIdentificationSequence = _coding_scheme_items(inp)
    return sr
