"""A backed AnnData (``anndata.read_h5ad(path, backed="r")``) with the iVAE and the snapshot
mode of the dynamical model: set-up, ``to_datatree``, ``get_latent_representation`` and the
iVAE's fit read the expression a block of rows at a time, never whole, and give what the same
file loaded into memory gives."""

from __future__ import annotations

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.data import streaming
from causalzoo.diagnostics import to_datatree

ROWS_PER_READ = 32  # validation blocks (streaming._READ_ROWS, patched down from 4,096)
IVAE_CHUNK, SNAPSHOT_CHUNK, DRAWS = 64, 50, 30  # the conftest's ivae_tree / snapshot_tree
GROUPS = ("posterior", "posterior_predictive", "log_likelihood", "observed_data",
          "constant_data", "sample_stats")


@pytest.fixture
def x_reads(monkeypatch):
    """Records how much of a backed file's ``X`` each access reads, and fails on a read of
    the whole matrix.

    ``reads["chunks"]``: rows per slice of a :class:`~causalzoo.data.streaming.BackedRows`
    (the chunks that the converter and the encoders take); ``reads["file"]``: values per
    h5py read of ``/X`` (dense) or ``/X/data`` (CSR), whoever reads them (validation blocks
    included). ``numpy.asarray`` of those datasets (a whole read) raises.
    """
    reads = {"chunks": [], "file": []}
    real_slice = streaming.BackedRows.__getitem__
    real_get = h5py.Dataset.__getitem__
    real_array = h5py.Dataset.__array__
    real_direct = h5py.Dataset.read_direct

    def is_x(dataset):
        return dataset.name in ("/X", "/X/data")

    def chunk_spy(self, key):
        if isinstance(key, slice):
            reads["chunks"].append(len(self.rows[key]))
        return real_slice(self, key)

    def get_spy(self, args, *more, **kwargs):
        out = real_get(self, args, *more, **kwargs)
        if is_x(self):
            reads["file"].append(int(np.size(out)))
        return out

    def whole(real):
        def guard(self, *args, **kwargs):
            if is_x(self):
                raise AssertionError(f"read {self.name} {self.shape} whole")
            return real(self, *args, **kwargs)
        return guard

    monkeypatch.setattr(streaming, "_READ_ROWS", ROWS_PER_READ)
    monkeypatch.setattr(streaming.BackedRows, "__getitem__", chunk_spy)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", get_spy)
    monkeypatch.setattr(h5py.Dataset, "__array__", whole(real_array))
    monkeypatch.setattr(h5py.Dataset, "read_direct", whole(real_direct))
    return reads


def open_backed(adata, path):
    adata.write_h5ad(path)
    return anndata.read_h5ad(path, backed="r")


def assert_same_tree(tree, expected):
    for group in GROUPS:
        assert tree[group].to_dataset().identical(expected[group].to_dataset()), group


def assert_bounded(reads, n_cells, n_genes, chunk):
    """Every file read within one validation block or chunk; the converter read each row
    once, a chunk at a time."""
    assert reads["chunks"] and max(reads["chunks"]) <= chunk
    assert sum(reads["chunks"]) == n_cells
    assert reads["file"] and max(reads["file"]) <= ROWS_PER_READ * n_genes


# ---------------------------------------------------------------- iVAE


def test_ivae_converts_and_embeds_backed_cells_a_chunk_at_a_time(ivae, ivae_tree, tmp_path,
                                                                 x_reads, monkeypatch):
    backed = open_backed(ivae.adata, tmp_path / "points.h5ad")
    assert streaming.is_backed(backed)
    with pytest.raises(AssertionError, match="whole"):  # the spy sees a whole read
        np.asarray(backed.X)
    n, g = ivae.adata.shape
    tree = to_datatree(ivae, backed, num_samples=DRAWS, seed=0, chunk_size=IVAE_CHUNK)
    assert_same_tree(tree, ivae_tree)
    assert_bounded(x_reads, n, g, IVAE_CHUNK)

    # the encoder's chunks (2,048 points by default) cut down to see them
    monkeypatch.setattr("causalzoo.api.ivae._CHUNK", IVAE_CHUNK)
    x_reads["chunks"].clear()
    loc, scale = ivae.get_latent_representation(backed, give_scale=True)
    assert max(x_reads["chunks"]) <= IVAE_CHUNK and sum(x_reads["chunks"]) == n
    in_memory = ivae.get_latent_representation(ivae.adata, give_scale=True)
    np.testing.assert_array_equal(loc, in_memory[0])
    np.testing.assert_array_equal(scale, in_memory[1])

    # a model loaded onto the backed cells converts its training cells the same way
    ivae.save(tmp_path / "fit")
    loaded = cz.load(tmp_path / "fit", adata=backed)
    x_reads["chunks"].clear()
    assert_same_tree(loaded.to_datatree(num_samples=DRAWS, seed=0, chunk_size=IVAE_CHUNK),
                     ivae_tree)
    assert max(x_reads["chunks"]) <= IVAE_CHUNK and sum(x_reads["chunks"]) == n
    backed.file.close()


def counts_adata(n=150, n_genes=8, seed=0):
    rng = np.random.default_rng(seed)
    segment = np.repeat(np.arange(5), n // 5)
    x = rng.poisson(np.exp(rng.normal(size=(5, n_genes)))[segment] + 0.5).astype(np.float32)
    obs = pd.DataFrame({"segment": pd.Categorical([f"s{s}" for s in segment])},
                       index=[f"c{i}" for i in range(n)])
    return anndata.AnnData(sp.csr_matrix(x), obs=obs,
                           var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def test_ivae_fits_backed_counts_by_streaming(tmp_path, x_reads):
    """CSR counts and a Poisson likelihood (library sizes from the same block pass): set-up,
    a streamed fit and the conversion never read X whole; with one chunk of all points the
    fit is the in-memory fit."""
    loaded = counts_adata()
    backed = open_backed(loaded, tmp_path / "counts.h5ad")
    config = {"n_latent": 2, "n_hidden": 8, "n_layers": 1, "likelihood": "poisson"}
    fit = {"max_steps": 12, "batch_size": 50, "steps_per_call": 6, "progress": False,
           "seed": 0}
    models = []
    for adata in (loaded, backed):
        cz.IVAE.setup_anndata(adata, aux_key="segment", count_data=True)
        models.append(cz.IVAE(adata, **config).fit(**fit))
    np.testing.assert_array_equal(models[0].history["loss"], models[1].history["loss"])
    trees = [to_datatree(m, num_samples=8, seed=0, chunk_size=IVAE_CHUNK) for m in models]
    assert_same_tree(trees[1], trees[0])
    n, g = loaded.shape
    np.testing.assert_array_equal(trees[1]["constant_data"]["u"], trees[0]["constant_data"]["u"])
    assert x_reads["file"] and max(x_reads["file"]) <= ROWS_PER_READ * g
    assert max(x_reads["chunks"]) <= IVAE_CHUNK and sum(x_reads["chunks"]) == n
    backed.file.close()


def test_backed_set_up_of_ivae_and_snapshot_validates_block_by_block(tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "_READ_ROWS", ROWS_PER_READ)
    bad = counts_adata()
    x = bad.X.toarray()
    x[70, 2] = 0.5
    bad.X = sp.csr_matrix(x)
    bad.obs["hours"] = np.repeat([0.0, 24.0, 48.0], 50)
    backed = open_backed(bad, tmp_path / "bad.h5ad")
    with pytest.raises(CausalZooError, match=r"rows 64:96"):
        cz.IVAE.setup_anndata(backed, aux_key="segment", count_data=True)
    with pytest.raises(CausalZooError, match=r"rows 64:96.*c70"):
        cz.DynamicalCausalVAE.setup_anndata(backed, time_key="hours", count_data=True)
    backed.file.close()


# ---------------------------------------------------------------- snapshot mode


def test_snapshot_converts_and_embeds_backed_cells_a_chunk_at_a_time(
        snapshot, snapshot_tree, tmp_path, x_reads, monkeypatch):
    backed = open_backed(snapshot.adata, tmp_path / "course.h5ad")
    n, g = snapshot.adata.shape
    tree = to_datatree(snapshot, backed, num_samples=DRAWS, seed=0, chunk_size=SNAPSHOT_CHUNK)
    assert_same_tree(tree, snapshot_tree)
    assert_bounded(x_reads, n, g, SNAPSHOT_CHUNK)

    monkeypatch.setattr("causalzoo.api.dynamical_snapshot._CHUNK", SNAPSHOT_CHUNK)
    for block in ("dynamic", "invariant"):
        x_reads["chunks"].clear()
        z = snapshot.get_latent_representation(backed, block=block)
        assert max(x_reads["chunks"]) <= SNAPSHOT_CHUNK and sum(x_reads["chunks"]) == n
        np.testing.assert_array_equal(
            z, snapshot.get_latent_representation(snapshot.adata, block=block))

    # loaded onto backed cells: the training cells stay on disk (to_datatree, embedding)
    snapshot.save(tmp_path / "fit")
    loaded = cz.load(tmp_path / "fit", adata=backed)
    assert isinstance(loaded.x, streaming.BackedRows)
    x_reads["chunks"].clear()
    assert_same_tree(loaded.to_datatree(num_samples=DRAWS, seed=0, chunk_size=SNAPSHOT_CHUNK),
                     snapshot_tree)
    assert max(x_reads["chunks"]) <= SNAPSHOT_CHUNK and sum(x_reads["chunks"]) == n
    np.testing.assert_array_equal(loaded.get_latent_representation(),
                                  snapshot.get_latent_representation())
    backed.file.close()


def test_snapshot_library_sizes_of_backed_counts(tmp_path, x_reads):
    """The count likelihoods' library sizes of backed cells come from the validation pass
    and equal the in-memory ones; the conversion's cell arrays are the in-memory ones."""
    from causalzoo.api.dynamical_snapshot import _cells_expression

    loaded = counts_adata()
    loaded.obs["hours"] = np.tile([0.0, 24.0, 48.0], 50)
    reg = cz.DynamicalCausalVAE.setup_anndata(loaded, time_key="hours",
                                              perturbation_key="segment", count_data=True)
    backed = open_backed(loaded, tmp_path / "counts.h5ad")
    assert cz.DynamicalCausalVAE.setup_anndata(
        backed, time_key="hours", perturbation_key="segment", count_data=True) == reg
    x_disk, lib_disk = _cells_expression(backed, reg)
    x_mem, lib_mem = _cells_expression(loaded, reg)
    assert isinstance(x_disk, streaming.BackedRows) and not x_reads["chunks"]
    assert max(x_reads["file"]) <= ROWS_PER_READ * loaded.n_vars  # set-up and sums: blocks
    np.testing.assert_array_equal(lib_disk, lib_mem)
    np.testing.assert_array_equal(lib_mem, np.maximum(loaded.X.toarray().sum(-1), 1.0))
    np.testing.assert_array_equal(x_disk[0:loaded.n_obs], x_mem)
    model = cz.DynamicalCausalVAE(backed, n_latent=2, likelihood="poisson")
    assert isinstance(model.x, streaming.BackedRows)
    np.testing.assert_array_equal(model._fit_data()["library_size"], lib_mem)
    backed.file.close()
