"""The ``causalzoo`` command: ``demo`` and ``models``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, max_steps=args.steps, n_cells=args.cells, seed=args.seed,
             progress=not args.no_progress)
    return 0


def _models(args) -> int:
    from .models import get_model, list_models

    for name in list_models():
        spec = get_model(name)
        print(f"{name}\n  {spec.summary}\n  user class: {spec.user_class}\n"
              f"  identifiable: {spec.identifiability}\n  generator: {spec.generator}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .demo import DEFAULT_STEPS

    parser = argparse.ArgumentParser(
        prog="causalzoo",
        description="Latent causal generative models for perturbation data (NumPyro).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="fit the sparse perturbation model on the bundled Norman 2019 subset, predict "
        "held-out combinations, compare with the additive baseline, write plots",
    )
    demo.add_argument("--out", default="causalzoo-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="SVI steps (default: %(default)s)")
    demo.add_argument("--cells", type=int, default=500,
                      help="predicted cells per held-out combination (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    models = sub.add_parser("models", help="list the zoo")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ._errors import CausalZooError

    try:
        return args.func(args)
    except CausalZooError as err:
        print(f"causalzoo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
