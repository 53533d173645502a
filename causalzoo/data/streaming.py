"""Data larger than memory: stream shuffled chunks of cells from disk into the SVI engine.

A :class:`CellSource` pairs one large per-cell matrix that stays on disk (a backed AnnData's
``X``, an ``h5py`` or ``zarr`` dataset, or any row-sliceable array or scipy.sparse matrix)
with small per-cell arrays that stay in memory (the perturbation design, covariates, library
sizes). :func:`~causalzoo.inference.fit_svi` accepts it in place of the resident ``data``:

* the cells are cut into contiguous blocks of ``block_cells``; every epoch visits the blocks
  in a new random order (random access to single rows of an h5 file is slow, contiguous
  reads are fast) and cuts that order into chunks of ``chunk_cells`` cells (the cells left
  over at the end of an epoch's order wait for the next epoch, whose order differs);
* a chunk is read in sorted row order as runs of contiguous rows, densified to ``float32``
  and gathered with the small arrays into arrays of one fixed shape, so one compiled call
  serves every chunk (the chunk is an argument of the call, not a constant);
* each compiled call draws its ``steps_per_call`` minibatches from one chunk, shuffled on the
  device by the call's own random permutation;
* while the device works on chunk ``c``, a background thread reads chunk ``c + 1`` and puts
  it on the device.

Chunk ``c`` is a function of the seed and ``c`` only, so a streamed fit is reproducible,
checkpoints resume to the same result as an uninterrupted fit, and with one chunk covering
every cell (``chunk_cells = n_cells``) the fit is the resident fit: the chunk is then the
whole data in its own order.

Pairing cells with control cells (the alignment term of the sparse perturbation model) needs
control cells from anywhere in the data, not only from the chunk.
:meth:`CellSource.with_controls` adds to every chunk a small **control pool**: for each
covariate context, ``per_context`` control cells of that context drawn uniformly (with
replacement) from the whole data, read with the chunk; :func:`control_batch_fn` pairs each
minibatch cell with a uniformly chosen pool cell of its context. Each pairing is then a
uniform draw from the controls of the cell's context, as in the resident fit; the pool is
redrawn with every chunk.

Examples
--------
>>> import numpy as np
>>> x = np.arange(40, dtype=np.float32).reshape(10, 4)
>>> src = CellSource(x, {"size": x.sum(1)}, chunk_cells=6, block_cells=2)
>>> chunk = src.chunk(0, [0])
>>> chunk["x"].shape, chunk["size"].shape
((6, 4), (6,))
>>> bool(np.all(chunk["x"].sum(1) == chunk["size"]))
True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .._errors import CausalZooError, check_bool, check_int

if TYPE_CHECKING:
    import anndata

    from .anndata import AnnDataRegistry

__all__ = [
    "BackedRows",
    "CellSource",
    "anndata_source",
    "check_matrix_chunked",
    "control_batch_fn",
    "control_pools",
    "checked_on_disk",
    "is_backed",
    "row_sums",
]

_CHUNK_BYTES = 64 * 2**20
_READ_ROWS = 4096
_MAX_RUNS_PER_WINDOW = 8
_POOL_SALT = 0xC0A7


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _dense_rows(matrix: Any, start: int, stop: int, dtype: Any = np.float32) -> np.ndarray:
    """Rows ``start:stop`` of a dense, sparse, h5py, zarr or backed-AnnData matrix, dense."""
    piece = matrix[start:stop]
    if sp.issparse(piece):
        return piece.tocsr().astype(dtype).toarray()
    return np.asarray(piece, dtype=dtype)


def _runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Sorted rows as ``(position in rows, first row, one past the last row)`` runs."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [rows.size]])
    return [(int(a), int(rows[a]), int(rows[b - 1]) + 1)
            for a, b in zip(starts, stops, strict=True)]


class CellSource:
    """Cells streamed in shuffled chunks from a matrix that stays on disk.

    Parameters
    ----------
    matrix : array-like, (n_cells, n_features)
        Row-sliceable: a backed AnnData's ``X``, an ``h5py``/``zarr`` dataset, a numpy array or
        a scipy.sparse matrix. Only the rows of one chunk (and the prefetched next one) are
        ever dense in memory.
    resident : mapping of str to array, optional
        Small per-cell arrays (first axis ``n_cells``) kept in memory and gathered per chunk.
    x_key : str
        The name under which chunks of ``matrix`` reach the model.
    chunk_cells : int, optional
        Cells per chunk (every compiled call sees one chunk). Default: about 64 MiB of dense
        ``float32`` rows, at least 1024 cells, at most ``n_cells``.
    block_cells : int
        Cells per contiguous block, the unit of the shuffled reading order.
    prefetch : bool
        Read the next chunk in a background thread while the current one is used.

    Examples
    --------
    >>> import numpy as np
    >>> src = CellSource(np.ones((100, 3), np.float32), chunk_cells=40)
    >>> src.n_cells, src.chunk_cells, src.chunks_per_epoch
    (100, 40, 2)
    """

    def __init__(
        self,
        matrix: Any,
        resident: Mapping[str, Any] | None = None,
        *,
        x_key: str = "x",
        chunk_cells: int | None = None,
        block_cells: int = 256,
        prefetch: bool = True,
    ) -> None:
        shape = getattr(matrix, "shape", None)
        if shape is None or len(shape) != 2:
            raise CausalZooError(
                f"CellSource needs a 2-D (cells, features) matrix; got {type(matrix).__name__} "
                f"with shape {shape}."
            )
        n_cells, n_features = int(shape[0]), int(shape[1])
        if n_cells < 1:
            raise CausalZooError("CellSource got a matrix with no cells.")
        resident = {str(k): np.asarray(v) for k, v in dict(resident or {}).items()}
        if x_key in resident:
            raise CausalZooError(
                f"resident has an array named {x_key!r}, the name of the streamed matrix; "
                "rename it or pass another x_key."
            )
        wrong = {k: v.shape for k, v in resident.items() if v.ndim < 1 or v.shape[0] != n_cells}
        if wrong:
            raise CausalZooError(
                f"Every resident array needs the matrix's {n_cells} cells on its first axis; "
                f"these do not: {wrong}."
            )
        if chunk_cells is None:
            chunk_cells = max(1024, _CHUNK_BYTES // (4 * max(n_features, 1)) // 512 * 512)
            chunk_cells = min(chunk_cells, n_cells)
        if not _is_count(chunk_cells) or not 1 <= chunk_cells <= n_cells:
            raise CausalZooError(
                f"chunk_cells={chunk_cells!r} must be an integer between 1 and the {n_cells} "
                "cells."
            )
        check_int("block_cells", block_cells)
        prefetch = check_bool("prefetch", prefetch)
        self.matrix = matrix
        self.resident = resident
        self.x_key = x_key
        self.n_cells, self.n_features = n_cells, n_features
        self.chunk_cells, self.block_cells = int(chunk_cells), int(block_cells)
        self.prefetch = prefetch
        self._order: tuple[tuple[int, ...], int, np.ndarray] | None = None
        self._lock = threading.Lock()
        # with_controls: (context key, pool key, per_context, pools of control rows)
        self._controls: tuple[str, str, int, list[np.ndarray]] | None = None

    def with_controls(
        self,
        is_control: Any,
        context: Any,
        *,
        per_context: int | None = None,
        context_key: str = "context",
        pool_key: str | None = None,
    ) -> CellSource:
        """This source, with a pool of control cells added to every chunk (for alignment).

        Parameters
        ----------
        is_control : array of bool, (n_cells,)
            Which cells are controls.
        context : array of int, (n_cells,)
            Each cell's covariate context, ``0 .. n_contexts - 1``; added to the resident
            arrays as ``context_key``.
        per_context : int, optional
            Control cells drawn per context for each chunk. Default: an eighth of a chunk
            shared out over the contexts, at least 16 per context.
        context_key, pool_key
            Names of the context ids and of the pool in a chunk; the pool (default
            ``x_key + "_control_pool"``) is a ``(n_contexts, per_context, n_features)``
            ``float32`` array whose row ``c`` holds controls of context ``c`` (of all
            contexts when ``c`` has none).

        Returns
        -------
        CellSource
            A new source over the same matrix (this one is unchanged).

        Examples
        --------
        >>> import numpy as np
        >>> x = np.arange(20, dtype=np.float32).reshape(10, 2)
        >>> src = CellSource(x, chunk_cells=4).with_controls(
        ...     np.arange(10) < 4, np.arange(10) % 2, per_context=3)
        >>> chunk = src.chunk(0, [0])
        >>> chunk["x_control_pool"].shape, sorted(chunk)
        ((2, 3, 2), ['context', 'x', 'x_control_pool'])
        >>> bool(np.all(chunk["x_control_pool"][1, :, 0] % 4 == 2))  # rows 1 and 3: context 1
        True
        """
        is_control = np.asarray(is_control)
        context = np.asarray(context)
        if is_control.shape != (self.n_cells,) or is_control.dtype != np.bool_:
            raise CausalZooError(
                f"is_control must be a boolean array of the {self.n_cells} cells; got dtype "
                f"{is_control.dtype} and shape {is_control.shape}."
            )
        if (context.shape != (self.n_cells,) or context.dtype.kind not in "iu"
                or (context.size and context.min() < 0)):
            raise CausalZooError(
                f"context must be an array of {self.n_cells} integer context ids >= 0; got "
                f"dtype {context.dtype} and shape {context.shape}."
            )
        pools = control_pools(is_control, context)
        n_contexts = len(pools)
        if per_context is None:
            per_context = max(16, -(-self.chunk_cells // (8 * n_contexts)))
        check_int("per_context", per_context)
        pool_key = pool_key or f"{self.x_key}_control_pool"
        names = {self.x_key, *self.resident}
        if context_key in names or pool_key in names or context_key == pool_key:
            raise CausalZooError(
                f"context_key={context_key!r} and pool_key={pool_key!r} must be new names; "
                f"the source already has {sorted(names)}."
            )
        new = CellSource(self.matrix, {**self.resident, context_key: context.astype(np.int32)},
                         x_key=self.x_key, chunk_cells=self.chunk_cells,
                         block_cells=self.block_cells, prefetch=self.prefetch)
        new._controls = (context_key, pool_key, int(per_context), pools)
        return new

    def control_pool(self, index: int, seed: Sequence[int]) -> np.ndarray:
        """The control pool of chunk ``index`` (see :meth:`with_controls`): a function of
        the seed and ``index`` only."""
        if self._controls is None:
            raise CausalZooError("This source has no control pool; use with_controls().")
        _, _, per_context, pools = self._controls
        rng = np.random.default_rng([*(int(s) for s in seed), int(index), _POOL_SALT])
        picks = np.stack([pool[rng.integers(0, pool.size, per_context)] for pool in pools])
        # read each distinct row once, in sorted order (runs of rows are read together)
        rows, where = np.unique(picks, return_inverse=True)
        dense = self.read(rows)[self.x_key]
        return dense[where.reshape(picks.shape)]

    @property
    def chunks_per_epoch(self) -> int:
        """Whole chunks in one pass over the cells (the remainder waits for the next pass)."""
        return self.n_cells // self.chunk_cells

    def describe(self) -> dict[str, Any]:
        """JSON-able description that a checkpoint of a streamed fit must match."""
        arrays = {self.x_key: [[self.n_features], "float32"]}
        arrays.update({k: [list(v.shape[1:]), str(v.dtype)] for k, v in self.resident.items()})
        streamed = {"n_cells": self.n_cells, "chunk_cells": self.chunk_cells,
                    "block_cells": self.block_cells, "arrays": arrays}
        if self._controls is not None:
            _, pool_key, per_context, pools = self._controls
            streamed["control_pool"] = {"key": pool_key, "shape": [len(pools), per_context,
                                                                   self.n_features]}
        return {"streamed": streamed}

    def epoch_order(self, epoch: int, seed: Sequence[int]) -> np.ndarray:
        """All cells in the order of ``epoch``: the contiguous blocks, randomly permuted."""
        key = (tuple(int(s) for s in seed), int(epoch))
        with self._lock:
            if self._order is not None and self._order[:2] == key:
                return self._order[2]
        n_blocks = -(-self.n_cells // self.block_cells)
        blocks = np.random.default_rng([*key[0], key[1]]).permutation(n_blocks)
        starts = blocks * self.block_cells
        lengths = np.minimum(starts + self.block_cells, self.n_cells) - starts
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        order = np.arange(self.n_cells) + offsets
        with self._lock:
            self._order = (*key, order)
        return order

    def rows(self, index: int, seed: Sequence[int]) -> np.ndarray:
        """The sorted cell indices of chunk ``index`` (counted over the fit)."""
        epoch, k = divmod(int(index), self.chunks_per_epoch)
        order = self.epoch_order(epoch, seed)
        return np.sort(order[k * self.chunk_cells:(k + 1) * self.chunk_cells])

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of the given sorted cells: the matrix's rows dense ``float32`` (read as
        runs of contiguous rows) and the resident arrays gathered."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.n_features), np.float32)
        runs = _runs(rows)
        i = 0
        while i < len(runs):
            # Runs that lie within one read window of the first: many short ones (scattered
            # cells) are read as one span and picked from, long ones run by run.
            j = i
            while j + 1 < len(runs) and runs[j + 1][2] - runs[i][1] <= _READ_ROWS:
                j += 1
            if j - i + 1 > _MAX_RUNS_PER_WINDOW:
                first, last = runs[i][0], runs[j][0] + runs[j][2] - runs[j][1]
                span = _dense_rows(self.matrix, runs[i][1], runs[j][2])
                out[first:last] = span[rows[first:last] - runs[i][1]]
            else:
                for at, start, stop in runs[i:j + 1]:
                    for a in range(start, stop, _READ_ROWS):
                        b = min(a + _READ_ROWS, stop)
                        out[at + a - start: at + b - start] = _dense_rows(self.matrix, a, b)
            i = j + 1
        return {self.x_key: out, **{k: v[rows] for k, v in self.resident.items()}}

    def chunk(self, index: int, seed: Sequence[int]) -> dict[str, np.ndarray]:
        """The arrays of chunk ``index`` of the stream seeded by ``seed`` (``chunk_cells``
        rows each, cells in increasing index order; plus the control pool of
        :meth:`with_controls`)."""
        out = self.read(self.rows(index, seed))
        if self._controls is not None:
            out[self._controls[1]] = self.control_pool(index, seed)
        return out

    def feed(self, seed: Sequence[int], put: Callable[[dict], Any] = lambda c: c) -> _Feed:
        """What the engine pulls chunks from: ``feed.get(c)`` returns ``put(chunk(c))`` and
        starts reading chunk ``c + 1`` in the background (when ``prefetch``)."""
        return _Feed(self, [int(s) for s in seed], put)

    def __repr__(self) -> str:
        pool = ("" if self._controls is None else
                f", control pool {len(self._controls[3])} x {self._controls[2]}")
        return (f"CellSource({self.n_cells} cells x {self.n_features}, chunk_cells="
                f"{self.chunk_cells}, block_cells={self.block_cells}, resident="
                f"{sorted(self.resident)}{pool})")


def control_pools(is_control, context) -> list[np.ndarray]:
    """The control cells (row indices) of each covariate context ``0 .. max(context)``; a
    context without controls gets the controls of all contexts. Raises when there are no
    control cells at all (the alignment term needs them)."""
    controls = np.flatnonzero(is_control)
    if controls.size == 0:
        raise CausalZooError(
            "alignment > 0 needs control cells to align to, and none were found; set "
            "alignment=0."
        )
    context = np.asarray(context)
    pools = [controls[context[controls] == c] for c in range(int(context.max()) + 1)]
    # A context without controls aligns to the controls of all contexts.
    return [pool if pool.size else controls for pool in pools]


def control_batch_fn(
    names: Sequence[str] = ("x", "design", "covariates", "library_size"),
    *,
    context_key: str = "context",
    pool_key: str = "x_control_pool",
    control_key: str = "x_control",
) -> Callable:
    """A ``batch_fn`` for :func:`~causalzoo.inference.fit_svi` on a source made by
    :meth:`CellSource.with_controls`: the minibatch's ``names``, plus ``control_key``, for
    each cell a pool cell of its context chosen uniformly at random.

    Since every pool cell is a uniform draw from its context's controls, so is each pairing:
    the same distribution as pairing with any control of the context in the whole data.
    """
    import jax  # the data layer imports jax only where a batch function needs it

    names = tuple(names)

    def batch_fn(key, idx, data):
        batch = {k: data[k][idx] for k in names}
        pool = data[pool_key]
        pick = jax.random.randint(key, idx.shape, 0, pool.shape[1])
        batch[control_key] = pool[data[context_key][idx], pick]
        return batch

    return batch_fn


class _Feed:
    """Chunks for the engine, the next one read in a background thread."""

    def __init__(self, source: CellSource, seed: list[int], put: Callable[[dict], Any]):
        self._source, self._seed, self._put = source, seed, put
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="causalzoo-prefetch")
                      if source.prefetch else None)
        self._pending: dict[int, Future] = {}
        self._last: tuple[int, Any] | None = None

    def _load(self, index: int) -> Any:
        return self._put(self._source.chunk(index, self._seed))

    def get(self, index: int, more: bool = True) -> Any:
        """Chunk ``index``, on the device; with ``more``, start reading ``index + 1``."""
        if self._last is not None and self._last[0] == index:
            value = self._last[1]
            if more and self._pool is not None and index + 1 not in self._pending:
                self._pending[index + 1] = self._pool.submit(self._load, index + 1)
            return value
        pending = self._pending.pop(index, None)
        for other in self._pending.values():
            other.cancel()
        self._pending = {}
        value = pending.result() if pending is not None else self._load(index)
        if more and self._pool is not None:
            self._pending[index + 1] = self._pool.submit(self._load, index + 1)
        self._last = (index, value)
        return value

    def close(self) -> None:
        """Stop prefetching (waits for a read in progress, so the file can be closed)."""
        for pending in self._pending.values():
            pending.cancel()
        self._pending, self._last = {}, None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- AnnData on disk


def is_backed(adata: Any) -> bool:
    """Whether ``adata`` is an AnnData opened with ``backed="r"`` (or ``"r+"``)."""
    return bool(getattr(adata, "isbacked", False))


def checked_on_disk(matrix: Any, check_block, *, rows_per_read: int | None = None
                    ) -> tuple[BackedRows, np.ndarray]:
    """An on-disk matrix left on disk, after one pass over it a block of rows at a time
    (never the whole matrix in memory): ``check_block(start, stop, stored, dense)`` sees each
    block as the matrix returns it (dense or sparse) and as ``float32``, and may raise.

    Returns
    -------
    BackedRows, numpy.ndarray
        The rows (read when sliced) and their sums (``float32``, summed as a dense
        ``x.sum(-1)`` would), computed in the same pass.
    """
    rows_per_read = rows_per_read or _READ_ROWS
    n = int(matrix.shape[0])
    sums = np.empty(n, np.float32)
    for a in range(0, n, rows_per_read):
        b = min(a + rows_per_read, n)
        piece = matrix[a:b]
        dense = (piece.tocsr().astype(np.float32).toarray() if sp.issparse(piece)
                 else np.asarray(piece, dtype=np.float32))
        check_block(a, b, piece, dense)
        sums[a:b] = dense.sum(-1)
    return BackedRows(matrix), sums


def row_sums(matrix: Any, *, rows_per_read: int | None = None) -> np.ndarray:
    """Per-row sums (``float32``) of an on-disk or in-memory matrix, read a block at a time."""
    rows_per_read = rows_per_read or _READ_ROWS
    n = int(matrix.shape[0])
    out = np.empty(n, np.float32)
    for a in range(0, n, rows_per_read):
        piece = matrix[a:min(a + rows_per_read, n)]
        out[a:a + piece.shape[0]] = np.asarray(piece.sum(axis=1, dtype=np.float64)).ravel()
    return out


def check_matrix_chunked(
    matrix: Any,
    *,
    count_data: bool,
    where: str = "adata.X",
    available_layers: Sequence[str] = (),
    obs_names: Sequence[Any] | None = None,
    var_names: Sequence[Any] | None = None,
    rows_per_read: int | None = None,
) -> np.ndarray:
    """:func:`causalzoo.data.validation.check_count_matrix` one block of rows at a time, so an
    on-disk matrix is validated without being loaded (the cell named in an error is the right
    one; its row number counts from the start of its block).

    Returns
    -------
    numpy.ndarray
        The row sums (``float32``), computed in the same pass.
    """
    from . import validation as _v

    rows_per_read = rows_per_read or _READ_ROWS
    n = int(matrix.shape[0])
    sums = np.empty(n, np.float32)
    for a in range(0, n, rows_per_read):
        b = min(a + rows_per_read, n)
        piece = matrix[a:b]
        sums[a:b] = np.asarray(piece.sum(axis=1, dtype=np.float64)).ravel()
        _v.check_count_matrix(
            piece,
            count_data=count_data,
            where=f"{where} (rows {a}:{b})",
            available_layers=available_layers,
            obs_names=None if obs_names is None else obs_names[a:b],
            var_names=var_names,
        )
    return sums


class BackedRows:
    """Rows of an on-disk matrix that read as a dense ``float32`` array when sliced.

    ``rows[idx]`` with an index array selects cells (still on disk); ``rows[a:b]`` reads
    them. It lets code written for a dense ``x`` (encoding cells in fixed-size chunks) run on
    a backed AnnData without loading it.
    """

    def __init__(self, matrix: Any, rows: np.ndarray | None = None) -> None:
        self.matrix = matrix
        self.rows = np.arange(matrix.shape[0]) if rows is None else np.asarray(rows, np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.rows.size), int(self.matrix.shape[1]))

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            wanted = self.rows[key]
            order = np.argsort(wanted, kind="stable")
            dense = CellSource(self.matrix, chunk_cells=1, prefetch=False).read(wanted[order])
            out = np.empty_like(dense["x"])
            out[order] = dense["x"]
            return out
        return BackedRows(self.matrix, self.rows[np.asarray(key)])


def anndata_source(
    adata: anndata.AnnData,
    registry: AnnDataRegistry,
    *,
    chunk_cells: int | None = None,
    block_cells: int = 256,
    prefetch: bool = True,
    names: Sequence[str] = ("design", "covariates", "library_size"),
) -> tuple[CellSource, dict[str, Any]]:
    """A :class:`CellSource` over a (backed) AnnData set up with ``setup_anndata``.

    The expression matrix is read a block at a time: validated, summed into library sizes and
    later streamed; it is never loaded whole.

    Parameters
    ----------
    adata, registry
        A set-up AnnData, typically ``anndata.read_h5ad(path, backed="r")``, and its registry.
    chunk_cells, block_cells, prefetch
        See :class:`CellSource`.
    names
        The per-cell arrays (of :func:`causalzoo.data.extract_arrays`) streamed with ``x``.

    Returns
    -------
    source : CellSource
    arrays : dict
        The arrays of :func:`~causalzoo.data.extract_arrays`, with ``x`` a
        :class:`BackedRows` view instead of a dense matrix.
    """
    from .anndata import _layer_names, _where, extract_arrays, get_counts

    arrays = extract_arrays(adata, registry, counts=False)
    matrix = get_counts(adata, registry.layer)
    # one pass over the file: validated and summed a block at a time
    arrays["library_size"] = check_matrix_chunked(
        matrix, count_data=registry.count_data, where=_where(registry.layer),
        available_layers=_layer_names(adata), obs_names=adata.obs_names,
        var_names=adata.var_names,
    )
    arrays["x"] = BackedRows(matrix)
    source = CellSource(matrix, {k: arrays[k] for k in names}, chunk_cells=chunk_cells,
                        block_cells=block_cells, prefetch=prefetch)
    return source, arrays
