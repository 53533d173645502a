"""causalzoo: latent causal generative models for perturbation data, in NumPyro.

Every zoo model is a plain NumPyro ``model``/``guide`` pair (``cz.models.get_model(name)``)
that works under ``seed``, ``trace``, ``condition``, ``do`` and ``Predictive``; the user
classes (``cz.SparsePerturbationVAE``, ``cz.IVAE``, ``cz.DynamicalCausalVAE``) fit them to
AnnData or arrays.
"""

from . import (
    blocks,
    data,
    datasets,
    diagnostics,
    evaluation,
    identifiability,
    inference,
    models,
)
from ._errors import CausalZooError
from .api import IVAE, DynamicalCausalVAE, SparsePerturbationVAE, load
from .evaluation import evaluate

try:
    from importlib.metadata import version as _version

    __version__ = _version("causalzoo")
except Exception:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.1.0.dev0"

__all__ = [
    "CausalZooError",
    "DynamicalCausalVAE",
    "IVAE",
    "SparsePerturbationVAE",
    "load",
    "evaluate",
    "blocks",
    "data",
    "datasets",
    "diagnostics",
    "evaluation",
    "identifiability",
    "inference",
    "models",
    "__version__",
]
