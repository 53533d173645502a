"""Small data shared by the reliability tests (not a test module)."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd

from causalzoo import SparsePerturbationVAE

SMALL = dict(n_latent_invariant=2, n_latent_response=2, n_hidden=8, n_layers=0)
LABELS = ["control", "A", "B", "A+B"] * 6
TYPES = ["T", "NK"] * 12
GENES = [f"g{j}" for j in range(5)]
FIT = dict(batch_size=8, steps_per_call=2, seed=0, progress=False)


def counts(n=24, g=5, seed=0):
    return np.random.default_rng(seed).poisson(4.0, (n, g)).astype(np.float32) + np.eye(n, g)


def make_adata(x=None, labels=LABELS, cell_types=TYPES, genes=GENES):
    x = counts() if x is None else x
    n = x.shape[0]
    obs = pd.DataFrame({"perturbation": list(labels)[:n], "cell_type": list(cell_types)[:n]},
                       index=[f"cell{i}" for i in range(n)]).astype("category")
    var = pd.DataFrame({"symbol": list(genes)}, index=list(genes))
    return anndata.AnnData(X=x, obs=obs, var=var)


def setup(adata, **kw):
    kw = {"perturbation_key": "perturbation", "control": "control",
          "covariate_keys": ("cell_type",), **kw}
    SparsePerturbationVAE.setup_anndata(adata, **kw)
    return adata
