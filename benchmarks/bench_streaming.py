#!/usr/bin/env python
"""Peak memory of a fit streamed from a backed h5ad, for N and 10 x N cells.

A script, not a test: ``python benchmarks/bench_streaming.py [--cells 20000] [--genes 2000]``.

Writes two h5ad files of synthetic Poisson counts (sparse CSR, about 10 % non-zero, 20
perturbations plus a control group) with N and ``--factor`` x N cells into a temporary
directory (deleted at the end; about 0.3 GB on disk for 200k x 2000), then, in a FRESH
subprocess per file, opens it with ``anndata.read_h5ad(path, backed="r")``, runs
``cz.SparsePerturbationVAE.setup_anndata`` (validation a block of rows at a time) and a short
``fit`` (``--chunks`` chunks of the stream, default chunk size), and prints the peak resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) next to the dense size of X. The same
child also reports its RSS right after importing causalzoo and running one jax op (the
floor every process pays), and the set-up and fit times.

The files are written by a separate process, and the parent stays small: on Linux a child's
``ru_maxrss`` starts from its parent's RSS at the fork.

``--in-memory`` adds a row for the N file read into memory (``backed=None``) and fitted the
usual way, the resident path, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
args = json.loads(sys.argv[1])
import anndata, jax.numpy as jnp, numpy as np
import causalzoo as cz
float(jnp.ones(3).sum())
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
adata = anndata.read_h5ad(args["path"], backed="r" if args["backed"] else None)
cz.SparsePerturbationVAE.setup_anndata(adata)
t1 = time.perf_counter()
model = cz.SparsePerturbationVAE(adata, n_latent_invariant=5, n_latent_response=5,
                                 n_hidden=128, n_layers=2)
from causalzoo.data.streaming import CellSource
n, g = adata.shape
# the chunk the fit streams (CellSource's default), or all cells when resident
chunk = CellSource(adata.X).chunk_cells if args["backed"] else n
steps_per_call = max(1, chunk // 256)
model.fit(max_steps=steps_per_call * args["chunks"], batch_size=256,
          steps_per_call=steps_per_call, early_stopping=False, progress=False)
t2 = time.perf_counter()
info = model.fit_info
print(json.dumps({
    "cells": n, "genes": g, "backed": args["backed"], "chunk_cells": chunk,
    "floor_mb": floor / 1024, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "setup_s": t1 - t0, "fit_s": t2 - t1, "compile_s": info["compile_seconds"],
    "steps": int(info["n_steps"]), "loss_finite": bool(np.isfinite(model.history["loss"]).all()),
}))
"""


def write_h5ad(path: Path, n_cells: int, n_genes: int, seed: int) -> None:
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, n_cells, 10000):
        rows = min(10000, n_cells - start)
        dense = rng.poisson(0.1, (rows, n_genes)).astype(np.float32)
        dense[:, 0] += 1  # no cell without counts
        blocks.append(sp.csr_matrix(dense))
    x = sp.vstack(blocks, format="csr")
    labels = rng.choice(["control"] + [f"P{i}" for i in range(20)], n_cells)
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    anndata.AnnData(x, obs=obs, var=var).write_h5ad(path)


def run(path: Path, *, backed: bool, chunks: int) -> dict:
    config = {"path": str(path), "backed": backed, "chunks": chunks}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=3, help="chunks streamed per fit")
    parser.add_argument("--in-memory", action="store_true",
                        help="also fit the N file loaded into memory")
    parser.add_argument("--dir", default=None, help="where to write the files (default tmp)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cz_stream_", dir=args.dir))
    rows = []
    try:
        for i, n in enumerate((args.cells, args.cells * args.factor)):
            path = work / f"cells_{n}.h5ad"
            t = time.perf_counter()
            # written by another process: Linux's ru_maxrss of a child starts from its
            # parent's RSS at fork, so the parent must stay small
            subprocess.run([sys.executable, __file__, "--write", str(path), str(n),
                            str(args.genes), str(i)], check=True)
            print(f"wrote {path.name}: {path.stat().st_size / 2**20:.0f} MiB on disk in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
            rows.append(run(path, backed=True, chunks=args.chunks))
            if args.in_memory and i == 0:
                rows.append(run(path, backed=False, chunks=args.chunks))
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'cells':>8} {'mode':>9} {'dense X MiB':>11} {'chunk':>6} {'floor MiB':>9} "
          f"{'peak MiB':>8} {'set-up s':>8} {'fit s':>6} {'steps':>5}")
    for r in rows:
        dense = r["cells"] * r["genes"] * 4 / 2**20
        mode = "backed" if r["backed"] else "in-memory"
        print(f"{r['cells']:>8} {mode:>9} {dense:>11.0f} {r['chunk_cells']:>6} "
              f"{r['floor_mb']:>9.0f} {r['peak_mb']:>8.0f} {r['setup_s']:>8.1f} "
              f"{r['fit_s']:>6.1f} {r['steps']:>5}")
        assert r["loss_finite"], r
    print(f"cores: {os.cpu_count()}; peak = ru_maxrss of a fresh process per row")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        import warnings

        warnings.simplefilter("ignore")
        write_h5ad(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
