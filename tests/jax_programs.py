"""What tests look for in a compiled program's text (its jaxpr, nested calls included).

Imported by test modules as ``jax_programs`` (``tests/`` is on ``sys.path``: pytest puts
``tests/conftest.py``'s folder there).
"""

from __future__ import annotations

import re

# JAX's exact count samplers: the gamma of the Gamma-Poisson mixture and the Poisson
# sampler's jitted helper (Knuth's loop and a rejection loop per element)
_COUNT_SAMPLERS = re.compile(r"random_gamma|name=_poisson\b")


def device_count_samplers(program: str) -> int:
    """How often JAX's gamma or Poisson sampler appears in ``program``
    (``str(jax.make_jaxpr(fn)(*args))``)."""
    return len(_COUNT_SAMPLERS.findall(program))
