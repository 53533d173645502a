"""Contracts of the temporal ground-truth generators (LEAP, TDRL, CaRiNG, CITRIS)."""

import numpy as np
import pytest

import causalzoo as cz
import causalzoo.identifiability  # for cz.identifiability.* below
from causalzoo import CausalZooError
from causalzoo.identifiability import (
    check_injectivity,
    entangled_floor,
    mcc,
    r2_kernel_ridge,
    r2_linear,
)
from causalzoo.identifiability.generators import (
    TemporalData,
    caring,
    citris_temporal,
    leap_nonstationary,
    tdrl_changing,
)
from causalzoo.identifiability.generators._temporal import leaky_relu

SMALL = {
    "leap": lambda seed: leap_nonstationary(n_domains=4, n_per_domain=20, n_latent=4,
                                            seed=seed),
    "tdrl": lambda seed: tdrl_changing(n_domains=3, n_per_domain=20, n_latent=4, seed=seed),
    "caring": lambda seed: caring(n_units=30, n_steps=6, seed=seed),
    "citris": lambda seed: citris_temporal(n_units=10, n_steps=8, n_latent=4, n_features=7,
                                           seed=seed),
}
# (n_units, n_steps, n_latent, n_features, n_lags)
SHAPES = {"leap": (80, 6, 4, 4, 2), "tdrl": (60, 3, 4, 4, 2), "caring": (30, 6, 3, 2, 1),
          "citris": (10, 8, 4, 7, 1)}


@pytest.mark.parametrize("name", SMALL)
def test_shapes_dtypes_and_public_path(name):
    data = SMALL[name](0)
    n, t, d, p, lags = SHAPES[name]
    assert isinstance(data, TemporalData)
    assert data.x.shape == (n, t, p) and data.z.shape == (n, t, d)
    assert data.x.dtype == data.z.dtype == np.float32
    assert data.graph.shape == (lags, d, d) and data.graph.dtype == bool
    assert data.transition.shape == (data.n_domains, lags, d, d)
    assert data.noise_scale.shape == (data.n_domains, d)
    assert data.n_lags == lags and data.n_latent == d
    assert np.all(np.isfinite(data.x)) and np.all(np.isfinite(data.z))
    if name == "citris":
        assert data.u.shape == (n, t, d)
    else:
        assert data.u.shape == (n,) and data.u.max() == data.n_domains - 1
    assert getattr(cz.identifiability.generators, data.name) is not None


@pytest.mark.parametrize("name", SMALL)
def test_seeds_reproduce_and_differ(name):
    a, b, c = SMALL[name](3), SMALL[name](3), SMALL[name](4)
    for field in ("x", "u", "z", "graph", "transition"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x, c.x) and not np.array_equal(a.z, c.z)


@pytest.mark.parametrize("name", SMALL)
def test_observe_is_the_mixing_that_produced_x(name):
    data = SMALL[name](1)
    np.testing.assert_allclose(data.observe(data.z), data.x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["leap", "tdrl", "citris"])
def test_invertible_mixings_have_full_rank_bounded_jacobians(name):
    check = check_injectivity(SMALL[name](2), n_points=100)
    assert check.passed, check.message
    assert check.details["min_rank"] == SHAPES[name][2]
    # orthogonal layers and slope 0.2: the condition number is at most 1 / 0.2^layers
    # (times the lift's < 10 for CITRIS); 10% slack for finite differences across a kink
    limit = 25.0 if name != "citris" else 125.0 * 10.0
    assert check.details["max_condition"] <= limit * 1.1
    assert check.details["median_condition"] <= limit * (1 + 1e-6)


def test_caring_graph_has_the_self_edges_of_the_coupled_noise():
    coupled, constant = caring(n_units=5, seed=0), caring(n_units=5, noise_coupled=False, seed=0)
    cyclic = coupled.transition[0, 0] != 0
    assert cyclic.sum() == 3 and not np.diag(cyclic).any()
    # the coupled noise's scale is the variable's own previous value: a self-edge
    assert np.all(coupled.graph[0] == (cyclic | np.eye(3, dtype=bool)))
    assert np.all(constant.graph[0] == cyclic)


@pytest.mark.parametrize("coupled", [False, True])
def test_caring_domains_change_the_noise_scales_and_nothing_else(coupled):
    """``n_domains=4``: equal domains, each latent's noise scale ``noise_scale * U(0, 1)``
    per domain (times ``|z_{t-1,i}|`` when coupled); the mixing, initial state and raw
    noise draws are those of the one-domain draw, so the residuals are its residuals
    rescaled by the domain's scale."""
    kwargs = dict(n_units=8000, n_steps=3, noise_scale=0.5, noise_coupled=coupled, seed=2)
    one, four = caring(**kwargs), caring(n_domains=4, **kwargs)
    np.testing.assert_array_equal(one.u, np.zeros(8000))
    np.testing.assert_array_equal(four.u, np.repeat(np.arange(4), 2000))
    np.testing.assert_array_equal(one.noise_scale, np.full((1, 3), 0.5, np.float32))
    sigma = four.noise_scale.astype(np.float64)
    assert sigma.shape == (4, 3) and np.all((sigma > 0) & (sigma < 0.5))
    assert np.all(np.ptp(sigma, axis=0) > 0.05), "every latent's scale changes"
    assert four.transition.shape == (4, 1, 3, 3)
    np.testing.assert_array_equal(four.transition[2], one.transition[0])
    np.testing.assert_array_equal(four.graph, one.graph)
    np.testing.assert_array_equal(four.z[:, 0], one.z[:, 0])
    b = one.transition[0, 0].astype(np.float64)

    def raw_noise(data, t, scale=1.0):
        """The noise of step t divided by its scale (and by z_{t-1} when coupled: the
        generator multiplies by the signed previous value); float32 storage leaves
        rounding that a small |z_{t-1}| would blow up, so those entries are NaN."""
        z = data.z.astype(np.float64)
        eps = (z[:, t] - z[:, t - 1] @ b) / scale
        if coupled:
            prev = z[:, t - 1]
            eps = np.where(np.abs(prev) > 0.2, eps / np.where(prev == 0, 1, prev), np.nan)
        return eps

    np.testing.assert_allclose(raw_noise(four, 1, sigma[four.u]), raw_noise(one, 1, 0.5),
                               rtol=1e-3, atol=1e-3)
    for u in range(4):  # each domain's noise has its own scale
        eps = raw_noise(four, 2)[four.u == u]
        np.testing.assert_allclose(np.nanstd(eps, axis=0), sigma[u], rtol=0.08)


def test_caring_mixing_is_not_injective_but_context_reveals_the_hidden_latent():
    data = caring(n_units=400, n_steps=6, noise_coupled=False, seed=0)
    check = check_injectivity(data, n_points=50)
    assert not check.passed and check.details["min_rank"] == 2
    # z_{t,2} is mixed into x only through z_{t+1,0} = 0.99 z_{t,2} + noise
    z_hidden = data.z[:, 1:-1, 2].reshape(-1, 1)
    x_now = data.x[:, 1:-1].reshape(-1, 2)
    x_window = np.concatenate([data.x[:, 1:-1], data.x[:, 2:]], axis=-1).reshape(-1, 4)
    alone = r2_kernel_ridge(z_hidden, x_now, max_train=400)
    window = r2_kernel_ridge(z_hidden, x_window, max_train=400)
    assert alone < 0.1 and window > 0.9


@pytest.mark.parametrize("self_lags_only", [False, True])
def test_leap_noise_changes_across_domains_and_is_independent_of_history(self_lags_only):
    data = leap_nonstationary(n_domains=3, n_per_domain=3000, n_latent=3, n_steps=4, seed=5,
                              self_lags_only=self_lags_only)
    z = data.z.astype(np.float64)
    b = data.transition[0].astype(np.float64)
    t = 3
    drive = leaky_relu(z[:, t - 1] @ b[0]) + leaky_relu(z[:, t - 2] @ b[1])
    eps = leaky_relu(z[:, t], 1 / 0.2) - drive  # leaky_relu is invertible
    for u in range(3):
        sd = eps[data.u == u].std(axis=0)
        np.testing.assert_allclose(sd, data.noise_scale[u], rtol=0.1)
    assert np.ptp(data.info["modulation"], axis=0).min() > 0.05, "domains differ"
    corr = np.corrcoef(eps.T, z[:, t - 1].T)[:3, 3:]
    assert np.abs(corr).max() < 0.06
    assert np.all(data.graph == (data.transition[0] != 0))
    assert data.graph[0].any(axis=0).all(), "every latent has a lag-1 parent"


def test_leap_default_draw_is_unchanged():
    """The values of a seeded default draw, recorded before ``self_lags_only`` existed: the
    option must not move the default draw (recovery tests and docs tables rest on it)."""
    data = leap_nonstationary(n_domains=3, n_per_domain=10, n_latent=4, seed=0)
    np.testing.assert_allclose(data.x[0, -1], [-0.01242017, 0.07648581, -0.02320073,
                                               0.02247846], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(data.z[0, -1], [0.05866246, -0.00663128, -0.00903215,
                                               0.10195127], rtol=1e-5, atol=1e-7)
    assert data.x.astype(np.float64).sum() == pytest.approx(11.568532456341018, rel=1e-5)
    assert data.z.astype(np.float64).sum() == pytest.approx(20.719028848876405, rel=1e-5)
    assert data.info["self_lags_only"] is False


def test_leap_linear_dynamics_is_a_gaussian_var_with_the_same_draw():
    """``dynamics="linear"``: every step after the history is the lagged linear drive plus
    Gaussian noise of the domain's scale (no leaky ReLU); lag matrices, modulations,
    history and mixing are the default draw's."""
    kwargs = dict(n_domains=3, n_per_domain=3000, n_latent=3, n_steps=5, seed=5)
    default, linear = leap_nonstationary(**kwargs), leap_nonstationary(dynamics="linear",
                                                                       **kwargs)
    assert linear.info["dynamics"] == "linear" and default.info["dynamics"] == "leaky_relu"
    for field in ("u", "noise_scale", "transition", "graph"):
        np.testing.assert_array_equal(getattr(linear, field), getattr(default, field))
    np.testing.assert_array_equal(linear.z[:, :2], default.z[:, :2])
    z, b = linear.z.astype(np.float64), linear.transition[0].astype(np.float64)
    eps = np.stack([z[:, t] - z[:, t - 1] @ b[0] - z[:, t - 2] @ b[1] for t in range(2, 5)])
    for u in range(3):
        e = eps[:, linear.u == u].reshape(-1, 3)
        np.testing.assert_allclose(e.std(axis=0), linear.noise_scale[u], rtol=0.05)
        kurtosis = ((e - e.mean(0)) ** 4).mean(0) / e.var(0) ** 2
        np.testing.assert_allclose(kurtosis, 3.0, atol=0.3)  # Gaussian within a domain
    np.testing.assert_allclose(linear.x, linear.observe(linear.z), rtol=1e-4, atol=1e-5)
    assert not np.allclose(linear.z[:, 2:], default.z[:, 2:])
    with pytest.raises(CausalZooError, match="not a LEAP transition"):
        leap_nonstationary(dynamics="relu")


def test_leap_self_lags_only_gives_independent_latent_processes():
    """Diagonal lag matrices: each latent's only lagged parent is its own past, so within a
    domain the latents at any step are independent (the iVAE setting a snapshot keeps); the
    default's cross-lag edges correlate them in some domains. Everything else is the
    default draw of the same seed."""
    kwargs = dict(n_domains=20, n_per_domain=2000, n_latent=3, noise_scale=1.0, seed=0)
    default, diag = leap_nonstationary(**kwargs), leap_nonstationary(self_lags_only=True,
                                                                       **kwargs)
    eye = np.eye(3, dtype=bool)
    assert diag.info["self_lags_only"] is True
    assert np.all(diag.graph[:, ~eye] == 0) and np.all(diag.graph[0][eye])
    np.testing.assert_array_equal(diag.graph, diag.transition[0] != 0)
    assert (default.graph[:, ~eye]).any(), "the default draw has cross-lag edges"
    norms = np.linalg.norm(diag.transition[0].astype(np.float64), ord=2, axis=(1, 2)).sum()
    assert norms == pytest.approx(0.9, rel=1e-5)
    for field in ("u", "noise_scale"):
        np.testing.assert_array_equal(getattr(diag, field), getattr(default, field))
    for a, b in zip(diag.mixing, default.mixing, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(diag.z[:, :2], default.z[:, :2])  # the same history

    def largest_correlation(data, t):
        """The largest |correlation| of two latents at step t within a domain."""
        pairs = np.triu_indices(3, 1)
        return max(np.abs(np.corrcoef(data.z[data.u == u, t].T)[pairs]).max()
                   for u in range(20))

    for t in (2, 5):  # 2000 units per domain: sampling noise alone gives about 0.06
        assert largest_correlation(diag, t) < 0.1
    assert largest_correlation(default, 5) > 0.3


def test_tdrl_transitions_really_change_across_domains():
    data = tdrl_changing(n_domains=3, n_per_domain=2000, n_latent=4, n_changing=2, seed=2)
    rows, cols = data.info["changing"].T
    lag1 = data.transition[:, 0]
    assert np.all(np.ptp(lag1[:, rows, cols], axis=0) > 0), "changing entries differ"
    z = data.z.astype(np.float64)
    hist = z[:, :2][:, ::-1]  # lags (t-1, t-2) for t = 2

    def residual_sd(u, model_domain):
        m = data.u == u
        w = data.transition[model_domain].astype(np.float64)
        return (z[m, 2] - leaky_relu(np.einsum("nli,lij->nj", hist[m], w))).std()

    for u in range(3):
        # in-domain, the transition noise (sd 0.1) is all that is left ...
        assert residual_sd(u, u) == pytest.approx(0.1, rel=0.05)
        # ... while another domain's dynamics explain the data clearly worse
        for v in set(range(3)) - {u}:
            assert residual_sd(u, v) > 1.3 * residual_sd(u, u)


@pytest.mark.parametrize(
    "kwargs",
    [dict(seed=0),  # the defaults: 8 latents, 5 domains
     dict(n_domains=20, n_per_domain=10, n_latent=3, n_steps=6, noise_scale=0.5, seed=1),
     dict(n_domains=20, n_per_domain=10, n_latent=3, n_steps=6, graph_density=1.0,
          n_changing=4, seed=2)],
)
def test_tdrl_only_the_changing_entries_differ_across_domains(kwargs):
    """With one noise scale everywhere, what singles out the true basis is that a domain
    changes only a few lag weights; a stability rescale per domain once made every weight
    of most domains change (43 entries at the defaults, seed 0). One common factor keeps
    the change in the ``n_changing`` entries and every domain contractive."""
    data = tdrl_changing(**kwargs)
    spread = np.ptp(data.transition, axis=0)  # (lags, parent, child)
    rows, cols = data.info["changing"].T
    expected = np.zeros_like(spread, dtype=bool)
    expected[0, rows, cols] = True
    np.testing.assert_array_equal(spread > 0, expected)
    norms = np.linalg.norm(data.transition.astype(np.float64), ord=2, axis=(2, 3)).sum(-1)
    assert norms.max() <= 0.95 + 1e-5


def test_tdrl_change_is_large_against_the_noise():
    """The changing entries spread over the domains by more than half the noise scale."""
    data = tdrl_changing(n_domains=20, n_per_domain=10, n_latent=3, n_steps=6,
                         noise_scale=0.5, seed=0)
    rows, cols = data.info["changing"].T
    assert data.transition[:, 0, rows, cols].std(axis=0).min() > 0.25


def test_tdrl_linear_dynamics_is_the_same_draw_without_the_leaky_relu():
    """``dynamics="linear"`` changes only the transition: the lag weights, changing entries,
    history, mixing and the noise draws are those of the default draw, and every step is the
    lagged drive plus that noise (a sparse VAR whose lag-1 weights change per domain)."""
    kwargs = dict(n_domains=4, n_per_domain=300, n_latent=3, n_steps=6, noise_scale=0.5,
                  seed=3)
    relu, lin = tdrl_changing(**kwargs), tdrl_changing(dynamics="linear", **kwargs)
    assert relu.info["dynamics"] == "leaky_relu" and lin.info["dynamics"] == "linear"
    for field in ("u", "graph", "transition", "noise_scale"):
        np.testing.assert_array_equal(getattr(lin, field), getattr(relu, field))
    np.testing.assert_array_equal(lin.info["changing"], relu.info["changing"])
    for a, b in zip(lin.mixing, relu.mixing, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lin.z[:, :2], relu.z[:, :2])
    assert not np.allclose(lin.z[:, 2:], relu.z[:, 2:]), "the transition differs"
    w = relu.transition[relu.u].astype(np.float64)  # (units, lags, parent, child)

    def noise(data, link):
        z = data.z.astype(np.float64)
        return np.stack([z[:, t] - link(np.einsum("nli,nlij->nj", z[:, t - 2:t][:, ::-1], w))
                         for t in range(2, z.shape[1])], axis=1)

    eps = noise(lin, lambda a: a)
    np.testing.assert_allclose(eps, noise(relu, leaky_relu), atol=1e-4)
    assert eps.std() == pytest.approx(0.5, rel=0.05)
    np.testing.assert_allclose(lin.observe(lin.z), lin.x, rtol=1e-4, atol=1e-5)


def test_tdrl_noise_change_changes_the_noise_scales_and_nothing_else():
    """``noise_change=True``: the noise standard deviation of each latent differs across
    domains (``noise_scale * U(0, 1)``) and is what is left after the domain's dynamics;
    lag weights, changing entries, history, mixing and the standard-normal noise draws are
    those of the draw without it, so the residuals are the same draws rescaled."""
    kwargs = dict(n_domains=4, n_per_domain=3000, n_latent=3, n_steps=4, noise_scale=0.5,
                  seed=5)
    plain, changed = tdrl_changing(**kwargs), tdrl_changing(noise_change=True, **kwargs)
    assert plain.info["noise_change"] is False and changed.info["noise_change"] is True
    np.testing.assert_array_equal(plain.noise_scale, np.full((4, 3), 0.5, np.float32))
    sigma = changed.noise_scale.astype(np.float64)
    assert sigma.shape == (4, 3) and np.all((sigma > 0) & (sigma < 0.5))
    assert np.all(np.ptp(sigma, axis=0) > 0.05), "every latent's scale changes"
    for field in ("u", "graph", "transition"):
        np.testing.assert_array_equal(getattr(changed, field), getattr(plain, field))
    np.testing.assert_array_equal(changed.info["changing"], plain.info["changing"])
    np.testing.assert_array_equal(changed.z[:, :2], plain.z[:, :2])
    w = plain.transition[plain.u].astype(np.float64)

    def residual(data, t):
        z = data.z.astype(np.float64)
        return z[:, t] - leaky_relu(np.einsum("nli,nlij->nj", z[:, t - 2:t][:, ::-1], w))

    # step 2 has the same history in both draws: the same standard normals, rescaled
    np.testing.assert_allclose(residual(changed, 2) / sigma[changed.u],
                               residual(plain, 2) / 0.5, atol=1e-4)
    for u in range(4):  # each domain's residual sd is its own noise scale
        m = changed.u == u
        np.testing.assert_allclose(residual(changed, 3)[m].std(0), sigma[u], rtol=0.08)


def test_citris_interventions_are_observed_and_replace_the_variable():
    data = citris_temporal(n_units=300, n_steps=20, n_latent=5, seed=4)
    u = data.u
    assert not u[:, 0].any(), "no intervention at step 0"
    assert u[:, 1:].mean() == pytest.approx(1 / 6, abs=0.02)
    z = data.z.astype(np.float64)
    hit = u[:, 1:].astype(bool)
    intervened, natural = z[:, 1:][hit], z[:, 1:][~hit]
    # intervened values are U(-1, 1), independent of the previous state
    assert intervened.min() >= -1 and intervened.max() <= 1
    assert intervened.var() == pytest.approx(1 / 3, rel=0.1)
    prev_hit = z[:, :-1][hit]
    assert abs(np.corrcoef(prev_hit, intervened)[0, 1]) < 0.05
    assert abs(np.corrcoef(z[:, :-1][~hit], natural)[0, 1]) > 0.5
    # the recorded dynamics are the ones that produced the non-intervened steps
    a, c = data.transition[0, 0].astype(np.float64), data.info["offset"].astype(np.float64)
    prev = z[:, :-1]
    pred = prev + 0.5 * (np.tanh(prev @ a + c) - prev)
    resid = (z[:, 1:] - pred)[~hit]
    assert resid.std() == pytest.approx(0.1, rel=0.1)
    assert np.all(np.diag(data.graph[0])) and np.all(data.graph[0] == (a != 0) | np.eye(5,
                                                                                       dtype=bool))


def test_floors_are_well_below_one_on_every_generator():
    """Raw observations are an entangled estimate: the score to beat, reported beside MCC."""
    for data in (leap_nonstationary(n_domains=10, n_per_domain=50, seed=0),
                 citris_temporal(n_units=100, seed=0)):
        z, x = data.z[:, data.n_lags:], data.x[:, data.n_lags:]
        floor = entangled_floor(z, x=x, n_rotations=10)
        assert 0.3 < floor["observations"] < 0.9
        assert 0.4 < floor["rotation"] < 0.9
        assert mcc(z, z) == pytest.approx(1.0)
        assert r2_linear(z, x) > 0.3  # entangled, yet informative


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: leap_nonstationary(n_steps=2, n_lags=2), "n_steps"),
        (lambda: leap_nonstationary(graph_density=1.5), "graph_density"),
        (lambda: leap_nonstationary(self_lags_only="yes"), "self_lags_only"),
        (lambda: tdrl_changing(n_latent=2, n_changing=5), "n_changing"),
        (lambda: tdrl_changing(dynamics="relu"), "dynamics"),
        (lambda: tdrl_changing(noise_change="yes"), "noise_change"),
        (lambda: caring(n_latent=3, n_observed=3), "n_observed"),
        (lambda: citris_temporal(n_latent=5, n_features=3), "n_features"),
        (lambda: citris_temporal(intervention_prob=2.0), "intervention_prob"),
        (lambda: caring(seed=-1), "seed"),
        (lambda: caring(n_units=10, n_domains=3), "multiple of n_domains"),
        (lambda: caring(n_domains=0), "n_domains"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(CausalZooError, match=match):
        call()
