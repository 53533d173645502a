"""examples/intervention_forecast.py runs with its --smoke sizes: per-step intervention
labels reach the model, the report and the forecasts of both label sets come back, and the
PNG is written."""

import numpy as np
import pytest


@pytest.mark.slow
def test_intervention_forecast_example_smoke(tmp_path, load_example):
    example = load_example("intervention_forecast")
    codes = example.intervention_codes(np.array([[[0, 0, 0], [1, 0, 1], [0, 1, 0]]]))
    np.testing.assert_array_equal(codes, [[0, 5, 2]])
    out = example.main(["--smoke", "--out", str(tmp_path)])
    model = out["model"]
    assert model.u.shape == (40, example.N_STEPS) and model.n_domains == 8
    assert model.fit_info["n_steps"] == 20 and np.isfinite(model.history["loss"]).all()
    assert 0.0 < out["report"].score <= 1.0
    assert set(out["errors"]) == {"interventions as applied", "as if none"}
    for err in out["errors"].values():
        assert err.shape == (example.N_STEPS - example.HISTORY,) and np.isfinite(err).all()
    png = out["png"]
    assert png.parent == tmp_path and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
