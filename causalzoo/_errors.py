"""The one exception class for problems with the user's input, and the integer and boolean
checks that every entry point shares."""

import numpy as np

__all__ = ["CausalZooError", "check_bool", "check_int"]


class CausalZooError(ValueError):
    """An error in what the user passed in: data, keys, labels, hyper-parameters or files.

    The message names the problem, the offending key or value, and what to do about it.
    It is a ``ValueError`` so that generic handlers keep working.
    """


def check_int(name: str, value, minimum: int = 1, *, meaning: str = "") -> int:
    """``value`` as an ``int``, or a :class:`CausalZooError` naming ``name`` (and, when
    given, what it means) if it is not an integer ``>= minimum``. Booleans and integral
    floats are refused, not coerced.

    >>> check_int("n", 3)
    3
    >>> check_int("n_steps", 2.0)
    Traceback (most recent call last):
    ...
    causalzoo._errors.CausalZooError: n_steps must be a positive integer; got 2.0.
    """
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < minimum):
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        what = f" ({meaning})" if meaning else ""
        raise CausalZooError(f"{name} must be {rule}{what}; got {value!r}.")
    return int(value)


def check_bool(name: str, value, *, meaning: str = "") -> bool:
    """``value`` as a ``bool``, or a :class:`CausalZooError` naming ``name`` (and, when
    given, what it means) if it is not ``True`` or ``False`` (a NumPy boolean counts).
    Integers and strings are refused, not coerced: ``1`` or ``"yes"`` for a flag is more
    often a misplaced argument than a choice.

    >>> check_bool("resume", False)
    False
    >>> check_bool("prefetch", 1)
    Traceback (most recent call last):
    ...
    causalzoo._errors.CausalZooError: prefetch must be True or False; got 1.
    """
    if not isinstance(value, (bool, np.bool_)):
        what = f" ({meaning})" if meaning else ""
        raise CausalZooError(f"{name} must be True or False{what}; got {value!r}.")
    return bool(value)
