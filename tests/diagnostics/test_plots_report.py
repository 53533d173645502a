"""Plots return figures with the panels they promise; the report and its CLI write the page,
the PNGs and a DataTree that reads back."""

from __future__ import annotations

import numpy as np
import pytest

from causalzoo import CausalZooError
from causalzoo.cli import main
from causalzoo.diagnostics import (
    open_datatree,
    plot_count_ppc,
    plot_elbo,
    plot_latent_correlation,
    plot_latent_graph,
    plot_perturbation_heatmap,
    write_report,
)


def test_plots(datatree, fitted):
    import matplotlib.pyplot as plt

    assert len(plot_elbo(datatree).axes) == 1
    assert len(plot_count_ppc(datatree).axes) == 3
    fig = plot_perturbation_heatmap(dt=datatree)
    assert len(fig.axes) == 4  # two heatmaps and their colour bars
    fig = plot_perturbation_heatmap(fitted.mask_probability())
    assert len(fig.axes) == 2
    z = np.random.default_rng(0).normal(size=(100, 3))
    fig = plot_latent_correlation(z, z[:, [2, 0, 1]])
    assert "MCC = 1.000" in fig.axes[0].get_title()
    w = np.array([[0, 0, 0], [0.9, 0, 0], [0, -0.5, 0]])
    assert "2 edges" in plot_latent_graph(w).axes[0].get_title()
    plt.close("all")
    with pytest.raises(CausalZooError, match="square"):
        plot_latent_graph(np.zeros((2, 3)))
    with pytest.raises(CausalZooError, match="names has 2 entries for a 3 x 3 graph"):
        plot_latent_graph(w, names=["a", "b"])


def test_report_without_and_with_data(fitted, adata, datatree, n_draws, chunk, tmp_path):
    fitted.save(tmp_path / "fit")
    assert main(["report", str(tmp_path / "fit"), "--out", str(tmp_path / "bare")]) == 0
    page = (tmp_path / "bare" / "report.md").read_text()
    assert "## Perturbation effects" in page and "--data" in page
    for png in ("elbo.png", "perturbation_heatmap.png", "latent_graph.png"):
        assert (tmp_path / "bare" / png).stat().st_size > 0
    # the draws, cells and chunks of `datatree`: the same compiled sampler and the same tree
    page = write_report(tmp_path / "fit", tmp_path / "full", adata=adata, num_samples=n_draws,
                        chunk_size=chunk)
    text = page.read_text()
    assert "## Variational diagnostics" in text and "## Posterior predictive checks" in text
    assert "## Latents against the ground truth" in text
    assert (tmp_path / "full" / "ppc.png").stat().st_size > 0
    dt = open_datatree(tmp_path / "full" / "posterior.nc")
    assert dt["posterior"].to_dataset().sizes["draw"] == n_draws
    # the saved and reloaded model gives the fitted model's posterior
    np.testing.assert_array_equal(dt["posterior"]["shift"].values,
                                  datatree["posterior"]["shift"].values)
    with pytest.raises(CausalZooError, match="not a saved model"):
        write_report(tmp_path)
