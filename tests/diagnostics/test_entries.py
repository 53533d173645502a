"""to_datatree for the iVAE and the dynamical (sequence and snapshot mode) entries: dims and
coordinates, the stored values, ArviZ 1.x functions on the result, netCDF round trips and
input errors."""

from __future__ import annotations

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.diagnostics import (
    importance_diagnostics,
    open_datatree,
    save_datatree,
    write_report,
)
from causalzoo.diagnostics._hooks import _snapshot_cells
from causalzoo.models.dynamical_snapshot import snapshot_guide, snapshot_model

# the draws and chunk sizes of the *_tree fixtures (conftest.py): a conversion with the same
# ones re-uses the compiled sampler
N_DRAWS = 30
CHUNKS = {"ivae": 64, "dynamical": 7, "snapshot": 50}


def test_ivae_groups_dims_and_coords(ivae, ivae_tree):
    n = ivae.adata.n_obs
    post = ivae_tree["posterior"].to_dataset()
    assert post["z"].dims == ("chain", "draw", "cells", "latents")
    assert post["z"].shape == (1, N_DRAWS, n, 2)
    assert list(post["latents"].values) == ["z_0", "z_1"]
    ll = ivae_tree["log_likelihood"].to_dataset()["x"]
    assert ll.dims == ("chain", "draw", "cells", "features")
    assert list(ll["features"].values) == ivae.registry.feature_names
    np.testing.assert_array_equal(
        ivae_tree["observed_data"].to_dataset()["x"].values, ivae.adata.X
    )
    u = ivae_tree["constant_data"].to_dataset()["u"]
    assert u.dims == ("cells", "aux") and list(u["aux"].values) == ivae.registry.categories
    # the draws scatter around the amortised guide's means
    loc = ivae.get_latent_representation()
    err = np.abs(post["z"].values[0].mean(0) - loc)
    assert np.median(err) < 3 * post["z"].values[0].std(0).mean() / np.sqrt(N_DRAWS)
    assert ivae_tree["sample_stats"].to_dataset()["elbo"].sizes["step"] == 30


def test_dynamical_groups_dims_and_coords(dynamical, dynamical_tree):
    post = dynamical_tree["posterior"].to_dataset()
    assert post["z"].dims == ("chain", "draw", "units", "steps", "latents")
    assert post["z_inv"].dims == ("chain", "draw", "units", "latents_invariant")
    assert post["lag_graph"].dims == ("chain", "draw", "latents", "lags", "parents")
    assert post["mean_shift"].dims == ("chain", "draw", "domains", "latents")
    assert list(post["domains"].values) == ["a", "b", "c"]
    np.testing.assert_array_equal(post["domain_shift"], post["target"] * post["mean_shift"])
    # noise_modulation="targets" (the default): the targets gate the noise-scale shift too
    np.testing.assert_array_equal(post["domain_log_scale_shift"],
                                  post["target"] * post["log_scale_shift"])
    # globals are drawn once per draw: every chunk of units saw the same lag graph
    assert set(np.unique(post["lag_graph"])) <= {0.0, 1.0}
    obs = dynamical_tree["observed_data"].to_dataset()["x"]
    assert obs.dims == ("units", "steps", "features")
    np.testing.assert_array_equal(obs.values, dynamical.x)
    ll = dynamical_tree["log_likelihood"].to_dataset()["x"]
    assert ll.dims == ("chain", "draw", "units", "steps", "features") and np.isfinite(ll).all()
    # one importance weight per unit (the units plate sits left of the steps plate)
    lw = dynamical_tree["sample_stats"].to_dataset()["log_weight"]
    assert lw.dims == ("chain", "draw", "units") and np.isfinite(lw).all()
    const = dynamical_tree["constant_data"].to_dataset()
    assert list(const["domain"].values[:3]) == ["a", "b", "c"]
    diag = importance_diagnostics(dynamical_tree)
    assert diag["k_cells"].dims == ("units",)


def test_snapshot_groups_dims_and_coords(snapshot, snapshot_tree):
    adata = snapshot.adata
    assert set(snapshot_tree.children) == {
        "posterior", "posterior_predictive", "log_likelihood", "observed_data",
        "constant_data", "sample_stats",
    }
    post = snapshot_tree["posterior"].to_dataset()
    assert post["z"].dims == ("chain", "draw", "cells", "latents")
    assert post["z"].shape == (1, N_DRAWS, adata.n_obs, 2)
    assert post["z_inv"].dims == ("chain", "draw", "cells", "latents_invariant")
    assert post["lag_graph"].dims == ("chain", "draw", "latents", "lags", "parents")
    for name in ("target", "mean_shift", "log_scale_shift", "domain_shift",
                 "domain_log_scale_shift"):
        assert post[name].dims == ("chain", "draw", "domains", "latents"), name
    assert list(post["domains"].values) == ["A", "B"]
    assert list(post["latents"].values) == ["z_0", "z_1"]
    assert list(post["cells"].values) == list(adata.obs_names)
    # the shifts that act: none for the control A, target * shift for B
    shift = post["domain_shift"]
    assert (shift.sel(domains="A") == 0).all()
    np.testing.assert_array_equal(
        shift.sel(domains="B"), (post["target"] * post["mean_shift"]).sel(domains="B")
    )
    np.testing.assert_array_equal(
        post["domain_log_scale_shift"].sel(domains="B"),
        (post["target"] * post["log_scale_shift"]).sel(domains="B"),
    )
    # globals are drawn once per draw, shared by every chunk of cells
    assert set(np.unique(post["lag_graph"])) <= {0.0, 1.0}
    assert set(np.unique(post["target"])) <= {0.0, 1.0}
    for group in ("posterior_predictive", "log_likelihood"):
        x = snapshot_tree[group].to_dataset()["x"]
        assert x.dims == ("chain", "draw", "cells", "features") and np.isfinite(x).all()
        assert list(x["features"].values) == list(adata.var_names)
    obs = snapshot_tree["observed_data"].to_dataset()["x"]
    np.testing.assert_array_equal(obs.values, adata.X)
    const = snapshot_tree["constant_data"].to_dataset()
    assert list(const["perturbation"].values) == list(adata.obs["pert"])
    np.testing.assert_array_equal(const["time"].values, adata.obs["hours"].to_numpy())
    np.testing.assert_array_equal(const["time_index"].values, adata.obs["hours"] // 24)
    assert list(const["grid_time"].values) == [0.0, 24.0, 48.0]
    stats = snapshot_tree["sample_stats"].to_dataset()
    np.testing.assert_allclose(stats["elbo"].values, -snapshot.history["loss"])
    assert stats["log_weight"].dims == ("chain", "draw", "cells")
    assert importance_diagnostics(snapshot_tree)["k_cells"].dims == ("cells",)
    assert snapshot_tree.attrs["mode"] == "snapshot" and snapshot_tree.attrs["control"] == "A"


def test_snapshot_log_weight_is_the_models(snapshot, snapshot_tree):
    """Re-score cells of both perturbations at several time points under one draw with the
    plain model and guide, conditioned on the stored draws: the stored importance weight
    ``log p(x_n, z_n | g) - log q(z_n | x_n)`` must match, and it depends on each cell's
    perturbation and time (the population prior), so mis-wired labels would show."""
    draw, cells = 11, [5, 45, 70, 95, 119]  # A at 0 and 48 h, B at 0, 24 and 48 h
    post = snapshot_tree["posterior"].to_dataset().isel(chain=0, draw=draw)
    const = snapshot_tree["constant_data"].to_dataset()
    values = {n: jnp.asarray(post[n].values)
              for n in ("lag_graph", "target", "mean_shift", "log_scale_shift")}
    values["z"] = jnp.asarray(post["z"].values[cells])
    values["z_inv"] = jnp.asarray(post["z_inv"].values[cells])
    x = snapshot_tree["observed_data"].to_dataset()["x"].values[cells]
    arrays = {"x": jnp.asarray(x), "u": jnp.asarray(const["u"].values[cells]),
              "time_index": jnp.asarray(const["time_index"].values[cells])}
    static, params = snapshot._static_kwargs(), snapshot.params

    @jax.jit  # one compilation (op-by-op dispatch of the particle scan is slower)
    def scores(values, arrays):
        def log_densities(program, arrays, sites):
            tr = handlers.trace(handlers.seed(
                handlers.substitute(handlers.condition(program, values), params), 0
            )).get_trace(**arrays, **static)
            return {s: tr[s]["fn"].log_prob(tr[s]["value"]) for s in sites}

        at_zero = {**arrays, "time_index": jnp.zeros_like(arrays["time_index"])}
        return (log_densities(snapshot_model, arrays, ("x", "z", "z_inv")),
                log_densities(snapshot_guide, arrays, ("z", "z_inv")),
                log_densities(snapshot_model, at_zero, ("z",)))

    p, q, at_zero = jax.tree_util.tree_map(np.asarray, scores(values, arrays))
    stored = snapshot_tree["sample_stats"].to_dataset()["log_weight"].values[0, draw, cells]
    np.testing.assert_allclose(stored, sum(p.values()) - sum(q.values()), rtol=1e-4, atol=1e-3)
    ll = snapshot_tree["log_likelihood"].to_dataset()["x"].values[0, draw, cells]
    np.testing.assert_allclose(ll.sum(-1), p["x"], rtol=1e-4, atol=1e-3)
    # the check is sensitive to the labels: the prior of a cell past step 0 moves when it is
    # scored at step 0 (the guide does not see the time)
    later = const["time_index"].values[cells] > 0
    assert np.abs(at_zero["z"] - p["z"])[later].min() > 1e-2


@pytest.mark.parametrize(
    ("entry", "var_names", "coords"),
    [
        ("ivae", ["z"], {"features": ["x0", "x1"]}),
        ("dynamical", ["domain_shift", "mean_shift"], {"features": ["feature0"], "steps": [0, 1]}),
        ("snapshot", ["domain_shift", "mean_shift", "lag_graph"], {"features": ["g0", "g1"]}),
    ],
)
def test_arviz_functions_run_and_are_finite(request, entry, var_names, coords, tmp_path):
    """az.summary, az.loo, az.loo_pit, az.compare, az.plot_ppc_dist and az.plot_forest on
    the entry's DataTree, unchanged, and netCDF / zarr round trips."""
    dt = request.getfixturevalue(f"{entry}_tree")
    summary = az.summary(dt, var_names=var_names, kind="stats")
    assert len(summary) and np.isfinite(summary[["mean", "sd"]].to_numpy(dtype=float)).all()
    # other draws of the same fit (same draws and chunks: no recompilation), for az.compare
    other = request.getfixturevalue(entry).to_datatree(
        num_samples=N_DRAWS, seed=1, chunk_size=CHUNKS[entry]
    )
    with warnings.catch_warnings():
        # per-element Pareto-k warnings are the expected finding for 30 VI draws
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(dt)
        pit = az.loo_pit(dt)
        table = az.compare({"seed0": dt, "seed1": other})
    assert np.isfinite(loo.elpd) and np.isfinite(loo.se)
    assert np.isfinite(loo.pareto_k.values).all()
    pit = pit["x"].values
    assert np.isfinite(pit).all() and pit.min() >= 0 and pit.max() <= 1 + 1e-9
    assert set(table.index) == {"seed0", "seed1"}
    assert np.isfinite(table[["elpd", "p", "se", "weight"]].to_numpy(dtype=float)).all()
    assert abs(table["weight"].sum() - 1) < 1e-6
    # the table reads this tree's elpd (az.compare rounds it to its standard error)
    assert abs(table.loc["seed0", "elpd"] - loo.elpd) <= loo.se
    assert az.plot_ppc_dist(dt, num_samples=10, coords=coords) is not None
    assert az.plot_forest(dt, var_names=var_names[:1], coords=(
        {"cells": dt["posterior"]["cells"].values[:3].tolist()} if entry == "ivae" else None
    )) is not None
    for suffix in (".nc", ".zarr"):
        back = open_datatree(save_datatree(dt, tmp_path / f"posterior{suffix}"))
        assert back.identical(dt), suffix


def test_other_units_and_errors(dynamical, ivae):
    # other units (the fixture's draws and chunk size: the compiled sampler is re-used)
    x = dynamical.x[:7]
    dt = dynamical.to_datatree({"x": x, "u": dynamical.u[:7]}, num_samples=N_DRAWS,
                               chunk_size=7)
    assert dt["posterior"]["z"].sizes["units"] == 7
    np.testing.assert_array_equal(dt["observed_data"]["x"].values, x)
    with pytest.raises(CausalZooError, match="dict"):
        dynamical.to_datatree(x)
    with pytest.raises(CausalZooError, match="fitted on"):
        dynamical.to_datatree({"x": x[:, :3]})
    data = cz.identifiability.generators.ivae(n_segments=2, n_per_segment=5, n_latent=2, seed=1)
    unfitted = cz.IVAE.from_arrays(x=data.x, u=data.segment, n_latent=2)
    with pytest.raises(CausalZooError, match="not fitted"):
        unfitted.to_datatree()


def test_snapshot_other_cells_save_load_and_errors(snapshot, snapshot_tree, tmp_path):
    kwargs = {"num_samples": N_DRAWS, "chunk_size": CHUNKS["snapshot"]}
    sub = snapshot.adata[::2].copy()  # more cells than a chunk: the same compiled shapes
    dt = snapshot.to_datatree(sub, **kwargs)
    assert dt["posterior"]["z"].sizes["cells"] == sub.n_obs == 60
    np.testing.assert_array_equal(dt["observed_data"]["x"].values, sub.X)
    assert list(dt["constant_data"]["perturbation"].values) == list(sub.obs["pert"])
    # the globals are drawn before the cells: the same seed gives the same globals
    np.testing.assert_array_equal(dt["posterior"]["mean_shift"].values,
                                  snapshot_tree["posterior"]["mean_shift"].values)
    # a saved model converts once its cells are attached, to the same DataTree
    snapshot.save(tmp_path / "snap")
    with pytest.raises(CausalZooError, match="loaded without"):
        cz.load(tmp_path / "snap").to_datatree(**kwargs)
    back = cz.load(tmp_path / "snap", adata=snapshot.adata).to_datatree(**kwargs)
    assert back["posterior"].identical(snapshot_tree["posterior"])
    with pytest.raises(CausalZooError, match="AnnData"):
        snapshot.to_datatree(sub.X)
    off = sub.copy()
    off.obs["hours"] = 30.0
    with pytest.raises(CausalZooError, match="not on the model's time grid"):
        snapshot.to_datatree(off, **kwargs)
    # set up with a time_step, 72 h is a grid time past the fitted ones (checked before any
    # sampling, so an unfitted model shows it)
    stepped = snapshot.adata.copy()
    cz.DynamicalCausalVAE.setup_anndata(stepped, time_key="hours", perturbation_key="pert",
                                        control="A", time_step=24.0)
    off.obs["hours"] = 72.0
    with pytest.raises(CausalZooError, match="past the fitted time grid"):
        _snapshot_cells(cz.DynamicalCausalVAE(stepped, n_latent=2), off)
    unknown = sub.copy()
    unknown.obs["pert"] = "C"
    with pytest.raises(CausalZooError, match="Unknown perturbation"):
        snapshot.to_datatree(unknown, **kwargs)
    with pytest.raises(CausalZooError, match="not fitted"):
        cz.DynamicalCausalVAE(snapshot.adata, n_latent=2).to_datatree()


def test_report_of_a_snapshot_fit(snapshot, snapshot_tree, tmp_path):
    """``causalzoo report`` on a saved snapshot-mode fit with its cells (which are set up for
    snapshot mode, not for the sparse model's registry)."""
    snapshot.save(tmp_path / "snap")
    page = write_report(tmp_path / "snap", tmp_path / "out", adata=snapshot.adata,
                        num_samples=N_DRAWS, chunk_size=CHUNKS["snapshot"])
    text = page.read_text()
    assert "DynamicalCausalVAE(snapshot" in text and "## Variational diagnostics" in text
    dt = open_datatree(tmp_path / "out" / "posterior.nc")
    assert dt["posterior"].identical(snapshot_tree["posterior"])


def test_snapshot_noise_scale_shifts_follow_noise_modulation(time_course_factory):
    # With noise_modulation="all" every domain but the control shifts every latent's noise
    # scale whatever its target says; the converter reports the shifts the model applies.
    adata = time_course_factory(per=8)
    cz.DynamicalCausalVAE.setup_anndata(adata, time_key="hours", perturbation_key="pert",
                                        control="A")
    model = cz.DynamicalCausalVAE(adata, n_latent=2, n_latent_invariant=1, n_hidden=8,
                                  n_layers=1, transition="linear", noise_modulation="all")
    model.fit(max_steps=5, batch_size=48, progress=False, seed=0)
    post = model.to_datatree(num_samples=4, seed=0,
                             posterior_predictive=False)["posterior"].to_dataset()
    assert (post["domain_log_scale_shift"].sel(domains="A") == 0).all()
    np.testing.assert_array_equal(post["domain_log_scale_shift"].sel(domains="B"),
                                  post["log_scale_shift"].sel(domains="B"))
    assert (post["log_scale_shift"].sel(domains="B") != 0).any()
