"""Small synthetic perturbation data sets for the evaluation tests (no model fits)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

GENES = 40


def make_counts(conditions: dict[str, int], seed: int = 0, contexts=None) -> ad.AnnData:
    """Poisson counts whose log-rates are additive: base + sum of the singles' effects.

    ``conditions`` maps a label (any spelling, e.g. "B+A", "A+ctrl") to its cell count.
    With ``contexts`` (name -> log-rate offset) every condition is repeated per context.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(1.5, 0.6, GENES)
    effects: dict[str, np.ndarray] = {}
    rows, labels, ctx_labels = [], [], []
    for ctx, offset in (contexts or {None: np.zeros(GENES)}).items():
        for label, n in conditions.items():
            parts = [p for p in label.split("+") if p not in ("ctrl", "control")]
            log_mu = base + offset
            for p in parts:
                if p not in effects:
                    eff = np.zeros(GENES)
                    idx = rng.choice(GENES, 4, replace=False)
                    eff[idx] = rng.choice([-1.5, 1.5], 4)
                    effects[p] = eff
                log_mu = log_mu + effects[p]
            rows.append(rng.poisson(np.exp(log_mu), size=(n, GENES)))
            labels += [label] * n
            ctx_labels += [ctx] * n
    x = sp.csr_matrix(np.concatenate(rows).astype(np.float32))
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)},
                       index=[f"c{i}" for i in range(len(labels))])
    if contexts:
        obs["cell_type"] = pd.Categorical(ctx_labels)
    adata = ad.AnnData(X=x, obs=obs)
    adata.var_names = [f"g{i}" for i in range(GENES)]
    return adata


NORMAN_LIKE = {
    "control": 40, "A": 30, "B": 30, "C": 30, "D": 30, "E": 15, "E+ctrl": 15, "F": 30,
    "B+A": 30, "C+D": 30, "A+C": 30, "E+F": 30, "A+G": 30, "G+H": 30,
}


@pytest.fixture(scope="session")
def norman_like() -> ad.AnnData:
    return make_counts(NORMAN_LIKE)


@pytest.fixture(scope="session")
def contexts_like() -> ad.AnnData:
    rng = np.random.default_rng(5)
    offsets = {t: rng.normal(0, 0.4, GENES) for t in ("T", "B", "NK")}
    adata = make_counts({"control": 40, "stim": 40}, seed=3, contexts=offsets)
    return adata
