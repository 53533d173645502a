"""causalzoo: latent causal generative models for perturbation data, in NumPyro.

Every zoo model is a plain NumPyro ``model``/``guide`` pair (``cz.models.get_model(name)``)
that works under ``seed``, ``trace``, ``condition``, ``do`` and ``Predictive``; the user
classes (``cz.SparsePerturbationVAE``) fit them to AnnData.
"""

from . import blocks, data, datasets, evaluation, identifiability, inference, models
from ._errors import CausalZooError
from .api import SparsePerturbationVAE, load

try:
    from importlib.metadata import version as _version

    __version__ = _version("causalzoo")
except Exception:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.1.0.dev0"

__all__ = [
    "CausalZooError",
    "SparsePerturbationVAE",
    "load",
    "blocks",
    "data",
    "datasets",
    "evaluation",
    "identifiability",
    "inference",
    "models",
    "__version__",
]
