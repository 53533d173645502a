"""``causalzoo evaluate``: :func:`~causalzoo.evaluation.runner.evaluate` from the command line.

Examples (shell)::

    causalzoo evaluate --data norman2019_subset --protocol singles_to_doubles \\
        --seeds 0 1 2 --steps 2000 --out eval-norman
    causalzoo evaluate --data kang2018 --protocol covariate_transfer --held-out NK \\
        --steps 2000 --out eval-kang
    causalzoo evaluate --data my.h5ad --split eval-norman/split.json --baselines-only

``--data`` is a bundled or shared data set name (``norman2019_subset``, ``kang2018``) or an
``.h5ad`` path; ``--split`` re-uses a frozen split (checked against the data). The report
folder holds the tables (CSV, Markdown), the split and the plots
(:func:`~causalzoo.evaluation.report.write_report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._errors import CausalZooError

__all__ = ["add_arguments", "run"]

# Data set name (a loader in causalzoo.datasets) -> how to read its conditions.
_DATASETS: dict[str, dict[str, Any]] = {
    "norman2019_subset": {"perturbation_key": "perturbation", "control": "control"},
    "kang2018": {"perturbation_key": "condition", "control": "control",
                 "context_key": "cell_type"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` options to an argparse (sub)parser."""
    from .splits import PROTOCOLS

    parser.add_argument("--data", default="norman2019_subset",
                        help="data set name (norman2019_subset, kang2018) or an .h5ad path "
                        "(default: %(default)s)")
    parser.add_argument("--protocol", default="singles_to_doubles", choices=sorted(PROTOCOLS),
                        help="protocol to split by (default: %(default)s)")
    parser.add_argument("--split", default=None,
                        help="a frozen split JSON (from a report folder) instead of --protocol")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="seed of the split (gears, combinations)")
    parser.add_argument("--test-fraction", type=float, default=None,
                        help="combinations: fraction of candidate doubles held out")
    parser.add_argument("--held-out", default=None,
                        help="covariate_transfer: the context to hold out, e.g. CD4T")
    parser.add_argument("--context-key", default=None,
                        help="covariate_transfer: obs column of the context (e.g. cell_type)")
    parser.add_argument("--perturbation-key", default=None, help="obs column of the conditions")
    parser.add_argument("--control", default=None, help="control label")
    parser.add_argument("--layer", default=None, help="layer holding the counts (default: X)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fit seeds")
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps per fit")
    parser.add_argument("--cells", type=int, default=300,
                        help="predicted cells per condition (default: %(default)s)")
    parser.add_argument("--baselines-only", action="store_true",
                        help="score the baselines only (no model fit)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--out", default="causalzoo-evaluation",
                        help="report folder (default: %(default)s)")


def _load(data: str):
    from .. import datasets

    if data in _DATASETS:
        return getattr(datasets, data)(), dict(_DATASETS[data])
    path = Path(data)
    if path.suffix != ".h5ad" or not path.is_file():
        raise CausalZooError(
            f"--data {data!r} is neither a known data set ({sorted(_DATASETS)}) nor an existing "
            ".h5ad file."
        )
    import anndata

    return anndata.read_h5ad(path), {}


def run(args: argparse.Namespace, echo=print) -> int:
    """Run the ``evaluate`` subcommand from parsed arguments; returns the exit code."""
    from .runner import evaluate
    from .splits import Split

    adata, defaults = _load(args.data)
    key = args.perturbation_key or defaults.get("perturbation_key")
    control = args.control or defaults.get("control")
    protocol: Any
    protocol_kwargs: dict[str, Any] = {}
    if args.split:
        protocol = Split.load(args.split)
        key = key or protocol.perturbation_key
    else:
        protocol = args.protocol
        if args.split_seed is not None:
            protocol_kwargs["seed"] = args.split_seed
        if args.test_fraction is not None:
            protocol_kwargs["test_fraction"] = args.test_fraction
        if protocol == "covariate_transfer":
            protocol_kwargs["context_key"] = args.context_key or defaults.get("context_key")
            protocol_kwargs["held_out"] = args.held_out
            if not protocol_kwargs["context_key"]:
                raise CausalZooError(
                    "covariate_transfer needs --context-key (the obs column of the context, "
                    "e.g. cell_type)."
                )
    model = None
    if not args.baselines_only:
        from ..api import SparsePerturbationVAE

        model = SparsePerturbationVAE
    result = evaluate(
        model, adata, protocol, seeds=args.seeds,
        fit_kwargs=None if model is None else {"max_steps": args.steps},
        protocol_kwargs=protocol_kwargs, perturbation_key=key, control=control,
        layer=args.layer, n_cells=args.cells, echo=echo,
    )
    folder = result.save(args.out, plots=not args.no_plots)
    summary = result.summary()
    cols = [(m, "mean") for m in ("pearson_delta", "mse_de", "r2_delta_de_weighted",
                                  "energy_distance")]
    echo(summary[cols + [("n_conditions", "")]].droplevel(1, axis=1)
         .to_string(float_format=lambda v: f"{v:.4f}"))
    echo(f"wrote {folder}/: report.md, scores.csv, scores_wide.csv, summary.csv, split.json"
         + ("" if args.no_plots else ", metrics.png, predicted_vs_observed.png"))
    return 0
