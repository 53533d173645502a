"""Assumption checks: sufficient variability, injectivity of a mixing, acyclicity."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from causalzoo import CausalZooError
from causalzoo.identifiability import (
    AssumptionCheck,
    check_acyclicity,
    check_injectivity,
    check_sufficient_variability,
    gaussian_natural_parameters,
)
from causalzoo.identifiability.generators import leap_nonstationary
from causalzoo.testing import examples

# ------------------------------------------------------------ sufficient variability


@settings(max_examples=examples(25), deadline=None)
@given(n_params=st.integers(1, 8), n_values=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_generic_parameters_pass_exactly_when_there_are_enough_values(n_params, n_values, seed):
    lam = np.random.default_rng(seed).normal(size=(n_values, n_params))
    # exact parameters: a tiny rtol (a Gaussian square matrix has a relative singular value
    # below 1e-3 with probability about 2%, below 1e-9 about 1e-8)
    check = check_sufficient_variability(lam, rtol=1e-9)
    assert check.details["rank"] == min(n_values - 1, n_params)
    assert bool(check) == (n_values >= n_params + 1)


@settings(max_examples=examples(20), deadline=None)
@given(n_params=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
def test_parameters_confined_to_a_subspace_fail(n_params, seed):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(n_params - 1, n_params))  # one direction never moves
    lam = rng.normal(size=n_params) + rng.normal(size=(3 * n_params, n_params - 1)) @ basis
    check = check_sufficient_variability(lam)
    assert not check and check.details["rank"] == n_params - 1
    assert "at least" in check.message


def test_estimated_natural_parameters_of_variance_modulated_segments():
    rng = np.random.default_rng(0)
    d, n_seg = 3, 8
    scales = rng.uniform(0.5, 3.0, (n_seg, d))
    u = np.repeat(np.arange(n_seg), 2000)
    z = rng.normal(size=(u.size, d)) * scales[u]
    values, lam = gaussian_natural_parameters(z, u, statistics="variance")
    np.testing.assert_array_equal(values, np.arange(n_seg))
    np.testing.assert_allclose(lam, -0.5 / scales**2, rtol=0.1)
    assert check_sufficient_variability(lam)
    # means and variances: 2d parameters need 2d + 1 = 7 segments; 8 is enough, 4 is not
    assert gaussian_natural_parameters(z, u)[1].shape == (n_seg, 2 * d)
    assert not check_sufficient_variability(lam[:3])
    # one segment repeated: no variability at all
    same = rng.normal(size=(4000, d))
    assert not check_sufficient_variability(
        gaussian_natural_parameters(same, np.repeat([0, 1], 2000), statistics="variance")[1]
    )


def test_natural_parameters_of_sequences_and_design_rows():
    data = leap_nonstationary(n_domains=12, n_per_domain=200, n_latent=3, seed=0)
    values, lam = gaussian_natural_parameters(data.z[:, 2:], data.u, statistics="variance")
    assert lam.shape == (12, 3) and check_sufficient_variability(lam)
    design = np.eye(3)[np.repeat([0, 1, 2, 0], 50)]
    values, lam = gaussian_natural_parameters(np.random.default_rng(0).normal(size=(200, 2)),
                                              design)
    assert values.shape == (3, 3) and lam.shape == (3, 4)


def test_natural_parameter_errors():
    with pytest.raises(CausalZooError, match="1 sample"):
        gaussian_natural_parameters(np.zeros((3, 2)), [0, 0, 1])
    with pytest.raises(CausalZooError, match="rows"):
        gaussian_natural_parameters(np.zeros((3, 2)), [0, 0])
    with pytest.raises(CausalZooError, match="statistics"):
        gaussian_natural_parameters(np.zeros((4, 2)), [0, 0, 1, 1], statistics="mean")
    with pytest.raises(CausalZooError, match="n_values, n_params"):
        check_sufficient_variability(np.zeros(3))


# ------------------------------------------------------------------- injectivity


def test_injectivity_of_callables():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(100, 3))
    a = rng.normal(size=(3, 5))
    good = check_injectivity(lambda v: np.tanh(v @ a) + 0.1 * (v @ a), z)
    assert isinstance(good, AssumptionCheck) and good and good.details["min_rank"] == 3
    # rank deficient everywhere: a map through 2 dimensions
    flat = check_injectivity(lambda v: (v[:, :2] @ rng.normal(size=(2, 5))), z)
    assert not flat and flat.details["min_rank"] == 2
    # full rank but badly conditioned: one direction shrunk by 1e-6
    squeezed = check_injectivity(lambda v: v * np.array([1.0, 1.0, 1e-6]), z)
    assert not squeezed and squeezed.details["max_condition"] > 1e5
    assert check_injectivity(lambda v: v * np.array([1.0, 1.0, 1e-6]), z, max_condition=1e7,
                             rtol=1e-9)
    # fewer observations than latents
    proj = check_injectivity(lambda v: v[:, :2], z)
    assert not proj and "cannot be injective" in proj.message


def test_numerical_jacobian_matches_the_analytic_one():
    from causalzoo.identifiability.assumptions import _numerical_jacobian

    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 4))
    z = rng.normal(size=(10, 3))
    jac = _numerical_jacobian(lambda v: np.tanh(v @ a), z, 1e-5)
    expected = (1 - np.tanh(z @ a) ** 2)[:, :, None] * a.T[None]
    np.testing.assert_allclose(jac, expected, atol=1e-8)


def test_injectivity_errors():
    with pytest.raises(CausalZooError, match="callable"):
        check_injectivity(42, np.zeros((3, 2)))
    with pytest.raises(CausalZooError, match="pass z"):
        check_injectivity(lambda v: v)


# -------------------------------------------------------------------- acyclicity


@settings(max_examples=examples(30), deadline=None)
@given(d=st.integers(1, 8), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_acyclicity_on_dags_and_with_an_added_cycle(d, seed, data):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(d)
    dag = np.tril(rng.random((d, d)) < 0.5, -1)[np.ix_(perm, perm)]
    check = check_acyclicity(dag)
    assert check and check.details["cycle"] is None
    length = data.draw(st.integers(1, d))
    nodes = rng.permutation(d)[:length]
    cyclic = dag.copy()
    cyclic[nodes, np.roll(nodes, -1)] = True
    out = check_acyclicity(cyclic.astype(float) * 0.7, threshold=0.5)
    assert not out
    cycle = out.details["cycle"]
    assert cycle[0] == cycle[-1] and len(set(cycle)) == len(cycle) - 1
    assert all(cyclic[a, b] for a, b in itertools.pairwise(cycle)), "a real cycle"
    assert check_acyclicity(cyclic * 0.7, threshold=0.8), "below threshold: no edges"


def test_acyclicity_errors():
    with pytest.raises(CausalZooError, match="square"):
        check_acyclicity(np.zeros((2, 3)))
