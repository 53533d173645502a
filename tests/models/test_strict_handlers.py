"""``cz.models.do`` / ``cz.models.condition``: NumPyro's handlers that refuse a key naming no
sample site of the run. Checked: the same traces as NumPyro's handlers on right names (a
custom model, the sparse and dynamical zoo entries, same seeds), the refusals and what their
messages say (misspelt, deterministic, param, the dynamical ``weight_shift`` without
``weight_shift_scale``, a site observed already, ``do`` inside ``scan``), and the places the
plain handlers work: ``Predictive``, ``jax.jit``, SVI, nesting, context manager, decorator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.primitives import _PYRO_STACK

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.models.dynamical import DynamicalConfig
from causalzoo.models.sparse_perturbation import SparsePerturbationConfig


def model(x=None):
    scale = numpyro.param("scale", 1.0, constraint=dist.constraints.positive)
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.deterministic("z_squared", z**2)
    with numpyro.plate("cells", 4):
        z_resp = numpyro.sample("z_resp", dist.Normal(z, 1.0))
        return numpyro.sample("x", dist.Normal(z_resp, scale), obs=x)


def seeded_trace(fn, seed=0, *args, **kwargs):
    return handlers.trace(handlers.seed(fn, seed)).get_trace(*args, **kwargs)


def assert_same_trace(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name]["type"] == b[name]["type"], name
        assert bool(a[name].get("is_observed")) == bool(b[name].get("is_observed")), name
        if a[name]["type"] in ("sample", "deterministic", "param"):
            # values are arrays, or pytrees of arrays for the networks' param sites
            leaves_a, tree_a = jax.tree.flatten(a[name]["value"])
            leaves_b, tree_b = jax.tree.flatten(b[name]["value"])
            assert tree_a == tree_b, name
            for leaf_a, leaf_b in zip(leaves_a, leaves_b, strict=True):
                np.testing.assert_array_equal(leaf_a, leaf_b, err_msg=name)


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(CausalZooError) as info:
        fn(*args, **kwargs)
    assert not _PYRO_STACK  # the refusal leaves NumPyro's handler stack clean
    return str(info.value)


# ------------------------------------------------------------ same as NumPyro on right names


@pytest.mark.parametrize("name", ["do", "condition"])
def test_custom_model_same_trace_as_numpyro(name):
    data = {"z": 2.0, "z_resp": jnp.arange(4.0)}
    ours = getattr(cz.models, name)
    theirs = getattr(handlers, name)
    for seed in (0, 1):
        assert_same_trace(seeded_trace(ours(model, data), seed),
                          seeded_trace(theirs(model, data), seed))
    out = handlers.seed(ours(model, data), 0)()
    np.testing.assert_array_equal(out, handlers.seed(theirs(model, data), 0)())
    if name == "do":  # downstream sees the intervention; the trace keeps a fresh draw
        tr = seeded_trace(ours(model, data))
        assert float(tr["z"]["value"]) != 2.0 and not tr["z"]["is_observed"]
        x_mean_shift = seeded_trace(ours(model, {"z_resp": jnp.full(4, 100.0)}))["x"]["value"]
        assert jnp.all(x_mean_shift > 90.0)


def test_sparse_zoo_model_same_trace_as_numpyro():
    spec = cz.models.get_model("sparse_perturbation")
    cfg = SparsePerturbationConfig(n_latent_invariant=2, n_latent_response=3, n_hidden=8,
                                   n_layers=1)
    n, t = 6, 2
    design = jnp.eye(t + 1)[jnp.arange(n) % (t + 1)][:, 1:]
    kwargs = dict(design=design, library_size=jnp.full(n, 100.0), n_genes=5, config=cfg)
    data = {"z_resp": jnp.ones((n, 3)), "effect": jnp.full((t, 3), 0.5)}
    for name in ("do", "condition"):
        ours = getattr(cz.models, name)(spec.model, data)
        theirs = getattr(handlers, name)(spec.model, data)
        assert_same_trace(seeded_trace(ours, 3, **kwargs), seeded_trace(theirs, 3, **kwargs))
    message = refusal(seeded_trace, cz.models.do(spec.model, {"z_res": 0.0}), 0, **kwargs)
    assert "'z_res' is not a site of this run (did you mean 'z_resp'?)" in message
    assert "'effect', " in message and "'z_resp'" in message and "'x'" in message


D, K, L = 2, 2, 1
DYN_SIZES = dict(u=jnp.array([0, 1, 1]), n_steps=4, n_features=3, n_domains=D)
DYN_SMALL = dict(n_latent=K, n_lags=L, n_hidden=8, n_layers=1, transition="linear")


def test_dynamical_zoo_model_same_trace_as_numpyro():
    spec = cz.models.get_model("dynamical")
    cfg = DynamicalConfig(**DYN_SMALL, weight_shift_scale=0.5)
    data = {"target": jnp.zeros((D, K)).at[1, 0].set(1.0),
            "weight_shift": jnp.full((D, K, L, K), -0.3)}
    for name in ("do", "condition"):
        ours = getattr(cz.models, name)(spec.model, data)
        theirs = getattr(handlers, name)(spec.model, data)
        assert_same_trace(seeded_trace(ours, 0, config=cfg, **DYN_SIZES),
                          seeded_trace(theirs, 0, config=cfg, **DYN_SIZES))


def test_dynamical_weight_shift_without_its_option_is_refused():
    # the trap the interventions guide fell into: without weight_shift_scale the program
    # has no "weight_shift" site, and NumPyro's do changes nothing
    spec = cz.models.get_model("dynamical")
    cfg = DynamicalConfig(**DYN_SMALL)
    data = {"weight_shift": jnp.full((D, K, L, K), -0.3)}
    silent = seeded_trace(handlers.do(spec.model, data), 0, config=cfg, **DYN_SIZES)
    plain = seeded_trace(spec.model, 0, config=cfg, **DYN_SIZES)
    np.testing.assert_array_equal(silent["z"]["value"], plain["z"]["value"])
    message = refusal(seeded_trace, cz.models.do(spec.model, data), 0, config=cfg,
                      **DYN_SIZES)
    assert message.startswith("cz.models.do on the program 'dynamical_model': "
                              "'weight_shift' is not a site of this run")
    sites = sorted(n for n, s in plain.items() if s["type"] == "sample")
    assert ", ".join(repr(s) for s in sites) in message
    assert "weight_shift_scale" in message


# ---------------------------------------------------------------------------- refusals


def test_misspelt_deterministic_and_param_keys_are_refused_together():
    message = refusal(handlers.seed(cz.models.condition(
        model, {"z_rsp": 1.0, "z_squared": 4.0, "scale": 2.0, "cells": 1.0}), 0))
    assert "'z_rsp' is not a site of this run (did you mean 'z_resp'?)" in message
    assert "'z_squared' is a deterministic site, not a sample site" in message
    assert "'scale' is a param site" in message and "numpyro.handlers.substitute" in message
    assert "'cells' is a plate site" in message
    assert "The sample sites of this run are: 'x', 'z', 'z_resp'." in message
    message = refusal(handlers.seed(cz.models.do(model, {"nothing": 1.0}), 0))
    assert "'nothing' is not a site of this run. " in message  # no close match: no guess


def test_condition_on_an_observed_site_is_refused_do_is_not():
    x = jnp.zeros(4)
    message = refusal(handlers.seed(cz.models.condition(model, {"x": jnp.ones(4)}), 0), x)
    assert "'x' is observed already" in message
    inner = cz.models.condition(model, {"z": 1.0})
    message = refusal(handlers.seed(cz.models.condition(inner, {"z": 2.0}), 0))
    assert "'z' is observed already" in message
    # do on an observed site is the counterfactual pattern: allowed, as in NumPyro
    assert_same_trace(seeded_trace(cz.models.do(model, {"x": jnp.ones(4)}), 0, x),
                      seeded_trace(handlers.do(model, {"x": jnp.ones(4)}), 0, x))


def scanned():
    def step(carry, _):
        z = numpyro.sample("z", dist.Normal(carry, 1.0))
        y = numpyro.sample("y", dist.Normal(z, 0.01))
        return z, y
    return scan(step, 0.0, None, length=3)[1]


def test_scan_sites_condition_checked_do_refused():
    data = {"z": jnp.array([10.0, 20.0, 30.0])}
    ours = seeded_trace(cz.models.condition(scanned, data))
    assert_same_trace(ours, seeded_trace(handlers.condition(scanned, data)))
    np.testing.assert_allclose(ours["y"]["value"], data["z"], atol=0.1)
    message = refusal(seeded_trace, cz.models.condition(scanned, {"zz": data["z"]}))
    assert "'zz' is not a site of this run (did you mean 'z'?)" in message
    # NumPyro's do leaves the scan unchanged; ours says so
    silent = seeded_trace(handlers.do(scanned, data))
    np.testing.assert_array_equal(silent["y"]["value"], seeded_trace(scanned)["y"]["value"])
    message = refusal(seeded_trace, cz.models.do(scanned, data))
    assert "'z' is a sample site inside numpyro.contrib.control_flow.scan" in message


def test_data_must_be_a_dict():
    with pytest.raises(CausalZooError, match="condition_fn="):
        cz.models.condition(model, lambda site: None)
    with pytest.raises(CausalZooError, match="takes a dict only"):
        cz.models.do(model, lambda site: None)
    with pytest.raises(CausalZooError, match="must be a dict"):
        cz.models.do(model, [("z", 1.0)])
    with pytest.raises(CausalZooError, match="None for 'z', which NumPyro's condition takes"):
        cz.models.condition(model, {"z": None})  # NumPyro's would leave z unobserved
    with pytest.raises(CausalZooError, match="both data and condition_fn"):
        cz.models.condition(model, {"z": 1.0}, condition_fn=lambda site: None)


def test_condition_fn_is_numpyros_unchecked():
    def fix_z(site):
        return 3.0 if site["name"] == "z" else None

    assert_same_trace(seeded_trace(cz.models.condition(model, condition_fn=fix_z)),
                      seeded_trace(handlers.condition(model, condition_fn=fix_z)))
    seeded_trace(cz.models.condition(model, condition_fn=lambda site: None))  # no names


# --------------------------------------------------- wherever NumPyro's handlers work


def test_under_predictive_same_as_numpyro_and_checked():
    samples = {"z": jnp.linspace(-1.0, 1.0, 5)}
    data = {"z_resp": jnp.full(4, 3.0)}
    key = jax.random.key(0)
    ours = Predictive(cz.models.do(model, data), samples)(key)
    theirs = Predictive(handlers.do(model, data), samples)(key)
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name])
    with pytest.raises(CausalZooError, match="did you mean 'z_resp'"):
        Predictive(cz.models.do(model, {"zresp": 0.0}), samples)(key)


def test_under_jit_and_svi_same_losses_as_numpyro():
    x = jnp.array([0.5, 1.0, 1.5, 2.0])

    def losses(conditioned):
        svi = SVI(conditioned, AutoNormal(conditioned), optax.adam(0.05), Trace_ELBO())
        return svi.run(jax.random.key(0), 5, x, progress_bar=False).losses

    np.testing.assert_array_equal(losses(cz.models.condition(model, {"z": 1.0})),
                                  losses(handlers.condition(model, {"z": 1.0})))
    with pytest.raises(CausalZooError, match="'zz' is not a site"):
        losses(cz.models.condition(model, {"zz": 1.0}))
    jitted = jax.jit(lambda key: handlers.seed(cz.models.do(model, {"z": 9.0}), key)())
    np.testing.assert_array_equal(
        jitted(jax.random.key(1)),
        jax.jit(lambda key: handlers.seed(handlers.do(model, {"z": 9.0}), key)())(
            jax.random.key(1)))
    with pytest.raises(CausalZooError, match="'zz' is not a site"):
        jax.jit(lambda key: handlers.seed(cz.models.do(model, {"zz": 9.0}), key)())(
            jax.random.key(1))
    assert not _PYRO_STACK


def test_nested_context_manager_and_decorator():
    # counterfactual nesting: condition on the factual z_resp, then intervene on z
    z_resp = jnp.arange(4.0)
    ours = cz.models.do(cz.models.condition(model, {"z_resp": z_resp}), {"z": 5.0})
    theirs = handlers.do(handlers.condition(model, {"z_resp": z_resp}), {"z": 5.0})
    assert_same_trace(seeded_trace(ours), seeded_trace(theirs))
    mixed = handlers.condition(cz.models.do(model, {"z": 5.0}), {"z_resp": z_resp})
    assert_same_trace(seeded_trace(mixed), seeded_trace(theirs))
    # an inner refusal passes through outer handlers
    message = refusal(seeded_trace, handlers.condition(
        cz.models.do(model, {"z_rsp": 5.0}), {"z": 1.0}))
    assert "'z_rsp'" in message
    # a site an inner block hides is not a site of the run: NumPyro's do would not reach it
    message = refusal(seeded_trace, cz.models.do(handlers.block(model, hide=["z"]),
                                                 {"z": 1.0}))
    assert "'z' is not a site of this run" in message

    with handlers.trace() as tr, handlers.seed(rng_seed=0), \
            cz.models.condition(data={"z": 2.0}):
        model()
    assert float(tr["z"]["value"]) == 2.0 and tr["z"]["is_observed"]
    with pytest.raises(CausalZooError, match="did you mean 'z'"), handlers.seed(rng_seed=0), \
            cz.models.condition(data={"zz": 2.0}):
        model()
    assert not _PYRO_STACK

    decorated = cz.models.do(data={"z": 5.0})(model)
    assert_same_trace(seeded_trace(decorated), seeded_trace(handlers.do(model, {"z": 5.0})))
    message = refusal(seeded_trace, cz.models.do(data={"zz": 5.0})(model))
    assert message.startswith("cz.models.do on the program 'model': 'zz'")


def test_checked_on_every_run():
    # a site that exists only in some runs: each run is checked on its own
    def branching(with_site):
        if with_site:
            numpyro.sample("extra", dist.Normal(0.0, 1.0))
        return numpyro.sample("z", dist.Normal(0.0, 1.0))

    handled = handlers.seed(cz.models.condition(branching, {"extra": 1.0}), 0)
    handled(True)
    assert "'extra' is not a site of this run" in refusal(handled, False)
    handled(True)
