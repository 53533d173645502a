"""Sequence arrays given to the dynamical entry (``DynamicalCausalVAE.from_arrays``): for
arrays of any rank, length, size and dtype and labels of any kind drawn by hypothesis, the
only outcomes are a model or a ``CausalZooError`` naming the problem — never another
exception, and never a silent coercion of labels (float, NaN or boolean unit labels)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import causalzoo as cz
from causalzoo import CausalZooError

FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool", "float32", "float64",
          "complex64", "object", "U1"]
LABELS = st.one_of(
    st.none(),
    st.just("codes"),
    st.sampled_from(["codes", "strings", "negative", "float", "nan", "bool", "short", "2d",
                     "object_mixed"]),
)


def _labels(kind, n):
    rng = np.random.default_rng(0)
    match kind:
        case None:
            return None
        case "codes":
            return rng.integers(0, 3, n)
        case "strings":
            return np.array(["ctrl", "drug"])[rng.integers(0, 2, n)]
        case "negative":
            return -np.ones(n, int)
        case "float":
            return rng.integers(0, 3, n) + 0.5
        case "nan":
            return np.where(np.arange(n) == 0, np.nan, 1.0)
        case "bool":
            return np.arange(n) % 2 == 0
        case "short":
            return np.zeros(max(n - 1, 0), int)
        case "2d":
            return np.zeros((n, 2), int)
        case "object_mixed":
            return np.array([1, "a"] * n, dtype=object)[:n]


@given(
    shape=st.one_of(*[st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3))] * 3,
                    st.lists(st.integers(0, 4), min_size=0, max_size=4)),
    dtype=st.sampled_from(DTYPES),
    labels=LABELS,
    n_lags=st.integers(1, 3),
    likelihood=st.sampled_from(["gaussian", "poisson", "nb"]),
    fault=st.sampled_from([None, None, None, "nan", "inf", "negative", "fraction"]),
)
@FUZZ
def test_from_arrays_gives_a_model_or_a_causalzoo_error(shape, dtype, labels, n_lags,
                                                         likelihood, fault):
    shape = list(shape)
    x = np.ones(shape, np.float64) * 2
    if dtype in ("object", "U1"):
        x = x.astype(str).astype(dtype)
    else:
        x = x.astype(dtype)
        if fault is not None and x.size and x.dtype.kind in "fc":
            x.flat[0] = {"nan": np.nan, "inf": np.inf, "negative": -1.0, "fraction": 0.5}[fault]
        elif fault == "negative" and x.size and x.dtype.kind == "i":
            x.flat[0] = -1
    n_units = shape[0] if shape else 0
    u = _labels(labels, n_units)
    try:
        model = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, n_lags=n_lags, n_latent=2,
                                                  likelihood=likelihood)
    except CausalZooError as err:
        event(f"refused: {str(err)[:40]}")
        assert str(err)
        return
    event("accepted")
    # What is accepted is what the model can fit: 3-D, non-empty, finite, long enough.
    assert model.x.ndim == 3 and model.x.dtype == np.float32
    assert min(model.x.shape) > 0 and model.x.shape[1] > n_lags
    assert np.all(np.isfinite(model.x))
    assert model.u.shape == (model.x.shape[0],)
    assert model.u.min() >= 0 and model.u.max() < model.n_domains
    if labels in ("float", "nan", "bool", "object_mixed"):
        pytest.fail(f"labels of kind {labels!r} were accepted: {model.domain_names}")


@pytest.mark.parametrize("shape, match", [
    ((0, 5, 3), "no units"),
    ((4, 5, 0), "no features"),
    ((4, 0, 3), "too short"),
])
def test_empty_sequences_are_refused(shape, match):
    with pytest.raises(CausalZooError, match=match):
        cz.DynamicalCausalVAE.from_arrays(x=np.zeros(shape, np.float32))


@pytest.mark.parametrize("u, match", [
    (np.array([0.5, 1.0, 0.0, 1.0]), "integer codes or strings"),
    (np.array([np.nan, 1.0, 0.0, 1.0]), "integer codes or strings"),
    (np.array([True, False, True, False]), "integer codes or strings"),
    (np.array([1, "a", 1, "a"], dtype=object), "integer codes or strings"),
    (np.array(["a", "", "a", "b"]), "empty"),
])
def test_unit_labels_are_not_coerced(u, match):
    with pytest.raises(CausalZooError, match=match):
        cz.DynamicalCausalVAE.from_arrays(x=np.ones((4, 5, 3), np.float32), u=u)


def test_text_values_are_refused_with_a_causalzoo_error():
    with pytest.raises(CausalZooError, match="numeric"):
        cz.DynamicalCausalVAE.from_arrays(x=np.full((4, 5, 3), "a"))
