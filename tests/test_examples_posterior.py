"""examples/posterior_analysis_demo.py --quick: the walkthrough of
docs/guides/posterior_demo.md end to end on a tiny fit of the demo's split (~30 s of CPU:
three compiled fits/conversions dominate)."""

import json

import numpy as np
import pytest

import causalzoo as cz

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_posterior_demo_quick(tmp_path, load_example):
    example = load_example("posterior_analysis_demo")
    out = example.main(["--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == json.loads(json.dumps(out["results"]))

    # the split is the demo's: held-out combinations of observed singles, none in training
    train, heldout, held = example.demo_split(**{
        k: example.QUICK[k] for k in ("cells_per_condition", "n_genes")})
    assert results["held_out_combinations"] == held and len(held) == 5
    assert results["n_train_cells"] == train.n_obs and results["n_heldout_cells"] == heldout.n_obs
    assert not set(held) & set(train.obs["perturbation"].astype(str))

    # the summary names real perturbations and latents, largest |mean| first
    perturbations = set(cz.load(tmp_path / "quick-fit" / "model").perturbation_names)
    summary = out["summary"]
    assert len(summary) == len(perturbations) * 3  # 3 response latents
    for label in list(summary.index[:10]) + list(results["top_shifts"]):
        name, latent = label[len("shift["):-1].split(", ")
        assert name in perturbations and latent.startswith("z_resp_")
    means = summary["mean"].abs().to_numpy()
    assert np.all(np.diff(means) <= 0) and np.isfinite(summary[["mean", "sd"]].to_numpy()).all()
    assert set(results["forest_perturbations"]) <= perturbations
    assert (tmp_path / "shift_summary.csv").read_text().startswith(",mean,sd")

    # finite elpd for LOO on the training cells and for both models on the held-out cells
    loo = results["loo_train"]
    assert np.isfinite([loo["elpd"], loo["se"], loo["p"]]).all() and loo["elpd"] < 0
    assert set(results["heldout"]) == {"perturbed_vae", "sams_vae"}
    for row in results["heldout"].values():
        assert np.isfinite([row["elpd_loo"], row["lpd"], row["lpd_se"], row["lpd_diff"]]).all()
        # the log pointwise predictive density bounds the LOO estimate from above
        assert row["lpd"] >= row["elpd_loo"] - 1e-6
    assert max(r["lpd_diff"] for r in results["heldout"].values()) == 0.0
    assert abs(sum(r["weight"] for r in results["heldout"].values()) - 1) < 1e-6
    assert 0 <= results["pareto_k"]["fraction_bad"] <= 1
    ppc = results["ppc_extreme_fraction"]
    assert all(0 <= ppc[k] <= 1 for k in ("variance", "zero_fraction", "library_size"))

    # the figures exist and are real PNGs
    assert set(results["figures"]) == {"forest_shift.png", "mask_shift.png", "pareto_k.png",
                                       "ppc_counts.png"}
    for name in results["figures"]:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5_000, name
    # the DataTree it analysed: training cells, marginal per-cell log-likelihood
    dt = out["datatree"]
    assert dt.attrs["log_likelihood"] == "marginal"
    assert dt["log_likelihood"]["x"].sizes["cells"] == train.n_obs
    assert dt["posterior_predictive"]["x"].sizes["draw"] == results["num_samples"] == 30
