"""The raw sparse perturbation model and guide under NumPyro's handlers, the registry, the
SAMS-VAE reduction, likelihood and sparsity swaps, custom networks and config validation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from flax import nnx
from numpyro import handlers
from numpyro.infer import Predictive
from numpyro.infer.util import log_density

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.blocks.nn import MLP
from causalzoo.inference import AlignedELBO
from causalzoo.models.sparse_perturbation import (
    SparsePerturbationConfig,
    cells_plate,
    global_guide,
    sparse_perturbation_guide,
    sparse_perturbation_model,
)

T, K_INV, K_RESP, G = 3, 2, 3, 8
N = 24  # one cell count throughout: eager JAX compiles every op once per shape
SMALL = dict(n_latent_invariant=K_INV, n_latent_response=K_RESP, n_hidden=16, n_layers=1)
CFG = SparsePerturbationConfig(**SMALL)


def make_data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(4.0, (n, G)).astype(np.float32)
    x[:, 0] += 1.0  # no empty cells
    which = np.arange(n) % (T + 1)  # control, P0, P1, P2, control, ...
    design = np.eye(T + 1, dtype=np.float32)[which][:, 1:]
    return jnp.asarray(x), jnp.asarray(design)


def seeded_trace(fn, seed=0, **kwargs):
    return handlers.trace(handlers.seed(fn, seed)).get_trace(**kwargs)


# ---------------------------------------------------------------- seed / trace


def test_model_trace_sites_and_shapes():
    x, design = make_data()
    n = x.shape[0]
    tr = seeded_trace(sparse_perturbation_model, x=x, design=design, config=CFG)
    shapes = {k: v["value"].shape for k, v in tr.items() if v["type"] == "sample"}
    assert shapes == {
        "effect": (T, K_RESP),
        "mask": (T, K_RESP),
        "scm_weights": (K_RESP * (K_RESP - 1) // 2,),
        "invariant_coupling": (K_RESP, K_INV),
        "z_inv": (n, K_INV),
        "z_resp": (n, K_RESP),
        "x": (n, G),
    }
    assert tr["x"]["is_observed"]
    np.testing.assert_array_equal(tr["x"]["value"], x)
    params = {k for k, v in tr.items() if v["type"] == "param"}
    assert params == {"decoder$params", "log_inverse_dispersion"}
    assert {f.name for f in tr["z_inv"]["cond_indep_stack"]} == {"cells"}
    assert {f.name for f in tr["mask"]["cond_indep_stack"]} == {"perturbations"}
    # deterministic given the seed
    tr2 = seeded_trace(sparse_perturbation_model, x=x, design=design, config=CFG)
    np.testing.assert_array_equal(tr["z_resp"]["value"], tr2["z_resp"]["value"])
    tr3 = seeded_trace(sparse_perturbation_model, seed=1, x=x, design=design, config=CFG)
    assert not np.allclose(tr["z_resp"]["value"], tr3["z_resp"]["value"])


def test_model_returns_and_samples_without_x():
    _, design = make_data()
    out = handlers.seed(sparse_perturbation_model, 0)(
        design=design, library_size=jnp.full(N, 50.0), n_genes=G, config=CFG
    )
    assert out["x"].shape == (N, G) and out["z_resp"].shape == (N, K_RESP)
    assert out["shift"].shape == (T, K_RESP)
    assert np.all(np.asarray(out["x"]) >= 0)


def test_model_input_errors():
    x, design = make_data()
    with pytest.raises(CausalZooError, match="design"):
        seeded_trace(sparse_perturbation_model, x=x, config=CFG)
    with pytest.raises(CausalZooError, match="n_genes"):
        seeded_trace(sparse_perturbation_model, design=design, config=CFG)
    with pytest.raises(CausalZooError, match="library_size"):
        seeded_trace(sparse_perturbation_model, design=design, n_genes=G, config=CFG)
    with pytest.raises(CausalZooError, match="observed"):
        seeded_trace(sparse_perturbation_guide, design=design, config=CFG)


def test_guide_trace_matches_model_latents():
    x, design = make_data()
    mtr = seeded_trace(sparse_perturbation_model, x=x, design=design, config=CFG)
    gtr = seeded_trace(sparse_perturbation_guide, x=x, design=design, config=CFG)
    latent = {k for k, v in mtr.items() if v["type"] == "sample" and not v["is_observed"]}
    gsamples = {k for k, v in gtr.items() if v["type"] == "sample"}
    assert gsamples == latent
    for k in latent:
        assert gtr[k]["value"].shape == mtr[k]["value"].shape, k
    params = {k for k, v in gtr.items() if v["type"] == "param"}
    assert {"encoder_invariant$params", "encoder_response$params", "mask_logits",
            "effect_loc", "effect_log_scale", "scm_weights_map",
            "invariant_coupling_map"} <= params
    assert "alignment_distance" not in gtr
    gtr = seeded_trace(sparse_perturbation_guide, x=x, design=design, config=CFG,
                       x_control=x[::-1])
    dist_ = np.asarray(gtr["alignment_distance"]["value"])
    assert dist_.shape == (x.shape[0],) and np.all(dist_ >= 0)
    # global_guide alone has the global sites only
    ggtr = seeded_trace(global_guide, n_perturbations=T, config=CFG)
    assert {k for k, v in ggtr.items() if v["type"] == "sample"} == {
        "effect", "mask", "scm_weights", "invariant_coupling"
    }


def test_cells_plate_scales_minibatch():
    x, design = make_data()
    tr = seeded_trace(sparse_perturbation_model, x=x, design=design, config=CFG, n_cells=4 * N)
    assert tr["z_inv"]["scale"] == pytest.approx(4.0)
    assert tr["x"]["scale"] == pytest.approx(4.0)
    assert tr["effect"]["scale"] is None or tr["effect"]["scale"] == 1.0

    def f():
        with cells_plate(4) as plate:
            numpyro.sample("a", dist.Normal(0, 1))
        return plate

    tr = seeded_trace(f)
    assert tr["a"]["value"].shape == (4,) and tr["a"]["scale"] in (None, 1.0)


# ---------------------------------------------------------------- condition / do / substitute


def test_condition_sets_values():
    x, design = make_data()
    n = x.shape[0]
    z_inv = jnp.asarray(np.random.default_rng(1).normal(size=(n, K_INV)), jnp.float32)
    mask = jnp.asarray(np.eye(T, K_RESP), jnp.float32)
    model = handlers.condition(sparse_perturbation_model, {"z_inv": z_inv, "mask": mask})
    tr = seeded_trace(model, x=x, design=design, config=CFG)
    np.testing.assert_array_equal(tr["z_inv"]["value"], z_inv)
    np.testing.assert_array_equal(tr["mask"]["value"], mask)
    assert tr["z_inv"]["is_observed"] and tr["mask"]["is_observed"]
    # the conditioned mask is what the shift uses
    out = handlers.seed(model, 0)(x=x, design=design, config=CFG)
    np.testing.assert_allclose(out["shift"], mask * tr["effect"]["value"])


def _z_resp(model, design, seed=0):
    n = design.shape[0]
    tr = seeded_trace(model, seed=seed, design=design, library_size=jnp.full(n, 100.0),
                      n_genes=G, config=CFG)
    return np.asarray(tr["z_resp"]["value"])


def test_do_mask_zero_removes_design_dependence():
    n = 2000
    control = jnp.zeros((n, T))
    perturbed = jnp.zeros((n, T)).at[:, 0].set(1.0).at[:, 2].set(1.0)
    effect = jnp.full((T, K_RESP), 3.0)
    base = handlers.condition(sparse_perturbation_model, {"effect": effect})
    intervened = handlers.do(base, {"mask": jnp.zeros((T, K_RESP))})
    # same seed: the cell noise is the same whatever the design, so z_resp is identical
    np.testing.assert_allclose(
        _z_resp(intervened, perturbed), _z_resp(intervened, control), atol=1e-5
    )
    # across seeds the means agree statistically
    z_p, z_c = _z_resp(intervened, perturbed, 1), _z_resp(intervened, control, 2)
    se = np.sqrt(z_p.var(0) / n + z_c.var(0) / n)
    assert np.all(np.abs(z_p.mean(0) - z_c.mean(0)) < 5 * se)
    # the prior draw of the mask is still in the trace (do splits the node); z_resp ignores it
    tr = seeded_trace(intervened, design=perturbed, library_size=jnp.full(n, 100.0),
                      n_genes=G, config=CFG)
    assert tr["mask"]["value"].shape == (T, K_RESP) and not tr["mask"]["is_observed"]
    # negative control: all-on mask shifts the perturbed cells by (I - W)^-1 (e_0 + e_2)
    on = handlers.do(base, {"mask": jnp.ones((T, K_RESP))})
    z_p, z_c = _z_resp(on, perturbed, 1), _z_resp(on, control, 2)
    tr = seeded_trace(on, seed=1, design=perturbed, library_size=jnp.full(n, 100.0),
                      n_genes=G, config=CFG)
    w = np.zeros((K_RESP, K_RESP))
    w[np.tril_indices(K_RESP, -1)] = np.asarray(tr["scm_weights"]["value"])
    expected = np.linalg.solve(np.eye(K_RESP) - w, np.full(K_RESP, 6.0))
    np.testing.assert_allclose(
        z_p.mean(0) - z_c.mean(0), expected, atol=float(6 * se.max() + 0.1)
    )


def test_substitute_values_and_params():
    x, design = make_data()
    effect = jnp.arange(T * K_RESP, dtype=jnp.float32).reshape(T, K_RESP)
    tr0 = seeded_trace(sparse_perturbation_model, x=x, design=design, config=CFG)
    model = handlers.substitute(
        sparse_perturbation_model,
        {"effect": effect, "log_inverse_dispersion": jnp.full(G, -1.0)},
    )
    tr = seeded_trace(model, x=x, design=design, config=CFG)
    np.testing.assert_array_equal(tr["effect"]["value"], effect)
    assert not tr["effect"]["is_observed"]
    np.testing.assert_array_equal(tr["log_inverse_dispersion"]["value"], -1.0)
    # substituted network parameters change the likelihood
    dec = jax.tree.map(lambda a: a * 0.0, tr0["decoder$params"]["value"])
    model = handlers.substitute(sparse_perturbation_model, {"decoder$params": dec})
    tr = seeded_trace(model, x=x, design=design, config=CFG)
    log_mean = np.asarray(tr["x"]["fn"].base_dist.log_mean)
    # zero decoder: uniform softmax, mean = library / G
    np.testing.assert_allclose(
        np.exp(log_mean), np.broadcast_to(np.asarray(x.sum(-1))[:, None] / G, log_mean.shape),
        rtol=1e-5,
    )


# ---------------------------------------------------------------- Predictive


def test_prior_predictive():
    _, design = make_data()
    pred = Predictive(sparse_perturbation_model, num_samples=3)(
        jax.random.key(0), design=design, library_size=jnp.full(N, 80.0), n_genes=G,
        config=CFG,
    )
    assert pred["x"].shape == (3, N, G)
    assert pred["z_resp"].shape == (3, N, K_RESP)
    assert pred["mask"].shape == (3, T, K_RESP)
    assert np.all(np.asarray(pred["x"]) >= 0)
    # independent draws across samples
    assert not np.allclose(pred["z_inv"][0], pred["z_inv"][1])

def _eager_svi(cfg, x, design, *, learning_rate, n_steps):
    """A few eager SVI steps (no jit: one compilation per configuration would cost more than
    these steps); returns the losses and the parameters."""
    svi = numpyro.infer.SVI(
        sparse_perturbation_model, sparse_perturbation_guide, numpyro.optim.Adam(learning_rate),
        AlignedELBO(), config=cfg,
    )
    state = svi.init(jax.random.key(0), x=x, design=design)
    losses = []
    for _ in range(n_steps):
        state, loss = svi.update(state, x=x, design=design)
        losses.append(float(loss))
    return np.array(losses), svi.get_params(state)


@pytest.fixture(scope="module")
def short_fit():
    """A few eager SVI steps (shares its compiled ops with ``test_few_svi_steps``)."""
    x, design = make_data()
    losses, params = _eager_svi(CFG, x, design, learning_rate=1e-2, n_steps=5)
    return x, design, losses, params


def test_posterior_predictive(short_fit):
    x, design, losses, params = short_fit
    assert np.all(np.isfinite(losses))
    n = x.shape[0]
    post = Predictive(sparse_perturbation_guide, params=params, num_samples=3)(
        jax.random.key(1), x=x, design=design, config=CFG
    )
    assert post["z_inv"].shape == (3, n, K_INV)
    assert post["mask"].shape == (3, T, K_RESP)
    pp = Predictive(sparse_perturbation_model, posterior_samples=post, params=params)(
        jax.random.key(2), design=design, library_size=x.sum(-1), n_genes=G, config=CFG
    )
    assert pp["x"].shape == (3, n, G)
    assert set(pp) == {"x"}  # the latents were given, not predicted
    assert np.all(np.asarray(pp["x"]) >= 0)
    # one-step form: guide + params
    pp2 = Predictive(
        sparse_perturbation_model, guide=sparse_perturbation_guide, params=params,
        num_samples=2, return_sites=["z_resp", "x"],
    )(jax.random.key(3), x=x, design=design, config=CFG)
    assert pp2["z_resp"].shape == (2, n, K_RESP)


# ---------------------------------------------------------------- registry


def test_registry():
    names = cz.models.list_models()
    assert "sparse_perturbation" in names and names == sorted(names)
    spec = cz.models.get_model("sparse_perturbation")
    assert spec.model is sparse_perturbation_model
    assert spec.guide is sparse_perturbation_guide
    assert spec.config_class is SparsePerturbationConfig
    assert set(spec.plates) == {"cells", "perturbations"}
    gen = spec.load_generator()
    assert callable(gen)
    data = gen(n_perturbations=2, n_cells_per_condition=3, n_genes=5)
    assert data.x.shape == (9, 5)
    assert spec.load_user_class() is cz.SparsePerturbationVAE
    with pytest.raises(CausalZooError, match="No zoo model"):
        cz.models.get_model("not_a_model")


# ---------------------------------------------------------------- SAMS-VAE reduction


def _decoder_fn(params, in_features, out_features, n_hidden, n_layers):
    """The decoder as a plain function of its input, from the model's parameter pytree."""
    module = MLP(in_features, out_features, n_hidden=n_hidden, n_layers=n_layers,
                 rngs=nnx.Rngs(123))
    graphdef, state = nnx.split(module)
    nnx.replace_by_pure_dict(state, params)
    net = nnx.merge(graphdef, state)
    return net


def sams_vae_model(x, design, *, decoder, log_theta, k_inv, k_resp, p, s):
    """SAMS-VAE (Bereket & Karaletsos 2023), written independently of causalzoo."""
    n, t = design.shape
    with numpyro.plate("perturbations", t):
        e = numpyro.sample("effect", dist.Normal(0.0, s).expand([k_resp]).to_event(1))
        m = numpyro.sample("mask", dist.Bernoulli(probs=p).expand([k_resp]).to_event(1))
    with numpyro.plate("cells", n):
        z_basal = numpyro.sample(
            "z_basal", dist.Normal(0.0, 1.0).expand([k_inv + k_resp]).to_event(1)
        )
        z = z_basal + jnp.concatenate([jnp.zeros((n, k_inv)), design @ (e * m)], axis=-1)
        rate = x.sum(-1, keepdims=True) * jax.nn.softmax(decoder(z), axis=-1)
        numpyro.sample(
            "x", dist.NegativeBinomial2(rate, jnp.exp(log_theta)).to_event(1), obs=x
        )


def _fixed_latents(n, seed=0):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return {
        "effect": rng.normal(0, 0.7, (T, K_RESP)).astype(f32),
        "mask": (rng.random((T, K_RESP)) < 0.5).astype(f32),
        "z_inv": rng.normal(size=(n, K_INV)).astype(f32),
        "z_resp": rng.normal(size=(n, K_RESP)).astype(f32),
        "scm_weights": rng.normal(0, 0.8, (K_RESP * (K_RESP - 1) // 2,)).astype(f32),
        "invariant_coupling": rng.normal(0, 0.8, (K_RESP, K_INV)).astype(f32),
    }


def test_sams_vae_reduction():
    x, design = make_data()
    n = x.shape[0]
    cfg = SparsePerturbationConfig.sams_vae(**SMALL, mask_probability=0.3, effect_scale=0.7)
    assert cfg.scm_graph == "none" and not cfg.couple_invariant and cfg.alignment == 0.0
    tr = seeded_trace(sparse_perturbation_model, x=x, design=design, config=cfg)
    assert "scm_weights" not in tr and "invariant_coupling" not in tr
    # non-trivial network and dispersion parameters
    dec = jax.tree.map(
        lambda a: a + 0.3 * jax.random.normal(jax.random.key(5), a.shape),
        tr["decoder$params"]["value"],
    )
    log_theta = jnp.linspace(-1.0, 2.0, G)
    lat = _fixed_latents(n)
    params = {"decoder$params": dec, "log_inverse_dispersion": log_theta,
              **{k: lat[k] for k in ("effect", "mask", "z_inv", "z_resp")}}
    ours, _ = log_density(sparse_perturbation_model, (), {"x": x, "design": design,
                                                          "config": cfg}, params)

    shift = np.asarray(design) @ (lat["effect"] * lat["mask"])
    z_basal = np.concatenate([lat["z_inv"], lat["z_resp"] - shift], axis=1)
    decoder = _decoder_fn(dec, K_INV + K_RESP, G, 16, 1)
    ref_kwargs = dict(decoder=decoder, log_theta=log_theta, k_inv=K_INV, k_resp=K_RESP,
                      p=0.3, s=0.7)
    ref, _ = log_density(
        sams_vae_model, (x, design), ref_kwargs,
        {"effect": lat["effect"], "mask": lat["mask"], "z_basal": z_basal},
    )
    assert np.isfinite(float(ours))
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)

    # negative control: the default configuration with non-zero W and B differs
    params_full = {**params, "scm_weights": lat["scm_weights"],
                   "invariant_coupling": lat["invariant_coupling"]}
    full_cfg = dataclasses.replace(cfg, scm_graph="lower_triangular", couple_invariant=True)
    other, _ = log_density(sparse_perturbation_model, (), {"x": x, "design": design,
                                                           "config": full_cfg}, params_full)
    assert abs(float(other) - float(ref)) > 1.0
    # ... and W = 0, B = 0 in the default configuration recovers SAMS-VAE up to the (MAP)
    # prior terms of W and B
    zero = {**params, "scm_weights": np.zeros_like(lat["scm_weights"]),
            "invariant_coupling": np.zeros_like(lat["invariant_coupling"])}
    same, _ = log_density(sparse_perturbation_model, (), {"x": x, "design": design,
                                                          "config": full_cfg}, zero)
    prior_wb = dist.Normal(0, 1).log_prob(jnp.zeros(K_RESP * (K_RESP - 1) // 2 + K_RESP * K_INV))
    np.testing.assert_allclose(float(same) - float(prior_wb.sum()), float(ref), rtol=1e-5)


# ---------------------------------------------------------------- likelihoods, priors, networks


@pytest.mark.parametrize(
    "likelihood,sparsity",
    [("nb", "bernoulli"), ("zinb", "bernoulli"), ("poisson", "bernoulli"),
     ("gaussian", "bernoulli"), ("nb", "horseshoe")],
)
def test_few_svi_steps(likelihood, sparsity):
    x, design = make_data()
    if likelihood == "gaussian":
        x = jnp.log1p(x)
    cfg = SparsePerturbationConfig(**SMALL, likelihood=likelihood, sparsity=sparsity)
    losses, params = _eager_svi(cfg, x, design, learning_rate=1e-3, n_steps=3)
    assert np.all(np.isfinite(losses))
    mask_p = np.asarray(cfg.sparsity_block.mask_probability(params))
    assert mask_p.shape == (T, K_RESP)
    assert np.all((mask_p >= 0) & (mask_p <= 1))
    if sparsity == "horseshoe":
        assert "mask_logits" not in params and "global_shrinkage_loc" in params


def test_custom_decoder_network():
    calls = []

    def factory(in_features, out_features, *, rngs):
        calls.append((in_features, out_features))
        return nnx.Linear(in_features, out_features, rngs=rngs)

    cfg = SparsePerturbationConfig(**SMALL, likelihood="zinb", networks={"decoder": factory})
    x, design = make_data()
    cov = jnp.tile(jnp.array([[1.0, 0.0]]), (N, 1))
    tr = seeded_trace(sparse_perturbation_model, x=x, design=design, covariates=cov, config=cfg)
    assert calls == [(K_INV + K_RESP + 2, 2 * G)]
    dec = tr["decoder$params"]["value"]
    assert set(dec) == {"kernel", "bias"}  # a Linear, not the default MLP
    assert dec["kernel"].shape == (K_INV + K_RESP + 2, 2 * G)
    # the encoders keep the default MLP
    gtr = seeded_trace(sparse_perturbation_guide, x=x, design=design, covariates=cov,
                       config=cfg)
    assert "hidden" in gtr["encoder_invariant$params"]["value"]
    assert len(calls) == 1
    # the model really uses it: zero kernel and bias -> uniform rates
    zero = jax.tree.map(jnp.zeros_like, dec)
    tr = seeded_trace(handlers.substitute(sparse_perturbation_model, {"decoder$params": zero}),
                      x=x, design=design, covariates=cov, config=cfg)
    np.testing.assert_allclose(
        np.exp(np.asarray(tr["x"]["fn"].base_dist.log_mean)),
        np.broadcast_to(np.asarray(x.sum(-1))[:, None] / G, (N, G)), rtol=1e-5,
    )
    # a custom network makes the config unsaveable as plain data
    with pytest.raises(CausalZooError, match="custom networks"):
        cfg.to_dict()


def test_config_validation():
    with pytest.raises(CausalZooError, match="n_latent_response"):
        SparsePerturbationConfig(n_latent_response=0)
    with pytest.raises(CausalZooError, match="n_latent_invariant"):
        SparsePerturbationConfig(n_latent_invariant=1.5)
    with pytest.raises(CausalZooError, match="n_layers"):
        SparsePerturbationConfig(n_layers=-1)
    with pytest.raises(CausalZooError, match="Unknown network"):
        SparsePerturbationConfig(networks={"encoder": lambda *a, **k: None})
    with pytest.raises(CausalZooError, match="alignment"):
        SparsePerturbationConfig(alignment=-0.1)
    with pytest.raises(CausalZooError, match="likelihood"):
        SparsePerturbationConfig(likelihood="lognormal")
    with pytest.raises(CausalZooError):
        SparsePerturbationConfig(sparsity="lasso")
    with pytest.raises(CausalZooError):
        SparsePerturbationConfig(mask_probability=1.0)
    with pytest.raises(CausalZooError, match="SCM graph"):
        SparsePerturbationConfig(scm_graph="dense")


def test_config_dict_round_trip():
    cfg = SparsePerturbationConfig(**SMALL, likelihood="poisson", sparsity="horseshoe",
                                   alignment=0.5)
    d = cfg.to_dict()
    assert d["likelihood"] == "poisson" and "networks" not in d
    assert SparsePerturbationConfig.from_dict(d) == cfg
    with pytest.raises(CausalZooError, match="unknown fields"):
        SparsePerturbationConfig.from_dict({**d, "bogus": 1})


def test_mask_probability_config_is_used():
    cfg = SparsePerturbationConfig(**SMALL, mask_probability=0.05, effect_scale=0.3)
    block = cfg.sparsity_block
    assert block.probability == 0.05 and block.effect_scale == 0.3


def test_sparsity_name_case_keeps_mask_probability():
    cfg = SparsePerturbationConfig(**SMALL, sparsity="Bernoulli", mask_probability=0.05,
                                   effect_scale=0.3)
    block = cfg.sparsity_block
    assert block.probability == 0.05 and block.effect_scale == 0.3
