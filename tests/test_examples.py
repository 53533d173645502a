"""The examples/ scripts run, with their --smoke sizes (NumPyro's test_examples pattern)."""

import numpy as np
import pytest


@pytest.mark.slow
def test_custom_model_example_fits_and_intervenes(load_example):
    out = load_example("custom_model").main(["--smoke"])
    fit = out["fit"]
    assert fit.n_steps == 40
    assert np.isfinite(fit.losses).all()
    # The custom decoder was used: its parameters are what the fit optimised.
    assert set(fit.params["decoder$params"]) == {"linear", "hidden", "correction"}
    assert set(out["gap"]) == {"observational", "do(effect=0)"}
