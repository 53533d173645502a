"""A backed AnnData (``anndata.read_h5ad(path, backed="r")``) with the iVAE and the snapshot
mode of the dynamical model: set-up, ``to_datatree``, ``get_latent_representation`` and
``fit`` read the expression a block of rows or a chunk of cells at a time, never whole, and
give what the same file loaded into memory gives. The read spy (``x_reads``) and
``open_backed`` are in ``conftest.py``."""

from __future__ import annotations

import anndata
import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.data import streaming
from causalzoo.diagnostics import to_datatree

IVAE_CHUNK, SNAPSHOT_CHUNK, DRAWS = 64, 50, 30  # the conftest's ivae_tree / snapshot_tree
GROUPS = ("posterior", "posterior_predictive", "log_likelihood", "observed_data",
          "constant_data", "sample_stats")


def assert_same_tree(tree, expected):
    for group in GROUPS:
        assert tree[group].to_dataset().identical(expected[group].to_dataset()), group


# ---------------------------------------------------------------- iVAE


def test_ivae_converts_and_embeds_backed_cells_a_chunk_at_a_time(ivae, ivae_tree, tmp_path,
                                                                 x_reads, open_backed,
                                                                 monkeypatch):
    backed = open_backed(ivae.adata)
    assert streaming.is_backed(backed)
    with pytest.raises(AssertionError, match="whole"):  # the spy sees a whole read
        np.asarray(backed.X)
    n, g = ivae.adata.shape
    tree = to_datatree(ivae, backed, num_samples=DRAWS, seed=0, chunk_size=IVAE_CHUNK)
    assert_same_tree(tree, ivae_tree)
    x_reads.assert_bounded(n, g, IVAE_CHUNK)

    # the encoder's chunks (2,048 points by default) cut down to see them
    monkeypatch.setattr("causalzoo.api.ivae._CHUNK", IVAE_CHUNK)
    x_reads.clear()
    loc, scale = ivae.get_latent_representation(backed, give_scale=True)
    x_reads.assert_bounded(n, g, IVAE_CHUNK)
    in_memory = ivae.get_latent_representation(ivae.adata, give_scale=True)
    np.testing.assert_array_equal(loc, in_memory[0])
    np.testing.assert_array_equal(scale, in_memory[1])

    # a model loaded onto the backed cells converts its training cells the same way
    ivae.save(tmp_path / "fit")
    loaded = cz.load(tmp_path / "fit", adata=backed)
    x_reads.clear()
    assert_same_tree(loaded.to_datatree(num_samples=DRAWS, seed=0, chunk_size=IVAE_CHUNK),
                     ivae_tree)
    x_reads.assert_bounded(n, g, IVAE_CHUNK)


def counts_adata(n=150, n_genes=8, seed=0):
    rng = np.random.default_rng(seed)
    segment = np.repeat(np.arange(5), n // 5)
    x = rng.poisson(np.exp(rng.normal(size=(5, n_genes)))[segment] + 0.5).astype(np.float32)
    obs = pd.DataFrame({"segment": pd.Categorical([f"s{s}" for s in segment])},
                       index=[f"c{i}" for i in range(n)])
    return anndata.AnnData(sp.csr_matrix(x), obs=obs,
                           var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def test_ivae_fits_backed_counts_by_streaming(x_reads, open_backed):
    """CSR counts and a Poisson likelihood (library sizes from the same block pass): set-up,
    a streamed fit and the conversion never read X whole; with one chunk of all points the
    fit is the in-memory fit."""
    loaded = counts_adata()
    backed = open_backed(loaded)
    config = {"n_latent": 2, "n_hidden": 8, "n_layers": 1, "likelihood": "poisson"}
    fit = {"max_steps": 12, "batch_size": 50, "steps_per_call": 6, "progress": False,
           "seed": 0}
    models = []
    for adata in (loaded, backed):
        cz.IVAE.setup_anndata(adata, aux_key="segment", count_data=True)
        models.append(cz.IVAE(adata, **config).fit(**fit))
    np.testing.assert_array_equal(models[0].history["loss"], models[1].history["loss"])
    assert not x_reads.chunks  # the fit never sliced the view (a dense copy of the points)
    x_reads.assert_file_bounded(loaded.n_vars)
    x_reads.clear()
    trees = [to_datatree(m, num_samples=8, seed=0, chunk_size=IVAE_CHUNK) for m in models]
    assert_same_tree(trees[1], trees[0])
    np.testing.assert_array_equal(trees[1]["constant_data"]["u"], trees[0]["constant_data"]["u"])
    x_reads.assert_bounded(*loaded.shape, IVAE_CHUNK)


def test_backed_set_up_of_ivae_and_snapshot_validates_block_by_block(x_reads, open_backed):
    assert x_reads.rows_per_read == 32  # the rows named in the errors
    bad = counts_adata()
    x = bad.X.toarray()
    x[70, 2] = 0.5
    bad.X = sp.csr_matrix(x)
    bad.obs["hours"] = np.repeat([0.0, 24.0, 48.0], 50)
    backed = open_backed(bad)
    with pytest.raises(CausalZooError, match=r"rows 64:96"):
        cz.IVAE.setup_anndata(backed, aux_key="segment", count_data=True)
    with pytest.raises(CausalZooError, match=r"rows 64:96.*c70"):
        cz.DynamicalCausalVAE.setup_anndata(backed, time_key="hours", count_data=True)
    x_reads.assert_file_bounded(bad.n_vars)


# ---------------------------------------------------------------- snapshot mode


def test_snapshot_converts_and_embeds_backed_cells_a_chunk_at_a_time(
        snapshot, snapshot_tree, tmp_path, x_reads, open_backed, monkeypatch):
    backed = open_backed(snapshot.adata)
    n, g = snapshot.adata.shape
    tree = to_datatree(snapshot, backed, num_samples=DRAWS, seed=0, chunk_size=SNAPSHOT_CHUNK)
    assert_same_tree(tree, snapshot_tree)
    x_reads.assert_bounded(n, g, SNAPSHOT_CHUNK)

    monkeypatch.setattr("causalzoo.api.dynamical_snapshot._CHUNK", SNAPSHOT_CHUNK)
    for block in ("dynamic", "invariant"):
        x_reads.clear()
        z = snapshot.get_latent_representation(backed, block=block)
        x_reads.assert_bounded(n, g, SNAPSHOT_CHUNK)
        np.testing.assert_array_equal(
            z, snapshot.get_latent_representation(snapshot.adata, block=block))

    # loaded onto backed cells: the training cells stay on disk (to_datatree, embedding)
    snapshot.save(tmp_path / "fit")
    loaded = cz.load(tmp_path / "fit", adata=backed)
    assert isinstance(loaded.x, streaming.BackedRows)
    x_reads.clear()
    assert_same_tree(loaded.to_datatree(num_samples=DRAWS, seed=0, chunk_size=SNAPSHOT_CHUNK),
                     snapshot_tree)
    x_reads.assert_bounded(n, g, SNAPSHOT_CHUNK)
    np.testing.assert_array_equal(loaded.get_latent_representation(),
                                  snapshot.get_latent_representation())


def count_course():
    """150 cells of CSR counts over 8 genes, five perturbations at 0 / 24 / 48 h."""
    adata = counts_adata()
    adata.obs["hours"] = np.tile([0.0, 24.0, 48.0], 50)
    return adata


def snapshot_on(adata, **config):
    cz.DynamicalCausalVAE.setup_anndata(adata, time_key="hours", perturbation_key="segment",
                                        count_data=True)
    return cz.DynamicalCausalVAE(adata, n_latent=2, n_latent_invariant=1, n_hidden=8,
                                 n_layers=1, transition="linear", likelihood="poisson",
                                 **config)


def test_snapshot_library_sizes_of_backed_counts(x_reads, open_backed):
    """The count likelihoods' library sizes of backed cells come from the validation pass
    and equal the in-memory ones; the conversion's cell arrays are the in-memory ones."""
    from causalzoo.api.dynamical_snapshot import _cells_expression

    loaded = count_course()
    reg = cz.DynamicalCausalVAE.setup_anndata(loaded, time_key="hours",
                                              perturbation_key="segment", count_data=True)
    backed = open_backed(loaded)
    assert cz.DynamicalCausalVAE.setup_anndata(
        backed, time_key="hours", perturbation_key="segment", count_data=True) == reg
    x_disk, lib_disk = _cells_expression(backed, reg)
    x_mem, lib_mem = _cells_expression(loaded, reg)
    assert isinstance(x_disk, streaming.BackedRows) and not x_reads.chunks
    x_reads.assert_file_bounded(loaded.n_vars)  # set-up and sums: blocks
    np.testing.assert_array_equal(lib_disk, lib_mem)
    np.testing.assert_array_equal(lib_mem, np.maximum(loaded.X.toarray().sum(-1), 1.0))
    np.testing.assert_array_equal(x_disk[0:loaded.n_obs], x_mem)
    model = cz.DynamicalCausalVAE(backed, n_latent=2, likelihood="poisson")
    assert isinstance(model.x, streaming.BackedRows)
    source = model._fit_data()
    assert isinstance(source, streaming.CellSource) and source.n_cells == loaded.n_obs
    np.testing.assert_array_equal(source.resident["library_size"], lib_mem)


SNAPSHOT_FIT = {"max_steps": 12, "batch_size": 30, "steps_per_call": 6, "progress": False,
                "seed": 0}


def test_snapshot_fit_of_one_chunk_is_the_in_memory_fit(x_reads, open_backed):
    """A backed AnnData's fit streams the counts (the default chunk: all 150 cells): the
    same loss history and parameters as the fit of the file loaded, bit for bit, and X is
    only read a validation block at a time."""
    loaded = count_course()
    backed = open_backed(loaded)
    models = [snapshot_on(adata).fit(**SNAPSHOT_FIT) for adata in (loaded, backed)]
    assert isinstance(models[1].x, streaming.BackedRows)
    assert not x_reads.chunks  # the fit never sliced the view (a dense copy of the cells)
    x_reads.assert_file_bounded(loaded.n_vars)
    np.testing.assert_array_equal(models[1].history["loss"], models[0].history["loss"])
    leaves, tree = jax.tree.flatten(models[0].params)
    streamed, streamed_tree = jax.tree.flatten(models[1].params)
    assert streamed_tree == tree
    for value, expected in zip(streamed, leaves, strict=True):
        np.testing.assert_array_equal(value, expected)


def test_snapshot_fit_streams_backed_cells_a_chunk_at_a_time(x_reads, open_backed,
                                                             monkeypatch):
    """With chunks of 40 of the 150 cells, the fit reads X a chunk at a time (in reads of at
    most one validation block, no more values than its chunks hold), never through a dense
    copy of all cells."""
    from functools import partial

    chunk = 40
    monkeypatch.setattr("causalzoo.api.dynamical_snapshot.CellSource",
                        partial(streaming.CellSource, chunk_cells=chunk, block_cells=8))
    chunks = {}
    real_chunk = streaming.CellSource.chunk

    def chunk_spy(self, index, seed):
        out = real_chunk(self, index, seed)
        chunks[index] = self.rows(index, seed)
        return out

    monkeypatch.setattr(streaming.CellSource, "chunk", chunk_spy)
    loaded = count_course()
    model = snapshot_on(open_backed(loaded))
    x_reads.clear()  # the set-up's validation blocks
    model.fit(**SNAPSHOT_FIT)
    # 12 steps of 30 cells, 6 per compiled call: calls 0 and 1, each on its own chunk (the
    # next one may have been prefetched)
    assert {0, 1} <= set(chunks) <= {0, 1, 2}
    assert all(rows.size == chunk for rows in chunks.values())
    assert not np.array_equal(chunks[0], chunks[1])
    assert not x_reads.chunks
    x_reads.assert_file_bounded(loaded.n_vars)
    assert sum(x_reads.file) <= len(chunks) * chunk * loaded.n_vars  # each row once a chunk
    assert np.isfinite(model.history["loss"]).all() and len(model.history["loss"]) == 12
