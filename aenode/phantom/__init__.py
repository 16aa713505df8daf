"""Synthetic chest-CT study generator (anatomy, COVID-19 RSNA patterns, DICOM writer).

Models: body habitus (size, fat, arms up/down), bones, heart and great vessels (with or without
contrast), five lobes with fissures, textured parenchyma with a gravity gradient, a
bronchovascular tree to ~0.4 mm vessels and ~2 mm bronchi, the RSNA patterns with lesion
textures (anatomy.py, vessels.py, texture.py, lesions.py); confounders in every category
(emphysema, scars, atelectasis, breathing motion); what scanners vary (acquisition.py: slice
thickness and profile, kernel resolution and noise power spectrum, dose, FOV, vendor tags).
Does not model: real organ shapes (analytic solids), separate arterial/venous trees, beam
hardening, streaks, iterative-reconstruction texture, cardiac motion, devices. It is a training
and test domain, not a substitute for real CT: a model trained here must still be validated on
real studies.

Public API: generate_volume, generate_study, Acquisition, sample_acquisition, PATTERNS,
TRANSFER_SYNTAXES (plus LABELS, VARIANTS, TISSUE, LOBES).
"""
from .acquisition import Acquisition, sample_acquisition
from .anatomy import LOBES, TISSUE
from .dicom_writer import TRANSFER_SYNTAXES
from .lesions import CATEGORY, LABELS, PATTERNS, VARIANTS
from .study import StudyResult, generate_study
from .volume import PhantomVolume, generate_volume

__all__ = ["generate_study", "generate_volume", "PATTERNS", "TRANSFER_SYNTAXES", "LABELS", "VARIANTS",
           "CATEGORY", "PhantomVolume", "StudyResult", "Acquisition", "sample_acquisition", "TISSUE", "LOBES"]
