"""Parsing of perturbation condition labels such as ``"A+B"`` into sets of single perturbations.

A condition label names the set of perturbations a cell received, joined by ``sep``
(``"KLF1+MAP2K6"``). Order carries no meaning, so ``"B+A"`` and ``"A+B"`` are the same
condition. Control labels (``"control"``, ``"ctrl"``, ...) mean the empty set, and in the
GEARS / CPA format a single perturbation is written ``"A+ctrl"`` or ``"ctrl+A"``, which is
``"A"``.

Labels usually come as a categorical column with a handful of distinct values repeated over
up to millions of cells, so every function here parses each distinct label once and maps the
result back to the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._errors import CausalZooError

__all__ = [
    "build_vocabulary",
    "canonical_condition",
    "design_matrix",
    "normalize_control",
    "parse_perturbation",
]

# Either spelling of "control" marks a control slot inside a GEARS-style combo ("A+ctrl"),
# whichever of the two the user named as the control label.
_GEARS_CONTROL_TOKENS = frozenset({"ctrl", "control"})


def normalize_control(control: str | Sequence[str]) -> tuple[str, ...]:
    """Return the control label(s) as a non-empty tuple of strings, in the order given.

    Parameters
    ----------
    control
        One control label, or a sequence of them.

    Returns
    -------
    tuple of str
        The control labels; the first one is the canonical name of the control condition.

    Examples
    --------
    >>> normalize_control("ctrl")
    ('ctrl',)
    >>> normalize_control(["control", "non-targeting"])
    ('control', 'non-targeting')
    """
    if isinstance(control, str):
        controls: tuple[Any, ...] = (control,)
    elif isinstance(control, Sequence | np.ndarray | pd.Index):
        controls = tuple(control)
    else:
        raise CausalZooError(
            f"control={control!r} is not a string or a sequence of strings; pass the control "
            'label as it appears in the perturbation column, e.g. control="control" or '
            'control=("control", "non-targeting").'
        )
    if not controls:
        raise CausalZooError(
            'control=() names no control label; pass at least one, e.g. control="control".'
        )
    for c in controls:
        if not isinstance(c, str) or not c or c != c.strip():
            raise CausalZooError(
                f"Control label {c!r} is not a non-empty string without surrounding whitespace; "
                'pass it as it appears in the perturbation column, e.g. control="control".'
            )
    if len(set(controls)) != len(controls):
        raise CausalZooError(f"control={controls!r} repeats a label; list each control label once.")
    return tuple(str(c) for c in controls)


def _droppable(controls: tuple[str, ...]) -> frozenset[str]:
    extra = _GEARS_CONTROL_TOKENS if _GEARS_CONTROL_TOKENS & set(controls) else frozenset()
    return frozenset(controls) | extra


def _parse(
    label: Any, controls: tuple[str, ...], drop: frozenset[str], sep: str
) -> tuple[str, ...]:
    if not isinstance(label, str):
        missing = label is None or (np.ndim(label) == 0 and bool(pd.isna(label)))
        kind = "a missing value (NaN/None)" if missing else f"of type {type(label).__name__}"
        raise CausalZooError(
            f"Perturbation label {label!r} is {kind}, not a string; every cell needs a condition "
            f"label such as {controls[0]!r}, 'A' or 'A{sep}B'. Fill or drop these cells first."
        )
    if label in controls:
        return ()
    if not label:
        raise CausalZooError(
            f"Perturbation label '' is empty; label control cells {controls[0]!r} and perturbed "
            f"cells by their perturbation(s), e.g. 'A' or 'A{sep}B'."
        )
    parts = label.split(sep)
    for part in parts:
        if not part:
            raise CausalZooError(
                f"Malformed perturbation label {label!r}: it has an empty part (a leading, "
                f"trailing or doubled {sep!r}); write combinations as 'A{sep}B'."
            )
        if part != part.strip():
            raise CausalZooError(
                f"Malformed perturbation label {label!r}: part {part!r} has stray whitespace; "
                f"remove the spaces (e.g. 'A{sep}B', not 'A {sep} B')."
            )
    if len(set(parts)) != len(parts):
        dup = next(p for p in parts if parts.count(p) > 1)
        raise CausalZooError(
            f"Malformed perturbation label {label!r}: {dup!r} appears more than once; a "
            "condition is a set of perturbations, list each one once."
        )
    return tuple(sorted(p for p in parts if p not in drop))


def parse_perturbation(
    label: str, control: str | Sequence[str] = "control", sep: str = "+"
) -> tuple[str, ...]:
    """Parse a condition label into its sorted tuple of single perturbations.

    Parameters
    ----------
    label
        The condition label, e.g. ``"KLF1"``, ``"MAP2K6+KLF1"``, ``"KLF1+ctrl"`` or a control.
    control
        The control label(s). A control label parses to ``()``. Parts of a combination that
        are control labels are dropped; ``"ctrl"`` and ``"control"`` are both dropped (GEARS
        format) whenever either is a control label.
    sep
        The separator between the perturbations of a combination.

    Returns
    -------
    tuple of str
        The sorted single perturbations; ``()`` for a control cell.

    Raises
    ------
    CausalZooError
        For a non-string or missing label, an empty label or part (``"A++B"``, ``"+A"``),
        stray whitespace (``" A"``, ``"A +B"``) or a repeated perturbation (``"A+A"``).

    Examples
    --------
    >>> parse_perturbation("MAP2K6+KLF1")
    ('KLF1', 'MAP2K6')
    >>> parse_perturbation("KLF1+ctrl", control="ctrl")
    ('KLF1',)
    >>> parse_perturbation("control")
    ()
    """
    controls = normalize_control(control)
    return _parse(label, controls, _droppable(controls), sep)


def canonical_condition(
    label: str, control: str | Sequence[str] = "control", sep: str = "+"
) -> str:
    """Return the canonical spelling of a condition label.

    Perturbations are sorted and joined by ``sep``, GEARS control slots are dropped and every
    control label maps to the first control label.

    Examples
    --------
    >>> canonical_condition("MAP2K6+KLF1")
    'KLF1+MAP2K6'
    >>> canonical_condition("ctrl+KLF1", control="ctrl")
    'KLF1'
    >>> canonical_condition("ctrl", control=("control", "ctrl"))
    'control'
    """
    controls = normalize_control(control)
    parts = _parse(label, controls, _droppable(controls), sep)
    return sep.join(parts) if parts else controls[0]


def _factorize(labels: Iterable[Any]) -> tuple[np.ndarray, list[Any]]:
    """Integer codes per row and the distinct values; a missing value gets its own code."""
    if isinstance(labels, str):
        raise CausalZooError(
            f"Got the single string {labels!r} where one label per cell was expected; pass a "
            f"list, e.g. [{labels!r}]."
        )
    if isinstance(labels, pd.Series) and isinstance(labels.dtype, pd.CategoricalDtype):
        codes = labels.cat.codes.to_numpy().astype(np.int64)
        uniques = list(labels.cat.categories)
    elif isinstance(labels, pd.Categorical):
        codes = np.asarray(labels.codes, dtype=np.int64)
        uniques = list(labels.categories)
    else:
        if isinstance(labels, pd.Series | pd.Index):
            values = labels.to_numpy(dtype=object)
        elif isinstance(labels, np.ndarray):
            values = labels.astype(object, copy=False).ravel()
        else:
            values = np.asarray(list(labels), dtype=object)
        codes, uniq = pd.factorize(values, use_na_sentinel=True)
        codes = codes.astype(np.int64)
        uniques = list(uniq)
    if (codes < 0).any():
        codes = codes.copy()
        codes[codes < 0] = len(uniques)
        uniques.append(float("nan"))
    return codes, uniques


def _parse_labels(
    labels: Iterable[Any],
    control: str | Sequence[str],
    sep: str,
    *,
    what: str = "labels",
    row_names: Sequence[Any] | None = None,
) -> tuple[np.ndarray, list[Any], list[tuple[str, ...]], tuple[str, ...]]:
    """Parse every distinct label once: row codes, distinct labels, their parses, controls.

    A parse error is re-raised with the first row that carries the offending label.
    """
    controls = normalize_control(control)
    drop = _droppable(controls)
    codes, uniques = _factorize(labels)
    parsed: list[tuple[str, ...]] = []
    for i, value in enumerate(uniques):
        try:
            parsed.append(_parse(value, controls, drop, sep))
        except CausalZooError as err:
            hits = np.flatnonzero(codes == i)
            if hits.size == 0:
                # An unused category of a categorical column: harmless, never seen by a model.
                parsed.append(())
                continue
            row = int(hits[0])
            name = f" (cell {str(row_names[row])!r})" if row_names is not None else ""
            raise CausalZooError(
                f"{err} First seen at row {row}{name} of the {what}; {hits.size} row(s) carry "
                "this label."
            ) from None
    return codes, uniques, parsed, controls


def build_vocabulary(
    labels: Iterable[Any], control: str | Sequence[str] = "control", sep: str = "+"
) -> list[str]:
    """Return the sorted unique single perturbations found in ``labels`` (controls excluded).

    Examples
    --------
    >>> build_vocabulary(["control", "B+A", "A", "C+ctrl"], control=("control", "ctrl"))
    ['A', 'B', 'C']
    """
    codes, _, parsed, _ = _parse_labels(labels, control, sep)
    used = np.unique(codes)
    return sorted({p for i in used for p in parsed[i]})


def _check_vocabulary(vocabulary: Sequence[str]) -> dict[str, int]:
    vocab = list(vocabulary)
    index = {v: i for i, v in enumerate(vocab)}
    if len(index) != len(vocab):
        dup = next(v for v in vocab if vocab.count(v) > 1)
        raise CausalZooError(
            f"The perturbation vocabulary lists {dup!r} more than once; build it with "
            "build_vocabulary(labels) so each perturbation has one column."
        )
    return index


def _unknown_perturbation_error(
    name: str, vocabulary: Sequence[str], label: Any, n_rows: int
) -> CausalZooError:
    shown = ", ".join(repr(v) for v in list(vocabulary)[:8])
    more = f", ... ({len(vocabulary)} in all)" if len(vocabulary) > 8 else ""
    return CausalZooError(
        f"Unknown perturbation {name!r} (in condition {label!r}, {n_rows} cell(s)): it is not in "
        f"the vocabulary the model was set up with [{shown}{more}]. A model can only represent "
        "perturbations it saw at training: include cells (or at least the label) with "
        f"{name!r} when calling setup_anndata, or drop these cells."
    )


def design_matrix(
    labels: Iterable[Any],
    vocabulary: Sequence[str],
    control: str | Sequence[str] = "control",
    sep: str = "+",
    dtype: Any = np.float32,
) -> np.ndarray:
    """Return the multi-hot design matrix of the conditions over a perturbation vocabulary.

    Parameters
    ----------
    labels
        One condition label per cell (list, array, Series or categorical).
    vocabulary
        The single perturbations, one column each, in column order.
    control, sep
        As in :func:`parse_perturbation`.
    dtype
        The dtype of the result.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_cells, len(vocabulary))``; row ``n`` has a one in the column of every
        perturbation of cell ``n`` (two ones for ``"A+B"``, none for a control).

    Raises
    ------
    CausalZooError
        If a label is malformed or names a perturbation outside ``vocabulary``.

    Examples
    --------
    >>> design_matrix(["A+B", "control", "B"], ["A", "B"])
    array([[1., 1.],
           [0., 0.],
           [0., 1.]], dtype=float32)
    """
    index = _check_vocabulary(vocabulary)
    codes, uniques, parsed, _ = _parse_labels(labels, control, sep)
    unique_rows = np.zeros((len(parsed), len(index)), dtype=dtype)
    for i, parts in enumerate(parsed):
        for p in parts:
            col = index.get(p)
            if col is None:
                n_rows = int(np.count_nonzero(codes == i))
                if n_rows == 0:
                    continue  # an unused category: no cell carries it
                raise _unknown_perturbation_error(p, vocabulary, uniques[i], n_rows)
            unique_rows[i, col] = 1
    return unique_rows[codes]
