"""Perturbation-prediction evaluation: frozen protocol splits, baselines, metrics, reports.

``cz.evaluate(model_or_class, adata, protocol=..., seeds=...)`` fits a model on a frozen
split (:mod:`~causalzoo.evaluation.splits`), predicts the held-out conditions and scores it
beside the baselines (:mod:`~causalzoo.evaluation.baselines`) with the mean-profile metrics
(:mod:`~causalzoo.evaluation.metrics`) and cell-level distances
(:mod:`~causalzoo.evaluation.distances`); :mod:`~causalzoo.evaluation.report` writes the
report folder.
"""

from .baselines import (
    additive_baseline,
    condition_means,
    latent_arithmetic_baseline,
    no_change_baseline,
    train_mean_baseline,
)
from .distances import PCASpace, energy_distance, median_bandwidth, mmd
from .metrics import (
    de_ranking,
    direction_errors,
    log_normalize,
    mse,
    nrmse,
    pearson_delta,
    r2_delta_weighted,
    r2_means,
    score_condition,
    top_de_genes,
)
from .report import write_report
from .runner import BASELINES, METRICS, EvaluationResult, evaluate
from .splits import (
    PROTOCOLS,
    Split,
    cell_units,
    combination_split,
    covariate_transfer_split,
    data_hash,
    gears_split,
    make_split,
    singles_to_doubles_split,
)

__all__ = [
    "evaluate",
    "EvaluationResult",
    "BASELINES",
    "METRICS",
    "write_report",
    "Split",
    "PROTOCOLS",
    "make_split",
    "gears_split",
    "combination_split",
    "singles_to_doubles_split",
    "covariate_transfer_split",
    "cell_units",
    "data_hash",
    "log_normalize",
    "pearson_delta",
    "mse",
    "nrmse",
    "r2_means",
    "r2_delta_weighted",
    "top_de_genes",
    "de_ranking",
    "direction_errors",
    "score_condition",
    "energy_distance",
    "mmd",
    "median_bandwidth",
    "PCASpace",
    "condition_means",
    "additive_baseline",
    "no_change_baseline",
    "train_mean_baseline",
    "latent_arithmetic_baseline",
]
