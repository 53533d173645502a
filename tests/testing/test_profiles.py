"""Hypothesis profiles: registered under prefixed names, chosen by an environment variable,
and never loaded for code that does not import causalzoo.testing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import settings

from causalzoo import CausalZooError
from causalzoo.testing import profiles


def _run(code: str, env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != profiles.ENV_VAR}
    if env_value is not None:
        env[profiles.ENV_VAR] = env_value
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


PRINT = "from hypothesis import settings; print(settings().max_examples, settings._current_profile)"


def test_environment_variable_selects_the_profile():
    code = "import causalzoo.testing as t; " + PRINT + "; print(t.active_profile())"
    assert _run(code, "nightly").splitlines() == ["500 causalzoo-nightly", "nightly"]
    assert _run(code, "causalzoo-ci").splitlines() == ["20 causalzoo-ci", "ci"]
    # unset: hypothesis keeps its own profile ("default", or its built-in "ci" under CI=true)
    assert _run(code, None).splitlines() == [_run(PRINT, None), "None"]


def test_importing_causalzoo_alone_leaves_hypothesis_alone():
    code = "import causalzoo; import sys; " + PRINT + "; print('causalzoo.testing' in sys.modules)"
    assert _run(code, "ci").splitlines() == [_run(PRINT, None), "False"]


def test_profiles_are_registered_and_unknown_names_are_refused():
    names = profiles.register_profiles()
    assert names == ["causalzoo-ci", "causalzoo-nightly", "causalzoo-gpu"]
    assert settings.get_profile("causalzoo-ci").max_examples == 20
    assert settings.get_profile("causalzoo-gpu").max_examples >= 500
    with pytest.raises(CausalZooError, match="'weekly'"):
        profiles.load_profile("weekly")


def test_examples_keeps_the_ci_count_and_takes_the_long_profiles_count():
    """A test's own ``max_examples`` overrides the profile; ``examples(n)`` keeps ``n``
    without a profile and under ``ci`` and raises it to 500 under ``nightly`` / ``gpu``
    (never lowers it), and a decorated test really draws that many."""
    code = ("import causalzoo.testing as t; print(t.examples(25), t.examples(900)); "
            "from hypothesis import given, settings, strategies as st; n = []; "
            "g = given(st.integers())(lambda x: n.append(x)); "
            "settings(max_examples=t.examples(25))(g)(); print(len(n) >= t.examples(25))")
    assert _run(code, None).splitlines() == ["25 900", "True"]
    assert _run(code, "ci").splitlines() == ["25 900", "True"]
    assert _run(code, "nightly").splitlines() == ["500 900", "True"]
    assert _run(code, "gpu").splitlines()[0] == "500 900"
    for bad in (0, -3, 2.5, True):
        with pytest.raises(CausalZooError, match="positive int"):
            profiles.examples(bad)
