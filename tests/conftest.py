"""Suite-wide set-up: a persistent XLA compilation cache shared by the test processes.

Many tests build the same model at the same shapes several times (a fit, the same fit
resumed from a checkpoint, a fit in a subprocess that is killed and restarted, the examples
and the CLI demo). Each new model object is a new function to ``jax.jit``, so without a cache
each of them compiles the same XLA program again. JAX's persistent compilation cache keys
compiled programs by their HLO, the JAX version and the compiler flags, so a hit returns the
very executable a fresh compilation would produce: results stay bit-identical, only the
compile time goes. Measured on the 2-core VM: the dynamical checkpoint/resume test (three
fits of one model) took 26-30 s without the cache, 11 s with an empty cache, 5 s with a warm
one.

The cache lives in ``.cache/jax`` under the repository (git-ignored), or where
``CAUSALZOO_TEST_JAX_CACHE`` points; ``CAUSALZOO_TEST_JAX_CACHE=off`` disables it. The
variables are set in the environment before JAX is imported, so the worker processes of
pytest-xdist and the subprocesses the tests start (killed fits, examples, the CLI) share it.
This is test set-up only: library code never touches JAX's global configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_where = os.environ.get("CAUSALZOO_TEST_JAX_CACHE", "")
if _where.lower() != "off":
    _cache = Path(_where) if _where else Path(__file__).resolve().parents[1] / ".cache" / "jax"
    _cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_cache))
    # Cache every program: the small ones are compiled again and again too.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

    import jax

    # In case a plugin imported JAX before this file ran (then it has read the variables).
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Load the hypothesis profile named by CAUSALZOO_HYPOTHESIS_PROFILE (run.sh sets "ci":
# derandomised, 20 examples) before any test module is imported. A test's own
# ``@settings(...)`` copies the defaults in force when its module is imported, so a module
# imported before the first ``import causalzoo.testing`` ran with hypothesis's defaults
# (100 random examples), depending on which modules a worker collected first.
import causalzoo.testing  # noqa: E402, F401

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)`` imports ``examples/<name>.py`` as a module (the examples are
    scripts, not a package), so a test can call its ``main([...])``."""
    import importlib.util

    def load(name):
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
