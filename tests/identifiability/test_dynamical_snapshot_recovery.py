"""Snapshot mode against sequence mode on one LEAP non-stationary draw.

``generators.snapshot`` keeps one uniformly random step of each sequence (a single-cell time
course: every cell is seen once). The test fits sequence mode to the full sequences and
snapshot mode to the snapshots with the same small SVI budget and reports both Spearman MCCs
beside their entangled floors (``pytest -s`` prints them).

What it asserts is only what holds at this size on every seed: both fits run, their latents
are finite and their MCCs and floors are valid numbers. It does NOT claim recovery: at CI
size neither mode is reliably above the floor (see ``docs/models/dynamical.md`` and
``benchmarks/recovery_dynamical.py --snapshot`` for the measured numbers over seeds).
"""

import anndata
import numpy as np
import pandas as pd
import pytest

import causalzoo as cz
from causalzoo import CausalZooError
from causalzoo.identifiability import entangled_floor, mcc

D, STEPS = 3, 300
FIT = dict(max_steps=STEPS, batch_size=64, seed=0, learning_rate=5e-3, progress=False)
NETS = dict(n_latent=D, n_hidden=32, transition="linear")


@pytest.fixture(scope="module")
def data():
    return cz.identifiability.generators.leap_nonstationary(
        n_domains=10, n_per_domain=40, n_latent=D, seed=0
    )


def test_snapshot_keeps_one_step_per_unit(data):
    snap = cz.identifiability.generators.snapshot(data, seed=3)
    rows = np.arange(data.x.shape[0])
    np.testing.assert_array_equal(snap.x, data.x[rows, snap.step])
    np.testing.assert_array_equal(snap.z, data.z[rows, snap.step])
    np.testing.assert_array_equal(snap.u, data.u)
    assert set(snap.step) == set(range(data.x.shape[1]))  # every step is drawn
    late = cz.identifiability.generators.snapshot(data, seed=3, min_step=data.n_lags)
    assert late.step.min() == data.n_lags
    again = cz.identifiability.generators.snapshot(data, seed=3)
    np.testing.assert_array_equal(again.step, snap.step)
    with pytest.raises(CausalZooError, match="min_step"):
        cz.identifiability.generators.snapshot(data, min_step=data.x.shape[1])


@pytest.mark.slow
def test_snapshot_mode_mcc_beside_floor_and_sequence_mode(data):
    scale = data.x.std()
    sequence = cz.DynamicalCausalVAE.from_arrays(x=data.x / scale, u=data.u,
                                                 n_lags=data.n_lags, **NETS).fit(**FIT)
    z_seq = sequence.get_latent_representation()
    seq_mcc = mcc(data.z.reshape(-1, D), z_seq.reshape(-1, D), method="spearman")
    seq_floor = entangled_floor(data.z.reshape(-1, D), method="spearman", seed=0)["rotation"]

    snap = cz.identifiability.generators.snapshot(data, seed=0)
    obs = pd.DataFrame({"step": snap.step, "domain": snap.u.astype(str)},
                       index=[f"unit{i}" for i in range(snap.step.size)])
    adata = anndata.AnnData(snap.x / scale, obs=obs)
    cz.DynamicalCausalVAE.setup_anndata(adata, time_key="step", perturbation_key="domain",
                                        time_step=1)
    model = cz.DynamicalCausalVAE(adata, n_lags=data.n_lags, **NETS).fit(**FIT)
    assert np.isfinite(model.history["loss"]).all()
    z_snap = model.get_latent_representation()
    assert z_snap.shape == snap.z.shape and np.isfinite(z_snap).all()
    snap_mcc = mcc(snap.z, z_snap, method="spearman")
    snap_floor = entangled_floor(snap.z, method="spearman", seed=0)["rotation"]
    print(f"\nsequence mode: Spearman MCC {seq_mcc:.3f} (floor {seq_floor:.3f}); "
          f"snapshot mode: {snap_mcc:.3f} (floor {snap_floor:.3f})")
    for value in (seq_mcc, seq_floor, snap_mcc, snap_floor):
        assert 0.0 < value <= 1.0
    # the snapshot fit learned a lag graph and per-domain targets of the right shapes
    assert model.lag_graph().shape == (data.n_lags, D, D)
    assert model.perturbation_targets().shape == (10, D)
