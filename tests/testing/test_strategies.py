"""The strategies of causalzoo.testing draw what they claim: members of the equivalence
classes (checked through the metrics' exact invariances) and valid generator configurations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.identifiability import mcc
from causalzoo.testing import (
    ComponentMap,
    LatentTransform,
    equivalence_transforms,
    examples,
    ivae_configs,
    monotone_maps,
    sparse_perturbation_configs,
)

Z = np.random.default_rng(0).normal(size=(400, 4)) * np.array([0.5, 1.0, 3.0, 10.0])


@settings(max_examples=examples(30), deadline=None)
@given(t=equivalence_transforms(4, kind="componentwise"))
def test_componentwise_transforms_keep_spearman_mcc_at_one(t):
    out = t(Z)
    assert out.shape == Z.shape and np.all(np.isfinite(out))
    score, matching = mcc(Z, out, method="spearman", return_matching=True)
    assert score > 1 - 1e-9
    # the matching undoes the permutation: output column j came from input permutation[j]
    assert [t.permutation[j] for j in matching] == [0, 1, 2, 3]


@settings(max_examples=examples(30), deadline=None)
@given(t=equivalence_transforms(4, kind="scaling"))
def test_scaling_transforms_keep_pearson_mcc_at_one(t):
    assert all(m.is_affine for m in t.maps)
    assert mcc(Z, t(Z), method="pearson") > 1 - 1e-9


@settings(max_examples=examples(20), deadline=None)
@given(t=equivalence_transforms(4, kind="affine", max_condition=10.0))
def test_affine_transforms_are_invertible_and_linear(t):
    matrix = np.asarray(t.matrix)
    assert np.linalg.cond(matrix) < 10.0
    out = t(Z)
    # linear R^2 of z from the transform is 1: the class of block / affine identifiability
    design = np.c_[out, np.ones(len(out))]
    coef = np.linalg.lstsq(design, Z, rcond=None)[0]
    np.testing.assert_allclose(design @ coef, Z, atol=1e-8)


def test_a_nonlinear_monotone_map_breaks_pearson_but_not_spearman():
    t = LatentTransform(
        kind="componentwise", permutation=(0, 1, 2, 3),
        maps=tuple(ComponentMap("exp", 2.0) for _ in range(4)), offset=(0.0,) * 4,
    )
    assert mcc(Z, t(Z), method="spearman") > 1 - 1e-9
    assert mcc(Z, t(Z), method="pearson") < 0.9


@settings(max_examples=examples(40), deadline=None)
@given(m=monotone_maps(), data=st.data())
def test_monotone_maps_are_strictly_monotone(m, data):
    h = np.sort(np.random.default_rng(data.draw(st.integers(0, 100))).normal(size=200) * 3)
    y = m(h)
    steps = np.diff(y) * m.sign
    assert np.all(steps > 0)


def test_transform_and_strategy_errors():
    with pytest.raises(CausalZooError, match="kind='rotation'"):
        equivalence_transforms(3, kind="rotation")
    with pytest.raises(CausalZooError, match="n_latent must be a positive integer; got 0"):
        equivalence_transforms(0)
    t = LatentTransform("scaling", (0, 1), maps=(ComponentMap("affine", 1.0),) * 2)
    with pytest.raises(CausalZooError, match=r"\(n, 2\)"):
        t(np.zeros((5, 3)))


@settings(max_examples=examples(10), deadline=None)
@given(config=ivae_configs(max_latent=3, max_segments=8, max_per_segment=20))
def test_ivae_configs_are_valid_and_give_the_contract(config):
    assert config["n_segments"] >= 2 * config["n_latent"] + 1
    data = cz.identifiability.generators.ivae(**config)
    n = config["n_segments"] * config["n_per_segment"]
    assert data.x.shape == (n, config["n_observed"]) and data.z.shape == (n, config["n_latent"])
    assert np.all(np.isfinite(data.x))


@settings(max_examples=examples(5), deadline=None)
@given(config=sparse_perturbation_configs(max_perturbations=3, max_genes=20))
def test_sparse_perturbation_configs_are_valid(config):
    data = cz.identifiability.generators.sparse_perturbation(**config)
    k = config["n_latent_invariant"] + config["n_latent_response"]
    assert data.z.shape[1] == k and data.x.shape[1] == config["n_genes"]


def test_cz_testing_loads_on_first_use_not_on_import():
    """``import causalzoo`` does not load the hypothesis-based ``causalzoo.testing``, but
    ``cz.testing`` works without importing it by name, as the docs write it. Run in a
    fresh interpreter: in this one another test may have imported it already."""
    import subprocess
    import sys

    code = ("import sys, causalzoo as cz\n"
            "assert 'causalzoo.testing' not in sys.modules\n"
            "assert callable(cz.testing.assert_recovers)\n"
            "assert 'causalzoo.testing' in sys.modules\n"
            "try:\n    cz.no_such_module\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "has no attribute 'no_such_module'" in out.stdout
