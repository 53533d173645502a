"""Posterior predictive counts drawn on the host (causalzoo.diagnostics._predictive) and the
compilations of to_datatree's samplers: what made the demo fit's conversion 17x cheaper."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax_programs import device_count_samplers
from scipy import stats

import causalzoo as cz
from causalzoo.blocks.likelihoods import NegativeBinomialLog
from causalzoo.diagnostics import _predictive, to_datatree
from causalzoo.diagnostics.convert import (
    _build_sampler,
    _default_chunk_size,
    posterior_source,
)


def _nb_params(mu, theta, n_draws, n_cells):
    """Parameters as the compiled program returns them: (draws, cells, genes) log-means and
    gene-wise log-concentrations (draws, genes)."""
    mu, theta = np.atleast_1d(mu), np.atleast_1d(theta)
    return {
        "nb_log_mean": np.broadcast_to(np.log(mu), (n_draws, n_cells, mu.size)).astype(np.float32),
        "nb_log_concentration": np.broadcast_to(np.log(theta), (n_draws, theta.size)).astype(
            np.float32),
    }


def _draw(params, valid, pool=None, seed=(1, 2)):
    n_draws = next(iter(params.values())).shape[0]
    out = np.empty((n_draws, valid, *_predictive.event_shape(params)), np.float32)
    _predictive.draw_into(params, list(seed), valid, out, pool)
    return out


def _chi2_pvalue(counts, pmf, support=40):
    """Goodness of fit of integer counts to a pmf on 0..support-1 (the tail pooled, bins
    with expected counts under 5 merged into their neighbour)."""
    k = np.arange(support)
    expected = pmf(k) * counts.size
    expected = np.append(expected, counts.size - expected.sum())
    observed = np.bincount(np.minimum(counts.astype(int), support), minlength=support + 1)
    obs, exp = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected, strict=True):
        o_acc, e_acc = o_acc + o, e_acc + e
        if e_acc >= 5:
            obs.append(o_acc)
            exp.append(e_acc)
            o_acc = e_acc = 0.0
    obs[-1] += o_acc
    exp[-1] += e_acc
    return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize(("mu", "theta"), [(0.02, 7.0), (3.0, 0.5), (12.0, 5.0), (40.0, 25.0)])
def test_host_nb_draws_are_negative_binomial(mu, theta):
    """Exact sampler: the counts fit NB(mean mu, concentration theta) (SciPy's pmf)."""
    counts = _draw(_nb_params(mu, theta, 20, 2000), 2000).reshape(-1)
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    p = theta / (theta + mu)
    assert _chi2_pvalue(counts, lambda k: stats.nbinom.pmf(k, theta, p)) > 1e-3


def test_host_zinb_and_poisson_draws():
    n = 20_000
    gate = np.float32(0.5)  # P(structural zero) = sigmoid(0.5)
    params = _nb_params(4.0, 3.0, 2, n // 2)
    params["zinb_gate_logits"] = np.full((2, n // 2, 1), gate, np.float32)
    counts = _draw(params, n // 2).reshape(-1)
    pi, p = 1 / (1 + np.exp(-gate)), 3.0 / 7.0

    def pmf(k):
        return (1 - pi) * stats.nbinom.pmf(k, 3.0, p) + pi * (k == 0)

    assert _chi2_pvalue(counts, pmf) > 1e-3
    rate = {"poisson_log_rate": np.full((2, n // 2, 1), np.log(6.0), np.float32)}
    counts = _draw(rate, n // 2).reshape(-1)
    assert _chi2_pvalue(counts, lambda k: stats.poisson.pmf(k, 6.0)) > 1e-3


def test_host_draws_ignore_padding_threads_and_flag_nonfinite():
    params = _nb_params([0.5, 5.0, 50.0], [2.0, 2.0, 9.0], 6, 10)
    serial = _draw(params, 7)
    assert serial.shape == (6, 7, 3)  # the 3 padded cells are not sampled
    with ThreadPoolExecutor(3) as pool:
        np.testing.assert_array_equal(_draw(params, 7, pool), serial)
    assert not np.array_equal(_draw(params, 7, seed=(1, 3)), serial)
    params["nb_log_mean"] = params["nb_log_mean"].copy()
    params["nb_log_mean"][2, 4, 1] = np.nan
    out = _draw(params, 7)
    rest = np.delete(out.reshape(-1), 2 * 21 + 4 * 3 + 1)
    assert np.isnan(out[2, 4, 1]) and np.isfinite(rest).all()


class _SubclassedNB(NegativeBinomialLog):
    """A subclass may change ``sample``: it keeps the device sampler."""


def _nb_model(x=None, subclass=False, **_):
    log_theta = numpyro.param("log_theta", jnp.zeros(x.shape[-1]))
    cls = _SubclassedNB if subclass else NegativeBinomialLog
    with numpyro.plate("cells", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", cls(jnp.broadcast_to(z[:, None], x.shape), log_theta).to_event(1),
                       obs=x)


def _nb_guide(x=None, subclass=False, **_):
    with numpyro.plate("cells", x.shape[0]):
        numpyro.sample("z", dist.Normal(jnp.log1p(x).mean(-1), 0.5))


def _nb_source(subclass=False, n_cells=40):
    x = np.random.default_rng(0).poisson(2.0, size=(n_cells, 5)).astype(np.float32)
    return cz.diagnostics.PosteriorSource(
        model=_nb_model, guide=_nb_guide, params={"log_theta": jnp.zeros(5)},
        cell_data={"x": x}, static_kwargs={"subclass": subclass}, event_dims={"x": ["genes"]},
    )


def _chunk_program(src, chunk=8, draws=4):
    """The chunk sampler's program as text (its jaxpr, nested calls included)."""
    globals_fn, chunk_fn = _build_sampler(src, 1, predictive=True, pointwise=True)
    data = {k: np.asarray(v)[:chunk] for k, v in src.cell_data.items()}
    keys = jax.random.split(jax.random.key(0), draws)
    globals_ = globals_fn(src.params, keys, data)
    return str(jax.make_jaxpr(chunk_fn)(src.params, keys, globals_, data))


def test_compiled_chunk_program_has_no_count_samplers(fitted):
    """The regression this guards: JAX's exact NB sampler (a gamma and a Poisson rejection
    loop per element, ~95% of the demo conversion's time) back in the chunk program."""
    assert device_count_samplers(_chunk_program(_nb_source())) == 0
    # negative control: the same model whose NB is a subclass samples on the device, and
    # its program has the samplers the check looks for
    assert device_count_samplers(_chunk_program(_nb_source(subclass=True))) >= 2
    # the zoo's own entry (NB likelihood)
    assert device_count_samplers(_chunk_program(posterior_source(fitted))) == 0


def test_predictive_from_both_paths_agree_and_repeat():
    """Host and device samplers draw from the same distribution (moments over 2,000 x 5
    counts per draw set), and the host draws repeat for the same seed and chunk size."""
    host = to_datatree(_nb_source(n_cells=400), num_samples=20, seed=0, chunk_size=64)
    device = to_datatree(_nb_source(subclass=True, n_cells=400), num_samples=20, seed=0,
                         chunk_size=64)
    # identical posterior draws: only the replicated counts come from another sampler
    np.testing.assert_array_equal(host["posterior"]["z"].values, device["posterior"]["z"].values)
    h = host["posterior_predictive"]["x"].values
    d = device["posterior_predictive"]["x"].values
    assert h.shape == d.shape == (1, 20, 400, 5)
    assert abs(h.mean() - d.mean()) < 4 * np.sqrt((h.var() + d.var()) / h.size * 20)
    assert abs(np.log(h.var() / d.var())) < 0.1
    again = to_datatree(_nb_source(n_cells=400), num_samples=20, seed=0, chunk_size=64)
    np.testing.assert_array_equal(again["posterior_predictive"]["x"].values, h)
    other = to_datatree(_nb_source(n_cells=400), num_samples=20, seed=1, chunk_size=64)
    assert not np.array_equal(other["posterior_predictive"]["x"].values, h)


def _compilations(caplog, name):
    return sum(f"Finished XLA compilation of jit({name})" in r.getMessage()
               for r in caplog.records)


def test_one_compilation_for_many_chunks(caplog):
    """Every chunk of cells (the last one padded) runs the same compiled program: 7 chunks
    compile the chunk sampler once, and a second conversion with another seed not at all."""
    src = _nb_source(n_cells=100)
    src.static_kwargs = {"subclass": False, "tag": "compile-count"}  # a fresh sampler cache key
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        to_datatree(src, num_samples=5, seed=0, chunk_size=16)  # 7 chunks, the last padded
        assert _compilations(caplog, "chunk_fn") == 1
        assert _compilations(caplog, "globals_fn") == 1
        caplog.clear()
        to_datatree(src, num_samples=5, seed=1, chunk_size=16)
        assert _compilations(caplog, "chunk_fn") == 0
        assert _compilations(caplog, "globals_fn") == 0


def test_default_chunk_counts_inner_samples():
    """The marginal likelihood evaluates n_inner importance samples of every draw at once:
    the default chunk shrinks with them (16 inner samples at 1,342 cells held ~2 GB)."""
    src = _nb_source(n_cells=100_000)
    src.cell_data = {"x": np.zeros((100_000, 500), np.float32)}
    one = _default_chunk_size(src, 50)
    assert one == 2**27 // (4 * 50 * 500)
    assert _default_chunk_size(src, 50, n_inner=16) == one // 16
