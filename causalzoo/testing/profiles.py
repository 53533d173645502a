"""Hypothesis profiles for identifiability tests, selected by an environment variable.

Three profiles are registered under prefixed names, so they never replace a user's own:

============================  ============  =======================================
profile                       max_examples  for
============================  ============  =======================================
``causalzoo-ci``              20            CI on CPU: derandomised, reproducible
``causalzoo-nightly``         500           nightly runs
``causalzoo-gpu``             500           GPU machines (same as nightly)
============================  ============  =======================================

``import causalzoo.testing`` registers them and, only when ``CAUSALZOO_HYPOTHESIS_PROFILE``
is set (to ``ci``, ``nightly`` or ``gpu``, with or without the ``causalzoo-`` prefix), loads
that one. Nothing happens to hypothesis's settings for code that never imports
``causalzoo.testing`` or leaves the variable unset. Tests can read :func:`active_profile` to
pick problem sizes (a CI-sized fit, or the published size at night).

A test's own ``@settings(max_examples=n)`` overrides every profile, so a long profile
would still run ``n`` examples; ``@settings(max_examples=examples(n))`` keeps ``n`` in CI
and takes the long profile's count at night (:func:`examples`).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from .._errors import CausalZooError

__all__ = ["ENV_VAR", "PROFILES", "register_profiles", "load_profile", "active_profile",
           "examples"]

ENV_VAR = "CAUSALZOO_HYPOTHESIS_PROFILE"
_PREFIX = "causalzoo-"

PROFILES: dict[str, dict] = {
    "ci": {
        "max_examples": 20,
        "deadline": None,
        "derandomize": True,
        "print_blob": True,
        "suppress_health_check": (HealthCheck.too_slow, HealthCheck.data_too_large),
    },
    "nightly": {
        "max_examples": 500,
        "deadline": None,
        "print_blob": True,
        "suppress_health_check": (HealthCheck.too_slow,),
    },
    "gpu": {
        "max_examples": 500,
        "deadline": None,
        "print_blob": True,
        "suppress_health_check": (HealthCheck.too_slow,),
    },
}

_active: str | None = None


def register_profiles() -> list[str]:
    """Register the profiles with hypothesis (idempotent); return their full names."""
    for name, options in PROFILES.items():
        settings.register_profile(_PREFIX + name, **options)
    return [_PREFIX + name for name in PROFILES]


def _canonical(name: str) -> str:
    short = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    if short not in PROFILES:
        raise CausalZooError(
            f"Unknown causalzoo hypothesis profile {name!r}; use one of {sorted(PROFILES)} "
            f"(set {ENV_VAR}=ci, nightly or gpu, or unset it)."
        )
    return short


def load_profile(name: str | None = None) -> str | None:
    """Load a causalzoo profile by name, or the one named by ``CAUSALZOO_HYPOTHESIS_PROFILE``.

    Parameters
    ----------
    name : str, optional
        ``"ci"``, ``"nightly"`` or ``"gpu"`` (the ``causalzoo-`` prefix is optional). When
        omitted, the environment variable decides; if it is unset or empty nothing is loaded.

    Returns
    -------
    str or None
        The short name of the loaded profile, or ``None`` when nothing was loaded.

    Examples
    --------
    >>> load_profile("ci")
    'ci'
    """
    global _active
    if name is None:
        name = os.environ.get(ENV_VAR, "").strip()
        if not name:
            return None
    short = _canonical(name)
    register_profiles()
    settings.load_profile(_PREFIX + short)
    _active = short
    return short


def active_profile() -> str | None:
    """The short name of the causalzoo profile loaded in this process, or ``None``."""
    return _active


def examples(n: int) -> int:
    """A property test's own example count, raised to the long profiles' count.

    ``@settings(max_examples=25)`` on a test overrides the loaded profile, so under
    ``nightly`` that test would still draw 25 examples. ``@settings(max_examples=
    examples(25))`` draws 25 under ``ci`` or when no causalzoo profile is loaded, and
    ``max(25, 500)`` under ``nightly`` or ``gpu``. It is read when the decorator runs, at
    import, so the profile must be loaded first: ``import causalzoo.testing`` (in your
    ``conftest.py``) with ``CAUSALZOO_HYPOTHESIS_PROFILE`` set does that.

    Parameters
    ----------
    n : int
        The test's count in CI (>= 1).

    Returns
    -------
    int

    Examples
    --------
    >>> examples(25) if active_profile() in (None, "ci") else 25
    25
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CausalZooError(f"examples(n) needs a positive int count; got {n!r}.")
    if _active in (None, "ci"):
        return n
    return max(n, int(PROFILES[_active]["max_examples"]))
