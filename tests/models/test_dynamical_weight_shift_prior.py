"""``DynamicalConfig(weight_shift_prior=...)``: the prior of each lag-weight change
(``"normal"``, the default, or ``"laplace"`` / ``"cauchy"``, sparse per entry). Checked:
the refusals, the site's log-density under ``trace`` against a float64 hand computation,
that the sparse priors prefer a sparse change to the same change rotated among the latents
(the reason for them) where the normal prior cannot tell them apart, the default
unchanged, a short fit and the save / ``cz.load`` round trip, the guide unchanged, and
snapshot mode's refusal."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from scipy.stats import cauchy, laplace, norm

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.models.dynamical import DynamicalConfig, dynamical_guide, dynamical_model
from causalzoo.models.dynamical_snapshot import snapshot_guide, snapshot_model

K, L, D, T, N, F = 2, 1, 3, 5, 6, 4
SCALE = 0.5
SMALL = dict(n_latent=K, n_lags=L, n_hidden=8, n_layers=1, transition="linear",
             weight_shift_scale=SCALE)
LAPLACE = DynamicalConfig(**SMALL, weight_shift_prior="laplace")
CAUCHY = DynamicalConfig(**SMALL, weight_shift_prior="cauchy")
NORMAL = DynamicalConfig(**SMALL)
SIZES = dict(n_steps=T, n_features=F, n_domains=D)
U = jnp.arange(N) % D


def _trace(config, *, seed=0, **held):
    model = handlers.condition(dynamical_model, data=held) if held else dynamical_model
    return handlers.trace(handlers.seed(model, seed)).get_trace(u=U, config=config, **SIZES)


def _change(seed=0):
    return np.random.default_rng(seed).normal(scale=0.7, size=(D, K, L, K)).astype(np.float32)


def test_bad_prior_name_and_prior_without_changes_are_refused():
    with pytest.raises(CausalZooError, match=r"weight_shift_prior='horseshoe'.*'laplace'"):
        DynamicalConfig(**SMALL, weight_shift_prior="horseshoe")
    with pytest.raises(CausalZooError, match="set weight_shift_scale too"):
        DynamicalConfig(weight_shift_prior="laplace")
    # the default needs no weight_shift_scale
    assert DynamicalConfig().weight_shift_prior == "normal"


def test_laplace_site_log_density_matches_a_hand_computation():
    """The site's log-density per (domain, latent), the lag and parent entries summed, is
    sum(-log(2 b) - |w| / b) with b = weight_shift_scale (float64 reference)."""
    w = _change()
    tr = _trace(LAPLACE, weight_shift=w)
    site = tr["weight_shift"]
    assert site["fn"].event_shape == (L, K) and site["fn"].batch_shape == (D, K)
    expected = (-np.log(2 * SCALE) - np.abs(w.astype(np.float64)) / SCALE).sum((-2, -1))
    np.testing.assert_allclose(site["fn"].log_prob(site["value"]), expected, rtol=1e-5)
    np.testing.assert_allclose(expected, laplace.logpdf(w, 0, SCALE).sum((-2, -1)),
                               rtol=1e-10)
    # the Cauchy prior: sum(-log(pi s) - log(1 + w^2 / s^2))
    site = _trace(CAUCHY, weight_shift=w)["weight_shift"]
    expected = (-np.log(np.pi * SCALE) - np.log1p((w.astype(np.float64) / SCALE) ** 2)).sum(
        (-2, -1))
    np.testing.assert_allclose(site["fn"].log_prob(site["value"]), expected, rtol=1e-5)
    np.testing.assert_allclose(expected, cauchy.logpdf(w, 0, SCALE).sum((-2, -1)),
                               rtol=1e-10)
    # the normal prior of the same value, for contrast (and the default's density)
    normal = _trace(NORMAL, weight_shift=w)["weight_shift"]
    np.testing.assert_allclose(normal["fn"].log_prob(normal["value"]),
                               norm.logpdf(w, 0, SCALE).sum((-2, -1)), rtol=1e-5)


def test_sparse_priors_prefer_a_sparse_change_to_its_rotation():
    """A domain's change ``Delta`` (lag 1) and the same change in rotated latents, ``R^T
    Delta R``: the normal prior's log-density is the same for both (rotation invariant),
    the Laplace and Cauchy priors' are higher for the sparse one, by the hand-computed
    difference of their penalties."""
    sparse = np.zeros((D, K, L, K), np.float32)
    sparse[:, 0, 0, 1] = [0.6, -0.4, 0.5]  # one entry per domain
    angle = np.pi / 5
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dense = np.einsum("ai,dab,bj->dij", r, sparse[:, :, 0, :], r)[:, :, None, :]
    assert np.count_nonzero(np.abs(dense) > 1e-3) == D * K * K
    np.testing.assert_allclose(np.linalg.norm(dense), np.linalg.norm(sparse), rtol=1e-6)

    def log_prior(config, w):
        site = _trace(config, weight_shift=w.astype(np.float32))["weight_shift"]
        return float(site["fn"].log_prob(site["value"]).sum())

    assert log_prior(NORMAL, dense) == pytest.approx(log_prior(NORMAL, sparse), abs=1e-4)
    gap = log_prior(LAPLACE, sparse) - log_prior(LAPLACE, dense)
    expected = (np.abs(dense).sum() - np.abs(sparse).sum()) / SCALE
    assert gap == pytest.approx(expected, rel=1e-4) and gap > 1.0
    gap = log_prior(CAUCHY, sparse) - log_prior(CAUCHY, dense)
    expected = (np.log1p((dense / SCALE) ** 2).sum() - np.log1p((sparse / SCALE) ** 2).sum())
    assert gap == pytest.approx(expected, rel=1e-3) and gap > 0.5


def test_default_is_the_normal_prior_and_old_configs_load_as_it():
    """The default samples the same ``weight_shift`` (and the same path) as an explicit
    ``"normal"``; a configuration saved before the option existed loads as ``"normal"``;
    the option goes through ``to_dict`` / JSON / ``from_dict``."""
    explicit = DynamicalConfig(**SMALL, weight_shift_prior="normal")
    assert explicit == NORMAL
    a, b = _trace(NORMAL, seed=3), _trace(explicit, seed=3)
    for name in ("weight_shift", "z", "x"):
        np.testing.assert_array_equal(a[name]["value"], b[name]["value"])
    assert type(a["weight_shift"]["fn"].base_dist.base_dist).__name__ == "Normal"
    for config, name in ((LAPLACE, "Laplace"), (CAUCHY, "Cauchy")):
        draw = _trace(config, seed=3)["weight_shift"]
        assert type(draw["fn"].base_dist.base_dist).__name__ == name

    old = NORMAL.to_dict()
    del old["weight_shift_prior"]
    assert DynamicalConfig.from_dict(old).weight_shift_prior == "normal"
    saved = json.loads(json.dumps(LAPLACE.to_dict()))
    assert saved["weight_shift_prior"] == "laplace"
    assert DynamicalConfig.from_dict(saved) == LAPLACE


def test_short_fit_and_save_load_keep_the_laplace_prior(tmp_path):
    """The mean-field ELBO has no closed-form Normal-Laplace KL and falls back to a Monte
    Carlo term: a short fit runs with finite, falling loss, and ``cz.load`` keeps the
    option and the fitted weight-shift factors."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, T, F)).astype(np.float32)
    u = np.array(["a", "b", "c"])[np.arange(48) % 3]
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL, weight_shift_prior="laplace")
    m.fit(max_steps=60, batch_size=16, learning_rate=1e-2, progress=False)
    loss = np.asarray(m.history["loss"])
    assert np.isfinite(loss).all() and loss[-10:].mean() < loss[:10].mean()
    assert m.params["weight_shift_loc"].shape == (D, K, L, K)
    loaded = cz.load(m.save(tmp_path / "laplace"))
    assert loaded.config.weight_shift_prior == "laplace" and loaded.config == m.config
    np.testing.assert_array_equal(loaded.params["weight_shift_loc"],
                                  m.params["weight_shift_loc"])


def test_guide_is_unchanged_by_the_prior():
    """The guide's factor stays Gaussian with the same parameters under either prior."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(N, T, F)), jnp.float32)
    g = {name: handlers.trace(handlers.seed(dynamical_guide, 0)).get_trace(
        x=x, u=U, config=config, n_domains=D) for name, config in
        (("normal", NORMAL), ("laplace", LAPLACE), ("cauchy", CAUCHY))}
    for name in ("laplace", "cauchy"):
        np.testing.assert_array_equal(g["normal"]["weight_shift"]["value"],
                                      g[name]["weight_shift"]["value"])
        assert type(g[name]["weight_shift"]["fn"].base_dist).__name__ == "Normal"


def test_snapshot_mode_still_refuses_weight_shifts():
    x = np.zeros((N, F), np.float32)
    t = np.arange(N) % 3
    for fn in (snapshot_model, snapshot_guide):
        for config in (LAPLACE, CAUCHY):
            with pytest.raises(CausalZooError, match="sequence mode only"):
                fn(x=x, u=np.asarray(U), time_index=t, n_times=4, n_domains=D,
                   config=config)
