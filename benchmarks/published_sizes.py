"""The dynamical model at the peers' published sizes: the table.

Runs :class:`causalzoo.DynamicalCausalVAE` on the generators of LEAP, TDRL and CaRiNG at the
sizes their papers report, each with the recipe measured in
``docs/models/dynamical_measurements.md``, and records one table per device (CPU, or GPU
when JAX sees one). Every fit is one call of ``benchmarks/recovery_dynamical.py``'s
``run`` (the same scores: Spearman MCC of the posterior means beside the rotation floor,
kernel-ridge R^2 of the truth, the learned lag graph's SHD after the MCC matching), so each
entry can be re-run alone with the command the script prints.

Settings (``--rows``; published figures from ``shared/reference``):

* ``leap``: LEAP's non-stationary process, 8 latents, 2 lags, 20 domains x 7,500 sequences
  of 6 steps, its noise level 0.1 (LEAP publishes 0.971 for its own model);
* ``leap-noise1``: the same at noise 1.0 (the level at which this model recovers LEAP's
  process at CI size; no published figure);
* ``tdrl``: TDRL's changing mechanisms, 8 latents, 2 lags, 5 domains x 40,000 sequences of
  3 steps (TDRL is said to report about 0.95, not verified);
* ``caring``: CaRiNG's non-invertible process, 3 latents seen through 2 observations, one
  domain, 40,000 sequences of 10 steps, ``encoder_context=2`` (CaRiNG publishes 0.933).

Each setting has a control, fitted on the first of ``--seeds`` (``--control-seeds``): the
model with one domain for every unit (LEAP, TDRL: the domains cannot act), or CaRiNG's
process with constant noise (``caring(noise_coupled=False)``: not identifiable).

Records go to ``--out`` (default ``benchmarks/results``) as ``published_sizes_<device>.jsonl``,
one JSON line per fit, written as soon as the fit ends (an interrupted run keeps what it
finished, and a rerun skips every fit already recorded with the same recipe), and the table
is rewritten beside it as ``published_sizes_<device>.md`` after every fit.
``--max-minutes`` starts no new fit after that many minutes (for time-limited machines),
``--table-only`` rewrites the table from the records, ``--quick`` runs every setting at a
toy size (into ``--out``, as ``published_sizes_<device>_quick``; a smoke test, not a result).

Run: ``python benchmarks/published_sizes.py`` (every setting, seeds 0 1 2, 16 fits; about 90
minutes on 2 CPU cores, 2-7 minutes per fit), ``--rows tdrl caring --seeds 0``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import numpyro

import recovery_dynamical

RESULTS = Path(__file__).resolve().parent / "results"

# The options every setting shares: MLP or linear mechanisms are per setting; the rest is the
# recipe that recovers at CI size (docs/models/dynamical.md, "Recovery, measured"), with the
# longer budget that recovered snapshot mode (20,000 steps on a cosine decay).
_COMMON = ["--steps", "20000", "--batch-size", "256", "--schedule", "cosine",
           "--posterior", "full", "--observation-scale", "0.1", "--shift-scale", "0.01",
           "--fit-seed", "0"]
_DOMAINS = ["--noise-modulation", "all", "--log-scale-shift-rate", "global"]



def _leap(noise: str) -> list[str]:
    """LEAP's NP setting at generator noise ``noise``."""
    return ["--generator", "leap", "--latents", "8", "--domains", "20", "--per-domain",
            "7500", "--lags", "2", "--n-steps", "6", "--noise-scale", noise, "--transition",
            "mlp", *_DOMAINS]


SETTINGS = {
    "leap": {"title": "LEAP, NP d=8, noise 0.1", "published": 0.971, "flags": _leap("0.1"),
             "control": ("stationary", [])},
    "leap-noise1": {"title": "LEAP, NP d=8, noise 1.0", "published": None,
                    "flags": _leap("1.0"), "control": ("stationary", [])},
    "tdrl": {
        "title": "TDRL, changing mechanisms, d=8",
        "published": 0.95,
        "published_note": "said to be reported, not verified",
        "flags": ["--generator", "tdrl", "--latents", "8", "--domains", "5",
                  "--per-domain", "40000", "--lags", "2", "--n-steps", "3",
                  "--noise-scale", "1.0", "--tdrl-noise-change", "--transition", "mlp",
                  "--weight-shift-scale", "0.5", "--target-probability", "0.99", *_DOMAINS],
        "control": ("stationary", []),
    },
    "caring": {
        "title": "CaRiNG, d=3 seen through 2",
        "published": 0.933,
        "flags": ["--generator", "caring", "--latents", "3", "--domains", "1",
                  "--per-domain", "40000", "--n-steps", "10", "--noise-scale", "0.1",
                  "--encoder-context", "2", "--transition", "linear", "--prior", "flow",
                  "--history-scale"],
        "control": ("constant-noise", ["--caring-constant-noise"]),
    },
}

# --quick: the same settings at a toy size (a smoke test of the whole path)
_QUICK = {"--per-domain": "8", "--steps": "4", "--batch-size": "8"}


def recipe(setting: str, seed: int, arm: str, quick: bool = False) -> list[str]:
    """The ``recovery_dynamical.py`` arguments of one fit (``arm``: "true" or the
    setting's control)."""
    spec = SETTINGS[setting]
    flags = [*spec["flags"], *_COMMON, "--seed", str(seed)]
    if arm != "true":
        flags += spec["control"][1]
    if quick:
        flags = [_QUICK.get(prev, flag) for prev, flag in zip(["", *flags], flags, strict=False)]
    return flags


def recipe_id(flags: list[str]) -> str:
    return hashlib.sha1(" ".join(flags).encode()).hexdigest()[:12]


def device_name() -> str:
    """"cpu" or "gpu" (the platform of JAX's first device)."""
    return jax.devices()[0].platform


@functools.cache
def _commit() -> str:
    """The checkout's commit when the run started (read once: the code already loaded)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_fit(setting: str, seed: int, arm: str, quick: bool, progress: bool) -> dict:
    """One fit, scored by ``recovery_dynamical.run``, with what reproduces it."""
    flags = recipe(setting, seed, arm, quick)
    args = recovery_dynamical.parse_args(flags + (["--progress"] if progress else []))
    # the setting's control is one domain for every unit (labels "stationary") or the
    # control's data fitted with their labels (CaRiNG's constant noise)
    labels = "stationary" if arm == "stationary" else "true"
    row = recovery_dynamical.run(args, labels)
    return {
        "setting": setting, "seed": seed, "arm": arm, "recipe": flags,
        "recipe_id": recipe_id(flags), "device": str(jax.devices()[0]),
        "platform": device_name(), "jax": jax.__version__, "numpyro": numpyro.__version__,
        "commit": _commit(), "date": datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"),
        **{k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()},
    }


def _fmt(value, digits=3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_table(records: list[dict], title: str) -> str:
    """The markdown table of ``records`` (the latest record of each setting, seed and arm):
    a line per setting and seed, then a line per setting over its seeds."""
    latest = {}
    for r in records:
        latest[(r["setting"], r["seed"], r["arm"])] = r
    lines = [f"# {title}", ""]
    devices = sorted({r["device"] for r in latest.values()})
    versions = sorted({f"jax {r['jax']}, numpyro {r['numpyro']}" for r in latest.values()})
    commits = sorted({r["commit"] for r in latest.values()})
    lines += [(f"Device: {', '.join(devices) or 'none yet'}; {'; '.join(versions)}; "
               f"commits {', '.join(commits)}. One fit per entry (fit seed 0); line = "
               "rotation floor + 0.1; bold: at or above the line. Written by "
               "`python benchmarks/published_sizes.py`; each entry re-runs alone with "
               "`python benchmarks/recovery_dynamical.py` and the recipe in the records."),
              ""]
    lines += [("| setting | published | generator seed | MCC | rotation floor | control "
               "(MCC) | kernel R² | lag-graph SHD (true edges) | fit minutes |"),
              "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for setting, spec in SETTINGS.items():
        seeds = sorted({s for (name, s, arm) in latest if name == setting and arm == "true"})
        if not seeds:
            continue
        control_arm = spec["control"][0]
        published = _fmt(spec["published"]) + (
            f" ({spec['published_note']})" if spec.get("published_note") else "")
        scores = []
        for seed in seeds:
            r = latest[(setting, seed, "true")]
            line = r["floor_rotation"] + 0.1
            scores.append((r["mcc"], line))
            mcc_text = f"**{r['mcc']:.3f}**" if r["mcc"] >= line else f"{r['mcc']:.3f}"
            control = latest.get((setting, seed, control_arm))
            control_text = (f"{control_arm} {control['mcc']:.3f}" if control else "")
            lines.append(
                f"| {spec['title'] if seed == seeds[0] else ''} | "
                f"{(published or '-') if seed == seeds[0] else ''} | {seed} | {mcc_text} | "
                f"{r['floor_rotation']:.3f} | {control_text} | {r['r2_kernel']:.2f} | "
                f"{int(r['shd'])} ({r['n_true_edges']}) | {r['fit_seconds'] / 60:.1f} |")
        recovered = sum(m >= line for m, line in scores)
        summary.append(f"- {spec['title']}: mean MCC {np.mean([m for m, _ in scores]):.3f} "
                       f"over {len(scores)} draw(s), at or above the line on {recovered}"
                       + (f"; published {spec['published']:.3f}" if spec["published"]
                          else ""))
    return "\n".join(lines + [""] + summary) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="the settings to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="generator seeds")
    parser.add_argument("--control-seeds", nargs="*", type=int, default=None,
                        help="seeds that also fit the setting's control (default: the first "
                        "of --seeds; none: no control)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder of the records and the table")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new fit after this many minutes")
    parser.add_argument("--quick", action="store_true",
                        help="every setting at a toy size (a smoke test; its own files)")
    parser.add_argument("--table-only", action="store_true",
                        help="only rewrite the table from the records")
    parser.add_argument("--progress", action="store_true",
                        help="each fit's progress bar (default: when stderr is a terminal)")
    args = parser.parse_args(argv)
    control_seeds = args.seeds[:1] if args.control_seeds is None else args.control_seeds
    if not set(control_seeds) <= set(args.seeds):
        parser.error(f"--control-seeds {control_seeds} must be among --seeds {args.seeds}")
    stem = f"published_sizes_{device_name()}" + ("_quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    records_path, table_path = args.out / f"{stem}.jsonl", args.out / f"{stem}.md"
    title = (f"The dynamical model at the published sizes, {device_name().upper()}"
             + (" (quick: toy sizes, not a result)" if args.quick else ""))
    records = read_records(records_path)
    if args.table_only:
        table_path.write_text(render_table(records, title))
        print(table_path.read_text())
        return
    done = {(r["setting"], r["seed"], r["arm"], r["recipe_id"]) for r in records}
    plan = [(setting, seed, arm)
            for seed in args.seeds for setting in args.rows
            for arm in ["true"] + ([SETTINGS[setting]["control"][0]]
                                   if seed in control_seeds else [])]
    todo = [(s, seed, arm) for s, seed, arm in plan
            if (s, seed, arm, recipe_id(recipe(s, seed, arm, args.quick))) not in done]
    print(f"device: {jax.devices()[0]}; {len(plan) - len(todo)} of {len(plan)} fits already "
          f"recorded in {records_path}; {len(todo)} to run", flush=True)
    progress = args.progress or sys.stderr.isatty()
    _commit()
    start = time.perf_counter()
    for k, (setting, seed, arm) in enumerate(todo, 1):
        elapsed = (time.perf_counter() - start) / 60
        if args.max_minutes is not None and elapsed >= args.max_minutes:
            print(f"--max-minutes {args.max_minutes:g} reached after {elapsed:.1f} minutes: "
                  f"{len(todo) - k + 1} fits left for a rerun", flush=True)
            break
        flags = recipe(setting, seed, arm, args.quick)
        print(f"[{k}/{len(todo)}] {setting} seed {seed} {arm}: python "
              f"benchmarks/recovery_dynamical.py {' '.join(flags)} --no-control"
              + (" --control stationary --control-only" if arm == "stationary" else ""),
              flush=True)
        record = run_fit(setting, seed, arm, args.quick, progress)
        with records_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        records.append(record)
        table_path.write_text(render_table(records, title))
        print(f"    MCC {record['mcc']:.3f} (rotation floor {record['floor_rotation']:.3f}), "
              f"kernel R² {record['r2_kernel']:.2f}, SHD {int(record['shd'])} of "
              f"{record['n_true_edges']} edges, {record['fit_seconds']:.0f} s", flush=True)
    table_path.write_text(render_table(records, title))
    print(table_path.read_text())


if __name__ == "__main__":
    main()
