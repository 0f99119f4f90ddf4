"""`modeling_pat.data`: the segmentation data names users' scripts import (the code is in `apps/data/`).

Kept so that `from modeling_pat.data import load_split, SegmentationCollator, ...` works as before the package split;
it exports exactly what `modeling_pat.apps.data` exports.
"""

from .apps import data as _data
from .apps.data import *  # noqa: F401,F403  (re-exported)


__all__ = list(_data.__all__)
