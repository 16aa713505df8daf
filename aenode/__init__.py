"""aenode: a PACS-integrated DICOM AI node for chest CT triage (see DESIGN in docs/)."""

__version__ = "0.1.0"
