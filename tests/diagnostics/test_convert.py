"""to_datatree: groups, dims and coordinates, chunking, the values it stores, ArviZ 1.x
functions on the result, netCDF/zarr round trips and input errors."""

from __future__ import annotations

import warnings

import arviz as az
import jax.numpy as jnp
import numpy as np
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
    model = handlers.substitute(handlers.condition(sparse_perturbation_model, values), fitted.params)
    tr = handlers.trace(handlers.seed(model, 0)).get_trace(
        x=jnp.asarray(x[cells]), design=jnp.asarray(const["design"].values[cells]),
        covariates=jnp.asarray(const["covariates"].values[cells]),
        library_size=jnp.asarray(const["library_size"].values[cells]),
        **fitted._model_kwargs(),
    )
    expected = np.asarray(tr["x"]["fn"].base_dist.log_prob(tr["x"]["value"]))
    stored = datatree["log_likelihood"].to_dataset()["x"].isel(chain=0, draw=7).values[cells]
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-3)


def test_chunking_keeps_globals_and_cells(fitted, datatree, n_draws):
    small = to_datatree(fitted, num_samples=n_draws, seed=0, chunk_size=7,
                        posterior_predictive=False)
    a, b = datatree["posterior"].to_dataset(), small["posterior"].to_dataset()
    for name in ("effect", "mask", "scm_weights"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert b["z_inv"].sizes["cells"] == fitted.adata.n_obs
    assert "posterior_predictive" not in small.children
    # padded cells of the last chunk never leak in: every cell's latents are distinct
    z = b["z_inv"].isel(chain=0, draw=0).values
    assert np.unique(z, axis=0).shape[0] == z.shape[0]


def test_arviz_functions_run_and_are_finite(datatree):
    summary = az.summary(datatree, var_names=["shift", "effect", "scm_weights"], kind="stats")
    assert np.isfinite(summary[["mean", "sd"]].to_numpy(dtype=float)).all()
    with warnings.catch_warnings():
        # per-element Pareto-k warnings are the expected finding for 60 VI draws
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(datatree)
        pit = az.loo_pit(datatree)
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
    table = cz.diagnostics.compare_models(
        {"perturbed": fitted, "sams": sams}, heldout, num_samples=30, n_inner=4
    )
    assert set(table.index) == {"perturbed", "sams"}
    assert np.isfinite(table[["elpd", "lpd", "lpd_se", "weight"]].to_numpy(dtype=float)).all()
    assert abs(table["weight"].sum() - 1) < 1e-6
    # the log pointwise predictive density bounds the LOO estimate from above
    assert (table["lpd"] >= table["elpd"] - 1e-6).all()


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
