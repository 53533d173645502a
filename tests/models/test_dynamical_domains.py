"""What a domain may change in the dynamical model, beyond a per-unit mean and noise shift:
labels **per step** (``u`` of shape ``(units, steps)``: step ``t``'s code acts on the law
of ``z_t``) and **lag weights** (``weight_shift_scale``: TDRL's changing dynamics). Each is
checked against a step-by-step reference density, against the per-unit form it must reduce
to, and by the law of samples under ``do``; then through the user class and the ArviZ
converter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from scipy.stats import norm

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.blocks.transitions import FlowLaggedTransition, FlowParams, LaggedTransition
from causalzoo.models.dynamical import (
    DynamicalConfig,
    dynamical_guide,
    dynamical_model,
    weight_shifts,
)

K, L, T, N = 2, 2, 6, 5
COEF = np.array([0.6, -0.3])  # lag 1, lag 2 (the same for every variable)


def _mean_fn(window):  # (..., L, k) -> (..., k)
    return jnp.einsum("...lk,l->...k", window, jnp.asarray(COEF, jnp.float32))


def _flow_fn(window):
    loc = _mean_fn(window)
    zero = jnp.zeros_like(loc)
    return FlowParams(loc, zero, zero + 0.4, zero - 0.3)


def _arguments(seed=0):
    """Per-step shift, scale, initial scale (N, T, K) and lag-weight changes (N, T, K, L, K)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return (rng.normal(size=(N, T, K)).astype(f32),
            rng.uniform(0.5, 1.5, size=(N, T, K)).astype(f32),
            rng.uniform(0.5, 1.5, size=(N, T, K)).astype(f32),
            (0.4 * rng.normal(size=(N, T, K, L, K))).astype(f32))


def _reference(z, shift, scale, initial_scale, weights, *, initial_shift):
    """Step-by-step Gaussian path log-density with per-step arguments (float64)."""
    total = np.zeros(z.shape[0])
    for t in range(T):
        if t < L:
            loc = shift[:, t] if initial_shift else 0.0
            total += norm.logpdf(z[:, t], loc, initial_scale[:, t]).sum(-1)
            continue
        window = np.stack([z[:, t - lag] for lag in range(1, L + 1)], axis=1)  # (n, L, k)
        loc = np.einsum("nlk,l->nk", window, COEF) + shift[:, t]
        loc += np.einsum("nlj,nilj->ni", window, weights[:, t])
        total += norm.logpdf(z[:, t], loc, scale[:, t]).sum(-1)
    return total


@pytest.mark.parametrize("initial_shift", [False, True])
def test_per_step_path_log_prob_matches_a_step_by_step_reference(initial_shift):
    shift, scale, initial_scale, weights = _arguments()
    d = LaggedTransition(_mean_fn, shift, scale, initial_scale, initial_shift=initial_shift,
                         n_steps=T, n_lags=L, per_step=True, weight_shift=weights)
    assert d.batch_shape == (N,) and d.event_shape == (T, K)
    z = np.random.default_rng(1).normal(size=(N, T, K))
    np.testing.assert_allclose(
        np.asarray(d.log_prob(jnp.asarray(z, jnp.float32))),
        _reference(z, shift, scale, initial_scale, weights, initial_shift=initial_shift),
        rtol=1e-5,
    )


@pytest.mark.parametrize("cls, fn", [(LaggedTransition, _mean_fn),
                                     (FlowLaggedTransition, _flow_fn)])
def test_constant_per_step_arguments_are_the_per_unit_distribution(cls, fn):
    """Per-step arguments equal along time give the per-unit law: same log-density, same
    draws from the same key (both priors, with lag-weight changes)."""
    shift, scale, initial_scale, weights = (a[:, 0] for a in _arguments())
    per_unit = cls(fn, shift, scale, initial_scale, n_steps=T, n_lags=L,
                   weight_shift=weights)
    tile = lambda a: np.repeat(a[:, None], T, axis=1)  # noqa: E731
    per_step = cls(fn, tile(shift), tile(scale), tile(initial_scale), n_steps=T, n_lags=L,
                   per_step=True, weight_shift=tile(weights))
    z = jnp.asarray(np.random.default_rng(2).normal(size=(N, T, K)), jnp.float32)
    np.testing.assert_allclose(per_step.log_prob(z), per_unit.log_prob(z), rtol=1e-6)
    key = jax.random.key(3)
    draws = per_unit.sample(key, (4,))
    assert draws.shape == (4, N, T, K)
    np.testing.assert_allclose(per_step.sample(key, (4,)), draws, rtol=1e-6, atol=1e-6)
    # a zero weight change is no weight change
    plain = cls(fn, shift, scale, initial_scale, n_steps=T, n_lags=L)
    zero = cls(fn, shift, scale, initial_scale, n_steps=T, n_lags=L,
               weight_shift=np.zeros_like(weights))
    np.testing.assert_allclose(zero.log_prob(z), plain.log_prob(z), rtol=1e-6)
    # and a non-zero one changes the density
    assert not np.allclose(per_unit.log_prob(z), plain.log_prob(z))


@pytest.mark.parametrize("cls, fn", [(LaggedTransition, _mean_fn),
                                     (FlowLaggedTransition, _flow_fn)])
def test_forecast_from_the_history_replays_the_sample(cls, fn):
    """``forecast(key_eps, first L steps)`` continues a path exactly as ``sample`` drew it
    (the same noise stream); from a longer prefix it keeps the prefix and moves on."""
    shift, scale, initial_scale, weights = _arguments(5)
    d = cls(fn, shift, scale, initial_scale, n_steps=T, n_lags=L, per_step=True,
            weight_shift=weights)
    key = jax.random.key(7)
    z = d.sample(key)
    _, key_eps = jax.random.split(key)
    np.testing.assert_allclose(d.forecast(key_eps, z[:, :L]), z, rtol=1e-5, atol=1e-5)
    longer = d.forecast(jax.random.key(8), z[:, :4], (3,))
    assert longer.shape == (3, N, T, K)
    np.testing.assert_array_equal(longer[:, :, :4], np.broadcast_to(z[:, :4], (3, N, 4, K)))
    assert not np.allclose(longer[:, :, 4:], z[:, 4:])
    with pytest.raises(CausalZooError, match="A forecast starts from"):
        d.forecast(key, z[:, :L - 1])


def test_flow_path_with_weight_shift_inverts_to_its_noise():
    shift, scale, initial_scale, weights = _arguments(4)
    d = FlowLaggedTransition(_flow_fn, shift, scale, initial_scale, n_steps=T, n_lags=L,
                             per_step=True, weight_shift=weights)
    z = d.sample(jax.random.key(0), (2000,))
    eps = np.asarray(d.inverse(z))  # the base noise of steps L.., whatever the arguments
    assert abs(eps.mean()) < 0.03 and eps.std() == pytest.approx(1.0, rel=0.03)


def test_samples_follow_the_per_step_recursion():
    """AR(1) z_t = (0.8 + w_t) z_{t-1} + shift_t + 0.5 eps: steps 1-3 in one regime
    (w = 0, shift 0), steps 4-6 in another (w = -0.6, shift 2); a regression per regime
    recovers its slope and intercept."""
    n, steps = 4000, 7
    regime = (np.arange(steps) >= 4).astype(np.float32)
    shift = np.broadcast_to((2.0 * regime)[None, :, None], (n, steps, 1))
    weights = np.broadcast_to((-0.6 * regime)[None, :, None, None, None], (n, steps, 1, 1, 1))
    d = LaggedTransition(lambda w: 0.8 * w[..., 0, :], shift, np.full((n, steps, 1), 0.5),
                         n_steps=steps, n_lags=1, per_step=True, weight_shift=weights)
    z = np.asarray(d.sample(jax.random.key(0)))[..., 0]
    for steps_, slope, intercept in ((slice(1, 4), 0.8, 0.0), (slice(4, 7), 0.2, 2.0)):
        prev = z[:, steps_.start - 1:steps_.stop - 1].ravel()
        got = np.polyfit(prev, z[:, steps_].ravel(), 1)
        assert got[0] == pytest.approx(slope, abs=0.03)
        assert got[1] == pytest.approx(intercept, abs=0.05)


def test_distribution_argument_errors():
    shift, scale, _, weights = _arguments()
    with pytest.raises(CausalZooError, match="Per-step shifts"):
        LaggedTransition(_mean_fn, shift[:, :3], scale[:, :3], n_steps=T, n_lags=L,
                         per_step=True)
    with pytest.raises(CausalZooError, match="weight_shift must end in"):
        LaggedTransition(_mean_fn, shift[:, 0], scale[:, 0], n_steps=T, n_lags=L,
                         weight_shift=weights[:, 0, :, :1])


# ---------------------------------------------------------------- in the model

D = 2
LINEAR = DynamicalConfig(n_latent=K, n_lags=1, n_hidden=8, n_layers=1, transition="linear")
CHANGING = DynamicalConfig(n_latent=K, n_lags=1, n_hidden=8, n_layers=1, transition="linear",
                           weight_shift_scale=0.5)
SIZES = dict(n_steps=T, n_features=3, n_domains=D)


def _trace(model, u, config, seed=0):
    return handlers.trace(handlers.seed(model, seed)).get_trace(u=u, config=config, **SIZES)


def _pinned(config, **fixed):
    """The linear model with lag-1 self weights 0.8, noise sd 0.5, no noise-scale shifts,
    mean shift 2 and the given sites held by ``do``."""
    weights = jnp.zeros((K, 1, K)).at[jnp.arange(K), 0, jnp.arange(K)].set(0.8)
    model = handlers.substitute(
        handlers.condition(dynamical_model, {"mean_shift": jnp.full((D, K), 2.0),
                                             "log_scale_shift": jnp.zeros((D, K))}),
        {"transition_weights": weights, "log_transition_scale": jnp.full(K, np.log(0.5))},
    )
    return handlers.do(model, fixed)


def test_per_step_labels_switch_the_mechanism_at_the_step():
    """Domain 1 targets z_1 from step 3 on (per-step labels): its mean moves by the shift
    exactly from step 3; z_0 and earlier steps do not move."""
    n = 3000
    u = jnp.asarray(np.repeat((np.arange(T) >= 3)[None].astype(np.int32), n, axis=0))
    target = jnp.zeros((D, K)).at[1, 1].set(1.0)
    model = _pinned(LINEAR, target=target, lag_graph=jnp.zeros((K, 1, K)))
    tr = _trace(model, u, LINEAR)
    assert tr["z"]["fn"].per_step and tr["z"]["value"].shape == (n, T, K)
    z = np.asarray(tr["z"]["value"])
    np.testing.assert_allclose(z[:, 1:3].mean((0, 1)), 0.0, atol=0.05)
    np.testing.assert_allclose(z[:, 3:, 1].mean(), 2.0, atol=0.05)
    np.testing.assert_allclose(z[:, 3:, 0].mean(), 0.0, atol=0.05)
    # the same labels per unit: every later step of a domain-1 unit moves
    whole = np.asarray(_trace(model, jnp.ones(n, jnp.int32), LINEAR)["z"]["value"])
    np.testing.assert_allclose(whole[:, 1:, 1].mean(), 2.0, atol=0.05)


def test_weight_shift_changes_the_lag_weights_of_targets_along_graph_edges():
    """weight_shift held at -0.6 on every entry: domain 1 (targets z_0 only) has lag-1 self
    weight 0.2 on z_0 and keeps 0.8 on z_1; with the cross edge off the change of z_0's
    weight on z_1 does not act."""
    n = 3000
    graph = jnp.eye(K)[:, None, :]  # self edges only
    target = jnp.zeros((D, K)).at[1, 0].set(1.0)
    model = _pinned(CHANGING, target=target, lag_graph=graph,
                    mean_shift=jnp.zeros((D, K)), weight_shift=jnp.full((D, K, 1, K), -0.6))
    for domain, slopes in ((0, (0.8, 0.8)), (1, (0.2, 0.8))):
        z = np.asarray(_trace(model, jnp.full(n, domain, jnp.int32), CHANGING)["z"]["value"])
        for i, slope in enumerate(slopes):
            got = np.polyfit(z[:, :-1, i].ravel(), z[:, 1:, i].ravel(), 1)[0]
            assert got == pytest.approx(slope, abs=0.03), (domain, i)
        cross = np.corrcoef(z[:, 1:, 0].ravel(), z[:, :-1, 1].ravel())[0, 1]
        assert abs(cross) < 0.05


def test_weight_shift_site_guide_and_helper():
    u = jnp.arange(N) % D
    tr = _trace(dynamical_model, u, CHANGING)
    assert tr["weight_shift"]["value"].shape == (D, K, 1, K)
    frames = {(f.name, f.dim) for f in tr["weight_shift"]["cond_indep_stack"]}
    assert frames == {("latents", -1), ("domains", -2)}
    assert "weight_shift" not in _trace(dynamical_model, u, LINEAR)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(N, T, 3)), jnp.float32)
    guide = handlers.trace(handlers.seed(dynamical_guide, 0)).get_trace(
        x=x, u=u, config=CHANGING, n_domains=D)
    assert guide["weight_shift"]["value"].shape == (D, K, 1, K)
    # gating: no target, no change; the lag graph masks the entries
    with handlers.seed(rng_seed=0):
        w = weight_shifts(D, CHANGING, jnp.eye(K)[:, None, :],
                          jnp.zeros((D, K)).at[0, 1].set(1.0))
    w = np.asarray(w)
    assert np.all(w[1] == 0) and np.all(w[0, 0] == 0)
    assert w[0, 1, 0, 1] != 0 and w[0, 1, 0, 0] == 0
    assert weight_shifts(D, LINEAR, jnp.ones((K, 1, K)), jnp.ones((D, K))) is None


@pytest.mark.parametrize("bad", [0.0, -1.0, True, "big"])
def test_weight_shift_scale_is_validated(bad):
    with pytest.raises(CausalZooError, match="weight_shift_scale"):
        DynamicalConfig(weight_shift_scale=bad)


def test_per_step_label_errors():
    x = jnp.zeros((N, T, 3))
    with pytest.raises(CausalZooError, match="per-step labels"):
        handlers.seed(dynamical_model, 0)(x=x, u=jnp.zeros((N, T - 1), jnp.int32),
                                          config=LINEAR, n_domains=D)
    with pytest.raises(CausalZooError, match="2-D"):
        handlers.seed(dynamical_model, 0)(x=x, u=jnp.zeros((N, T, 1), jnp.int32),
                                          config=LINEAR, n_domains=D)
    xs = np.zeros((N, T, 3), np.float32)
    with pytest.raises(CausalZooError, match=r"per unit and step: shape \(5, 6\)"):
        cz.DynamicalCausalVAE.from_arrays(x=xs, u=np.zeros((N, T + 1), int), n_latent=K)
    labels = np.full((N, T), "a", dtype=object)
    labels[2, 3] = " "
    with pytest.raises(CausalZooError, match=r"empty labels \(e.g. at \(2, 3\)\)"):
        cz.DynamicalCausalVAE.from_arrays(x=xs, u=labels, n_latent=K)


def test_user_class_fits_per_step_labels_and_converts(tmp_path):
    """Strings per step are encoded with one vocabulary; the fit runs and lowers the loss,
    round-trips through save/load, and the DataTree carries the labels per unit and step."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, T, 3)).astype(np.float32)
    u = np.where(np.arange(T)[None] >= 3, "drug", "ctrl").repeat(24, 0)
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, n_latent=K, n_lags=1, n_hidden=8,
                                          n_layers=1, weight_shift_scale=0.5)
    assert m.domain_names == ["ctrl", "drug"] and m.u.shape == (24, T)
    np.testing.assert_array_equal(m.u[:, :3], 0)
    np.testing.assert_array_equal(m.u[:, 3:], 1)
    m.fit(max_steps=200, batch_size=8, learning_rate=1e-2, progress=False)
    loss = np.asarray(m.history["loss"])
    assert np.isfinite(loss).all() and loss[-20:].mean() < loss[:20].mean()
    assert "weight_shift_loc" in m.params
    # the acting change, posterior mean: P(target) E[change] P(edge), (dom, lag, par, child)
    changes = m.lag_weight_changes()
    assert changes.shape == (2, 1, K, K)
    sig = lambda a: 1.0 / (1.0 + np.exp(-np.asarray(a, np.float64)))  # noqa: E731
    loc = np.asarray(m.params["weight_shift_loc"], np.float64)  # (dom, child, lag, parent)
    graph = sig(m.params["lag_graph_logits"])  # (child, lag, parent)
    target = sig(m.params["target_logits"])  # (dom, child)
    for d, c, lag, p in np.ndindex(loc.shape):
        np.testing.assert_allclose(changes[d, lag, p, c],
                                   target[d, c] * loc[d, c, lag, p] * graph[c, lag, p],
                                   rtol=1e-5, atol=1e-8)
    assert np.abs(changes).max() > 0, "the fit moved the changes off zero"
    m.save(tmp_path / "m")
    back = cz.load(tmp_path / "m")
    np.testing.assert_array_equal(back.lag_weight_changes(), changes)
    np.testing.assert_allclose(back.get_latent_representation(x), m.get_latent_representation())
    tree = cz.diagnostics.to_datatree(m, num_samples=4)
    domain = tree["constant_data"]["domain"]
    assert domain.dims == ("units", "steps")
    assert domain.values[0, 0] == "ctrl" and domain.values[0, -1] == "drug"
    # the acting lag-weight change, gated by targets and graph, per draw
    acting = tree["posterior"]["domain_weight_shift"]
    assert acting.dims == ("chain", "draw", "domains", "latents", "lags", "parents")
    post = tree["posterior"]
    np.testing.assert_allclose(
        acting.values,
        post["target"].values[..., None, None] * post["weight_shift"].values
        * post["lag_graph"].values[:, :, None], rtol=1e-6)


# ---------------------------------------------------------------- predict in sequence mode


@pytest.fixture(scope="module")
def switching():
    """Linear AR(1) sequences, z_t = 0.8 z_{t-1} + 2 [step >= 4] on z_0 + 0.3 eps: a drug
    switched on at step 4 moves z_0; x = z (2 features) + 0.05 noise. A fitted model with
    per-step labels ctrl / drug."""
    rng = np.random.default_rng(0)
    n, steps = 400, 8
    drug = np.arange(steps) >= 4
    z = np.zeros((n, steps, 2))
    z[:, 0] = rng.normal(size=(n, 2))
    for t in range(1, steps):
        z[:, t] = 0.8 * z[:, t - 1] + 0.3 * rng.normal(size=(n, 2))
        z[:, t, 0] += 2.0 * drug[t]
    x = (z + 0.05 * rng.normal(size=z.shape)).astype(np.float32)
    u = np.where(drug, "drug", "ctrl")[None].repeat(n, 0)
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, n_latent=2, n_lags=1, n_hidden=16,
                                          n_layers=1, transition="linear")
    m.fit(max_steps=1500, batch_size=64, learning_rate=1e-2, progress=False)
    return m, x


def test_predict_samples_domains_and_switches_from_observed_histories(switching):
    m, x = switching
    never = m.predict("ctrl", n_steps=10, n_samples=200, seed=1)  # 2 past training
    assert never["x"].shape == (200, 1, 10, 2) and never["z"].shape == (200, 1, 10, 2)
    assert np.isfinite(never["x"]).all()
    always = m.predict(["drug"], n_steps=10, n_samples=200, seed=1)["x"]
    # the drug moves the late steps of the (unit-identified) sequence; ctrl does not
    gap = np.abs(always[:, 0, 5:].mean(0) - never["x"][:, 0, 5:].mean(0)).max()
    assert gap > 1.0
    # continue the observed histories (4 steps) under the labels they were seen with: the
    # forecast's mean follows the observed later steps far better than ctrl-only forecasts
    u = np.where(np.arange(8) >= 4, "drug", "ctrl")[None].repeat(50, 0)
    seen = m.predict(u, x=x[:50, :4], n_samples=40, seed=2)
    ctrl = m.predict(np.full((50, 8), "ctrl"), x=x[:50, :4], n_samples=40, seed=2)
    assert seen["x"].shape == (40, 50, 8, 2)
    err_seen = np.abs(seen["x"].mean(0)[:, 4:] - x[:50, 4:]).mean()
    err_ctrl = np.abs(ctrl["x"].mean(0)[:, 4:] - x[:50, 4:]).mean()
    assert err_seen < 0.6 * err_ctrl, (err_seen, err_ctrl)
    # the history is held: the first 4 steps of the paths are the encoder's means
    np.testing.assert_allclose(seen["z"][:, :, :4], np.broadcast_to(
        m.get_latent_representation(np.concatenate([x[:50, :4], x[:50, 4:]], 1))[:, :4],
        seen["z"][:, :, :4].shape), rtol=1e-5, atol=1e-5)
    # reproducible by seed
    again = m.predict(u, x=x[:50, :4], n_samples=40, seed=2)
    np.testing.assert_array_equal(again["x"], seen["x"])


def test_predict_errors(switching):
    m, x = switching
    with pytest.raises(CausalZooError, match="Pass `u`"):
        m.predict()
    with pytest.raises(CausalZooError, match=r"Unknown domain label\(s\) \['placebo'\]"):
        m.predict("placebo")
    with pytest.raises(CausalZooError, match=r"codes 0\.\.1"):
        m.predict(5)
    with pytest.raises(CausalZooError, match="n_samples"):
        m.predict("ctrl", n_samples=0)
    with pytest.raises(CausalZooError, match="s >= n_lags"):
        m.predict("ctrl", x=x[:3, :0])
    with pytest.raises(CausalZooError, match="Per-step labels have 8 steps"):
        m.predict(np.full((3, 8), "ctrl"), n_steps=9)
    with pytest.raises(CausalZooError, match="more than the n_steps"):
        m.predict("ctrl", x=x[:3], n_steps=4)
    with pytest.raises(CausalZooError, match=r"one per unit \(3,\)"):
        m.predict(["ctrl", "drug"], x=x[:3, :2])


def test_predict_counts_use_library_sizes(tmp_path):
    """NB sequences: predicted counts are non-negative integers whose totals follow the
    library size (the training median by default, the histories' own with ``x``, or the
    one passed); a model loaded without its data asks for library_size."""
    rng = np.random.default_rng(1)
    x = rng.poisson(5.0, size=(32, 5, 6)).astype(np.float32)
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=np.arange(32) % 2, n_latent=2, n_lags=1,
                                          n_hidden=8, n_layers=1, likelihood="nb")
    m.fit(max_steps=100, batch_size=16, progress=False)
    out = m.predict([0, 1], n_samples=50, seed=0)["x"]
    assert out.shape == (50, 2, 5, 6)
    assert (out >= 0).all() and np.array_equal(out, np.round(out))
    big = m.predict([0, 1], n_samples=50, seed=0, library_size=3000.0)["x"]
    assert big.sum(-1).mean() > 20 * out.sum(-1).mean()
    hist = m.predict(np.arange(4) % 2, x=x[:4, :2] * 10, n_samples=50, seed=0)["x"]
    assert hist.sum(-1).mean() > 5 * out.sum(-1).mean()  # libraries of the histories
    m.save(tmp_path / "nb")
    back = cz.load(tmp_path / "nb")
    with pytest.raises(CausalZooError, match="library_size"):
        back.predict([0, 1])
