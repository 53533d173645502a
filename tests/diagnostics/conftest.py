"""Tiny fitted models of each zoo entry and their DataTrees, shared by the diagnostics tests
(every fit and every conversion compiles, so they are built once per session)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

import causalzoo as cz

matplotlib.use("Agg")

SMALL = dict(n_latent_invariant=2, n_latent_response=3, n_hidden=16, n_layers=1)
N_DRAWS = 60
ENTRY_DRAWS = 30


def make_adata(seed=0):
    data = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=3, n_cells_per_condition=30, n_genes=20, n_combinations=1,
        n_latent_invariant=2, n_latent_response=3, seed=seed,
    )
    return data.to_anndata()


@pytest.fixture(scope="session")
def adata():
    adata = make_adata()
    cz.SparsePerturbationVAE.setup_anndata(adata)
    return adata


@pytest.fixture(scope="session")
def fitted(adata):
    model = cz.SparsePerturbationVAE(adata, **SMALL)
    return model.fit(max_steps=60, batch_size=32, progress=False, seed=0)


@pytest.fixture(scope="session")
def datatree(fitted):
    # the user-class method, which calls causalzoo.diagnostics.to_datatree
    return fitted.to_datatree(num_samples=N_DRAWS, seed=0, chunk_size=64)


@pytest.fixture(scope="session")
def small():
    return dict(SMALL)


@pytest.fixture(scope="session")
def n_draws():
    return N_DRAWS


@pytest.fixture(scope="session")
def heldout(adata):
    """Cells from another seed of the same generator, set up like the training data."""
    heldout = make_adata(seed=1)
    heldout.var_names = adata.var_names
    cz.SparsePerturbationVAE.setup_anndata(heldout)
    return heldout


@pytest.fixture(scope="session")
def ivae():
    """A tiny iVAE with linear networks (n_layers=0), whose posterior p(z | x, u) is
    Gaussian in closed form (test_nuts_fit.py checks NUTS against it)."""
    data = cz.identifiability.generators.ivae(n_segments=5, n_per_segment=30, n_latent=2, seed=0)
    model = cz.IVAE.from_arrays(x=data.x, u=data.segment, n_latent=2, n_hidden=16, n_layers=0,
                               observation_scale=0.5)
    return model.fit(max_steps=30, batch_size=50, progress=False, seed=0)


@pytest.fixture(scope="session")
def ivae_tree(ivae):
    return ivae.to_datatree(num_samples=ENTRY_DRAWS, seed=0, chunk_size=64)


@pytest.fixture(scope="session")
def dynamical():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(18, 5, 6)).astype(np.float32)
    model = cz.DynamicalCausalVAE.from_arrays(
        x=x, u=np.array(["a", "b", "c"])[np.arange(18) % 3], n_latent=2, n_latent_invariant=1,
        n_hidden=8, n_layers=1,
    )
    return model.fit(max_steps=20, batch_size=9, progress=False, seed=0)


@pytest.fixture(scope="session")
def dynamical_tree(dynamical):
    return dynamical.to_datatree(num_samples=ENTRY_DRAWS, seed=0, chunk_size=7)


SPARSE_MASKS = np.eye(3, dtype=np.float32)  # P_t targets z_resp_t


@pytest.fixture(scope="session")
def sparse_masks():
    return SPARSE_MASKS.copy()


@pytest.fixture(scope="session")
def sparse_nuts(fitted):
    """NUTS on the tiny sparse model, networks fixed at the SVI fit, masks held at
    SPARSE_MASKS (``fit(method="nuts")`` keeps the run as ``nuts_result``)."""
    model = fitted.fit(method="nuts", masks=SPARSE_MASKS, num_warmup=200, num_samples=200,
                       seed=0)
    assert model is fitted
    return fitted.nuts_result
