"""Report folder of an evaluation: tables (CSV and Markdown), the split, plots.

:func:`write_report` writes

- ``scores.csv`` (tidy: seed, method, condition, group, metric, value), ``scores_wide.csv``
  (one column per metric) and ``summary.csv`` (mean over conditions; mean and standard
  deviation over seeds);
- ``report.md``: the summary and per-condition tables in Markdown, with the protocol, the
  split's test conditions and its data hash;
- ``split.json``: the frozen split (:meth:`~causalzoo.evaluation.splits.Split.save`);
- ``metrics.png``: a bar chart per metric, every method side by side (error bars: standard
  deviation over seeds);
- ``predicted_vs_observed.png``: per held-out condition and method, the predicted against
  the observed change from control of every gene (top DE genes highlighted).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._errors import CausalZooError

if TYPE_CHECKING:  # pragma: no cover
    from .runner import EvaluationResult

__all__ = ["markdown_table", "write_report"]


def _fmt(v: object, digits: int) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(float(v)) else f"{float(v):.{digits}f}"
    return str(v)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A pipe table of a data frame (index included), numbers with ``digits`` decimals.

    Examples
    --------
    >>> print(markdown_table(pd.DataFrame({"a": [0.5]}, index=pd.Index(["x"], name="m"))))
    | m | a |
    |---|---|
    | x | 0.500 |
    """
    def name(col):
        if isinstance(col, tuple):
            return " ".join(str(c) for c in col if str(c))
        return str(col)

    index_names = [n if n is not None else "" for n in frame.index.names]
    header = [*map(str, index_names), *(name(c) for c in frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        keys = idx if isinstance(idx, tuple) else (idx,)
        cells = [*(str(k) for k in keys), *(_fmt(v, digits) for v in row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bar_chart(result: EvaluationResult, path: Path) -> None:
    from matplotlib.figure import Figure

    from .runner import LOWER_IS_BETTER

    common = result.common_conditions()
    use_common = bool(common) and len(common) < len(result.split.test)
    summary = result.summary(common=use_common)
    metrics = [m for m, s in summary.columns if s == "mean"]
    methods = list(summary.index)
    ncol = 3
    nrow = math.ceil(len(metrics) / ncol)
    fig = Figure(figsize=(4.2 * ncol, 3.0 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, metric in zip(axes.flat, metrics, strict=False):
        mean = summary[(metric, "mean")].to_numpy(dtype=float)
        std = np.nan_to_num(summary[(metric, "std")].to_numpy(dtype=float))
        ax.bar(range(len(methods)), np.nan_to_num(mean), yerr=std,
               color=[colors[m] for m in methods], capsize=3)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=7)
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{metric} ({arrow})", fontsize=9)
        ax.axhline(0, color="grey", lw=0.6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    which = (f"the {len(common)} held-out conditions every method predicted" if use_common
             else "the held-out conditions")
    fig.suptitle(f"{result.split.protocol}: mean over {which} (error bars: s.d. over seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _scatter(result: EvaluationResult, path: Path, max_conditions: int = 12) -> None:
    from matplotlib.figure import Figure

    conditions = list(result.split.test)[:max_conditions]
    seed = min(result.info.get("seeds") or [0])
    methods = list(dict.fromkeys(result.table["method"]))
    fig = Figure(figsize=(2.6 * len(conditions), 2.5 * len(methods)))
    axes = fig.subplots(len(methods), len(conditions), squeeze=False)
    for j, cond in enumerate(conditions):
        prof = result.profiles[cond]
        obs = prof["observed"] - prof["control"]
        de = prof["de_genes"]
        for i, method in enumerate(methods):
            ax = axes[i, j]
            pred = prof["predicted"].get((seed, method))
            if pred is None:
                ax.text(0.5, 0.5, "no prediction", ha="center", va="center", fontsize=7,
                        transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                d = pred - prof["control"]
                ax.scatter(obs, d, s=3, alpha=0.4)
                ax.scatter(obs[de], d[de], s=8, color="C3")
                lim = float(np.abs(np.concatenate([obs, d])).max() * 1.05) or 1.0
                ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.6)
                ax.set(xlim=(-lim, lim), ylim=(-lim, lim))
                ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(cond, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{method}\npredicted change", fontsize=7)
            if i == len(methods) - 1:
                ax.set_xlabel("observed change", fontsize=7)
    fig.suptitle(f"Change from control, log-normalised means (seed {seed}; red: top DE genes)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(result: EvaluationResult, folder: str | Path, *, plots: bool = True) -> Path:
    """Write an evaluation's report folder (see the module docstring for the files).

    Parameters
    ----------
    result : EvaluationResult
        From :func:`~causalzoo.evaluation.runner.evaluate`.
    folder : str or Path
        Created if missing; files in it are overwritten.
    plots : bool
        Also draw ``metrics.png`` and ``predicted_vs_observed.png``.

    Returns
    -------
    pathlib.Path
        The folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CausalZooError(f"{str(folder)!r} exists and is not a folder; pick another path.")
    folder.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(folder / "scores.csv", index=False)
    wide = result.wide()
    wide.to_csv(folder / "scores_wide.csv")
    summary = result.summary()
    summary.to_csv(folder / "summary.csv")
    result.split.save(folder / "split.json")
    split = result.split
    mean_cols = [(m, s) for m, s in summary.columns if s in ("mean", "")]
    common = result.common_conditions()
    common_section: list[str] = []
    if common and len(common) < len(split.test):
        common_section = [
            f"## Mean over the {len(common)} conditions every method predicted",
            "",
            (f"({', '.join(common)}; the table above averages each method over the conditions "
             "it could predict, which differ between methods.)"),
            "",
            markdown_table(result.summary(common=True)[mean_cols].droplevel(1, axis=1)),
            "",
        ]
    lines = [
        f"# Evaluation: protocol `{split.protocol}`",
        "",
        (f"- model: `{result.info.get('model') or 'none (baselines only)'}`; seeds: "
         f"{result.info.get('seeds')}"),
        f"- split parameters: `{dict(split.params)}`; data hash `{split.data_hash[:16]}`",
        f"- train units ({len(split.train)}): {', '.join(split.train)}",
        f"- test units ({len(split.test)}): "
        + ", ".join(f"{u} ({split.groups[u]})" for u in split.test),
        f"- excluded ({len(split.excluded)}): {', '.join(split.excluded) or 'none'}",
        "",
        "## Mean over held-out conditions (mean over seeds)",
        "",
        markdown_table(summary[mean_cols].droplevel(1, axis=1)),
        "",
        *common_section,
        "## Standard deviation over seeds",
        "",
        markdown_table(summary[[(m, s) for m, s in summary.columns if s == "std"]]
                       .droplevel(1, axis=1)),
        "",
        "## Per condition (mean over seeds)",
        "",
        markdown_table(wide.groupby(level=["condition", "method"], sort=False).mean()),
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines))
    if plots:
        # Figure objects, not pyplot: no global backend switch and nothing left open.
        _bar_chart(result, folder / "metrics.png")
        _scatter(result, folder / "predicted_vs_observed.png")
    return folder
