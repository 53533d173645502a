"""Posterior analysis of the ``causalzoo demo`` fit with ArviZ.

The walkthrough of ``docs/guides/posterior_demo.md``, as a script:

1. load the demo's saved model (``cz.load``) and rebuild the demo's data split (the
   held-out combinations are those whose single perturbations are all observed);
2. ``to_datatree`` on the training cells (marginal per-cell log-likelihood, replicated
   counts) and, through ``compare_models``, on the held-out combination cells;
3. ``az.summary`` of the largest perturbation effects (``shift = mask * effect``) and
   ``az.plot_forest`` of a few perturbations; the mask heatmap;
4. the variational checks: PSIS Pareto-``k`` of the guide per cell, and posterior
   predictive checks of the counts (per-gene mean-variance and zero fraction, library size);
5. ``az.loo`` on the training cells, the held-out cells' log predictive density, and
   ``az.compare`` on the held-out cells against a simpler configuration (SAMS-VAE: no latent
   graph, no invariant coupling) fitted to the same training cells.

Run ``causalzoo demo --out causalzoo-demo`` first, then
``python examples/posterior_analysis_demo.py --fit-dir causalzoo-demo --out figures``.
``--quick`` fits a tiny model on a subset of the same split itself (seconds; the tests run
it) instead of reading ``--fit-dir``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

import causalzoo as cz
from causalzoo.data import canonical_condition
from causalzoo.demo import held_out_combinations

# --quick: a subset of the demo's split (cells per condition, the most expressed genes) and
# a tiny model, so that the whole walkthrough runs in seconds
QUICK = {"cells_per_condition": 12, "n_genes": 60, "max_steps": 150, "model": {
    "n_latent_invariant": 2, "n_latent_response": 3, "n_hidden": 16, "n_layers": 0}}


def demo_split(cells_per_condition: int | None = None, n_genes: int | None = None):
    """The demo's split of the bundled Norman 2019 subset: ``(train, heldout, held)``, the
    training cells, the held-out combination cells and the held-out combinations' names.
    ``cells_per_condition`` / ``n_genes`` take a seeded subset (``--quick``)."""
    adata = cz.datasets.norman2019_subset()
    if n_genes is not None:
        mean = np.asarray(adata.X.mean(axis=0)).reshape(-1)
        adata = adata[:, np.sort(np.argsort(-mean)[:n_genes])].copy()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    if cells_per_condition is not None:
        rng = np.random.default_rng(0)
        keep = np.concatenate([
            rng.permutation(np.flatnonzero(labels == c))[:cells_per_condition]
            for c in np.unique(labels)
        ])
        adata = adata[np.sort(keep)].copy()
        labels = adata.obs["perturbation"].astype(str).to_numpy()
    held = held_out_combinations(labels)
    canonical = np.array([canonical_condition(c, "control") for c in labels])
    is_held = np.isin(canonical, held)
    return adata[~is_held].copy(), adata[is_held].copy(), held


def quick_fit(out: Path, seed: int = 0) -> Path:
    """Fit a tiny demo-like model on the ``--quick`` subset and save it as the demo does
    (``<out>/model``)."""
    train, _, _ = demo_split(QUICK["cells_per_condition"], QUICK["n_genes"])
    cz.SparsePerturbationVAE.setup_anndata(train, perturbation_key="perturbation",
                                           control="control")
    model = cz.SparsePerturbationVAE(train, **QUICK["model"])
    model.fit(max_steps=QUICK["max_steps"], batch_size=64, seed=seed, progress=False)
    model.save(out / "model", overwrite=True)
    return out


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_pareto_k(k, threshold):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(np.asarray(k), bins=40, color="C0")
    ax.axvline(threshold, color="C3", ls="--", label=f"threshold {threshold:.2f}")
    ax.set(xlabel="Pareto-k of the guide's weights", ylabel="cells",
           title="PSIS Pareto-k per training cell")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-dir", type=Path, default=Path("causalzoo-demo"),
                        help="a `causalzoo demo --out` folder (its model/ is loaded)")
    parser.add_argument("--out", type=Path, default=Path("posterior-demo"),
                        help="folder for the figures, tables and results.json")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="variational draws (PSIS needs at least 30; default 50, 30 with "
                             "--quick)")
    parser.add_argument("--n-inner", type=int, default=None,
                        help="importance samples per draw and cell of the marginal likelihood "
                             "(default 8, 1 with --quick)")
    parser.add_argument("--compare-steps", type=int, default=3000,
                        help="SVI steps of the simpler configuration fitted for az.compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="fit a tiny model on a subset of the split instead of --fit-dir")
    args = parser.parse_args(argv)
    if args.num_samples is None:
        args.num_samples = 30 if args.quick else 50
    if args.n_inner is None:
        args.n_inner = 1 if args.quick else 8

    import matplotlib

    matplotlib.use("Agg")
    import arviz as az

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, dict[str, float]] = {}

    class phase:
        """Wall-clock and CPU seconds of a step, into ``timings``."""

        def __init__(self, name):
            self.name = name

        def __enter__(self):
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def __exit__(self, *exc):
            timings[self.name] = {"wall": time.perf_counter() - self.wall,
                                  "cpu": time.process_time() - self.cpu}


    # 1. the saved model and the demo's data split
    subset = (QUICK["cells_per_condition"], QUICK["n_genes"]) if args.quick else (None, None)
    fit_dir = args.fit_dir
    if args.quick:
        with phase("quick_fit"):
            fit_dir = quick_fit(out / "quick-fit", args.seed)
    with phase("load"):
        train, heldout, held = demo_split(*subset)
        cz.SparsePerturbationVAE.setup_anndata(train, perturbation_key="perturbation",
                                               control="control")
        model = cz.load(fit_dir / "model", adata=train)

    # 2. DataTrees: training cells (marginal log-likelihood and replicated counts) ...
    with phase("to_datatree_train"):
        dt = model.to_datatree(num_samples=args.num_samples, seed=args.seed,
                               log_likelihood="marginal", n_inner=args.n_inner)

    # 3. the largest effects, a forest plot of the perturbations that carry them, the masks
    summary = az.summary(dt, var_names=["shift"], kind="stats", round_to="none")
    summary = summary.reindex(summary["mean"].abs().sort_values(ascending=False).index)
    summary.to_csv(out / "shift_summary.csv")
    top = summary.head(10)
    post = dt["posterior"].to_dataset()
    mean_shift = post["shift"].mean(("chain", "draw"))
    strongest = mean_shift.pipe(abs).max("latents_response").to_series()
    perturbations = list(strongest.sort_values(ascending=False).index[:4])
    pc = az.plot_forest(dt, var_names=["shift"], coords={"perturbations": perturbations},
                        combined=True)
    pc.savefig(out / "forest_shift.png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close("all")
    figures = ["forest_shift.png"]
    figures.append(_save(cz.diagnostics.plot_perturbation_heatmap(dt=dt), out / "mask_shift.png"))

    # 4. is the variational posterior any good? Pareto-k of the guide; count PPCs
    diag = cz.diagnostics.importance_diagnostics(dt)
    figures.append(_save(plot_pareto_k(diag["k_cells"], diag["threshold"]), out / "pareto_k.png"))
    ppc = cz.diagnostics.count_ppc(dt)
    figures.append(_save(cz.diagnostics.plot_count_ppc(dt), out / "ppc_counts.png"))
    # share of genes (or cells) whose posterior predictive p-value is below 2.5% or above
    # 97.5%; on genes with a mean of at least 0.1 counts (rarer genes have so few non-zero
    # counts that their p-values are mostly ties)
    expressed = ppc["mean"].values >= 0.1

    def extreme(p):
        return float(((p < 0.025) | (p > 0.975)).mean())

    # 5. LOO on the training cells; held-out combinations against a simpler configuration
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto-k warnings: reported below
        loo = az.loo(dt, pointwise=True)
    with phase("fit_sams"):
        # the demo's configuration without the latent graph and the invariant coupling
        sams = cz.SparsePerturbationVAE(
            train, **{**model.config.to_dict(), "scm_graph": "none", "couple_invariant": False,
                      "alignment": 0.0})
        steps = QUICK["max_steps"] if args.quick else args.compare_steps
        sams.fit(max_steps=steps, seed=args.seed, progress=False,
                 **({"batch_size": 64} if args.quick else {}))
    with phase("to_datatree_heldout"):
        # to_datatree(heldout, log_likelihood="marginal") of both models, then az.compare
        # and the held-out log predictive density (lpd) with paired differences
        table = cz.diagnostics.compare_models(
            {"perturbed_vae": model, "sams_vae": sams}, heldout,
            num_samples=args.num_samples, n_inner=args.n_inner, seed=args.seed)
    table.to_csv(out / "compare_heldout.csv")

    k_loo = np.asarray(loo.pareto_k).reshape(-1)
    results = {
        "fit_dir": str(fit_dir),
        "n_train_cells": int(train.n_obs),
        "n_heldout_cells": int(heldout.n_obs),
        "held_out_combinations": held,
        "num_samples": args.num_samples,
        "n_inner": args.n_inner,
        "top_shifts": {i: {k: float(v) for k, v in row.items()} for i, row in top.iterrows()},
        "forest_perturbations": perturbations,
        "pareto_k": {
            "threshold": diag["threshold"],
            "fraction_bad": diag["fraction_bad"],
            "median": float(np.median(diag["k_cells"])),
            "k_joint": diag["k_joint"],
        },
        "ppc_extreme_fraction": {
            "n_expressed_genes": int(expressed.sum()),
            "mean": extreme(ppc["mean_p"].values[expressed]),
            "variance": extreme(ppc["variance_p"].values[expressed]),
            "zero_fraction": extreme(ppc["zero_fraction_p"].values[expressed]),
            "library_size": extreme(ppc["library_size_p"].values),
        },
        "loo_train": {
            "elpd": float(loo.elpd), "se": float(loo.se), "p": float(loo.p),
            "elpd_per_cell": float(loo.elpd) / train.n_obs,
            "fraction_k_above_0.7": float((k_loo > 0.7).mean()),
        },
        "heldout": {
            name: {"elpd_loo": float(table.loc[name, "elpd"]),
                   "p_loo": float(table.loc[name, "p"]),
                   "elpd_diff": float(table.loc[name, "elpd_diff"]),
                   "dse": float(table.loc[name, "dse"]),
                   "weight": float(table.loc[name, "weight"]),
                   **{k: float(table.loc[name, k]) for k in
                      ("lpd", "lpd_se", "lpd_per_cell", "lpd_diff", "lpd_diff_se")}}
            for name in table.index
        },
        "figures": figures,
        "seconds": timings,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"Top shifts (posterior mean, sd) of {dt.attrs['model']}:")
    print(top[["mean", "sd"]].to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nPareto-k of the guide: {diag['fraction_bad']:.1%} of the cells above "
          f"{diag['threshold']:.2f}")
    print(f"LOO on {train.n_obs} training cells: elpd {loo.elpd:.1f} (se {loo.se:.1f}), "
          f"{results['loo_train']['elpd_per_cell']:.2f} per cell")
    print(f"\nHeld-out combinations ({heldout.n_obs} cells):")
    print(table[["elpd", "elpd_diff", "dse", "lpd", "lpd_diff", "lpd_diff_se"]].to_string(
        float_format=lambda v: f"{v:.1f}"))
    print(f"\nwrote {out}/: " + ", ".join(figures + ["shift_summary.csv", "compare_heldout.csv",
                                                      "results.json"]))
    return {"results": results, "datatree": dt, "compare": table, "summary": summary}


if __name__ == "__main__":
    main()
