"""Seeded ground-truth generators for identifiability tests.

Each generator returns a frozen dataclass holding the observations ``x``, the auxiliary
variable ``u`` (for perturbation data: the design) and the true latents ``z``, plus every
parameter of the generative story, so that recovery can be scored against the truth. One
private module per generator family; everything public is re-exported here.
"""

from ._sparse import SparsePerturbationData, sparse_perturbation

__all__ = ["SparsePerturbationData", "sparse_perturbation"]
