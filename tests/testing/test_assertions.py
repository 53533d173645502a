"""assert_recovers / assert_does_not_recover compare a score with the entangled floor and
explain failures with every number."""

from __future__ import annotations

import numpy as np
import pytest

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.identifiability.metrics import _haar_orthogonal
from causalzoo.testing import assert_does_not_recover, assert_recovers, recovery_report


@pytest.fixture(scope="module")
def data():
    return cz.identifiability.generators.ivae(n_segments=6, n_per_segment=200, n_latent=4,
                                              seed=1)


def test_equivalent_estimate_passes_with_the_numbers(data):
    z = data.z
    z_hat = np.c_[np.exp(z[:, 2]), -z[:, 0], z[:, 3] ** 3, z[:, 1], z[:, 0]]
    report = assert_recovers(z_hat, data, metric="spearman", margin=0.2)
    assert report.score == pytest.approx(1.0)
    assert report.matching.tolist() == [1, 3, 0, 2] or report.matching.tolist() == [4, 3, 0, 2]
    assert set(report.floors) == {"rotation", "rotation_max", "observations"}
    assert report.floor == max(report.floors["rotation"], report.floors["observations"])


def test_rotated_estimate_fails_with_an_informative_message(data):
    rotated = data.z @ _haar_orthogonal(4, np.random.default_rng(3))
    with pytest.raises(AssertionError) as err:
        assert_recovers(rotated, data, margin=0.1)
    message = str(err.value)
    report = recovery_report(rotated, data)
    assert f"{report.score:.3f}" in message and f"{report.floor:.3f}" in message
    assert "margin 0.100" in message and "matched correlations" in message
    # ... and the same estimate is a passing negative control
    assert_does_not_recover(rotated, data, margin=0.1)


def test_negative_control_fails_when_the_latents_are_recovered(data):
    with pytest.raises(AssertionError, match="negative control recovers"):
        assert_does_not_recover(data.z * 2.0, data)


def test_min_score_and_floor_kinds(data):
    noisy = data.z + np.random.default_rng(0).normal(size=data.z.shape) * data.z.std(0) * 0.5
    report = recovery_report(noisy, data, metric="pearson", floor="rotation")
    assert report.floor == report.floors["rotation"]
    assert report.floor < report.score < 0.95
    with pytest.raises(AssertionError, match=r"below min_score=0\.990"):
        assert_recovers(noisy, data, metric="pearson", floor="rotation", margin=0.0,
                        min_score=0.99)
    # true latents alone (no x): the observation floor is unavailable
    only_z = recovery_report(noisy, data.z)
    assert "observations" not in only_z.floors
    with pytest.raises(CausalZooError, match="floor='observations' needs"):
        recovery_report(noisy, data.z, floor="observations")
    with pytest.raises(CausalZooError, match="floor='median'"):
        recovery_report(noisy, data, floor="median")
    with pytest.raises(CausalZooError, match="margin"):
        assert_recovers(noisy, data, margin="large")


def test_accepts_a_fitted_model(data):
    class Fitted:
        def get_latent_representation(self):
            return data.z[:, ::-1]

    assert assert_recovers(Fitted(), data).score == pytest.approx(1.0)


def test_temporal_latents_are_scored_with_every_step_as_a_point():
    """(units, steps, d) truth and estimate, as a DynamicalCausalVAE returns them: the same
    report as the flattened arrays (observation floor included), and a shape mismatch in
    the leading axes is an error."""
    seq = cz.identifiability.generators.leap_nonstationary(
        n_domains=4, n_per_domain=30, n_latent=3, seed=0)
    z_hat = np.c_[seq.z[..., 2:], -seq.z[..., :1] ** 3, np.exp(seq.z[..., 1:2])].reshape(
        seq.z.shape)
    report = assert_recovers(z_hat, seq, margin=0.1)
    flat = recovery_report(z_hat.reshape(-1, 3), seq.z.reshape(-1, 3))
    assert report.score == pytest.approx(1.0) and report.score == flat.score
    assert report.matching.tolist() == [1, 2, 0]
    assert "observations" in report.floors
    with pytest.raises(CausalZooError, match="every axis but the last"):
        recovery_report(z_hat[:, :-1], seq)


def test_lag_graph_is_scored_after_the_latents_matching():
    """A fitted model's lag graph is relabelled by the latent matching before scoring: the
    true graph read through the estimate's permutation scores SHD 0 and beats both trivial
    graphs; a wrong graph, the empty and the full graph score their counted errors."""
    seq = cz.identifiability.generators.leap_nonstationary(
        n_domains=4, n_per_domain=30, n_latent=3, seed=0)
    perm = np.array([2, 0, 1])  # estimated column j holds true latent perm[j]
    z_hat = seq.z[..., perm]
    truth = seq.graph.astype(float)  # (lags, parents, children), true labels
    est = truth[:, perm][:, :, perm]  # the same graph in the estimate's labels

    class Fitted:
        def __init__(self, graph):
            self.graph = graph

        def get_latent_representation(self):
            return z_hat

        def lag_graph(self):
            return self.graph

    n_true, n_all = int(truth.sum()), truth.size
    report = recovery_report(Fitted(0.9 * est), seq)
    assert report.matching.tolist() == [1, 2, 0]
    assert report.graph["shd"] == 0 and report.graph["recall"] == 1.0
    assert report.graph["shd_empty"] == n_true and report.graph["shd_full"] == n_all - n_true
    assert report.graph_beats_trivial and "graph SHD 0" in report.describe()
    # probabilities at or below the threshold are not edges
    assert recovery_report(Fitted(0.5 * est), seq).graph["shd"] == n_true
    assert not recovery_report(Fitted(np.ones_like(est)), seq).graph_beats_trivial
    assert recovery_report(Fitted(np.ones_like(est)), seq).graph["shd"] == n_all - n_true
    # the graph left in the true labels is scored as relabelled by the matching
    m = report.matching
    relabelled = truth[:, m][:, :, m]
    wrong = recovery_report(Fitted(truth), seq).graph["shd"]
    assert wrong == np.sum((truth != 0) != (relabelled != 0)) > 0
    # an explicit graph overrides the fit's; arrays without a graph give none
    assert recovery_report(z_hat, seq, graph=est).graph["shd"] == 0
    assert recovery_report(z_hat, seq).graph is None
    with pytest.raises(CausalZooError, match="no graph"):
        _ = recovery_report(z_hat, seq).graph_beats_trivial
    with pytest.raises(CausalZooError, match="no true graph"):
        recovery_report(z_hat, seq.z, graph=est)
    # a fit with another number of lags is not compared edge by edge
    assert recovery_report(Fitted(est[:1]), seq).graph is None
