"""Checks on user data that run before any model compiles.

Each check raises :class:`~causalzoo.CausalZooError` with the problem, where it is (key, cell,
gene) and the fix. Checks on the expression matrix look only at the stored values of a sparse
matrix (``.data``), so they cost one pass over the non-zeros; locating the first offending
entry (for the message) is only done once something is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import CausalZooError, check_bool

__all__ = [
    "check_control_present",
    "check_count_matrix",
    "check_covariate_column",
    "check_gene_names",
    "check_nonempty",
    "check_obs_keys",
    "check_perturbation_column",
    "check_setup_arguments",
    "check_time_column",
    "check_unique_var_names",
]

# Formats whose ``.data`` holds exactly the stored entries; DIA pads its diagonals and
# LIL/DOK keep Python containers, so those are converted to CSR before looking at values.
_DATA_FORMATS = frozenset({"csr", "csc", "coo", "bsr"})


def _stored_values(matrix: Any) -> np.ndarray:
    if sp.issparse(matrix):
        if matrix.format not in _DATA_FORMATS:
            matrix = matrix.tocsr()
        return np.asarray(matrix.data).ravel()
    return np.asarray(matrix).ravel()


def _first_entry(
    matrix: Any, predicate: Callable[[np.ndarray], np.ndarray]
) -> tuple[int, int, Any]:
    """Row, column and value of the first stored entry where ``predicate`` holds."""
    if sp.issparse(matrix):
        csr = matrix.tocsr()
        hit = int(np.flatnonzero(predicate(csr.data))[0])
        row = int(np.searchsorted(csr.indptr, hit, side="right") - 1)
        return row, int(csr.indices[hit]), csr.data[hit]
    dense = np.asarray(matrix)
    hit = int(np.flatnonzero(predicate(dense).ravel())[0])
    row, col = np.unravel_index(hit, dense.shape)
    return int(row), int(col), dense[row, col]


def _name(names: Sequence[Any] | None, i: int) -> str:
    return f" ({str(names[i])!r})" if names is not None and i < len(names) else ""


def _preview(values: Sequence[Any], k: int = 10) -> str:
    values = list(values)
    shown = ", ".join(repr(str(v)) for v in values[:k])
    return shown + (f", ... ({len(values)} in all)" if len(values) > k else "")


def check_setup_arguments(
    perturbation_key: Any, covariate_keys: Any, count_data: Any
) -> tuple[str, ...]:
    """Check the keyword arguments of ``setup_anndata``; return the covariate keys as a tuple.

    Examples
    --------
    >>> check_setup_arguments("perturbation", ["cell_type"], True)
    ('cell_type',)
    """
    if not isinstance(perturbation_key, str):
        raise CausalZooError(
            f"perturbation_key={perturbation_key!r} is not a string; pass an adata.obs column name."
        )
    if isinstance(covariate_keys, str) or not isinstance(covariate_keys, Sequence):
        raise CausalZooError(
            f"covariate_keys={covariate_keys!r} is not a sequence of column names; pass e.g. "
            "covariate_keys=('cell_type',), or () for none."
        )
    keys = tuple(covariate_keys)
    if any(not isinstance(k, str) for k in keys):
        raise CausalZooError(f"covariate_keys={keys!r} must hold adata.obs column names (strings).")
    if len(set(keys)) != len(keys) or perturbation_key in keys:
        raise CausalZooError(
            f"covariate_keys={list(keys)!r} repeats a column or contains the perturbation_key "
            f"{perturbation_key!r}; list each covariate column once and keep the perturbation "
            "column out of it."
        )
    check_bool("count_data", count_data)
    return keys


def check_gene_names(var_names: Sequence[Any], expected: Sequence[str]) -> None:
    """Raise unless the genes equal ``expected`` in the same order, saying how they differ.

    Examples
    --------
    >>> check_gene_names(["A", "B"], ("A", "B"))
    """
    genes = [str(g) for g in var_names]
    expected = list(expected)
    if genes == expected:
        return
    have, want = set(genes), set(expected)
    missing = [g for g in expected if g not in have]
    extra = [g for g in genes if g not in want]
    if not missing and not extra:
        detail = "the same genes in a different order"
    else:
        detail = (
            f"{len(missing)} of the model's {len(expected)} genes are missing "
            f"[{_preview(missing, 5)}] and {len(extra)} gene(s) are not the model's "
            f"[{_preview(extra, 5)}]"
        )
    raise CausalZooError(
        f"The AnnData's genes do not match the set-up ({len(genes)} genes vs {len(expected)}: "
        f"{detail}). Subset and reorder it to the model's genes, e.g. "
        "adata = adata[:, list(registry.gene_names)].copy()."
    )


def check_nonempty(adata: Any) -> None:
    """Raise if the AnnData has no cells or no genes.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> check_nonempty(anndata.AnnData(np.ones((2, 3))))
    """
    n_obs, n_vars = adata.shape
    if n_obs == 0 or n_vars == 0:
        raise CausalZooError(
            f"The AnnData is empty ({n_obs} cells x {n_vars} genes); a model needs at least one "
            "cell and one gene. Check the filtering or subsetting that produced it."
        )


def check_obs_keys(adata: Any, keys: Sequence[str], role: str = "column") -> None:
    """Raise if a key is not a column of ``adata.obs``, listing the available columns.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.ones((1, 1)), obs=pd.DataFrame({"perturbation": ["A"]}, index=["c"]))
    >>> check_obs_keys(a, ["perturbation"], role="perturbation_key")
    """
    for key in keys:
        if key not in adata.obs.columns:
            raise CausalZooError(
                f"{role}={key!r} is not a column of adata.obs. Available columns: "
                f"[{_preview(adata.obs.columns, 30)}]. Pass the name of the column that holds it."
            )


def _check_no_missing(series: pd.Series, key: str, fix: str) -> None:
    missing = series.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise CausalZooError(
            f"adata.obs[{key!r}] has {int(missing.sum())} missing value(s) (NaN/None; first at "
            f"row {row}{_name(series.index, row)}). {fix}"
        )


def check_perturbation_column(adata: Any, key: str) -> None:
    """Raise if the perturbation column has missing values.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.ones((1, 1)), obs=pd.DataFrame({"p": ["control"]}, index=["c"]))
    >>> check_perturbation_column(a, "p")
    """
    _check_no_missing(
        adata.obs[key],
        key,
        "Every cell needs a condition label: label unperturbed cells with the control label "
        "or drop the unlabelled cells (e.g. adata = adata[adata.obs[key].notna()].copy()).",
    )


def check_covariate_column(adata: Any, key: str) -> None:
    """Raise if a covariate column has missing values or is continuous (float).

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.ones((1, 1)), obs=pd.DataFrame({"cell_type": ["NK"]}, index=["c"]))
    >>> check_covariate_column(a, "cell_type")
    """
    series = adata.obs[key]
    _check_no_missing(
        series,
        key,
        "Fill them with an explicit category (e.g. 'unknown') or drop those cells.",
    )
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = dtype.categories.dtype
    if pd.api.types.is_float_dtype(dtype) or pd.api.types.is_complex_dtype(dtype):
        raise CausalZooError(
            f"Covariate adata.obs[{key!r}] holds floating-point values; covariates are "
            "categorical (one-hot encoded). Bin or convert it to strings first, e.g. "
            f"adata.obs[{key!r}] = adata.obs[{key!r}].astype(str), or leave it out of "
            "covariate_keys."
        )


def check_control_present(
    adata: Any, key: str, is_control: np.ndarray, control: Sequence[str]
) -> None:
    """Raise if no cell carries a control label, listing the column's most frequent values.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.ones((1, 1)), obs=pd.DataFrame({"p": ["ctrl"]}, index=["c"]))
    >>> check_control_present(a, "p", np.array([True]), ["ctrl"])
    """
    if not np.any(is_control):
        top = adata.obs[key].value_counts().head(8)
        shown = ", ".join(f"{str(v)!r} ({n} cells)" for v, n in top.items())
        raise CausalZooError(
            f"No cell in adata.obs[{key!r}] has the control label {list(control)!r}. The most "
            f"frequent values are: {shown}. Pass control=<the label of unperturbed cells>, "
            "e.g. control='ctrl' or control=('control', 'non-targeting')."
        )


def check_time_column(adata: Any, key: Any) -> np.ndarray:
    """Validate a time-point column of ``adata.obs`` and return its values as float64.

    A time label must be present (the key exists, no cell lacks a value), numeric (numbers,
    or a categorical whose categories are numbers), finite and ``>= 0`` (time since the start
    of the experiment, e.g. hours).

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.ones((2, 1)), obs=pd.DataFrame({"hours": [0, 24]}, index=["a", "b"]))
    >>> check_time_column(a, "hours").tolist()
    [0.0, 24.0]
    """
    if not isinstance(key, str):
        raise CausalZooError(
            f"time_key={key!r} must be a string, the adata.obs column with each cell's time point."
        )
    check_obs_keys(adata, [key], role="time_key")
    series = adata.obs[key]
    _check_no_missing(
        series,
        key,
        "Every cell needs its time point: fill the missing ones or drop those cells "
        f"(adata = adata[adata.obs[{key!r}].notna()].copy()).",
    )
    values = np.asarray(series.astype(object).to_numpy())
    kind = pd.api.types.infer_dtype(values, skipna=False)
    if kind not in ("integer", "floating", "mixed-integer-float", "decimal"):
        numeric_kind = {"integer", "floating", "decimal"}
        row = next(
            (i for i, v in enumerate(values)
             if pd.api.types.infer_dtype([v]) not in numeric_kind),
            0,
        )
        raise CausalZooError(
            f"adata.obs[{key!r}] holds non-numeric time labels (e.g. {values[row]!r} at row "
            f"{row}{_name(series.index, row)}); time points must be numbers such as hours "
            f"since the start. Convert them, e.g. adata.obs[{key!r}] = "
            f"adata.obs[{key!r}].astype(str).str.rstrip('h').astype(float)."
        )
    numeric = values.astype(np.float64)
    if not np.isfinite(numeric).all():
        row = int(np.flatnonzero(~np.isfinite(numeric))[0])
        raise CausalZooError(
            f"adata.obs[{key!r}] has an infinite time label ({numeric[row]} at row "
            f"{row}{_name(series.index, row)}); time points must be finite numbers."
        )
    if (numeric < 0).any():
        row = int(np.flatnonzero(numeric < 0)[0])
        raise CausalZooError(
            f"adata.obs[{key!r}] has {int((numeric < 0).sum())} negative time label(s) "
            f"(first: {numeric[row]:g} at row {row}{_name(series.index, row)}); time points "
            "are times since the start of the experiment and must be >= 0. Shift them, e.g. "
            f"adata.obs[{key!r}] -= adata.obs[{key!r}].min()."
        )
    return numeric


def check_unique_var_names(var_names: Sequence[Any]) -> None:
    """Raise if gene names repeat, since genes are matched to a model by name.

    Examples
    --------
    >>> check_unique_var_names(["A", "B"])
    """
    index = pd.Index(var_names)
    if index.has_duplicates:
        dups = index[index.duplicated()].unique()
        raise CausalZooError(
            f"adata.var_names has {len(dups)} duplicated gene name(s) [{_preview(dups, 5)}]; "
            "genes are matched to the model by name. Call adata.var_names_make_unique() first."
        )


def check_count_matrix(
    matrix: Any,
    *,
    count_data: bool,
    where: str = "adata.X",
    available_layers: Sequence[str] = (),
    obs_names: Sequence[Any] | None = None,
    var_names: Sequence[Any] | None = None,
) -> None:
    """Validate the expression matrix: finite, non-negative and, for counts, integer-valued.

    Parameters
    ----------
    matrix
        Dense ``numpy.ndarray`` or any ``scipy.sparse`` matrix/array (cells x genes).
    count_data
        If true, also require integer values and no cell with zero total counts.
    where
        How the user refers to the matrix (``"adata.X"``, ``"adata.layers['counts']"``).
    available_layers
        Layer names of the AnnData, used to suggest a counts layer.
    obs_names, var_names
        Cell and gene names, used to point at the offending entry.

    Raises
    ------
    CausalZooError
        For an unsupported matrix type or dtype, NaN/inf, values beyond the float32 range,
        negative values, non-integer values
        when ``count_data`` is true, or cells with zero total counts when ``count_data`` is true.

    Examples
    --------
    >>> import numpy as np
    >>> check_count_matrix(np.array([[1.0, 0.0], [2.0, 3.0]]), count_data=True)
    """
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        raise CausalZooError(
            f"{where} is a {type(matrix).__name__}; causalzoo reads an in-memory numpy array or "
            "scipy.sparse matrix. For a backed or lazy AnnData, load it first with "
            "adata = adata.to_memory()."
        )
    dtype = matrix.dtype
    if not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_
    ):
        raise CausalZooError(
            f"{where} has dtype {dtype}; expected integer or floating-point expression values. "
            f"Convert it, e.g. {where} = {where}.astype(np.float32)."
        )
    values = _stored_values(matrix)

    def at(pred: Callable[[np.ndarray], np.ndarray]) -> str:
        row, col, value = _first_entry(matrix, pred)
        return (
            f"first at cell {row}{_name(obs_names, row)}, gene {col}{_name(var_names, col)}: "
            f"value {value.item() if hasattr(value, 'item') else value!r}"
        )

    if np.issubdtype(dtype, np.floating) and not np.isfinite(values).all():
        n_bad = int(np.count_nonzero(~np.isfinite(values)))
        raise CausalZooError(
            f"{where} contains {n_bad} NaN or infinite value(s) ({at(lambda d: ~np.isfinite(d))}). "
            "Expression values must be finite: recompute them from the raw counts, or drop the "
            "affected cells/genes."
        )
    limit = float(np.finfo(np.float32).max)
    if values.size and dtype != np.bool_ and np.abs(values).max() > limit:
        n_bad = int(np.count_nonzero(np.abs(values) > limit))
        raise CausalZooError(
            f"{where} contains {n_bad} value(s) beyond the float32 range "
            f"({at(lambda d: np.abs(d) > limit)}); models compute in float32, where these "
            "become infinite. Check how the matrix was produced (raw counts are far smaller)."
        )
    if dtype != np.bool_ and values.size and values.min() < 0:
        n_bad = int(np.count_nonzero(values < 0))
        raise CausalZooError(
            f"{where} contains {n_bad} negative value(s) ({at(lambda d: d < 0)}). Expression "
            "values must be >= 0; scaled or centred data (e.g. after sc.pp.scale) cannot be "
            "modelled. Pass the raw counts (layer=...) or non-negative normalised values."
        )
    if count_data and np.issubdtype(dtype, np.floating):
        frac = values != np.floor(values)
        if frac.any():
            others = [name for name in available_layers if name is not None]
            if "counts" in others and where != "adata.layers['counts']":
                hint = 'Use the raw counts in that AnnData\'s layer: layer="counts". '
            elif others:
                hint = (
                    f"If one of the layers [{_preview(others)}] holds raw counts, pass "
                    "layer=<its name>. "
                )
            else:
                hint = "Pass the raw UMI counts (e.g. from adata.raw or a 'counts' layer). "
            raise CausalZooError(
                f"{where} contains {int(frac.sum())} non-integer value(s) "
                f"({at(lambda d: d != np.floor(d))}) but count_data=True: it looks "
                f"normalised (log1p, CPM or FPKM), not like raw counts. {hint}To model these "
                'values as they are, set count_data=False and use likelihood="gaussian".'
            )
    if count_data:
        totals = np.asarray(matrix.sum(axis=1, dtype=np.float64)).ravel()
        huge = np.flatnonzero(totals > limit)
        if huge.size:
            first = int(huge[0])
            raise CausalZooError(
                f"{huge.size} cell(s) in {where} have a total count beyond the float32 range "
                f"(first: cell {first}{_name(obs_names, first)}, {totals[first]:.3g}); the "
                "library size would be infinite. These are not raw counts: check the matrix."
            )
        empty = np.flatnonzero(totals == 0)
        if empty.size:
            first = int(empty[0])
            raise CausalZooError(
                f"{empty.size} of {totals.size} cells in {where} have zero total counts (first: "
                f"cell {first}{_name(obs_names, first)}); a count likelihood needs a positive "
                "library size. Remove them, e.g. sc.pp.filter_cells(adata, min_counts=1) on the "
                "genes you model (then call setup_anndata again)."
            )
