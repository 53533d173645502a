"""fit_svi(devices=...): the cell axis of each minibatch split over several (simulated CPU)
devices, parameters replicated, same minibatches as one device.

The fits run in a subprocess (devices_worker.py): XLA_FLAGS must be set before jax is
imported to simulate 4 CPU devices.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from causalzoo import CausalZooError
from causalzoo.inference import fit_svi
from causalzoo.inference.sharding import cell_mesh

WORKER = Path(__file__).with_name("devices_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("devices") / "out.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-W", "error", str(WORKER), str(out)], check=False,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(out))


@pytest.mark.parametrize("name", ["d2", "d4"])
def test_several_devices_follow_the_one_device_trajectory(runs, name):
    np.testing.assert_allclose(runs[f"{name}_losses"], runs["d1_losses"], rtol=1e-4)
    assert runs[f"{name}_losses"].shape == (60,)
    for key in [k for k in runs if k.startswith("d1_param_")]:
        np.testing.assert_allclose(runs[key.replace("d1", name, 1)], runs[key],
                                   rtol=1e-4, atol=1e-5)


def test_the_minibatch_is_split_and_the_state_replicated(runs):
    # inside the compiled step the minibatch is sharded over every device of the mesh ...
    assert runs["d1_batch_split"].tolist() == [1]
    assert runs["d2_batch_split"].tolist() == [2]
    assert runs["d4_batch_split"].tolist() == [4]
    # ... and the returned state lives on all of them
    assert int(runs["d2_state_devices"]) == 2 and int(runs["d4_state_devices"]) == 4
    # a 2x2 mesh becomes one 4-device cell axis
    assert runs["mesh_flattened"].tolist() == [4, 1]


def test_device_errors(runs):
    errors = list(runs["errors"])
    assert len(errors) == 4
    assert "batch_size=30 does not split evenly over 4 devices" in errors[0]
    assert "devices=5 but 4 device(s) are available" in errors[1]
    assert "sequence of jax devices" in errors[2]
    assert "devices='all'" in errors[3]


def test_checkpoint_resumes_on_another_number_of_devices(runs):
    assert int(runs["resumed_from"]) == 40
    np.testing.assert_allclose(runs["resumed_losses"], runs["d1_losses"], rtol=1e-4)


def test_user_class_passes_devices_through(runs):
    assert "batch_size=30 does not split evenly over 4 devices" in str(runs["vae_error"])


def test_one_device_in_process():
    # without simulated devices: 1 device is the plain engine, more is a clear error
    assert cell_mesh(None) is None and cell_mesh(1) is None
    assert cell_mesh(jax.devices()[:1]) is None
    with pytest.raises(CausalZooError, match="device"):
        fit_svi(lambda y, n_cells=None: None, lambda y, n_cells=None: None,
                {"y": np.zeros(8, np.float32)}, batch_size=4, max_steps=1, progress=False,
                devices=jax.device_count() + 1)
