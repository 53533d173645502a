"""``causalzoo report FIT_DIR``: the plots and a Markdown summary page of a saved fit.

Without data the report shows what the saved model holds (ELBO history, masks, shifts,
latent graph). With the cells (``adata`` or ``--data cells.h5ad``, set up like the training
data) it adds posterior predictive checks, Pareto-``k`` of the guide, an ArviZ summary of the
shifts, the DataTree itself (``posterior.nc``), and, when ``adata.obsm["z_true"]`` holds
ground-truth latents (the generators' AnnData), the latent-vs-truth correlation matrix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CausalZooError
from .convert import to_datatree
from .io import save_datatree
from .variational import elbo_convergence, importance_diagnostics

__all__ = ["write_report"]


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| quantity | value |", "|---|---|"]
    for name, value in rows:
        if isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"| {name} | {value} |")
    return "\n".join(lines)


def write_report(
    fit_dir: str | Path,
    out: str | Path | None = None,
    *,
    adata=None,
    num_samples: int = 100,
    seed: int = 0,
    write_datatree: bool = True,
    chunk_size: int | None = None,
) -> Path:
    """Write the report of a saved model directory.

    Parameters
    ----------
    fit_dir : str or Path
        A directory written by ``model.save(...)``.
    out : str or Path, optional
        Output folder (default: ``FIT_DIR/report``).
    adata : anndata.AnnData or str or Path, optional
        Cells to check the posterior on (or an ``.h5ad`` path), with the saved genes, keys
        and vocabularies.
    num_samples : int
        Variational draws for the DataTree.
    seed : int
        Seed of the draws.
    write_datatree : bool
        Also write the DataTree to ``posterior.nc`` (netCDF).
    chunk_size : int, optional
        Cells per compiled call of :func:`~causalzoo.diagnostics.to_datatree` (its default
        keeps a chunk's draws under 128 MiB).

    Returns
    -------
    Path
        The Markdown page, ``OUT/report.md``, next to its PNG figures.
    """
    import matplotlib

    matplotlib.use("Agg")

    from ..api import load
    from .plots import (
        plot_count_ppc,
        plot_elbo,
        plot_latent_correlation,
        plot_latent_graph,
        plot_perturbation_heatmap,
    )

    fit_dir = Path(fit_dir)
    if not (fit_dir / "causalzoo.json").exists():
        raise CausalZooError(
            f"{str(fit_dir)!r} is not a saved model directory (no causalzoo.json); pass the "
            "folder written by model.save(path)."
        )
    if isinstance(adata, (str, Path)):
        import anndata

        path = Path(adata)
        if not path.exists():
            raise CausalZooError(f"Data file {str(path)!r} does not exist.")
        adata = anndata.read_h5ad(path)
    meta = json.loads((fit_dir / "causalzoo.json").read_text())
    # Cells not set up yet are set up from the saved registry; only the sparse model's
    # registry is read here (the other entries' own set-up checks the cells when loading).
    if adata is not None and meta.get("model") == "sparse_perturbation":
        from ..data import get_registry

        try:
            get_registry(adata)
        except CausalZooError:
            reg = meta.get("registry", {})
            from ..data import setup_anndata

            setup_anndata(
                adata,
                perturbation_key=reg.get("perturbation_key", "perturbation"),
                control=tuple(reg.get("control", ("control",))),
                layer=reg.get("layer"),
                covariate_keys=tuple(reg.get("covariate_keys", ())),
                count_data=reg.get("count_data", True),
            )
    model = load(fit_dir, adata=adata)
    out = Path(out) if out is not None else fit_dir / "report"
    out.mkdir(parents=True, exist_ok=True)

    sections = [f"# causalzoo report: `{fit_dir.name}`", "", f"`{model!r}`", ""]
    fit_info = getattr(model, "fit_info", {}) or {}
    loss = np.asarray(getattr(model, "history", {}).get("loss", np.zeros(0)))
    sections += ["## Fit", ""]
    rows = [(k, v) for k, v in fit_info.items() if isinstance(v, (int, float, str))]
    if loss.size >= 4:
        conv = elbo_convergence(-loss)
        rows += [("final ELBO (last 10% mean)", conv["final"]),
                 ("relative ELBO change, last two windows", conv["relative_change"]),
                 ("ELBO converged (rtol 1e-3)", conv["converged"])]
        sections += [_table(rows), "", f"![ELBO]({_save(plot_elbo(-loss), out / 'elbo.png')})", ""]
    else:
        sections += [_table(rows), ""]

    if hasattr(model, "mask_probability") and hasattr(model, "shift"):
        fig = plot_perturbation_heatmap(model.mask_probability(), model.shift())
        sections += ["## Perturbation effects", "",
                     ("Posterior probability that each perturbation targets each response "
                      "latent, and its posterior mean shift."), "",
                     f"![masks and shifts]({_save(fig, out / 'perturbation_heatmap.png')})", ""]
    params = getattr(model, "params", {}) or {}
    if "scm_weights_map" in params:
        from ..blocks.mechanisms import weights_from_lower

        k = model.config.n_latent_response
        w = np.asarray(weights_from_lower(np.asarray(params["scm_weights_map"]), k))
        fig = plot_latent_graph(w, names=[f"z_resp_{i}" for i in range(k)])
        sections += ["## Learned latent graph", "",
                     f"![latent graph]({_save(fig, out / 'latent_graph.png')})", ""]

    if adata is None:
        sections += [("Posterior predictive checks and Pareto-k need the cells: rerun with "
                      "`--data cells.h5ad`."), ""]
    else:
        dt = to_datatree(model, num_samples=num_samples, seed=seed, chunk_size=chunk_size)
        diag = importance_diagnostics(dt)
        sections += ["## Variational diagnostics", "",
                     _table([("draws", diag["n_draws"]),
                             ("Pareto-k threshold", diag["threshold"]),
                             ("cells with k above it", f"{100 * diag['fraction_bad']:.1f}%"),
                             ("median per-cell k", float(diag["k_cells"].median())),
                             ("joint k (all cells and globals)", diag["k_joint"])]), ""]
        if "posterior_predictive" in dt.children:
            from .variational import count_ppc

            ppc = count_ppc(dt)
            extreme = {
                name: float(((ppc[f"{name}_p"] < 0.025) | (ppc[f"{name}_p"] > 0.975)).mean())
                for name in ("mean", "variance", "zero_fraction")
            }
            sections += ["## Posterior predictive checks", "",
                         _table([(f"genes with extreme PPC p-value of {k}", f"{100 * v:.1f}%")
                                 for k, v in extreme.items()]), "",
                         f"![PPC]({_save(plot_count_ppc(dt), out / 'ppc.png')})", ""]
        post = dt["posterior"].to_dataset()
        if "shift" in post:
            import arviz as az

            table = az.summary(dt, var_names=["shift"], kind="stats")
            sections += ["## Posterior of the shifts (ArviZ)", "", table.to_markdown()
                         if hasattr(table, "to_markdown") and _has_tabulate() else
                         "```\n" + table.to_string() + "\n```", ""]
        if "z_true" in adata.obsm and hasattr(model, "get_latent_representation"):
            z_hat = model.get_latent_representation(adata)
            fig = plot_latent_correlation(np.asarray(adata.obsm["z_true"]), z_hat)
            sections += ["## Latents against the ground truth", "",
                         f"![latent correlation]({_save(fig, out / 'latent_correlation.png')})", ""]
        if write_datatree:
            save_datatree(dt, out / "posterior.nc")
            sections += ["The posterior is in `posterior.nc` (`xarray.open_datatree`).", ""]
    page = out / "report.md"
    page.write_text("\n".join(sections))
    return page


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
