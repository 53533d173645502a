"""``cz.evaluate``: fit a model on a frozen split, predict the held-out conditions, score it
and every baseline with the same metrics.

Everything is scored in one space: ``log1p`` of library-size-normalised counts
(:func:`~causalzoo.evaluation.metrics.log_normalize`, target sum 1e4), on observed cells,
model predictions (counts, normalised the same way) and baselines alike. Per held-out
condition (or ``condition@context`` unit):

- mean-profile metrics against the observed mean: ``pearson_delta`` (change from the
  control of the same context, all genes), ``pearson_delta_de`` and ``mse_de`` and
  ``direction_errors_de`` on the top-``n_de_genes`` DE genes (scanpy Wilcoxon against that
  control, by absolute score), ``nrmse`` and ``r2_means`` (all genes), and
  ``r2_delta_de_weighted`` (change from the train-mean prediction, genes weighted by their
  absolute DE score; 0 for predicting the average perturbation);
- cell-level: ``energy_distance`` and ``mmd`` between predicted and observed cells in the
  first ``n_pcs`` principal components of the log-normalised training cells.

Baselines predict means; their cells, for the cell-level metrics, are the control cells of
the context shifted by the predicted change (``no_change`` is the control cells
themselves); ``latent_arithmetic`` predicts cells directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._errors import CausalZooError
from ..data import normalize_control, parse_perturbation
from .baselines import additive_baseline, condition_means, latent_arithmetic_baseline
from .distances import PCASpace, energy_distance, median_bandwidth, mmd, subsample
from .metrics import (
    de_ranking,
    log_normalize,
    nrmse,
    r2_delta_weighted,
    r2_means,
    score_condition,
)
from .splits import Split, cell_units, make_split, split_unit

if TYPE_CHECKING:  # pragma: no cover
    import anndata
    import xarray as xr

__all__ = ["BASELINES", "METRICS", "EvaluationResult", "evaluate"]

BASELINES = ("no_change", "train_mean", "additive", "latent_arithmetic")
METRICS = (
    "pearson_delta",
    "pearson_delta_de",
    "mse_de",
    "direction_errors_de",
    "nrmse",
    "r2_means",
    "r2_delta_de_weighted",
    "energy_distance",
    "mmd",
)
# Lower is better for these; higher for the rest.
LOWER_IS_BETTER = frozenset({"mse_de", "direction_errors_de", "nrmse", "energy_distance", "mmd"})


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    table : pandas.DataFrame
        Tidy scores: one row per ``(seed, method, condition, metric)`` with columns ``seed``,
        ``method``, ``condition``, ``group`` (the split's test group), ``metric``, ``value``.
        A method that cannot predict a condition (e.g. the additive baseline for an unseen
        single) has no row for it. Baselines do not depend on the seed; their rows repeat.
    split : Split
        The frozen split scored.
    profiles : dict
        Per condition: ``observed``, ``control`` (mean profiles), ``de_genes`` and
        ``predicted`` (``{(seed, method): mean profile}``), for plots.
    info : dict
        Fit information per seed, timings and settings.
    """

    table: pd.DataFrame
    split: Split
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def wide(self) -> pd.DataFrame:
        """One row per ``(seed, method, condition)``, one column per metric."""
        wide = self.table.pivot_table(
            index=["seed", "method", "condition", "group"], columns="metric", values="value",
            aggfunc="first", sort=False,
        )
        return wide[[m for m in METRICS if m in wide.columns]]

    def common_conditions(self) -> list[str]:
        """Test conditions that every method in the table predicted."""
        sets = self.table.groupby("method", sort=False)["condition"].agg(set)
        common = set.intersection(*sets.tolist()) if len(sets) else set()
        return [c for c in self.split.test if c in common]

    def summary(self, *, common: bool = False, group: str | None = None) -> pd.DataFrame:
        """Mean over conditions, then mean and standard deviation over seeds.

        Parameters
        ----------
        common : bool
            Average only over the conditions every method predicted
            (:meth:`common_conditions`), so the methods are compared on the same set.
        group : str, optional
            Only the test conditions of this group (e.g. ``"combo_seen2"``).

        Returns
        -------
        pandas.DataFrame
            Index ``method``; columns ``(metric, "mean" | "std")`` and ``n_conditions``
            (conditions averaged over).
        """
        t = self.table
        if common:
            t = t[t["condition"].isin(self.common_conditions())]
        if group is not None:
            if group not in set(self.split.groups.values()):
                raise CausalZooError(
                    f"group={group!r} is not a test group of this split; groups: "
                    f"{sorted(set(self.split.groups.values()))}."
                )
            t = t[t["group"] == group]
        per_seed = t.groupby(["method", "seed", "metric"], sort=False)["value"].mean()
        agg = per_seed.groupby(["method", "metric"], sort=False).agg(["mean", "std"])
        out = agg.unstack("metric").swaplevel(axis=1)
        cols = [(m, s) for m in METRICS for s in ("mean", "std") if (m, s) in out.columns]
        out = out[cols]
        counts = t.groupby("method", sort=False)["condition"].nunique()
        out[("n_conditions", "")] = counts.reindex(out.index).to_numpy()
        return out

    def to_xarray(self) -> xr.Dataset:
        """Scores as an ``xarray.Dataset`` with variable ``score`` over ``(seed, method,
        condition, metric)`` (NaN where a method has no prediction) and the test group as
        a coordinate of ``condition``."""
        import xarray as xr

        t = self.table
        seeds = sorted(t["seed"].unique().tolist())
        methods = list(dict.fromkeys(t["method"]))
        conditions = list(self.split.test)
        metrics = [m for m in METRICS if m in set(t["metric"])]
        arr = np.full((len(seeds), len(methods), len(conditions), len(metrics)), np.nan)
        index = {
            "seed": {s: i for i, s in enumerate(seeds)},
            "method": {m: i for i, m in enumerate(methods)},
            "condition": {c: i for i, c in enumerate(conditions)},
            "metric": {m: i for i, m in enumerate(metrics)},
        }
        for row in t.itertuples(index=False):
            arr[index["seed"][row.seed], index["method"][row.method],
                index["condition"][row.condition], index["metric"][row.metric]] = row.value
        return xr.Dataset(
            {"score": (("seed", "method", "condition", "metric"), arr)},
            coords={
                "seed": seeds, "method": methods, "condition": conditions, "metric": metrics,
                "group": ("condition", [self.split.groups[c] for c in conditions]),
            },
            attrs={"protocol": self.split.protocol, "data_hash": self.split.data_hash},
        )

    def save(self, folder: str | Path, *, plots: bool = True) -> Path:
        """Write the report folder (see :func:`~causalzoo.evaluation.report.write_report`)."""
        from .report import write_report

        return write_report(self, folder, plots=plots)


def _resolve_setup(adata, perturbation_key, control, layer, covariate_keys):
    registry = None
    store = adata.uns.get("causalzoo") if hasattr(adata, "uns") else None
    if isinstance(store, Mapping) and "setup" in store:
        from ..data import get_registry

        registry = get_registry(adata)
    if perturbation_key is None:
        perturbation_key = registry.perturbation_key if registry else "perturbation"
    if control is None:
        control = registry.control if registry else "control"
    if layer is None and registry is not None:
        layer = registry.layer
    if covariate_keys is None:
        covariate_keys = registry.covariate_keys if registry else ()
    return perturbation_key, normalize_control(control), layer, tuple(covariate_keys)


def _subset(adata: anndata.AnnData, mask: np.ndarray) -> anndata.AnnData:
    """A new AnnData of the masked cells (X, layers, obs, var; no uns).

    Built directly rather than by slicing: slicing an AnnData with categorical obs makes
    anndata 0.13 set a pandas option that pandas 3 deprecates (a warning per call).
    """
    import anndata as ad

    rows = np.flatnonzero(mask)
    obs = adata.obs.iloc[rows].copy()
    for col in obs.columns:
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            obs[col] = obs[col].cat.remove_unused_categories()
    out = ad.AnnData(X=adata.X[rows], obs=obs, var=adata.var.copy())
    for name in adata.layers.keys():
        out.layers[name] = adata.layers[name][rows]
    return out


def _fit_model(model_or_class, train, seed, setup, model_kwargs, fit_kwargs):
    if isinstance(model_or_class, type):
        if not hasattr(model_or_class, "setup_anndata"):
            raise CausalZooError(
                f"{model_or_class.__name__} has no setup_anndata; pass a causalzoo user class "
                "or a factory callable(train_adata, seed) -> fitted model."
            )
        model_or_class.setup_anndata(train, **setup)
        model = model_or_class(train, **dict(model_kwargs or {}))
        model.fit(seed=seed, **{"progress": False, **dict(fit_kwargs or {})})
        return model
    if callable(model_or_class):
        if model_kwargs or fit_kwargs:
            raise CausalZooError(
                "model_kwargs and fit_kwargs are for a model class; a factory takes "
                "(train_adata, seed) and configures the model itself."
            )
        model = model_or_class(train, seed)
        if not hasattr(model, "predict"):
            raise CausalZooError(
                f"The factory returned {type(model).__name__}, which has no predict method."
            )
        return model
    raise CausalZooError(
        f"model_or_class={model_or_class!r} is neither a model class nor a factory callable; "
        "pass e.g. cz.SparsePerturbationVAE, or None to score the baselines only."
    )


def _predicted_lognorm(pred, control) -> tuple[np.ndarray, np.ndarray]:
    counts = pred.layers["counts"] if "counts" in pred.layers else pred.X
    labels = pred.obs["condition"].astype(str).to_numpy()
    canon = np.array(["+".join(parse_perturbation(c, control)) or control[0] for c in labels])
    return log_normalize(counts), canon


def evaluate(
    model_or_class: type | Callable[..., Any] | None,
    adata: anndata.AnnData,
    protocol: str | Split = "singles_to_doubles",
    *,
    seeds: Sequence[int] = (0,),
    fit_kwargs: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    protocol_kwargs: Mapping[str, Any] | None = None,
    perturbation_key: str | None = None,
    control: str | Sequence[str] | None = None,
    layer: str | None = None,
    covariate_keys: Sequence[str] | None = None,
    baselines: Sequence[str] = BASELINES,
    model_name: str | None = None,
    n_cells: int = 300,
    n_de_genes: int = 20,
    n_pcs: int = 30,
    max_cells: int = 300,
    echo: Callable[[str], Any] | None = None,
) -> EvaluationResult:
    """Fit, predict and score a model and the baselines on one frozen split.

    Parameters
    ----------
    model_or_class : class, callable or None
        A user class with ``setup_anndata``, a constructor taking the training AnnData and
        ``model_kwargs``, ``fit(seed=..., **fit_kwargs)`` and ``predict(conditions,
        n_cells=..., seed=..., covariates=...)`` returning AnnData of counts (e.g.
        ``cz.SparsePerturbationVAE``): one model is fitted per seed on the split's training
        cells. Or a factory ``f(train_adata, seed) -> fitted model`` with that ``predict``.
        ``None`` scores the baselines only.
    adata : anndata.AnnData
        Counts in ``X`` (or ``layers[layer]``) and the condition labels in ``obs``.
    protocol : str or Split
        A :class:`~causalzoo.evaluation.splits.Split` (checked against ``adata``) or a protocol
        name (``"gears"``, ``"combinations"``, ``"singles_to_doubles"``,
        ``"covariate_transfer"``) made with ``protocol_kwargs``.
    seeds : sequence of int
        Fit and prediction seeds.
    fit_kwargs, model_kwargs : mapping, optional
        Passed to ``fit`` and to the constructor (``progress=False`` unless given).
    protocol_kwargs : mapping, optional
        Arguments of the protocol, e.g. ``{"seed": 1}`` or
        ``{"context_key": "cell_type", "held_out": "CD4T"}``.
    perturbation_key, control, layer, covariate_keys : optional
        How to read ``adata``; default: its causalzoo set-up, else ``"perturbation"`` and
        ``"control"``. For covariate transfer the context key is added to the covariates.
    baselines : sequence of str
        Subset of :data:`BASELINES`; each is used where it applies (``additive`` for
        combinations of trained singles, ``latent_arithmetic`` for covariate transfer).
    model_name : str, optional
        Method name of the model in the table (default: the class or factory name).
    n_cells : int
        Cells the model predicts per condition.
    n_de_genes : int
        DE genes for the ``*_de`` metrics.
    n_pcs : int
        Principal components of the cell-level space.
    max_cells : int
        Cells per side for the cell-level distances (seeded subsample).
    echo : callable, optional
        Progress lines go here (e.g. ``print``).

    Returns
    -------
    EvaluationResult

    Examples
    --------
    >>> import causalzoo as cz
    >>> adata = cz.datasets.norman2019_subset()
    >>> res = cz.evaluate(cz.SparsePerturbationVAE, adata, "singles_to_doubles",
    ...                   seeds=[0, 1], fit_kwargs={"max_steps": 2000})  # doctest: +SKIP
    >>> res.summary()  # doctest: +SKIP
    """
    say = echo or (lambda _msg: None)
    start = time.perf_counter()
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise CausalZooError(f"Unknown baselines {unknown}; choose from {list(BASELINES)}.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise CausalZooError("seeds is empty; pass at least one seed, e.g. seeds=[0].")
    key, controls, layer, cov_keys = _resolve_setup(
        adata, perturbation_key, control, layer, covariate_keys
    )
    if isinstance(protocol, Split):
        split = protocol
        # The split records how it read the data; that wins over the defaults.
        key = split.perturbation_key
        controls = split.control_labels
        layer = split.layer if layer is None else layer
        split.check(adata)
    else:
        kwargs = {"perturbation_key": key, "control": controls, "layer": layer,
                  **dict(protocol_kwargs or {})}
        split = make_split(str(protocol), adata, **kwargs)
    ctrl_name = controls[0]
    ctx_key = split.context_key
    if ctx_key and ctx_key not in cov_keys:
        cov_keys = (*cov_keys, ctx_key)

    # ---------------------------------------------------------------- observed data
    units = cell_units(adata, key, controls, ctx_key)
    is_train = np.isin(units, split.train)
    is_test = np.isin(units, split.test)
    counts = adata.layers[layer] if layer is not None else adata.X
    lognorm = log_normalize(counts)
    used = is_train | is_test
    means = condition_means(lognorm[used], units[used])

    def ctrl_unit(unit: str) -> str:
        ctx = split_unit(unit)[1]
        return ctrl_name if ctx is None else f"{ctrl_name}@{ctx}"

    import anndata as ad

    ln_adata = ad.AnnData(X=lognorm, obs=pd.DataFrame({"unit": units}, index=adata.obs_names))
    ln_adata.var_names = adata.var_names.astype(str)
    de: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for ref in dict.fromkeys(ctrl_unit(u) for u in split.test):
        groups = [u for u in split.test if ctrl_unit(u) == ref]
        de.update(de_ranking(ln_adata, "unit", groups, ref))
    space = PCASpace(lognorm[is_train], n_comps=n_pcs)
    cells = {u: space.transform(lognorm[units == u]) for u in set(split.test) | {
        ctrl_unit(u) for u in split.test}}
    observed_cells = {u: subsample(cells[u], max_cells, 0) for u in split.test}
    bandwidths = {u: median_bandwidth(observed_cells[u]) * np.array([0.5, 1.0, 2.0])
                  for u in split.test}
    train_perturbed = [u for u in split.train if split_unit(u)[0] != ctrl_name]
    if not train_perturbed:
        raise CausalZooError(
            f"The split trains on no perturbed condition ({list(split.train)[:10]}); every "
            "protocol needs some."
        )
    train_mean = np.mean([means[u] for u in train_perturbed], axis=0)

    # ---------------------------------------------------------------- predictions
    # predictions[method][unit] = (mean profile, cells in PCA space)
    predictions: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def shifted(unit: str, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = ctrl_unit(unit)
        delta_pcs = (mean - means[c]) @ space.components
        return mean, subsample(cells[c] + delta_pcs, max_cells, 1)

    if "no_change" in baselines:
        predictions["no_change"] = {u: shifted(u, means[ctrl_unit(u)]) for u in split.test}
    if "train_mean" in baselines:
        predictions["train_mean"] = {u: shifted(u, train_mean) for u in split.test}
    if "additive" in baselines:
        pred = {}
        for u in split.test:
            cond, ctx = split_unit(u)
            parts = parse_perturbation(cond, controls)
            singles = [p if ctx is None else f"{p}@{ctx}" for p in parts]
            if len(parts) > 1 and all(s in split.train for s in singles):
                ctx_means = {ctrl_name: means[ctrl_unit(u)],
                             **{p: means[s] for p, s in zip(parts, singles, strict=True)}}
                pred[u] = shifted(u, additive_baseline(ctx_means, ctrl_name, ["+".join(parts)])[
                    "+".join(parts)])
        if pred:
            predictions["additive"] = pred
    if "latent_arithmetic" in baselines and ctx_key:
        pred = {}
        train_set = set(split.train)
        for u in split.test:
            cond, ctx = split_unit(u)
            pairs = []
            for t in train_set:
                c2, ctx2 = split_unit(t)
                if c2 == cond and ctx2 != ctx and f"{ctrl_name}@{ctx2}" in train_set:
                    pairs.append((lognorm[units == t], lognorm[units == f"{ctrl_name}@{ctx2}"]))
            if pairs:
                out = latent_arithmetic_baseline(space, lognorm[units == ctrl_unit(u)], pairs)
                pred[u] = (out.mean(axis=0), subsample(space.transform(out), max_cells, 1))
        if pred:
            predictions["latent_arithmetic"] = pred
    say(f"evaluate: protocol {split.protocol!r}, {len(split.train)} train / {len(split.test)} "
        f"test units, baselines {list(predictions)}")

    fits: dict[int, Any] = {}
    model_predictions: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    name = model_name
    if model_or_class is not None:
        name = name or getattr(model_or_class, "__name__", "model")
        if name in BASELINES:
            raise CausalZooError(f"model_name={name!r} is a baseline's name; pick another.")
        train = _subset(adata, is_train)
        setup = {"perturbation_key": key, "control": controls, "layer": layer,
                 "covariate_keys": cov_keys}
        seen = {p for u in split.train for p in parse_perturbation(split_unit(u)[0], controls)}
        predictable = [u for u in split.test
                       if set(parse_perturbation(split_unit(u)[0], controls)) <= seen]
        for seed in seeds:
            t0 = time.perf_counter()
            model = _fit_model(model_or_class, train, seed, setup, model_kwargs, fit_kwargs)
            fit_s = time.perf_counter() - t0
            fits[seed] = {"fit_seconds": fit_s, **dict(getattr(model, "fit_info", {}) or {})}
            out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            by_ctx: dict[str | None, list[str]] = {}
            for u in predictable:
                by_ctx.setdefault(split_unit(u)[1], []).append(u)
            for ctx, us in by_ctx.items():
                conds = [split_unit(u)[0] for u in us]
                kw = {} if ctx is None else {"covariates": {ctx_key: ctx}}
                pred = model.predict(conds, n_cells=n_cells, seed=seed, **kw)
                pln, plabels = _predicted_lognorm(pred, controls)
                for u, c in zip(us, conds, strict=True):
                    rows = plabels == c
                    if not rows.any():
                        raise CausalZooError(
                            f"The model's predict returned no cells labelled {c!r} in "
                            "obs['condition']."
                        )
                    out[u] = (pln[rows].mean(axis=0),
                              subsample(space.transform(pln[rows]), max_cells, seed))
            model_predictions[seed] = out
            say(f"evaluate: {name} seed {seed}: fitted in {fit_s:.0f} s, predicted "
                f"{len(out)}/{len(split.test)} test units")

    # ---------------------------------------------------------------- scores
    rows = []
    profiles: dict[str, dict[str, Any]] = {}
    for u in split.test:
        obs, ctrl = means[u], means[ctrl_unit(u)]
        order, weights = de[u]
        top = order[:n_de_genes]
        profiles[u] = {"observed": obs, "control": ctrl, "de_genes": top, "predicted": {}}

        # this iteration's values bound as defaults: score is called only inside this loop body
        def score(method, mean, pcs, u=u, obs=obs, ctrl=ctrl, top=top, weights=weights):
            s = score_condition(mean, obs, ctrl, top)
            s["nrmse"] = nrmse(mean, obs)
            s["r2_means"] = r2_means(mean, obs)
            s["r2_delta_de_weighted"] = (
                r2_delta_weighted(mean, obs, train_mean, weights) if weights.any()
                else float("nan")
            )
            s["energy_distance"] = energy_distance(pcs, observed_cells[u])
            s["mmd"] = mmd(pcs, observed_cells[u], bandwidths[u])
            return s

        for seed in seeds:
            methods = []
            if seed in model_predictions and u in model_predictions[seed]:
                methods.append((name, *model_predictions[seed][u]))
            for method, preds in predictions.items():
                if u in preds:
                    methods.append((method, *preds[u]))
            for method, mean, pcs in methods:
                profiles[u]["predicted"][(seed, method)] = mean
                for metric, value in score(method, mean, pcs).items():
                    rows.append((seed, method, u, split.groups[u], metric, float(value)))
    table = pd.DataFrame(rows, columns=["seed", "method", "condition", "group", "metric",
                                        "value"])
    info = {
        "protocol": split.protocol, "model": name, "seeds": seeds, "fits": fits,
        "n_cells": n_cells, "n_de_genes": n_de_genes, "n_pcs": space.n_comps,
        "max_cells": max_cells, "seconds": time.perf_counter() - start,
        "fit_kwargs": dict(fit_kwargs or {}), "model_kwargs": dict(model_kwargs or {}),
    }
    return EvaluationResult(table=table, split=split, profiles=profiles, info=info)
