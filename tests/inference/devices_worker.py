"""Run in a subprocess by test_devices.py: simulated CPU devices need XLA_FLAGS set before
jax is imported, which a pytest process has already done.

Usage: python devices_worker.py OUT.npz — writes the loss histories and parameters of the
same fit on 1, 2 and 4 devices, plus what the engine and the user class report.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.sharding import Mesh

from causalzoo import CausalZooError
from causalzoo.inference import fit_svi

N_GENES, N_LATENT = 24, 3
SEEN: list = []


def model(x, n_cells=None):
    # What the compiler made of the minibatch's layout inside the compiled step.
    jax.debug.inspect_array_sharding(x, callback=SEEN.append)
    w = numpyro.param("w", jnp.full((N_LATENT, N_GENES), 0.01))
    b = numpyro.param("b", jnp.zeros(N_GENES))
    with numpyro.plate("cells", x.shape[0]), numpyro.handlers.scale(scale=n_cells / x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([N_LATENT]).to_event(1))
        numpyro.sample("x", dist.Poisson(jnp.exp(z @ w + b)).to_event(1), obs=x)


def guide(x, n_cells=None):
    a = numpyro.param("a", jnp.full((N_GENES, N_LATENT), 0.01))
    with numpyro.plate("cells", x.shape[0]):
        numpyro.sample("z", dist.Normal(jnp.log1p(x) @ a, 0.5).to_event(1))


def fit(devices, **kw):
    x = np.random.default_rng(0).poisson(2.0, (256, N_GENES)).astype(np.float32)
    kw = {"batch_size": 32, "max_steps": 60, "steps_per_call": 20, "learning_rate": 1e-2,
          "progress": False, "seed": 3, **kw}
    return fit_svi(model, guide, {"x": x}, devices=devices, **kw)


def main(out: str) -> None:
    assert jax.device_count() == 4, jax.devices()
    res: dict[str, np.ndarray] = {}
    from causalzoo.inference.sharding import cell_mesh

    flat = cell_mesh(Mesh(np.asarray(jax.devices()).reshape(2, 2), ("a", "b")))
    res["mesh_flattened"] = np.asarray([flat.devices.shape[0], len(flat.axis_names)])
    for name, devices in (("d1", None), ("d2", 2), ("d4", jax.devices())):
        SEEN.clear()
        r = fit(devices)
        res[f"{name}_losses"] = r.losses
        for k, v in r.params.items():
            res[f"{name}_param_{k}"] = np.asarray(v)
        # the compiled step's minibatch sharding: number of devices it is split over
        res[f"{name}_batch_split"] = np.asarray(
            [len(s.device_set) if not s.is_fully_replicated else 1 for s in SEEN[1:]])
        res[f"{name}_state_devices"] = np.asarray(len(jax.tree.leaves(r.state)[1].sharding
                                                      .device_set))
    errors = []
    for kw in ({"devices": 4, "batch_size": 30}, {"devices": 5}, {"devices": ["cpu"]},
               {"devices": "all"}):
        try:
            fit(**kw)
        except CausalZooError as err:
            errors.append(str(err))
    res["errors"] = np.asarray(errors)
    # a checkpoint written on 2 devices resumes on 4
    ckpt = os.path.join(os.path.dirname(out), "ckpt")
    fit(2, max_steps=40, checkpoint_dir=ckpt)
    r = fit(4, checkpoint_dir=ckpt, resume=True)
    res["resumed_losses"], res["resumed_from"] = r.losses, np.asarray(r.resumed_from)
    # the user class passes devices through (to the engine's check, before compiling)
    import causalzoo as cz

    rng = np.random.default_rng(1)
    vae = cz.SparsePerturbationVAE.from_arrays(
        rng.poisson(3.0, (64, 8)).astype(np.float32), rng.choice(["control", "A"], 64),
        n_latent_invariant=2, n_latent_response=2, n_hidden=8)
    try:
        vae.fit(max_steps=5, batch_size=30, progress=False, devices=4)
    except CausalZooError as err:
        res["vae_error"] = np.asarray(str(err))
    np.savez(out, **res)


if __name__ == "__main__":
    main(sys.argv[1])
