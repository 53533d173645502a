"""Perturbation-prediction evaluation: metrics (GEARS protocol) and baselines."""

from .baselines import (
    additive_baseline,
    condition_means,
    no_change_baseline,
    train_mean_baseline,
)
from .metrics import (
    direction_errors,
    log_normalize,
    mse,
    pearson_delta,
    score_condition,
    top_de_genes,
)

__all__ = [
    "log_normalize",
    "pearson_delta",
    "mse",
    "top_de_genes",
    "direction_errors",
    "score_condition",
    "condition_means",
    "additive_baseline",
    "no_change_baseline",
    "train_mean_baseline",
]
