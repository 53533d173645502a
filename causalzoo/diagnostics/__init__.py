"""Posterior analysis with ArviZ 1.x: ``xarray.DataTree`` conversion, variational diagnostics,
posterior predictive checks for counts, LOO model comparison on held-out cells, plots and
reports.

>>> import arviz as az
>>> dt = cz.diagnostics.to_datatree(model, num_samples=200)      # doctest: +SKIP
>>> az.summary(dt, var_names=["shift"], kind="stats")           # doctest: +SKIP
>>> cz.diagnostics.importance_diagnostics(dt)["fraction_bad"]   # doctest: +SKIP
"""

from .compare import compare_models, compare_posteriors, heldout_datatrees, heldout_lpd
from .convert import PosteriorSource, posterior_source, register_converter, to_datatree
from .io import open_datatree, save_datatree
from .plots import (
    plot_count_ppc,
    plot_elbo,
    plot_latent_correlation,
    plot_latent_graph,
    plot_perturbation_heatmap,
)
from .report import write_report
from .variational import (
    count_ppc,
    elbo_convergence,
    importance_diagnostics,
    pareto_k,
    pareto_k_threshold,
)

__all__ = [
    "PosteriorSource",
    "posterior_source",
    "register_converter",
    "to_datatree",
    "save_datatree",
    "open_datatree",
    "pareto_k",
    "pareto_k_threshold",
    "importance_diagnostics",
    "elbo_convergence",
    "count_ppc",
    "heldout_datatrees",
    "heldout_lpd",
    "compare_models",
    "compare_posteriors",
    "plot_elbo",
    "plot_count_ppc",
    "plot_perturbation_heatmap",
    "plot_latent_correlation",
    "plot_latent_graph",
    "write_report",
]
