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


def _report(args) -> int:
    from .diagnostics import write_report

    page = write_report(args.fit_dir, args.out, adata=args.data, num_samples=args.samples,
                        seed=args.seed)
    print(f"wrote {page}")
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
    demo.add_argument("--out", default="causalzoo-demo",
                      help="output folder (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                      help="SVI steps (default: %(default)s)")
    demo.add_argument("--cells", type=int, default=500,
                      help="predicted cells per held-out combination (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    from .evaluation.command import add_arguments as _evaluate_arguments
    from .evaluation.command import run as _evaluate

    evaluate = sub.add_parser(
        "evaluate",
        help="fit on a frozen protocol split, predict the held-out conditions, score the "
        "model and the baselines, write a report folder",
    )
    _evaluate_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)
    report = sub.add_parser(
        "report",
        help="plots and a Markdown summary of a saved fit (ELBO, masks, latent graph; with "
        "--data: PPC, Pareto-k, ArviZ summary, latents against the ground truth)",
    )
    report.add_argument("fit_dir", help="a directory written by model.save(...)")
    report.add_argument("--data", default=None, help="cells (.h5ad) to check the posterior on")
    report.add_argument("--out", default=None, help="output folder (default: FIT_DIR/report)")
    report.add_argument("--samples", type=int, default=100,
                        help="variational draws (default: %(default)s)")
    report.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    report.set_defaults(func=_report)
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
