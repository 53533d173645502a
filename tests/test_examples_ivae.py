"""examples/identifiability_test.py runs with its --smoke sizes (NumPyro's test_examples
pattern, as tests/test_examples.py)."""

import numpy as np
import pytest


@pytest.mark.slow
def test_identifiability_test_example_smoke(load_example):
    out = load_example("identifiability_test").main(["--smoke"])
    assert out["n_examples"] >= 1  # hypothesis ran the property test
    assert out["model"].fit_info["n_steps"] == 30
    for report in (out["report"], out["control"]):
        assert 0.0 <= report.score <= 1.0 and report.floor > 0.0
        assert set(report.floors) == {"rotation", "rotation_max", "observations"}
    assert np.all(np.isfinite(out["model"].history["loss"]))
