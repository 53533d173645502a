"""The SVI engine (fit_svi, EarlyStopping), the aligned ELBO and the two-speed optimiser, on
toy models small enough to compile in a moment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer.elbo import ELBO

from causalzoo import CausalZooError
from causalzoo.inference import AlignedELBO, EarlyStopping, FitResult, fit_svi, two_speed_adam
from causalzoo.inference.svi import as_key

PRIOR_SD = 10.0


def conjugate_model(y, n_cells=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    scale = 1.0 if n_cells is None else n_cells / y.shape[0]
    with numpyro.plate("cells", y.shape[0]), numpyro.handlers.scale(scale=scale):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def conjugate_guide(y, n_cells=None):
    loc = numpyro.param("mu_loc", 0.0)
    log_scale = numpyro.param("mu_log_scale", -1.0)
    numpyro.sample("mu", dist.Normal(loc, jnp.exp(log_scale)))


def y_data(n=100, seed=0):
    return np.random.default_rng(seed).normal(3.0, 1.0, n).astype(np.float32)


def fit(y, **kw):
    kw.setdefault("batch_size", 20)
    kw.setdefault("max_steps", 40)
    kw.setdefault("progress", False)
    return fit_svi(conjugate_model, conjugate_guide, {"y": y}, **kw)


def test_conjugate_posterior_recovered():
    y = y_data()
    n = y.size
    post_prec = 1.0 / PRIOR_SD**2 + n
    post_mean = y.sum() / post_prec
    res = fit(y, max_steps=1500, learning_rate=0.02, seed=0, batch_size=50)
    assert isinstance(res, FitResult)
    assert res.stop_reason == "max_steps" and res.n_steps == 1500
    assert res.losses.shape == (1500,) and np.all(np.isfinite(res.losses))
    np.testing.assert_allclose(res.elbo, -res.losses)
    assert float(res.params["mu_loc"]) == pytest.approx(post_mean, abs=0.06)
    assert float(np.exp(res.params["mu_log_scale"])) == pytest.approx(
        post_prec**-0.5, rel=0.35
    )
    # params come back on the host
    assert isinstance(res.params["mu_loc"], np.ndarray)
    assert res.compile_seconds <= res.run_seconds


def test_same_seed_identical_other_seed_different():
    y = y_data()
    a = fit(y, seed=3)
    b = fit(y, seed=3)
    c = fit(y, seed=4)
    np.testing.assert_array_equal(a.losses, b.losses)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.losses, c.losses)
    assert not np.array_equal(a.params["mu_loc"], c.params["mu_loc"])
    # a typed key works like its int seed
    d = fit(y, seed=jax.random.key(3))
    np.testing.assert_array_equal(a.losses, d.losses)


def test_no_recompilation_and_partial_last_call():
    y = y_data()
    traced = {"n": 0}

    def counting_model(y, n_cells=None):
        traced["n"] += 1
        conjugate_model(y, n_cells)

    def run(max_steps):
        traced["n"] = 0
        res = fit_svi(counting_model, conjugate_guide, {"y": y}, batch_size=20,
                      max_steps=max_steps, steps_per_call=10, progress=False)
        return res, traced["n"]

    one_call, n_one = run(10)
    many_calls, n_many = run(35)  # 3.5 calls: 4 calls, the last with 5 active steps
    assert n_one == n_many  # the model is traced the same number of times: no retracing
    assert n_one <= 4
    assert many_calls.losses.shape == (35,) and many_calls.n_steps == 35
    assert np.all(np.isfinite(many_calls.losses))
    assert one_call.losses.shape == (10,)
    # the first 10 steps coincide (same seed, same first call)
    np.testing.assert_array_equal(one_call.losses, many_calls.losses[:10])


def test_no_recompilation_logged(caplog):
    y = y_data()
    import logging

    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        fit(y, max_steps=35, steps_per_call=10)
    compiled_run_calls = [r for r in caplog.records
                          if r.getMessage().startswith("Compiling jit(run_call)")]
    assert len(compiled_run_calls) == 1, [r.getMessage() for r in compiled_run_calls]


def flat_model(y, n_cells=None):
    numpyro.param("unused", 0.0)
    with numpyro.plate("cells", y.shape[0]):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def flat_guide(y, n_cells=None):
    numpyro.param("unused", 0.0)


def test_early_stopping_on_plateau():
    y = y_data()
    res = fit_svi(flat_model, flat_guide, {"y": y}, batch_size=100, max_steps=500,
                  steps_per_call=10, progress=False,
                  early_stopping=EarlyStopping(patience=20, min_delta=1e-4, min_steps=0))
    assert res.stop_reason == "plateau"
    assert res.n_steps < 500 and res.losses.shape == (res.n_steps,)


def test_early_stopping_min_steps():
    y = y_data()
    res = fit_svi(flat_model, flat_guide, {"y": y}, batch_size=100, max_steps=500,
                  steps_per_call=10, progress=False,
                  early_stopping=EarlyStopping(patience=10, min_delta=1e-4, min_steps=100))
    assert res.stop_reason == "plateau" and res.n_steps >= 100


def map_guide(y, n_cells=None):
    numpyro.sample("mu", dist.Delta(numpyro.param("mu_loc", 0.0)))


def test_early_stopping_does_not_stop_while_improving():
    # a point-mass guide makes the loss deterministic; mu walks from 0 towards 3 at lr 0.01,
    # so the loss falls every call and there is no plateau (a regression test: `best`
    # starting at inf once made `best - min_delta * |best|` NaN, so nothing ever counted as
    # an improvement and the fit stopped after `patience` steps)
    y = y_data()
    res = fit_svi(conjugate_model, map_guide, {"y": y}, batch_size=100, max_steps=120,
                  steps_per_call=10, learning_rate=0.01, progress=False,
                  early_stopping=EarlyStopping(patience=30, min_delta=1e-4, min_steps=0))
    assert np.all(np.diff(res.losses) < 0)  # really improving
    assert res.stop_reason == "max_steps" and res.n_steps == 120


def exploding_model(y, n_cells=None):
    # mu_loc climbs by ~lr per step (Adam); past 5 the log density is NaN
    loc = numpyro.param("mu_loc", 0.0)
    bad = jnp.where(loc > 5.0, jnp.nan, loc)
    with numpyro.plate("cells", y.shape[0]):
        numpyro.sample("y", dist.Normal(bad, 1.0), obs=y)


def exploding_guide(y, n_cells=None):
    numpyro.param("mu_loc", 0.0)


def test_non_finite_loss_stops_with_warning():
    y = np.full(20, 100.0, np.float32)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = fit_svi(exploding_model, exploding_guide, {"y": y}, batch_size=20,
                      max_steps=100, steps_per_call=4, learning_rate=1.0, progress=False)
    assert res.stop_reason == "non_finite"
    assert res.n_steps < 100 and res.n_steps == res.losses.size
    assert np.all(np.isfinite(res.losses))
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(res.params))
    # the kept state is the last whose loss was finite (a step inside a call, rebuilt by
    # re-running the call); the diagnosis names the site whose log-density failed
    assert 0.0 < float(res.params["mu_loc"]) <= 5.0
    assert "sample site 'y'" in res.diagnosis and f"after step {res.n_steps}" in res.diagnosis


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=101), "larger than"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(max_steps=0), "max_steps"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=-1e-3), "learning_rate"),
        (dict(seed="zero"), "seed"),
    ],
)
def test_input_validation(kwargs, match):
    y = y_data()
    with pytest.raises(CausalZooError, match=match):
        fit(y, **kwargs)


def test_steps_per_call_validated():
    with pytest.raises(CausalZooError):
        fit(y_data(), steps_per_call=0)


def test_input_validation_data():
    with pytest.raises(CausalZooError, match="first"):
        fit_svi(conjugate_model, conjugate_guide,
                {"y": np.zeros(10), "z": np.zeros((9, 2))}, batch_size=5, max_steps=5,
                progress=False)
    with pytest.raises(CausalZooError, match="at least one"):
        fit_svi(conjugate_model, conjugate_guide, {}, batch_size=5, max_steps=5,
                progress=False)
    with pytest.raises(CausalZooError):
        EarlyStopping(patience=0)
    with pytest.raises(CausalZooError):
        EarlyStopping(min_delta=-1.0)
    with pytest.raises(CausalZooError):
        as_key(True)


# ---------------------------------------------------------------- AlignedELBO


def aligned_model(x, n_cells=None):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0]]).to_event(1))
    numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def aligned_guide(x, n_cells=None):
    loc = numpyro.param("loc", jnp.zeros(x.shape[0]))
    numpyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
    numpyro.deterministic("alignment_distance", (loc - x) ** 2)


def test_aligned_elbo_zero_is_base_elbo():
    base_cls = AlignedELBO.__mro__[1]
    assert issubclass(base_cls, ELBO)
    x = jnp.arange(5.0)
    params = {"loc": jnp.linspace(-1.0, 1.0, 5)}
    key = jax.random.key(0)
    a = AlignedELBO(0.0).loss(key, params, aligned_model, aligned_guide, x)
    b = base_cls().loss(key, params, aligned_model, aligned_guide, x)
    assert float(a) == float(b)


def test_aligned_elbo_adds_scaled_mean_distance():
    base_cls = AlignedELBO.__mro__[1]
    x = jnp.arange(5.0)
    params = {"loc": jnp.linspace(-1.0, 1.0, 5)}
    key = jax.random.key(0)
    base = float(base_cls().loss(key, params, aligned_model, aligned_guide, x, n_cells=40))
    alpha = 0.3
    got = float(AlignedELBO(alpha).loss(key, params, aligned_model, aligned_guide, x,
                                        n_cells=40))
    distance = np.mean((np.asarray(params["loc"]) - np.asarray(x)) ** 2)
    assert got == pytest.approx(base + alpha * 40 * distance, rel=1e-6)
    # without n_cells the number of cells in the batch is used
    base = float(base_cls().loss(key, params, aligned_model, aligned_guide, x))
    got = float(AlignedELBO(alpha).loss(key, params, aligned_model, aligned_guide, x))
    assert got == pytest.approx(base + alpha * 5 * distance, rel=1e-6)
    # a guide without the site: no penalty
    got = float(AlignedELBO(alpha, site="nope").loss(key, params, aligned_model,
                                                     aligned_guide, x))
    assert got == pytest.approx(base, rel=1e-6)


# ---------------------------------------------------------------- two_speed_adam


def test_two_speed_adam_labels():
    params = {
        "decoder$params": {"w": jnp.zeros(3)},
        "log_inverse_dispersion": jnp.zeros(2),
        "mask_logits": jnp.zeros(2),
        "effect_loc": jnp.zeros(2),
        "scm_weights_map": jnp.zeros(1),
    }
    opt = two_speed_adam(1e-3, 1e-1)
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    # Adam's first step moves every coordinate by (minus) its learning rate
    np.testing.assert_allclose(new["decoder$params"]["w"], -1e-3, rtol=1e-4)
    np.testing.assert_allclose(new["log_inverse_dispersion"], -1e-3, rtol=1e-4)
    for name in ("mask_logits", "effect_loc", "scm_weights_map"):
        np.testing.assert_allclose(new[name], -1e-1, rtol=1e-4)
    # custom marker
    opt = two_speed_adam(1e-3, 1e-1, network_marker="_map")
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["scm_weights_map"], -1e-3, rtol=1e-4)
    np.testing.assert_allclose(new["decoder$params"]["w"], -1e-1, rtol=1e-4)


def test_cpu_compiler_options_passed_only_when_accepted(monkeypatch):
    # The engine's compiled call leaves reductions to XLA's fusion on CPU (a per-jit option,
    # docs/performance.md). An option this jaxlib does not know is dropped, never an error.
    from causalzoo.inference import svi as svi_mod

    if jax.default_backend() == "cpu" and svi_mod._cpu_options_accepted():
        assert svi_mod._compiler_options(None) == svi_mod._CPU_COMPILER_OPTIONS
    y = y_data()
    reference = fit(y, seed=1)
    monkeypatch.setattr(svi_mod, "_CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "1"})
    svi_mod._cpu_options_accepted.cache_clear()
    try:
        assert svi_mod._compiler_options(None) is None
        without = fit(y, seed=1)
    finally:
        svi_mod._cpu_options_accepted.cache_clear()
    # same model, same seed, other fusion: equal up to float rounding
    np.testing.assert_allclose(without.losses, reference.losses, rtol=1e-5)


def test_nb_vae_fit_same_seed_bit_identical():
    # The fast NB log-density (custom derivative) inside the compiled engine: same seed, same
    # losses and parameters bit for bit; loss finite and decreasing.
    from causalzoo.blocks.likelihoods import NB

    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(0.8, 3.0 / 0.8, (64, 30))).astype(np.float32)
    data = {"x": x, "library_size": np.maximum(x.sum(-1), 1.0)}
    lik = NB()

    def model(x, library_size, n_cells=None):
        w = numpyro.param("w", jnp.zeros((2, x.shape[-1])))
        with numpyro.plate("cells", x.shape[0]), numpyro.handlers.scale(
            scale=n_cells / x.shape[0]
        ):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            numpyro.sample("x", lik(z @ w, library_size).to_event(1), obs=x)

    def guide(x, library_size, n_cells=None):
        a = numpyro.param("a", jnp.zeros((x.shape[-1], 2)))
        with numpyro.plate("cells", x.shape[0]):
            numpyro.sample("z", dist.Normal(jnp.log1p(x) @ a / x.shape[-1], 0.5).to_event(1))

    kw = {"batch_size": 16, "max_steps": 60, "learning_rate": 0.05, "progress": False, "seed": 2}
    a = fit_svi(model, guide, data, **kw)
    b = fit_svi(model, guide, data, **kw)
    np.testing.assert_array_equal(a.losses, b.losses)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert np.all(np.isfinite(a.losses))
    assert a.losses[-10:].mean() < a.losses[:10].mean()
