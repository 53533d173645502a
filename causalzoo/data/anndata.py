"""The AnnData seam: register an AnnData once, then turn it (or new data like it) into arrays.

:func:`setup_anndata` validates the data, builds the perturbation and covariate vocabularies
and stores them, as plain JSON-able data, in ``adata.uns["causalzoo"]["setup"]``.
:func:`extract_arrays` turns any AnnData that matches a registry (the training data, or new
cells at prediction time) into the numpy arrays the models consume. Models never import
anndata; everything AnnData-specific stays here. Nothing here writes to ``adata.X`` or layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import CausalZooError, check_int
from . import validation as _v
from .perturbations import _parse_labels, _unknown_perturbation_error, normalize_control

if TYPE_CHECKING:
    import anndata

__all__ = [
    "AnnDataRegistry",
    "densify",
    "encode_covariates",
    "extract_arrays",
    "get_counts",
    "get_registry",
    "setup_anndata",
]

_SCHEMA_VERSION = 1
_SEP = "+"


def _str_tuple(values: Any) -> tuple[str, ...]:
    # h5ad round trips turn lists into numpy arrays (an empty one as float64).
    return tuple(str(v) for v in np.asarray(values, dtype=object).ravel()) if len(values) else ()


@dataclass(frozen=True, eq=False)
class AnnDataRegistry:
    """What :func:`setup_anndata` recorded about an AnnData: keys, vocabularies and genes.

    It is plain data: :meth:`to_dict` gives a JSON-serialisable dict and :meth:`from_dict`
    rebuilds it, so a saved model carries it without pickle.

    Attributes
    ----------
    layer
        The layer holding the expression values, or ``None`` for ``adata.X``.
    perturbation_key
        The ``adata.obs`` column with condition labels (``"A"``, ``"A+B"``, control).
    control
        The control label(s); the first is the canonical control condition.
    covariate_keys
        The ``adata.obs`` columns one-hot encoded as covariates, in order.
    perturbation_vocabulary
        The single perturbations, one design column each, sorted.
    covariate_categories
        For each covariate key, its categories in one-hot column order (read-only mapping).
    gene_names
        The genes, in the order of the expression matrix.
    count_data
        Whether the values are raw counts (integer, positive library size).
    n_cells
        The number of cells at set-up.

    Examples
    --------
    >>> reg = AnnDataRegistry(
    ...     None, "perturbation", ("control",), (), ("A", "B"), {}, ("g1",), True, 3
    ... )
    >>> AnnDataRegistry.from_dict(reg.to_dict()) == reg
    True
    """

    layer: str | None
    perturbation_key: str
    control: tuple[str, ...]
    covariate_keys: tuple[str, ...]
    perturbation_vocabulary: tuple[str, ...]
    covariate_categories: Mapping[str, tuple[str, ...]]
    gene_names: tuple[str, ...]
    count_data: bool
    n_cells: int = field(default=0)

    def __post_init__(self) -> None:
        # Normalise containers so that equality does not depend on list-vs-tuple and the
        # registry cannot be mutated through a shared dict.
        set_ = object.__setattr__
        set_(self, "control", _str_tuple(self.control))
        set_(self, "covariate_keys", _str_tuple(self.covariate_keys))
        set_(self, "perturbation_vocabulary", _str_tuple(self.perturbation_vocabulary))
        set_(self, "gene_names", _str_tuple(self.gene_names))
        cats = {str(k): _str_tuple(v) for k, v in dict(self.covariate_categories).items()}
        if set(cats) != set(self.covariate_keys):
            raise CausalZooError(
                f"covariate_categories has keys {sorted(cats)} but covariate_keys is "
                f"{list(self.covariate_keys)}; each covariate key needs its categories."
            )
        set_(
            self,
            "covariate_categories",
            MappingProxyType({k: cats[k] for k in self.covariate_keys}),
        )
        set_(self, "count_data", bool(self.count_data))
        set_(self, "n_cells", int(self.n_cells))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AnnDataRegistry):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    # Holds a mapping, so it is deliberately unhashable (compare with ==, store to_dict()).
    __hash__ = None  # type: ignore[assignment]

    @property
    def n_perturbations(self) -> int:
        """The number of single perturbations (design columns)."""
        return len(self.perturbation_vocabulary)

    @property
    def n_covariates(self) -> int:
        """The total one-hot width over all covariate keys."""
        return sum(len(c) for c in self.covariate_categories.values())

    @property
    def n_genes(self) -> int:
        """The number of genes."""
        return len(self.gene_names)

    def to_dict(self) -> dict[str, Any]:
        """Return the registry as a JSON-serialisable dict of plain lists, strings and numbers."""
        return {
            "schema_version": _SCHEMA_VERSION,
            "layer": self.layer,
            "perturbation_key": self.perturbation_key,
            "control": list(self.control),
            "covariate_keys": list(self.covariate_keys),
            "perturbation_vocabulary": list(self.perturbation_vocabulary),
            "covariate_categories": {k: list(v) for k, v in self.covariate_categories.items()},
            "gene_names": list(self.gene_names),
            "count_data": self.count_data,
            "n_cells": self.n_cells,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnnDataRegistry:
        """Rebuild a registry from :meth:`to_dict` output (also after an h5ad round trip)."""
        required = [
            "layer",
            "perturbation_key",
            "control",
            "covariate_keys",
            "perturbation_vocabulary",
            "covariate_categories",
            "gene_names",
            "count_data",
            "n_cells",
        ]
        missing = [k for k in required if k not in d]
        if missing:
            raise CausalZooError(
                f"The causalzoo set-up record lacks {missing}; it was not written by this "
                "version of causalzoo or was edited. Call setup_anndata(adata, ...) again."
            )
        version = int(d.get("schema_version", _SCHEMA_VERSION))
        if version > _SCHEMA_VERSION:
            raise CausalZooError(
                f"The set-up record has schema_version={version}, newer than this causalzoo "
                f"understands ({_SCHEMA_VERSION}); upgrade causalzoo."
            )
        layer = d["layer"]
        return cls(
            layer=None if layer is None else str(layer),
            perturbation_key=str(d["perturbation_key"]),
            control=d["control"],
            covariate_keys=d["covariate_keys"],
            perturbation_vocabulary=d["perturbation_vocabulary"],
            covariate_categories=dict(d["covariate_categories"]),
            gene_names=d["gene_names"],
            count_data=bool(d["count_data"]),
            n_cells=int(d["n_cells"]),
        )


def _layer_names(adata: anndata.AnnData) -> list[str]:
    # anndata >= 0.13 lists ``None`` (meaning X) among the layer keys.
    return [k for k in adata.layers if k is not None]


def get_counts(adata: anndata.AnnData, layer: str | None) -> Any:
    """Return the expression matrix from ``adata.X`` (``layer=None``) or ``adata.layers[layer]``.

    The matrix is returned as stored (dense array or any scipy.sparse format), not copied.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> get_counts(anndata.AnnData(np.ones((2, 3), dtype=np.float32)), None).shape
    (2, 3)
    """
    if layer is None:
        if adata.X is None:
            raise CausalZooError(
                f"adata.X is None; pass layer=<name> to read the expression values from a layer "
                f"(available layers: {_layer_names(adata)})."
            )
        return adata.X
    if not isinstance(layer, str):
        raise CausalZooError(
            f"layer={layer!r} is not a string; pass a layer name or None for adata.X."
        )
    names = _layer_names(adata)
    if layer not in names:
        raise CausalZooError(
            f"layer={layer!r} is not in adata.layers (available layers: {names}). Pass one of "
            "these, or layer=None to use adata.X."
        )
    return adata.layers[layer]


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _check_matrix(adata: anndata.AnnData, layer: str | None, count_data: bool) -> Any:
    matrix = get_counts(adata, layer)
    from .streaming import check_matrix_chunked, is_backed

    # A backed (on-disk) matrix is validated a block of rows at a time, never loaded whole.
    check = check_matrix_chunked if is_backed(adata) else _v.check_count_matrix
    check(
        matrix,
        count_data=count_data,
        where=_where(layer),
        available_layers=_layer_names(adata),
        obs_names=adata.obs_names,
        var_names=adata.var_names,
    )
    return matrix


def _covariate_strings(adata: anndata.AnnData, key: str) -> tuple[np.ndarray, list[str]]:
    """Row codes and distinct values (as strings) of a covariate column."""
    series = adata.obs[key]
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy().astype(np.int64)
        uniques = [str(c) for c in series.cat.categories]
    else:
        raw_codes, raw = pd.factorize(series.to_numpy(dtype=object))
        codes = raw_codes.astype(np.int64)
        uniques = [str(c) for c in raw]
    return codes, uniques


def setup_anndata(
    adata: anndata.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str | Sequence[str] = "control",
    layer: str | None = None,
    covariate_keys: Sequence[str] = (),
    count_data: bool = True,
) -> AnnDataRegistry:
    """Validate an AnnData, build its vocabularies and record them in ``adata.uns``.

    Parameters
    ----------
    adata
        Cells x genes. It is not modified except for ``adata.uns["causalzoo"]["setup"]``.
    perturbation_key
        The ``adata.obs`` column of condition labels: a control label, ``"A"`` or ``"A+B"``.
    control
        The control label(s) in that column (``"ctrl"`` slots as in ``"A+ctrl"`` are handled).
    layer
        The layer with the expression values, or ``None`` for ``adata.X``.
    covariate_keys
        Categorical ``adata.obs`` columns (cell type, batch, ...) to one-hot encode.
    count_data
        Whether the values are raw counts (required by the NB/ZINB/Poisson likelihoods).

    Returns
    -------
    AnnDataRegistry
        The registry, also stored as a dict in ``adata.uns["causalzoo"]["setup"]``.

    Raises
    ------
    CausalZooError
        For empty data, missing keys, missing or malformed labels, absent control cells,
        duplicated gene names, or invalid expression values (see :mod:`.validation`).

    Examples
    --------
    >>> import causalzoo as cz
    >>> adata = cz.datasets.norman2019_subset()
    >>> reg = setup_anndata(adata, perturbation_key="perturbation", control="control")
    >>> reg.n_genes, reg.n_perturbations
    (500, 31)
    """
    controls = normalize_control(control)
    cov_keys = _v.check_setup_arguments(perturbation_key, covariate_keys, count_data)
    if getattr(adata, "is_view", False):
        # Writing uns on a view silently turns it into a copy, and the caller's object would
        # then not carry the set-up; ask for the copy explicitly instead.
        raise CausalZooError(
            "setup_anndata got a view of an AnnData (e.g. adata[mask]); the set-up is stored in "
            "adata.uns, which a view cannot hold. Make it a real object first: "
            "adata = adata[mask].copy()."
        )
    _v.check_nonempty(adata)
    _v.check_obs_keys(adata, [perturbation_key], role="perturbation_key")
    _v.check_obs_keys(adata, cov_keys, role="covariate key")
    _v.check_unique_var_names(adata.var_names)
    _v.check_perturbation_column(adata, perturbation_key)
    for key in cov_keys:
        _v.check_covariate_column(adata, key)

    codes, _, parsed, _ = _parse_labels(
        adata.obs[perturbation_key],
        controls,
        _SEP,
        what=f"adata.obs[{perturbation_key!r}]",
        row_names=adata.obs_names,
    )
    used = np.unique(codes)
    is_control = np.array([len(parsed[i]) == 0 for i in range(len(parsed))], dtype=bool)[codes]
    _v.check_control_present(adata, perturbation_key, is_control, controls)
    vocabulary = sorted({p for i in used for p in parsed[i]})

    categories: dict[str, tuple[str, ...]] = {}
    for key in cov_keys:
        cov_codes, uniques = _covariate_strings(adata, key)
        categories[key] = tuple(sorted({uniques[i] for i in np.unique(cov_codes)}))

    _check_matrix(adata, layer, bool(count_data))

    registry = AnnDataRegistry(
        layer=layer,
        perturbation_key=perturbation_key,
        control=controls,
        covariate_keys=cov_keys,
        perturbation_vocabulary=tuple(vocabulary),
        covariate_categories=categories,
        gene_names=tuple(str(g) for g in adata.var_names),
        count_data=bool(count_data),
        n_cells=int(adata.n_obs),
    )
    store = adata.uns.get("causalzoo")
    if not isinstance(store, Mapping):
        store = {}
    adata.uns["causalzoo"] = {**store, "setup": registry.to_dict()}
    return registry


def get_registry(adata: anndata.AnnData) -> AnnDataRegistry:
    """Return the registry that :func:`setup_anndata` stored in ``adata.uns``.

    Examples
    --------
    >>> import causalzoo as cz
    >>> adata = cz.datasets.norman2019_subset()
    >>> _ = setup_anndata(adata)
    >>> get_registry(adata).perturbation_key
    'perturbation'
    """
    store = adata.uns.get("causalzoo")
    if not isinstance(store, Mapping) or "setup" not in store:
        raise CausalZooError(
            "This AnnData has not been set up for causalzoo (no adata.uns['causalzoo']['setup']). "
            "Call cz.SparsePerturbationVAE.setup_anndata(adata, perturbation_key=..., "
            "control=...) first."
        )
    return AnnDataRegistry.from_dict(store["setup"])


def densify(matrix: Any, dtype: Any = np.float32) -> np.ndarray:
    """Return a dense copy of a numpy array or any scipy.sparse matrix/array, as ``dtype``.

    Sparse input of every format (CSR, CSC, COO, LIL, DOK, BSR, DIA; matrix or array
    classes) goes through CSR, the cheapest format to densify. The result never shares memory
    with the input, so callers may modify it freely.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> densify(sp.coo_array(np.eye(2, dtype=np.int64)))
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    if sp.issparse(matrix):
        # CSR is the cheapest format to densify; casting the stored values first avoids a
        # dense temporary in the original (possibly int64/float64) dtype.
        csr = matrix if matrix.format == "csr" else matrix.tocsr()
        return csr.astype(dtype).toarray()
    # Always a copy: the arrays handed to models must never alias adata.X.
    return np.array(matrix, dtype=dtype, copy=True)


def _covariate_codes(adata: anndata.AnnData, registry: AnnDataRegistry) -> np.ndarray:
    n = adata.n_obs
    out = np.zeros((n, len(registry.covariate_keys)), dtype=np.int32)
    for j, key in enumerate(registry.covariate_keys):
        _v.check_covariate_column(adata, key)
        codes, uniques = _covariate_strings(adata, key)
        index = {c: i for i, c in enumerate(registry.covariate_categories[key])}
        mapped = np.full(len(uniques), -1, dtype=np.int64)
        for u, value in enumerate(uniques):
            mapped[u] = index.get(value, -1)
        row_codes = mapped[codes]
        bad = np.flatnonzero(row_codes < 0)
        if bad.size:
            value = uniques[codes[bad[0]]]
            raise CausalZooError(
                f"adata.obs[{key!r}] has the value {value!r} ({bad.size} cell(s)), which the "
                f"model was not set up with; valid values: "
                f"[{_v._preview(registry.covariate_categories[key], 20)}]. Include it at "
                "set-up, or drop these cells."
            )
        out[:, j] = row_codes
    return out


def _one_hot(codes: np.ndarray, registry: AnnDataRegistry, dtype: Any) -> np.ndarray:
    n = codes.shape[0]
    out = np.zeros((n, registry.n_covariates), dtype=dtype)
    offset = 0
    for j, key in enumerate(registry.covariate_keys):
        out[np.arange(n), offset + codes[:, j]] = 1
        offset += len(registry.covariate_categories[key])
    return out


def extract_arrays(
    adata: anndata.AnnData,
    registry: AnnDataRegistry,
    *,
    dtype: Any = np.float32,
    counts: bool = True,
) -> dict[str, np.ndarray]:
    """Turn an AnnData that matches ``registry`` into the arrays a model consumes.

    Parameters
    ----------
    adata
        The set-up AnnData or new data with the same genes (same order), perturbation and
        covariate columns, and no perturbation or covariate value unknown to the registry.
    registry
        From :func:`setup_anndata` or :func:`get_registry`.
    dtype
        The floating dtype of ``x``, ``design``, ``covariates`` and ``library_size``.
    counts
        ``False`` leaves out ``x`` and ``library_size`` and does not read the expression
        matrix (for data streamed from disk, :mod:`causalzoo.data.streaming`).

    Returns
    -------
    dict
        ``x`` (n, G) dense values; ``design`` (n, T) multi-hot perturbations; ``covariates``
        (n, C) one-hot, concatenated over ``covariate_keys`` (C may be 0); ``library_size``
        (n,) row sums of ``x``; ``condition`` (n,) canonical condition strings; ``is_control``
        (n,) bool; ``covariate_codes`` (n, K) int32 category indices.

    Examples
    --------
    >>> import causalzoo as cz
    >>> adata = cz.datasets.norman2019_subset()
    >>> arrays = extract_arrays(adata, setup_anndata(adata))
    >>> arrays["x"].shape, arrays["design"].shape
    ((3375, 500), (3375, 31))
    """
    if not isinstance(registry, AnnDataRegistry):
        raise CausalZooError(
            f"registry is a {type(registry).__name__}, not an AnnDataRegistry; pass the value "
            "returned by setup_anndata(adata, ...) or get_registry(adata)."
        )
    _v.check_nonempty(adata)
    _v.check_gene_names(adata.var_names, registry.gene_names)
    key = registry.perturbation_key
    _v.check_obs_keys(adata, [key], role="perturbation_key")
    _v.check_obs_keys(adata, registry.covariate_keys, role="covariate key")
    _v.check_perturbation_column(adata, key)

    codes, uniques, parsed, _ = _parse_labels(
        adata.obs[key],
        registry.control,
        _SEP,
        what=f"adata.obs[{key!r}]",
        row_names=adata.obs_names,
    )
    index = {p: i for i, p in enumerate(registry.perturbation_vocabulary)}
    unique_design = np.zeros((len(parsed), registry.n_perturbations), dtype=dtype)
    present = np.bincount(codes, minlength=len(parsed)) > 0
    for i, parts in enumerate(parsed):
        for p in parts:
            if p not in index:
                if not present[i]:
                    continue
                n_rows = int(np.count_nonzero(codes == i))
                raise _unknown_perturbation_error(
                    p, registry.perturbation_vocabulary, uniques[i], n_rows
                )
            unique_design[i, index[p]] = 1
    unique_condition = np.array(
        [_SEP.join(p) if p else registry.control[0] for p in parsed] or [""], dtype=str
    )
    unique_control = np.array([len(p) == 0 for p in parsed] or [False], dtype=bool)

    cov_codes = _covariate_codes(adata, registry)
    arrays = {
        "design": unique_design[codes],
        "covariates": _one_hot(cov_codes, registry, dtype),
        "condition": unique_condition[codes],
        "is_control": unique_control[codes],
        "covariate_codes": cov_codes,
    }
    if not counts:
        return arrays
    matrix = _check_matrix(adata, registry.layer, registry.count_data)
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        matrix = matrix[:]  # on disk (a backed AnnData): read into memory
    x = densify(matrix, dtype)
    library_size = x.sum(axis=1, dtype=np.float64).astype(dtype)
    return {"x": x, "design": arrays["design"], "covariates": arrays["covariates"],
            "library_size": library_size, **arrays}


def encode_covariates(
    values: Mapping[str, str], registry: AnnDataRegistry, n: int = 1, *, dtype: Any = np.float32
) -> np.ndarray:
    """One-hot encode a covariate context given by name, repeated for ``n`` cells.

    Parameters
    ----------
    values
        One value per covariate key of the registry, e.g. ``{"cell_type": "NK"}``.
    registry
        The registry whose covariate categories define the columns.
    n
        The number of rows.
    dtype
        The dtype of the result.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, registry.n_covariates)``.

    Examples
    --------
    >>> reg = AnnDataRegistry(None, "p", ("control",), ("cell_type",), ("A",),
    ...                       {"cell_type": ("B", "NK")}, ("g",), True, 2)
    >>> encode_covariates({"cell_type": "NK"}, reg, n=2)
    array([[0., 1.],
           [0., 1.]], dtype=float32)
    """
    if not isinstance(values, Mapping):
        raise CausalZooError(
            f"covariates={values!r} is not a mapping; pass a dict such as "
            f"{ {k: registry.covariate_categories[k][0] for k in registry.covariate_keys} }."
        )
    check_int("n", n, meaning="a number of cells")
    unknown = [k for k in values if k not in registry.covariate_keys]
    if unknown:
        raise CausalZooError(
            f"Covariate key(s) {unknown} were not set up; the model's covariate keys are "
            f"{list(registry.covariate_keys)}."
        )
    codes = np.zeros((int(n), len(registry.covariate_keys)), dtype=np.int32)
    for j, key in enumerate(registry.covariate_keys):
        cats = registry.covariate_categories[key]
        if key not in values:
            raise CausalZooError(
                f"No value given for covariate {key!r}; pass one of [{_v._preview(cats, 20)}], "
                f"e.g. covariates={{{key!r}: {cats[0]!r}}}."
            )
        value = values[key]
        if not isinstance(value, str | int | np.integer | bool) or str(value) not in cats:
            raise CausalZooError(
                f"Unknown value {value!r} for covariate {key!r}; valid values: "
                f"[{_v._preview(cats, 20)}]."
            )
        codes[:, j] = cats.index(str(value))
    return _one_hot(codes, registry, dtype)
