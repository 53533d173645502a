"""Posterior predictive counts of the built-in count likelihoods, drawn on the host.

The samplers live in :mod:`causalzoo.blocks._host_sampling`, shared with
:meth:`~causalzoo.SparsePerturbationVAE.predict`; this module names the ones
:func:`~causalzoo.diagnostics.to_datatree` uses: the compiled chunk program returns
:func:`device_params` of the observation distribution, and :func:`draw_into` draws each
posterior draw's counts with its own NumPy stream.
"""

from __future__ import annotations

from ..blocks._host_sampling import device_params, draw_into, event_shape

__all__ = ["device_params", "draw_into", "event_shape"]
