"""NYU-v2 in MTAN's 13-class 288x384 ``.npy`` layout: the spec lives beside NYUD_MT's in :mod:`data_prep.nyuv2`."""
from .nyuv2 import SPEC_13 as SPEC

__all__ = ["SPEC"]
