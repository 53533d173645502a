"""Recovery of the iVAE's sources on its seeded generator, beside the entangled floor.

Fits :class:`causalzoo.IVAE` to ``cz.identifiability.generators.ivae`` data with the true
segment labels and, as the negative control, with shuffled labels, and prints for each:
Pearson and Spearman MCC of the posterior means, the entangled floors (random rotations of
the true sources; the raw observations), and the fit time.

Published size (Khemakhem et al. 2020; ``ilkhem/iVAE``): d = 5, 3 mixing layers, 40
segments x 1000 points, "~90 % MCC". The default here is DESIGN.md's 20 x 500.

Run: ``python benchmarks/recovery_ivae.py --segments 20 --per-segment 500 --latent 5
--steps 20000``. A script, not a test (a timing never sits in a pass/fail test).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import causalzoo as cz
from causalzoo.identifiability import entangled_floor, mcc


def run(args, shuffle: bool) -> dict:
    data = cz.identifiability.generators.ivae(
        n_segments=args.segments, n_per_segment=args.per_segment, n_latent=args.latent,
        n_layers=args.layers, slope=args.slope, mean_range=args.mean_range, seed=args.seed,
    )
    u = data.segment
    if shuffle:
        u = u[np.random.default_rng(args.seed + 1).permutation(len(u))]
    model = cz.IVAE.from_arrays(
        x=data.x, u=u, n_latent=args.latent, n_hidden=args.hidden, n_layers=2,
        posterior=args.posterior, prior_mean=args.mean_range > 0,
    )
    start = time.perf_counter()
    model.fit(max_steps=args.steps, batch_size=args.batch_size, seed=0,
              learning_rate=args.lr, progress=False)
    z_hat = model.get_latent_representation()
    floor = entangled_floor(data.z, x=data.x, seed=0)
    return {
        "labels": "shuffled" if shuffle else "true",
        "mcc_pearson": mcc(data.z, z_hat, method="pearson"),
        "mcc_spearman": mcc(data.z, z_hat, method="spearman"),
        "floor_rotation": floor["rotation"],
        "floor_observations": floor["observations"],
        "final_loss_per_point": float(np.mean(model.history["loss"][-200:]) / len(data.x)),
        "seconds": time.perf_counter() - start,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--per-segment", type=int, default=500)
    parser.add_argument("--latent", type=int, default=5)
    parser.add_argument("--layers", type=int, default=3, help="mixing layers of the generator")
    parser.add_argument("--slope", type=float, default=0.1,
                        help="slope of the generator's xtanh activation (0.1: the reference)")
    parser.add_argument("--mean-range", type=float, default=2.0,
                        help="segment means ~ U(-r, r); 0: variance-only (reference) setting")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="IVAE.fit's default")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--posterior", choices=["full", "diagonal"], default="full")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the fit uses 0)")
    parser.add_argument("--no-control", action="store_true", help="skip the shuffled-u fit")
    args = parser.parse_args(argv)
    rows = [run(args, False)] + ([] if args.no_control else [run(args, True)])
    keys = list(rows[0])
    print("  ".join(f"{k:>20}" for k in keys))
    for row in rows:
        print("  ".join(f"{v:>20.3f}" if isinstance(v, float) else f"{v:>20}"
                        for v in row.values()))
    return rows


if __name__ == "__main__":
    main()
