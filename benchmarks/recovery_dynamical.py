"""Recovery of the dynamical model's latents and lag graph on the LEAP non-stationary
(or TDRL changing-dynamics) generator.

Fits :class:`causalzoo.DynamicalCausalVAE` to ``cz.identifiability.generators.
leap_nonstationary`` sequences with the true domain labels and, as the negative control,
with shuffled labels, and prints beside the entangled floor (mean Spearman MCC of random
rotations of the true latents):

* Spearman MCC of the posterior means, all steps flattened, and on the steps after the
  initial history only;
* the SHD / precision / recall of the learned lag graph (edge probability > 0.5) after the
  MCC matching, against the generator's graph;
* fit time (compilation included) and CPU time of the process.

With ``--snapshot`` it runs **snapshot mode** instead of the shuffled control: the same
sequences seen as snapshots (``generators.snapshot``: each unit kept at one uniformly random
step, as single cells in a time course), fitted with the domain labels and the step as the
time point, scored on the kept steps beside the floor of those latents and beside sequence
mode on the full sequences (same SVI budget).

``--prior flow`` fits the flow-style transition prior (learned inverse transition plus its
Jacobian, ``--flow-base`` its base noise) instead of the conditional Gaussian.
``--generator tdrl`` draws ``generators.tdrl_changing`` (the dynamics change across domains)
instead of LEAP's changing noise, and ``--noise laplace`` re-simulates the chosen generator's
latents with the same lag weights, noise scales and mixing but Laplace transition noise of
the same standard deviation (non-Gaussian noise; the generators themselves draw Gaussian).

Every row also prints the held-out linear and kernel-ridge R^2 of the truth from the
estimate (information present but entangled vs absent) and the smallest, over domains, of
a domain's largest target probability (whether the domains still act). ``--schedule
cosine``, ``--fit-seed``, ``--shift-scale``, ``--log-scale-shift-scale`` and
``--target-probability`` set the fit's schedule and seed and the model's priors (defaults:
the model's). Measured diagnosis: ``docs/models/dynamical.md``, "Why recovery fails on
seeds 1 and 2".

Run: ``python benchmarks/recovery_dynamical.py --latents 3 --domains 20 --per-domain 150
--steps 3000 --seed 0`` (the size of ``tests/identifiability/test_dynamical_recovery.py``),
or ``--latents 8 --domains 20 --per-domain 7500 --steps 50000`` for LEAP's published
setting (MCC 0.971), which needs a GPU to finish in reasonable time.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import anndata
import jax
import numpy as np
import pandas as pd

import causalzoo as cz
from causalzoo.identifiability import (
    entangled_floor,
    graph_metrics,
    mcc,
    r2_kernel_ridge,
    r2_linear,
)


def _leaky_relu(a, slope=0.2):
    return np.where(a > 0, a, slope * a)


def with_noise(data, noise: str, seed: int):
    """The generator's process re-simulated with ``noise`` transition noise (same lag
    weights, per-domain noise standard deviations, initial history and mixing)."""
    if noise == "gaussian":
        return data
    rng = np.random.default_rng(seed + 1000)
    lags, u = data.n_lags, data.u
    sigma = data.noise_scale[u]  # (n, d)
    z = np.array(data.z, np.float64)
    for t in range(lags, z.shape[1]):
        eps = rng.laplace(0.0, 1.0 / np.sqrt(2.0), size=sigma.shape) * sigma
        if data.name == "leap_nonstationary":
            b = data.transition[0]
            drive = sum(_leaky_relu(z[:, t - l - 1] @ b[l]) for l in range(lags))
            z[:, t] = _leaky_relu(drive + eps)
        else:  # tdrl_changing
            drive = np.einsum("nli,nlij->nj", z[:, t - lags:t][:, ::-1], data.transition[u])
            z[:, t] = _leaky_relu(drive) + eps
    return dataclasses.replace(data, z=z.astype(np.float32),
                               x=data.observe(z).astype(np.float32))


def make_data(args):
    if args.generator == "tdrl":
        data = cz.identifiability.generators.tdrl_changing(
            n_domains=args.domains, n_per_domain=args.per_domain, n_latent=args.latents,
            n_lags=args.lags, n_steps=args.n_steps, seed=args.seed,
        )
    else:
        data = cz.identifiability.generators.leap_nonstationary(
            n_domains=args.domains, n_per_domain=args.per_domain, n_latent=args.latents,
            n_lags=args.lags, n_steps=args.n_steps, seed=args.seed,
        )
    return with_noise(data, args.noise, args.seed)


def _config(args) -> dict:
    return {"n_hidden": args.hidden, "transition": args.transition, "prior": args.prior,
            "flow_base": args.flow_base, "target_probability": args.target_probability,
            "log_scale_shift_scale": args.log_scale_shift_scale,
            "shift_scale": args.shift_scale}


def _fit(model, args):
    model.fit(max_steps=args.steps, batch_size=args.batch_size, seed=args.fit_seed,
              learning_rate=args.lr, schedule=args.schedule, progress=False)


def _r2(z, z_hat) -> dict:
    """Linear and kernel-ridge R^2 of the truth from the estimate (held-out half): high R^2
    with a low MCC means the information is there but entangled."""
    return {"r2_linear": float(r2_linear(z, z_hat, seed=0)),
            "r2_kernel": float(r2_kernel_ridge(z, z_hat, seed=0))}


def run(args, shuffle: bool) -> dict:
    data = make_data(args)
    d = data.n_latent
    u = data.u
    if shuffle:
        u = u[np.random.default_rng(args.seed + 1).permutation(len(u))]
    model = cz.DynamicalCausalVAE.from_arrays(
        x=data.x / data.x.std(), u=u, n_latent=d, n_lags=data.n_lags, **_config(args),
    )
    start = time.perf_counter()
    _fit(model, args)
    seconds = time.perf_counter() - start
    z_hat = model.get_latent_representation()
    score, matching = mcc(data.z.reshape(-1, d), z_hat.reshape(-1, d), method="spearman",
                          return_matching=True)
    lags = data.n_lags
    later = mcc(data.z[:, lags:].reshape(-1, d), z_hat[:, lags:].reshape(-1, d),
                method="spearman")
    graph = graph_metrics(data.graph, model.lag_graph(), matching, threshold=0.5)
    return {
        "labels": "shuffled" if shuffle else "true",
        "mcc": score,
        "mcc_after_history": later,
        "floor_rotation": entangled_floor(data.z.reshape(-1, d), method="spearman",
                                          seed=0)["rotation"],
        **_r2(data.z.reshape(-1, d), z_hat.reshape(-1, d)),
        "min_target_prob": float(model.perturbation_targets().to_numpy().max(axis=1).min()),
        "shd": graph["shd"],
        "n_true_edges": int(data.graph.sum()),
        "precision": graph["precision"],
        "recall": graph["recall"],
        "fit_seconds": seconds,
        "compile_seconds": model.fit_info["compile_seconds"],
    }


def run_snapshot(args) -> dict:
    """Snapshot mode on the snapshot version of the same generator draw."""
    data = make_data(args)
    snap = cz.identifiability.generators.snapshot(data, seed=args.seed)
    d = data.n_latent
    obs = pd.DataFrame({"step": snap.step, "domain": snap.u.astype(str)},
                       index=[f"unit{i}" for i in range(len(snap.step))])
    adata = anndata.AnnData(snap.x / data.x.std(), obs=obs)
    cz.DynamicalCausalVAE.setup_anndata(adata, time_key="step", perturbation_key="domain",
                                        time_step=1)
    model = cz.DynamicalCausalVAE(adata, n_latent=d, n_lags=data.n_lags, **_config(args))
    start = time.perf_counter()
    _fit(model, args)
    seconds = time.perf_counter() - start
    z_hat = model.get_latent_representation()
    score, matching = mcc(snap.z, z_hat, method="spearman", return_matching=True)
    later = snap.step >= data.n_lags
    graph = graph_metrics(data.graph, model.lag_graph(), matching, threshold=0.5)
    return {
        "labels": "snapshot",
        "mcc": score,
        "mcc_after_history": mcc(snap.z[later], z_hat[later], method="spearman"),
        "floor_rotation": entangled_floor(snap.z, method="spearman", seed=0)["rotation"],
        **_r2(snap.z, z_hat),
        "min_target_prob": float(model.perturbation_targets().to_numpy().max(axis=1).min()),
        "shd": graph["shd"],
        "n_true_edges": int(data.graph.sum()),
        "precision": graph["precision"],
        "recall": graph["recall"],
        "fit_seconds": seconds,
        "compile_seconds": model.fit_info["compile_seconds"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, default=3)
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--per-domain", type=int, default=150)
    parser.add_argument("--lags", type=int, default=2)
    parser.add_argument("--n-steps", type=int, default=6, help="sequence length")
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--schedule", default="constant", choices=["constant", "cosine"],
                        help="learning-rate schedule of DynamicalCausalVAE.fit")
    parser.add_argument("--fit-seed", type=int, default=0, help="seed of the fit")
    parser.add_argument("--target-probability", type=float, default=0.5,
                        help="prior probability that a domain targets a latent")
    parser.add_argument("--shift-scale", type=float, default=1.0,
                        help="prior scale of the domains' mean shifts (small: variance-only "
                        "modulation, as LEAP's generator)")
    parser.add_argument("--log-scale-shift-scale", type=float, default=1.0,
                        help="prior scale of the domains' log noise-scale shifts")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--transition", default="linear", choices=["linear", "mlp"])
    parser.add_argument("--prior", default="gaussian", choices=["gaussian", "flow"],
                        help="transition prior of the fitted model")
    parser.add_argument("--flow-base", default="normal", choices=["normal", "laplace"],
                        help="base noise of the flow prior")
    parser.add_argument("--generator", default="leap", choices=["leap", "tdrl"])
    parser.add_argument("--noise", default="gaussian", choices=["gaussian", "laplace"],
                        help="transition noise of the generated latents")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--no-control", action="store_true", help="skip the shuffled run")
    parser.add_argument("--snapshot", action="store_true",
                        help="snapshot mode (one random step per unit) beside sequence mode, "
                        "instead of the shuffled control")
    args = parser.parse_args(argv)
    print(f"device: {jax.devices()[0].platform}; {vars(args)}")
    if args.snapshot:
        rows = [run(args, False), run_snapshot(args)]
    else:
        rows = [run(args, False)] + ([] if args.no_control else [run(args, True)])
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k])
                         for k in keys))
    print(f"process CPU seconds: {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.1f}")


if __name__ == "__main__":
    main()
