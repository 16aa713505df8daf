"""The one error every sender reports a failed attempt with (DICOM, DICOMweb, alerts)."""

from __future__ import annotations


class DeliveryError(Exception):
    """A failed attempt; ``permanent`` means retrying cannot help (e.g. payload missing,
    the receiver rejected the object for good): the row goes to ``failed`` at once."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent
