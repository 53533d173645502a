"""``cz.DynamicalCausalVAE`` in sequence mode: building from arrays, a short fit through the
SVI engine, latents, lag graph and targets, save / ``cz.load`` round trip, input errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import causalzoo as cz
from causalzoo import CausalZooError

N, T, G, K = 96, 5, 6, 2
SMALL = dict(n_latent=K, n_latent_invariant=1, n_hidden=16, n_layers=1)


def make_sequences(seed=0):
    """Two latent AR(1) processes whose noise scale differs between two domains, through a
    fixed random linear map plus a tanh (enough to check the plumbing, not recovery)."""
    rng = np.random.default_rng(seed)
    u = np.array(["ctrl", "drug"])[np.arange(N) % 2]
    scale = np.where(u == "drug", 1.0, 0.3)[:, None]
    z = np.zeros((N, T, K))
    z[:, 0] = rng.normal(size=(N, K))
    for t in range(1, T):
        z[:, t] = 0.8 * z[:, t - 1] + scale * rng.normal(size=(N, K))
    x = np.tanh(z @ rng.normal(size=(K, G))) + 0.05 * rng.normal(size=(N, T, G))
    return x.astype(np.float32), u


@pytest.fixture(scope="module")
def fitted():
    x, u = make_sequences()
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL)
    m.fit(max_steps=300, batch_size=32, learning_rate=1e-2, progress=False)
    return m, x, u


def test_from_arrays_vocabulary_and_repr():
    x, u = make_sequences()
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL)
    assert m.domain_names == ["ctrl", "drug"]
    np.testing.assert_array_equal(m.u, (u == "drug").astype(np.int32))
    assert (m.n_steps, m.n_features) == (T, G)
    assert "not fitted" in repr(m) and "domains=2" in repr(m)
    assert "prior='gaussian'" in repr(m)
    flow = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, prior="flow", **SMALL)
    assert "prior='flow'" in repr(flow)
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=np.arange(N) % 3, **SMALL)
    assert m.domain_names == ["0", "1", "2"]
    m = cz.DynamicalCausalVAE.from_arrays(x=x, **SMALL)  # a single domain
    assert m.domain_names == ["0"] and not m.u.any()
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, domain_names=["drug", "ctrl", "other"],
                                          **SMALL)
    np.testing.assert_array_equal(m.u, (u == "ctrl").astype(np.int32))


def test_fit_latents_graph_targets(fitted):
    m, x, _ = fitted
    loss = m.history["loss"]
    assert loss.shape == (300,) and np.all(np.isfinite(loss))
    assert loss[-30:].mean() < 0.5 * loss[:30].mean()
    assert m.fit_info["n_steps"] == 300 and m.fit_info["stop_reason"] == "max_steps"
    z = m.get_latent_representation()
    assert z.shape == (N, T, K) and np.all(np.isfinite(z))
    assert z.std(axis=(0, 1)).min() > 0.05  # not collapsed to the prior
    z_inv = m.get_latent_representation(block="invariant")
    assert z_inv.shape == (N, 1)
    # the per-step encoder embeds any number of units; a unit's latents do not depend on
    # which other units are in the call (chunk padding is sliced off)
    np.testing.assert_allclose(m.get_latent_representation(x=x[:7]), z[:7], atol=1e-5)
    graph = m.lag_graph()
    assert graph.shape == (1, K, K) and np.all((graph >= 0) & (graph <= 1))
    targets = m.perturbation_targets()
    assert list(targets.index) == ["ctrl", "drug"] and list(targets.columns) == ["z_0", "z_1"]
    assert np.all((targets.values >= 0) & (targets.values <= 1))
    with pytest.raises(CausalZooError, match=r"weight_shift_scale=None.*weight_shift_scale="):
        m.lag_weight_changes()  # the domains of this model do not change lag weights
    # the fit moved the global factors off their initial values
    assert not np.allclose(m.params["lag_graph_logits"], 0.0)
    assert "fitted, 300 steps" in repr(m)


def test_save_load_round_trip(fitted, tmp_path):
    m, x, _ = fitted
    path = m.save(tmp_path / "dyn")
    meta = json.loads((path / "causalzoo.json").read_text())
    assert meta["model"] == "dynamical" and meta["domain_names"] == ["ctrl", "drug"]
    assert not any(p.suffix == ".pkl" for p in path.iterdir())
    m2 = cz.load(path)
    assert isinstance(m2, cz.DynamicalCausalVAE) and m2.config == m.config
    np.testing.assert_allclose(m2.get_latent_representation(x=x), m.get_latent_representation(),
                               atol=1e-6)
    np.testing.assert_array_equal(m2.lag_graph(), m.lag_graph())
    np.testing.assert_array_equal(m2.history["loss"], m.history["loss"])
    with pytest.raises(CausalZooError, match="without its training data"):
        m2.get_latent_representation()
    with pytest.raises(CausalZooError, match="no AnnData"):
        cz.load(path, adata=object())
    with pytest.raises(CausalZooError, match="already exists"):
        m.save(path)
    with pytest.raises(CausalZooError, match="fitted on"):
        m2.get_latent_representation(x=x[:, :3])


def test_input_errors():
    x, u = make_sequences()
    with pytest.raises(CausalZooError, match="3-D"):
        cz.DynamicalCausalVAE.from_arrays(x=x[:, 0], u=u)
    with pytest.raises(CausalZooError, match="one label per unit"):
        cz.DynamicalCausalVAE.from_arrays(x=x, u=u[:-1])
    with pytest.raises(CausalZooError, match="or one per unit and step"):
        cz.DynamicalCausalVAE.from_arrays(x=x, u=np.zeros((N, 2)))
    with pytest.raises(CausalZooError, match="too short"):
        cz.DynamicalCausalVAE.from_arrays(x=x[:, :2], u=u, n_lags=2)
    with pytest.raises(CausalZooError, match="counts"):
        cz.DynamicalCausalVAE.from_arrays(x=x, u=u, likelihood="nb")
    with pytest.raises(CausalZooError, match="NaN"):
        bad = x.copy()
        bad[0, 0, 0] = np.nan
        cz.DynamicalCausalVAE.from_arrays(x=bad, u=u)
    with pytest.raises(CausalZooError, match="not in domain_names"):
        cz.DynamicalCausalVAE.from_arrays(x=x, u=u, domain_names=["ctrl"])
    with pytest.raises(CausalZooError, match="codes must lie"):
        cz.DynamicalCausalVAE.from_arrays(x=x, u=np.arange(N) % 3, domain_names=["a", "b"])
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL)
    with pytest.raises(CausalZooError, match="not fitted"):
        m.lag_graph()
    with pytest.raises(CausalZooError, match="not fitted"):
        m.lag_weight_changes()
    with pytest.raises(CausalZooError, match="learning rates"):
        m.fit(max_steps=1, learning_rate=0.0)
    with pytest.raises(CausalZooError, match="batch_size"):
        m.fit(max_steps=1, batch_size=N + 1, progress=False)
    with pytest.raises(CausalZooError, match="schedule='linear' is unknown"):
        m.fit(max_steps=1, schedule="linear", progress=False)


def test_cosine_schedule_decays_the_rates_and_is_recorded():
    """schedule="cosine" changes the fit (a decaying rate), is recorded, and the constant
    default records nothing new (so old checkpoints resume)."""
    x, u = make_sequences()
    kw = dict(max_steps=6, batch_size=32, learning_rate=1e-2, progress=False)
    const = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL).fit(**kw)
    cosine = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL).fit(schedule="cosine", **kw)
    assert cosine.fit_info["schedule"] == "cosine" and "schedule" not in const.fit_info
    # step 0 has the same rate under both, later steps a smaller one under cosine
    assert cosine.history["loss"][0] == const.history["loss"][0]
    assert not np.array_equal(cosine.history["loss"], const.history["loss"])


def test_fit_checkpoints_and_resumes_through_the_engine(tmp_path):
    x, u = make_sequences()
    kw = dict(batch_size=32, learning_rate=1e-2, progress=False, steps_per_call=4,
              checkpoint_every=4)
    full = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL).fit(max_steps=8, **kw)
    first = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL).fit(
        max_steps=4, checkpoint_dir=tmp_path / "ckpt", **kw)
    resumed = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL).fit(
        max_steps=8, checkpoint_dir=tmp_path / "ckpt", resume=True, **kw)
    assert resumed.fit_info["n_steps"] == 8 and resumed.history["loss"].shape == (8,)
    np.testing.assert_array_equal(resumed.history["loss"][:4], first.history["loss"])
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"])
    leaves = jax.tree_util.tree_leaves_with_path(full.params)
    for (path, a), b in zip(leaves, jax.tree_util.tree_leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=str(path))


def test_domain_noise_scale_shifts_train_at_the_global_rate():
    """global_params_adam puts the log noise-scale shift factors with the global factors
    (two_speed_adam gives them the network rate because their names start with "log_"):
    Adam's first step moves each parameter by its group's rate."""
    from causalzoo.api.dynamical import global_params_adam

    names = ["log_scale_shift_loc", "log_scale_shift_log_scale", "mean_shift_loc",
             "target_logits", "transition_weights", "log_transition_scale",
             "log_noise_scale", "decoder$params"]
    params = {n: jnp.zeros(2) for n in names}
    opt = global_params_adam(1e-3, 1e-1)
    updates, _ = opt.update({n: jnp.ones(2) for n in names}, opt.init(params), params)
    rate = {n: float(-updates[n][0]) for n in names}
    for n in names[:5]:
        assert rate[n] == pytest.approx(1e-1, rel=1e-3), n
    for n in names[5:]:
        assert rate[n] == pytest.approx(1e-3, rel=1e-3), n
    # the default grouping of fit (two_speed_adam's): log-scale shifts on the network rate
    opt = global_params_adam(1e-3, 1e-1, log_scale_shift_rate="network")
    updates, _ = opt.update({n: jnp.ones(2) for n in names}, opt.init(params), params)
    assert float(-updates["log_scale_shift_loc"][0]) == pytest.approx(1e-3, rel=1e-3)
    assert float(-updates["mean_shift_loc"][0]) == pytest.approx(1e-1, rel=1e-3)
    with pytest.raises(CausalZooError, match="log_scale_shift_rate='fast'"):
        global_params_adam(1e-3, 1e-1, log_scale_shift_rate="fast")


def test_fit_log_scale_shift_rate_moves_the_shifts_and_is_recorded():
    """With the global rate the log noise-scale shift factors move about ten times further
    in a few steps; the setting is recorded (and only when it is not the default)."""
    x, u = make_sequences()
    moved = {}
    for rate in ("network", "global"):
        m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL)
        m.fit(max_steps=20, batch_size=32, learning_rate=1e-3, progress=False,
              log_scale_shift_rate=rate)
        moved[rate] = float(np.abs(np.asarray(m.params["log_scale_shift_log_scale"]) + 2.0)
                            .max())
        assert ("log_scale_shift_rate" in m.fit_info) == (rate == "global")
    assert moved["global"] > 5 * moved["network"], moved


def test_full_posterior_and_fixed_observation_scale_fit_embed_convert_and_round_trip(tmp_path):
    """posterior="full" with a fixed observation scale: the fit reduces the loss, the
    latent means are the encoder's (not a draw: the same twice), the guide's per-step
    factors are correlated, to_datatree works, and save / cz.load keep the options."""
    x, u = make_sequences()
    m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, **SMALL, posterior="full",
                                          observation_scale=0.1)
    m.fit(max_steps=150, batch_size=32, learning_rate=1e-2, progress=False)
    loss = m.history["loss"]
    assert np.isfinite(loss).all() and loss[-10:].mean() < loss[:10].mean()
    z = m.get_latent_representation()
    assert z.shape == (N, T, K)
    np.testing.assert_array_equal(z, m.get_latent_representation())
    dt = cz.diagnostics.to_datatree(m, num_samples=8, seed=0)
    assert dt.posterior["z"].shape == (1, 8, N, T, K)
    m.save(tmp_path / "full")
    loaded = cz.load(tmp_path / "full")
    assert loaded.config.posterior == "full" and loaded.config.observation_scale == 0.1
    np.testing.assert_allclose(loaded.get_latent_representation(x), z, rtol=1e-6)


def test_recurrent_encoder_fits_embeds_predicts_converts_and_round_trips(tmp_path):
    """encoder="recurrent": the fit reduces the loss and is reproducible, the latents of a
    step move when a later step of the sequence changes, predict continues an observed
    prefix shorter than the sequences, to_datatree works, and save / cz.load keep the
    encoder and its latents."""
    x, u = make_sequences()
    kwargs = dict(x=x, u=u, **SMALL, encoder="recurrent", posterior="full")
    m = cz.DynamicalCausalVAE.from_arrays(**kwargs)
    m.fit(max_steps=60, batch_size=32, learning_rate=1e-2, progress=False)
    loss = m.history["loss"]
    assert np.isfinite(loss).all() and loss[-10:].mean() < loss[:10].mean()
    again = cz.DynamicalCausalVAE.from_arrays(**kwargs).fit(
        max_steps=60, batch_size=32, learning_rate=1e-2, progress=False)
    np.testing.assert_array_equal(again.history["loss"], loss)
    z = m.get_latent_representation()
    assert z.shape == (N, T, K)
    later = x.copy()
    later[:, -1] += 1.0
    assert np.abs(m.get_latent_representation(later)[:, 0] - z[:, 0]).max() > 1e-3
    out = m.predict(u[:4], x=x[:4, :3], n_samples=2, seed=0)
    assert out["x"].shape == (2, 4, T, G)
    dt = cz.diagnostics.to_datatree(m, num_samples=4, seed=0)
    assert dt.posterior["z"].shape == (1, 4, N, T, K)
    m.save(tmp_path / "recurrent")
    loaded = cz.load(tmp_path / "recurrent")
    assert loaded.config.encoder == "recurrent"
    np.testing.assert_allclose(loaded.get_latent_representation(x), z, rtol=1e-6)
