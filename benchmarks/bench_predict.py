"""Speed of ``SparsePerturbationVAE.predict``: counts drawn on the host against JAX's samplers.

Since 2026-12-05 predict's compiled program returns the parameters of the built-in count
likelihoods (NB, ZINB, Poisson) and NumPy's exact samplers draw the counts on the host
(``causalzoo.blocks._host_sampling``). Before, the program sampled them with JAX's exact
samplers (a gamma and a Poisson rejection loop per count). This script times both in one
process, on the demo's model and held-out Norman doubles:

* ``predict host``: ``model.predict(held_out, n_cells=N, seed=s)`` as shipped;
* ``predict device``: the same call with the likelihood sampled inside the compiled program
  (``_host_sampling.device_params`` patched to return ``None``, the fallback every other
  likelihood takes): the program predict compiled before, which gives the same values as
  the old code for the same seed;
* ``sample host`` / ``sample device``: the sampling alone, on the NB parameters the compiled
  program returned for those cells: ``_host_sampling.draw_cells`` against the likelihood's
  own ``NegativeBinomialLog.sample`` under ``jax.jit``.

``--score-seeds K`` also checks that the two samplers give the demo the same scores: with
the same fit, the demo's model scores (mean over the held-out doubles of Pearson-delta and
top-20-DE MSE on log-normalised means, as ``causalzoo demo`` prints them) for prediction
seeds ``0 .. K-1``, host against device, as mean and s.d. over the seeds with the z-score of
the difference of the means.

``--cold K`` times the first ``predict`` call (what ``causalzoo demo`` pays: compilation
included) of each variant in ``K`` fresh processes, alternating.

Each variant is compiled (and run once) first, then the variants are timed interleaved,
``--rounds`` times, with a new seed per round. Columns: median wall seconds (min-max), median
CPU seconds of this process (all threads; steadier on a shared machine) and the ratio of the
device row to the host row in the same run. Compare the ratios, not the absolute figures.

Usage::

    python benchmarks/bench_predict.py                            # fits the demo model (3000 steps)
    python benchmarks/bench_predict.py --model causalzoo-demo/model   # a saved demo model
    python benchmarks/bench_predict.py --cells 100 500 2000 --rounds 5
    python benchmarks/bench_predict.py --steps 200 --cells 100 --rounds 2   # quick
    python benchmarks/bench_predict.py --model causalzoo-demo/model --cells 500 --score-seeds 24
    python benchmarks/bench_predict.py --model causalzoo-demo/model --cells 500 --cold 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

import causalzoo as cz
from causalzoo import datasets
from causalzoo.api import sparse_perturbation as api
from causalzoo.blocks import _host_sampling
from causalzoo.blocks.likelihoods import NegativeBinomialLog
from causalzoo.data import canonical_condition
from causalzoo.demo import held_out_combinations


def demo_model(steps: int, seed: int):
    """The demo's model and held-out doubles (``causalzoo.demo.run_demo``'s set-up)."""
    adata = datasets.norman2019_subset()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    held = held_out_combinations(labels)
    canonical = np.array([canonical_condition(c, "control") for c in labels])
    train = adata[~np.isin(canonical, held)].copy()
    cz.SparsePerturbationVAE.setup_anndata(train, perturbation_key="perturbation",
                                           control="control")
    model = cz.SparsePerturbationVAE(train, n_latent_invariant=8, n_latent_response=8,
                                     n_hidden=128)
    model.fit(max_steps=steps, seed=seed, progress=False)
    return model, held


@contextlib.contextmanager
def device_sampling(model, programs: dict):
    """Within the block, predict samples the likelihood inside its compiled program, with a
    program cache of its own (``programs``), so both programs stay compiled side by side."""
    shared, own = api._SHARED_PROGRAMS, model.__dict__.get("_compiled_fns", {})
    original = _host_sampling.device_params
    api._SHARED_PROGRAMS, model._compiled_fns = {}, programs
    _host_sampling.device_params = lambda fn: None
    try:
        yield
    finally:
        _host_sampling.device_params = original
        api._SHARED_PROGRAMS, model._compiled_fns = shared, own


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def nb_params(model, held, n_cells, seed):
    """The NB parameters predict's compiled program returns (captured from a host predict)."""
    seen = {}
    draw = _host_sampling.draw_cells

    def spy(params, seed_bits, **kwargs):
        seen.update(params)
        return draw(params, seed_bits, **kwargs)

    _host_sampling.draw_cells = spy
    try:
        model.predict(held, n_cells=n_cells, seed=seed)
    finally:
        _host_sampling.draw_cells = draw
    return {k: np.asarray(v) for k, v in seen.items()}


def bench(model, held, n_cells, rounds):
    device_programs: dict = {}

    def predict_host(seed):
        return model.predict(held, n_cells=n_cells, seed=seed).X

    def predict_device(seed):
        with device_sampling(model, device_programs):
            return model.predict(held, n_cells=n_cells, seed=seed).X

    first = {}  # the first call of each variant: compilation (at these shapes) included
    _, first["predict host"], _ = timed(lambda: predict_host(1000))
    _, first["predict device"], _ = timed(lambda: predict_device(1000))
    params = nb_params(model, held, n_cells, seed=0)
    if set(params) != {"nb_log_mean", "nb_log_concentration"}:
        raise SystemExit(f"expected an NB likelihood; the program returned {sorted(params)}")
    log_mean, log_conc = jax.device_put(params["nb_log_mean"]), jax.device_put(
        params["nb_log_concentration"])
    jax_sample = jax.jit(lambda key, m, c: NegativeBinomialLog(m, c).sample(key))

    def sample_host(seed):
        return _host_sampling.draw_cells(params, [seed])

    def sample_device(seed):
        return jax_sample(jax.random.key(seed), log_mean, log_conc).block_until_ready()

    variants = {"predict host": predict_host, "predict device": predict_device,
                "sample host": sample_host, "sample device": sample_device}
    _, first["sample host"], _ = timed(lambda: sample_host(1000))
    _, first["sample device"], _ = timed(lambda: sample_device(1000))
    times = {name: {"wall": [], "cpu": []} for name in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            _, wall, cpu = timed(lambda fn=fn, r=r: fn(r + 1))
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return {"cells_per_condition": n_cells, "cells": n_cells * len(held),
            "genes": int(params["nb_log_mean"].shape[1]), "first_call_s": first,
            "times": times}


def demo_scores(model, held, n_cells, seeds):
    """The demo's model scores (means over ``held``) for each prediction seed, with the counts
    drawn on the host and by JAX in the compiled program."""
    import anndata
    import pandas as pd

    from causalzoo.evaluation import condition_means, log_normalize, score_condition, top_de_genes

    adata = datasets.norman2019_subset()
    canonical = np.array([canonical_condition(c, "control")
                          for c in adata.obs["perturbation"].astype(str)])
    lognorm = log_normalize(adata.X)
    means = condition_means(lognorm, canonical)
    ln = anndata.AnnData(
        X=lognorm, obs=pd.DataFrame({"condition": pd.Categorical(canonical)},
                                    index=adata.obs_names))
    de = {c: top_de_genes(ln, "condition", c, "control", n_genes=20) for c in held}

    def score(pred):
        pm = condition_means(log_normalize(pred.layers["counts"]),
                             pred.obs["condition"].astype(str))
        rows = [score_condition(pm[c], means[c], means["control"], de[c]) for c in held]
        return [float(np.mean([r[k] for r in rows])) for k in ("pearson_delta", "mse_de")]

    device_programs: dict = {}
    out = {"host": [], "device": []}
    for seed in seeds:
        out["host"].append(score(model.predict(held, n_cells=n_cells, seed=seed)))
        with device_sampling(model, device_programs):
            out["device"].append(score(model.predict(held, n_cells=n_cells, seed=seed)))
    return out


def report_scores(scores, n_cells):
    print(f"\ndemo scores over {len(scores['host'])} prediction seeds ({n_cells} cells per "
          "double), same fit: mean (s.d.)")
    h, d = np.asarray(scores["host"]), np.asarray(scores["device"])
    for j, name in enumerate(("Pearson-delta", "top-20-DE MSE")):
        se = np.sqrt((h[:, j].var(ddof=1) + d[:, j].var(ddof=1)) / len(h))
        print(f"{name:<15} host {h[:, j].mean():.4f} ({h[:, j].std(ddof=1):.4f})  device "
              f"{d[:, j].mean():.4f} ({d[:, j].std(ddof=1):.4f})  "
              f"z of the difference {(h[:, j].mean() - d[:, j].mean()) / se:+.2f}")


def report(row):
    t = row["times"]
    med = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in t.items()}
    print(f"\n{row['cells_per_condition']} cells x {row['cells'] // row['cells_per_condition']} "
          f"doubles = {row['cells']} cells x {row['genes']} genes")
    print(f"{'variant':<16}{'wall s (median, min-max)':>30}{'CPU s':>10}{'1st call s':>12}")
    for name, d in t.items():
        print(f"{name:<16}{med[name]['wall']:>12.3f} ({min(d['wall']):.3f}-{max(d['wall']):.3f})"
              f"{'':>4}{med[name]['cpu']:>10.3f}{row['first_call_s'][name]:>12.2f}")
    for what in ("predict", "sample"):
        host, device = med[f"{what} host"], med[f"{what} device"]
        print(f"{what}: device / host = {device['wall'] / host['wall']:.1f}x wall, "
              f"{device['cpu'] / host['cpu']:.1f}x CPU")


def cold_child(args):
    """In a fresh process: load the model, then time one predict (compilation included)."""
    model = cz.load(args.model)
    labels = datasets.norman2019_subset().obs["perturbation"].astype(str).to_numpy()
    held = held_out_combinations(labels)
    context = (device_sampling(model, {}) if args.cold_child == "device"
               else contextlib.nullcontext())
    with context:
        _, wall, cpu = timed(lambda: model.predict(held, n_cells=args.cells[0], seed=0))
    print(json.dumps({"wall": wall, "cpu": cpu}))


def cold_calls(args):
    """The first predict call of each variant, each in its own fresh process, alternating."""
    import subprocess
    import sys

    out = {"host": [], "device": []}
    for _ in range(args.cold):
        for variant in out:
            res = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--cells",
                 str(args.cells[0]), "--cold-child", variant],
                capture_output=True, text=True, check=True)
            out[variant].append(json.loads(res.stdout.strip().splitlines()[-1]))
    n = args.cells[0]
    print(f"\nfirst predict call in a fresh process ({n} cells per double, compilation "
          f"included; {args.cold} processes per variant): median wall / CPU s")
    for variant, runs in out.items():
        print(f"{variant:<8}{statistics.median(r['wall'] for r in runs):>8.2f} /"
              f"{statistics.median(r['cpu'] for r in runs):>7.2f}   "
              f"(wall {', '.join(f'{r['wall']:.2f}' for r in runs)})")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved demo model (causalzoo-demo/model); "
                        "default: fit one")
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps of the fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit")
    parser.add_argument("--cells", type=int, nargs="+", default=[500],
                        help="predicted cells per held-out double (default: 500, the demo's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--score-seeds", type=int, default=0,
                        help="also score the demo over this many prediction seeds, host "
                        "against device (at the first --cells)")
    parser.add_argument("--cold", type=int, default=0,
                        help="also time the first predict call (compilation included) in "
                        "this many fresh processes per variant (needs --model)")
    parser.add_argument("--cold-child", choices=["host", "device"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)
    if args.cold_child:
        return cold_child(args)

    print(f"# bench_predict  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"# jax {jax.__version__}  python {platform.python_version()}  "
          f"device {jax.devices()[0]}  ({os.cpu_count()} cpus)")
    start = time.perf_counter()
    if args.model:
        model = cz.load(args.model)
        labels = datasets.norman2019_subset().obs["perturbation"].astype(str).to_numpy()
        held = held_out_combinations(labels)
        print(f"# model: {args.model}")
    else:
        model, held = demo_model(args.steps, args.seed)
        print(f"# model: demo fit, {args.steps} steps, seed {args.seed} "
              f"({time.perf_counter() - start:.0f} s)")
    print(f"# held-out doubles: {', '.join(held)}; {args.rounds} rounds, interleaved")
    rows = []
    for n in args.cells:
        rows.append(bench(model, held, n, args.rounds))
        report(rows[-1])
    cold = None
    if args.cold:
        if not args.model:
            raise SystemExit("--cold needs --model (each fresh process loads it)")
        cold = cold_calls(args)
    scores = None
    if args.score_seeds:
        scores = demo_scores(model, held, args.cells[0], range(args.score_seeds))
        report_scores(scores, args.cells[0])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": vars(args), "rows": rows, "scores": scores, "cold": cold}, f,
                      indent=1)
    return rows


if __name__ == "__main__":
    main()
