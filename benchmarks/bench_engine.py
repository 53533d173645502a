#!/usr/bin/env python
"""Steady-state SVI throughput of causalzoo's engine against a plain NumPyro loop.

A script, not a test: ``python benchmarks/bench_engine.py [--quick] [--batch 256 1024]``.
Everything is measured in ONE process, on synthetic negative-binomial counts made here with
NumPy (default 20,000 cells x 2,000 genes, mean ~2.6, ~55% zeros, 50 perturbations plus a
control group, one-hot design). Compare the *ratios* inside one run: absolute cells/s drift
with the machine and with whatever else runs on it.

Variants (all fit the same data with ``optax.adam(1e-3)`` and the package's loss,
``AlignedELBO(alignment=0)``: one-particle ELBO, NumPyro's mean-field estimator with
analytic KL terms where registered, as of 2026-11-23):

``engine``
    :func:`causalzoo.inference.fit_svi` on the sparse perturbation model
    (``n_latent_invariant=5, n_latent_response=5, n_hidden=128, n_layers=2``, NB) with its
    default ``steps_per_call`` (about one epoch, clipped to 50..500) unless ``--steps``.
``ref-a numpyro jit``
    The usual user loop on the SAME model and guide: ``svi = SVI(...)``,
    ``update = jax.jit(svi.update)`` called once per step from Python, each minibatch
    gathered on the host from the NumPy arrays (epoch permutations), ``block_until_ready``
    at the end of each timed window.
``ref-b plain VAE``
    A plain NB VAE (one encoder ``log1p(x) -> 2*10``, decoder ``10 -> genes``, same widths,
    no perturbation sites) through the engine: the cost of the sparse-perturbation machinery.
``--ablations`` (first batch size; a second table)
    Does ``steps_per_call`` or the ``lax.cond`` in the engine's scan cost throughput? Three
    copies of ``fit_svi`` are made in this script (``inspect.getsource``, ``svi.py``
    untouched) that stop right after ``jax.jit(run_call)`` and hand back the engine's own
    per-call function and initial state: ``steps_per_call`` 50, 50 with the scan body calling
    the step directly instead of ``lax.cond(i < n_active, step, skip, state)``, and 500. They
    are compiled, then timed *interleaved* in this process (``--ablation-rounds`` rounds,
    order rotated, 500 steps per variant per round, the losses read back after each call as
    ``fit_svi`` does), so that load from other processes hits all of them alike. Also the
    time of a call whose steps are all switched off (``n_active=0``: permutations and the
    skip branch only), the fixed cost of a call. Slow at full size (500 steps per variant per
    round); ``--quick`` sizes are the worst case for per-call overheads anyway.

``--components`` / ``--components-only`` (each ``--batch``; a third table)
    Where a step of the plain NB VAE spends its time, all compiled in this process and timed
    interleaved (``--component-rounds`` windows of ``--steps``, default 40, steps each): the
    engine's step (``SVI.update`` under ``lax.cond`` in a ``lax.scan``, minibatches gathered on
    the device, the engine's compiler options), the same with XLA:CPU's default fusion (no
    compiler options), with the NB log-density causalzoo used before 2026-12-05
    (``previous_nb_log_prob``: ``gammaln`` on the broadcast arrays, JAX autodiff), with both
    (the engine before), and a hand-written JAX VAE of the same architecture (no NumPyro),
    without LayerNorm, and with a Poisson term instead of the NB one (what a step costs
    without the NB log-density).

``--sparse-vs-vae`` (each ``--batch``; runs only this table after the GEMM rates)
    What the sparse perturbation model's step costs over the plain VAE's, all compiled in
    this process and timed interleaved like the components (``--component-rounds`` windows of
    ``--steps``, default 40, steps each; order rotated every round): the engine's step (as in
    ``--components``) on the plain VAE and on the sparse model as ``bench_peers.py`` fits it
    (5 + 5 latents, ``two_speed_adam(1e-3, 1e-2)``), the sparse model in the SAMS-VAE
    configuration (no SCM weights ``W``, ``B``), with one-rate Adam, and with its guide's two
    first encoder layers computed as one matrix product (``fused_sparse_guide``, a
    benchmark-only copy of the guide: same parameters, same sums in another order). Each row
    also gives XLA's FLOP count of one step per cell (``cost_analysis`` of the lowered call)
    and the FLOP-proportional ratio, the ratio to the VAE that the extra arithmetic alone
    predicts. Read ``cells/CPU-s`` and the paired ratio: the machine is shared.

How steady state is timed: **several compiled calls after a warm-up**, not an N-vs-2N
difference. For the engine, the script stands a clock in for the progress bar of
``causalzoo.inference.svi`` (``tqdm`` is replaced for the duration of the call), which
records the time at each ``bar.update``, i.e. once per compiled call, after that call's
losses reached the host. Call 0 includes compilation (``FitResult.compile_seconds``) and is
the warm-up; calls 1..R (``--repeats``, default 5) are the R timed windows of
``steps_per_call`` steps each. For ref-a, one untimed window of the same number of steps
follows the first (compiling) step, then R windows of the same length are timed, each ended
by ``block_until_ready``. A window's throughput is ``steps * batch / seconds``; the table
gives the median over the R windows (min-max). If the clock was not driven as expected (the
engine changed), the engine row falls back to ``(run_seconds - compile_seconds)`` over
calls 1..R as one window and says so. ``cells/CPU-s`` divides by this process's CPU time
(``time.process_time``, all threads) over the same windows instead of wall time: it is
steadier when other processes compete for the cores, but counts spinning threads as work.

Other columns: ``init s`` is the time before the first compiled call (for the engine
``fit_svi`` wall time minus ``FitResult.run_seconds``: data to device, first batch,
``svi.init``, which runs the model and guide op by op; for ref-a ``svi.init``). The op-by-op
primitives are compiled the first time a process meets them, so a start-up line measures
``svi.init`` of the sparse model first, cold, again, and under ``jax.jit``; the rows' init
times are then warm. ``1st call s`` is ``FitResult.compile_seconds`` (compile + the first
call's ``steps_per_call`` steps) for the engine and the first ``update`` call (compile + 1
step) for ref-a. ``compile s`` sums the ``jax.monitoring`` compile events recorded during
the variant (``jaxpr_trace`` + ``jaxpr_to_mlir_module`` / ``backend_compile`` durations),
init and every jitted function included; nested traces may be counted twice in the first
figure.

Roofline: forward multiply-accumulates per cell are counted from the 2-D ``kernel`` leaves of
the fitted parameters (every dense layer of the encoders and the decoder; the small
perturbation/SCM products are left out), times 3 for forward + backward, times 2 FLOP per
MAC. The machine's achievable fp32 GEMM rate is measured in the same run with jitted
``jnp.matmul`` on the layer shapes (``B x G @ G x 128`` and its weight-gradient shape
``G x B @ B x 128``, ``B x 128 @ 128 x G``) and 1024^3; the best of those is the
denominator of ``roof %`` = achieved GFLOP/s / measured GEMM GFLOP/s.

``--mallopt`` sets glibc's ``M_MMAP_THRESHOLD`` 32 MiB, ``M_TRIM_THRESHOLD`` 2 GiB and
``M_TOP_PAD`` 256 MiB at the start of ``main``, before the data are made (the allocator
churn that slows per-step dispatch, see the peers' measurements); off by default.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import inspect
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI

import causalzoo.inference.svi as svi_mod
from causalzoo.blocks.nn import attach
from causalzoo.inference.losses import AlignedELBO
from causalzoo.models.sparse_perturbation import (
    SparsePerturbationConfig,
    cells_plate,
    encoder_input,
    sparse_perturbation_guide,
    sparse_perturbation_model,
)

LEARNING_RATE = 1e-3


def _mallopt():
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 2 << 30)
    libc.mallopt(M_TOP_PAD, 256 << 20)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=None, help="cells (default 20000; 2000 with --quick)")
    p.add_argument("--genes", type=int, default=None, help="genes (default 2000; 200 with --quick)")
    p.add_argument("--perturbations", type=int, default=50, help="perturbations (plus a control group)")
    p.add_argument("--batch", type=int, nargs="+", default=[256], help="batch size(s)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed window = engine steps_per_call (default: the engine's, "
                        "about one epoch, 50..500)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed windows per variant (default 5; 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny run: 2000 cells x 200 genes, 20-step windows")
    p.add_argument("--ablations", action="store_true",
                   help="also time steps_per_call 50 vs 500 and the scan without lax.cond, interleaved "
                        "(first batch size only; long at full size)")
    p.add_argument("--ablation-rounds", type=int, default=3, help="rounds of the interleaved ablations")
    p.add_argument("--components", action="store_true",
                   help="also time where a VAE step's time goes (engine step with/without the NB "
                        "log-density and XLA:CPU fusion changes, hand-written JAX VAE), interleaved")
    p.add_argument("--component-rounds", type=int, default=5, help="rounds of the interleaved components")
    p.add_argument("--components-only", action="store_true",
                   help="run only the components table (no engine/ref-a/ref-b rows)")
    p.add_argument("--sparse-vs-vae", action="store_true",
                   help="only the interleaved sparse-model vs plain-VAE step table (each --batch)")
    p.add_argument("--no-vae", action="store_true", help="skip reference (b), the plain VAE")
    p.add_argument("--mallopt", action="store_true", help="tuned glibc allocator (see docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    a = p.parse_args(argv)
    a.cells = a.cells or (2000 if a.quick else 20000)
    a.genes = a.genes or (200 if a.quick else 2000)
    a.repeats = a.repeats or (3 if a.quick else 5)
    if a.quick and a.steps is None:
        a.steps = 20
    return a


# --------------------------------------------------------------------------- data


def make_data(n_cells, n_genes, n_perturbations, seed):
    """NB counts: gene log-means N(0, 1.3^2) rescaled to mean 2.6, theta 0.6, size factors
    LogNormal(0, 0.25), each perturbation shifting 5% of genes' log-means by N(0, 0.5^2)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_perturbations + 1, n_cells)  # 0 = control
    design = np.zeros((n_cells, n_perturbations), np.float32)
    perturbed = group > 0
    design[np.nonzero(perturbed)[0], group[perturbed] - 1] = 1.0
    gene_log_mean = rng.normal(0.0, 1.3, n_genes)
    gene_log_mean += np.log(2.6) - np.log(np.mean(np.exp(gene_log_mean)))
    effects = rng.normal(0.0, 0.5, (n_perturbations + 1, n_genes))
    effects *= rng.random((n_perturbations + 1, n_genes)) < 0.05
    effects[0] = 0.0
    size = rng.lognormal(0.0, 0.25, n_cells)
    size /= size.mean()
    theta = 0.6
    x = np.empty((n_cells, n_genes), np.float32)
    for lo in range(0, n_cells, 2048):
        hi = min(lo + 2048, n_cells)
        mu = size[lo:hi, None] * np.exp(gene_log_mean[None] + effects[group[lo:hi]])
        x[lo:hi] = rng.poisson(rng.gamma(theta, mu / theta))
    return {"x": x, "design": design, "library_size": x.sum(-1)}


# --------------------------------------------------------------------------- models


def vae_model(x=None, design=None, library_size=None, *, n_cells=None, config=None, x_control=None):
    """Plain NB VAE, same widths and likelihood block, no perturbation sites (``design`` unused)."""
    lik = config.likelihood_block
    k = config.n_latent_invariant + config.n_latent_response
    n_genes = x.shape[-1]
    decoder = attach("decoder", lambda rngs: config.network("decoder")(k, lik.n_outputs * n_genes, rngs=rngs))
    with cells_plate(x.shape[0], n_cells):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
        numpyro.sample("x", lik(decoder(z), library_size).to_event(1), obs=x)


def vae_guide(x=None, design=None, library_size=None, *, n_cells=None, config=None, x_control=None):
    lik = config.likelihood_block
    k = config.n_latent_invariant + config.n_latent_response
    encoder = attach("encoder", lambda rngs: config.network("encoder")(x.shape[-1], 2 * k, rngs=rngs))
    with cells_plate(x.shape[0], n_cells):
        loc, raw = jnp.split(encoder(encoder_input(x, lik)), 2, axis=-1)
        numpyro.sample("z", dist.Normal(loc, jax.nn.softplus(raw) + 1e-4).to_event(1))


def macs_per_cell(params):
    """Forward MACs per cell: sum of in*out over the 2-D ``kernel`` leaves."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path)
        if np.ndim(leaf) == 2 and "kernel" in name:
            total += int(np.shape(leaf)[0]) * int(np.shape(leaf)[1])
    return total


# --------------------------------------------------------------------------- compile events

_TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
_XLA_EVENT = "/jax/core/compile/backend_compile_duration"
_EVENTS: list[tuple[str, float]] = []


def _listen(event, duration, **kwargs):
    if event in _TRACE_EVENTS or event == _XLA_EVENT:
        _EVENTS.append((event, duration))


jax.monitoring.register_event_duration_secs_listener(_listen)


def compile_seconds_since(mark):
    """(trace + lowering seconds, XLA compile seconds) of the events recorded after ``mark``."""
    trace = sum(d for e, d in _EVENTS[mark:] if e in _TRACE_EVENTS)
    xla = sum(d for e, d in _EVENTS[mark:] if e == _XLA_EVENT)
    return trace, xla


# --------------------------------------------------------------------------- engine timing


class _CallClock:
    """Stands in for ``tqdm`` in ``causalzoo.inference.svi``: a time stamp per ``update``."""

    last: _CallClock | None = None

    def __init__(self, *args, **kwargs):
        self.stamps = [time.perf_counter()]
        self.cpu = [time.process_time()]
        self.counts = []
        _CallClock.last = self

    def update(self, n=1):
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.counts.append(n)

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


@contextlib.contextmanager
def _clocked(*namespaces):
    saved = [ns["tqdm"] for ns in namespaces]
    for ns in namespaces:
        ns["tqdm"] = _CallClock
    _CallClock.last = None
    try:
        yield
    finally:
        for ns, old in zip(namespaces, saved, strict=True):
            ns["tqdm"] = old


_COND_LINE = "new_state, value = lax.cond(i < n_active, step, skip, state)"


_JIT_START = "    run_call = jax.jit(run_call"


def _end_of_jit_statement(src: str) -> int | None:
    """Index just past the ``run_call = jax.jit(run_call, ...)`` statement (which may span
    lines) in ``fit_svi``'s source, or None when the source no longer has it."""
    start = src.find(_JIT_START)
    if start < 0:
        return None
    depth, opening = 0, src.index("(", start)
    close = opening
    for close in range(opening, len(src)):
        depth += {"(": 1, ")": -1}.get(src[close], 0)
        if depth == 0:
            break
    end = src.find("\n", close)
    return None if end < 0 else end + 1


class _Grab(Exception):
    def __init__(self, run_call, state, key, data):
        super().__init__("grabbed")
        self.run_call, self.state, self.key, self.data = run_call, state, key, data


def grab_run_call(data, cfg, batch, steps_per_call, seed, cond=True):
    """The engine's jitted per-call function ``(state, key, n_active, data) -> (state,
    losses, finite)``, its initial state, key and resident data, from a copy of ``fit_svi``
    that stops right after ``jax.jit(run_call, ...)`` (optionally without ``lax.cond``)."""
    src = inspect.getsource(svi_mod.fit_svi)
    end = _end_of_jit_statement(src)
    if end is None or (not cond and _COND_LINE not in src):
        return None
    src = src[:end] + "    raise _Grab(run_call, state, key_run, device_data)\n" + src[end:]
    if not cond:
        src = src.replace(_COND_LINE, "new_state, value = step(state)")
    ns = dict(vars(svi_mod), _Grab=_Grab)
    exec(compile(src, "<fit_svi copy>", "exec"), ns)
    try:
        ns["fit_svi"](sparse_perturbation_model, sparse_perturbation_guide, data, batch_size=batch,
                      max_steps=steps_per_call, seed=seed, learning_rate=LEARNING_RATE,
                      loss=AlignedELBO(alignment=0.0), static_kwargs={"config": cfg},
                      steps_per_call=steps_per_call, progress=False)
    except _Grab as g:
        return g
    return None


def run_ablations(data, cfg, batch, rounds, seed, work=500):
    """Interleaved A/B of compiled engine calls in this process: ``lax.cond`` or not at
    ``steps_per_call=50``, and ``steps_per_call`` 50 vs 500. Each round runs ``work`` steps
    per variant (calls of ``spc`` steps, each followed by a host read of its losses, as
    ``fit_svi`` does), rotating the order; also the cost of a call with every step skipped."""
    variants = {"cond spc=50": (50, True), "no-cond spc=50": (50, False), "cond spc=500": (500, True)}
    compiled = {}
    for name, (spc, cond) in variants.items():
        g = grab_run_call(data, cfg, batch, spc, seed, cond)
        if g is None:
            print(f"# ablation {name} skipped: fit_svi no longer has the expected lines")
            continue
        t0 = time.perf_counter()
        fn = g.run_call.lower(g.state, g.key, jnp.int32(spc), g.data).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(fn(g.state, g.key, jnp.int32(spc), g.data))
        skipped = []  # without the cond nothing can be switched off: n_active=0 still runs every step
        for r in range(3 if cond else 0):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(g.state, jax.random.fold_in(g.key, r), jnp.int32(0),
                                     g.data))
            skipped.append(time.perf_counter() - t0)
        compiled[name] = dict(fn=fn, g=g, spc=spc, compile_s=compile_s, wall=[], cpu=[],
                              skipped_call_ms=1e3 * statistics.median(skipped) if skipped else None)
    names = list(compiled)
    if not names:
        return []
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            v = compiled[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for j in range(work // v["spc"]):
                _, losses, _ = v["fn"](v["g"].state,
                                       jax.random.fold_in(v["g"].key, 1000 * r + j),
                                       jnp.int32(v["spc"]), v["g"].data)
                np.asarray(jax.device_get(losses))
            v["wall"].append(work * batch / (time.perf_counter() - t0))
            v["cpu"].append(work * batch / (time.process_time() - c0))
    out = []
    base = statistics.median(compiled[names[0]]["wall"]) if names else float("nan")
    for name in names:
        v = compiled[name]
        out.append({"variant": name, "batch": batch, "steps_per_call": v["spc"], "rounds": rounds,
                    "work_steps_per_round": work, "windows_cells_per_s": v["wall"],
                    "windows_cells_per_cpu_s": v["cpu"], "cells_per_s": statistics.median(v["wall"]),
                    "cells_per_cpu_s": statistics.median(v["cpu"]),
                    "ratio_to_first": statistics.median(v["wall"]) / base,
                    "compile_s": v["compile_s"], "all_skipped_call_ms": v["skipped_call_ms"]})
    return out


# --------------------------------------------------------------------------- components


def previous_nb_log_prob(value, log_mean, log_concentration):
    """The NB log-density as causalzoo computed it before 2026-12-05: ``gammaln`` terms on the
    broadcast cell x gene arrays, differentiated by JAX (kept here to measure the change)."""
    from jax.scipy.special import gammaln

    log_mean, log_concentration = jnp.broadcast_arrays(log_mean, log_concentration)
    theta = jnp.exp(log_concentration)
    log_theta_mu = jnp.logaddexp(log_concentration, log_mean)
    return (gammaln(value + theta) - gammaln(theta) - gammaln(value + 1.0)
            + theta * (log_concentration - log_theta_mu) + value * (log_mean - log_theta_mu))


def _plan(n_cells, batch, steps, call_key):
    """Minibatch indices and step keys of one call, as ``fit_svi`` draws them."""
    steps_per_epoch = n_cells // batch
    perm_keys = jax.random.split(call_key, -(-steps // steps_per_epoch) + 1)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_cells))(perm_keys[1:])
    idx = perms[:, : steps_per_epoch * batch].reshape(-1, batch)[:steps]
    return idx, jax.random.split(perm_keys[0], steps)


def _engine_step_call(cfg, x, lib, batch, steps, options):
    """The engine's per-call function on the plain VAE: ``SVI.update`` under ``lax.cond`` in a
    ``lax.scan``, minibatches gathered on the device, as in ``fit_svi``'s ``run_call``."""
    from jax import lax

    n_cells = x.shape[0]
    svi = SVI(vae_model, vae_guide, optax.adam(LEARNING_RATE), AlignedELBO(0.0), n_cells=n_cells,
              config=cfg)
    state = jax.jit(lambda k: svi.init(k, x=x[:batch], library_size=lib[:batch]))(jax.random.key(0))

    def run(state, key, x, lib):
        idx, _ = _plan(n_cells, batch, steps, key)

        def body(state, inputs):
            i, rows = inputs
            return lax.cond(i < steps, lambda s: svi.update(s, x=x[rows], library_size=lib[rows]),
                            lambda s: (s, jnp.float32(jnp.nan)), state)

        return lax.scan(body, state, (jnp.arange(steps), idx))

    return jax.jit(run, compiler_options=options), state


def _hand_written_call(x, lib, batch, steps, options, layer_norm=True, likelihood="nb"):
    """The same VAE in plain JAX (no NumPyro): dict parameters, ``jax.value_and_grad`` of the
    one-sample ELBO with analytic KL, ``optax.adam``, ``lax.scan`` over the steps."""
    from jax import lax

    from causalzoo.blocks.likelihoods import _nb_log_prob

    n_cells, n_genes = x.shape
    k, h = 10, 128

    def init_mlp(key, d_in, d_out):
        keys = jax.random.split(key, 3)
        widths, p = [d_in, h, h], {}
        for i in range(2):
            p[f"w{i}"] = jax.random.normal(keys[i], widths[i:i + 2]) / np.sqrt(widths[i])
            p[f"b{i}"] = jnp.zeros(h)
            p[f"s{i}"], p[f"o{i}"] = jnp.ones(h), jnp.zeros(h)
        p["wo"], p["bo"] = jax.random.normal(keys[2], (h, d_out)) / np.sqrt(h), jnp.zeros(d_out)
        return p

    def mlp(p, v):
        for i in range(2):
            v = v @ p[f"w{i}"] + p[f"b{i}"]
            if layer_norm:
                mean = v.mean(-1, keepdims=True)
                var = jnp.mean(jnp.square(v - mean), -1, keepdims=True)
                v = (v - mean) * lax.rsqrt(var + 1e-6) * p[f"s{i}"] + p[f"o{i}"]
            v = jax.nn.relu(v)
        return v @ p["wo"] + p["bo"]

    key_enc, key_dec = jax.random.split(jax.random.key(0))
    params = {"enc": init_mlp(key_enc, n_genes, 2 * k), "dec": init_mlp(key_dec, k, n_genes),
              "log_theta": jnp.full((n_genes,), 2.0)}
    opt = optax.adam(LEARNING_RATE)

    def loss(params, key, xb, lb):
        loc, raw = jnp.split(mlp(params["enc"], jnp.log1p(xb)), 2, -1)
        scale = jax.nn.softplus(raw) + 1e-4
        z = loc + scale * jax.random.normal(key, loc.shape)
        log_mean = jax.nn.log_softmax(mlp(params["dec"], z), -1) + jnp.log(lb)[:, None]
        if likelihood == "nb":
            ll = _nb_log_prob(xb, log_mean, params["log_theta"]).sum()
        else:  # Poisson without its lgamma(x + 1): what is left of a step without the NB term
            ll = (xb * log_mean - jnp.exp(log_mean)).sum()
        kl = (0.5 * (loc ** 2 + scale ** 2) - jnp.log(scale) - 0.5).sum()
        return -(n_cells / batch) * (ll - kl)

    def run(state, key, x, lib):
        idx, keys = _plan(n_cells, batch, steps, key)

        def body(state, inputs):
            rows, step_key = inputs
            params, opt_state = state
            value, grads = jax.value_and_grad(loss)(params, step_key, x[rows], lib[rows])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        return lax.scan(body, state, (idx, keys))

    return jax.jit(run, compiler_options=options), (params, opt.init(params))


def run_components(data, cfg, batch, steps, rounds, seed):
    """Where a step's time goes: the engine's compiled VAE step with and without this
    release's two changes, beside a hand-written JAX ``lax.scan`` VAE of the same architecture.
    Compiled first, then timed interleaved (``rounds`` windows of ``steps`` steps each)."""
    import causalzoo.blocks.likelihoods as lik_mod

    options = svi_mod._compiler_options(None)
    x, lib = jnp.asarray(data["x"]), jnp.asarray(data["library_size"])
    fast_nb = lik_mod._nb_log_prob
    variants = [
        ("engine step (this release)", False, lambda: _engine_step_call(cfg, x, lib, batch, steps, options)),
        ("engine step, default XLA:CPU fusion", False,
         lambda: _engine_step_call(cfg, x, lib, batch, steps, None)),
        ("engine step, previous NB log-density", True,
         lambda: _engine_step_call(cfg, x, lib, batch, steps, options)),
        ("engine step, both previous (before)", True,
         lambda: _engine_step_call(cfg, x, lib, batch, steps, None)),
        ("hand-written JAX VAE", False, lambda: _hand_written_call(x, lib, batch, steps, options)),
        ("hand-written, no LayerNorm", False,
         lambda: _hand_written_call(x, lib, batch, steps, options, layer_norm=False)),
        ("hand-written, Poisson instead of NB", False,
         lambda: _hand_written_call(x, lib, batch, steps, options, likelihood="poisson")),
    ]
    built = []
    for name, previous_nb, build in variants:
        t0 = time.perf_counter()
        lik_mod._nb_log_prob = previous_nb_log_prob if previous_nb else fast_nb
        try:  # traced (and compiled) by the first call, while the chosen NB is in place
            fn, state = build()
            # Three calls: the first compiles; the state it returns can differ from the
            # initial one in weak types, which retraces once more (the hand-written rows).
            for _ in range(3):
                state, losses = fn(state, jax.random.key(seed), x, lib)
                jax.block_until_ready(losses)
        finally:
            lik_mod._nb_log_prob = fast_nb
        built.append([name, fn, state, time.perf_counter() - t0, float(losses[-1]) / x.shape[0]])
        print(f"# component {name}: compile + 3 warm-up calls {built[-1][3]:.1f} s", flush=True)
    walls = {name: [] for name, *_ in built}
    cpus = {name: [] for name, *_ in built}
    for r in range(rounds):
        for j in range(len(built)):
            entry = built[(j + r) % len(built)]
            name, fn, state = entry[:3]
            w0, c0 = time.perf_counter(), time.process_time()
            state, losses = fn(state, jax.random.key(seed + 1 + r), x, lib)
            jax.block_until_ready(losses)
            walls[name].append(time.perf_counter() - w0)
            cpus[name].append(time.process_time() - c0)
            entry[2] = state
    first = built[0][0]
    out = []
    for name, _, _, compile_s, loss_per_cell in built:
        paired = [walls[first][i] / walls[name][i] for i in range(rounds)]
        out.append({
            "variant": name, "cells_per_s": steps * batch / statistics.median(walls[name]),
            "windows_cells_per_s": [steps * batch / w for w in walls[name]],
            "paired_ratio_to_first": statistics.median(paired),
            "cells_per_cpu_s": steps * batch / statistics.median(cpus[name]),
            "compile_s": compile_s, "loss_per_cell": loss_per_cell,
        })
    return out


def fused_sparse_guide(x=None, design=None, covariates=None, library_size=None, *, n_cells=None,
                       n_genes=None, config=None, x_control=None):
    """``sparse_perturbation_guide`` with its two encoders' first layers as one product.

    ``log1p(x) @ [K_inv | K_resp[:genes]] + design @ K_resp[genes:]``: the same parameters
    (sites, shapes, initial values) and the same sums as the package's guide in another order,
    without the ``[log1p(x), design]`` copy. Benchmark only (default MLP encoders, no
    covariates, no alignment): it measures whether fusing the encoders pays.
    """
    from flax import nnx
    from numpyro.contrib.module import nnx_module

    from causalzoo.blocks.nn import network_rngs
    from causalzoo.models.sparse_perturbation import global_guide

    global_guide(design.shape[-1], config=config)
    h = encoder_input(x, config.likelihood_block)
    n_genes = h.shape[-1]
    nets = []
    for name, n_in, k in (("encoder_invariant", n_genes, config.n_latent_invariant),
                          ("encoder_response", n_genes + design.shape[-1], config.n_latent_response)):
        module = config.network(name)(n_in, 2 * k, rngs=network_rngs())
        params = nnx_module(name, module).args[0]  # nnx_module returns partial(apply, params)
        graph, state = nnx.split(module, nnx.Param)
        nnx.replace_by_pure_dict(state, params)
        nets.append(nnx.merge(graph, state))
    inv, resp = nets
    width = inv.hidden[0].kernel.shape[-1]
    both = h @ jnp.concatenate([inv.hidden[0].kernel[...], resp.hidden[0].kernel[...][:n_genes]], -1)
    firsts = (both[:, :width] + inv.hidden[0].bias[...],
              both[:, width:] + design @ resp.hidden[0].kernel[...][n_genes:] + resp.hidden[0].bias[...])
    outs = []
    for net, v in zip(nets, firsts, strict=True):
        for i in range(len(net.hidden)):
            v = net.hidden[i](v) if i else v
            v = net.activation(net.norms[i](v))
        loc, raw = jnp.split(net.out(v), 2, axis=-1)
        outs.append((loc, jax.nn.softplus(raw) + 1e-4))
    with cells_plate(x.shape[0], n_cells):
        numpyro.sample("z_inv", dist.Normal(*outs[0]).to_event(1))
        numpyro.sample("z_resp", dist.Normal(*outs[1]).to_event(1))


def _step_call(model, guide, optimizer, static, data, batch, steps, options):
    """The engine's per-call function (``SVI.update`` under ``lax.cond`` in a ``lax.scan``,
    minibatches gathered on the device) for any model taking these data arrays."""
    from jax import lax

    n_cells = data["x"].shape[0]
    svi = SVI(model, guide, optimizer, AlignedELBO(0.0), n_cells=n_cells, **static)
    first = {k: v[:batch] for k, v in data.items()}
    state = jax.jit(lambda k: svi.init(k, **first))(jax.random.key(0))

    def run(state, key, data):
        idx, _ = _plan(n_cells, batch, steps, key)

        def body(state, inputs):
            i, rows = inputs
            return lax.cond(i < steps, lambda s: svi.update(s, **{k: v[rows] for k, v in data.items()}),
                            lambda s: (s, jnp.float32(jnp.nan)), state)

        return lax.scan(body, state, (jnp.arange(steps), idx))

    # XLA counts the scan's body once: the FLOPs of one step (its skip branch is free).
    flops = jax.jit(run).lower(state, jax.random.key(0), data).cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops or {}).get("flops", float("nan"))
    return jax.jit(run, compiler_options=options), state, flops / batch


def run_sparse_vs_vae(data, cfg, batch, steps, rounds, seed):
    """The engine's step on the plain VAE and on the sparse model (and variants), compiled in
    this process and timed interleaved; cells per CPU-second and XLA's FLOPs per cell."""
    options = svi_mod._compiler_options(None)
    vae_data = {k: jnp.asarray(data[k]) for k in ("x", "library_size")}
    sp_data = {k: jnp.asarray(data[k]) for k in ("x", "design", "library_size")}
    sp_static = {"config": cfg, "n_genes": data["x"].shape[1]}
    sams = dict(sp_static, config=SparsePerturbationConfig.sams_vae(
        n_latent_invariant=cfg.n_latent_invariant, n_latent_response=cfg.n_latent_response,
        n_hidden=cfg.n_hidden, n_layers=cfg.n_layers, likelihood=cfg.likelihood))
    two_speed = svi_mod.two_speed_adam(LEARNING_RATE, 10 * LEARNING_RATE)
    spm, spg = sparse_perturbation_model, sparse_perturbation_guide
    variants = [
        ("engine step, plain VAE",
         (vae_model, vae_guide, optax.adam(LEARNING_RATE), {"config": cfg}, vae_data)),
        ("engine step, sparse model", (spm, spg, two_speed, sp_static, sp_data)),
        ("sparse, SAMS-VAE configuration", (spm, spg, two_speed, sams, sp_data)),
        ("sparse, one-rate Adam", (spm, spg, optax.adam(LEARNING_RATE), sp_static, sp_data)),
        ("sparse, fused first encoder layers", (spm, fused_sparse_guide, two_speed, sp_static, sp_data)),
    ]
    built = []
    for name, (model, guide, opt, static, arrays) in variants:
        t0 = time.perf_counter()
        fn, state, flops = _step_call(model, guide, opt, static, arrays, batch, steps, options)
        for _ in range(2):
            state, losses = fn(state, jax.random.key(seed), arrays)
            jax.block_until_ready(losses)
        built.append([name, fn, state, arrays, time.perf_counter() - t0, flops])
        print(f"# {name}: compile + 2 warm-up calls {built[-1][4]:.1f} s", flush=True)
    cpus = {e[0]: [] for e in built}
    walls = {e[0]: [] for e in built}
    losses_at = {}
    for r in range(rounds):
        for j in range(len(built)):
            entry = built[(j + r) % len(built)]
            name, fn, state, arrays = entry[:4]
            w0, c0 = time.perf_counter(), time.process_time()
            entry[2], losses = fn(state, jax.random.key(seed + 1 + r), arrays)
            jax.block_until_ready(losses)
            walls[name].append(time.perf_counter() - w0)
            cpus[name].append(time.process_time() - c0)
            losses_at[name] = float(losses[-1]) / arrays["x"].shape[0]
    first = built[0][0]
    out = []
    for name, *_, compile_s, flops in built:
        rate = steps * batch / statistics.median(cpus[name])
        out.append({
            "variant": name, "cells_per_cpu_s": rate,
            "ratio_to_vae": rate / (steps * batch / statistics.median(cpus[first])),
            "paired_cpu_ratio_to_vae": statistics.median(
                [cpus[first][i] / cpus[name][i] for i in range(rounds)]),
            "cells_per_s": steps * batch / statistics.median(walls[name]),
            "windows_cpu_s": cpus[name], "mflop_per_cell": flops / 1e6,
            "flop_proportional_ratio": built[0][5] / flops, "compile_s": compile_s,
            "loss_per_cell": losses_at[name],
        })
    return out


def run_engine(name, model, guide, data, cfg, batch, repeats, steps_per_call, seed):
    n_cells = data["x"].shape[0]
    if steps_per_call is None:  # the engine's default, reproduced to size the run
        steps_per_call = max(50, min(n_cells // batch, 500))
    max_steps = steps_per_call * (1 + repeats)
    mark = len(_EVENTS)
    with _clocked(vars(svi_mod)):
        t0 = time.perf_counter()
        res = svi_mod.fit_svi(model, guide, data, batch_size=batch, max_steps=max_steps, seed=seed,
                  learning_rate=LEARNING_RATE, loss=AlignedELBO(alignment=0.0),
                  static_kwargs={"config": cfg}, steps_per_call=steps_per_call, progress=False)
        wall = time.perf_counter() - t0
        clock = _CallClock.last
    note = ""
    per_call = clock is not None and len(clock.stamps) == repeats + 2
    if per_call and all(c == steps_per_call for c in clock.counts):
        windows = [steps_per_call * batch / (b - a) for a, b in zip(clock.stamps[1:-1], clock.stamps[2:], strict=True)]
        cpu = [steps_per_call * batch / (b - a) for a, b in zip(clock.cpu[1:-1], clock.cpu[2:], strict=True)]
    else:
        steady = res.run_seconds - res.compile_seconds
        windows = [(res.n_steps - steps_per_call) * batch / steady]
        cpu = [float("nan")]
        note = "clock not driven once per call: one window (run - compile)"
    assert res.n_steps == max_steps and np.all(np.isfinite(res.losses)), res.stop_reason
    return {
        "variant": name, "batch": batch, "steps_per_window": steps_per_call,
        "windows_cells_per_s": windows, "windows_cells_per_cpu_s": cpu, "init_s": wall - res.run_seconds,
        "first_call_s": res.compile_seconds, "macs_per_cell": macs_per_cell(res.params),
        "trace_lower_s": compile_seconds_since(mark)[0], "xla_compile_s": compile_seconds_since(mark)[1],
        "final_loss_per_cell": float(np.mean(res.losses[-steps_per_call:]) / n_cells), "note": note,
    }


# --------------------------------------------------------------------------- reference (a)


def run_reference(name, model, guide, data, cfg, batch, repeats, steps, seed):
    n_cells = data["x"].shape[0]
    steps = steps or max(50, min(n_cells // batch, 500))
    svi = SVI(model, guide, optax.adam(LEARNING_RATE), AlignedELBO(alignment=0.0),
              n_cells=n_cells, config=cfg)
    rng = np.random.default_rng(seed)
    steps_per_epoch = n_cells // batch
    state_perm = {"perm": rng.permutation(n_cells), "pos": 0}

    def next_batch():
        if state_perm["pos"] + batch > steps_per_epoch * batch:
            state_perm["perm"], state_perm["pos"] = rng.permutation(n_cells), 0
        idx = state_perm["perm"][state_perm["pos"]: state_perm["pos"] + batch]
        state_perm["pos"] += batch
        return {k: v[idx] for k, v in data.items()}

    mark = len(_EVENTS)
    t0 = time.perf_counter()
    state = svi.init(jax.random.key(seed), **{k: v[:batch] for k, v in data.items()})
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    update = jax.jit(svi.update)
    t0 = time.perf_counter()
    state, loss = update(state, **next_batch())
    jax.block_until_ready(loss)
    first_call_s = time.perf_counter() - t0

    def window():
        losses = []
        nonlocal state
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            state, loss = update(state, **next_batch())
            losses.append(loss)
        jax.block_until_ready((state, losses))
        return time.perf_counter() - t, time.process_time() - c, losses

    window()  # warm-up, like the engine's first call
    windows, cpu, last = [], [], None
    for _ in range(repeats):
        seconds, cpu_seconds, last = window()
        windows.append(steps * batch / seconds)
        cpu.append(steps * batch / cpu_seconds)
    params = svi.get_params(state)
    return {
        "variant": name, "batch": batch, "steps_per_window": steps, "windows_cells_per_s": windows,
        "windows_cells_per_cpu_s": cpu,
        "init_s": init_s, "first_call_s": first_call_s, "macs_per_cell": macs_per_cell(params),
        "trace_lower_s": compile_seconds_since(mark)[0], "xla_compile_s": compile_seconds_since(mark)[1],
        "final_loss_per_cell": float(np.mean(np.asarray(last)) / n_cells), "note": "",
    }


# --------------------------------------------------------------------------- start-up


def measure_init(model, guide, data, cfg, batch, seed):
    """``svi.init`` of the sparse model at the start of the process: cold (first op-by-op run
    in the process), again (op-by-op, primitives cached), and under ``jax.jit``."""
    svi = SVI(model, guide, optax.adam(LEARNING_RATE), AlignedELBO(alignment=0.0),
              n_cells=data["x"].shape[0], config=cfg)
    first = {k: jnp.asarray(v[:batch]) for k, v in data.items()}
    key = jax.random.key(seed)
    out = {}
    for name, fn in [("init_cold_s", svi.init), ("init_warm_s", svi.init),
                     ("init_jit_s", jax.jit(svi.init))]:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(key, **first))
        out[name] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------- GEMM


def measure_gemm(shapes, min_seconds=0.15, rounds=3):
    out = []
    f = jax.jit(jnp.matmul)
    for m, k, n in shapes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((m, k), np.float32))
        b = jnp.asarray(np.random.default_rng(1).standard_normal((k, n), np.float32))
        f(a, b).block_until_ready()
        best = 0.0
        for _ in range(rounds):
            reps, t0 = 0, time.perf_counter()
            while True:
                r = f(a, b)
                reps += 1
                if reps % 4 == 0:
                    r.block_until_ready()
                    if time.perf_counter() - t0 >= min_seconds:
                        break
            best = max(best, 2.0 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
        out.append({"shape": f"{m}x{k} @ {k}x{n}", "gflops": best})
    return out


# --------------------------------------------------------------------------- main


def summarise(row, ref, gemm_peak):
    w = row["windows_cells_per_s"]
    row["cells_per_s"] = statistics.median(w)
    row["cells_per_s_min"], row["cells_per_s_max"] = min(w), max(w)
    row["cells_per_cpu_s"] = statistics.median(row["windows_cells_per_cpu_s"])
    row["ratio_to_ref_a"] = row["cells_per_s"] / ref if ref else float("nan")
    row["gflops"] = row["cells_per_s"] * row["macs_per_cell"] * 3 * 2 / 1e9
    row["roofline_fraction"] = row["gflops"] / gemm_peak
    return row


def print_table(headers, rows):
    """A Markdown table; a row's cells beyond the headers are printed after it as a note."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        print("| " + " | ".join(cells) + " |" + "".join(f"  {c}" for c in row[len(headers):]))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    a = parse_args(argv)
    if a.mallopt:
        _mallopt()
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(), "jax": jax.__version__, "numpyro": numpyro.__version__,
        "device": str(jax.devices()[0]), "platform": jax.default_backend(), "nproc": os.cpu_count(),
        "cpu": cpu_model(), "argv": sys.argv[1:], "mallopt": a.mallopt,
    }
    print(f"# bench_engine  {meta['date']}")
    print(f"# jax {meta['jax']}  numpyro {meta['numpyro']}  python {meta['python']}  device {meta['device']}"
          f"  ({meta['nproc']} cpus, {meta['cpu']})  mallopt={a.mallopt}")
    t0 = time.perf_counter()
    data = make_data(a.cells, a.genes, a.perturbations, a.seed)
    x = data["x"]
    print(f"# data {a.cells} cells x {a.genes} genes, mean {x.mean():.2f}, zeros {np.mean(x == 0):.1%}, "
          f"{a.perturbations} perturbations + control; made in {time.perf_counter() - t0:.1f} s")
    cfg = SparsePerturbationConfig(n_latent_invariant=5, n_latent_response=5, n_hidden=128, n_layers=2,
                                   likelihood="nb")

    shapes = []
    for b in a.batch:
        shapes += [(b, a.genes, 128), (a.genes, b, 128), (b, 128, a.genes)]
    shapes.append((1024, 1024, 1024))
    gemm = measure_gemm(list(dict.fromkeys(shapes)))
    gemm_peak = max(g["gflops"] for g in gemm)
    print("# fp32 GEMM (jitted jnp.matmul, best of 3): " + ", ".join(
        f"{g['shape']} {g['gflops']:.0f}" for g in gemm) + f" GFLOP/s; peak used {gemm_peak:.0f}")

    if a.sparse_vs_vae:
        steps, rows = a.steps or 40, []
        for b in a.batch:
            res = run_sparse_vs_vae(data, cfg, b, steps, a.component_rounds, a.seed)
            print(f"\n# sparse model vs plain VAE, B={b}: compiled calls of {steps} steps, interleaved, "
                  f"{a.component_rounds} rounds; engine options {svi_mod._compiler_options(None)}")
            print_table(
                ["variant", "cells/CPU-s", "vs VAE", "paired", "cells/s", "MFLOP/cell", "FLOP-prop.",
                 "compile s", "loss/cell"],
                [[r["variant"], f"{r['cells_per_cpu_s']:,.0f}", f"{r['ratio_to_vae']:.3f}",
                  f"{r['paired_cpu_ratio_to_vae']:.3f}", f"{r['cells_per_s']:,.0f}",
                  f"{r['mflop_per_cell']:.2f}", f"{r['flop_proportional_ratio']:.3f}",
                  f"{r['compile_s']:.1f}", f"{r['loss_per_cell']:,.1f}"] for r in res])
            rows += [dict(r, batch=b) for r in res]
            print(f"# load average {os.getloadavg()[0]:.2f}", flush=True)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"meta": meta, "gemm": gemm, "sparse_vs_vae": rows}, fh, indent=2)
            print(f"# wrote {a.json}")
        return

    components = []
    if a.components or a.components_only:
        steps = a.steps or 40
        for b in a.batch:
            comp = run_components(data, cfg, b, steps, a.component_rounds, a.seed)
            print(f"\n# components, B={b}: compiled calls of {steps} steps, interleaved, "
                  f"{a.component_rounds} rounds; engine options {svi_mod._compiler_options(None)}")
            print_table(
                ["variant", "cells/s median (min-max)", "paired vs first", "cells/CPU-s", "compile s",
                 "loss/cell"],
                [[r["variant"],
                  (f"{r['cells_per_s']:,.0f} ({min(r['windows_cells_per_s']):,.0f}-"
                   f"{max(r['windows_cells_per_s']):,.0f})"),
                  f"{r['paired_ratio_to_first']:.2f}", f"{r['cells_per_cpu_s']:,.0f}",
                  f"{r['compile_s']:.1f}", f"{r['loss_per_cell']:,.1f}"] for r in comp])
            components += [dict(r, batch=b) for r in comp]
            print(f"# load average {os.getloadavg()[0]:.2f}", flush=True)
    if a.components_only:
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"meta": meta, "gemm": gemm, "components": components}, fh, indent=2)
            print(f"# wrote {a.json}")
        return

    init = measure_init(sparse_perturbation_model, sparse_perturbation_guide, data, cfg, a.batch[0], a.seed)
    print(f"# sparse model svi.init at B={a.batch[0]}: cold (first in process) {init['init_cold_s']:.1f} s, "
          f"again {init['init_warm_s']:.1f} s, jax.jit(svi.init) {init['init_jit_s']:.1f} s")

    rows = []
    for b in a.batch:
        ref = run_reference("ref-a numpyro jit", sparse_perturbation_model, sparse_perturbation_guide,
                            data, cfg, b, a.repeats, a.steps, a.seed)
        ref_rate = statistics.median(ref["windows_cells_per_s"])
        batch_rows = [run_engine("engine", sparse_perturbation_model, sparse_perturbation_guide,
                                 data, cfg, b, a.repeats, a.steps, a.seed), ref]
        if not a.no_vae:
            batch_rows.append(run_engine("ref-b plain VAE (engine)", vae_model, vae_guide, data, cfg, b,
                                         a.repeats, a.steps, a.seed))
        rows += [summarise(r, ref_rate, gemm_peak) for r in batch_rows]

    print()
    print_table(
        ["variant", "batch", "steps/win", "cells/s median (min-max)", "vs ref-a", "cells/CPU-s",
         "init s", "1st call s", "compile s (trace+lower / XLA)", "MFLOP/cell", "GFLOP/s", "roof %"],
        [[r["variant"], r["batch"], r["steps_per_window"],
          f"{r['cells_per_s']:,.0f} ({r['cells_per_s_min']:,.0f}-{r['cells_per_s_max']:,.0f})",
          f"{r['ratio_to_ref_a']:.2f}", f"{r['cells_per_cpu_s']:,.0f}", f"{r['init_s']:.1f}",
          f"{r['first_call_s']:.1f}",
          (f"{r['trace_lower_s'] + r['xla_compile_s']:.1f} "
           f"({r['trace_lower_s']:.1f} / {r['xla_compile_s']:.1f})"),
          f"{r['macs_per_cell'] * 6 / 1e6:.2f}", f"{r['gflops']:.1f}", f"{100 * r['roofline_fraction']:.1f}%"]
         + ([r["note"]] if r["note"] else []) for r in rows])
    ablations = []
    if a.ablations:
        ablations = run_ablations(data, cfg, a.batch[0], a.ablation_rounds, a.seed)
        print(f"\n# ablations, B={a.batch[0]}: compiled engine calls, interleaved, {a.ablation_rounds} "
              "rounds of 500 steps per variant (host read of the losses after every call)")
        print_table(
            ["variant", "cells/s median (min-max)", "vs first", "cells/CPU-s", "compile s",
             "all-skipped call ms"],
            [[r["variant"],
              (f"{r['cells_per_s']:,.0f} ({min(r['windows_cells_per_s']):,.0f}-"
               f"{max(r['windows_cells_per_s']):,.0f})"),
              f"{r['ratio_to_first']:.3f}", f"{r['cells_per_cpu_s']:,.0f}", f"{r['compile_s']:.1f}",
              "n/a" if r["all_skipped_call_ms"] is None else f"{r['all_skipped_call_ms']:.1f}"]
             for r in ablations])
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = time.perf_counter() - t0
    print(f"\n# roof % = (cells/s x MFLOP/cell) / {gemm_peak:.0f} GFLOP/s measured GEMM; "
          "MFLOP/cell = 3 x 2 x forward MACs of the dense layers")
    print("# cells/CPU-s: cells per second of this process's CPU time (all threads), median over the "
          "windows; steadier than wall time when other processes compete for the cores")
    print("# init s: before the first compiled call (primitives already cached by the start-up line); "
          "1st call s: engine FitResult.compile_seconds (compile + steps/win steps), ref-a first update "
          "(compile + 1 step); compile s: jax.monitoring compile events during the variant "
          "(trace + lowering / XLA)")
    print(f"# peak RSS {peak_rss_mib:,.0f} MiB; total {total:.0f} s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"meta": meta, "init": init, "gemm": gemm, "gemm_peak_gflops": gemm_peak,
                       "rows": rows, "ablations": ablations, "components": components,
                       "peak_rss_mib": peak_rss_mib, "total_seconds": total}, fh, indent=2)
        print(f"# wrote {a.json}")


if __name__ == "__main__":
    main()
