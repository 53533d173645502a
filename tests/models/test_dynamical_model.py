"""The raw dynamical model and guide under NumPyro's handlers: sites and plates, the
vectorised path log-density against a step-by-step reference, prior sampling by scan,
condition / do / substitute / Predictive, the registry and input validation; the same for
the flow prior (``prior="flow"``), with a short fit, its reproducibility and save / load."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import Predictive
from numpyro.infer.util import log_density
from scipy.stats import norm

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.models.dynamical import (
    DynamicalConfig,
    FlowLaggedTransition,
    LaggedTransition,
    domain_shifts,
    dynamical_guide,
    dynamical_model,
    global_guide,
    step_windows,
)

K, K_INV, L, T, G, D = 3, 2, 2, 5, 4, 3
N = 6  # one unit count throughout: eager JAX compiles every op once per shape
CFG = DynamicalConfig(n_latent=K, n_latent_invariant=K_INV, n_lags=L, n_hidden=8, n_layers=1)
LINEAR = DynamicalConfig(n_latent=K, n_lags=1, n_hidden=8, n_layers=1, transition="linear")
U = jnp.arange(N) % D
SIZES = dict(n_steps=T, n_features=G, n_domains=D)
N_DRAWS = 3000  # units drawn in the statistical intervention tests (one shape for both)


def seeded_trace(fn, seed=0, **kwargs):
    return handlers.trace(handlers.seed(fn, seed)).get_trace(**kwargs)


@pytest.fixture(scope="module")
def prior_trace():
    return seeded_trace(dynamical_model, u=U, config=CFG, **SIZES)


def _frames(site):
    return {(f.name, f.dim) for f in site["cond_indep_stack"]}


def test_model_sites_shapes_and_plates(prior_trace):
    tr = prior_trace
    shapes = {k: v["value"].shape for k, v in tr.items() if v["type"] == "sample"}
    assert shapes == {
        "lag_graph": (K, L, K),
        "target": (D, K),
        "mean_shift": (D, K),
        "log_scale_shift": (D, K),
        "z_inv": (N, K_INV),
        "z": (N, T, K),
        "x": (N, T, G),
    }
    assert _frames(tr["z"]) == {("units", -1)}
    assert _frames(tr["z_inv"]) == {("units", -1)}
    assert _frames(tr["x"]) == {("units", -2), ("steps", -1)}
    assert _frames(tr["target"]) == {("domains", -2), ("latents", -1)}
    assert _frames(tr["lag_graph"]) == {("latents", -1)}
    params = {k for k, v in tr.items() if v["type"] == "param"}
    assert params == {"transition$params", "transition_weights", "decoder$params",
                      "log_transition_scale", "log_noise_scale"}
    assert set(np.unique(np.asarray(tr["lag_graph"]["value"]))) <= {0.0, 1.0}
    # same seed, same draw; another seed, another
    again = seeded_trace(dynamical_model, u=U, config=CFG, **SIZES)
    np.testing.assert_array_equal(tr["z"]["value"], again["z"]["value"])
    other = seeded_trace(dynamical_model, seed=1, u=U, config=CFG, **SIZES)
    assert not np.allclose(tr["z"]["value"], other["z"]["value"])


def test_guide_matches_model_latents(prior_trace):
    x = prior_trace["x"]["value"]
    gtr = seeded_trace(dynamical_guide, x=x, u=U, config=CFG, n_domains=D)
    latent = {k for k, v in prior_trace.items() if v["type"] == "sample" and not v["is_observed"]}
    assert {k for k, v in gtr.items() if v["type"] == "sample"} == latent - {"x"}
    for k in latent - {"x"}:
        assert gtr[k]["value"].shape == prior_trace[k]["value"].shape, k
        assert _frames(gtr[k]) == _frames(prior_trace[k]), k
    params = {k for k, v in gtr.items() if v["type"] == "param"}
    assert {"encoder$params", "encoder_invariant$params", "lag_graph_logits",
            "target_logits", "mean_shift_loc", "log_scale_shift_loc"} <= params
    ggtr = seeded_trace(global_guide, n_domains=D, config=CFG)
    assert {k for k, v in ggtr.items() if v["type"] == "sample"} == {
        "lag_graph", "target", "mean_shift", "log_scale_shift"}


def test_full_posterior_guide_is_a_cholesky_normal_per_step(prior_trace):
    """posterior="full": one multivariate normal per unit and step with a lower-triangular
    factor the encoder outputs (strict-lower entries non-zero), the same site shape and
    plates as the mean-field guide, and log q equal to that normal's density."""
    full = DynamicalConfig(**{**CFG.to_dict(), "posterior": "full"})
    x = prior_trace["x"]["value"]
    gtr = seeded_trace(dynamical_guide, x=x, u=U, config=full, n_domains=D)
    site = gtr["z"]
    assert site["value"].shape == (N, T, K)
    assert _frames(site) == {("units", -1)}
    fn = site["fn"]
    assert fn.event_shape == (T, K) and fn.batch_shape == (N,)
    tril = np.asarray(fn.base_dist.scale_tril)
    assert tril.shape == (N, T, K, K)
    np.testing.assert_array_equal(np.triu(tril, 1), 0.0)
    assert np.all(np.diagonal(tril, axis1=-2, axis2=-1) > 0)
    assert np.abs(tril[..., 1, 0]).min() > 0  # correlations between latents within a step
    cov = tril @ np.swapaxes(tril, -1, -2)
    loc = np.asarray(fn.base_dist.loc)
    from scipy.stats import multivariate_normal

    value = np.asarray(site["value"])
    expected = sum(multivariate_normal(loc[n, t], cov[n, t]).logpdf(value[n, t])
                   for n in range(N) for t in range(T))
    np.testing.assert_allclose(float(fn.log_prob(site["value"]).sum()), expected, rtol=1e-4)
    # the model is unchanged: the full guide scores under the same model sites
    model_tr = handlers.trace(handlers.substitute(
        handlers.seed(dynamical_model, 1), data={"z": site["value"]})).get_trace(
        x=x, u=U, config=full, n_domains=D)
    assert np.isfinite(float(model_tr["z"]["fn"].log_prob(site["value"]).sum()))


def test_step_windows_and_encoder_context_read_neighbouring_steps(prior_trace):
    h = jnp.arange(12.0).reshape(1, 4, 3)
    w = np.asarray(step_windows(h, 1))
    assert w.shape == (1, 4, 9)
    np.testing.assert_array_equal(w[0, 0], np.r_[h[0, 0], h[0, 0], h[0, 1]])
    np.testing.assert_array_equal(w[0, 2], np.r_[h[0, 1], h[0, 2], h[0, 3]])
    np.testing.assert_array_equal(w[0, 3], np.r_[h[0, 2], h[0, 3], h[0, 3]])
    assert step_windows(h, 0) is h
    # q(z_t) depends on x_{t+1} with encoder_context=1, and not with 0
    x = prior_trace["x"]["value"]
    x_later = x.at[:, 3].add(1.0)

    def loc(config, x):
        tr = seeded_trace(dynamical_guide, x=x, u=U, config=config, n_domains=D)
        return np.asarray(tr["z"]["fn"].mean)

    ctx = DynamicalConfig(**{**CFG.to_dict(), "encoder_context": 1})
    assert not np.allclose(loc(ctx, x)[:, 2], loc(ctx, x_later)[:, 2])
    np.testing.assert_allclose(loc(ctx, x)[:, 0], loc(ctx, x_later)[:, 0])
    np.testing.assert_allclose(loc(CFG, x)[:, 2], loc(CFG, x_later)[:, 2])
    tr = seeded_trace(dynamical_guide, x=x, u=U, config=ctx, n_domains=D)
    assert tr["z"]["value"].shape == (N, T, K)


def test_fixed_observation_scale():
    fixed = DynamicalConfig(**{**CFG.to_dict(), "observation_scale": 0.25})
    tr = seeded_trace(dynamical_model, u=U, config=fixed, **SIZES)
    assert float(jnp.unique(tr["x"]["fn"].base_dist.scale)[0]) == pytest.approx(0.25)
    assert "log_noise_scale" not in tr  # nothing learned for the noise
    learned = seeded_trace(dynamical_model, u=U, config=CFG, **SIZES)
    assert "log_noise_scale" in learned


def test_minibatch_scaling():
    tr = seeded_trace(dynamical_model, u=U, config=LINEAR, n_units=4 * N, **SIZES)
    for name in ("z", "x"):
        assert tr[name]["scale"] == pytest.approx(4.0)
    assert tr["target"]["scale"] in (None, 1.0)
    # fit_svi passes the total as n_cells
    tr = seeded_trace(dynamical_model, u=U, config=LINEAR, n_cells=2 * N, **SIZES)
    assert tr["z"]["scale"] == pytest.approx(2.0)


# ---------------------------------------------------------------- the path distribution


def _reference_log_prob(z, coef, shift, scale, initial_scale, lags):
    """Step by step: N(shift, initial_scale) for t < L, then
    N(sum_l coef[l] * z_{t-l-1} + shift, scale)."""
    total = norm.logpdf(z[..., :lags, :], shift[..., None, :],
                        initial_scale[..., None, :]).sum((-2, -1))
    for t in range(lags, z.shape[-2]):
        loc = sum(coef[lag] * z[..., t - lag - 1, :] for lag in range(lags)) + shift
        total = total + norm.logpdf(z[..., t, :], loc, scale).sum(-1)
    return total


def test_lagged_transition_log_prob_matches_loop():
    rng = np.random.default_rng(0)
    coef = np.array([0.7, -0.2])
    shift = rng.normal(size=(4, K))
    scale = rng.uniform(0.5, 1.5, size=(4, K))
    initial_scale = rng.uniform(0.5, 1.5, size=(4, K))

    def mean_fn(window):  # window (..., L, k), lag 1 first
        return jnp.einsum("...lk,l->...k", window, jnp.asarray(coef, jnp.float32))

    d = LaggedTransition(mean_fn, jnp.asarray(shift), jnp.asarray(scale),
                         jnp.asarray(initial_scale), n_steps=7, n_lags=2)
    assert d.batch_shape == (4,) and d.event_shape == (7, K)
    z = rng.normal(size=(4, 7, K))
    np.testing.assert_allclose(
        np.asarray(d.log_prob(jnp.asarray(z, jnp.float32))),
        _reference_log_prob(z, coef, shift, scale, initial_scale, 2), rtol=1e-5,
    )
    # the default of the model: the domain shift leaves the initial history alone
    d0 = LaggedTransition(mean_fn, jnp.asarray(shift), jnp.asarray(scale),
                          jnp.asarray(initial_scale), initial_shift=False, n_steps=7, n_lags=2)
    history = (norm.logpdf(z[..., :2, :], 0.0, initial_scale[..., None, :])
               - norm.logpdf(z[..., :2, :], shift[..., None, :], initial_scale[..., None, :]))
    np.testing.assert_allclose(
        np.asarray(d0.log_prob(jnp.asarray(z, jnp.float32))),
        _reference_log_prob(z, coef, shift, scale, initial_scale, 2) + history.sum((-2, -1)),
        rtol=1e-5,
    )
    with pytest.raises(CausalZooError, match="too short"):
        LaggedTransition(mean_fn, jnp.zeros((1, K)), jnp.ones((1, K)), n_steps=2, n_lags=2)


def test_lagged_transition_samples_follow_the_recursion():
    # AR(1) with coefficient 0.8 and shift 1: regressing z_t on z_{t-1} recovers both.
    d = LaggedTransition(lambda w: 0.8 * w[..., 0, :], jnp.ones((500, 2)),
                         jnp.full((500, 2), 0.5), n_steps=6, n_lags=1)
    z = np.asarray(d.sample(jax.random.key(0), (4,)))
    assert z.shape == (4, 500, 6, 2)
    prev, nxt = z[..., 1:-1, :].ravel(), z[..., 2:, :].ravel()
    slope, intercept = np.polyfit(prev, nxt, 1)
    assert slope == pytest.approx(0.8, abs=0.03)
    assert intercept == pytest.approx(1.0, abs=0.06)
    resid = nxt - (slope * prev + intercept)
    assert resid.std() == pytest.approx(0.5, rel=0.05)
    # initial steps: N(shift, initial_scale) = N(1, 1)
    assert abs(z[..., 0, :].mean() - 1.0) < 0.05
    assert z[..., 0, :].std() == pytest.approx(1, rel=0.05)


# ---------------------------------------------------------------- condition / do / substitute


def _linear_z(model, u, seed=0):
    tr = seeded_trace(model, seed=seed, u=u, config=LINEAR, **SIZES)
    return np.asarray(tr["z"]["value"])


def _linear_base():
    weights = jnp.full((K, 1, K), 0.0).at[jnp.arange(K), 0, jnp.arange(K)].set(0.9)
    return handlers.substitute(
        handlers.condition(dynamical_model, {"mean_shift": jnp.full((D, K), 4.0),
                                             "log_scale_shift": jnp.zeros((D, K))}),
        {"transition_weights": weights, "log_transition_scale": jnp.full(K, -1.0)},
    )


def test_do_lag_graph_cuts_the_dynamics():
    n = N_DRAWS
    u = jnp.zeros(n, jnp.int32)
    base = handlers.do(_linear_base(), {"target": jnp.zeros((D, K))})
    on = _linear_z(handlers.do(base, {"lag_graph": jnp.ones((K, 1, K))}), u)
    off = _linear_z(handlers.do(base, {"lag_graph": jnp.zeros((K, 1, K))}), u)
    lag1 = lambda z: np.corrcoef(z[:, 1:, 0].ravel(), z[:, :-1, 0].ravel())[0, 1]  # noqa: E731
    assert lag1(on) > 0.5          # z_t = 0.9 z_{t-1} + 0.37 eps
    assert abs(lag1(off)) < 0.05   # no parents: z_t is fresh noise
    # the diagonal graph only: variable 1 does not follow variable 0
    diag = _linear_z(handlers.do(base, {"lag_graph": jnp.eye(K)[:, None, :]}), u)
    cross = np.corrcoef(diag[:, 1:, 1].ravel(), diag[:, :-1, 0].ravel())[0, 1]
    assert abs(cross) < 0.05


def test_do_target_switches_domain_shifts():
    n = N_DRAWS
    u0, u1 = jnp.zeros(n, jnp.int32), jnp.ones(n, jnp.int32)
    base = handlers.do(_linear_base(), {"lag_graph": jnp.zeros((K, 1, K))})
    none = handlers.do(base, {"target": jnp.zeros((D, K))})
    # no targets: the domain label changes nothing (same seed, same noise)
    np.testing.assert_allclose(_linear_z(none, u0), _linear_z(none, u1), atol=1e-6)
    # domain 1 targets variable 2 only: its mean moves by the shift (4), the others do not
    only = jnp.zeros((D, K)).at[1, 2].set(1.0)
    z1 = _linear_z(handlers.do(base, {"target": only}), u1)
    z0 = _linear_z(handlers.do(base, {"target": only}), u0)
    moved, still = z1[:, 1:, :].mean((0, 1)), z0[:, 1:, :].mean((0, 1))
    assert moved[2] - still[2] == pytest.approx(4.0, abs=0.1)
    np.testing.assert_allclose(moved[:2] - still[:2], 0.0, atol=0.1)
    # the initial history is N(0, I) in every domain (modulate_history=False)
    np.testing.assert_allclose(z1[:, 0, :].mean(0), 0.0, atol=0.1)


def _scale_model(noise_modulation):
    """A model without dynamics whose domain 1 shifts every latent's log noise scale by
    log 3 and its mean by 4, with targets switched off (do)."""
    config = DynamicalConfig(n_latent=K, n_lags=1, n_hidden=8, n_layers=1,
                             transition="linear", noise_modulation=noise_modulation)
    model = handlers.do(
        handlers.substitute(
            handlers.condition(dynamical_model, {
                "mean_shift": jnp.full((D, K), 4.0),
                "log_scale_shift": jnp.zeros((D, K)).at[1].set(jnp.log(3.0)),
            }),
            {"log_transition_scale": jnp.zeros(K)},
        ),
        {"lag_graph": jnp.zeros((K, 1, K)), "target": jnp.zeros((D, K))},
    )
    return model, config


@pytest.mark.parametrize("noise_modulation", ["targets", "all"])
def test_noise_modulation_gates_the_noise_scale_shift(noise_modulation):
    """With targets off, "targets" leaves both shifts off; "all" (LEAP's noise model) still
    scales the noise of domain 1 by 3, and never moves the mean."""
    model, config = _scale_model(noise_modulation)
    u1 = jnp.ones(N_DRAWS, jnp.int32)
    z = np.asarray(seeded_trace(model, u=u1, config=config, **SIZES)["z"]["value"])
    later = z[:, 1:, :]
    expected = 3.0 if noise_modulation == "all" else 1.0
    np.testing.assert_allclose(later.std((0, 1)), expected, rtol=0.05)
    np.testing.assert_allclose(later.mean((0, 1)), 0.0, atol=0.1 * expected)
    np.testing.assert_allclose(z[:, 0, :].std(0), 1.0, rtol=0.1)  # history unmodulated
    # and the log-density the ELBO uses agrees with the sampler's law
    tr = seeded_trace(model, u=u1[:N], config=config, **SIZES)
    path = tr["z"]["value"]
    expected_lp = (norm.logpdf(np.asarray(path[:, 0])).sum(-1)
                   + norm.logpdf(np.asarray(path[:, 1:]), scale=expected).sum((-1, -2)))
    np.testing.assert_allclose(np.asarray(tr["z"]["fn"].log_prob(path)), expected_lp,
                               rtol=1e-5)


def test_domain_shifts_helper():
    target = jnp.array([[1.0, 0.0]])
    mean, log_scale = domain_shifts(DynamicalConfig(), target, jnp.full((1, 2), 2.0),
                                    jnp.full((1, 2), 0.5))
    np.testing.assert_array_equal(mean, [[2.0, 0.0]])
    np.testing.assert_array_equal(log_scale, [[0.5, 0.0]])
    _, log_scale = domain_shifts(DynamicalConfig(noise_modulation="all"), target,
                                 jnp.full((1, 2), 2.0), jnp.full((1, 2), 0.5))
    np.testing.assert_array_equal(log_scale, [[0.5, 0.5]])


def test_condition_z_scores_the_path(prior_trace):
    z = jnp.asarray(np.random.default_rng(2).normal(size=(N, T, K)), jnp.float32)
    model = handlers.condition(dynamical_model, {"z": z})
    tr = seeded_trace(model, u=U, config=CFG, **SIZES)
    np.testing.assert_array_equal(tr["z"]["value"], z)
    assert tr["z"]["is_observed"]
    # the decoder sees the conditioned path: x's location is a function of [z_inv, z]
    x = tr["x"]["value"]
    assert x.shape == (N, T, G)
    # the joint log-density is finite and its z-term is the path log-density
    params = {k: v["value"] for k, v in tr.items() if v["type"] == "param"}
    values = {k: v["value"] for k, v in tr.items() if v["type"] == "sample"}
    lp, mtr = log_density(dynamical_model, (), dict(u=U, x=x, config=CFG, n_domains=D),
                          {**params, **values})
    assert np.isfinite(float(lp))
    np.testing.assert_allclose(
        float(mtr["z"]["fn"].log_prob(z).sum()), float(tr["z"]["fn"].log_prob(z).sum()),
        rtol=1e-5,
    )


# ---------------------------------------------------------------- Predictive / counts


def test_prior_predictive_and_counts():
    pred = jax.jit(lambda key: Predictive(dynamical_model, num_samples=2)(
        key, u=U, config=LINEAR, **SIZES
    ))(jax.random.key(0))
    assert pred["z"].shape == (2, N, T, K) and pred["x"].shape == (2, N, T, G)
    assert pred["lag_graph"].shape == (2, K, 1, K)
    assert not np.allclose(pred["z"][0], pred["z"][1])
    nb = DynamicalConfig(n_latent=K, n_hidden=8, n_layers=1, likelihood="nb",
                         transition="linear")
    tr = seeded_trace(dynamical_model, u=U, config=nb, library_size=jnp.full((N, T), 50.0),
                      **SIZES)
    counts = np.asarray(tr["x"]["value"])
    assert counts.shape == (N, T, G) and np.all(counts >= 0)
    np.testing.assert_array_equal(counts, np.round(counts))


# ---------------------------------------------------------------- registry / validation


def test_registered_spec():
    spec = cz.models.get_model("dynamical")
    assert spec.model is dynamical_model and spec.guide is dynamical_guide
    assert spec.config_class is DynamicalConfig
    assert {"units", "steps", "latents"} <= set(spec.plates)
    assert spec.load_user_class() is cz.DynamicalCausalVAE
    assert spec.load_generator() is cz.identifiability.generators.leap_nonstationary
    assert "component-wise" in spec.identifiability


def test_recurrent_encoder_reads_the_whole_sequence(prior_trace):
    """encoder="recurrent": q(z_t | x) depends on the steps before and after t (the step
    encoder on x_t alone), not on other units; a full-covariance factor per step, the
    same site shape and plates as the step encoder, and a finite model density under it."""
    x = prior_trace["x"]["value"]
    recurrent = DynamicalConfig(**{**CFG.to_dict(), "encoder": "recurrent"})

    def loc(config, x):
        tr = seeded_trace(dynamical_guide, x=x, u=U, config=config, n_domains=D)
        return np.asarray(tr["z"]["fn"].mean)

    base = loc(recurrent, x)
    last, first, other = x.at[:, T - 1].add(1.0), x.at[:, 0].add(1.0), x.at[1:].add(1.0)
    assert np.abs(loc(recurrent, last)[:, 0] - base[:, 0]).min() > 1e-4  # a later step
    assert np.abs(loc(recurrent, first)[:, T - 1] - base[:, T - 1]).min() > 1e-4  # earlier
    np.testing.assert_array_equal(loc(recurrent, other)[0], base[0])  # units apart
    np.testing.assert_allclose(loc(CFG, last)[:, 0], loc(CFG, x)[:, 0])
    full = DynamicalConfig(**{**recurrent.to_dict(), "posterior": "full"})
    gtr = seeded_trace(dynamical_guide, x=x, u=U, config=full, n_domains=D)
    site = gtr["z"]
    assert site["value"].shape == (N, T, K) and _frames(site) == {("units", -1)}
    assert site["fn"].base_dist.scale_tril.shape == (N, T, K, K)
    assert "encoder$params" in gtr and "forward_state" in gtr["encoder$params"]["value"]
    model_tr = handlers.trace(handlers.substitute(
        handlers.seed(dynamical_model, 1), data={"z": site["value"]})).get_trace(
        x=x, u=U, config=full, n_domains=D)
    assert np.isfinite(float(model_tr["z"]["fn"].log_prob(site["value"]).sum()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_latent=0), "n_latent"),
        (dict(n_lags=1.5), "n_lags"),
        (dict(n_latent_invariant=-1), "n_latent_invariant"),
        (dict(edge_probability=1.0), "edge_probability"),
        (dict(shift_scale=0.0), "shift_scale"),
        (dict(transition="flow"), "transition"),
        (dict(prior="nope"), "prior='nope'"),
        (dict(flow_base="cauchy"), "flow_base='cauchy'"),
        (dict(noise_modulation="some"), "noise_modulation='some'"),
        (dict(posterior="low-rank"), "posterior='low-rank'"),
        (dict(encoder_context=-1), "encoder_context"),
        (dict(encoder="gru"), "encoder='gru'"),
        (dict(encoder="recurrent", encoder_context=1), "reads the whole sequence already"),
        (dict(observation_scale=0.0), "observation_scale"),
        (dict(observation_scale=True), "observation_scale"),
        (dict(observation_scale=0.1, likelihood="nb"), "does not apply"),
        (dict(likelihood="bernoulli"), "likelihood"),
        (dict(networks={"dekoder": None}), "dekoder"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(CausalZooError, match=match):
        DynamicalConfig(**kwargs)


def test_config_round_trip():
    assert DynamicalConfig.from_dict(CFG.to_dict()) == CFG
    assert DynamicalConfig.from_dict(json.loads(json.dumps(FLOW.to_dict()))) == FLOW
    # a configuration saved before the flow prior existed loads with the Gaussian prior
    old = {k: v for k, v in CFG.to_dict().items() if k not in ("prior", "flow_base")}
    assert DynamicalConfig.from_dict(old).prior == "gaussian"
    # ... and one saved before noise_modulation existed keeps the gated noise shifts
    old = {k: v for k, v in CFG.to_dict().items() if k != "noise_modulation"}
    assert DynamicalConfig.from_dict(old).noise_modulation == "targets"
    # ... and one saved before the recurrent encoder existed keeps the step encoder
    old = {k: v for k, v in CFG.to_dict().items() if k != "encoder"}
    assert DynamicalConfig.from_dict(old).encoder == "step"
    with pytest.raises(CausalZooError, match="unknown fields"):
        DynamicalConfig.from_dict({**CFG.to_dict(), "bogus": 1})


def test_input_errors():
    x = jnp.zeros((N, T, G))
    with pytest.raises(CausalZooError, match="`u`"):
        seeded_trace(dynamical_model, x=x, config=LINEAR, n_domains=D)
    with pytest.raises(CausalZooError, match="3-D"):
        seeded_trace(dynamical_model, x=x[:, 0], u=U, config=LINEAR, n_domains=D)
    with pytest.raises(CausalZooError, match="n_steps"):
        seeded_trace(dynamical_model, u=U, config=LINEAR, n_domains=D)
    with pytest.raises(CausalZooError, match="n_domains"):
        seeded_trace(dynamical_model, x=x, u=U, config=LINEAR)
    with pytest.raises(CausalZooError, match="units"):
        seeded_trace(dynamical_model, x=x, u=U[:-1], config=LINEAR, n_domains=D)
    with pytest.raises(CausalZooError, match="observed"):
        seeded_trace(dynamical_guide, u=U, config=LINEAR, n_domains=D)


# ---------------------------------------------------------------- the flow prior

FLOW = DynamicalConfig(n_latent=K, n_latent_invariant=K_INV, n_lags=L, n_hidden=8, n_layers=1,
                       prior="flow")
FLOW_LINEAR = DynamicalConfig(n_latent=K, n_lags=1, n_hidden=8, n_layers=1,
                              transition="linear", prior="flow", flow_base="laplace")


def test_flow_prior_sites_and_gaussian_start(prior_trace):
    tr = seeded_trace(dynamical_model, u=U, config=FLOW, **SIZES)
    assert isinstance(tr["z"]["fn"], FlowLaggedTransition)
    for name, site in prior_trace.items():  # same sites, shapes and plates
        if site["type"] == "sample":
            assert tr[name]["value"].shape == site["value"].shape, name
            assert _frames(tr[name]) == _frames(site), name
    params = {k for k, v in tr.items() if v["type"] == "param"}
    assert params == {k for k, v in prior_trace.items() if v["type"] == "param"} | {
        "flow_skew", "flow_log_tail"}
    again = seeded_trace(dynamical_model, u=U, config=FLOW, **SIZES)
    np.testing.assert_array_equal(tr["z"]["value"], again["z"]["value"])
    # at initialisation (zero residuals, no skew, no tail change) the flow prior scores
    # the same joint as the Gaussian one
    values = {k: v["value"] for k, v in prior_trace.items() if v["type"] == "sample"}
    kw = dict(u=U, x=values["x"], n_domains=D)
    own = lambda t: {k: v["value"] for k, v in t.items() if v["type"] == "param"}  # noqa: E731
    lp_gauss, _ = log_density(dynamical_model, (), dict(kw, config=CFG),
                              {**own(prior_trace), **values})
    lp_flow, _ = log_density(dynamical_model, (), dict(kw, config=FLOW), {**own(tr), **values})
    assert float(lp_flow) == pytest.approx(float(lp_gauss), rel=1e-5)


def test_flow_do_target_shifts_mean_and_scale_of_the_target_only():
    n = N_DRAWS
    u0, u1 = jnp.zeros(n, jnp.int32), jnp.ones(n, jnp.int32)
    only = jnp.zeros((D, K)).at[1, 2].set(1.0)
    model = handlers.do(
        handlers.substitute(dynamical_model, {"log_transition_scale": jnp.full(K, -1.0)}),
        {"lag_graph": jnp.zeros((K, 1, K)), "target": only,
         "mean_shift": jnp.full((D, K), 4.0), "log_scale_shift": jnp.full((D, K), np.log(2.0))},
    )

    def draw(u):
        tr = seeded_trace(model, u=u, config=FLOW_LINEAR, **SIZES)
        return np.asarray(tr["z"]["value"])[:, 1:]

    z1, z0 = draw(u1), draw(u0)
    np.testing.assert_allclose(z1.mean((0, 1)) - z0.mean((0, 1)), [0.0, 0.0, 4.0], atol=0.06)
    ratio = z1.std((0, 1)) / z0.std((0, 1))
    np.testing.assert_allclose(ratio, [1.0, 1.0, 2.0], rtol=0.06)
    # Laplace noise: excess kurtosis near 3 (a Gaussian prior would give 0)
    e = (z0[..., 0] - z0[..., 0].mean()) / z0[..., 0].std()
    assert 2.0 < float((e**4).mean() - 3.0) < 4.5


def test_flow_condition_and_predictive():
    pred = jax.jit(lambda key: Predictive(dynamical_model, num_samples=2)(
        key, u=U, config=FLOW_LINEAR, **SIZES
    ))(jax.random.key(0))
    assert pred["z"].shape == (2, N, T, K) and pred["x"].shape == (2, N, T, G)
    assert np.isfinite(np.asarray(pred["z"])).all()
    z = jnp.asarray(np.random.default_rng(5).normal(size=(N, T, K)), jnp.float32)
    tr = seeded_trace(handlers.condition(dynamical_model, {"z": z}), u=U, config=FLOW,
                      **SIZES)
    assert tr["z"]["is_observed"]
    np.testing.assert_array_equal(tr["z"]["value"], z)
    assert np.isfinite(np.asarray(tr["z"]["fn"].log_prob(z))).all()


def _flow_sequences(seed=0, n=64):
    rng = np.random.default_rng(seed)
    u = np.arange(n) % 2
    scale = np.where(u == 1, 1.0, 0.3)[:, None]
    z = np.zeros((n, T, 2))
    z[:, 0] = rng.normal(size=(n, 2))
    for t in range(1, T):
        z[:, t] = 0.8 * z[:, t - 1] + scale * rng.laplace(size=(n, 2))
    x = np.tanh(z @ rng.normal(size=(2, G))) + 0.05 * rng.normal(size=(n, T, G))
    return x.astype(np.float32), u


def test_flow_fit_reduces_the_loss_is_reproducible_and_round_trips(tmp_path):
    x, u = _flow_sequences()
    kw = dict(n_latent=2, n_hidden=8, n_layers=1, transition="linear", prior="flow",
              flow_base="laplace")
    fit = dict(max_steps=100, batch_size=32, learning_rate=1e-2, progress=False, seed=3)
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **kw).fit(**fit)
    loss = m.history["loss"]
    assert np.isfinite(loss).all() and loss[-10:].mean() < 0.5 * loss[:10].mean()
    assert m.config.prior == "flow"
    assert not np.allclose(m.params["flow_skew"], 0.0)  # the noise shape was learned
    again = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **kw).fit(**fit)
    np.testing.assert_array_equal(again.history["loss"], loss)
    path = m.save(tmp_path / "flow")
    meta = json.loads((path / "causalzoo.json").read_text())
    assert meta["config"]["prior"] == "flow" and meta["config"]["flow_base"] == "laplace"
    loaded = cz.load(path)
    assert loaded.config == m.config
    np.testing.assert_allclose(loaded.get_latent_representation(x=x),
                               m.get_latent_representation(), atol=1e-6)
    np.testing.assert_array_equal(loaded.params["flow_log_tail"], m.params["flow_log_tail"])
