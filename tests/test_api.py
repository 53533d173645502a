"""SparsePerturbationVAE end to end on a small synthetic AnnData: set-up, fit, latents,
prediction, masks, save/load, alignment, from_arrays and input errors.

Every fit and every prediction compiles, so the fitted model is shared (module fixture) and
the calls are few."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import causalzoo as cz
from causalzoo import CausalZooError, SparsePerturbationVAE
from causalzoo.api.sparse_perturbation import _program_key
from causalzoo.models.sparse_perturbation import SparsePerturbationConfig

SMALL = dict(n_latent_invariant=2, n_latent_response=3, n_hidden=16, n_layers=1)
N_CELLS = 25


def make_adata():
    data = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=3, n_cells_per_condition=40, n_genes=30, n_combinations=1, seed=0
    )
    adata = data.to_anndata()
    adata.obs["cell_type"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 2, "B", "A"))
    return adata


@pytest.fixture(scope="module")
def adata():
    adata = make_adata()
    SparsePerturbationVAE.setup_anndata(
        adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"]
    )
    return adata


@pytest.fixture(scope="module")
def fitted(adata):
    model = SparsePerturbationVAE(adata, **SMALL)
    model.fit(max_steps=60, batch_size=32, progress=False, seed=0)
    return model


@pytest.fixture(scope="module")
def prediction(fitted):
    """Two conditions in one call, counting how often the model is traced meanwhile."""
    import causalzoo.api.sparse_perturbation as api

    traces = []
    original = api.sparse_perturbation_model

    def counting_model(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "sparse_perturbation_model", counting_model)
        # "P1+P0" is spelled non-canonically on purpose
        pred = fitted.predict(["P1+P0", "P2"], n_cells=N_CELLS, seed=0)
    return pred, len(traces)


@pytest.fixture(scope="module")
def context_prediction(fitted):
    return fitted.predict("P2", n_cells=N_CELLS, covariates={"cell_type": "B"}, seed=3)


def test_setup_and_fit(adata, fitted):
    reg = fitted.registry
    assert reg.perturbation_vocabulary == ("P0", "P1", "P2")
    assert reg.covariate_keys == ("cell_type",)
    assert fitted.is_fitted
    assert fitted.history["loss"].shape == (60,)
    assert np.all(np.isfinite(fitted.history["loss"]))
    assert fitted.fit_info["n_steps"] == 60
    assert fitted.fit_info["stop_reason"] == "max_steps"
    assert fitted.fit_info["batch_size"] == 32
    assert "fitted" in repr(fitted)
    # reference cells are the control cells
    n_ctrl = int((adata.obs["perturbation"] == "control").sum())
    assert fitted.reference["z_inv_loc"].shape == (n_ctrl, SMALL["n_latent_invariant"])


def test_latent_representation(adata, fitted):
    k_inv, k_resp = SMALL["n_latent_invariant"], SMALL["n_latent_response"]
    both = fitted.get_latent_representation(write_obsm=True)
    assert both.shape == (adata.n_obs, k_inv + k_resp)
    assert np.all(np.isfinite(both))
    np.testing.assert_array_equal(adata.obsm["X_causalzoo"], both)
    inv = fitted.get_latent_representation(block="invariant")
    resp = fitted.get_latent_representation(block="response", write_obsm="X_resp")
    assert inv.shape == (adata.n_obs, k_inv) and resp.shape == (adata.n_obs, k_resp)
    np.testing.assert_allclose(inv, both[:, :k_inv], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(resp, both[:, k_inv:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(adata.obsm["X_resp"], resp)
    with pytest.raises(CausalZooError, match="block"):
        fitted.get_latent_representation(block="all")


def test_predict(fitted, prediction):
    pred, _ = prediction
    assert pred.n_obs == 2 * N_CELLS and pred.n_vars == 30
    counts = pred.layers["counts"]
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    assert np.all(counts >= 0) and np.all(counts == np.round(counts))
    assert list(pred.obs["condition"].astype(str)) == ["P0+P1"] * N_CELLS + ["P2"] * N_CELLS
    assert set(pred.obs.columns) >= {"condition", "library_size", "source_cell", "cell_type"}
    assert pred.obsm["z_inv"].shape == (2 * N_CELLS, SMALL["n_latent_invariant"])
    assert pred.obsm["z_resp"].shape == (2 * N_CELLS, SMALL["n_latent_response"])
    # the source cells are training control cells
    obs = fitted.adata.obs
    src = pred.obs["source_cell"].astype(str)
    assert set(obs.loc[src, "perturbation"].astype(str)) == {"control"}
    np.testing.assert_array_equal(
        obs.loc[src, "cell_type"].astype(str).to_numpy(),
        pred.obs["cell_type"].astype(str).to_numpy(),
    )


def test_predict_compiles_once_for_several_conditions(prediction):
    _, n_model_traces = prediction
    assert n_model_traces <= 1


def test_predict_in_a_context(fitted, context_prediction):
    pred = context_prediction
    obs = fitted.adata.obs
    src = pred.obs["source_cell"].astype(str)
    assert set(obs.loc[src, "cell_type"].astype(str)) == {"B"}
    assert set(obs.loc[src, "perturbation"].astype(str)) == {"control"}
    assert set(pred.obs["cell_type"].astype(str)) == {"B"}


def test_predict_errors(adata, fitted):
    with pytest.raises(CausalZooError):
        fitted.predict(["P9"], n_cells=5)
    with pytest.raises(CausalZooError):
        fitted.predict(["P0+P9"], n_cells=5)
    with pytest.raises(CausalZooError):
        fitted.predict(["P0"], n_cells=5, covariates={"cell_type": "C"})
    with pytest.raises(CausalZooError):
        fitted.predict(["P0"], n_cells=5, covariates={"tissue": "A"})
    with pytest.raises(CausalZooError):
        fitted.predict(["P0"], n_cells=0)
    unfitted = SparsePerturbationVAE(adata, **SMALL)
    assert not unfitted.is_fitted
    with pytest.raises(CausalZooError, match="not fitted"):
        unfitted.predict(["P0"], n_cells=5)
    with pytest.raises(CausalZooError, match="not fitted"):
        unfitted.get_latent_representation()
    with pytest.raises(CausalZooError, match="not fitted"):
        unfitted.mask_probability()
    with pytest.raises(CausalZooError, match="not fitted"):
        unfitted.save("unused")


def test_predict_no_conditions(fitted):
    with pytest.raises(CausalZooError):
        fitted.predict([], n_cells=5)


def test_mask_probability_and_shift(fitted):
    mask = fitted.mask_probability()
    assert isinstance(mask, pd.DataFrame)
    assert list(mask.index) == ["P0", "P1", "P2"]
    assert list(mask.columns) == [f"z_resp_{k}" for k in range(SMALL["n_latent_response"])]
    values = mask.to_numpy()
    assert np.all((values >= 0) & (values <= 1))
    shift = fitted.shift()
    assert shift.shape == mask.shape and np.all(np.isfinite(shift.to_numpy()))


def _tree_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_load_round_trip(fitted, context_prediction, tmp_path):
    path = fitted.save(tmp_path / "model")
    assert (path / "causalzoo.json").is_file()
    loaded = cz.load(path)
    assert isinstance(loaded, SparsePerturbationVAE)
    _tree_equal(loaded.params, fitted.params)
    assert loaded.config == fitted.config
    assert loaded.registry == fitted.registry
    np.testing.assert_array_equal(loaded.history["loss"], fitted.history["loss"])
    assert loaded.fit_info == fitted.fit_info
    for k in fitted.reference:
        np.testing.assert_array_equal(loaded.reference[k], fitted.reference[k])
    pd.testing.assert_frame_equal(loaded.mask_probability(), fitted.mask_probability())
    # same predictions with the same seed (no adata needed)
    a = context_prediction
    b = loaded.predict("P2", n_cells=N_CELLS, covariates={"cell_type": "B"}, seed=3)
    np.testing.assert_array_equal(a.layers["counts"].toarray(), b.layers["counts"].toarray())
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.obsm["z_resp"], b.obsm["z_resp"])
    # the loaded model has the same configuration and genes: it reuses the compiled simulator
    assert loaded._compiled_fns["simulate"] is fitted._compiled_fns["simulate"]
    # attach data on load
    attached = cz.load(path, adata=fitted.adata)
    assert attached.adata is fitted.adata

    # no overwrite by default; overwrite=True replaces
    with pytest.raises(CausalZooError, match="already exists"):
        fitted.save(path)
    fitted.save(path, overwrite=True)
    assert not any(p.name.startswith(".model") for p in tmp_path.iterdir())
    _tree_equal(cz.load(path).params, fitted.params)


def test_shared_compiled_programs_take_each_models_own_parameters(fitted, context_prediction):
    """Instances of one configuration share jitted programs; the parameters stay an argument,
    so a model with other parameters predicts with its own. Another configuration, or custom
    networks, compiles its own."""
    twin = SparsePerturbationVAE(fitted.adata, **SMALL)
    twin.params = jax.tree_util.tree_map(lambda a: a * 0.5, fitted.params)
    twin.reference = fitted.reference
    b = twin.predict("P2", n_cells=N_CELLS, covariates={"cell_type": "B"}, seed=3)
    assert twin._compiled_fns["simulate"] is fitted._compiled_fns["simulate"]
    assert not np.array_equal(b.obsm["z_resp"], context_prediction.obsm["z_resp"])
    assert _program_key(twin.config, 30) == _program_key(fitted.config, 30)
    assert _program_key(twin.config, 30) != _program_key(twin.config, 31)
    wider = SparsePerturbationConfig(**{**SMALL, "n_hidden": 17})
    assert _program_key(wider, 30) != _program_key(twin.config, 30)
    custom = SparsePerturbationConfig(**SMALL, networks={"decoder": lambda *a, **k: None})
    assert _program_key(custom, 30) is None


def test_response_rotation_is_kept_and_saved(fitted, tmp_path):
    """rotate_response=True is the response block through response_rotation(); the rotation
    is computed once per fit, saved, and forgotten by a new fit."""
    raw = fitted.get_latent_representation(block="response")
    rot = fitted.response_rotation()
    assert fitted.response_rotation() is rot
    assert fitted.response_rotation(n_starts=4) is not rot  # other settings: recomputed
    rot = fitted.response_rotation()
    rotated = fitted.get_latent_representation(block="response", rotate_response=True)
    np.testing.assert_allclose(rotated, rot.transform(raw), rtol=1e-5, atol=1e-5)
    control = rotated[fitted.adata.obs["perturbation"].astype(str).to_numpy() == "control"]
    np.testing.assert_allclose(np.cov(control, rowvar=False), np.eye(3), atol=1e-4)
    assert rot.conditions and "control" not in rot.conditions
    both = fitted.get_latent_representation(rotate_response=True)
    np.testing.assert_array_equal(both[:, SMALL["n_latent_invariant"]:], rotated)
    path = fitted.save(tmp_path / "rotated")
    loaded = cz.load(path)  # no data attached: the saved rotation is used
    np.testing.assert_array_equal(loaded.response_rotation().rotation, rot.rotation)
    refit = cz.load(path, adata=fitted.adata)
    refit.fit(max_steps=2, batch_size=32, progress=False)
    assert refit.response_rotation_ is None
    no_data = cz.load(path)
    no_data.response_rotation_ = None
    with pytest.raises(CausalZooError, match="needs the training cells"):
        no_data.response_rotation()


def test_load_errors(fitted, tmp_path):
    good = fitted.save(tmp_path / "good")

    def variant(name):
        dst = tmp_path / name
        shutil.copytree(good, dst)
        return dst

    bad = variant("corrupt_npz")
    (bad / "params.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(CausalZooError, match="corrupted"):
        cz.load(bad)

    bad = variant("missing_npz")
    (bad / "history.npz").unlink()
    with pytest.raises(CausalZooError, match="missing"):
        cz.load(bad)

    bad = variant("missing_json")
    (bad / "causalzoo.json").unlink()
    with pytest.raises(CausalZooError):
        cz.load(bad)

    bad = variant("corrupt_json")
    (bad / "causalzoo.json").write_text("{ not json")
    with pytest.raises(CausalZooError, match="corrupted"):
        cz.load(bad)

    bad = variant("version")
    meta = json.loads((bad / "causalzoo.json").read_text())
    meta["format_version"] = 999
    (bad / "causalzoo.json").write_text(json.dumps(meta))
    with pytest.raises(CausalZooError, match="format"):
        cz.load(bad)

    bad = variant("unknown_model")
    meta = json.loads((bad / "causalzoo.json").read_text())
    meta["model"] = "no_such_model"
    (bad / "causalzoo.json").write_text(json.dumps(meta))
    with pytest.raises(CausalZooError, match="no_such_model"):
        cz.load(bad)

    with pytest.raises(CausalZooError):
        cz.load(tmp_path / "does_not_exist")

    # attaching data with other genes is refused
    other = make_adata()
    other.var_names = [f"X{i}" for i in range(other.n_vars)]
    SparsePerturbationVAE.setup_anndata(other, covariate_keys=["cell_type"])
    with pytest.raises(CausalZooError):
        cz.load(good, adata=other)


def test_alignment_fit_differs(adata, fitted):
    aligned = SparsePerturbationVAE(adata, **SMALL, alignment=1.0)
    aligned.fit(max_steps=60, batch_size=32, progress=False, seed=0)
    loss = aligned.history["loss"]
    assert loss.shape == (60,) and np.all(np.isfinite(loss))
    assert not np.allclose(loss, fitted.history["loss"])
    # the penalty is non-negative: at the shared first step the aligned loss is not smaller
    assert loss[0] >= fitted.history["loss"][0] - 1e-3 * abs(fitted.history["loss"][0])


def test_from_arrays():
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (12, 6)).astype(np.float32)
    u = np.zeros((12, 2), np.float32)
    u[4:8, 0] = 1
    u[8:, 1] = 1
    u[11, 0] = 1
    model = SparsePerturbationVAE.from_arrays(
        x, u, perturbation_names=["KO1", "KO2"], covariates={"batch": ["a", "b"] * 6}, **SMALL
    )
    labels = model.adata.obs["perturbation"].astype(str).tolist()
    assert labels[:4] == ["control"] * 4 and labels[4] == "KO1" and labels[11] == "KO1+KO2"
    assert model.registry.perturbation_vocabulary == ("KO1", "KO2")
    assert model.registry.covariate_keys == ("batch",)
    assert model.registry.n_genes == 6
    # labels work too
    model = SparsePerturbationVAE.from_arrays(x, ["control"] * 6 + ["A+B"] * 6, **SMALL)
    assert model.perturbation_names == ["A", "B"]
    with pytest.raises(CausalZooError):
        SparsePerturbationVAE.from_arrays(x, u[:5])
    with pytest.raises(CausalZooError):
        SparsePerturbationVAE.from_arrays(x, u * 2)
    with pytest.raises(CausalZooError):
        SparsePerturbationVAE.from_arrays(x, u, perturbation_names=["only_one"])


def test_count_likelihood_needs_count_data():
    adata = make_adata()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    SparsePerturbationVAE.setup_anndata(adata, count_data=False)
    with pytest.raises(CausalZooError, match="count_data=False"):
        SparsePerturbationVAE(adata, likelihood="nb", **SMALL)
    SparsePerturbationVAE(adata, likelihood="gaussian", **SMALL)  # fine


def test_fit_argument_errors(adata):
    model = SparsePerturbationVAE(adata, **SMALL)
    with pytest.raises(CausalZooError, match="batch_size"):
        model.fit(max_steps=5, batch_size=adata.n_obs + 1, progress=False)
    with pytest.raises(CausalZooError):
        model.fit(max_steps=5, batch_size=0, progress=False)
    with pytest.raises(CausalZooError):
        model.fit(max_steps=0, batch_size=8, progress=False)
    with pytest.raises(CausalZooError, match="learning rate"):
        model.fit(max_steps=5, batch_size=8, learning_rate=0.0, progress=False)
    assert not model.is_fitted
    with pytest.raises(CausalZooError):
        SparsePerturbationVAE(adata, n_latent_response=0)


def test_predict_a_perturbation_never_observed_in_that_context():
    """P2 is only ever seen in cell type A; predicting it in B uses B's control cells and B's
    covariates (Kang-style covariate transfer)."""
    adata = make_adata()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    cell_type = np.where(labels == "P2", "A", np.where(np.arange(adata.n_obs) % 2, "B", "A"))
    adata.obs["cell_type"] = pd.Categorical(cell_type)
    assert not ((labels == "P2") & (cell_type == "B")).any()
    SparsePerturbationVAE.setup_anndata(adata, covariate_keys=["cell_type"])
    model = SparsePerturbationVAE(adata, **SMALL)
    model.fit(max_steps=40, batch_size=32, progress=False, seed=0)
    in_b = model.predict("P2", n_cells=N_CELLS, covariates={"cell_type": "B"}, seed=1)
    in_a = model.predict("P2", n_cells=N_CELLS, covariates={"cell_type": "A"}, seed=1)
    src = in_b.obs["source_cell"].astype(str)
    assert set(adata.obs.loc[src, "cell_type"].astype(str)) == {"B"}
    assert set(adata.obs.loc[src, "perturbation"].astype(str)) == {"control"}
    assert set(in_b.obs["cell_type"].astype(str)) == {"B"}
    assert not np.array_equal(in_a.layers["counts"].toarray(), in_b.layers["counts"].toarray())
