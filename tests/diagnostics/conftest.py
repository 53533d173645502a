"""Tiny fitted models of each zoo entry and their DataTrees, shared by the diagnostics tests
(every fit and every conversion compiles, so they are built once per session)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

import causalzoo as cz

matplotlib.use("Agg")

SMALL = dict(n_latent_invariant=2, n_latent_response=3, n_hidden=16, n_layers=1)
N_DRAWS = 60
ENTRY_DRAWS = 30


def make_adata(seed=0):
    data = cz.identifiability.generators.sparse_perturbation(
        n_perturbations=3, n_cells_per_condition=30, n_genes=20, n_combinations=1,
        n_latent_invariant=2, n_latent_response=3, seed=seed,
    )
    return data.to_anndata()


@pytest.fixture(scope="session")
def adata():
    adata = make_adata()
    cz.SparsePerturbationVAE.setup_anndata(adata)
    return adata


@pytest.fixture(scope="session")
def fitted(adata):
    model = cz.SparsePerturbationVAE(adata, **SMALL)
    return model.fit(max_steps=60, batch_size=32, progress=False, seed=0)


CHUNK = 64  # 150 cells: two full chunks and a padded one


@pytest.fixture(scope="session")
def datatree(fitted):
    # the user-class method, which calls causalzoo.diagnostics.to_datatree; a conversion with
    # the same draws and chunk size (other seeds, the report) re-uses its compiled sampler
    return fitted.to_datatree(num_samples=N_DRAWS, seed=0, chunk_size=CHUNK)


@pytest.fixture(scope="session")
def chunk():
    return CHUNK


@pytest.fixture(scope="session")
def small():
    return dict(SMALL)


@pytest.fixture(scope="session")
def n_draws():
    return N_DRAWS


@pytest.fixture(scope="session")
def heldout(adata):
    """Cells from another seed of the same generator, set up like the training data."""
    heldout = make_adata(seed=1)
    heldout.var_names = adata.var_names
    cz.SparsePerturbationVAE.setup_anndata(heldout)
    return heldout


@pytest.fixture(scope="session")
def ivae():
    """A tiny iVAE with linear networks (n_layers=0), whose posterior p(z | x, u) is
    Gaussian in closed form (test_nuts_fit.py checks NUTS against it)."""
    data = cz.identifiability.generators.ivae(n_segments=5, n_per_segment=30, n_latent=2, seed=0)
    model = cz.IVAE.from_arrays(x=data.x, u=data.segment, n_latent=2, n_hidden=16, n_layers=0,
                               observation_scale=0.5)
    return model.fit(max_steps=30, batch_size=50, progress=False, seed=0)


@pytest.fixture(scope="session")
def ivae_tree(ivae):
    return ivae.to_datatree(num_samples=ENTRY_DRAWS, seed=0, chunk_size=64)


@pytest.fixture(scope="session")
def dynamical():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(18, 5, 6)).astype(np.float32)
    model = cz.DynamicalCausalVAE.from_arrays(
        x=x, u=np.array(["a", "b", "c"])[np.arange(18) % 3], n_latent=2, n_latent_invariant=1,
        n_hidden=8, n_layers=1,
    )
    return model.fit(max_steps=20, batch_size=9, progress=False, seed=0)


@pytest.fixture(scope="session")
def dynamical_tree(dynamical):
    return dynamical.to_datatree(num_samples=ENTRY_DRAWS, seed=0, chunk_size=7)


def make_time_course(per=20, n_genes=6, seed=0):
    """A snapshot time course: perturbations A (the control) and B at 0 / 24 / 48 h, one
    latent drifting by +1 (A) or -1 (B) per step, seen through a fixed linear map."""
    import anndata
    import pandas as pd

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(1, n_genes))
    xs, labels = [], []
    for pert, shift in (("A", 1.0), ("B", -1.0)):
        for t in range(3):
            z = 0.5 * rng.normal(size=(per, 1))
            for _ in range(t):
                z = 0.5 * z + shift + 0.3 * rng.normal(size=(per, 1))
            xs.append(z @ w + 0.1 * rng.normal(size=(per, n_genes)))
            labels += [(pert, 24.0 * t)] * per
    obs = pd.DataFrame(labels, columns=["pert", "hours"],
                       index=[f"cell{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    return anndata.AnnData(np.concatenate(xs).astype(np.float32), obs=obs, var=var)


SNAPSHOT_CHUNK = 50  # 120 cells: two full chunks and a padded one


@pytest.fixture(scope="session")
def snapshot():
    """A tiny snapshot-mode DynamicalCausalVAE (120 cells, 6 genes, 2 + 1 latents)."""
    adata = make_time_course()
    cz.DynamicalCausalVAE.setup_anndata(adata, time_key="hours", perturbation_key="pert",
                                        control="A")
    model = cz.DynamicalCausalVAE(adata, n_latent=2, n_latent_invariant=1, n_hidden=8,
                                  n_layers=1, transition="linear")
    return model.fit(max_steps=20, batch_size=60, progress=False, seed=0)


@pytest.fixture(scope="session")
def snapshot_tree(snapshot):
    return snapshot.to_datatree(num_samples=ENTRY_DRAWS, seed=0, chunk_size=SNAPSHOT_CHUNK)


SPARSE_MASKS = np.eye(3, dtype=np.float32)  # P_t targets z_resp_t


@pytest.fixture(scope="session")
def sparse_masks():
    return SPARSE_MASKS.copy()


@pytest.fixture(scope="session")
def sparse_nuts(fitted):
    """NUTS on the tiny sparse model, networks fixed at the SVI fit, masks held at
    SPARSE_MASKS (``fit(method="nuts")`` keeps the run as ``nuts_result``)."""
    model = fitted.fit(method="nuts", masks=SPARSE_MASKS, num_warmup=200, num_samples=200,
                       seed=0)
    assert model is fitted
    return fitted.nuts_result


@pytest.fixture(scope="session")
def time_course_factory():
    """``make_time_course`` itself, for tests that fit their own snapshot model."""
    return make_time_course


# ---------------------------------------------------------------- backed AnnData reads

ROWS_PER_READ = 32  # streaming._READ_ROWS under x_reads (patched down from 4,096)


class XReads:
    """What the ``x_reads`` spy saw of a backed file's ``X``.

    ``chunks``: rows per slice of a :class:`~causalzoo.data.streaming.BackedRows` (the chunks
    that the converters and the encoders take); ``file``: values per h5py read of ``/X``
    (dense) or ``/X/data`` (CSR), whoever reads them (validation blocks and streamed fits
    included); ``rows_per_read``: the validation block, in rows.
    """

    rows_per_read = ROWS_PER_READ

    def __init__(self):
        self.chunks: list[int] = []
        self.file: list[int] = []

    def clear(self) -> None:
        self.chunks.clear()
        self.file.clear()

    def assert_file_bounded(self, n_genes: int, rows: int = ROWS_PER_READ) -> None:
        """Every h5py read of ``X`` since the last :meth:`clear` held at most ``rows`` rows."""
        assert self.file and max(self.file) <= rows * n_genes

    def assert_bounded(self, n_cells: int, n_genes: int, chunk: int) -> None:
        """Every file read within one validation block; the view read each of the
        ``n_cells`` rows once, at most ``chunk`` rows at a time."""
        self.assert_file_bounded(n_genes)
        assert self.chunks and max(self.chunks) <= chunk
        assert sum(self.chunks) == n_cells


@pytest.fixture
def x_reads(monkeypatch):
    """Records how much of a backed file's ``X`` each access reads (an :class:`XReads`), and
    fails on a read of the whole matrix: ``numpy.asarray`` of ``/X`` or ``/X/data`` (and
    ``read_direct``) raises. Patches ``streaming._READ_ROWS`` to :data:`ROWS_PER_READ`."""
    import h5py

    from causalzoo.data import streaming

    reads = XReads()
    real_slice = streaming.BackedRows.__getitem__
    real_get = h5py.Dataset.__getitem__
    real_array = h5py.Dataset.__array__
    real_direct = h5py.Dataset.read_direct

    def is_x(dataset):
        return dataset.name in ("/X", "/X/data")

    def chunk_spy(self, key):
        if isinstance(key, slice):
            reads.chunks.append(len(self.rows[key]))
        return real_slice(self, key)

    def get_spy(self, args, *more, **kwargs):
        out = real_get(self, args, *more, **kwargs)
        if is_x(self):
            reads.file.append(int(np.size(out)))
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


@pytest.fixture
def open_backed(tmp_path):
    """``open_backed(adata)``: ``adata`` written to an h5ad file under ``tmp_path`` and opened
    with ``backed="r"`` (each call a new file; all closed at teardown)."""
    import anndata

    opened = []

    def open_(adata):
        path = tmp_path / f"backed{len(opened)}.h5ad"
        adata.write_h5ad(path)
        backed = anndata.read_h5ad(path, backed="r")
        opened.append(backed)
        return backed

    yield open_
    for backed in opened:
        backed.file.close()
