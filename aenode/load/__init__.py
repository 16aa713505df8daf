"""Volume loading: one CT series from DICOM files into an int16 HU volume with geometry."""

from aenode.load.volume import LoadError, Volume, load_series

__all__ = ["LoadError", "Volume", "load_series"]
