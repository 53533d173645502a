"""The examples/ scripts run, with their --smoke sizes (NumPyro's test_examples pattern)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_custom_model_example_fits_and_intervenes():
    out = _load("custom_model").main(["--smoke"])
    fit = out["fit"]
    assert fit.n_steps == 40
    assert np.isfinite(fit.losses).all()
    # The custom decoder was used: its parameters are what the fit optimised.
    assert set(fit.params["decoder$params"]) == {"linear", "hidden", "correction"}
    assert set(out["gap"]) == {"observational", "do(effect=0)"}
