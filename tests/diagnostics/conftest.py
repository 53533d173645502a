"""One tiny fitted sparse perturbation model and its DataTree, shared by the diagnostics
tests (every fit and every conversion compiles, so they are built once per session)."""

from __future__ import annotations

import matplotlib
import pytest

import causalzoo as cz

matplotlib.use("Agg")

SMALL = dict(n_latent_invariant=2, n_latent_response=3, n_hidden=16, n_layers=1)
N_DRAWS = 60


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
