"""cz.IVAE: AnnData and array set-up, fitting through the SVI engine, latents, save/load."""

from __future__ import annotations

import json

import anndata
import jax
import numpy as np
import pandas as pd
import pytest

import causalzoo as cz
from causalzoo import CausalZooError

SMALL = dict(n_latent=2, n_hidden=8, n_layers=1)


@pytest.fixture(scope="module")
def data():
    return cz.identifiability.generators.ivae(n_segments=5, n_per_segment=40, n_latent=2,
                                              n_observed=3, n_condition=100, seed=0)


@pytest.fixture(scope="module")
def fitted(data):
    model = cz.IVAE.from_arrays(x=data.x, u=data.segment, **SMALL)
    return model.fit(max_steps=30, batch_size=50, seed=0, progress=False)


def test_from_arrays_labels_and_matrix(data):
    labels = cz.IVAE.from_arrays(x=data.x, u=data.segment, **SMALL)
    assert labels.registry.aux_kind == "labels" and labels.registry.n_aux == 5
    assert labels.registry.categories == ["0", "1", "2", "3", "4"]
    matrix = cz.IVAE.from_arrays(x=data.x, u=data.u, **SMALL)
    assert matrix.registry.aux_kind == "matrix" and matrix.registry.n_aux == 5
    # both encodings give the model the same one-hot u
    np.testing.assert_array_equal(labels._arrays()["u"], matrix._arrays()["u"])
    np.testing.assert_array_equal(labels._arrays()["x"], data.x)


def test_fit_records_history_and_latents(fitted, data):
    assert fitted.is_fitted and fitted.fit_info["n_steps"] == 30
    assert fitted.history["loss"].shape == (30,) and np.all(np.isfinite(fitted.history["loss"]))
    assert {"prior$params", "encoder$params", "decoder$params"} <= set(fitted.params)
    z, scale = fitted.get_latent_representation(give_scale=True)
    assert z.shape == scale.shape == (len(data.x), 2) and np.all(scale > 0)
    assert "X_causalzoo" not in fitted.adata.obsm
    fitted.get_latent_representation(write_obsm=True)
    np.testing.assert_array_equal(fitted.adata.obsm["X_causalzoo"], z)
    assert "fitted, 30 steps" in repr(fitted)


def test_fit_continues_from_the_current_parameters(data):
    model = cz.IVAE.from_arrays(x=data.x, u=data.segment, **SMALL)
    model.fit(max_steps=10, batch_size=50, progress=False)
    first = model.history["loss"].copy()
    model.fit(max_steps=10, batch_size=50, progress=False)
    assert model.fit_info["n_steps"] == 20 and model.history["loss"].shape == (20,)
    np.testing.assert_array_equal(model.history["loss"][:10], first)


def test_anndata_setup_with_layer_and_obs_labels(data):
    adata = anndata.AnnData(
        X=np.zeros_like(data.x),
        obs=pd.DataFrame({"domain": [f"d{s}" for s in data.segment]},
                         index=[f"c{i}" for i in range(len(data.x))]),
    )
    adata.layers["values"] = data.x
    registry = cz.IVAE.setup_anndata(adata, aux_key="domain", layer="values")
    assert registry.layer == "values" and registry.categories == [f"d{i}" for i in range(5)]
    model = cz.IVAE(adata, **SMALL)
    np.testing.assert_array_equal(model._arrays()["x"], data.x)
    assert json.loads(json.dumps(adata.uns["causalzoo"]["setup_ivae"])) == registry.to_dict()


def test_setup_errors(data):
    adata = anndata.AnnData(X=data.x, obs=pd.DataFrame({"u": data.segment.astype(str)},
                                                       index=[str(i) for i in range(200)]))
    with pytest.raises(CausalZooError, match="aux_key='segment' is neither"):
        cz.IVAE.setup_anndata(adata, aux_key="segment")
    adata.obsm["u"] = data.u
    with pytest.raises(CausalZooError, match="both an obs column and an obsm key"):
        cz.IVAE.setup_anndata(adata, aux_key="u")
    with pytest.raises(CausalZooError, match="view"):
        cz.IVAE.setup_anndata(adata[:10], aux_key="u")
    with pytest.raises(CausalZooError, match="not been set up"):
        cz.IVAE(anndata.AnnData(X=data.x))
    with pytest.raises(CausalZooError, match="models counts"):
        cz.IVAE.from_arrays(x=data.x, u=data.segment, likelihood="nb", **SMALL)
    with pytest.raises(CausalZooError, match="count_data=True"):
        cz.IVAE.from_arrays(x=data.x, u=data.segment, count_data=True, **SMALL)
    with pytest.raises(CausalZooError, match="u has 10 rows"):
        cz.IVAE.from_arrays(x=data.x, u=data.segment[:10], **SMALL)
    model = cz.IVAE.from_arrays(x=data.x, u=data.segment, **SMALL)
    with pytest.raises(CausalZooError, match="schedule='linear'"):
        model.fit(max_steps=5, schedule="linear", progress=False)
    with pytest.raises(CausalZooError, match="learning_rate"):
        model.fit(max_steps=5, learning_rate=0.0, progress=False)
    with pytest.raises(CausalZooError, match="not fitted"):
        cz.IVAE.from_arrays(x=data.x, u=data.segment, **SMALL).get_latent_representation()


def test_new_data_must_match_the_setup(fitted, data):
    other = fitted.adata.copy()
    other.obs["u"] = pd.Categorical(["9"] * other.n_obs)
    with pytest.raises(CausalZooError, match=r"labels \['9'\]"):
        fitted.get_latent_representation(other)
    renamed = fitted.adata.copy()
    renamed.var_names = ["a", "b", "c"]
    with pytest.raises(CausalZooError, match="var_names differ"):
        fitted.get_latent_representation(renamed)


def test_count_likelihood_fits(data):
    counts = np.random.default_rng(0).poisson(np.exp(data.x)).astype(np.float32)
    model = cz.IVAE.from_arrays(x=counts, u=data.segment, count_data=True, likelihood="poisson",
                                **SMALL)
    model.fit(max_steps=5, batch_size=50, progress=False)
    assert np.all(np.isfinite(model.history["loss"]))


def test_save_and_load_round_trip(fitted, tmp_path):
    path = fitted.save(tmp_path / "ivae")
    meta = json.loads((path / "causalzoo.json").read_text())
    assert meta["model"] == "ivae" and meta["config"]["n_latent"] == 2
    loaded = cz.load(path, adata=fitted.adata)
    assert isinstance(loaded, cz.IVAE) and loaded.config == fitted.config
    np.testing.assert_allclose(
        loaded.get_latent_representation(), fitted.get_latent_representation(), rtol=1e-6
    )
    np.testing.assert_array_equal(loaded.history["loss"], fitted.history["loss"])
    # without data the model loads, and says what to pass to embed
    bare = cz.load(path)
    with pytest.raises(CausalZooError, match="no data attached"):
        bare.get_latent_representation()
    with pytest.raises(CausalZooError, match="already exists"):
        fitted.save(path)


def test_fit_checkpoints_and_resumes_through_the_engine(tmp_path):
    rng = np.random.default_rng(0)
    u = np.repeat(np.arange(4), 30)
    z = rng.normal(size=(120, 2)) * (1 + u[:, None])
    x = (z @ rng.normal(size=(2, 4))).astype(np.float32)
    small = dict(n_latent=2, n_hidden=8, n_layers=1)
    kw = dict(batch_size=32, progress=False, steps_per_call=4, checkpoint_every=4,
              schedule="constant")
    full = cz.IVAE.from_arrays(x=x, u=u, **small).fit(max_steps=8, **kw)
    first = cz.IVAE.from_arrays(x=x, u=u, **small).fit(
        max_steps=4, checkpoint_dir=tmp_path / "ckpt", **kw)
    resumed = cz.IVAE.from_arrays(x=x, u=u, **small).fit(
        max_steps=8, checkpoint_dir=tmp_path / "ckpt", resume=True, **kw)
    assert resumed.fit_info["n_steps"] == 8 and resumed.history["loss"].shape == (8,)
    np.testing.assert_array_equal(resumed.history["loss"][:4], first.history["loss"])
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"])
    leaves = jax.tree_util.tree_leaves_with_path(full.params)
    for (path, a), b in zip(leaves, jax.tree_util.tree_leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=str(path))
