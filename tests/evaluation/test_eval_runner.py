"""``cz.evaluate``: the table, the xarray view, baselines on the same split, model plumbing
(oracle factories with known answers, and one tiny real fit), the report folder and the CLI."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.cli import main
from causalzoo.evaluation import METRICS, Split, cell_units, evaluate


class Replay:
    """A 'model' that predicts a condition by returning cells of a fixed source unit map."""

    def __init__(self, adata, source, context_key=None, calls=None):
        self.adata, self.source, self.context_key = adata, source, context_key
        self.units = cell_units(adata, "perturbation", "control", context_key)
        self.calls = calls if calls is not None else []

    def predict(self, conditions, n_cells=100, *, seed=0, covariates=None):
        self.calls.append((list(conditions), covariates, seed))
        blocks, labels = [], []
        for c in conditions:
            unit = c if covariates is None else f"{c}@{covariates[self.context_key]}"
            rows = np.flatnonzero(self.units == self.source(unit))
            blocks.append(self.adata.X[rows].toarray())
            labels += [c] * rows.size
        obs = pd.DataFrame({"condition": labels}, index=[f"p{i}" for i in range(len(labels))])
        out = ad.AnnData(X=np.concatenate(blocks), obs=obs)
        out.layers["counts"] = out.X.copy()
        return out


def test_oracle_scores_perfectly_and_control_replay_matches_no_change(norman_like):
    oracle = evaluate(lambda train, seed: Replay(norman_like, lambda u: u), norman_like,
                      "singles_to_doubles", seeds=[0, 1], model_name="oracle")
    t = oracle.table
    assert list(t.columns) == ["seed", "method", "condition", "group", "metric", "value"]
    assert set(t["method"]) == {"oracle", "no_change", "train_mean", "additive"}
    assert set(t["metric"]) == set(METRICS)
    # One row per (seed, method, condition, metric).
    assert not t.duplicated(["seed", "method", "condition", "metric"]).any()
    assert len(t) == 2 * 4 * 4 * len(METRICS)
    w = oracle.wide().xs("oracle", level="method")
    np.testing.assert_allclose(w["mse_de"], 0.0, atol=1e-12)
    np.testing.assert_allclose(w["nrmse"], 0.0, atol=1e-6)
    np.testing.assert_allclose(w[["pearson_delta", "pearson_delta_de", "r2_means",
                                  "r2_delta_de_weighted"]], 1.0, atol=1e-6)
    np.testing.assert_allclose(w["direction_errors_de"], 0.0)
    # The train-mean baseline scores 0 on the DE-weighted R²(Δ) by construction.
    tm = oracle.wide().xs("train_mean", level="method")
    np.testing.assert_allclose(tm["r2_delta_de_weighted"], 0.0, atol=1e-12)
    # A model that replays control cells equals the no-change baseline on the mean metrics.
    ctrl = evaluate(lambda train, seed: Replay(norman_like, lambda u: "control"), norman_like,
                    "singles_to_doubles", model_name="control_replay")
    cw = ctrl.wide()
    # (Not direction_errors_de: the replayed mean differs from control by rounding only,
    # so its signs are noise.)
    mean_metrics = ["mse_de", "nrmse", "r2_means", "r2_delta_de_weighted"]
    np.testing.assert_allclose(cw.xs("control_replay", level="method")[mean_metrics],
                               cw.xs("no_change", level="method")[mean_metrics], atol=1e-6)
    # The oracle's cells are the observed ones: its cell-level distances beat every baseline.
    s = oracle.summary()
    for metric in ("energy_distance", "mmd"):
        assert s.loc["oracle", (metric, "mean")] < s.drop("oracle")[(metric, "mean")].min()


def test_result_views(norman_like):
    res = evaluate(None, norman_like, "gears", protocol_kwargs={"seed": 1}, seeds=[0, 3])
    ds = res.to_xarray()
    assert ds["score"].dims == ("seed", "method", "condition", "metric")
    assert list(ds["seed"].values) == [0, 3]
    assert list(ds["condition"].values) == list(res.split.test)
    assert list(ds["group"].values) == [res.split.groups[c] for c in res.split.test]
    # The additive baseline cannot predict unseen singles: NaN there, no table row.
    singles = [c for c in res.split.test if res.split.groups[c] == "unseen_single"]
    assert singles
    if "additive" in ds["method"].values:
        assert np.isnan(ds["score"].sel({"method": "additive", "condition": singles[0]})).all()
    assert not ((res.table["method"] == "additive") & res.table["condition"].isin(singles)).any()
    s = res.summary()
    assert s.loc["no_change", ("n_conditions", "")] == len(res.split.test)
    common = res.common_conditions()
    assert set(res.summary(common=True)[("n_conditions", "")]) == {len(common)}
    with pytest.raises(CausalZooError, match="group='nope'"):
        res.summary(group="nope")


def test_covariate_transfer_passes_the_context_and_scores_latent_arithmetic(contexts_like):
    calls = []
    res = evaluate(
        lambda train, seed: Replay(contexts_like, lambda u: u, "cell_type", calls),
        contexts_like, "covariate_transfer",
        protocol_kwargs={"context_key": "cell_type", "held_out": "NK"}, model_name="oracle",
    )
    assert calls == [(["stim"], {"cell_type": "NK"}, 0)]
    assert set(res.table["method"]) == {"oracle", "no_change", "train_mean",
                                        "latent_arithmetic"}
    w = res.wide().droplevel(["seed", "condition", "group"])
    assert w.loc["oracle", "mse_de"] == pytest.approx(0.0, abs=1e-12)
    # The generated truth is (nearly) additive in log space, so latent arithmetic should
    # beat the no-change and train-mean baselines on the DE genes.
    assert w.loc["latent_arithmetic", "mse_de"] < w.loc["no_change", "mse_de"]
    assert w.loc["latent_arithmetic", "mse_de"] < w.loc["train_mean", "mse_de"]
    assert w.loc["latent_arithmetic", "energy_distance"] < w.loc["no_change", "energy_distance"]


def test_frozen_split_is_checked_and_reused(norman_like, tmp_path):
    res = evaluate(None, norman_like, "combinations", protocol_kwargs={"test_fraction": 0.5})
    path = res.split.save(tmp_path / "split.json")
    again = evaluate(None, norman_like, Split.load(path))
    pd.testing.assert_frame_equal(res.table, again.table)
    other = norman_like.copy()
    other.X = other.X * 2
    with pytest.raises(CausalZooError, match="other data"):
        evaluate(None, other, Split.load(path))


def test_evaluate_input_errors(norman_like):
    with pytest.raises(CausalZooError, match="Unknown baselines"):
        evaluate(None, norman_like, baselines=["mean"])
    with pytest.raises(CausalZooError, match="seeds is empty"):
        evaluate(None, norman_like, seeds=[])
    with pytest.raises(CausalZooError, match="neither a model class nor a factory"):
        evaluate(42, norman_like)
    with pytest.raises(CausalZooError, match="factory"):
        evaluate(lambda a, s: None, norman_like, fit_kwargs={"max_steps": 1})


class FakeClass:
    """The user-class protocol (setup_anndata, constructor, fit, predict) with a record."""

    log: list = []

    @classmethod
    def setup_anndata(cls, adata, **kwargs):
        cls.log.append(("setup", sorted(set(cell_units(adata, kwargs["perturbation_key"],
                                                         kwargs["control"]))), kwargs))

    def __init__(self, adata, **kwargs):
        self.adata = adata
        self.log.append(("init", adata.n_obs, kwargs))

    def fit(self, seed=0, **kwargs):
        self.log.append(("fit", seed, kwargs))
        self.fit_info = {"n_steps": kwargs.get("max_steps")}
        return self

    def predict(self, conditions, n_cells=100, *, seed=0, covariates=None):
        # Predict every condition as the mean training cell, shifted by the seed.
        out = Replay(self.adata, lambda u: "control").predict(conditions, n_cells, seed=seed)
        out.layers["counts"] = out.layers["counts"] + seed
        return out


def test_model_class_is_set_up_and_fitted_on_training_cells_per_seed(norman_like):
    FakeClass.log = []
    res = evaluate(FakeClass, norman_like, "singles_to_doubles", seeds=[0, 2],
                   fit_kwargs={"max_steps": 7}, model_kwargs={"n_hidden": 3})
    setups = [e for e in FakeClass.log if e[0] == "setup"]
    inits = [e for e in FakeClass.log if e[0] == "init"]
    fits = [e for e in FakeClass.log if e[0] == "fit"]
    assert len(setups) == len(inits) == len(fits) == 2
    # Training cells only: no held-out double and no excluded condition reaches the model.
    assert setups[0][1] == sorted(res.split.train)
    assert setups[0][2]["perturbation_key"] == "perturbation"
    n_train = int(np.isin(cell_units(norman_like, "perturbation"), res.split.train).sum())
    assert inits[0][1:] == (n_train, {"n_hidden": 3})
    assert [f[1] for f in fits] == [0, 2]
    assert fits[0][2] == {"progress": False, "max_steps": 7}
    assert res.info["fits"][2]["n_steps"] == 7
    t = res.table[res.table["method"] == "FakeClass"]
    assert set(t["seed"]) == {0, 2} and set(t["condition"]) == set(res.split.test)
    per_seed = t[t["metric"] == "nrmse"].groupby("seed")["value"].mean()
    assert per_seed[0] != per_seed[2]


@pytest.mark.slow
def test_sparse_perturbation_class_end_to_end(norman_like):
    res = evaluate(
        cz.SparsePerturbationVAE, norman_like, "singles_to_doubles", seeds=[0],
        fit_kwargs={"max_steps": 20, "batch_size": 64},
        model_kwargs={"n_latent_invariant": 2, "n_latent_response": 2, "n_hidden": 16},
        n_cells=50,
    )
    t = res.table[res.table["method"] == "SparsePerturbationVAE"]
    assert set(t["condition"]) == set(res.split.test)
    assert set(t["metric"]) == set(METRICS)
    assert np.isfinite(t["value"]).all()
    assert res.info["fits"][0]["n_steps"] == 20


def test_report_folder_and_cli(norman_like, tmp_path, capsys):
    path = tmp_path / "data.h5ad"
    norman_like.write_h5ad(path)
    out = tmp_path / "report"
    rc = main(["evaluate", "--data", str(path), "--protocol", "gears", "--split-seed", "1",
               "--baselines-only", "--out", str(out)])
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert {"scores.csv", "scores_wide.csv", "summary.csv", "report.md", "split.json",
            "metrics.png", "predicted_vs_observed.png"} <= names
    md = (out / "report.md").read_text()
    assert "protocol `gears`" in md and "| train_mean |" in md
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["method"]) >= {"no_change", "train_mean"}
    split = Split.load(out / "split.json", norman_like)
    assert split.protocol == "gears" and split.params["seed"] == 1
    # Re-using the frozen split from the command line gives the same table.
    rc = main(["evaluate", "--data", str(path), "--split", str(out / "split.json"),
               "--baselines-only", "--no-plots", "--out", str(tmp_path / "again")])
    assert rc == 0
    again = pd.read_csv(tmp_path / "again" / "scores.csv")
    pd.testing.assert_frame_equal(scores, again)
    assert "wrote" in capsys.readouterr().out
    rc = main(["evaluate", "--data", str(tmp_path / "missing.h5ad"), "--baselines-only"])
    assert rc == 2
    assert "missing.h5ad" in capsys.readouterr().err
