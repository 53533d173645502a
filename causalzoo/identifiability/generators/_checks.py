"""Argument checks shared by the generators (each error names the argument and its range)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._errors import CausalZooError, check_int

__all__ = ["check_float", "check_int"]  # check_int: the package's one integer check


def check_float(name: str, value: Any, low: float, high: float | None = None,
                 low_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CausalZooError(f"{name}={value!r} must be a number.") from None
    bad = (v <= low if low_open else v < low) or (high is not None and v > high)
    if not np.isfinite(v) or bad:
        lo = "(" if low_open else "["
        hi = f"{high}]" if high is not None else "inf)"
        raise CausalZooError(f"{name}={value!r} must lie in {lo}{low}, {hi}.")
    return v
