#!/usr/bin/env python
"""Peak memory of a fit streamed from a backed h5ad, for N and 10 x N cells.

A script, not a test::

    python benchmarks/bench_streaming.py                      # 20k and 200k cells x 2,000 genes
    python benchmarks/bench_streaming.py --cells 100000 --genes 5000 --dir /big/disk   # 100k, 1M

Writes two h5ad files of synthetic counts (sparse CSR; 20 perturbations plus a control group)
with N and ``--factor`` x N cells into ``--dir`` (a temporary folder by default; the files
are deleted at the end unless ``--keep``). The files are written **a chunk of cells at a
time**: each chunk is drawn, made sparse and appended to the on-disk CSR matrix (``h5py``
datasets in AnnData's on-disk format, resized per chunk; anndata 0.13's
``sparse_dataset(...).append`` keeps what it wrote in memory, about the size of the data),
so a file far larger than memory can be written; the writer never holds more than
``--write-chunk`` cells dense, and its memory does not grow with the file.

Counts (``--counts``): ``nb`` (default) draws negative-binomial counts, cell x gene, with
gene-wise means (log-normal, about 8 % non-zero entries and ~700 counts per cell at the
defaults), gene-wise inverse dispersions (log-normal around 0.5), log-normal cell size factors
and log-fold changes of each perturbation on 25 genes; each entry is drawn exactly by
inversion of the NB distribution function, which only needs work for the non-zero entries.
``poisson`` is the older generator (Poisson(0.1), about 10 % non-zero, plus one count in gene
0), kept so that earlier figures can be reproduced.

Then, in a FRESH subprocess per file, the script opens it with
``anndata.read_h5ad(path, backed="r")``, runs ``cz.SparsePerturbationVAE.setup_anndata``
(validation a block of rows at a time) and a ``fit`` of ``--chunks`` chunks of the stream
(default chunk size; one compiled call per chunk; ``--entry snapshot`` fits the dynamical
model in snapshot mode instead, on the files' time column of 0 / 24 / 48 h), and prints the
peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) next to the dense size of X, with the peak
after the set-up, the set-up and fit times and the streamed fit's steady-state cells/s
(the steps after the first, compiling, call over their wall time, chunk reads included).
The same child also reports its RSS right after importing causalzoo and running one jax op
(the floor every process pays).

The files are written by a separate process, and the parent stays small: on Linux a child's
``ru_maxrss`` starts from its parent's RSS at the fork.

``--in-memory`` adds a row for the N file read into memory (``backed=None``) and fitted the
usual way, the resident path, for comparison. ``--limit-gib L`` caps each fitting process's
address space at L GiB (``RLIMIT_AS``; virtual memory, a stricter bound than the resident
set), as on a machine with L GiB: a fit that loaded the matrix would fail.
"""

from __future__ import annotations

import argparse
import datetime
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
if args["limit_gib"]:  # a machine with less memory: the whole address space is capped
    limit = int(args["limit_gib"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import anndata, jax.numpy as jnp, numpy as np
import causalzoo as cz
float(jnp.ones(3).sum())
maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
floor = maxrss()
t0 = time.perf_counter()
adata = anndata.read_h5ad(args["path"], backed="r" if args["backed"] else None)
if args["entry"] == "snapshot":
    cz.DynamicalCausalVAE.setup_anndata(adata, time_key="hours", perturbation_key="perturbation",
                                        control="control", count_data=True)
else:
    cz.SparsePerturbationVAE.setup_anndata(adata)
t1 = time.perf_counter()
after_setup = maxrss()
if args["entry"] == "snapshot":
    model = cz.DynamicalCausalVAE(adata, n_latent=5, n_latent_invariant=2, n_hidden=128,
                                  n_layers=2, likelihood="nb")
else:
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
steps = int(info["n_steps"])
steady = (steps - steps_per_call) * 256 / (info["run_seconds"] - info["compile_seconds"])
print(json.dumps({
    "cells": n, "genes": g, "backed": args["backed"], "chunk_cells": chunk,
    "floor_mb": floor, "after_setup_mb": after_setup, "peak_mb": maxrss(),
    "setup_s": t1 - t0, "fit_s": t2 - t1, "compile_s": info["compile_seconds"],
    "train_s": info["run_seconds"], "cells_per_s": steady if steps > steps_per_call else None,
    "steps": steps, "loss_finite": bool(np.isfinite(model.history["loss"]).all()),
    "limit_gib": args["limit_gib"],
}))
"""

N_PERTURBATIONS = 20


def _nb_sparse(rng, mu, theta):
    """Exact NB(mean ``mu``, inverse dispersion ``theta``) draws of a cells x genes block, as
    CSR parts: a uniform per entry, zero where it falls under P(0); the others by inversion of
    the distribution function, one count at a time (in float64: few entries, long tails)."""
    import numpy as np

    u = rng.random(mu.shape, dtype=np.float32)
    # P(X = 0) = (theta / (theta + mu)) ** theta
    p0 = np.exp(-theta * np.log1p(mu / theta))
    rows, cols = np.nonzero(u > p0)
    u = u[rows, cols].astype(np.float64)
    m = mu[rows, cols].astype(np.float64)
    t = np.broadcast_to(theta, mu.shape)[rows, cols].astype(np.float64)
    pmf = p0[rows, cols].astype(np.float64)
    del p0
    cdf, q = pmf.copy(), m / (t + m)
    counts = np.zeros(u.size, np.float32)
    active = np.arange(u.size)
    k = 0
    while active.size and k < 100000:
        k += 1
        pmf[active] *= (k - 1 + t[active]) / k * q[active]
        cdf[active] += pmf[active]
        counts[active] = k
        # stop where u is reached, or where the remaining mass is below float64 rounding
        active = active[(u[active] > cdf[active]) & (pmf[active] > 1e-300)]
    indptr = np.zeros(mu.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=mu.shape[0]), out=indptr[1:])
    return counts, cols.astype(np.int32), indptr


def write_h5ad(path: Path, n_cells: int, n_genes: int, seed: int, counts: str = "nb",
               chunk: int = 5000) -> dict:
    """Write an h5ad of ``n_cells`` synthetic cells a chunk at a time (never all in memory)."""
    import anndata
    import h5py
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    names = ["control"] + [f"P{i}" for i in range(N_PERTURBATIONS)]
    label_codes = rng.integers(0, len(names), n_cells)
    # time points for snapshot mode (--entry snapshot), from their own stream so that the
    # counts are those of the files written before the column existed
    hours = np.random.default_rng(seed + 7).choice([0.0, 24.0, 48.0], n_cells)
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical.from_codes(label_codes, categories=names),
         "hours": hours},
        index=pd.Index(np.char.add("cell", np.arange(n_cells).astype(str)), dtype=object),
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    anndata.AnnData(obs=obs, var=var).write_h5ad(path)  # X is appended below
    # gene means, inverse dispersions and perturbation effects (log-fold changes on 25 genes)
    log_mean = rng.normal(-3.2, 1.5, n_genes).astype(np.float32)
    theta = np.exp(rng.normal(np.log(0.5), 0.5, n_genes)).astype(np.float32)
    lfc = np.zeros((len(names), n_genes), np.float32)
    for p in range(1, len(names)):
        lfc[p, rng.choice(n_genes, 25, replace=False)] = rng.normal(0.0, 1.0, 25)
    nnz = 0
    with h5py.File(path, "r+") as f:
        # X as AnnData writes a CSR matrix: a group of data, indices and indptr
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array([n_cells, n_genes])})
        on_disk_data = x.create_dataset("data", (0,), np.float32, maxshape=(None,),
                                        chunks=(2**18,))
        on_disk_indices = x.create_dataset("indices", (0,), np.int32, maxshape=(None,),
                                           chunks=(2**18,))
        on_disk_indptr = x.create_dataset("indptr", (n_cells + 1,), np.int64,
                                  chunks=(min(2**16, n_cells + 1),), fillvalue=0)
        for start in range(0, n_cells, chunk):
            rows = min(chunk, n_cells - start)
            if counts == "poisson":
                dense = rng.poisson(0.1, (rows, n_genes)).astype(np.float32)
                dense[:, 0] += 1  # no cell without counts
                block = sp.csr_matrix(dense)
            else:
                size = rng.lognormal(0.0, 0.4, rows).astype(np.float32)
                log_mu = log_mean[None] + lfc[label_codes[start:start + rows]]
                mu = size[:, None] * np.exp(log_mu)
                del log_mu
                data, indices, indptr = _nb_sparse(rng, mu, theta)
                del mu
                block = sp.csr_matrix((data, indices, indptr), shape=(rows, n_genes))
                empty = np.flatnonzero(np.diff(block.indptr) == 0)
                if empty.size:  # a cell needs at least one count: one in gene 0
                    block = block.tolil()
                    block[empty, 0] = 1.0
                    block = block.tocsr()
            for dataset, values in ((on_disk_data, block.data),
                                    (on_disk_indices, block.indices)):
                dataset.resize((nnz + values.size,))
                dataset[nnz:] = values
            on_disk_indptr[start + 1:start + rows + 1] = block.indptr[1:] + nnz
            nnz += block.nnz
    return {"nnz": nnz, "density": nnz / (n_cells * n_genes)}


def run(path: Path, *, backed: bool, chunks: int, limit_gib: float | None = None,
        entry: str = "sparse") -> dict:
    config = {"path": str(path), "backed": backed, "chunks": chunks, "limit_gib": limit_gib,
              "entry": entry}
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
    parser.add_argument("--counts", choices=("nb", "poisson"), default="nb")
    parser.add_argument("--chunks", type=int, default=3, help="chunks streamed per fit (>= 2 "
                        "for a steady-state cells/s)")
    parser.add_argument("--write-chunk", type=int, default=5000,
                        help="cells drawn and appended at a time when writing a file")
    parser.add_argument("--in-memory", action="store_true",
                        help="also fit the N file loaded into memory")
    parser.add_argument("--dir", default=None, help="where to write the files (default tmp)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the files, and reuse those already in --dir")
    parser.add_argument("--entry", choices=("sparse", "snapshot"), default="sparse",
                        help="the model fitted: the sparse perturbation model, or the "
                             "dynamical model in snapshot mode (time points 0/24/48 h)")
    parser.add_argument("--limit-gib", type=float, default=None,
                        help="cap each fitting process's address space (RLIMIT_AS, GiB): "
                             "a fit that needed the dense matrix would fail")
    args = parser.parse_args()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(args.dir) if args.keep and args.dir else Path(
        tempfile.mkdtemp(prefix="cz_stream_", dir=args.dir))
    print(f"# bench_streaming {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} cpus, load {' '.join(f'{v:.1f}' for v in os.getloadavg())}",
          flush=True)
    rows = []
    try:
        for i, n in enumerate((args.cells, args.cells * args.factor)):
            path = work / f"cells_{n}x{args.genes}_{args.counts}_{i}.h5ad"
            t = time.perf_counter()
            if not (args.keep and path.exists()):
                # written by another process: Linux's ru_maxrss of a child starts from its
                # parent's RSS at fork, so the parent must stay small
                subprocess.run([sys.executable, __file__, "--write", str(path), str(n),
                                str(args.genes), str(i), args.counts, str(args.write_chunk)],
                               check=True)
                print(f"wrote {path.name}: {path.stat().st_size / 2**20:,.0f} MiB on disk in "
                      f"{time.perf_counter() - t:.0f} s", flush=True)
            else:
                print(f"reusing {path.name} ({path.stat().st_size / 2**20:,.0f} MiB)", flush=True)
            disk = path.stat().st_size / 2**20
            rows.append({**run(path, backed=True, chunks=args.chunks,
                               limit_gib=args.limit_gib, entry=args.entry), "disk_mb": disk})
            print(json.dumps(rows[-1]), flush=True)
            if args.in_memory and i == 0:
                rows.append({**run(path, backed=False, chunks=args.chunks,
                                   limit_gib=args.limit_gib, entry=args.entry),
                             "disk_mb": disk})
                print(json.dumps(rows[-1]), flush=True)
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'cells':>8} {'mode':>9} {'dense X MiB':>11} {'disk MiB':>8} {'chunk':>6} "
          f"{'floor MiB':>9} {'set-up MiB':>10} {'peak MiB':>8} {'set-up s':>8} {'fit s':>6} "
          f"{'steps':>5} {'cells/s':>7}")
    for r in rows:
        dense = r["cells"] * r["genes"] * 4 / 2**20
        mode = "backed" if r["backed"] else "in-memory"
        rate = f"{r['cells_per_s']:>7,.0f}" if r["cells_per_s"] else f"{'n/a':>7}"
        print(f"{r['cells']:>8} {mode:>9} {dense:>11,.0f} {r['disk_mb']:>8,.0f} "
              f"{r['chunk_cells']:>6} {r['floor_mb']:>9.0f} {r['after_setup_mb']:>10.0f} "
              f"{r['peak_mb']:>8.0f} {r['setup_s']:>8.1f} {r['fit_s']:>6.1f} {r['steps']:>5} "
              f"{rate}")
        assert r["loss_finite"], r
    if len(rows) >= 2 and rows[0]["backed"]:
        big = next(r for r in rows[1:] if r["backed"])
        print(f"{big['cells'] / rows[0]['cells']:.0f}x the cells: peak RSS x"
              f"{big['peak_mb'] / rows[0]['peak_mb']:.2f}")
    limit = f"; address space capped at {args.limit_gib:g} GiB" if args.limit_gib else ""
    print(f"cores: {os.cpu_count()}; peak = ru_maxrss of a fresh process per row{limit}; load "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        import warnings

        warnings.simplefilter("ignore")
        print(json.dumps(write_h5ad(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                    int(sys.argv[5]), sys.argv[6], int(sys.argv[7]))),
              flush=True)
    else:
        main()
