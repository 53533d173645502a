"""``causalzoo demo``: the sparse perturbation model on the bundled Norman 2019 subset.

Holds out the combinations whose two single perturbations are both in the data, fits the
model on everything else, predicts the held-out combinations, and scores the predictions
against the observed cells beside the additive baseline (control + sum of single effects)
and the no-change baseline, on log-normalised means: Pearson correlation of the change
from control over all genes, and MSE on the top-20 DE genes of each combination (scanpy
Wilcoxon against control). Writes a table, plots and the fitted model to a folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import datasets
from .api import SparsePerturbationVAE
from .data import canonical_condition, parse_perturbation
from .evaluation import (
    additive_baseline,
    condition_means,
    log_normalize,
    no_change_baseline,
    score_condition,
    top_de_genes,
)

__all__ = ["held_out_combinations", "run_demo"]

DEFAULT_STEPS = 3000


def held_out_combinations(labels, control: str = "control") -> list[str]:
    """Combinations (two or more parts) all of whose single perturbations are observed."""
    conditions = {canonical_condition(c, control) for c in pd.unique(np.asarray(labels))}
    singles = {c for c in conditions if len(parse_perturbation(c, control)) == 1}
    return sorted(
        c
        for c in conditions
        if len(parts := parse_perturbation(c, control)) > 1 and set(parts) <= singles
    )


def _plot(out: Path, model, scores, deltas, held):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = model.history["loss"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, loss.size + 1)
    ax.plot(steps, -loss, lw=0.5, alpha=0.4, label="per step")
    window = max(1, loss.size // 50)
    smooth = np.convolve(-loss, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window} steps")
    lo, hi = np.percentile(-loss[loss.size // 10 :], [1, 100])
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set(xlabel="SVI step", ylabel="ELBO (nats)", title="ELBO during the fit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "elbo.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(held), figsize=(3.2 * len(held), 6.2), squeeze=False)
    for j, combo in enumerate(held):
        obs = deltas[combo]["observed"]
        for i, method in enumerate(("model", "additive")):
            ax = axes[i, j]
            pred = deltas[combo][method]
            ax.scatter(obs, pred, s=5, alpha=0.5)
            de = deltas[combo]["de_genes"]
            ax.scatter(obs[de], pred[de], s=12, color="C3", label="top-20 DE")
            lim = np.abs(np.concatenate([obs, pred])).max() * 1.05
            ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim))
            r = scores.loc[(combo, method), "pearson_delta"]
            ax.set_title(f"{combo}\n{method}: r = {r:.2f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"predicted change ({method})")
            if i == 1:
                ax.set_xlabel("observed change")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Change from control (log-normalised means), held-out combinations")
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_observed.png", dpi=120)
    plt.close(fig)

    mask = model.mask_probability()
    fig, ax = plt.subplots(figsize=(0.5 * mask.shape[1] + 2.5, 0.25 * mask.shape[0] + 1.5))
    im = ax.imshow(mask.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_yticks(range(mask.shape[0]), mask.index, fontsize=7)
    ax.set_xticks(range(mask.shape[1]), mask.columns, rotation=90, fontsize=7)
    ax.set_title("Learned mask: P(perturbation targets latent)")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(out / "mask.png", dpi=120)
    plt.close(fig)


def run_demo(
    out: str | Path = "causalzoo-demo",
    *,
    max_steps: int = DEFAULT_STEPS,
    n_cells: int = 500,
    seed: int = 0,
    progress: bool = True,
    echo=print,
) -> pd.DataFrame:
    """Run the demo and return the score table (also written to ``out``).

    Parameters
    ----------
    out : str or Path
        Output folder (created).
    max_steps : int
        SVI steps.
    n_cells : int
        Predicted cells per held-out combination.
    seed : int
        Seed of the fit and of the predictions.
    progress : bool
        Show the progress bar.
    echo : callable
        Where to print progress lines.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    adata = datasets.norman2019_subset()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    held = held_out_combinations(labels)
    canonical = np.array([canonical_condition(c, "control") for c in labels])
    is_held = np.isin(canonical, held)
    train = adata[~is_held].copy()
    echo(
        f"causalzoo demo: Norman 2019 subset, {adata.n_obs} cells x {adata.n_vars} genes; "
        f"holding out {len(held)} combinations ({', '.join(held)}; {int(is_held.sum())} cells)"
    )
    SparsePerturbationVAE.setup_anndata(train, perturbation_key="perturbation", control="control")
    model = SparsePerturbationVAE(train, n_latent_invariant=8, n_latent_response=8, n_hidden=128)
    echo(f"fitting {model!r} on {train.n_obs} cells")
    model.fit(max_steps=max_steps, seed=seed, progress=progress)
    info = model.fit_info
    echo(
        f"fit: {info['n_steps']} steps ({info['stop_reason']}), {info['run_seconds']:.0f} s "
        f"including {info['compile_seconds']:.0f} s to compile"
    )
    pred = model.predict(held, n_cells=n_cells, seed=seed)

    lognorm = log_normalize(adata.X)
    means = condition_means(lognorm, canonical)
    pred_means = condition_means(log_normalize(pred.layers["counts"]),
                                 pred.obs["condition"].astype(str))
    additive = additive_baseline(means, "control", held)
    no_change = no_change_baseline(means, "control", held)

    import anndata

    lognorm_adata = anndata.AnnData(
        X=lognorm,
        obs=pd.DataFrame({"condition": pd.Categorical(canonical)}, index=adata.obs_names),
        var=adata.var[[]].assign(gene=adata.var_names),
    )
    rows, deltas = [], {}
    ctrl = means["control"]
    for combo in held:
        de = top_de_genes(lognorm_adata, "condition", combo, "control", n_genes=20)
        predictions = {"model": pred_means[combo], "additive": additive[combo],
                       "no_change": no_change[combo]}
        for method, p in predictions.items():
            rows.append({"condition": combo, "method": method,
                         **score_condition(p, means[combo], ctrl, de)})
        deltas[combo] = {"observed": means[combo] - ctrl, "de_genes": de,
                         **{k: v - ctrl for k, v in predictions.items()}}
    scores = pd.DataFrame(rows).set_index(["condition", "method"])
    summary = scores.groupby(level="method", sort=False).mean()

    scores.to_csv(out / "scores.csv")
    summary.to_csv(out / "summary.csv")
    _plot(out, model, scores, deltas, held)
    model.save(out / "model", overwrite=True)
    pred.write_h5ad(out / "predictions.h5ad")
    table = summary[["pearson_delta", "mse_de", "pearson_delta_de", "direction_errors_de"]]
    echo(f"\nHeld-out combinations, mean over the {len(held)} (log-normalised means):")
    echo(table.to_string(float_format=lambda v: f"{v:.4f}"))
    echo("\nper combination (Pearson-delta / top-20-DE MSE):")
    wide = scores[["pearson_delta", "mse_de"]].unstack("method")
    echo(wide.to_string(float_format=lambda v: f"{v:.3f}"))
    echo(
        f"\nwrote {out}/: scores.csv, summary.csv, elbo.png, predicted_vs_observed.png, "
        f"mask.png, predictions.h5ad, model/  ({time.perf_counter() - start:.0f} s in all)"
    )
    return scores
