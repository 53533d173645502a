"""SparsePerturbationVAE.predict draws the counts of the built-in count likelihoods on the
host (causalzoo.blocks._host_sampling), from the parameters its compiled program returns:
no JAX count sampler in that program, the likelihood's moments, repeatable draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax_programs import device_count_samplers

import causalzoo as cz
from causalzoo.api import sparse_perturbation as api
from causalzoo.blocks import _host_sampling
from causalzoo.blocks.likelihoods import (
    NegativeBinomialLog,
    PoissonLog,
    ZeroInflatedNegativeBinomialLog,
)

SMALL = dict(n_latent_invariant=2, n_latent_response=3, n_hidden=16, n_layers=1)
N_GENES = 30


@pytest.fixture(scope="module")
def fitted():
    data = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=3, n_cells_per_condition=40, n_genes=N_GENES, n_combinations=1, seed=0
    )
    adata = data.to_anndata()
    cz.SparsePerturbationVAE.setup_anndata(adata, perturbation_key="perturbation",
                                           control="control")
    model = cz.SparsePerturbationVAE(adata, **SMALL)
    return model.fit(max_steps=40, batch_size=32, progress=False, seed=0)


def _simulator_program(model, n=256):
    """The compiled predict program (``_build_simulator``) as text, at ``n`` cells."""
    rng = np.random.default_rng(0)
    n_pert = model.registry.n_perturbations
    args = (
        model.params, jax.random.key(0),
        rng.normal(size=(n, SMALL["n_latent_invariant"])).astype(np.float32),
        np.full(n, 1000.0, np.float32),
        np.eye(n_pert, dtype=np.float32)[np.arange(n) % n_pert],
        np.zeros((n, 0), np.float32),
    )
    return str(jax.make_jaxpr(model._build_simulator())(*args))


def test_predict_program_has_no_count_samplers(fitted, monkeypatch):
    """The regression this guards: JAX's exact NB sampler (a gamma and a Poisson rejection
    loop per element) back in predict's compiled program."""
    assert device_count_samplers(_simulator_program(fitted)) == 0
    # negative control: the same program with the likelihood sampled on the device (what
    # Gaussian and user likelihoods get) holds the samplers the check looks for
    monkeypatch.setattr(_host_sampling, "device_params", lambda fn: None)
    assert device_count_samplers(_simulator_program(fitted)) >= 2


def _moments_ok(counts, mean, variance, z=5.0):
    """Sample mean and variance of each column of ``counts`` against the distribution's,
    within ``z`` standard errors (the variance's from the sample's fourth moment)."""
    n = counts.shape[0]
    m, v = counts.mean(0), counts.var(0, ddof=1)
    m4 = ((counts - m) ** 4).mean(0)
    se_mean, se_var = np.sqrt(variance / n), np.sqrt((m4 - v**2) / n)
    return np.abs(m - mean) / se_mean, np.abs(v - variance) / se_var


MU = np.array([0.05, 0.8, 4.0, 30.0, 250.0])
THETA = np.array([0.3, 2.0, 0.7, 15.0, 4.0])


@pytest.mark.parametrize("family", ["nb", "zinb", "poisson"])
def test_host_counts_have_the_likelihoods_mean_and_variance(family):
    """Fixed parameters in predict's layout (cells x genes, 16 blocks of 256 cells): each
    gene's counts have the mean and variance the likelihood class itself states."""
    n = 16 * 256
    log_mu = np.log(MU)
    if family == "poisson":
        fn = PoissonLog(jnp.asarray(log_mu))
    elif family == "nb":
        fn = NegativeBinomialLog(jnp.asarray(log_mu), jnp.log(THETA))
    else:
        fn = ZeroInflatedNegativeBinomialLog(jnp.asarray(log_mu), jnp.log(THETA),
                                             jnp.array([-2.0, 0.0, 1.0, -1.0, 0.5]))
    # as predict's program returns them: every array broadcast to (cells, genes)
    params = {k: np.broadcast_to(np.asarray(v, np.float32), (n, MU.size))
              for k, v in _host_sampling.device_params(fn).items()}
    counts = _host_sampling.draw_cells(params, [7, 11]).astype(np.float64)
    assert counts.shape == (n, MU.size)
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    z_mean, z_var = _moments_ok(counts, np.asarray(fn.mean), np.asarray(fn.variance))
    assert z_mean.max() < 5 and z_var.max() < 5, (z_mean, z_var)
    # negative control: the same check rejects counts of another dispersion (or of a
    # Poisson where the likelihood is NB); the Poisson family against NB's variance
    other = np.asarray(fn.variance) * 1.5
    assert _moments_ok(counts, np.asarray(fn.mean), other)[1].max() > 5


def test_host_blocks_ignore_threads_and_flag_bad_shapes():
    params = {"poisson_log_rate": np.log(np.full((768, 4), 3.0, np.float32))}
    one = _host_sampling.draw_cells(params, [1], threads=1)
    np.testing.assert_array_equal(_host_sampling.draw_cells(params, [1], threads=3), one)
    assert not np.array_equal(_host_sampling.draw_cells(params, [2], threads=1), one)
    # each block of 256 cells has its own stream: blocks are not copies of each other
    assert not np.array_equal(one[:256], one[256:512])
    with pytest.raises(ValueError, match="multiple of 256"):
        _host_sampling.draw_cells({"poisson_log_rate": np.zeros((300, 4))}, [1])


def test_predict_counts_follow_the_returned_parameters(fitted, monkeypatch):
    """End to end: predict hands the compiled program's parameters to the host sampler and
    puts its counts, in cell order, in X; each cell's NB means sum to its library size."""
    seen = {}
    draw = _host_sampling.draw_cells

    def spy(params, seed_bits, **kwargs):
        seen["params"] = {k: np.asarray(v) for k, v in params.items()}
        seen["counts"] = draw(params, seed_bits, **kwargs)
        return seen["counts"]

    monkeypatch.setattr(_host_sampling, "draw_cells", spy)
    n = 1000
    pred = fitted.predict("P0+P1", n_cells=n, seed=4)
    counts = pred.layers["counts"].toarray()
    assert set(seen["params"]) == {"nb_log_mean", "nb_log_concentration"}
    assert seen["params"]["nb_log_mean"].shape == (1024, N_GENES)  # padded to 4 blocks
    np.testing.assert_array_equal(counts, seen["counts"][:n])
    mu = np.exp(seen["params"]["nb_log_mean"][:n].astype(np.float64))
    np.testing.assert_allclose(mu.sum(1), pred.obs["library_size"].to_numpy(), rtol=1e-4)
    theta = np.exp(seen["params"]["nb_log_concentration"][:n].astype(np.float64))
    # each gene's mean count against its mean NB mean, with the NB variances of those cells
    variance = (mu + mu**2 / theta).mean(0)
    z = np.abs(counts.mean(0) - mu.mean(0)) / np.sqrt(variance / n)
    assert z.max() < 5, z


def test_predict_repeats_under_its_seed(fitted):
    """Same seed, same counts (and latents); another seed, other counts; the AnnData keeps
    its structure: sparse counts in X and layers["counts"], obs columns, obsm latents."""
    a = fitted.predict(["P0+P1", "P2"], n_cells=300, seed=5)
    b = fitted.predict(["P0+P1", "P2"], n_cells=300, seed=5)
    c = fitted.predict(["P0+P1", "P2"], n_cells=300, seed=6)
    assert sp.issparse(a.X) and sp.issparse(a.layers["counts"])
    assert a.X.dtype == np.float32 and a.shape == (600, N_GENES)
    np.testing.assert_array_equal(a.X.toarray(), a.layers["counts"].toarray())
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    np.testing.assert_array_equal(a.obsm["z_resp"], b.obsm["z_resp"])
    assert not np.array_equal(a.X.toarray(), c.X.toarray())
    assert list(a.obs.columns) == ["condition", "library_size", "source_cell"]
    assert set(a.obsm) == {"z_inv", "z_resp"}


def test_device_path_keeps_the_likelihoods_own_sampler(fitted, monkeypatch):
    """A likelihood the host does not sample (here: NB forced onto the device) keeps its own
    ``sample`` in the program: same latents as the host path, counts from the same
    distribution."""
    host = fitted.predict("P2", n_cells=1000, seed=2)
    monkeypatch.setattr(_host_sampling, "device_params", lambda fn: None)
    # a fresh program for the patched path (the compiled ones are cached per configuration)
    monkeypatch.setattr(api, "_SHARED_PROGRAMS", {})
    monkeypatch.setattr(fitted, "_compiled_fns", {})
    device = fitted.predict("P2", n_cells=1000, seed=2)
    np.testing.assert_array_equal(host.obsm["z_resp"], device.obsm["z_resp"])
    h, d = host.X.toarray().astype(np.float64), device.X.toarray().astype(np.float64)
    assert not np.array_equal(h, d)
    assert np.all(d == np.round(d)) and d.min() >= 0
    se = np.sqrt((h.var(0) + d.var(0)) / h.shape[0])
    assert (np.abs(h.mean(0) - d.mean(0)) / se).max() < 5
