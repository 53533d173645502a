"""Make ``data/norman2019_subset.h5ad``, the Norman 2019 subset bundled with causalzoo.

This script documents how the bundled file was made; the package never runs it. Input is the
PerturBench "devel" data set as kept in the project's shared data folder,
``perturbench_devel_norman19_mcfaline23.h5ad`` (altoslabs/perturbench,
``src/perturbench/data/resources/devel.h5ad`` @ d357dfae3b50968e800e9f5f273ff145080ae67c, with
the integer UMI counts recovered exactly from its log1p(normalize_total) values). The steps:

1. keep the cells with ``obs["dataset"] == "norman19"`` (3375 K562 CRISPRa cells, 34
   conditions) and all 500 genes;
2. keep X (integer-valued UMI counts) as float32 CSR, checking the values are integers;
3. keep var (gene symbols as index, PerturBench's HVG statistics) and the obs columns
   perturbation, condition, cell_type, n_perturbed_genes, is_control, ncounts and ngenes,
   with unused categories removed;
4. keep ``layers["log1p_norm"]`` only if the file stays under 1.5 MB;
5. keep ``uns["source"]`` and add ``uns["license"]`` and ``uns["note"]``;
6. write with gzip (level 9).

Usage::

    python -m causalzoo.datasets._make_norman2019_subset \\
        ../shared/data/perturbench_devel_norman19_mcfaline23.h5ad
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["make_subset"]

OBS_COLUMNS = [
    "perturbation",
    "condition",
    "cell_type",
    "n_perturbed_genes",
    "is_control",
    "ncounts",
    "ngenes",
]
MAX_BYTES = 1_500_000
LICENSE = (
    "BSD-3-Clause. Copyright (c) 2024, Altos Labs (altoslabs/perturbench). Redistributed "
    "with attribution; see causalzoo/datasets/data/NOTICE.md for the full license text. "
    "Underlying data: Norman et al. 2019, Science 365:786-793, GEO GSE133344 (public)."
)
DEFAULT_OUT = Path(__file__).parent / "data" / "norman2019_subset.h5ad"


def make_subset(source: str | os.PathLike[str], out: str | os.PathLike[str] = DEFAULT_OUT) -> Path:
    """Write the bundled Norman 2019 subset from the PerturBench devel file; return its path."""
    full = anndata.read_h5ad(source)
    keep = (full.obs["dataset"] == "norman19").to_numpy()
    # Built from parts rather than as ``full[keep]`` so the result owns clean data (no view).
    x = sp.csr_matrix(full.X[np.flatnonzero(keep)], dtype=np.float32)
    if not np.array_equal(x.data, np.round(x.data)):
        raise ValueError("X of the source file is not integer-valued counts")
    x.eliminate_zeros()
    x.sort_indices()
    obs = full.obs.loc[keep, OBS_COLUMNS].copy()
    for col in obs.columns:
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            obs[col] = obs[col].cat.remove_unused_categories()
    # The HVG statistics are tiny; keeping a non-empty var also keeps anndata 0.13 from
    # touching a pandas option deprecated in pandas 3 (a warning) when the file is read.
    var = full.var.copy()
    uns = {
        "source": str(full.uns["source"]),
        "license": LICENSE,
        "note": (
            "Cells with dataset == 'norman19' of the PerturBench devel set (3375 K562 CRISPRa "
            "cells, 500 HVGs). X = integer UMI counts recovered exactly from the upstream "
            "log1p(normalize_total) values. ncounts/ngenes are full-transcriptome totals. "
            "Made by causalzoo/datasets/_make_norman2019_subset.py."
        ),
    }
    out = Path(out)
    log1p = sp.csr_matrix(full.layers["log1p_norm"][np.flatnonzero(keep)], dtype=np.float32)
    adata = anndata.AnnData(X=x, obs=obs, var=var, uns=uns, layers={"log1p_norm": log1p})
    adata.write_h5ad(out, compression="gzip", compression_opts=9)
    if out.stat().st_size > MAX_BYTES:
        # log1p_norm is sc.pp.normalize_total + log1p of X: recomputable, so drop it to stay small.
        del adata.layers["log1p_norm"]
        adata.write_h5ad(out, compression="gzip", compression_opts=9)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="path to perturbench_devel_norman19_mcfaline23.h5ad")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output h5ad path")
    args = parser.parse_args(argv)
    path = make_subset(args.source, args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
