"""to_datatree for the iVAE and the dynamical (sequence-mode) entries: dims and coordinates,
ArviZ 1.x functions on the result, netCDF round trips and input errors."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pytest

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.diagnostics import importance_diagnostics, open_datatree, save_datatree

N_DRAWS = 30  # the draws of the ivae_tree and dynamical_tree fixtures (conftest.py)


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


@pytest.mark.parametrize(
    ("entry", "var_names", "coords"),
    [
        ("ivae", ["z"], {"features": ["x0", "x1"]}),
        ("dynamical", ["domain_shift", "mean_shift"], {"features": ["feature0"], "steps": [0, 1]}),
    ],
)
def test_arviz_functions_run_and_are_finite(request, entry, var_names, coords, tmp_path):
    dt = request.getfixturevalue(f"{entry}_tree")
    summary = az.summary(dt, var_names=var_names, kind="stats")
    assert len(summary) and np.isfinite(summary[["mean", "sd"]].to_numpy(dtype=float)).all()
    with warnings.catch_warnings():
        # per-element Pareto-k warnings are the expected finding for 30 VI draws
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(dt)
        pit = az.loo_pit(dt)
    assert np.isfinite(loo.elpd) and np.isfinite(loo.se)
    assert np.isfinite(loo.pareto_k.values).all()
    pit = pit["x"].values
    assert np.isfinite(pit).all() and pit.min() >= 0 and pit.max() <= 1 + 1e-9
    assert az.plot_ppc_dist(dt, num_samples=10, coords=coords) is not None
    assert az.plot_forest(dt, var_names=var_names[:1], coords=(
        {"cells": dt["posterior"]["cells"].values[:3].tolist()} if entry == "ivae" else None
    )) is not None
    back = open_datatree(save_datatree(dt, tmp_path / "posterior.nc"))
    assert back.identical(dt)


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
