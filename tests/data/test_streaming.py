"""Streaming cells from disk (causalzoo.data.streaming) into the SVI engine, and fitting
SparsePerturbationVAE on a backed AnnData without loading its matrix."""

from __future__ import annotations

import anndata
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
import scipy.sparse as sp

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.data import streaming
from causalzoo.data.streaming import BackedRows, CellSource
from causalzoo.inference import fit_svi

N_GENES = 12


def model(x, size, n_cells=None):
    w = numpyro.param("w", jnp.full((2, N_GENES), 0.01))
    b = numpyro.param("b", jnp.zeros(N_GENES))
    with numpyro.plate("cells", x.shape[0]), numpyro.handlers.scale(scale=n_cells / x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        rate = jnp.exp(z @ w + b) * size[:, None] / N_GENES
        numpyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)


def guide(x, size, n_cells=None):
    a = numpyro.param("a", jnp.full((N_GENES, 2), 0.01))
    with numpyro.plate("cells", x.shape[0]):
        numpyro.sample("z", dist.Normal(jnp.log1p(x) @ a, 0.5).to_event(1))


@pytest.fixture(scope="module")
def counts():
    return np.random.default_rng(0).poisson(2.0, (150, N_GENES)).astype(np.float32)


def fit(data, **kw):
    kw = {"batch_size": 16, "max_steps": 24, "steps_per_call": 6, "learning_rate": 1e-2,
          "progress": False, **kw}
    return fit_svi(model, guide, data, **kw)


def source(x, **kw):
    return CellSource(x, {"size": x.sum(1)}, **kw)


def assert_same_fit(a, b):
    np.testing.assert_array_equal(a.losses, b.losses)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


# ---------------------------------------------------------------- the source


@pytest.mark.parametrize("kind", ["dense", "csr", "h5py"])
def test_chunks_partition_each_epoch_and_read_the_right_rows(kind, tmp_path):
    x = np.arange(103 * 4, dtype=np.float32).reshape(103, 4)
    if kind == "csr":
        matrix = sp.csr_matrix(x)
    elif kind == "h5py":
        with h5py.File(tmp_path / "x.h5", "w") as f:
            f["x"] = x
        matrix = h5py.File(tmp_path / "x.h5", "r")["x"]
    else:
        matrix = x
    src = CellSource(matrix, {"id": np.arange(103)}, chunk_cells=20, block_cells=7)
    assert src.chunks_per_epoch == 5
    seed = [1, 2]
    orders = []
    for epoch in range(2):
        rows = [src.rows(epoch * 5 + k, seed) for k in range(5)]
        assert all(r.size == 20 and np.all(np.diff(r) > 0) for r in rows)
        together = np.concatenate(rows)
        assert np.unique(together).size == 100  # disjoint; 3 cells wait for the next epoch
        orders.append(src.epoch_order(epoch, seed))
        assert sorted(orders[-1]) == list(range(103))
        # the order is made of the contiguous blocks (each 7 cells, the last 5)
        starts = np.flatnonzero(np.diff(orders[-1], prepend=-2) != 1)
        assert all(orders[-1][s] % 7 == 0 for s in starts)
    assert not np.array_equal(orders[0], orders[1])  # each epoch its own order
    chunk = src.chunk(3, seed)
    np.testing.assert_array_equal(chunk["x"], x[chunk["id"]])
    assert chunk["x"].dtype == np.float32
    # the same seed and index give the same chunk; another seed another
    np.testing.assert_array_equal(src.chunk(3, seed)["id"], chunk["id"])
    assert not np.array_equal(src.chunk(3, [9])["id"], chunk["id"])


def test_backed_rows_read_like_the_dense_matrix():
    x = np.random.default_rng(1).poisson(1.0, (50, 6)).astype(np.float32)
    rows = BackedRows(sp.csr_matrix(x))
    sub = rows[np.array([40, 3, 17, 18])]
    assert sub.shape == (4, 6) and len(sub) == 4
    np.testing.assert_array_equal(sub[0:3], x[[40, 3, 17]])
    np.testing.assert_array_equal(rows[10:20], x[10:20])
    # many scattered cells (read as one span and picked) and long runs (read run by run)
    scattered = np.r_[0:50:3, 20:24]
    np.testing.assert_array_equal(rows[scattered][:], x[scattered])
    src = CellSource(sp.csr_matrix(x), chunk_cells=1)
    for wanted in (np.arange(0, 50, 2), np.r_[0:3, 30:50]):
        np.testing.assert_array_equal(src.read(wanted)["x"], x[wanted])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"chunk_cells": 0}, "chunk_cells=0"),
        ({"chunk_cells": 1000}, "chunk_cells=1000"),
        ({"block_cells": 0}, "block_cells must be a positive integer; got 0"),
        ({"prefetch": "yes"}, "prefetch"),
    ],
)
def test_source_argument_errors(counts, kwargs, match):
    with pytest.raises(CausalZooError, match=match):
        source(counts, **kwargs)


def test_source_shape_errors(counts):
    with pytest.raises(CausalZooError, match="2-D"):
        CellSource(counts[:, 0])
    with pytest.raises(CausalZooError, match="first axis"):
        CellSource(counts, {"size": np.ones(3)})
    with pytest.raises(CausalZooError, match="named 'x'"):
        CellSource(counts, {"x": counts})
    with pytest.raises(CausalZooError, match="larger than the streamed chunks of 40"):
        fit(source(counts, chunk_cells=40), batch_size=48)


# ---------------------------------------------------------------- the engine


def test_one_chunk_covering_all_cells_is_the_resident_fit(counts):
    resident = fit({"x": counts, "size": counts.sum(1)})
    streamed = fit(source(counts, chunk_cells=150, block_cells=32))
    assert_same_fit(resident, streamed)


def test_streamed_fit_is_reproducible_and_prefetch_changes_nothing(counts):
    a = fit(source(counts, chunk_cells=48, block_cells=8), seed=2)
    b = fit(source(counts, chunk_cells=48, block_cells=8, prefetch=False), seed=2)
    assert_same_fit(a, b)
    # chunks smaller than the data: it learns
    assert np.all(np.isfinite(a.losses)) and a.losses[-6:].mean() < a.losses[:6].mean()


def test_streamed_fit_resumes_to_the_uninterrupted_result(counts, tmp_path):
    full = fit(source(counts, chunk_cells=48, block_cells=8))
    fit(source(counts, chunk_cells=48, block_cells=8), max_steps=12, checkpoint_dir=tmp_path)
    resumed = fit(source(counts, chunk_cells=48, block_cells=8), checkpoint_dir=tmp_path,
                  resume=True)
    assert resumed.resumed_from == 12
    assert_same_fit(full, resumed)
    # another chunking is another fit: refused
    with pytest.raises(CausalZooError, match="belongs to another fit"):
        fit(source(counts, chunk_cells=32, block_cells=8), checkpoint_dir=tmp_path,
            resume=True)


# ---------------------------------------------------------------- backed AnnData


def write_h5ad(path, n=160, n_genes=N_GENES, seed=0):
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(rng.poisson(1.5, (n, n_genes)).astype(np.float32))
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(rng.choice(["control", "A", "B", "A+B"], n))},
        index=[f"c{i}" for i in range(n)],
    )
    anndata.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
                    ).write_h5ad(path)
    return path


def test_backed_anndata_fits_like_the_loaded_one(tmp_path, monkeypatch):
    path = write_h5ad(tmp_path / "cells.h5ad")
    kw = {"max_steps": 12, "batch_size": 32, "steps_per_call": 6, "early_stopping": False,
          "progress": False}
    config = {"n_latent_invariant": 2, "n_latent_response": 2, "n_hidden": 8}
    loaded = anndata.read_h5ad(path)
    cz.SparsePerturbationVAE.setup_anndata(loaded)
    m0 = cz.SparsePerturbationVAE(loaded, **config).fit(**kw)
    z0 = m0.get_latent_representation()

    backed = anndata.read_h5ad(path, backed="r")
    assert streaming.is_backed(backed)

    # neither the set-up nor the fit densifies or validates the whole matrix at once
    def no_whole_matrix(real):
        def wrapped(matrix, *args, **kwargs):
            assert matrix.shape[0] <= 64, f"whole matrix {type(matrix).__name__} {matrix.shape}"
            return real(matrix, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(streaming, "_READ_ROWS", 64)
    monkeypatch.setattr("causalzoo.data.validation.check_count_matrix",
                        no_whole_matrix(cz.data.validation.check_count_matrix))
    monkeypatch.setattr("causalzoo.data.anndata.densify", no_whole_matrix(cz.data.densify))
    cz.SparsePerturbationVAE.setup_anndata(backed)
    m1 = cz.SparsePerturbationVAE(backed, **config).fit(**kw)
    leaves = [np.asarray(v) for v in jax.tree.leaves(m1.params)]
    assert leaves and all(np.all(np.isfinite(v)) for v in leaves if v.dtype.kind == "f")
    # all 160 cells fit in one chunk: the streamed fit is the in-memory fit
    np.testing.assert_array_equal(m0.history["loss"], m1.history["loss"])
    for k in ("z_inv_loc", "library_size", "obs_names"):
        np.testing.assert_array_equal(m0.reference[k], m1.reference[k])
    # latents of the backed cells are read a block at a time too, and equal the loaded ones
    np.testing.assert_array_equal(m1.get_latent_representation(), z0)
    backed.file.close()


def test_backed_set_up_validates_block_by_block(tmp_path, monkeypatch):
    path = tmp_path / "bad.h5ad"
    rng = np.random.default_rng(0)
    x = rng.poisson(1.5, (100, 5)).astype(np.float32)
    x[70, 2] = 0.5
    obs = pd.DataFrame({"perturbation": pd.Categorical(["control", "A"] * 50)},
                       index=[f"c{i}" for i in range(100)])
    anndata.AnnData(sp.csr_matrix(x), obs=obs).write_h5ad(path)
    monkeypatch.setattr(streaming, "_READ_ROWS", 32)
    backed = anndata.read_h5ad(path, backed="r")
    with pytest.raises(CausalZooError, match=r"rows 64:96.*c70"):
        cz.SparsePerturbationVAE.setup_anndata(backed)
    backed.file.close()


def test_backed_alignment_fits_from_a_control_pool(tmp_path, monkeypatch):
    # SparsePerturbationVAE.fit streams with alignment > 0: every chunk it reads carries a
    # pool of control cells (the pairing itself is tested below).
    pools = []
    chunk = CellSource.chunk

    def spy(self, index, seed):
        out = chunk(self, index, seed)
        pools.append(out.get("x_control_pool"))
        return out

    monkeypatch.setattr(CellSource, "chunk", spy)
    backed = anndata.read_h5ad(write_h5ad(tmp_path / "cells.h5ad"), backed="r")
    cz.SparsePerturbationVAE.setup_anndata(backed)
    model_ = cz.SparsePerturbationVAE(backed, n_latent_invariant=2, n_latent_response=2,
                                      n_hidden=8, alignment=1.0)
    model_.fit(max_steps=4, batch_size=16, progress=False, seed=0)
    assert np.all(np.isfinite(model_.history["loss"]))
    assert pools and all(p is not None and p.shape[-1] == backed.n_vars for p in pools)
    backed.file.close()


# ---------------------------------------------------------------- control pool (alignment)


def test_control_pool_holds_controls_of_each_context():
    n = 90
    x = np.zeros((n, 3), np.float32)
    x[:, 0] = np.arange(n)  # a cell's row id, to see which cells were read
    context = np.arange(n) % 3
    is_control = (np.arange(n) % 5 == 0) & (context != 2)  # context 2 has no controls
    src = CellSource(sp.csr_matrix(x), chunk_cells=30, block_cells=4).with_controls(
        is_control, context, per_context=7)
    chunk = src.chunk(0, [3])
    pool = chunk["x_control_pool"]
    assert pool.shape == (3, 7, 3) and pool.dtype == np.float32
    ids = pool[:, :, 0].astype(int)
    assert is_control[ids].all()
    assert np.all(context[ids[0]] == 0) and np.all(context[ids[1]] == 1)
    # a context without controls falls back to the controls of all contexts
    assert set(context[ids[2]]) <= {0, 1}
    np.testing.assert_array_equal(chunk["context"], context[chunk["x"][:, 0].astype(int)])
    # a function of the seed and the chunk only; redrawn with every chunk
    np.testing.assert_array_equal(src.chunk(0, [3])["x_control_pool"], pool)
    assert not np.array_equal(src.chunk(1, [3])["x_control_pool"], pool)
    assert src.describe()["streamed"]["control_pool"]["shape"] == [3, 7, 3]
    assert "control_pool" not in CellSource(x).describe()["streamed"]
    # the batch function pairs each cell with a pool cell of its own context
    batch_fn = streaming.control_batch_fn(("x",))
    idx = jnp.arange(30)
    batch = batch_fn(jax.random.key(0), idx, jax.tree.map(jnp.asarray, chunk))
    paired = np.asarray(batch["x_control"][:, 0]).astype(int)
    assert is_control[paired].all()
    own = chunk["context"] != 2
    np.testing.assert_array_equal(context[paired][own], chunk["context"][own])
    assert len(set(paired)) > 3  # drawn at random, not one cell per context


def test_control_pool_errors(counts):
    src = source(counts, chunk_cells=50)
    n = counts.shape[0]
    with pytest.raises(CausalZooError, match="none were found; set alignment=0"):
        src.with_controls(np.zeros(n, bool), np.zeros(n, int))
    with pytest.raises(CausalZooError, match="is_control must be a boolean array of the 150"):
        src.with_controls(np.ones(3, bool), np.zeros(n, int))
    with pytest.raises(CausalZooError, match="context must be an array of 150 integer"):
        src.with_controls(np.ones(n, bool), np.zeros(n))
    with pytest.raises(CausalZooError, match="per_context must be a positive integer; got 0"):
        src.with_controls(np.ones(n, bool), np.zeros(n, int), per_context=0)
    with pytest.raises(CausalZooError, match="must be new names"):
        src.with_controls(np.ones(n, bool), np.zeros(n, int), context_key="size")
    with pytest.raises(CausalZooError, match="no control pool"):
        src.control_pool(0, [0])


def test_streamed_alignment_fit_of_the_sparse_model(tmp_path):
    # The path SparsePerturbationVAE.fit would take with alignment > 0 on a backed AnnData.
    from causalzoo.api.sparse_perturbation import _context_ids
    from causalzoo.inference.losses import AlignedELBO
    from causalzoo.inference.svi import two_speed_adam
    from causalzoo.models.sparse_perturbation import (
        sparse_perturbation_guide,
        sparse_perturbation_model,
    )

    backed = anndata.read_h5ad(write_h5ad(tmp_path / "cells.h5ad"), backed="r")
    cz.SparsePerturbationVAE.setup_anndata(backed)
    vae = cz.SparsePerturbationVAE(backed, n_latent_invariant=2, n_latent_response=2,
                                   n_hidden=8, alignment=1.0)

    def run(alignment, prefetch=True):
        src, arrays = streaming.anndata_source(backed, vae.registry, chunk_cells=64,
                                               block_cells=8, prefetch=prefetch)
        context, _ = _context_ids(arrays["covariate_codes"])
        return fit_svi(sparse_perturbation_model, sparse_perturbation_guide,
                       src.with_controls(arrays["is_control"], context),
                       batch_size=16, max_steps=12, steps_per_call=4, seed=1,
                       optimizer=two_speed_adam(1e-3, 1e-2), loss=AlignedELBO(alignment),
                       static_kwargs=vae._model_kwargs(), batch_fn=streaming.control_batch_fn(),
                       progress=False)

    aligned = run(1.0)
    assert np.all(np.isfinite(aligned.losses))
    # reproducible, prefetching or not
    again = run(1.0, prefetch=False)
    np.testing.assert_array_equal(aligned.losses, again.losses)
    jax.tree.map(np.testing.assert_array_equal, aligned.params, again.params)
    # the paired control cells reach the guide's alignment term
    src, arrays = streaming.anndata_source(backed, vae.registry, chunk_cells=64, block_cells=8)
    chunk = src.with_controls(arrays["is_control"],
                              _context_ids(arrays["covariate_codes"])[0]).chunk(0, [1])
    batch = streaming.control_batch_fn()(jax.random.key(0), jnp.arange(16),
                                         jax.tree.map(jnp.asarray, chunk))
    guide_trace = numpyro.handlers.trace(numpyro.handlers.substitute(
        numpyro.handlers.seed(sparse_perturbation_guide, 0), aligned.params)
    ).get_trace(**batch, **vae._model_kwargs())
    distance = np.asarray(guide_trace["alignment_distance"]["value"])
    assert distance.shape == (16,) and np.all(np.isfinite(distance)) and distance.mean() > 0
    backed.file.close()
