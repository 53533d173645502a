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
mode on the full sequences (same SVI budget). There ``--per-domain`` sets the cells per
domain (900: as many observations as 150 sequences of 6 steps), ``--min-step`` the first
step a cell is kept at, ``--particles`` the particle paths per domain (``n_particles``),
``--restarts`` the fits ``fit(restarts=R)`` compares (snapshot mode's too),
``--no-sequence`` skips the sequence-mode fit, ``--staged`` fits snapshot mode as a staged
fit (:func:`staged_init`: encoder and decoder first fitted as the iVAE reference below, the
shuffled-label control's too; rows gain the first stage's ``init_mcc`` and
``init_final_loss``), and
``--snapshot-control`` adds a fit on the
same cells: ``shuffled`` (snapshot mode with the cells' domain labels permuted), ``ivae``
(``cz.IVAE`` with the cell's (domain, step) pair as segment: the labels without the
dynamics, the reference snapshot mode should reach) or ``vae`` (one segment: the floor).

``--prior flow`` fits the flow-style transition prior (learned inverse transition plus its
Jacobian, ``--flow-base`` its base noise) instead of the conditional Gaussian, and with
``--transition linear --history-scale`` its noise scale is a learned function of the history
(``DynamicalConfig(history_scale=True)``).
``--generator tdrl`` draws ``generators.tdrl_changing`` (the dynamics change across domains)
instead of LEAP's changing noise, and ``--noise laplace`` re-simulates the chosen generator's
latents with the same lag weights, noise scales and mixing but Laplace transition noise of
the same standard deviation (non-Gaussian noise; the generators themselves draw Gaussian).
``--n-changing`` sets how many lag-1 entries TDRL's domains change, ``--graph-density`` the
density of its lag graph (1.0: dense, as TDRL's own generator), ``--tdrl-dynamics linear``
its transition without the leaky ReLU (a sparse VAR whose domains change lag-1 weights),
``--tdrl-noise-change`` makes its domains change every latent's noise scale too
(``tdrl_changing(noise_change=True)``: the whole mechanism changes), and
``--weight-shift-scale`` lets the model's domains change the lag weights of their targets
(``DynamicalConfig(weight_shift_scale=...)``; ``--weight-shift-prior laplace`` or ``cauchy``
gives each change a sparse prior, ``weight_shift_prior=...``). ``--generator caring`` draws
CaRiNG's non-invertible process (``--domains`` above 1 changes its noise scales across
domains, ``caring(n_domains=...)``; ``--encoder-context`` widens the encoder's window;
``--caring-constant-noise`` draws it with constant noise, ``caring(noise_coupled=False)``;
``--encoder recurrent`` reads each whole sequence with a bidirectional GRU instead).
``--generator citris`` draws ``generators.citris_temporal`` (``--domains x --per-domain``
sequences, ``2 * --latents`` features, one lagged parent each): its observed intervention
targets reach the model as labels per step, the code of each step's intervention set
(``sum_i 2^i u_i``); the shuffled control permutes whole units' label sequences.

Every row also prints the held-out linear and kernel-ridge R^2 of the truth from the
estimate (information present but entangled vs absent) and the smallest, over domains, of
a domain's largest target probability (whether the domains still act). ``--schedule
cosine``, ``--fit-seed``, ``--shift-scale``, ``--log-scale-shift-scale``,
``--target-probability`` and ``--edge-probability`` set the fit's schedule and seed and the
model's priors (defaults: the model's). ``--log-scale-shift-rate global`` trains the
domains' log noise-scale shifts at the global learning rate, ``--noise-modulation all``
lets every domain change every latent's noise scale (LEAP's noise model),
``--noise-scale`` sets the generator's noise level, ``--self-lags-only`` makes LEAP's lag
matrices diagonal (``leap_nonstationary(self_lags_only=True)``: the latents are independent
processes given the domain, the iVAE setting a snapshot keeps; it did not make snapshot mode
recover, ``docs/models/dynamical_measurements.md``), and ``--control stationary`` fits the
control with one domain for all units instead of shuffled labels. ``--restarts R`` runs
the R fits that ``fit(restarts=R)`` compares (fit seeds ``--fit-seed`` onwards), one row
each with its final loss, and marks the one it keeps (lowest final loss): does ranking by
the ELBO pick the fit that recovers?
``--marginal-ll`` adds each fit's ``get_marginal_ll()``, and ``--restart-criterion
marginal_ll`` marks the fit with the highest one kept, as ``fit(restarts=R,
restart_criterion="marginal_ll")`` does.
``--oracle`` fits only the model's transition prior to the true latents and to
random rotations of them, with true and shuffled labels (does the prior family prefer the
truth, and do the domains help?). Measured diagnosis:
``docs/models/dynamical_measurements.md``, "Why recovery fails on seeds 1 and 2" and "Second
investigation".

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
import jax.numpy as jnp
import numpy as np
import pandas as pd

import causalzoo as cz
from causalzoo.api._common import restart_final_loss
from causalzoo.identifiability import (
    entangled_floor,
    graph_metrics,
    mcc,
    r2_kernel_ridge,
    r2_linear,
)
from causalzoo.models.dynamical import WEIGHT_SHIFT_PRIORS, DynamicalConfig


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
    linear = data.info.get("dynamics") == "linear"  # dynamics="linear" (LEAP or TDRL)
    for t in range(lags, z.shape[1]):
        eps = rng.laplace(0.0, 1.0 / np.sqrt(2.0), size=sigma.shape) * sigma
        if data.name == "leap_nonstationary" and not linear:
            b = data.transition[0]
            drive = sum(_leaky_relu(z[:, t - lag - 1] @ b[lag]) for lag in range(lags))
            z[:, t] = _leaky_relu(drive + eps)
        else:  # tdrl_changing, or either generator's linear transition
            drive = np.einsum("nli,nlij->nj", z[:, t - lags:t][:, ::-1], data.transition[u])
            z[:, t] = (drive if linear else _leaky_relu(drive)) + eps
    return dataclasses.replace(data, z=z.astype(np.float32),
                               x=data.observe(z).astype(np.float32))


def make_data(args):
    if args.generator == "caring":
        return cz.identifiability.generators.caring(
            n_units=args.domains * args.per_domain, n_steps=args.n_steps,
            n_latent=args.latents, noise_scale=args.noise_scale,
            noise_coupled=not args.caring_constant_noise, n_domains=args.domains,
            seed=args.seed,
        )
    if args.generator == "citris":
        return cz.identifiability.generators.citris_temporal(
            n_units=args.domains * args.per_domain, n_steps=args.n_steps,
            n_latent=args.latents, n_features=2 * args.latents, n_parents=1,
            noise_scale=args.noise_scale, seed=args.seed,
        )
    if args.generator == "tdrl":
        data = cz.identifiability.generators.tdrl_changing(
            n_domains=args.domains, n_per_domain=args.per_domain, n_latent=args.latents,
            n_lags=args.lags, n_steps=args.n_steps, noise_scale=args.noise_scale,
            n_changing=args.n_changing, graph_density=args.graph_density,
            dynamics=args.tdrl_dynamics, noise_change=args.tdrl_noise_change,
            seed=args.seed,
        )
    else:
        data = cz.identifiability.generators.leap_nonstationary(
            n_domains=args.domains, n_per_domain=args.per_domain, n_latent=args.latents,
            n_lags=args.lags, n_steps=args.n_steps, noise_scale=args.noise_scale,
            self_lags_only=args.self_lags_only, dynamics=args.leap_dynamics, seed=args.seed,
        )
    return with_noise(data, args.noise, args.seed)


def _config(args) -> dict:
    return {"n_hidden": args.hidden, "transition": args.transition, "prior": args.prior,
            "flow_base": args.flow_base, "history_scale": args.history_scale,
            "target_probability": args.target_probability,
            "edge_probability": args.edge_probability,
            "log_scale_shift_scale": args.log_scale_shift_scale,
            "shift_scale": args.shift_scale, "noise_modulation": args.noise_modulation,
            "posterior": args.posterior, "observation_scale": args.observation_scale,
            "encoder_context": args.encoder_context, "encoder": args.encoder,
            "weight_shift_scale": args.weight_shift_scale,
            "weight_shift_prior": args.weight_shift_prior}


def domain_labels(data) -> tuple[np.ndarray, list[str]]:
    """The labels the model gets and their vocabulary: the units' domains, or for CITRIS
    (observed intervention targets per step, ``u (units, steps, d)``) the code of each
    step's intervention set, ``sum_i 2^i u_i`` (labels per step, ``2^d`` codes)."""
    if data.name == "citris_temporal":
        d = data.n_latent
        codes = (data.u * 2 ** np.arange(d)).sum(-1).astype(np.int64)
        return codes, [str(c) for c in range(2 ** d)]
    return data.u, [str(c) for c in range(int(data.u.max()) + 1)]


def _fit(model, args, fit_seed=None):
    fit_seed = args.fit_seed if fit_seed is None else fit_seed
    model.fit(max_steps=args.steps, batch_size=args.batch_size, seed=fit_seed,
              learning_rate=args.lr, schedule=args.schedule,
              log_scale_shift_rate=args.log_scale_shift_rate, progress=args.progress)


def _r2(z, z_hat) -> dict:
    """Linear and kernel-ridge R^2 of the truth from the estimate (held-out half): high R^2
    with a low MCC means the information is there but entangled."""
    return {"r2_linear": float(r2_linear(z, z_hat, seed=0)),
            "r2_kernel": float(r2_kernel_ridge(z, z_hat, seed=0))}


def _latent_scores(data, z_hat) -> tuple[dict, np.ndarray]:
    """Spearman MCC of all steps and after the history, the rotation floor and the R^2 of
    sequences ``z_hat (units, steps, d)`` against the truth; and the MCC matching."""
    d, lags = data.n_latent, data.n_lags
    score, matching = mcc(data.z.reshape(-1, d), z_hat.reshape(-1, d), method="spearman",
                          return_matching=True)
    return {
        "mcc": score,
        "mcc_after_history": mcc(data.z[:, lags:].reshape(-1, d),
                                 z_hat[:, lags:].reshape(-1, d), method="spearman"),
        "floor_rotation": entangled_floor(data.z.reshape(-1, d), method="spearman",
                                          seed=0)["rotation"],
        **_r2(data.z.reshape(-1, d), z_hat.reshape(-1, d)),
    }, matching


def _fit_record(model, seconds, args) -> dict:
    record = {"fit_seconds": seconds, "compile_seconds": model.fit_info["compile_seconds"],
              "fit_seed": model.fit_info["seed"],
              "final_loss": restart_final_loss(model.history["loss"])}
    if args.marginal_ll:  # what fit(restart_criterion="marginal_ll") ranks by (higher kept)
        record["marginal_ll"] = model.get_marginal_ll()
    return record


def run(args, labels: str = "true", fit_seed: int | None = None) -> dict:
    """One fit; ``labels``: "true", "shuffled" (a random permutation of the units' domain
    labels) or "stationary" (one domain for all units: the domains cannot act);
    ``fit_seed``: the fit's seed (default ``--fit-seed``). ``labels="vae"``: the control
    without dynamics and domains, :func:`run_vae`."""
    if labels == "vae":
        return run_vae(args, fit_seed)
    data = make_data(args)
    d = data.n_latent
    u, names = domain_labels(data)
    if labels == "shuffled":  # whole units (their label sequences, for per-step labels)
        u = u[np.random.default_rng(args.seed + 1).permutation(len(u))]
    elif labels == "stationary":
        u = np.zeros_like(u)
    model = cz.DynamicalCausalVAE.from_arrays(
        x=data.x / data.x.std(), u=u, domain_names=names, n_latent=d, n_lags=data.n_lags,
        **_config(args),
    )
    start = time.perf_counter()
    _fit(model, args, fit_seed)
    seconds = time.perf_counter() - start
    scores, matching = _latent_scores(data, model.get_latent_representation())
    graph = graph_metrics(data.graph, model.lag_graph(), matching, threshold=0.5)
    return {
        "labels": labels,
        **scores,
        "min_target_prob": float(model.perturbation_targets().to_numpy().max(axis=1).min()),
        "shd": graph["shd"],
        "n_true_edges": int(data.graph.sum()),
        "precision": graph["precision"],
        "recall": graph["recall"],
        **_fit_record(model, seconds, args),
    }


def run_vae(args, fit_seed: int | None = None) -> dict:
    """The control without dynamics and without domains (``--control vae``): a VAE on the
    steps as independent points (``cz.IVAE`` with one segment, i.e. a learned factorised
    Gaussian prior, the same guide covariance and observation noise as the dynamical fit,
    the same SVI budget). Nothing in it can tell a rotation of the latents from the truth,
    so it must score near the floor."""
    data = make_data(args)
    d = data.n_latent
    x = (data.x / data.x.std()).reshape(-1, data.x.shape[-1])
    ivae_config = {"posterior": args.posterior, "observation_scale": args.observation_scale,
                   "n_hidden": args.hidden, "prior_mean": False}
    model = cz.IVAE.from_arrays(x=x, u=np.zeros(len(x), np.int64), n_latent=d, **ivae_config)
    start = time.perf_counter()
    model.fit(max_steps=args.steps, batch_size=args.batch_size * data.x.shape[1],
              seed=args.fit_seed if fit_seed is None else fit_seed, learning_rate=args.lr,
              progress=False)
    seconds = time.perf_counter() - start
    scores, _ = _latent_scores(data, model.get_latent_representation().reshape(data.z.shape))
    return {"labels": "vae", **scores, **_fit_record(model, seconds, args)}


def run_restarts(args, labels: str = "true") -> list[dict]:
    """``--restarts R``: the fits that ``fit(restarts=R)`` runs (fit seeds ``--fit-seed``
    to ``--fit-seed + R - 1``), each scored, the one it keeps (lowest final loss, or the
    highest ``marginal_ll`` with ``--restart-criterion marginal_ll``; ties to the earlier
    seed) marked ``kept`` (the kept fit is bit-identical to its single fit,
    ``tests/models/test_restarts.py``)."""
    fit = run_snapshot if labels.startswith("snapshot") or (
        args.snapshot and labels in ("ivae", "vae")) else run
    rows = [fit(args, labels, args.fit_seed + r) for r in range(args.restarts)]
    key = ((lambda r: (-rows[r]["marginal_ll"], r)) if args.restart_criterion == "marginal_ll"
           else (lambda r: (rows[r]["final_loss"], r)))
    best = min(range(len(rows)), key=key)
    for r, row in enumerate(rows):
        row["kept"] = "yes" if r == best else ""
    return rows


def snapshot_data(args):
    """The snapshot version of the generator draw: one uniformly random step of each unit
    from ``--min-step`` on (``generators.snapshot``), and the scale of the observations."""
    data = make_data(args)
    snap = cz.identifiability.generators.snapshot(data, seed=args.seed, min_step=args.min_step)
    return data, snap, float(data.x.std())


def _snapshot_scores(data, snap, z_hat) -> tuple[dict, np.ndarray]:
    """Spearman MCC of the kept steps (all of them, and those after the history), their
    rotation and raw-observation floors and R^2; and the MCC matching."""
    score, matching = mcc(snap.z, z_hat, method="spearman", return_matching=True)
    later = snap.step >= data.n_lags
    floors = entangled_floor(snap.z, x=snap.x, method="spearman", seed=0)
    return {
        "mcc": score,
        "mcc_after_history": mcc(snap.z[later], z_hat[later], method="spearman"),
        "floor_rotation": floors["rotation"],
        "floor_observations": floors["observations"],
        **_r2(snap.z, z_hat),
    }, matching


def run_snapshot(args, labels: str = "snapshot", fit_seed: int | None = None) -> dict:
    """Snapshot mode on the snapshot version of the same generator draw; ``labels``:
    "snapshot" (the true domain labels), "snapshot-shuffled" (a random permutation of the
    cells' domain labels, the negative control) or "snapshot-stationary" (one domain);
    "ivae" / "vae": :func:`run_snapshot_ivae`."""
    if labels in ("ivae", "vae"):
        return run_snapshot_ivae(args, labels, fit_seed)
    data, snap, scale = snapshot_data(args)
    d = data.n_latent
    u = snap.u
    if labels == "snapshot-shuffled":
        u = u[np.random.default_rng(args.seed + 1).permutation(len(u))]
    elif labels == "snapshot-stationary":  # one domain: the population varies with the step
        u = np.zeros_like(u)
    obs = pd.DataFrame({"step": snap.step, "domain": u.astype(str)},
                       index=[f"unit{i}" for i in range(len(snap.step))])
    adata = anndata.AnnData(snap.x / scale, obs=obs)
    cz.DynamicalCausalVAE.setup_anndata(adata, time_key="step", perturbation_key="domain",
                                        time_step=1)
    model = cz.DynamicalCausalVAE(adata, n_latent=d, n_lags=data.n_lags,
                                  n_particles=args.particles, **_config(args))
    start = time.perf_counter()
    if args.staged:  # the encoder and decoder first fitted as the (domain, step) iVAE
        model.params, staged = staged_init(
            model, seed=args.fit_seed if fit_seed is None else fit_seed, steps=args.steps,
            batch_size=args.batch_size, learning_rate=args.lr)
        staged["mcc"] = mcc(snap.z, model.get_latent_representation(), method="spearman")
    _fit(model, args, fit_seed)  # from model.params when staged
    seconds = time.perf_counter() - start
    scores, matching = _snapshot_scores(data, snap, model.get_latent_representation())
    graph = graph_metrics(data.graph, model.lag_graph(), matching, threshold=0.5)
    return {
        "labels": labels,
        **scores,
        "min_target_prob": float(model.perturbation_targets().to_numpy().max(axis=1).min()),
        "shd": graph["shd"],
        "n_true_edges": int(data.graph.sum()),
        "precision": graph["precision"],
        "recall": graph["recall"],
        **_fit_record(model, seconds, args),
        **({"init_mcc": staged["mcc"], "init_final_loss": staged["final_loss"]}
           if args.staged else {}),
    }


def staged_init(model, *, seed: int, steps: int, batch_size: int, learning_rate: float):
    """``--staged``: the first stage of a staged snapshot fit (not a package option: it did not
    recover, ``docs/models/dynamical_measurements.md``). An iVAE (``prior_mean=False``) whose
    segment is the cell's (domain, step) pair, with the snapshot model's networks, guide
    covariance and observation noise (``steps`` SVI steps, Adam at ``learning_rate`` on a cosine
    decay, as ``cz.IVAE.fit``); its decoder is copied, and its encoder, which reads the one-hot
    segment too, is transferred to the snapshot encoder (expression only): the first layer's
    segment columns averaged into its bias, then 2,000 Adam steps (1e-3, 1,024 cells) of squared
    error to the iVAE's posterior mean and Cholesky factor. Returns the ``encoder$params`` /
    ``decoder$params`` the snapshot fit starts from, and the iVAE's final loss, parameters,
    configuration and one-hot segments."""
    import optax
    from numpyro import handlers
    from numpyro.infer import TraceMeanField_ELBO

    from causalzoo.blocks.nn import scale_tril
    from causalzoo.inference.svi import fit_svi
    from causalzoo.models.dynamical import encoder_input, step_posterior
    from causalzoo.models.ivae import IVAEConfig, ivae_encode, ivae_guide, ivae_model

    config = model.config
    lik = config.likelihood_block
    x = np.asarray(model.x, np.float32)
    pair = model.u.astype(np.int64) * model.n_times + model.time_index
    _, segment = np.unique(pair, return_inverse=True)
    onehot = np.eye(int(segment.max()) + 1, dtype=np.float32)[segment]
    ivae_config = IVAEConfig(
        n_latent=config.n_latent, n_hidden=config.n_hidden, n_layers=config.n_layers,
        activation=config.activation, likelihood=config.likelihood,
        observation_scale=config.observation_scale, prior_mean=False,
        posterior=config.posterior)
    rate = optax.cosine_decay_schedule(float(learning_rate), int(steps), alpha=0.03)
    result = fit_svi(ivae_model, ivae_guide, {"x": x, "u": onehot}, batch_size=batch_size,
                     max_steps=steps, seed=seed, optimizer=optax.adam(rate),
                     loss=TraceMeanField_ELBO(), static_kwargs={"config": ivae_config},
                     progress=False)
    teacher = result.params
    n_features = x.shape[1]
    encoder = jax.tree_util.tree_map(jnp.asarray, teacher["encoder$params"])
    first = encoder["hidden"][0]
    kernel = first["kernel"]
    encoder["hidden"][0] = {
        "kernel": kernel[:n_features],
        "bias": first["bias"] + jnp.asarray(onehot.mean(0)) @ kernel[n_features:]}

    def factors(d):
        if hasattr(d, "scale_tril"):
            return d.loc, d.scale_tril
        return d.base_dist.loc, scale_tril(d.base_dist.scale)

    def encode(xb):
        return factors(step_posterior("encoder", n_features, config)(encoder_input(xb, lik)))

    def loss(params, xb, ub):
        loc, tril = handlers.substitute(handlers.seed(encode, 0),
                                        {"encoder$params": params})(xb)
        loc_t, tril_t = handlers.substitute(handlers.seed(ivae_encode, 0), teacher)(
            xb, ub, ivae_config)
        return jnp.mean((loc - loc_t) ** 2) + jnp.mean((tril - tril_t) ** 2)

    opt = optax.adam(1e-3)
    n = x.shape[0]
    batch = min(1024, n)
    xs, us = jnp.asarray(x), jnp.asarray(onehot)

    def step(carry, key):
        params, state = carry
        idx = jax.random.choice(key, n, (batch,), replace=False)
        grads = jax.grad(loss)(params, xs[idx], us[idx])
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def run(params, key):
        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                      jax.random.split(key, 2000))
        return params

    encoder = run(encoder, jax.random.fold_in(jax.random.key(seed), 0xD15))
    params = {"encoder$params": encoder,
              "decoder$params": jax.tree_util.tree_map(jnp.asarray, teacher["decoder$params"])}
    return params, {"final_loss": restart_final_loss(result.losses), "ivae_params": teacher,
                    "ivae_config": ivae_config, "segment": onehot}


def run_snapshot_ivae(args, labels: str = "ivae", fit_seed: int | None = None) -> dict:
    """The reference and the control of snapshot mode, on the same cells: ``"ivae"``, an
    iVAE whose segment is the cell's (domain, step) pair (a factorised Gaussian prior whose
    variances change with the segment, ``prior_mean=False``: the generator changes noise
    scales, not means), which uses the labels as snapshot mode does but no dynamics; and
    ``"vae"``, the same with one segment for every cell (nothing can tell a rotation of the
    latents from the truth). Same guide covariance, observation noise, SVI budget."""
    data, snap, scale = snapshot_data(args)
    n_steps = data.x.shape[1]
    segment = (snap.u * n_steps + snap.step if labels == "ivae"
               else np.zeros(len(snap.step), np.int64))
    model = cz.IVAE.from_arrays(x=snap.x / scale, u=segment, n_latent=data.n_latent,
                                posterior=args.posterior,
                                observation_scale=args.observation_scale,
                                n_hidden=args.hidden, prior_mean=False)
    start = time.perf_counter()
    model.fit(max_steps=args.steps, batch_size=args.batch_size,
              seed=args.fit_seed if fit_seed is None else fit_seed, learning_rate=args.lr,
              progress=False)
    seconds = time.perf_counter() - start
    scores, _ = _snapshot_scores(data, snap, model.get_latent_representation())
    return {"labels": labels, **scores, **_fit_record(model, seconds, args)}


def _prior_fit(config, x, z, u, n_domains, steps: int, seed: int) -> tuple[float, np.ndarray]:
    """Fit only the model's transition prior to *given* latents ``z`` (the encoder replaced
    by an oracle): SVI on ``dynamical_model`` with ``z`` observed, the observation site
    hidden, and every lagged edge and domain target switched on (the most flexible member
    of the family; the shifts get a mean-field normal guide). Returns the final negative
    ELBO per unit (lower: the prior family explains ``z`` better) and the spread over
    domains of the fitted log noise-scale shifts (per latent)."""
    import numpyro
    from numpyro import handlers
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    from causalzoo.models.dynamical import dynamical_model

    k, lags = config.n_latent, config.n_lags
    fixed = {"z": z, "lag_graph": jnp.ones((k, lags, k)), "target": jnp.ones((n_domains, k))}

    def model(x, u):
        conditioned = handlers.condition(dynamical_model, fixed)
        return handlers.block(conditioned, hide=["x"])(x, u, n_domains=n_domains,
                                                        config=config)

    guide = AutoNormal(model)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
    result = svi.run(jax.random.key(seed), steps, x, u, progress_bar=False)
    loss = float(np.mean(result.losses[-200:])) / len(u)
    log_scale = np.asarray(result.params["log_scale_shift_auto_loc"])
    return loss, log_scale.std(0)


def run_oracle(args) -> list[dict]:
    """Does the model's prior family prefer the true latents? The transition prior is
    fitted (``--steps`` full-batch steps) to the true latents and to two random rotations of
    them (the entangled alternatives), with the true and with shuffled labels. If a rotation
    fits as well as the truth, no encoder can be pushed to the truth by the ELBO; if the
    shuffled labels fit as well, the domains carry no signal the prior can use."""
    data = make_data(args)
    d = data.n_latent
    config = DynamicalConfig(n_latent=d, n_lags=data.n_lags,
                             **_config(args))
    x = jnp.asarray(data.x / data.x.std())
    rng = np.random.default_rng(args.seed)
    u = jnp.asarray(data.u, jnp.int32)
    shuffled = jnp.asarray(data.u[rng.permutation(len(data.u))], jnp.int32)
    rotations = [np.eye(d)] + [np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(2)]
    rows = []
    for r, rot in enumerate(rotations):
        z = jnp.asarray(data.z @ rot, jnp.float32)
        for labels, codes in (("true", u), ("shuffled", shuffled)):
            loss, spread = _prior_fit(config, x, z, codes, args.domains, args.steps,
                                      args.fit_seed)
            rows.append({"latents": "truth" if r == 0 else f"rotation {r}", "labels": labels,
                         "neg_elbo_per_unit": loss,
                         "log_scale_spread": " ".join(f"{v:.2f}" for v in spread)})
    true_spread = np.log(data.noise_scale).std(0)
    print("true log noise-sd spread over domains: "
          + " ".join(f"{v:.2f}" for v in true_spread))
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line (``benchmarks/published_sizes.py`` builds its fits from it too)."""
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
    parser.add_argument("--restarts", type=int, default=1,
                        help="R > 1: the R fits of fit(restarts=R) (fit seeds --fit-seed "
                        "onwards), one row each, the one --restart-criterion keeps marked "
                        "kept (every fit of the run, snapshot mode's included; not with --oracle)")
    parser.add_argument("--log-scale-shift-rate", default="network",
                        choices=["network", "global"],
                        help="learning rate of the domains' log noise-scale shift factors "
                        "(DynamicalCausalVAE.fit)")
    parser.add_argument("--target-probability", type=float, default=0.5,
                        help="prior probability that a domain targets a latent")
    parser.add_argument("--edge-probability", type=float, default=0.5,
                        help="prior probability of each lagged edge (the model's default: 0.5)")
    parser.add_argument("--shift-scale", type=float, default=1.0,
                        help="prior scale of the domains' mean shifts (small: variance-only "
                        "modulation, as LEAP's generator)")
    parser.add_argument("--log-scale-shift-scale", type=float, default=1.0,
                        help="prior scale of the domains' log noise-scale shifts")
    parser.add_argument("--noise-modulation", default="targets", choices=["targets", "all"],
                        help="which latents' noise scales a domain changes (model option)")
    parser.add_argument("--noise-scale", type=float, default=0.1,
                        help="the generator's transition noise scale (LEAP: the noise sd of a "
                        "domain and latent is noise_scale * U(0, 1))")
    parser.add_argument("--control", default="shuffled",
                        choices=["shuffled", "stationary", "vae"],
                        help="the negative control: shuffled domain labels, or one domain "
                        "for all units")
    parser.add_argument("--posterior", default="diagonal", choices=["diagonal", "full"],
                        help="covariance of the per-step guide q(z_t | x_t)")
    parser.add_argument("--observation-scale", type=float, default=None,
                        help="fixed Gaussian observation noise sd (default: learned)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--transition", default="linear", choices=["linear", "mlp"])
    parser.add_argument("--prior", default="gaussian", choices=["gaussian", "flow"],
                        help="transition prior of the fitted model")
    parser.add_argument("--flow-base", default="normal", choices=["normal", "laplace"],
                        help="base noise of the flow prior")
    parser.add_argument("--history-scale", action="store_true",
                        help="with --prior flow --transition linear: the noise scale is a "
                        "learned function of the masked history (history_scale=True)")
    parser.add_argument("--generator", default="leap",
                        choices=["leap", "tdrl", "caring", "citris"],
                        help="caring: one domain, n_units = domains x per-domain, fewer "
                        "observations than latents (use --encoder-context)")
    parser.add_argument("--weight-shift-scale", type=float, default=None,
                        help="DynamicalConfig(weight_shift_scale=...): domains change the lag "
                        "weights of their targets (TDRL's changing dynamics; CITRIS)")
    parser.add_argument("--weight-shift-prior", default="normal",
                        choices=list(WEIGHT_SHIFT_PRIORS),
                        help="DynamicalConfig(weight_shift_prior=...): prior of each lag-weight "
                        "change (laplace / cauchy: scale --weight-shift-scale, sparse per "
                        "entry)")
    parser.add_argument("--n-changing", type=int, default=2,
                        help="TDRL generator: lag-1 entries whose weight changes per domain")
    parser.add_argument("--graph-density", type=float, default=0.3,
                        help="TDRL generator: probability of a lag edge (1.0: every lag weight "
                        "non-zero, as in TDRL's own generator)")
    parser.add_argument("--tdrl-dynamics", default="leaky_relu",
                        choices=["leaky_relu", "linear"],
                        help="TDRL generator: its transition (linear: without the leaky ReLU, "
                        "a sparse VAR whose lag-1 weights change across domains)")
    parser.add_argument("--tdrl-noise-change", action="store_true",
                        help="TDRL generator: the domains change every latent's noise scale "
                        "too, noise_scale x U(0, 1) (noise_change=True)")
    parser.add_argument("--encoder-context", type=int, default=0,
                        help="steps before and after each step that its encoder reads")
    parser.add_argument("--encoder", default="step", choices=["step", "recurrent"],
                        help="the amortised encoder: an MLP per step (with --encoder-context "
                        "its window) or a bidirectional GRU over the sequence")
    parser.add_argument("--caring-constant-noise", action="store_true",
                        help="CaRiNG generator: constant transition noise (noise_coupled=False;"
                        " not identifiable, the negative control of the coupled noise)")
    parser.add_argument("--self-lags-only", action="store_true",
                        help="LEAP generator: diagonal lag matrices (each latent's only lagged "
                        "parent is its own past: independent processes given the domain)")
    parser.add_argument("--leap-dynamics", default="leaky_relu",
                        choices=["leaky_relu", "linear"],
                        help="LEAP generator: its transition (linear: a Gaussian vector "
                        "autoregression with LEAP's changing noise)")
    parser.add_argument("--noise", default="gaussian", choices=["gaussian", "laplace"],
                        help="transition noise of the generated latents")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--no-control", action="store_true", help="skip the control run")
    parser.add_argument("--control-only", action="store_true",
                        help="run only the control (e.g. --control vae next to earlier fits)")
    parser.add_argument("--snapshot", action="store_true",
                        help="snapshot mode (one random step per unit) beside sequence mode, "
                        "instead of the shuffled control")
    parser.add_argument("--min-step", type=int, default=0,
                        help="snapshot mode: smallest step a unit is kept at (2 = after the "
                        "history only)")
    parser.add_argument("--particles", type=int, default=256,
                        help="snapshot mode: particle paths per domain (n_particles)")
    parser.add_argument("--snapshot-control", default="none",
                        choices=["none", "shuffled", "stationary", "ivae", "vae"],
                        help="snapshot mode: also fit shuffled domain labels, one domain for "
                        "every cell (stationary), the iVAE with the (domain, step) pair as "
                        "segment, or a VAE (one segment)")
    parser.add_argument("--no-sequence", action="store_true",
                        help="snapshot mode: skip the sequence-mode fit")
    parser.add_argument("--marginal-ll", action="store_true",
                        help="rows gain get_marginal_ll() (higher: what "
                        "fit(restart_criterion='marginal_ll') keeps)")
    parser.add_argument("--restart-criterion", default="loss", choices=["loss", "marginal_ll"],
                        help="which of the --restarts fits is marked kept: the lowest final "
                        "loss or the highest get_marginal_ll() (implies --marginal-ll)")
    parser.add_argument("--staged", action="store_true",
                        help="snapshot mode: a staged fit, the encoder and decoder first "
                        "fitted as the (domain, step) iVAE (--steps steps; staged_init)")
    parser.add_argument("--oracle", action="store_true",
                        help="fit only the transition prior to the true latents and to "
                        "random rotations of them (true and shuffled labels): does the "
                        "model's prior family prefer the truth?")
    parser.add_argument("--progress", action="store_true",
                        help="show each fit's progress bar")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments of ``argv``, refused (``SystemExit`` with a message) where they do not
    go together."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.restarts < 1 or (args.restarts > 1 and args.oracle):
        parser.error("--restarts must be >= 1, and 1 with --oracle")
    if args.staged and not args.snapshot:
        parser.error("--staged is a snapshot-mode option: use --snapshot")
    args.marginal_ll = args.marginal_ll or args.restart_criterion == "marginal_ll"
    if args.weight_shift_prior != "normal" and args.weight_shift_scale is None:
        parser.error("--weight-shift-prior is the prior of the lag-weight changes: use it "
                     "with --weight-shift-scale")
    if args.self_lags_only and args.generator != "leap":
        parser.error("--self-lags-only makes LEAP's lag matrices diagonal: use it with "
                     "--generator leap")
    if args.leap_dynamics != "leaky_relu" and args.generator != "leap":
        parser.error("--leap-dynamics sets LEAP's transition: use it with --generator leap")
    if args.caring_constant_noise and args.generator != "caring":
        parser.error("--caring-constant-noise sets CaRiNG's transition noise: use it with "
                     "--generator caring")
    if args.tdrl_dynamics != "leaky_relu" and args.generator != "tdrl":
        parser.error("--tdrl-dynamics sets TDRL's transition: use it with --generator tdrl")
    if args.tdrl_noise_change and args.generator != "tdrl":
        parser.error("--tdrl-noise-change sets TDRL's noise scales: use it with --generator "
                     "tdrl")
    if args.generator in ("citris", "caring") and (
            args.oracle or args.snapshot or args.noise != "gaussian"):
        parser.error(f"--generator {args.generator} runs sequence mode with its own noise: "
                     "not with --oracle, --snapshot or --noise")
    return args


def main(argv=None):
    args = parse_args(argv)
    print(f"device: {jax.devices()[0].platform}; {vars(args)}")
    if args.oracle:
        rows = run_oracle(args)
    elif args.snapshot:
        fits = ([] if args.no_sequence else ["true"]) + (
            [] if args.control_only else ["snapshot"])
        if args.snapshot_control != "none":
            fits.append(f"snapshot-{args.snapshot_control}"
                        if args.snapshot_control in ("shuffled", "stationary")
                        else args.snapshot_control)
        rows = []
        for labels in fits:
            if args.restarts > 1:
                rows += run_restarts(args, labels)
            else:
                rows.append(run_snapshot(args, labels) if labels != "true" else run(args))
    elif args.restarts > 1:
        rows = (([] if args.control_only else run_restarts(args))
                + ([] if args.no_control else run_restarts(args, args.control)))
    else:
        rows = (([] if args.control_only else [run(args)])
                + ([] if args.no_control else [run(args, args.control)]))
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.3f}" if isinstance(row.get(k), float)
                         else str(row.get(k, "")) for k in keys))
    print(f"process CPU seconds: {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.1f}")


if __name__ == "__main__":
    main()
