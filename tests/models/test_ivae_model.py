"""The raw iVAE model and guide under NumPyro's handlers, the registry entry, the likelihood
options and configuration validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import Predictive, TraceMeanField_ELBO
from numpyro.infer.util import log_density

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.models.ivae import IVAEConfig, ivae_encode, ivae_guide, ivae_model, ivae_prior

K, P, M, N = 2, 4, 3, 12  # latents, observed dims, segments, points
CFG = IVAEConfig(n_latent=K, n_hidden=8, n_layers=1)


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    u = np.eye(M, dtype=np.float32)[np.arange(N) % M]
    x = rng.normal(size=(N, P)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(u)


def seeded_trace(fn, seed=0, **kwargs):
    return handlers.trace(handlers.seed(fn, seed)).get_trace(**kwargs)


def test_model_trace_sites_plates_and_seeds():
    x, u = make_data()
    tr = seeded_trace(ivae_model, x=x, u=u, config=CFG)
    shapes = {k: v["value"].shape for k, v in tr.items() if v["type"] == "sample"}
    assert shapes == {"z": (N, K), "x": (N, P)}
    assert tr["x"]["is_observed"]
    np.testing.assert_array_equal(tr["x"]["value"], x)
    assert {k for k, v in tr.items() if v["type"] == "param"} == {"prior$params", "decoder$params"}
    assert {f.name for f in tr["z"]["cond_indep_stack"]} == {"cells"}
    same = seeded_trace(ivae_model, x=x, u=u, config=CFG)
    other = seeded_trace(ivae_model, seed=1, x=x, u=u, config=CFG)
    np.testing.assert_array_equal(tr["z"]["value"], same["z"]["value"])
    assert not np.allclose(tr["z"]["value"], other["z"]["value"])


def test_prior_depends_on_u_and_is_factorised():
    x, u = make_data()
    tr = seeded_trace(ivae_model, x=x, u=u, config=CFG)
    prior = tr["z"]["fn"]
    assert prior.event_shape == (K,) and prior.batch_shape == (N,)
    # factorised: a diagonal covariance
    cov = np.asarray(prior.covariance_matrix)
    np.testing.assert_array_equal(cov * (1 - np.eye(K)), 0.0)
    # Points of the same segment share the prior; different segments do not.
    loc = np.asarray(prior.loc)
    np.testing.assert_allclose(loc[0], loc[M])
    np.testing.assert_allclose(cov[0], cov[M])
    assert not np.allclose(np.diagonal(cov[0]), np.diagonal(cov[1]))
    # Its density is the product of univariate normals.
    z = tr["z"]["value"]
    sd = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    np.testing.assert_allclose(
        prior.log_prob(z), dist.Normal(loc, sd).log_prob(z).sum(-1), rtol=1e-5
    )
    # Variance-only prior: zero means.
    tr0 = seeded_trace(ivae_model, x=x, u=u, config=IVAEConfig(n_latent=K, n_hidden=8,
                                                                n_layers=1, prior_mean=False))
    np.testing.assert_array_equal(np.asarray(tr0["z"]["fn"].loc), 0.0)


def test_minibatch_scaling_multiplies_the_point_log_densities():
    x, u = make_data()
    full = seeded_trace(ivae_model, x=x, u=u, config=CFG)
    scaled = seeded_trace(ivae_model, x=x, u=u, n_cells=10 * N, config=CFG)
    assert scaled["x"]["scale"] == pytest.approx(10.0)
    assert full["x"]["scale"] is None


def test_condition_do_and_predictive():
    x, u = make_data()
    z = jnp.ones((N, K))
    # condition: the latent is observed and scored
    tr = seeded_trace(handlers.condition(ivae_model, {"z": z}), u=u, n_observed=P, config=CFG)
    assert tr["z"]["is_observed"]
    np.testing.assert_array_equal(tr["z"]["value"], z)
    # do: z is set without its prior term; x depends on the intervened value
    model_do = handlers.do(ivae_model, {"z": z})
    tr_do = seeded_trace(model_do, u=u, n_observed=P, config=CFG)
    # downstream of the intervention, x is decoded from the set value (as under condition,
    # same seed, same networks), not from the natural draw of z that do leaves in the trace
    np.testing.assert_allclose(tr_do["x"]["fn"].mean, tr["x"]["fn"].mean, rtol=1e-6)
    assert not np.allclose(tr_do["z"]["value"], z)
    natural = seeded_trace(ivae_model, u=u, n_observed=P, config=CFG)
    assert not np.allclose(natural["x"]["fn"].mean, tr_do["x"]["fn"].mean)
    tr_do2 = seeded_trace(handlers.do(ivae_model, {"z": -z}), u=u, n_observed=P, config=CFG)
    assert not np.allclose(tr_do["x"]["fn"].mean, tr_do2["x"]["fn"].mean)
    # Predictive: prior predictive draws, and posterior predictive through the guide
    prior = Predictive(ivae_model, num_samples=3)(
        jax.random.key(0), u=u, n_observed=P, config=CFG
    )
    assert prior["z"].shape == (3, N, K) and prior["x"].shape == (3, N, P)
    guide_draws = Predictive(ivae_guide, num_samples=2)(jax.random.key(1), x=x, u=u, config=CFG)
    assert guide_draws["z"].shape == (2, N, K)


def test_log_density_and_elbo_are_finite_and_trainable():
    x, u = make_data()
    tr = seeded_trace(ivae_model, x=x, u=u, config=CFG)
    params = {k: v["value"] for k, v in tr.items() if v["type"] == "param"}
    lp, _ = log_density(ivae_model, (), {"x": x, "u": u, "config": CFG},
                        {**params, "z": tr["z"]["value"]})
    assert np.isfinite(float(lp))
    gtr = seeded_trace(ivae_guide, x=x, u=u, config=CFG)
    gparams = {k: v["value"] for k, v in gtr.items() if v["type"] == "param"}
    loss = TraceMeanField_ELBO().loss(
        jax.random.key(0), {**params, **gparams}, ivae_model, ivae_guide, x=x, u=u, config=CFG
    )
    assert np.isfinite(float(loss))


def test_encoder_sees_x_and_u_and_gives_full_or_diagonal_factors():
    x, u = make_data()
    loc, tril = handlers.seed(ivae_encode, 0)(x, u, CFG)
    assert loc.shape == (N, K) and tril.shape == (N, K, K)
    tril = np.asarray(tril)
    np.testing.assert_array_equal(np.triu(tril, 1), 0.0)
    assert np.all(np.diagonal(tril, axis1=-2, axis2=-1) > 0)
    assert np.any(np.tril(tril, -1) != 0)  # full covariance by default
    loc_u, _ = handlers.seed(ivae_encode, 0)(x, jnp.roll(u, 1, axis=0), CFG)
    assert not np.allclose(loc, loc_u)
    diag_cfg = IVAEConfig(n_latent=K, n_hidden=8, n_layers=1, posterior="diagonal")
    _, tril_d = handlers.seed(ivae_encode, 0)(x, u, diag_cfg)
    np.testing.assert_array_equal(np.tril(np.asarray(tril_d), -1), 0.0)
    gtr = seeded_trace(ivae_guide, x=x, u=u, config=CFG)
    assert gtr["z"]["fn"].event_shape == (K,) and gtr["z"]["value"].shape == (N, K)


def test_observation_models():
    x, u = make_data()
    fixed = seeded_trace(ivae_model, x=x, u=u, config=CFG)["x"]["fn"].base_dist
    assert np.allclose(fixed.scale, 0.1)
    learned_cfg = IVAEConfig(n_latent=K, n_hidden=8, n_layers=1, observation_scale=None)
    learned = seeded_trace(ivae_model, x=x, u=u, config=learned_cfg)
    assert "log_noise_scale" in learned
    counts = jnp.asarray(np.random.default_rng(0).poisson(3.0, (N, P)), jnp.float32)
    nb_cfg = IVAEConfig(n_latent=K, n_hidden=8, n_layers=1, likelihood="nb")
    tr = seeded_trace(ivae_model, x=counts, u=u, config=nb_cfg)
    assert "log_inverse_dispersion" in tr
    assert np.isfinite(float(tr["x"]["fn"].log_prob(counts).sum()))
    with pytest.raises(CausalZooError, match="library_size"):
        seeded_trace(ivae_model, u=u, n_observed=P, config=nb_cfg)


def test_registry_entry():
    spec = cz.models.get_model("ivae")
    assert spec.model is ivae_model and spec.guide is ivae_guide
    assert spec.load_generator() is cz.identifiability.generators.ivae
    assert spec.load_user_class() is cz.IVAE
    assert "permutation" in spec.identifiability


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_latent": 0}, "n_latent"),
        ({"n_layers": -1}, "n_layers"),
        ({"observation_scale": 0.0}, "observation_scale"),
        ({"activation": "swish"}, "activation='swish'"),
        ({"likelihood": "laplace"}, "Unknown likelihood"),
        ({"posterior": "lowrank"}, "posterior='lowrank'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(CausalZooError, match=match):
        IVAEConfig(**kwargs)


def test_input_errors():
    x, u = make_data()
    with pytest.raises(CausalZooError, match="auxiliary variable"):
        seeded_trace(ivae_model, x=x, config=CFG)
    with pytest.raises(CausalZooError, match="2-D"):
        seeded_trace(ivae_model, x=x, u=u[:, 0], config=CFG)
    with pytest.raises(CausalZooError, match="n_observed"):
        seeded_trace(ivae_model, u=u, config=CFG)
    with pytest.raises(CausalZooError, match="observed `x`"):
        seeded_trace(ivae_guide, u=u, config=CFG)


def test_prior_block_alone():
    _, u = make_data()
    prior = handlers.seed(ivae_prior, 0)(u, CFG)
    assert prior.batch_shape == (N,) and prior.event_shape == (K,)
