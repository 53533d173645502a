"""The SVI engine and losses."""

from .losses import AlignedELBO
from .svi import EarlyStopping, FitResult, as_key, fit_svi, two_speed_adam

__all__ = ["AlignedELBO", "EarlyStopping", "FitResult", "as_key", "fit_svi", "two_speed_adam"]
