"""to_datatree: groups, dims and coordinates, chunking, the values it stores, ArviZ 1.x
functions on the result, netCDF/zarr round trips and input errors."""

from __future__ import annotations

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.diagnostics import open_datatree, save_datatree, to_datatree
from causalzoo.models.sparse_perturbation import sparse_perturbation_model


def test_groups_dims_and_coords(adata, datatree, n_draws):
    assert set(datatree.children) == {
        "posterior", "posterior_predictive", "log_likelihood", "observed_data",
        "constant_data", "sample_stats",
    }
    post = datatree["posterior"].to_dataset()
    assert dict(post.sizes)["chain"] == 1 and dict(post.sizes)["draw"] == n_draws
    assert post["z_inv"].dims == ("chain", "draw", "cells", "latents_invariant")
    assert post["z_resp"].dims == ("chain", "draw", "cells", "latents_response")
    assert post["effect"].dims == ("chain", "draw", "perturbations", "latents_response")
    assert list(post["perturbations"].values) == ["P0", "P1", "P2"]
    np.testing.assert_array_equal(post["shift"], post["mask"] * post["effect"])
    assert set(np.unique(post["mask"])) <= {0.0, 1.0}
    pred = datatree["posterior_predictive"].to_dataset()["x"]
    assert pred.dims == ("chain", "draw", "cells", "genes")
    assert list(pred["genes"].values) == list(adata.var_names)
    assert list(pred["cells"].values) == list(adata.obs_names)
    obs = datatree["observed_data"].to_dataset()["x"]
    np.testing.assert_array_equal(obs.values, adata.X.toarray())
    const = datatree["constant_data"].to_dataset()
    np.testing.assert_array_equal(const["design"].values, adata.obsm["design"])
    ll = datatree["log_likelihood"].to_dataset()["x"]
    assert ll.dims == ("chain", "draw", "cells", "genes") and np.isfinite(ll).all()
    stats = datatree["sample_stats"].to_dataset()
    assert stats["elbo"].sizes["step"] == 60


def test_stored_log_likelihood_is_the_models(fitted, datatree):
    """Re-score two cells under one draw with the plain model, conditioned on the stored
    latents: the element-wise log-likelihood must match what the converter stored."""
    post = datatree["posterior"].to_dataset().isel(chain=0, draw=7)
    const = datatree["constant_data"].to_dataset()
    x = datatree["observed_data"].to_dataset()["x"].values
    cells = [3, 140]
    values = {
        name: jnp.asarray(post[name].values)
        for name in ("effect", "mask", "scm_weights", "invariant_coupling")
    }
    values["z_inv"] = jnp.asarray(post["z_inv"].values[cells])
    values["z_resp"] = jnp.asarray(post["z_resp"].values[cells])
    static = fitted._model_kwargs()

    @jax.jit  # compiled once: faster than the model's op-by-op dispatch
    def log_lik(values, arrays):
        model = handlers.substitute(handlers.condition(sparse_perturbation_model, values),
                                    fitted.params)
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(**arrays, **static)
        return tr["x"]["fn"].base_dist.log_prob(tr["x"]["value"])

    expected = np.asarray(log_lik(values, {
        "x": jnp.asarray(x[cells]), "design": jnp.asarray(const["design"].values[cells]),
        "covariates": jnp.asarray(const["covariates"].values[cells]),
        "library_size": jnp.asarray(const["library_size"].values[cells]),
    }))
    stored = datatree["log_likelihood"].to_dataset()["x"].isel(chain=0, draw=7).values[cells]
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-3)


def _shared_shift_model(x=None):
    shift = numpyro.sample("shift", dist.Normal(0.0, 1.0))
    with numpyro.plate("cells", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal((z + shift)[:, None], 1.0).expand(x.shape).to_event(1),
                       obs=x)


def _shared_shift_guide(x=None):
    numpyro.sample("shift", dist.Normal(numpyro.param("shift_loc", 0.0), 0.5))
    with numpyro.plate("cells", x.shape[0]):
        numpyro.sample("z", dist.Normal(x.mean(-1) / 2, 0.7))


def test_chunking_keeps_globals_and_cells():
    """The generic converter on a model with one global (a shift shared by all cells): the
    globals are drawn once per draw whatever the chunk size, every chunk is scored under the
    stored global draw, and the padded cells of a last partial chunk never leak in. (The
    sparse model's `datatree` is chunked too: test_stored_log_likelihood_is_the_models
    re-scores a cell of its padded last chunk.)"""
    x = np.random.default_rng(3).normal(size=(23, 2)).astype(np.float32)
    src = cz.diagnostics.PosteriorSource(
        model=_shared_shift_model, guide=_shared_shift_guide,
        params={"shift_loc": jnp.asarray(0.3)}, cell_data={"x": x},
        event_dims={"x": ["genes"]},
    )
    trees = {c: to_datatree(src, num_samples=8, seed=0, chunk_size=c) for c in (5, 23)}
    np.testing.assert_array_equal(trees[5]["posterior"]["shift"].values,
                                  trees[23]["posterior"]["shift"].values)
    for dt in trees.values():
        post = dt["posterior"].to_dataset()
        shift, z = post["shift"].values[0], post["z"].values[0]  # (draw,), (draw, cells)
        assert z.shape == (8, 23) and np.unique(z).size == z.size
        expected = dist.Normal(z[..., None] + shift[:, None, None], 1.0).log_prob(x)
        np.testing.assert_allclose(dt["log_likelihood"]["x"].values[0], expected, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_array_equal(dt["observed_data"]["x"].values, x)
    bare = to_datatree(src, num_samples=8, seed=0, chunk_size=5, posterior_predictive=False)
    assert "posterior_predictive" not in bare.children


def test_arviz_functions_run_and_are_finite(fitted, datatree, n_draws, chunk):
    summary = az.summary(datatree, var_names=["shift", "effect", "scm_weights"], kind="stats")
    assert np.isfinite(summary[["mean", "sd"]].to_numpy(dtype=float)).all()
    with warnings.catch_warnings():
        # per-element Pareto-k warnings are the expected finding for 60 VI draws
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(datatree)
        pit = az.loo_pit(datatree)
        # the conditional trees as they are (compare_models compares marginal ones); other
        # draws of the same fit at the same shapes (no recompilation)
        other = fitted.to_datatree(num_samples=n_draws, seed=1, chunk_size=chunk)
        table = az.compare({"seed0": datatree, "seed1": other})
    assert np.isfinite(table[["elpd", "p", "se", "weight"]].to_numpy(dtype=float)).all()
    assert abs(table["weight"].sum() - 1) < 1e-6
    assert np.isfinite(loo.elpd) and np.isfinite(loo.se)
    assert np.isfinite(loo.pareto_k.values).all()
    pit = pit["x"].values
    assert np.isfinite(pit).all() and pit.min() >= 0 and pit.max() <= 1 + 1e-9
    pc = az.plot_ppc_dist(datatree, num_samples=10, coords={"genes": ["G0", "G1"]})
    assert pc is not None
    pc = az.plot_forest(datatree, var_names=["shift"])
    assert pc is not None


def test_compare_on_heldout_cells(fitted, adata, heldout, small):
    """LOO of the marginal likelihood on cells no model saw, for two configurations."""
    sams = cz.SparsePerturbationVAE(adata, **small, scm_graph="none", couple_invariant=False)
    sams.fit(max_steps=30, batch_size=32, progress=False, seed=0)
    models = {"perturbed": fitted, "sams": sams}
    table = cz.diagnostics.compare_models(models, heldout, num_samples=30, n_inner=4)
    assert set(table.index) == {"perturbed", "sams"}
    assert np.isfinite(table[["elpd", "lpd", "lpd_se", "weight"]].to_numpy(dtype=float)).all()
    assert abs(table["weight"].sum() - 1) < 1e-6
    # the log pointwise predictive density bounds the LOO estimate from above
    assert (table["lpd"] >= table["elpd"] - 1e-6).all()
    # paired lpd differences from the best lpd: zero for it, its own sum for the other
    best, other = table["lpd"].idxmax(), table["lpd"].idxmin()
    assert table.loc[best, "lpd_diff"] == 0 and table.loc[best, "lpd_diff_se"] == 0
    assert np.isclose(table.loc[other, "lpd_diff"],
                      table.loc[other, "lpd"] - table.loc[best, "lpd"])
    assert table.loc[other, "lpd_diff_se"] > 0
    # the trees it compared (same draws: the compiled samplers are re-used): one marginal
    # log-likelihood per held-out cell, no predictive draws, no per-cell latents
    trees = cz.diagnostics.heldout_datatrees(models, heldout, num_samples=30, n_inner=4)
    for name, dt in trees.items():
        assert "posterior_predictive" not in dt.children
        assert "z_inv" not in dt["posterior"] and "effect" in dt["posterior"]
        ll = dt["log_likelihood"]["x"]
        assert ll.dims == ("chain", "draw", "cells") and ll.sizes["cells"] == heldout.n_obs
        assert dt.attrs["log_likelihood"] == "marginal"
        lpd = cz.diagnostics.heldout_lpd(dt)
        assert np.isclose(lpd["lpd"], table.loc[name, "lpd"])
    assert "scm_weights" not in trees["sams"]["posterior"]


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_round_trip(datatree, tmp_path, suffix):
    path = save_datatree(datatree, tmp_path / f"posterior{suffix}")
    back = open_datatree(path)
    assert back.identical(datatree)


def test_errors(adata, fitted, small):
    unfitted = cz.SparsePerturbationVAE(adata, **small)
    with pytest.raises(CausalZooError, match="not fitted"):
        to_datatree(unfitted)
    with pytest.raises(CausalZooError, match="num_samples"):
        to_datatree(fitted, num_samples=2)
    with pytest.raises(CausalZooError, match="log_likelihood"):
        to_datatree(fitted, log_likelihood="pointwise")
    with pytest.raises(CausalZooError, match="does not know"):
        to_datatree(object())
    with pytest.raises(CausalZooError, match="suffix"):
        save_datatree(None, "posterior.h5")


def test_backed_anndata_is_read_a_chunk_at_a_time(fitted, adata, datatree, n_draws, chunk,
                                                  x_reads, open_backed):
    """An AnnData opened with backed="r": every row is read once, a chunk at a time, every
    file read within one validation block (never the whole matrix), and the DataTree equals
    the in-memory one."""
    backed = open_backed(adata)
    dt = to_datatree(fitted, backed, num_samples=n_draws, seed=0, chunk_size=chunk)
    x_reads.assert_bounded(*adata.shape, chunk)
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data",
                  "constant_data"):
        assert dt[group].to_dataset().identical(datatree[group].to_dataset()), group
    np.testing.assert_array_equal(dt["sample_stats"]["log_weight"],
                                  datatree["sample_stats"]["log_weight"])
    x_reads.clear()
    bare = to_datatree(fitted, backed, num_samples=n_draws, seed=0, chunk_size=chunk,
                       observed_data=False, posterior_predictive=False)
    assert "observed_data" not in bare.children
    x_reads.assert_bounded(*adata.shape, chunk)
    np.testing.assert_array_equal(bare["log_likelihood"]["x"], datatree["log_likelihood"]["x"])
