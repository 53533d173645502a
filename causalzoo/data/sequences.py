"""Checks of sequence arrays ``(units, steps, features)`` and per-unit labels.

Used by the dynamical entry's sequence mode; each check raises a
:class:`~causalzoo.CausalZooError` naming the problem and the fix, before any compilation, and
never converts silently (a float, NaN or boolean label is refused, not cast to a code).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import CausalZooError

__all__ = ["check_sequence_array", "check_unit_labels"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_sequence_array(x: Any, *, n_lags: int, count_data: bool,
                         likelihood: str = "") -> np.ndarray:
    """Validate observed sequences and return them as float32 ``(units, steps, features)``.

    Parameters
    ----------
    x : array_like
        Observed sequences, one row per unit.
    n_lags : int
        The model's number of lags: sequences need at least ``n_lags + 1`` steps.
    count_data : bool
        Whether the likelihood models counts (values must be non-negative integers).
    likelihood : str
        The likelihood's name, for the messages.

    Raises
    ------
    CausalZooError
        For a rank other than 3, no units, steps or features, sequences shorter than
        ``n_lags + 1``, a non-numeric dtype, NaN/inf, values beyond float32, or negative or
        fractional values for a count likelihood.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise CausalZooError(
            f"x must be 3-D (units, steps, features); got shape {x.shape}. For snapshot "
            "data (each cell seen once, with a time label) use the snapshot mode."
        )
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
            or x.dtype == np.bool_):
        raise CausalZooError(
            f"x has dtype {x.dtype}; expected numeric (integer or floating-point) values. "
            "Convert the measurements to numbers first."
        )
    n_units, n_steps, n_features = x.shape
    if n_units == 0:
        raise CausalZooError(f"x has no units (shape {x.shape}); pass at least one sequence.")
    if n_features == 0:
        raise CausalZooError(f"x has no features (shape {x.shape}); pass at least one.")
    if n_steps <= n_lags:
        raise CausalZooError(
            f"Sequences of {n_steps} steps are too short for n_lags={n_lags}: need at least "
            "n_lags + 1 steps (or a smaller n_lags)."
        )
    if np.issubdtype(x.dtype, np.floating):
        bad = np.argwhere(~np.isfinite(x))
        if bad.size:
            u, t, f = (int(i) for i in bad[0])
            raise CausalZooError(
                f"x has NaN or infinite values ({len(bad)} entries; the first at unit {u}, "
                f"step {t}, feature {f}); remove or impute them first."
            )
    if x.size and x.dtype != np.bool_ and float(np.abs(x).max()) > _FLOAT32_MAX:
        raise CausalZooError(
            f"x has values beyond the float32 range (max |x| = {float(np.abs(x).max()):.3g}); "
            "rescale them (e.g. log1p) first."
        )
    if count_data:
        negative = np.argwhere(x < 0) if x.dtype != np.bool_ else np.zeros((0, 3))
        fractional = (np.argwhere(x != np.round(x)) if np.issubdtype(x.dtype, np.floating)
                      else np.zeros((0, 3)))
        for found, what in ((negative, "negative"), (fractional, "non-integer")):
            if len(found):
                u, t, f = (int(i) for i in found[0])
                raise CausalZooError(
                    f"likelihood={likelihood!r} models counts but x has {what} values "
                    f"({len(found)} entries; the first at unit {u}, step {t}, feature {f}); "
                    "use likelihood='gaussian' for continuous data."
                )
    return x.astype(np.float32)


def check_unit_labels(u: Any, n_units: int, n_steps: int | None = None) -> np.ndarray:
    """Validate domain labels: integer codes (>= 0) or non-empty strings, one per unit
    (shape ``(n_units,)``) or, when ``n_steps`` is given, optionally one per unit and step
    (shape ``(n_units, n_steps)``).

    Float, NaN, boolean and mixed labels are refused rather than cast, since a cast would
    merge or invent domains silently.
    """
    u = np.asarray(u)
    shapes = [(n_units,)] + ([(n_units, n_steps)] if n_steps is not None else [])
    if u.shape not in shapes:
        per_step = (f" or one per unit and step: shape ({n_units}, {n_steps})"
                    if n_steps is not None else "")
        raise CausalZooError(
            f"u must hold one label per unit: shape ({n_units},){per_step}; got {u.shape}."
        )
    flat = u.ravel()
    if u.dtype == np.bool_ or not (np.issubdtype(u.dtype, np.integer)
                                   or np.issubdtype(u.dtype, np.str_)
                                   or (u.dtype == object
                                       and all(isinstance(v, str) for v in flat))):
        example = next((v for v in flat if not isinstance(v, (str, np.str_))), flat[:1])
        raise CausalZooError(
            f"u must hold integer codes or strings; got dtype {u.dtype} (e.g. {example!r}). "
            "Map the labels to strings or integer codes explicitly (a float, NaN or boolean "
            "label is not cast)."
        )
    if not np.issubdtype(u.dtype, np.integer):
        empty = [i for i, v in enumerate(flat) if not str(v).strip()]
        if empty:
            where = np.unravel_index(empty[0], u.shape)
            raise CausalZooError(
                f"u has empty labels (e.g. at {tuple(int(i) for i in where)}); give every "
                "unit a domain name."
            )
    return u
