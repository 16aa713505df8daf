"""DICOM receive stage: the Storage SCP behind ``aenode serve`` (issue 3)."""
