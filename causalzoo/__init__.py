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


def __getattr__(name: str):
    """``cz.testing`` on first use: the module needs ``hypothesis`` (an optional test
    dependency), so ``import causalzoo`` does not load it, but ``import causalzoo as cz;
    cz.testing.assert_recovers(...)`` works as the docs write it (and raises the module's
    own ImportError, naming the install command, where hypothesis is missing)."""
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
