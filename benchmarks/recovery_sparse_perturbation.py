"""Recovery of the sparse perturbation model's latents on its seeded generator.

Fits :class:`causalzoo.SparsePerturbationVAE` to counts from
``cz.identifiability.generators.sparse_perturbation`` with the true labels and, as the
negative control, with shuffled perturbation labels, and prints beside the entangled floor:

* Pearson MCC between the true and estimated response latents (Hungarian matched), as
  fitted and after ``response_rotation()`` (the rotation that makes the shifts sparsest);
* linear R^2 of each true block from the estimated blocks (is the information there, and in
  which block);
* mask recovery (AUROC, F1) of the learned mask probabilities after the MCC matching;
* ``zinv_between``: the largest fraction of a fitted ``z_inv`` coordinate's variance that lies
  between conditions (0 when the invariant block carries no perturbation information).

``--invariance L`` sets the invariance term's weight; ``--restarts R`` fits with fit seeds
``fit_seed .. fit_seed + R - 1`` and keeps the fit with the lowest final loss
(``fit(restarts=R)``: the mean of the last 500 of 10,000 steps), for the true and the shuffled
labels alike (``fit_seed`` in the output says which).

Run: ``python benchmarks/recovery_sparse_perturbation.py --steps 10000 --lr 3e-3
--perturbations 10 --latents 3 --invariance 10 --restarts 3 --seed S``. A script, not a test:
the measurements over generator seeds are in docs/models/sparse_perturbation.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import causalzoo as cz
from causalzoo.identifiability import entangled_floor, mask_recovery, mcc


def linear_r2(y, x):
    x1 = np.c_[x, np.ones(len(x))]
    coef = np.linalg.lstsq(x1, y, rcond=None)[0]
    return 1 - (y - x1 @ coef).var(0) / y.var(0)


def between_fraction(z, design):
    """Fraction of each column's variance between the conditions (distinct design rows)."""
    _, groups = np.unique(design, axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    means = np.stack([z[groups == g].mean(0) for g in range(groups.max() + 1)])
    counts = np.bincount(groups)
    return (counts[:, None] * (means - z.mean(0)) ** 2).sum(0) / len(z) / z.var(0)


def run(shuffle: bool, steps: int, seed: int, lr: float = 1e-3, n_perturbations: int = 6,
        n_latent: int = 4, alignment: float = 0.0, learn_noise: bool = True,
        sparsity: str = "bernoulli", fit_seed: int = 0, invariance: float = 0.0,
        restarts: int = 1) -> dict:
    data = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=n_perturbations, n_cells_per_condition=150, n_latent_invariant=2,
        n_latent_response=n_latent, n_genes=100, noise_scale=0.3, seed=seed,
    )
    u = data.u
    if shuffle:
        u = u[np.random.default_rng(seed + 1).permutation(len(u))]
    model = cz.SparsePerturbationVAE.from_arrays(
        data.x, u, n_latent_invariant=2, n_latent_response=n_latent, n_hidden=64,
        scm_graph="none", couple_invariant=False, mask_probability=0.02, effect_scale=3.0,
        alignment=alignment, learn_noise=learn_noise, sparsity=sparsity, invariance=invariance,
    )
    start = time.perf_counter()
    model.fit(max_steps=steps, batch_size=128, seed=fit_seed, progress=False,
              early_stopping=False, learning_rate=lr, restarts=restarts)
    z = model.get_latent_representation()
    z_inv, z_resp = z[:, :2], z[:, 2:]
    score, matching = mcc(data.z_resp, z_resp, return_matching=True)
    rotated = model.get_latent_representation(block="response", rotate_response=True)
    return {
        "labels": "shuffled" if shuffle else "true",
        "mcc_resp": score,
        "mcc_resp_rotated": mcc(data.z_resp, rotated),
        "floor_rotation": entangled_floor(data.z_resp, seed=0)["rotation"],
        "r2_resp_from_resp": linear_r2(data.z_resp, z_resp).mean(),
        "r2_resp_from_both": linear_r2(data.z_resp, z).mean(),
        "r2_inv_from_inv": linear_r2(data.z_inv, z_inv).mean(),
        "zinv_between": float(between_fraction(z_inv, data.u).max()),
        **{f"mask_{k}": v for k, v in mask_recovery(
            data.mask, model.mask_probability().to_numpy(), matching=matching).items()},
        "final_loss": float(np.mean(model.history["loss"][-500:])),
        "fit_seed": model.fit_info["seed"],
        "mask_total": float(model.mask_probability().to_numpy().sum()),
        "seconds": time.perf_counter() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--fit-seed", type=int, default=0, help="seed of the fit")
    parser.add_argument("--lr", type=float, default=1e-3, help="network learning rate")
    parser.add_argument("--perturbations", type=int, default=6)
    parser.add_argument("--latents", type=int, default=4, help="response latents")
    parser.add_argument("--alignment", type=float, default=0.0)
    parser.add_argument("--invariance", type=float, default=0.0,
                        help="weight of the invariance term (0: off)")
    parser.add_argument("--restarts", type=int, default=1,
                        help="fits from consecutive fit seeds; the lowest final loss is kept")
    parser.add_argument("--sparsity", default="bernoulli", choices=["bernoulli", "horseshoe"],
                        help="sparsity prior of the perturbation shifts")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the shuffled-label negative control (half the time)")
    parser.add_argument("--fixed-noise", action="store_true",
                        help="fix the response noise scale at 1 (learn_noise=False)")
    args = parser.parse_args()
    kw = {"lr": args.lr, "n_perturbations": args.perturbations, "n_latent": args.latents,
          "alignment": args.alignment, "learn_noise": not args.fixed_noise,
          "sparsity": args.sparsity, "fit_seed": args.fit_seed, "invariance": args.invariance,
          "restarts": args.restarts}
    rows = [run(False, args.steps, args.seed, **kw)]
    if not args.no_control:
        rows.append(run(True, args.steps, args.seed, **kw))
    keys = list(rows[0])
    print("  ".join(f"{k:>18}" for k in keys))
    for row in rows:
        print("  ".join(f"{v:>18.3f}" if isinstance(v, float) else f"{v:>18}"
                        for v in row.values()))


if __name__ == "__main__":
    main()
