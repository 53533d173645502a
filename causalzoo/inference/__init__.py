"""The SVI engine (checkpoints, resume, non-finite diagnosis), losses, and NUTS for small models."""

from .losses import AlignedELBO
from .nuts import NUTSResult, fit_nuts
from .svi import EarlyStopping, FitResult, as_key, fit_svi, two_speed_adam

__all__ = [
    "AlignedELBO",
    "EarlyStopping",
    "FitResult",
    "NUTSResult",
    "as_key",
    "fit_nuts",
    "fit_svi",
    "two_speed_adam",
]
