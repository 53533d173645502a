"""Contracts of the sparse-perturbation ground-truth generator."""

import numpy as np
import pytest
import scipy.sparse as sp

import causalzoo as cz
import causalzoo.identifiability  # for cz.identifiability.* below
from causalzoo import CausalZooError
from causalzoo.identifiability.generators import SparsePerturbationData, sparse_perturbation


@pytest.fixture(scope="module")
def data() -> SparsePerturbationData:
    return sparse_perturbation(
        n_perturbations=5, n_cells_per_condition=60, n_genes=50, n_combinations=3,
        graph_density=0.6, coupling=0.5, seed=7,
    )


def test_public_path():
    d = cz.identifiability.generators.sparse_perturbation(n_cells_per_condition=5, n_genes=10)
    assert isinstance(d, SparsePerturbationData)
    assert cz.identifiability.mcc(d.z, d.z) == pytest.approx(1.0)


def test_shapes_and_dtypes(data):
    t, k_inv, k_resp, g = 5, 2, 4, 50
    n = (1 + t + 3) * 60
    assert data.x.shape == (n, g) and data.u.shape == (n, t)
    assert data.z.shape == (n, k_inv + k_resp)
    assert data.z_inv.shape == (n, k_inv) and data.z_resp.shape == (n, k_resp)
    assert data.mask.shape == data.effect.shape == data.shift.shape == (t, k_resp)
    assert data.W.shape == (k_resp, k_resp) and data.B.shape == (k_resp, k_inv)
    assert data.library_size.shape == data.labels.shape == (n,)
    assert data.theta.shape == data.gene_names.shape == (g,)
    assert data.graph.dtype == bool
    for name in ("x", "u", "z", "z_inv", "z_resp", "mask", "effect", "shift", "W", "B",
                 "library_size", "theta"):
        assert getattr(data, name).dtype == np.float32, name
    np.testing.assert_array_equal(data.z, np.c_[data.z_inv, data.z_resp])
    assert list(data.perturbation_names) == [f"P{i}" for i in range(t)]
    assert data.conditions[: t + 1] == ["control"] + [f"P{i}" for i in range(t)]
    assert data.seed == 7


def test_seed_determinism():
    kw = dict(n_cells_per_condition=20, n_genes=30, n_combinations=2, graph_density=0.5)
    a, b, c = sparse_perturbation(seed=3, **kw), sparse_perturbation(seed=3, **kw), \
        sparse_perturbation(seed=4, **kw)
    for name in ("x", "u", "z", "mask", "effect", "W", "theta", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.x, c.x)
    assert not np.array_equal(a.z, c.z)


def test_masks_and_effects(data):
    assert set(np.unique(data.mask)) <= {0.0, 1.0}
    assert np.all(data.mask.sum(axis=1) >= 1), "every perturbation has a target"
    assert np.all(data.mask.sum(axis=0) >= 1), "every response dim is targeted"
    assert np.all(np.abs(data.effect) >= 2.0 * 0.5 - 1e-6), "effects bounded away from 0"
    np.testing.assert_allclose(data.shift, data.mask * data.effect)
    # repair also works at a tiny density
    sparse = sparse_perturbation(n_perturbations=3, n_latent_response=6, mask_density=0.01,
                                 n_cells_per_condition=2, n_genes=5, seed=1)
    assert np.all(sparse.mask.sum(axis=1) >= 1) and np.all(sparse.mask.sum(axis=0) >= 1)


def test_graph_strictly_lower_triangular(data):
    assert np.all(np.triu(data.W) == 0)
    nz = np.abs(data.W[data.W != 0])
    assert nz.size > 0 and np.all((nz >= 0.3 - 1e-6) & (nz <= 0.8 + 1e-6))
    np.testing.assert_array_equal(data.graph, data.W != 0)
    empty = sparse_perturbation(n_cells_per_condition=2, n_genes=5, graph_density=0.0)
    assert not empty.W.any() and not empty.graph.any()
    assert not empty.B.any(), "coupling=0 gives B = 0"


def test_counts_are_nonnegative_integers(data):
    assert np.all(data.x >= 0)
    np.testing.assert_array_equal(data.x, np.round(data.x))
    assert data.x.sum() > 0


def test_design_and_labels(data):
    single = data.u[np.char.find(data.labels.astype(str), "+") < 0]
    combo_rows = np.char.find(data.labels.astype(str), "+") >= 0
    assert combo_rows.sum() == 3 * 60
    np.testing.assert_array_equal(data.u[combo_rows].sum(axis=1), 2.0)
    assert set(single.sum(axis=1)) == {0.0, 1.0}
    names = list(data.perturbation_names)
    for label, row in zip(data.labels, data.u, strict=True):
        hot = {names[i] for i in np.flatnonzero(row)}
        assert hot == (set() if label == "control" else set(label.split("+")))


def test_library_and_dispersion_scale():
    d = sparse_perturbation(n_cells_per_condition=300, n_genes=100, mean_library=1000.0)
    assert np.median(d.library_size) == pytest.approx(1000.0, rel=0.05)
    assert np.median(d.x.sum(axis=1)) == pytest.approx(1000.0, rel=0.1)
    assert np.median(d.theta) == pytest.approx(10.0, rel=0.3)


def _condition_shift(d, label):
    ctrl = d.z_resp[d.labels == "control"].mean(axis=0)
    return d.z_resp[d.labels == label].mean(axis=0) - ctrl


def test_negative_control_condition_means_equal_shifts_without_graph():
    d = sparse_perturbation(n_perturbations=4, n_cells_per_condition=1500, n_genes=10,
                            n_combinations=2, graph_density=0.0, seed=2)
    tol = 5 * np.sqrt(2 / 1500)  # 5 sd of a difference of two means (noise_scale=1)
    for t, name in enumerate(d.perturbation_names):
        np.testing.assert_allclose(_condition_shift(d, name), d.shift[t], atol=tol)
    for label in d.conditions[5:]:
        idx = [list(d.perturbation_names).index(p) for p in label.split("+")]
        np.testing.assert_allclose(_condition_shift(d, label), d.shift[idx].sum(0), atol=tol)
    # z_inv never depends on the design
    for label in d.conditions:
        np.testing.assert_allclose(d.z_inv[d.labels == label].mean(0), 0.0, atol=0.15)


def test_condition_means_follow_the_scm_with_graph():
    d = sparse_perturbation(n_perturbations=3, n_cells_per_condition=1500, n_genes=10,
                            graph_density=1.0, coupling=0.3, seed=5)
    assert d.W.any()
    total = np.linalg.inv(np.eye(4) - d.W.astype(np.float64))
    for t, name in enumerate(d.perturbation_names):
        np.testing.assert_allclose(_condition_shift(d, name), total @ d.shift[t], atol=0.35)


def test_to_anndata(data):
    adata = data.to_anndata()
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), data.x)
    assert adata.obs["perturbation"].dtype == "category"
    assert list(adata.obs["perturbation"].cat.categories) == data.conditions
    np.testing.assert_array_equal(adata.obs["perturbation"].astype(str), data.labels)
    assert set(adata.obs["cell_type"]) == {"synthetic"}
    assert list(adata.var_names) == list(data.gene_names)
    np.testing.assert_array_equal(adata.obsm["z_true"], data.z)
    gt = adata.uns["ground_truth"]
    np.testing.assert_array_equal(np.asarray(gt["mask"]), data.mask)
    np.testing.assert_array_equal(np.asarray(gt["W"]), data.W)
    assert gt["seed"] == 7


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_combinations": 16}, "n_combinations"),
        ({"mask_density": 0.0}, "mask_density"),
        ({"mask_density": 1.5}, "mask_density"),
        ({"n_perturbations": 0}, "n_perturbations"),
        ({"n_latent_response": 2.5}, "n_latent_response"),
        ({"n_genes": True}, "n_genes"),
        ({"effect_scale": -1.0}, "effect_scale"),
        ({"graph_density": "dense"}, "graph_density"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(CausalZooError, match=match):
        sparse_perturbation(**kwargs)


def test_floor_on_generated_data(data):
    floor = cz.identifiability.entangled_floor(data.z_resp, n_rotations=10,
                                               x=np.log1p(data.x))
    assert 0.0 < floor["rotation"] < 1.0 and 0.0 < floor["observations"] <= 1.0
