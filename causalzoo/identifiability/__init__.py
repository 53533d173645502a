"""Identifiability verification: metrics (MCC, alignment, floors) and ground-truth generators.

>>> import causalzoo as cz
>>> data = cz.identifiability.generators.sparse_perturbation(n_cells_per_condition=20, seed=0)
>>> round(cz.identifiability.mcc(data.z, data.z), 6)
1.0
"""

from . import generators
from .metrics import align, correlation_matrix, entangled_floor, mask_recovery, mcc

__all__ = [
    "generators",
    "mcc",
    "correlation_matrix",
    "align",
    "entangled_floor",
    "mask_recovery",
]
