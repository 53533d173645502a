#!/usr/bin/env python
"""Throughput of ``fit_svi(devices=n)`` over 1, 2 and 4 devices, and the scaling efficiency.

A script, not a test: ``python benchmarks/bench_devices.py [--quick] [--devices 1 2 4]``.

Each device count runs in a FRESH subprocess, because simulated CPU devices are fixed when
jax is imported (``XLA_FLAGS=--xla_force_host_platform_device_count=N``); on a machine with
real accelerators pass ``--real`` to use the first N of ``jax.devices()`` instead. The
subprocess fits the sparse perturbation model (``cz.SparsePerturbationVAE``, NB,
``n_hidden=128``, ``n_layers=2``) to synthetic Poisson counts with ``fit(devices=n)`` and
reports steady-state cells/s: the steps after the first compiled call over
``run_seconds - compile_seconds`` (from ``model.fit_info``).

Scaling efficiency is ``cells/s(n) / (n * cells/s(1))``. Simulated CPU devices share the
machine's cores (all of them already serve one device's matrix multiplies), so they add
communication and no compute: expect an efficiency near or below ``1/n`` there. The figure
that matters is on several real accelerators; this script measures it when run on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
if not args["real"]:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={args['devices']}")
import jax, numpy as np
import causalzoo as cz

rng = np.random.default_rng(0)
x = rng.poisson(0.5, (args["cells"], args["genes"])).astype(np.float32)
labels = rng.choice(["control"] + [f"P{i}" for i in range(20)], args["cells"])
model = cz.SparsePerturbationVAE.from_arrays(x, labels, n_latent_invariant=5,
                                             n_latent_response=5, n_hidden=128, n_layers=2)
n = args["devices"]
devices = None if n == 1 else jax.devices()[:n]
model.fit(max_steps=args["steps"] * (args["calls"] + 1), batch_size=args["batch"],
          steps_per_call=args["steps"], early_stopping=False, progress=False,
          devices=devices)
info = model.fit_info
timed = args["steps"] * args["calls"] * args["batch"]
print(json.dumps({"devices": n, "platform": jax.devices()[0].platform,
                  "compile_seconds": info["compile_seconds"],
                  "cells_per_s": timed / (info["run_seconds"] - info["compile_seconds"]),
                  "final_loss": float(model.history["loss"][-1])}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cells", type=int, default=20000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50, help="steps per compiled call")
    parser.add_argument("--calls", type=int, default=4, help="timed calls after the first")
    parser.add_argument("--real", action="store_true",
                        help="use real devices (jax.devices()) instead of simulated CPU ones")
    parser.add_argument("--quick", action="store_true", help="4000 cells x 500 genes, B=512")
    args = parser.parse_args()
    if args.quick:
        args.cells, args.genes, args.batch, args.steps, args.calls = 4000, 500, 512, 20, 3
    rows = []
    for n in args.devices:
        if args.batch % n:
            sys.exit(f"--batch {args.batch} is not a multiple of {n} devices")
        config = {"devices": n, "real": args.real, "cells": args.cells, "genes": args.genes,
                  "batch": args.batch, "steps": args.steps, "calls": args.calls}
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)],
                              capture_output=True, text=True, env=dict(os.environ), check=False)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]["cells_per_s"] / rows[0]["devices"]
    print(f"{args.cells} cells x {args.genes} genes, batch {args.batch}, "
          f"{args.steps} steps/call, {args.calls} timed calls, cores: {os.cpu_count()}, "
          f"platform: {rows[0]['platform']}{'' if args.real else ' (simulated devices)'}")
    print(f"{'devices':>7} {'cells/s':>10} {'speed-up':>9} {'efficiency':>10} "
          f"{'compile s':>9} {'final loss':>12}")
    for r in rows:
        speedup = r["cells_per_s"] / rows[0]["cells_per_s"]
        eff = r["cells_per_s"] / (r["devices"] * base)
        print(f"{r['devices']:>7} {r['cells_per_s']:>10.0f} {speedup:>9.2f} {eff:>10.2f} "
              f"{r['compile_seconds']:>9.1f} {r['final_loss']:>12.1f}")


if __name__ == "__main__":
    main()
