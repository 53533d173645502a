#!/usr/bin/env python
"""causalzoo's SVI engine against its peers (NumPyro per step, PyTorch, Pyro), in one run.

A script, not a test::

    python benchmarks/bench_peers.py --torch-python /tmp/torchenv/bin/python          # ~10 min
    python benchmarks/bench_peers.py --quick --torch-python /tmp/torchenv/bin/python  # ~1-2 min
    python benchmarks/bench_peers.py --quick --no-torch                               # JAX only
    python benchmarks/bench_peers.py --torch-python /tmp/torchenv/bin/python --scvi-python /tmp/scvienv/bin/python

Data: synthetic negative-binomial counts made with NumPy by ``bench_engine.make_data``
(default 20,000 cells x 2,000 genes, mean ~2.6, ~55% zeros, 50 perturbations plus control),
written to a temporary folder that every worker reads, so that all stacks fit the same
matrix. Model everywhere: a VAE with latent 10, encoder and decoder MLPs of 2 hidden layers of
128 (Linear -> LayerNorm -> ReLU), NB likelihood (log-softmax rates times library size,
gene-wise inverse dispersion), one-sample ELBO with the analytic Normal KL, Adam 1e-3.

Variants (``--variants``; each runs in its own worker process):

``engine-vae``
    :func:`causalzoo.inference.fit_svi` on the plain NB VAE of ``bench_engine.py``
    (``optax.adam(1e-3)``, ``AlignedELBO(0)``: NumPyro's mean-field ELBO, analytic KL).
``engine-sparse``
    ``fit_svi`` on ``causalzoo.models.sparse_perturbation`` as
    ``cz.SparsePerturbationVAE.fit`` calls it (``two_speed_adam(1e-3, 1e-2)``,
    ``static_kwargs={"config", "n_genes"}``), ``n_latent_invariant=5, n_latent_response=5``.
``numpyro-jit``
    Plain NumPyro on the same VAE: ``SVI(...)``, ``jax.jit(svi.update)`` once per step from
    Python, minibatches gathered on the host from NumPy arrays (epoch permutations).
``torch-eager``, ``torch-compile``, ``pyro``
    ``benchmarks/torch_reference.py`` under ``--torch-python`` (default: this interpreter;
    skipped with a message when torch, or pyro, is not importable there): the hand-written
    PyTorch loop of the same architecture, eager and through ``torch.compile``, and Pyro SVI
    (``TraceMeanField_ELBO``) of the same VAE. See that file for the details.
``scvi``
    scvi-tools' ``SCVI`` with the same architecture (latent 10, 2 hidden layers of 128 with
    LayerNorm, no BatchNorm or dropout, NB, gene-wise dispersion, observed library size),
    trained by its own ``model.train`` (Lightning, ``AnnDataLoader``), run by
    ``torch_reference.py --variant scvi`` under ``--scvi-python`` (default: the
    ``--torch-python`` interpreter); skipped with a message when scvi-tools is not importable
    there. Optional: scvi-tools is not in the ``bench`` extra.

How it is timed, and why this way: the machine is shared, so the variants are **interleaved
in one run**. Every worker is started at once (imports in parallel), then set up one at a
time (build, compile, first call, one untimed warm-up window; nothing else runs meanwhile, so
compile times are clean), then the script runs ``--rounds`` rounds; in each round every worker
runs one window of the same number of steps (``--steps``; default about one epoch, clipped to
20..500) while the others wait idle on a pipe; the order rotates from round to round. The
engine's windows are its own compiled calls (``steps_per_call`` = the window): a stand-in for
the progress bar of ``causalzoo.inference.svi`` pauses the fit between calls. cells/s of a
variant is the median over its windows; ratios are given two ways: ratio of the medians, and
the median over rounds of the ratio within the round (paired, steadier under drifting load).

Other figures: set-up time (worker: start of the fit to the end of the first compiled call
for the engine; first step for the others; ``torch.compile`` compiles there), XLA compile
time (``jax.monitoring`` events: trace + lowering + backend), peak RSS of each worker process,
and the fraction of the matmul roofline: GFLOP/s = cells/s x 6 x forward MACs per cell of the
dense layers (forward + backward ~ 3x forward) over the best fp32 GEMM rate of a jitted
``jnp.matmul`` (layer shapes and 1024^3) measured in this process before and after the
workers run. The load average (``os.getloadavg``) is recorded at every round.

Results: a table and the targets of issue 8 on stdout; JSON (everything, every window) and a
CSV (one row per variant and batch) in ``--out`` (default ``benchmarks/results/peers``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
JAX_VARIANTS = ("engine-vae", "engine-sparse", "numpyro-jit")
TORCH_VARIANTS = ("torch-eager", "torch-compile", "pyro", "scvi")
ALL_VARIANTS = JAX_VARIANTS + TORCH_VARIANTS
LEARNING_RATE = 1e-3
TARGETS = (  # (numerator, denominator, threshold, text)
    ("engine-vae", "torch-compile", 1.5, "engine VAE >= 1.5x torch.compile loop"),
    ("engine-vae", "pyro", 2.5, "engine VAE >= 2.5x Pyro"),
    ("engine-sparse", "engine-vae", 0.8, "sparse model within 20% of the engine VAE (>= 0.8x)"),
)
COMPILE_TARGET_S = 30.0
EXTRA_RATIOS = (("engine-vae", "torch-eager"), ("engine-vae", "numpyro-jit"), ("torch-compile", "torch-eager"),
                ("engine-sparse", "torch-compile"), ("engine-sparse", "pyro"), ("engine-vae", "scvi"),
                ("torch-eager", "scvi"), ("pyro", "scvi"))
CSV_FIELDS = ("batch", "variant", "steps_per_window", "cells_per_s", "cells_per_s_min", "cells_per_s_max",
              "cells_per_cpu_s", "first_call_s", "compile_s", "peak_rss_mib", "mflop_per_cell", "gflops",
              "roofline_fraction", "loss_per_cell")


def emit(obj):
    print("@@ " + json.dumps(obj), flush=True)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# =========================================================================== JAX workers


class _Stop(Exception):
    pass


def _wait_command():
    """Block on stdin for the next command; ``go`` returns, anything else stops the worker."""
    command = sys.stdin.readline().strip()
    if command != "go":
        raise _Stop(command)


def _load(folder, names):
    return {name: np.load(os.path.join(folder, f"{name}.npy")) for name in names}


def worker_engine(a):
    """``fit_svi`` driven one compiled call per window through a progress-bar stand-in."""
    import optax

    import bench_engine as be
    import causalzoo.inference.svi as svi_mod
    from causalzoo.inference.losses import AlignedELBO
    from causalzoo.models.sparse_perturbation import (
        SparsePerturbationConfig,
        sparse_perturbation_guide,
        sparse_perturbation_model,
    )

    emit({"event": "imported"})
    if sys.stdin.readline().strip() != "setup":
        return
    cfg = SparsePerturbationConfig(n_latent_invariant=5, n_latent_response=5, n_hidden=128,
                                   n_layers=2, likelihood="nb")
    if a.worker == "engine-vae":
        data = _load(a.data, ("x", "library_size"))
        model, guide, optimizer = be.vae_model, be.vae_guide, optax.adam(LEARNING_RATE)
        static = {"config": cfg}
    else:
        data = _load(a.data, ("x", "design", "library_size"))
        model, guide = sparse_perturbation_model, sparse_perturbation_guide
        optimizer = svi_mod.two_speed_adam(LEARNING_RATE, 10 * LEARNING_RATE)
        static = {"config": cfg, "n_genes": data["x"].shape[1]}
    n_cells = data["x"].shape[0]
    total_calls = 2 + a.windows  # compiling call, warm-up call, timed windows
    mark = len(be._EVENTS)
    info = {}

    class Clock:
        """Stands in for ``tqdm`` in the engine: reports each compiled call, then waits."""

        def __init__(self, *args, **kwargs):
            self.calls, self.t_go, self.c_go = 0, info["t_fit"], time.process_time()

        def update(self, n=1):
            now, cpu = time.perf_counter(), time.process_time()
            self.calls += 1
            if n != a.steps:
                raise RuntimeError(f"engine call ran {n} steps, expected {a.steps}")
            if self.calls == 1:
                trace, xla = be.compile_seconds_since(mark)
                info.update(first_call_s=now - info["t_fit"], trace_lower_s=trace, xla_compile_s=xla)
            elif self.calls == 2:
                emit({"event": "ready", **{k: v for k, v in info.items() if k != "t_fit"},
                      "warmup_window_s": now - self.t_go,
                      "rss_mib": peak_rss_mib()})
            else:
                emit({"event": "window", "seconds": now - self.t_go, "cpu_seconds": cpu - self.c_go,
                      "steps": n, "cells_per_s": n * a.batch / (now - self.t_go)})
            if 2 <= self.calls < total_calls:
                _wait_command()
            self.t_go, self.c_go = time.perf_counter(), time.process_time()

        def set_postfix(self, *args, **kwargs):
            pass

        def close(self):
            pass

    saved = svi_mod.tqdm
    svi_mod.tqdm = Clock
    final = {"event": "final"}
    try:
        info["t_fit"] = time.perf_counter()
        res = svi_mod.fit_svi(model, guide, data, batch_size=a.batch, max_steps=a.steps * total_calls,
                              seed=a.seed, optimizer=optimizer, loss=AlignedELBO(alignment=0.0),
                              static_kwargs=static, steps_per_call=a.steps, progress=False)
        if res.n_steps != a.steps * total_calls or not np.all(np.isfinite(res.losses)):
            raise RuntimeError(f"the fit stopped early: {res.stop_reason} {res.diagnosis}")
        final.update(macs_per_cell=be.macs_per_cell(res.params),
                     loss_per_cell=float(np.mean(res.losses[-a.steps:]) / n_cells),
                     engine_compile_seconds=res.compile_seconds)
        sys.stdin.readline()  # the "stop" line
    except _Stop:
        final["note"] = "stopped before the last window"
    finally:
        svi_mod.tqdm = saved
    emit({**final, "peak_rss_mib": peak_rss_mib()})


def worker_numpyro(a):
    """The usual NumPyro loop: ``jax.jit(svi.update)`` per step, host-gathered minibatches."""
    import jax
    import optax
    from numpyro.infer import SVI

    import bench_engine as be
    from causalzoo.inference.losses import AlignedELBO
    from causalzoo.models.sparse_perturbation import SparsePerturbationConfig

    emit({"event": "imported"})
    if sys.stdin.readline().strip() != "setup":
        return
    t_start = time.perf_counter()
    cfg = SparsePerturbationConfig(n_latent_invariant=5, n_latent_response=5, n_hidden=128,
                                   n_layers=2, likelihood="nb")
    data = _load(a.data, ("x", "library_size"))
    n_cells = data["x"].shape[0]
    svi = SVI(be.vae_model, be.vae_guide, optax.adam(LEARNING_RATE), AlignedELBO(alignment=0.0),
              n_cells=n_cells, config=cfg)
    rng = np.random.default_rng(a.seed)
    per_epoch = n_cells // a.batch
    order = {"perm": None, "pos": per_epoch}

    def next_batch():
        if order["pos"] >= per_epoch:
            order["perm"], order["pos"] = rng.permutation(n_cells), 0
        idx = order["perm"][order["pos"] * a.batch: (order["pos"] + 1) * a.batch]
        order["pos"] += 1
        return {k: v[idx] for k, v in data.items()}

    mark = len(be._EVENTS)
    state = svi.init(jax.random.key(a.seed), **next_batch())
    update = jax.jit(svi.update)
    state, loss = update(state, **next_batch())
    jax.block_until_ready(loss)
    trace, xla = be.compile_seconds_since(mark)
    first_call_s = time.perf_counter() - t_start

    def window():
        nonlocal state
        losses = []
        t, c = time.perf_counter(), time.process_time()
        for _ in range(a.steps):
            state, loss = update(state, **next_batch())
            losses.append(loss)
        jax.block_until_ready((state, losses))
        seconds = time.perf_counter() - t
        return {"event": "window", "seconds": seconds, "cpu_seconds": time.process_time() - c,
                "steps": a.steps, "cells_per_s": a.steps * a.batch / seconds,
                "loss_per_cell": float(np.mean(np.asarray(losses))) / n_cells}

    t0 = time.perf_counter()
    window()
    emit({"event": "ready", "first_call_s": first_call_s, "trace_lower_s": trace, "xla_compile_s": xla,
          "warmup_window_s": time.perf_counter() - t0, "rss_mib": peak_rss_mib()})
    last = {}
    while sys.stdin.readline().strip() == "go":
        last = window()
        emit(last)
    emit({"event": "final", "macs_per_cell": be.macs_per_cell(svi.get_params(state)),
          "loss_per_cell": last.get("loss_per_cell"), "peak_rss_mib": peak_rss_mib()})


# =========================================================================== orchestrator


class Worker:
    """A worker process speaking ``@@ {json}`` lines on stdout, commands on stdin."""

    def __init__(self, name, cmd, log_dir):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.stderr.txt"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        self.events: list[dict] = []

    def send(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def read(self, expected):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                self.log.flush()
                tail = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"worker {self.name} exited ({self.proc.returncode}) while "
                                   f"waiting for '{expected}'; its stderr ends:\n{tail}")
            if line.startswith("@@ "):
                event = json.loads(line[3:])
                self.events.append(event)
                if event["event"] != expected:
                    raise RuntimeError(f"worker {self.name}: expected '{expected}', got {event}")
                return event

    def close(self):
        try:
            if self.proc.poll() is None:
                self.send("stop")
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except (BrokenPipeError, OSError):
                pass
        self.log.close()


def torch_available(python):
    """(torch version or None, pyro version or None, message)."""
    probe = ("import json; out = {}\nimport torch; out['torch'] = torch.__version__\n"
             "try:\n import pyro; out['pyro'] = pyro.__version__\nexcept ImportError:\n pass\n"
             "print(json.dumps(out))")
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, None, f"cannot run {python}: {err}"
    if done.returncode != 0:
        return None, None, (f"torch is not importable by {python}; pass --torch-python with an "
                            "interpreter that has the CPU build of torch (benchmarks/README.md)")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    note = "" if "pyro" in found else f"pyro is not importable by {python}: the pyro row is skipped"
    return found.get("torch"), found.get("pyro"), note


def scvi_available(python):
    """(scvi-tools version or None, message)."""
    probe = "import json, scvi; print(json.dumps({'scvi': scvi.__version__}))"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"cannot run {python}: {err}"
    if done.returncode != 0:
        return None, (f"scvi-tools is not importable by {python}; pass --scvi-python with an "
                      "interpreter that has scvi-tools and the CPU build of torch "
                      "(benchmarks/README.md)")
    return json.loads(done.stdout.strip().splitlines()[-1])["scvi"], ""


def worker_command(name, a, data_dir, steps, batch):
    common = ["--data", data_dir, "--batch", str(batch), "--steps", str(steps), "--seed", str(a.seed)]
    if name in JAX_VARIANTS:
        return [sys.executable, str(HERE / "bench_peers.py"), "--worker", name,
                "--windows", str(a.rounds), *common]
    variant = {"torch-eager": "eager", "torch-compile": "compile", "pyro": "pyro", "scvi": "scvi"}[name]
    threads = ["--threads", str(a.torch_threads)] if a.torch_threads else []
    python = (a.scvi_python or a.torch_python) if name == "scvi" else a.torch_python
    return [python, str(HERE / "torch_reference.py"), "--worker", "--variant", variant, *common,
            *threads]


def run_batch(a, names, data_dir, batch, log_dir):
    n_cells = a.cells
    steps = a.steps or max(20, min(n_cells // batch, 500))
    workers = {name: Worker(f"{name}-b{batch}", worker_command(name, a, data_dir, steps, batch), log_dir)
               for name in names}
    out = {name: {"variant": name, "batch": batch, "steps_per_window": steps, "windows": []}
           for name in names}
    failed = {}
    try:
        for name, w in list(workers.items()):
            try:
                w.read("imported")
            except RuntimeError as err:
                failed[name] = str(err)
                del workers[name]
        for name, w in list(workers.items()):  # set-ups one at a time: clean compile times
            t0 = time.perf_counter()
            w.send("setup")
            try:
                out[name]["ready"] = w.read("ready")
            except RuntimeError as err:
                failed[name] = str(err)
                del workers[name]
                continue
            out[name]["setup_wall_s"] = time.perf_counter() - t0
            print(f"#   B={batch} {name}: ready in {out[name]['setup_wall_s']:.1f} s "
                  f"(first call {out[name]['ready']['first_call_s' if name in JAX_VARIANTS else 'first_step_s']:.1f} s)",
                  flush=True)
        live = list(workers)
        loads = []
        for r in range(a.rounds if live else 0):
            loads.append(os.getloadavg()[0])
            for name in live[r % len(live):] + live[: r % len(live)]:
                if name in failed:
                    continue
                try:
                    workers[name].send("go")
                    window = workers[name].read("window")
                except (RuntimeError, OSError) as err:
                    failed[name] = str(err)
                    continue
                window["round"] = r
                out[name]["windows"].append(window)
        for name, w in workers.items():
            if name in failed:
                continue
            try:
                w.send("stop")
                out[name]["final"] = w.read("final")
            except (RuntimeError, OSError) as err:
                failed[name] = str(err)
    finally:
        for w in workers.values():
            w.close()
    for name, err in failed.items():
        print(f"# B={batch} {name} FAILED: {err}", flush=True)
        out[name]["error"] = err
    return out, loads


def measure_gemm_peak(genes, batches):
    import bench_engine as be

    shapes = []
    for b in batches:
        shapes += [(b, genes, 128), (genes, b, 128), (b, 128, genes)]
    shapes.append((1024, 1024, 1024))
    return be.measure_gemm(list(dict.fromkeys(shapes)))


def summarise(row, gemm_peak):
    if not row["windows"]:
        return row
    rates = [w["cells_per_s"] for w in row["windows"]]
    cpu = [w["steps"] * row["batch"] / w["cpu_seconds"] for w in row["windows"] if w["cpu_seconds"] > 0]
    row["cells_per_s"] = statistics.median(rates)
    row["cells_per_s_min"], row["cells_per_s_max"] = min(rates), max(rates)
    row["cells_per_cpu_s"] = statistics.median(cpu) if cpu else float("nan")
    ready, final = row.get("ready", {}), row.get("final", {})
    macs = final.get("macs_per_cell") or ready.get("macs_per_cell")
    row["mflop_per_cell"] = 6 * macs / 1e6 if macs else float("nan")
    row["gflops"] = row["cells_per_s"] * row["mflop_per_cell"] / 1e3
    row["roofline_fraction"] = row["gflops"] / gemm_peak
    row["first_call_s"] = ready.get("first_call_s", ready.get("first_step_s"))
    row["compile_s"] = (ready["trace_lower_s"] + ready["xla_compile_s"]) if "xla_compile_s" in ready else None
    row["peak_rss_mib"] = final.get("peak_rss_mib")
    row["loss_per_cell"] = final.get("loss_per_cell") or row["windows"][-1].get("loss_per_cell")
    return row


def ratios(rows, num, den):
    """(ratio of medians, median of within-round ratios, min, max) or None."""
    a, b = rows.get(num), rows.get(den)
    if not a or not b or not a.get("windows") or not b.get("windows"):
        return None
    by_round = {w["round"]: w["cells_per_s"] for w in b["windows"]}
    paired = [w["cells_per_s"] / by_round[w["round"]] for w in a["windows"] if w["round"] in by_round]
    return {"ratio_of_medians": a["cells_per_s"] / b["cells_per_s"],
            "paired_median": statistics.median(paired), "paired_min": min(paired),
            "paired_max": max(paired)}


def fmt(value, spec, missing="n/a"):
    return missing if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def print_table(headers, rows):
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(row, widths, strict=False))) + " |")


def report_batch(a, batch, rows, loads, gemm_peak, csv_rows):
    """Print one batch size's table, ratios and targets; return its record for the JSON."""
    rows = {n: summarise(r, gemm_peak) for n, r in rows.items()}
    ok = {n: r for n, r in rows.items() if r.get("windows")}
    base = "engine-vae" if "engine-vae" in ok else next(iter(ok), None)
    steps = next(iter(rows.values()))["steps_per_window"]
    print(f"\n## B={batch}, {steps} steps per window, {a.rounds} interleaved rounds; load average "
          f"per round {', '.join(f'{v:.1f}' for v in loads)}; roofline {gemm_peak:.0f} GFLOP/s\n")
    table = []
    for n, r in ok.items():
        rel = ratios(ok, n, base)
        table.append([n, f"{r['cells_per_s']:,.0f} ({r['cells_per_s_min']:,.0f}-{r['cells_per_s_max']:,.0f})",
                      fmt(rel and rel["ratio_of_medians"], ".2f"), fmt(r["cells_per_cpu_s"], ",.0f"),
                      fmt(r["first_call_s"], ".1f"), fmt(r["compile_s"], ".1f"),
                      fmt(r["peak_rss_mib"], ",.0f"), fmt(r["mflop_per_cell"], ".2f"),
                      fmt(r["gflops"], ".1f"), fmt(100 * r["roofline_fraction"], ".1f") + "%",
                      fmt(r["loss_per_cell"], ".1f")])
        csv_rows.append({**{k: r.get(k) for k in CSV_FIELDS},
                         "vs_engine_vae": rel and rel["ratio_of_medians"] if base == "engine-vae" else None})
    if table:
        print_table(["variant", "cells/s median (min-max)", f"vs {base}", "cells/CPU-s", "1st call s",
                     "XLA compile s", "peak RSS MiB", "MFLOP/cell", "GFLOP/s", "roof %", "loss/cell"], table)
    checks = []
    for num, den, threshold, text in TARGETS:
        rel = ratios(ok, num, den)
        if rel is None:
            checks.append({"target": text, "status": "not measured"})
            continue
        met = rel["ratio_of_medians"] >= threshold and rel["paired_median"] >= threshold
        checks.append({"target": text, **rel, "threshold": threshold, "status": "MET" if met else "NOT MET"})
    for n in ("engine-vae", "engine-sparse"):
        if n in ok and ok[n]["compile_s"] is not None:
            checks.append({"target": f"{n} XLA compile < {COMPILE_TARGET_S:.0f} s",
                           "value": ok[n]["compile_s"], "first_call_s": ok[n]["first_call_s"],
                           "status": "MET" if ok[n]["compile_s"] < COMPILE_TARGET_S else "NOT MET"})
    print()
    for c in checks:
        if "ratio_of_medians" in c:
            print(f"- {c['target']}: {c['ratio_of_medians']:.2f}x (paired per round {c['paired_median']:.2f}, "
                  f"{c['paired_min']:.2f}-{c['paired_max']:.2f}) -> {c['status']}")
        elif "value" in c:
            print(f"- {c['target']}: {c['value']:.1f} s (first call {c['first_call_s']:.1f} s) -> {c['status']}")
        else:
            print(f"- {c['target']}: {c['status']}")
    extra = {}
    for num, den in EXTRA_RATIOS:
        rel = ratios(ok, num, den)
        if rel:
            extra[f"{num}/{den}"] = rel
            print(f"- {num} / {den}: {rel['ratio_of_medians']:.2f}x (paired {rel['paired_median']:.2f})")
    print(flush=True)
    return {"rows": rows, "load_per_round": loads, "roofline_gflops": gemm_peak, "targets": checks,
            "ratios": extra}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small run (4000 cells x 500 genes, B=256, 3 rounds of 20-step windows)")
    p.add_argument("--cells", type=int, default=None, help="cells (default 20000; 4000 with --quick)")
    p.add_argument("--genes", type=int, default=None, help="genes (default 2000; 500 with --quick)")
    p.add_argument("--perturbations", type=int, default=50)
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 256 1024)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per window (default about one epoch, 20..500; 20 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 3 with --quick)")
    p.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(ALL_VARIANTS))
    p.add_argument("--torch-python", default=sys.executable,
                   help="interpreter with torch (CPU build) and pyro-ppl for the torch rows")
    p.add_argument("--scvi-python", default=None,
                   help="interpreter with scvi-tools for the scvi row (default: --torch-python)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads in the torch workers (default: torch's default, "
                        "the fair setting; a diagnostic for loaded machines)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch and Pyro rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "peers"),
                   help="folder for the JSON and CSV results ('' to write nothing)")
    p.add_argument("--tag", default=None, help="file name stem (default peers[_quick]_<UTC time>)")
    p.add_argument("--worker", choices=JAX_VARIANTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--windows", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.batch = a.batch[0]
        return a
    a.cells = a.cells or (4000 if a.quick else 20000)
    a.genes = a.genes or (500 if a.quick else 2000)
    a.batch = a.batch or ([256] if a.quick else [256, 1024])
    a.rounds = a.rounds or (3 if a.quick else 5)
    if a.quick and a.steps is None:
        a.steps = 20
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        sys.path.insert(0, str(HERE))
        a.windows = a.windows if a.windows is not None else a.rounds
        (worker_engine if a.worker.startswith("engine") else worker_numpyro)(a)
        return None
    sys.path.insert(0, str(HERE))
    import jax
    import numpyro

    import bench_engine as be

    t_start = time.perf_counter()
    now = datetime.datetime.now(datetime.UTC)
    meta = {"date": now.isoformat(timespec="seconds"), "python": platform.python_version(),
            "jax": jax.__version__, "numpyro": numpyro.__version__, "nproc": os.cpu_count(),
            "cpu": be.cpu_model(), "argv": sys.argv[1:] if argv is None else list(argv),
            "cells": a.cells, "genes": a.genes, "batches": a.batch, "rounds": a.rounds,
            "loadavg_start": os.getloadavg(), "uptime_start": _uptime()}
    names = [v for v in a.variants if v in JAX_VARIANTS]
    torch_rows = [v for v in a.variants if v in TORCH_VARIANTS]
    if a.no_torch:
        torch_rows = []
    elif torch_rows:
        want_scvi = "scvi" in torch_rows
        torch_rows = [v for v in torch_rows if v != "scvi"]
        torch_version, pyro_version, note = torch_available(a.torch_python)
        if torch_rows and torch_version is None:
            print(f"# SKIPPING the torch and Pyro rows: {note}", flush=True)
            torch_rows = []
        elif torch_rows:
            meta.update(torch=torch_version, pyro=pyro_version, torch_python=a.torch_python,
                        torch_threads=a.torch_threads or "default")
            if pyro_version is None:
                print(f"# {note}", flush=True)
                torch_rows = [v for v in torch_rows if v != "pyro"]
        if want_scvi:
            scvi_version, scvi_note = scvi_available(a.scvi_python or a.torch_python)
            if scvi_version is None:
                print(f"# SKIPPING the scvi-tools row: {scvi_note}", flush=True)
            else:
                meta.update(scvi=scvi_version, scvi_python=a.scvi_python or a.torch_python,
                            torch_threads=a.torch_threads or "default")
                torch_rows.append("scvi")
    names += torch_rows

    print(f"# bench_peers  {meta['date']}  ({meta['nproc']} cpus, {meta['cpu']})")
    print(f"# jax {meta['jax']}  numpyro {meta['numpyro']}  python {meta['python']}  "
          f"torch {meta.get('torch', '-')}  pyro {meta.get('pyro', '-')}  scvi-tools {meta.get('scvi', '-')}")
    print(f"# load at start: {meta['uptime_start']}", flush=True)
    data = be.make_data(a.cells, a.genes, a.perturbations, a.seed)
    x = data["x"]
    print(f"# synthetic NB data {a.cells} cells x {a.genes} genes, mean {x.mean():.2f}, zeros "
          f"{np.mean(x == 0):.1%}, {a.perturbations} perturbations + control", flush=True)
    gemm = {"before": measure_gemm_peak(a.genes, a.batch)}
    gemm_peak = max(g["gflops"] for g in gemm["before"])
    print("# fp32 GEMM (jitted jnp.matmul, best of 3): " + ", ".join(
        f"{g['shape']} {g['gflops']:.0f}" for g in gemm["before"]) + " GFLOP/s", flush=True)
    report = {"meta": meta, "gemm": gemm, "batches": {}, "failed_worker_logs": {}}
    csv_rows = []
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        for key, value in data.items():
            np.save(os.path.join(tmp, f"{key}.npy"), value)
        del data, x
        for batch in a.batch:
            rows, loads = run_batch(a, names, tmp, batch, tmp)
            # The roofline: the best GEMM rate measured so far, re-measured after each batch.
            gemm[f"after_b{batch}"] = measure_gemm_peak(a.genes, a.batch)
            gemm_peak = max(gemm_peak, *(g["gflops"] for g in gemm[f"after_b{batch}"]))
            print(f"# B={batch} done at {time.perf_counter() - t_start:.0f} s; GEMM after it "
                  + ", ".join(f"{g['gflops']:.0f}" for g in gemm[f"after_b{batch}"])
                  + f" GFLOP/s; roofline {gemm_peak:.0f}", flush=True)
            report["batches"][str(batch)] = report_batch(a, batch, rows, loads, gemm_peak, csv_rows)
            report["failed_worker_logs"].update(
                {p.name: p.read_text()[-2000:] for p in Path(tmp).glob(f"*-b{batch}.stderr.txt")
                 if any(r.get("error") for r in rows.values())})
    report["gemm_peak_gflops"] = gemm_peak
    meta.update(loadavg_end=os.getloadavg(), uptime_end=_uptime())
    total = time.perf_counter() - t_start
    report["total_seconds"] = total
    print("\n# MFLOP/cell = 6 x forward MACs of the dense layers (forward + backward ~ 3x forward); "
          "roof % = GFLOP/s over the best fp32 GEMM rate measured up to the end of that batch")
    print("# 1st call s: set-up to the end of the first compiled call (engine: init + compile + one "
          "window of steps; others: first step, where torch.compile compiles); XLA compile s: "
          "jax.monitoring trace + lowering + backend events")
    print(f"# load at end: {meta['uptime_end']}; total {total:.0f} s")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = a.tag or f"peers{'_quick' if a.quick else ''}_{now.strftime('%Y%m%dT%H%M%SZ')}"
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=_jsonable))
        fields = [*CSV_FIELDS, "vs_engine_vae"]
        with open(out / f"{stem}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(csv_rows)
        print(f"# wrote {out / stem}.json and .csv")
    return report


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
