"""Identifiability verification: metrics, ground-truth generators and assumption checks.

* metrics, re-exported here: Hungarian-matched MCC, alignment, the entangled and null
  floors every score is read against (:mod:`causalzoo.identifiability.metrics`), linear and
  kernel-ridge R² (:mod:`causalzoo.identifiability.r2`), SHD / precision / recall of graphs
  (:mod:`causalzoo.identifiability.graphs`);
* :mod:`causalzoo.identifiability.generators`: seeded ground truth (sparse-perturbation
  counts, iVAE, LEAP, TDRL, CaRiNG, CITRIS-style temporal data);
* :mod:`causalzoo.identifiability.assumptions`: sufficient variability, injectivity of
  the mixing, acyclicity;
* :mod:`causalzoo.identifiability.shift_rotation`: the whitening and rotation that make
  perturbation shifts sparsest, which resolves latents identified only up to a linear map.

>>> import causalzoo as cz
>>> data = cz.identifiability.generators.sparse_perturbation(n_cells_per_condition=20, seed=0)
>>> round(cz.identifiability.mcc(data.z, data.z), 6)
1.0
"""

from . import assumptions, generators
from .assumptions import (
    AssumptionCheck,
    check_acyclicity,
    check_injectivity,
    check_sufficient_variability,
    gaussian_natural_parameters,
)
from .graphs import graph_metrics
from .metrics import (
    align,
    correlation_matrix,
    correlation_matrix_xr,
    entangled_floor,
    mask_recovery,
    mcc,
    mcc_xr,
    null_mcc,
)
from .r2 import r2_kernel_ridge, r2_linear
from .shift_rotation import ShiftRotation, sparse_shift_rotation

__all__ = [
    "assumptions",
    "generators",
    "mcc",
    "correlation_matrix",
    "align",
    "entangled_floor",
    "null_mcc",
    "mask_recovery",
    "r2_linear",
    "r2_kernel_ridge",
    "graph_metrics",
    "correlation_matrix_xr",
    "mcc_xr",
    "AssumptionCheck",
    "check_sufficient_variability",
    "check_injectivity",
    "check_acyclicity",
    "gaussian_natural_parameters",
    "ShiftRotation",
    "sparse_shift_rotation",
]
