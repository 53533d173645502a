"""The user classes: AnnData in, fitted zoo models out (scvi-tools style).

One module per zoo entry (``causalzoo.api.sparse_perturbation``, …); each class is thin
plumbing over the plain NumPyro program of :mod:`causalzoo.models`. ``load`` rebuilds any of
them from a saved directory.
"""

from ._common import load, register_user_class
from .sparse_perturbation import SparsePerturbationVAE

__all__ = ["SparsePerturbationVAE", "load", "register_user_class"]
