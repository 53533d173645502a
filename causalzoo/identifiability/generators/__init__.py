"""Seeded ground-truth generators for identifiability tests.

Each generator returns a frozen dataclass holding the observations ``x``, the auxiliary
variable ``u`` (for perturbation data: the design) and the true latents ``z``, plus every
parameter of the generative story, so that recovery can be scored against the truth. One
private module per generator family; everything public is re-exported here.
"""

from ._caring import caring
from ._citris import citris_temporal
from ._ivae import IVAEData, ivae, ivae_mixing
from ._sparse import SparsePerturbationData, sparse_perturbation
from ._temporal import (
    TemporalData,
    TemporalSnapshot,
    leap_nonstationary,
    snapshot,
    tdrl_changing,
)

__all__ = ["IVAEData", "ivae", "ivae_mixing", "SparsePerturbationData", "sparse_perturbation",
           "TemporalData", "TemporalSnapshot", "snapshot", "leap_nonstationary",
           "tdrl_changing", "caring", "citris_temporal"]
