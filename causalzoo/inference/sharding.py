"""Data parallelism for the SVI engine: the cell axis of each minibatch over a device mesh.

:func:`~causalzoo.inference.fit_svi` takes ``devices=``: a number of devices, a sequence of
``jax`` devices or a :class:`jax.sharding.Mesh`. The engine then

* puts the parameters, the optimiser state and the resident data on every device
  (replicated: each device gathers its part of a minibatch without talking to the others);
* constrains every per-cell array of each minibatch to be split along the cell axis over the
  devices (:func:`jax.lax.with_sharding_constraint`), so each device runs the model and guide
  on ``batch_size / n_devices`` cells and the compiler adds the all-reduce of the gradients;
* keeps the single compiled ``lax.scan`` over steps: the mesh changes where the work runs,
  never which minibatches are drawn, so a fit on several devices follows the single-device
  loss trajectory up to the order of floating-point sums.

Several hosts: start every process with :func:`jax.distributed.initialize`, then pass
``devices=jax.devices()`` (all devices of all processes) from every process, with the same
data and seed; see ``docs/scaling.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._errors import CausalZooError

__all__ = ["CELL_AXIS", "cell_mesh", "constrain_batch", "replicate"]

CELL_AXIS = "cells"

Devices = int | Sequence[Any] | Mesh | None


def cell_mesh(devices: Devices) -> Mesh | None:
    """A one-axis mesh (axis ``"cells"``) over the requested devices, or ``None`` for one.

    Parameters
    ----------
    devices : int, sequence of jax devices, jax.sharding.Mesh or None
        An int takes the first ``devices`` of :func:`jax.devices`; a mesh of any shape is
        flattened, in its device order, to one axis. ``None`` (or a single device's worth)
        means no mesh: the engine runs as it does without the option.

    Returns
    -------
    jax.sharding.Mesh or None

    Examples
    --------
    >>> cell_mesh(None) is None
    True
    >>> cell_mesh(1) is None
    True
    """
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        flat = list(np.asarray(devices.devices).ravel())
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        available = jax.devices()
        if not 1 <= int(devices) <= len(available):
            raise CausalZooError(
                f"devices={int(devices)} but {len(available)} device(s) are available "
                f"({available[0].platform}); pass a count between 1 and {len(available)}, or "
                "a list of devices (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                "set before importing jax simulates N devices)."
            )
        flat = available[: int(devices)]
    elif isinstance(devices, Sequence) and not isinstance(devices, (str, bytes)):
        flat = list(devices)
        if not flat or not all(isinstance(d, jax.Device) for d in flat):
            raise CausalZooError(
                f"devices={devices!r} must be a non-empty sequence of jax devices (e.g. "
                "jax.devices()[:2]), an int count or a jax.sharding.Mesh."
            )
        if len({d.id for d in flat}) != len(flat):
            raise CausalZooError(f"devices={devices!r} lists a device more than once.")
    else:
        raise CausalZooError(
            f"devices={devices!r}: pass an int count, a sequence of jax devices or a "
            "jax.sharding.Mesh (or None for one device)."
        )
    if len(flat) == 1:
        return None
    return Mesh(np.asarray(flat, dtype=object), (CELL_AXIS,))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Put every array of ``tree`` on every device of ``mesh`` (unchanged without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def constrain_batch(batch: Any, mesh: Mesh | None, batch_size: int) -> Any:
    """Inside a compiled function: split the leading (cell) axis of each minibatch array of
    ``batch_size`` rows over the mesh; other leaves are left to the compiler."""
    if mesh is None:
        return batch
    cells = NamedSharding(mesh, PartitionSpec(CELL_AXIS))

    def constrain(leaf):
        if hasattr(leaf, "shape") and len(leaf.shape) >= 1 and leaf.shape[0] == batch_size:
            return jax.lax.with_sharding_constraint(leaf, cells)
        return leaf

    return jax.tree.map(constrain, batch)


def check_divisible(batch_size: int, mesh: Mesh | None) -> None:
    """A minibatch must split evenly over the devices."""
    if mesh is None:
        return
    n = mesh.devices.size
    if batch_size % n:
        lower, upper = (batch_size // n) * n, (batch_size // n + 1) * n
        raise CausalZooError(
            f"batch_size={batch_size} does not split evenly over {n} devices: pass a multiple "
            f"of {n} (e.g. batch_size={lower or upper} or {upper})."
        )
