"""Real-data evaluation of the sparse perturbation model against the baselines.

Runs :func:`causalzoo.evaluation.evaluate` on every protocol the real data sets support:

* Norman 2019 subset (bundled; 18 singles, 15 doubles): ``singles_to_doubles`` (protocol
  C: train on control + singles, test the 5 doubles whose singles are present),
  ``combinations`` (protocol B, SAMS-VAE style: 3 of those 5 doubles held out, the other
  12 doubles trained on; split seed 0) and ``gears`` (protocol A, GEARS simulation split,
  split seed 1);
* Kang 2018 PBMC IFN-beta (shared data): ``covariate_transfer``, holding out the stimulated
  cells of one cell type (default CD4T), on the 1,000 most variable genes (scanpy
  ``highly_variable_genes``, flavor "seurat", on log-normalised counts of all cells) to keep
  the CPU fit short.

For each protocol it writes ``<out>/<protocol>/`` (the report folder: table CSV/Markdown,
split JSON, plots) and prints the summary. Run (the numbers in docs/results.md):

    python benchmarks/evaluate_protocols.py --steps 2000 --seeds 0 1 2 \\
        --out benchmarks/results/evaluation

``--baselines-only`` skips the model (seconds per protocol); with it, ``--held-out`` may
name several Kang cell types and ``--split-seeds`` several GEARS / combination split seeds,
each written to its own folder:

    python benchmarks/evaluate_protocols.py --baselines-only --split-seeds 0 1 2 3 4 \\
        --held-out B CD4T CD8T CD14+Mono Dendritic FCGR3A+Mono NK \\
        --out benchmarks/results/evaluation_baselines

A script, not a test: minutes per fit on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import numpy as np

import causalzoo as cz
from causalzoo.evaluation import evaluate
from causalzoo.evaluation.metrics import log_normalize

MODEL_KWARGS = {"n_latent_invariant": 8, "n_latent_response": 8, "n_hidden": 128}


def kang_hvg(n_top: int = 1000):
    import anndata as ad
    import scanpy as sc

    adata = cz.datasets.kang2018()
    ln = ad.AnnData(X=log_normalize(adata.X))
    sc.pp.highly_variable_genes(ln, n_top_genes=n_top, flavor="seurat")
    keep = np.flatnonzero(ln.var["highly_variable"].to_numpy())
    out = ad.AnnData(X=adata.X[:, keep], obs=adata.obs.copy(), var=adata.var.iloc[keep].copy())
    return out


def jobs(args):
    """(folder, protocol, data or None for Kang, protocol kwargs, read kwargs)."""
    norman = cz.datasets.norman2019_subset()
    out = [("singles_to_doubles", "singles_to_doubles", norman, {}, {})]
    for name, base in (("combinations", {"test_fraction": 0.6}), ("gears", {})):
        seeds = args.split_seeds or [{"combinations": 0, "gears": 1}[name]]
        for s in seeds:
            folder = name if args.split_seeds is None else f"{name}_split{s}"
            out.append((folder, name, norman, {"seed": s, **base}, {}))
    for cell_type in args.held_out:
        folder = ("covariate_transfer" if len(args.held_out) == 1
                  else f"covariate_transfer_{cell_type}")
        out.append((folder, "covariate_transfer", None,
                    {"context_key": "cell_type", "held_out": cell_type},
                    {"perturbation_key": "condition"}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/evaluation")
    parser.add_argument("--protocols", nargs="+", default=None,
                        help="subset of: singles_to_doubles combinations gears covariate_transfer")
    parser.add_argument("--held-out", nargs="+", default=["CD4T"],
                        help="Kang cell type(s) to hold out")
    parser.add_argument("--split-seeds", type=int, nargs="+", default=None,
                        help="split seeds of combinations and gears (default 0 and 1)")
    parser.add_argument("--baselines-only", action="store_true", help="no model fits")
    parser.add_argument("--kang-genes", type=int, default=1000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kang = None
    for folder_name, name, adata, protocol_kwargs, read_kwargs in jobs(args):
        if args.protocols and name not in args.protocols:
            continue
        if adata is None:
            kang = kang if kang is not None else kang_hvg(args.kang_genes)
            adata = kang
        t0 = time.perf_counter()
        model = None if args.baselines_only else cz.SparsePerturbationVAE
        res = evaluate(
            model, adata, name, seeds=args.seeds,
            fit_kwargs=None if model is None else {"max_steps": args.steps},
            model_kwargs=None if model is None else MODEL_KWARGS,
            protocol_kwargs=protocol_kwargs, echo=print, **read_kwargs,
        )
        folder = out / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        res.table.to_csv(folder / "scores_long.csv", index=False)
        res.split.save(folder / "split.json")
        (folder / "info.json").write_text(json.dumps(res.info, indent=1, default=str))
        try:
            res.save(folder)
        except Exception:  # the raw table above is already on disk
            traceback.print_exc()
        print(f"\n== {folder_name}: {time.perf_counter() - t0:.0f} s")
        summary = res.summary()
        cols = [(m, "mean") for m in ("pearson_delta", "pearson_delta_de", "mse_de",
                                      "r2_delta_de_weighted", "energy_distance", "mmd")]
        print(summary[cols + [("n_conditions", "")]].round(4).to_string(), flush=True)


if __name__ == "__main__":
    main()
