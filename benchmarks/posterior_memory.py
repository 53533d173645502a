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

``--entry`` picks the zoo entry: ``sparse`` (the sparse perturbation model, default),
``ivae`` (:class:`causalzoo.IVAE` on the iVAE generator's observations, 5 segments, lifted
linearly to the genes plus Gaussian noise)
or ``snapshot`` (:class:`causalzoo.DynamicalCausalVAE` in snapshot mode on a synthetic time
course: two perturbations at 0 / 24 / 48 h, one latent drifting, a linear map to the genes
plus Gaussian noise). ``--chunk-size 0`` uses the converter's default chunk.

``--backed``: a first child generates the data, fits the model in memory, writes the cells
to an h5ad file and saves the fit; the measuring child opens the file with
``backed="r"``, loads the fit onto it (``cz.load(path, adata=backed)``) and converts the
training cells with ``observed_data=False``, so it never holds the expression matrix: the
cells are read from disk a chunk at a time.

Usage::

    python benchmarks/posterior_memory.py                 # 10k and 100k cells
    python benchmarks/posterior_memory.py --smoke         # 1k and 2k cells, quick
    python benchmarks/posterior_memory.py --entry ivae --backed --modes chunked
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status(field: str) -> float:
    """A ``/proc/self/status`` field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _time_course(n: int, n_genes: int, seed: int = 0):
    """A snapshot time course of about ``n`` cells: perturbations A (the control) and B at
    0 / 24 / 48 h, one latent drifting by +1 (A) or -1 (B) per step, a linear map."""
    import anndata
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    per = max(1, n // 6)
    w = rng.normal(size=(1, n_genes))
    xs, perts, hours = [], [], []
    for pert, shift in (("A", 1.0), ("B", -1.0)):
        for t in range(3):
            z = 0.5 * rng.normal(size=(per, 1))
            for _ in range(t):
                z = 0.5 * z + shift + 0.3 * rng.normal(size=(per, 1))
            xs.append((z @ w + 0.1 * rng.normal(size=(per, n_genes))).astype(np.float32))
            perts += [pert] * per
            hours += [24.0 * t] * per
    obs = pd.DataFrame({"pert": perts, "hours": hours},
                       index=[f"cell{i}" for i in range(len(perts))])
    return anndata.AnnData(np.concatenate(xs), obs=obs,
                           var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def fitted_model(args):
    """The entry's model, fitted for a few steps on freshly generated cells."""
    import causalzoo as cz

    if args.entry == "sparse":
        n_conditions = args.perturbations + 2  # control, singles, one combination
        data = cz.identifiability.generators.sparse_perturbation(
            n_perturbations=args.perturbations,
            n_cells_per_condition=args.n // n_conditions, n_genes=args.genes,
            n_combinations=1, n_latent_invariant=2, n_latent_response=3, seed=0,
        )
        adata = data.to_anndata()
        cz.SparsePerturbationVAE.setup_anndata(adata)
        model = cz.SparsePerturbationVAE(adata, n_latent_invariant=2, n_latent_response=3,
                                         n_hidden=16, n_layers=1)
    elif args.entry == "ivae":
        import numpy as np

        data = cz.identifiability.generators.ivae(
            n_segments=5, n_per_segment=args.n // 5, n_latent=2, seed=0,
        )
        # lifted to the genes by a fixed linear map (the generator's own mixing of many
        # outputs conditions square matrices of that size: slow and large)
        rng = np.random.default_rng(0)
        lift = rng.normal(size=(data.x.shape[1], args.genes)) / np.sqrt(data.x.shape[1])
        x = data.x @ lift + 0.1 * rng.normal(size=(data.x.shape[0], args.genes))
        model = cz.IVAE.from_arrays(x=x.astype(np.float32), u=data.segment, n_latent=2,
                                    n_hidden=16, n_layers=1)
    else:
        adata = _time_course(args.n, args.genes)
        cz.DynamicalCausalVAE.setup_anndata(adata, time_key="hours", perturbation_key="pert",
                                            control="A")
        model = cz.DynamicalCausalVAE(adata, n_latent=2, n_latent_invariant=1, n_hidden=16,
                                      n_layers=1, transition="linear")
    return model.fit(max_steps=args.steps, batch_size=256, progress=False, seed=0)


def prepare(args) -> dict:
    """``--backed``: write the cells to ``data_dir/cells.h5ad`` and the fit to
    ``data_dir/fit`` (the measuring child then never holds the matrix)."""
    model = fitted_model(args)
    model.adata.write_h5ad(Path(args.data_dir) / "cells.h5ad")
    model.save(Path(args.data_dir) / "fit", overwrite=True)
    return {"cells": int(model.adata.n_obs)}


def child(args) -> dict:
    import numpy as np

    import causalzoo as cz

    if args.data_dir:
        import anndata

        cells = anndata.read_h5ad(Path(args.data_dir) / "cells.h5ad", backed="r")
        model = cz.load(Path(args.data_dir) / "fit", adata=cells)
    else:
        model = fitted_model(args)
    n_cells = int(model.adata.n_obs)
    chunk = n_cells if args.mode == "one-chunk" else args.chunk_size
    if not chunk:  # the converter's default, as to_datatree(chunk_size=None) picks it
        from causalzoo.diagnostics.convert import _default_chunk_size, posterior_source

        chunk = _default_chunk_size(posterior_source(model), args.draws)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    tree = cz.diagnostics.to_datatree(
        model, num_samples=args.draws, chunk_size=chunk, posterior_predictive=args.predictive,
        log_likelihood=args.log_likelihood, include_local=False,
        observed_data=not args.data_dir,
    )
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    result = sum(
        var.nbytes for node in tree.subtree for var in node.to_dataset().data_vars.values()
    ) / 2**20
    assert np.isfinite(tree["log_likelihood"]["x"].values).all()
    return {
        "cells": n_cells, "mode": args.mode, "chunk": min(int(chunk), n_cells),
        "before_mb": before, "peak_mb": peak - before, "result_mb": result,
        "overhead_mb": peak - before - result, "seconds": seconds,
    }


def run_child(cells: int, mode: str, args) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--n", str(cells), "--mode", mode,
        "--genes", str(args.genes), "--draws", str(args.draws), "--steps", str(args.steps),
        "--chunk-size", str(args.chunk_size), "--perturbations", str(args.perturbations),
        "--log-likelihood", args.log_likelihood, "--entry", args.entry,
    ] + (["--predictive"] if args.predictive else [])

    def run(cmd):
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"child for {cells} cells ({mode}) failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    if not args.backed:
        return run(cmd)
    with tempfile.TemporaryDirectory() as where:
        run([*cmd, "--prepare", "--data-dir", where])
        return run([*cmd, "--data-dir", where])


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
    parser.add_argument("--entry", default="sparse", choices=("sparse", "ivae", "snapshot"))
    parser.add_argument("--backed", action="store_true",
                        help="convert the cells from an h5ad opened backed='r' (see above)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(prepare(args) if args.prepare else child(args)))
        return
    cells = args.cells or ([1000, 2000] if args.smoke else [10_000, 100_000])
    print(f"to_datatree peak memory ({args.entry}{', backed' if args.backed else ''}): "
          f"{args.draws} draws, {args.genes} genes, log_likelihood={args.log_likelihood!r}, "
          f"predictive={args.predictive}, chunk_size={args.chunk_size or 'default'} (chunked)")
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
