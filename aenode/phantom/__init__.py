"""Synthetic chest-CT study generator (anatomy, COVID-19 RSNA patterns, DICOM writer).

Public API: generate_volume, generate_study, PATTERNS, TRANSFER_SYNTAXES (plus LABELS, VARIANTS).
"""
from .dicom_writer import TRANSFER_SYNTAXES
from .lesions import CATEGORY, LABELS, PATTERNS, VARIANTS
from .study import StudyResult, generate_study
from .volume import PhantomVolume, generate_volume

__all__ = ["generate_study", "generate_volume", "PATTERNS", "TRANSFER_SYNTAXES", "LABELS", "VARIANTS",
           "CATEGORY", "PhantomVolume", "StudyResult"]
