"""Write your own identifiability test with causalzoo.testing.

Two kinds of test a user writes against a ground-truth generator:

1. a *property* of the metric, exact for every member of the model's equivalence class
   (hypothesis draws the members): Spearman MCC is 1 under any permutation and strictly
   monotone component-wise map of the true latents;
2. a *recovery* check of a fitted model: its MCC must beat the entangled floor (random
   rotations of the truth, the raw observations) by a margin, and the negative control
   (shuffled auxiliary variable) must not.

Run ``python examples/identifiability_test.py`` (about 20,000 SVI steps per fit on
20 segments x 100 points, d = 3) or ``--smoke`` for a seconds-long run that exercises every
line without asserting recovery. ``CAUSALZOO_HYPOTHESIS_PROFILE=nightly`` draws more
examples in part 1.
"""

from __future__ import annotations

import argparse

import numpy as np
from hypothesis import given

import causalzoo as cz
from causalzoo.testing import (
    assert_does_not_recover,
    assert_recovers,
    equivalence_transforms,
    recovery_report,
)


def property_test(n_latent: int) -> int:
    """Part 1: the metric sees every member of the equivalence class as perfect."""
    z = cz.identifiability.generators.ivae(n_segments=10, n_per_segment=50, n_latent=n_latent).z
    seen = []

    @given(transform=equivalence_transforms(n_latent, kind="componentwise"))
    def spearman_mcc_is_invariant(transform):
        seen.append(transform)
        assert cz.identifiability.mcc(z, transform(z), method="spearman") > 1 - 1e-9

    spearman_mcc_is_invariant()
    return len(seen)


def fit(data, u, steps: int, n_latent: int):
    model = cz.IVAE.from_arrays(x=data.x, u=u, n_latent=n_latent, n_hidden=32)
    return model.fit(max_steps=steps, batch_size=128, seed=0, learning_rate=3e-3,
                     progress=False)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no recovery asserts")
    args = parser.parse_args(argv)
    n_latent = 2 if args.smoke else 3
    steps = 30 if args.smoke else 20_000
    n_examples = property_test(n_latent)

    data = cz.identifiability.generators.ivae(
        n_segments=20, n_per_segment=20 if args.smoke else 100, n_latent=n_latent, seed=0
    )
    model = fit(data, data.segment, steps, n_latent)
    shuffled = data.segment[np.random.default_rng(1).permutation(len(data.segment))]
    control = fit(data, shuffled, steps, n_latent)
    if args.smoke:
        report = recovery_report(model, data)
        control_report = recovery_report(control, data)
    else:
        report = assert_recovers(model, data, metric="spearman", margin=0.05)
        control_report = assert_does_not_recover(control, data, metric="spearman", margin=0.05)
    print(f"property test: {n_examples} equivalence transforms checked")
    print("model:           ", report.describe())
    print("negative control:", control_report.describe())
    return {"n_examples": n_examples, "report": report, "control": control_report,
            "model": model}


if __name__ == "__main__":
    main()
