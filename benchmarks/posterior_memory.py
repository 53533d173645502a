"""Peak memory of ``to_datatree`` at 10k and 100k cells: chunked against one-chunk sampling.

For each number of cells a fresh child process generates synthetic sparse-perturbation counts
(``cz.identifiability.generators.sparse_perturbation``), fits a tiny model for a few SVI
steps, then converts its posterior with :func:`causalzoo.diagnostics.to_datatree`. Around the
conversion only, the child resets the kernel's resident-set high-water mark
(``/proc/self/clear_refs``) and reads ``VmRSS`` before and ``VmHWM`` after, so each row is the
peak of the conversion itself (its compilation included, the same in every row), not of the
data generation or the fit. On CPU the JAX device is host memory, so this is also the device
peak.

Columns: ``result MB`` (the DataTree's own arrays, which must grow with the cells),
``peak MB`` (increase of the peak RSS over the RSS before converting) and ``overhead MB``
(``peak - result``: the working memory of the sampler). Chunked, the overhead is bounded by
the chunk size; with one chunk of all cells (``chunk_size = n``) it grows with the cells.

Usage::

    python benchmarks/posterior_memory.py                 # 10k and 100k cells
    python benchmarks/posterior_memory.py --smoke         # 1k and 2k cells, quick
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path


def _status(field: str) -> float:
    """A ``/proc/self/status`` field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args) -> dict:
    import numpy as np

    import causalzoo as cz

    n_conditions = args.perturbations + 2  # control, singles, one combination
    data = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=args.perturbations, n_cells_per_condition=args.n // n_conditions,
        n_genes=args.genes, n_combinations=1, n_latent_invariant=2, n_latent_response=3,
        seed=0,
    )
    adata = data.to_anndata()
    cz.SparsePerturbationVAE.setup_anndata(adata)
    model = cz.SparsePerturbationVAE(adata, n_latent_invariant=2, n_latent_response=3,
                                     n_hidden=16, n_layers=1)
    model.fit(max_steps=args.steps, batch_size=256, progress=False, seed=0)
    chunk = adata.n_obs if args.mode == "one-chunk" else args.chunk_size
    del data
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    tree = model.to_datatree(
        num_samples=args.draws, chunk_size=chunk, posterior_predictive=args.predictive,
        log_likelihood=args.log_likelihood, include_local=False,
    )
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    result = sum(
        var.nbytes for node in tree.subtree for var in node.to_dataset().data_vars.values()
    ) / 2**20
    assert np.isfinite(tree["log_likelihood"]["x"].values).all()
    return {
        "cells": int(adata.n_obs), "mode": args.mode, "chunk": int(chunk),
        "before_mb": before, "peak_mb": peak - before, "result_mb": result,
        "overhead_mb": peak - before - result, "seconds": seconds,
    }


def run_child(cells: int, mode: str, args) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--n", str(cells), "--mode", mode,
        "--genes", str(args.genes), "--draws", str(args.draws), "--steps", str(args.steps),
        "--chunk-size", str(args.chunk_size), "--perturbations", str(args.perturbations),
        "--log-likelihood", args.log_likelihood,
    ] + (["--predictive"] if args.predictive else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child for {cells} cells ({mode}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="*", default=None)
    parser.add_argument("--genes", type=int, default=50)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--perturbations", type=int, default=3)
    parser.add_argument("--log-likelihood", default="marginal",
                        choices=("marginal", "conditional"))
    parser.add_argument("--predictive", action="store_true",
                        help="also draw posterior predictive counts (cells x genes per draw)")
    parser.add_argument("--modes", nargs="*", default=["chunked", "one-chunk"])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    cells = args.cells or ([1000, 2000] if args.smoke else [10_000, 100_000])
    print(f"to_datatree peak memory: {args.draws} draws, {args.genes} genes, "
          f"log_likelihood={args.log_likelihood!r}, predictive={args.predictive}, "
          f"chunk_size={args.chunk_size} (chunked)")
    print(f"{'cells':>8} {'mode':>10} {'chunk':>7} {'RSS before':>11} {'result MB':>10} "
          f"{'peak MB':>9} {'overhead MB':>12} {'s':>7}")
    rows = []
    for mode in args.modes:
        for n in cells:
            r = run_child(n, mode, args)
            rows.append(r)
            print(f"{r['cells']:>8} {mode:>10} {r['chunk']:>7} {r['before_mb']:>11.0f} "
                  f"{r['result_mb']:>10.1f} {r['peak_mb']:>9.1f} {r['overhead_mb']:>12.1f} "
                  f"{r['seconds']:>7.1f}")
    for mode in args.modes:
        sel = [r for r in rows if r["mode"] == mode]
        if len(sel) >= 2:
            lo, hi = sel[0], sel[-1]
            print(f"{mode}: cells x{hi['cells'] / lo['cells']:.1f} -> peak x"
                  f"{hi['peak_mb'] / max(lo['peak_mb'], 1e-9):.2f}, overhead x"
                  f"{hi['overhead_mb'] / max(lo['overhead_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
