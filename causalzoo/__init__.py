"""causalzoo: latent causal generative models for perturbation data, in NumPyro."""

from ._errors import CausalZooError

__version__ = "0.1.0.dev0"
__all__ = ["CausalZooError", "__version__"]
