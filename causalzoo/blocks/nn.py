"""Flax NNX networks for encoders and decoders.

Networks are built eagerly (NNX style) and attached to a NumPyro model or guide with
:func:`numpyro.contrib.module.nnx_module`, so their parameters are ordinary ``numpyro.param``
sites (``"<name>$params"``) that optimisers, ``substitute`` and ``save`` see as plain pytrees.
LayerNorm rather than BatchNorm: no mutable state, so the same guide works with several
particles and under ``vmap``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro
from flax import nnx
from numpyro.contrib.module import nnx_module

__all__ = ["MLP", "GaussianEncoder", "RecurrentEncoder", "attach", "default_factory",
           "network_rngs", "recurrent_factory", "scale_tril"]

_ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "tanh": jnp.tanh,
    "leaky_relu": jax.nn.leaky_relu,
}


class MLP(nnx.Module):
    """A multi-layer perceptron: ``n_layers`` hidden layers of width ``n_hidden``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    n_hidden : int
        Hidden width.
    n_layers : int
        Number of hidden layers (0 gives a linear map).
    rngs : flax.nnx.Rngs
        Random streams for initialisation.
    activation : str
        One of ``relu, gelu, silu, elu, tanh, leaky_relu``.
    layer_norm : bool
        LayerNorm after each hidden linear layer.

    Examples
    --------
    >>> from flax import nnx
    >>> net = MLP(3, 2, n_hidden=8, n_layers=1, rngs=nnx.Rngs(0))
    >>> net(jnp.ones((4, 3))).shape
    (4, 2)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        n_hidden: int = 128,
        n_layers: int = 2,
        rngs: nnx.Rngs,
        activation: str = "relu",
        layer_norm: bool = True,
    ):
        widths = [in_features] + [n_hidden] * n_layers
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)]
        )
        self.norms = nnx.List(
            [nnx.LayerNorm(n_hidden, rngs=rngs) for _ in range(n_layers)] if layer_norm else []
        )
        self.out = nnx.Linear(widths[-1], out_features, rngs=rngs)
        self.activation = _ACTIVATIONS[activation]

    def __call__(self, x):
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = self.activation(x)
        return self.out(x)


class GaussianEncoder(nnx.Module):
    """An MLP returning the location and scale of a diagonal Gaussian.

    The scale is ``softplus(raw) + 1e-4``, which keeps gradients alive where ``exp`` would
    overflow early in training.
    """

    def __init__(self, in_features: int, n_latent: int, **mlp_kwargs):
        self.net = MLP(in_features, 2 * n_latent, **mlp_kwargs)

    def __call__(self, x):
        loc, raw = jnp.split(self.net(x), 2, axis=-1)
        return loc, jax.nn.softplus(raw) + 1e-4


class RecurrentEncoder(nnx.Module):
    """A bidirectional GRU over the steps of a sequence, then a per-step MLP head.

    ``x (..., n_steps, in_features) -> (..., n_steps, out_features)``: each step is
    embedded (a linear layer and the activation), a forward and a backward GRU (hidden width
    ``n_hidden``, PyTorch's gate convention) run over the steps, and the head (an
    :class:`MLP` with ``n_layers`` hidden layers) maps each step's embedding and both
    states to its output. So the output at step ``t`` depends on every step of the
    sequence, before and after ``t``.

    Examples
    --------
    >>> from flax import nnx
    >>> net = RecurrentEncoder(3, 2, n_hidden=8, n_layers=1, rngs=nnx.Rngs(0))
    >>> net(jnp.ones((4, 5, 3))).shape
    (4, 5, 2)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        n_hidden: int = 128,
        n_layers: int = 2,
        rngs: nnx.Rngs,
        activation: str = "relu",
    ):
        h = n_hidden
        self.n_hidden = h
        self.embed = nnx.Linear(in_features, h, rngs=rngs)
        self.forward_input = nnx.Linear(h, 3 * h, rngs=rngs)
        self.forward_state = nnx.Linear(h, 3 * h, rngs=rngs)
        self.backward_input = nnx.Linear(h, 3 * h, rngs=rngs)
        self.backward_state = nnx.Linear(h, 3 * h, rngs=rngs)
        self.head = MLP(3 * h, out_features, n_hidden=h, n_layers=n_layers, rngs=rngs,
                        activation=activation)
        self.activation = _ACTIVATIONS[activation]

    def _gru(self, inputs, state_layer, reverse: bool):
        """The GRU's states ``(n_steps, ..., n_hidden)`` over time-major ``inputs``, the
        input projections of every step ``(n_steps, ..., 3 n_hidden)``."""
        h = self.n_hidden
        kernel, bias = state_layer.kernel[...], state_layer.bias[...]

        def step(state, projected):
            hidden = state @ kernel + bias
            reset = jax.nn.sigmoid(projected[..., :h] + hidden[..., :h])
            update = jax.nn.sigmoid(projected[..., h:2 * h] + hidden[..., h:2 * h])
            candidate = jnp.tanh(projected[..., 2 * h:] + reset * hidden[..., 2 * h:])
            state = (1.0 - update) * candidate + update * state
            return state, state

        initial = jnp.zeros(inputs.shape[1:-1] + (h,), inputs.dtype)
        return jax.lax.scan(step, initial, inputs, reverse=reverse)[1]

    def __call__(self, x):
        embedded = self.activation(self.embed(x))
        steps_first = jnp.moveaxis(embedded, -2, 0)
        forward = self._gru(self.forward_input(steps_first), self.forward_state, False)
        backward = self._gru(self.backward_input(steps_first), self.backward_state, True)
        states = jnp.moveaxis(jnp.concatenate([forward, backward], axis=-1), 0, -2)
        return self.head(jnp.concatenate([embedded, states], axis=-1))


def network_rngs() -> nnx.Rngs:
    """Random streams for building a network inside a model or guide.

    Uses NumPyro's current key when a ``seed`` handler is active (so initial weights follow the
    fit's seed), and a fixed key otherwise. The initial values only matter the first time a
    parameter is created; afterwards the optimised values are substituted.
    """
    key = numpyro.prng_key()
    return nnx.Rngs(key if key is not None else jax.random.key(0))


def attach(name: str, factory: Callable[[nnx.Rngs], nnx.Module]):
    """Build a network with ``factory(rngs)`` and register its parameters as ``name``.

    Returns the callable network. ``factory`` is called every time the model is traced; under
    a compiled update the initial weights it draws are dead code and cost nothing.
    """
    return nnx_module(name, factory(network_rngs()))


NetworkFactory = Callable[..., nnx.Module]
"""A network factory: ``factory(in_features, out_features, rngs=...) -> nnx.Module``."""


def default_factory(n_hidden: int, n_layers: int, activation: str = "relu") -> NetworkFactory:
    """A factory of :class:`MLP` networks with the given hidden width and depth."""

    def factory(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Module:
        return MLP(
            in_features,
            out_features,
            n_hidden=n_hidden,
            n_layers=n_layers,
            rngs=rngs,
            activation=activation,
        )

    return factory


def scale_tril(diagonal, lower=None):
    """Lower-triangular Cholesky factors ``(..., k, k)`` from positive diagonals ``(..., k)``
    and, optionally, the strictly-lower entries ``(..., k (k - 1) / 2)`` in
    ``jnp.tril_indices(k, -1)`` order (``None``: diagonal factors).

    Examples
    --------
    >>> scale_tril(jnp.array([1.0, 2.0]), jnp.array([0.5])).tolist()
    [[1.0, 0.0], [0.5, 2.0]]
    """
    k = diagonal.shape[-1]
    tril = diagonal[..., :, None] * jnp.eye(k, dtype=diagonal.dtype)
    if lower is not None and k > 1:
        rows, cols = jnp.tril_indices(k, -1)
        tril = tril.at[..., rows, cols].set(lower)
    return tril


def recurrent_factory(n_hidden: int, n_layers: int, activation: str = "relu") -> NetworkFactory:
    """A factory of :class:`RecurrentEncoder` networks with the given width and head depth."""

    def factory(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Module:
        return RecurrentEncoder(in_features, out_features, n_hidden=n_hidden,
                                n_layers=n_layers, rngs=rngs, activation=activation)

    return factory
