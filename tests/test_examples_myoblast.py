"""examples/myoblast_time_course.py runs with its --smoke sizes on the real myoblast data
(snapshot mode of the dynamical model); skipped when the shared data folder is absent."""

import numpy as np
import pytest

from causalzoo import datasets as ds

SHARED = ds.data_dir()


@pytest.mark.slow
@pytest.mark.skipif(
    SHARED is None or not (SHARED / "hsmm_trapnell2014_myoblast_timecourse.h5ad").is_file(),
    reason="shared data folder not found (set CAUSALZOO_DATA to the folder with the .h5ad files)",
)
def test_myoblast_example_smoke(tmp_path, load_example):
    out = load_example("myoblast_time_course").main(["--smoke", "--out", str(tmp_path)])
    model, adata = out["model"], out["adata"]
    assert type(model).__name__ == "SnapshotDynamicalCausalVAE"
    assert model.registry.domain_names == ["DM", "GM"] and model.registry.control == "GM"
    assert model.registry.time_values == [0.0, 24.0, 48.0, 72.0]
    assert model.fit_info["n_steps"] == 20 and np.isfinite(model.history["loss"]).all()
    assert adata.n_vars == 40 and float(adata.layers["log1p"].min()) >= 0.0
    assert len(out["rho"]) == 2 and np.isfinite(out["rho"]).all()
    assert set(out["matches"]) == {0, 24, 48, 72}
    assert out["targets"].keys() == {"z_0", "z_1"}
    png = out["png"]
    assert png.parent == tmp_path and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
