"""The user classes: AnnData in, fitted zoo models out (scvi-tools style).

One module per zoo entry (``causalzoo.api.sparse_perturbation``, …); each class is thin
plumbing over the plain NumPyro program of :mod:`causalzoo.models`. ``load`` rebuilds any of
them from a saved directory.
"""

from ._common import load, register_user_class
from .dynamical import DynamicalCausalVAE
from .ivae import IVAE
from .sparse_perturbation import SparsePerturbationVAE

__all__ = ["DynamicalCausalVAE", "IVAE", "SparsePerturbationVAE", "load", "register_user_class"]
