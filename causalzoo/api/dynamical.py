"""``DynamicalCausalVAE``: the user class of the dynamical latent causal model.

Thin plumbing over :mod:`causalzoo.models.dynamical` in **sequence mode**: arrays
``x (n_units, n_steps, n_features)`` with one domain / perturbation label per unit. It encodes
the labels, runs :func:`causalzoo.inference.fit_svi` with units as the minibatch axis, and
keeps what a fitted model needs to embed sequences, report its lag graph and perturbation
targets, and be saved as plain data. Snapshot mode (AnnData with a time key, each cell
measured once) is :mod:`causalzoo.api.dynamical_snapshot`; ``DynamicalCausalVAE(adata)``
builds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpy.typing import ArrayLike
from numpyro import handlers

from .._errors import CausalZooError, check_int
from ..data.sequences import check_sequence_array, check_unit_labels
from ..data.streaming import CellSource
from ..inference import AlignedELBO, EarlyStopping
from ..models.dynamical import DynamicalConfig, dynamical_guide, dynamical_model
from ._common import (
    FittedState,
    check_learning_rates,
    check_restart_criterion,
    register_user_class,
)

__all__ = ["DynamicalCausalVAE"]

MODEL_NAME = "dynamical"
_CHUNK = 1024


def _encode_labels(u: np.ndarray, names: Sequence[str] | None):
    """Integer codes (the shape of ``u``) and the string vocabulary of domain labels."""
    if u.ndim > 1:
        codes, vocabulary = _encode_labels(u.ravel(), names)
        return codes.reshape(u.shape), vocabulary
    if names is not None:
        vocabulary = [str(n) for n in names]
        if len(set(vocabulary)) != len(vocabulary):
            raise CausalZooError(f"domain_names has duplicates: {vocabulary}.")
        if np.issubdtype(u.dtype, np.integer):
            codes = u.astype(np.int64)
            bad = codes[(codes < 0) | (codes >= len(vocabulary))]
            if bad.size:
                raise CausalZooError(
                    f"u holds code {int(bad[0])}, but the {len(vocabulary)} domains "
                    f"{vocabulary} have codes 0..{len(vocabulary) - 1}: codes must lie in "
                    "that range."
                )
            return codes.astype(np.int32), vocabulary
        lookup = {n: i for i, n in enumerate(vocabulary)}
        missing = sorted({str(v) for v in u} - set(lookup))
        if missing:
            raise CausalZooError(
                f"Unknown domain label(s) {missing[:5]}: not in domain_names {vocabulary}."
            )
        return np.array([lookup[str(v)] for v in u], np.int32), vocabulary
    if np.issubdtype(u.dtype, np.integer):
        if u.size and u.min() < 0:
            raise CausalZooError(f"Integer domain codes must be >= 0; got {int(u.min())}.")
        n = int(u.max()) + 1 if u.size else 0
        return u.astype(np.int32), [str(i) for i in range(n)]
    vocabulary = sorted({str(v) for v in u})
    lookup = {n: i for i, n in enumerate(vocabulary)}
    return np.array([lookup[str(v)] for v in u], np.int32), vocabulary


# two_speed_adam puts every parameter whose name starts with "log_" on the network rate
# (meant for gene-wise dispersions and noise scales), which also catches the guide's log
# noise-scale shift factors ("log_scale_shift_loc", "log_scale_shift_log_scale"): by default
# they move ten times slower than the mean shifts. fit(log_scale_shift_rate="global") puts
# them with the other global factors (measured in docs/models/dynamical_measurements.md:
# better on the LEAP generator, worse on the myoblast example, so it is not the default).
DOMAIN_SCALE_PARAMS = frozenset({"log_scale_shift_loc", "log_scale_shift_log_scale"})
LOG_SCALE_SHIFT_RATES = ("network", "global")


def global_params_adam(learning_rate, global_learning_rate, *,
                       log_scale_shift_rate: str = "global",
                       network_marker: str = "$params") -> optax.GradientTransformation:
    """:func:`causalzoo.inference.two_speed_adam`, with the domains' log noise-scale shift
    factors on ``global_learning_rate`` (``log_scale_shift_rate="global"``, like the other
    global factors: lag graph, targets, mean shifts, linear transition weights) or, like
    ``two_speed_adam``, on ``learning_rate`` (``"network"``). Networks and the
    ``log_``-named noise scales train at ``learning_rate``. Rates may be optax schedules.

    Examples
    --------
    >>> opt = global_params_adam(1e-3, 1e-2)
    """
    if log_scale_shift_rate not in LOG_SCALE_SHIFT_RATES:
        raise CausalZooError(
            f"log_scale_shift_rate={log_scale_shift_rate!r}: use 'network' (the learning "
            "rate of the networks) or 'global' (global_learning_rate)."
        )
    promoted = DOMAIN_SCALE_PARAMS if log_scale_shift_rate == "global" else frozenset()

    def labels(params):
        return {
            name: "global" if name in promoted or not (
                network_marker in name or name.startswith("log_")) else "network"
            for name in params
        }

    return optax.multi_transform(
        {"network": optax.adam(learning_rate), "global": optax.adam(global_learning_rate)},
        labels,
    )


def _is_anndata(obj) -> bool:
    return hasattr(obj, "obs") and hasattr(obj, "var_names") and hasattr(obj, "uns")


class DynamicalCausalVAE(FittedState):
    """CITE-VAE-style dynamical latent causal model on sequences or snapshots.

    The generative story, identifiability class and references are in
    :mod:`causalzoo.models.dynamical` (and :mod:`causalzoo.models.dynamical_snapshot`).
    Build it with :meth:`from_arrays` for sequences; for a single-cell time course call
    :meth:`setup_anndata` then ``DynamicalCausalVAE(adata, **config)``, which returns a
    :class:`~causalzoo.api.dynamical_snapshot.SnapshotDynamicalCausalVAE` (a subclass).

    Parameters
    ----------
    x : array_like (n_units, n_steps, n_features)
        Observed sequences.
    u : array_like of int (n_units,) or (n_units, n_steps)
        Domain code of each unit (``0..len(domain_names)-1``), or of each step of each
        unit (a perturbation switched on or off along a sequence: step ``t``'s code
        changes the mechanisms that produce ``z_t``).
    domain_names : sequence of str
        The domain vocabulary.
    feature_names : sequence of str, optional
        Names of the features.
    **config_kwargs
        Hyper-parameters of :class:`~causalzoo.models.dynamical.DynamicalConfig`:
        ``n_latent``, ``n_latent_invariant``, ``n_lags``, ``n_hidden``, ``n_layers``,
        ``likelihood``, ``transition``, ``edge_probability``, ``target_probability``, ...

    Examples
    --------
    >>> import numpy as np, causalzoo as cz
    >>> x = np.random.default_rng(0).normal(size=(64, 5, 6)).astype(np.float32)
    >>> m = cz.DynamicalCausalVAE.from_arrays(x=x, u=np.arange(64) % 2, n_latent=2)
    >>> m.fit(max_steps=20, batch_size=32, progress=False)  # doctest: +SKIP
    >>> m.get_latent_representation().shape  # doctest: +SKIP
    (64, 5, 2)
    """

    spec_name = MODEL_NAME
    _saved_groups = ("params", "history")

    def __new__(cls, *args, **kwargs):
        # DynamicalCausalVAE(adata, ...) builds the snapshot mode (AnnData set up with
        # setup_anndata); arrays build the sequence mode.
        if cls is DynamicalCausalVAE and args and _is_anndata(args[0]):
            from .dynamical_snapshot import SnapshotDynamicalCausalVAE

            return super().__new__(SnapshotDynamicalCausalVAE)
        return super().__new__(cls)

    @classmethod
    def setup_anndata(cls, adata, *, time_key: str = "time", perturbation_key: str | None = None,
                      layer: str | None = None, control: str | None = None,
                      time_step: float | None = None, count_data: bool = False):
        """Register a single-cell time course for **snapshot mode** (each cell measured once).

        See :meth:`causalzoo.api.dynamical_snapshot.SnapshotDynamicalCausalVAE.setup_anndata`
        for the parameters; then build the model with ``cz.DynamicalCausalVAE(adata, ...)``.
        """
        from .dynamical_snapshot import SnapshotDynamicalCausalVAE

        return SnapshotDynamicalCausalVAE.setup_anndata(
            adata, time_key=time_key, perturbation_key=perturbation_key, layer=layer,
            control=control, time_step=time_step, count_data=count_data,
        )

    def __init__(self, x, u, *, domain_names: Sequence[str],
                 feature_names: Sequence[str] | None = None, **config_kwargs):
        self.config = DynamicalConfig(**config_kwargs)
        self.x = self._check_x(x)
        self.u = np.asarray(u, np.int32)
        self.domain_names = [str(n) for n in domain_names]
        self.n_steps, self.n_features = self.x.shape[1], self.x.shape[2]
        self.feature_names = [
            str(f) for f in (feature_names or [f"feature{j}" for j in range(self.n_features)])
        ]
        if len(self.feature_names) != self.n_features:
            raise CausalZooError(
                f"{len(self.feature_names)} feature_names for {self.n_features} features."
            )
        if self.u.shape not in ((self.x.shape[0],), self.x.shape[:2]):
            raise CausalZooError(
                f"u must hold one label per unit, shape ({self.x.shape[0]},), or per unit "
                f"and step, shape {self.x.shape[:2]}; got {self.u.shape}."
            )
        if self.n_steps <= self.config.n_lags:
            raise CausalZooError(
                f"Sequences of {self.n_steps} steps are too short for n_lags="
                f"{self.config.n_lags}: need at least n_lags + 1 steps."
            )
        self._init_fit_state()

    def _check_x(self, x) -> np.ndarray:
        lik = self.config.likelihood_block
        return check_sequence_array(x, n_lags=self.config.n_lags, count_data=lik.count_data,
                                    likelihood=lik.name)

    @classmethod
    def from_arrays(
        cls,
        x: ArrayLike,
        u: ArrayLike | None = None,
        *,
        domain_names: Sequence[str] | None = None,
        feature_names: Sequence[str] | None = None,
        **config_kwargs,
    ) -> DynamicalCausalVAE:
        """Build a model from sequences ``x (n_units, n_steps, n_features)`` and domain
        labels ``u`` (strings or integer codes; ``None`` for a single domain), one per unit
        ``(n_units,)`` or one per unit and step ``(n_units, n_steps)``.

        ``domain_names`` fixes the vocabulary (integer ``u`` then indexes it); by default it
        is the sorted distinct labels (or ``0..max(u)`` for integer codes).
        """
        x = np.asarray(x)
        if u is None:
            u = np.zeros(x.shape[0] if x.ndim else 0, np.int64)
        u = check_unit_labels(u, x.shape[0] if x.ndim else 0,
                              x.shape[1] if x.ndim > 1 else None)
        codes, vocabulary = _encode_labels(u, domain_names)
        return cls(x, codes, domain_names=vocabulary, feature_names=feature_names,
                   **config_kwargs)

    # ------------------------------------------------------------------ fitting
    @property
    def n_domains(self) -> int:
        return len(self.domain_names)

    def _static_kwargs(self) -> dict[str, Any]:
        return {"config": self.config, "n_domains": self.n_domains}

    def _program(self):
        """The NumPyro model and guide this mode fits."""
        return dynamical_model, dynamical_guide

    def _fit_data(self) -> dict[str, np.ndarray]:
        """The arrays ``fit_svi`` minibatches (first axis: units)."""
        data = {"x": self.x, "u": self.u}
        if self.config.likelihood_block.uses_library:
            data["library_size"] = np.maximum(self.x.sum(-1), 1.0)
        return data

    def fit(
        self,
        max_steps: int = 5000,
        batch_size: int | None = None,
        seed: int = 0,
        *,
        learning_rate: float = 1e-3,
        global_learning_rate: float | None = None,
        schedule: str = "constant",
        log_scale_shift_rate: str = "network",
        early_stopping: EarlyStopping | bool = False,
        progress: bool = True,
        steps_per_call: int | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        checkpoint_every: int = 1000,
        on_nonfinite: str = "stop",
        devices=None,
        restarts: int = 1,
        restart_criterion: str = "loss",
    ) -> DynamicalCausalVAE:
        """Fit by SVI on minibatches of ``batch_size`` units (default ``min(256, n_units)``).

        In snapshot mode, on an AnnData opened with ``backed="r"``, the cells are streamed
        from disk in shuffled chunks (:class:`causalzoo.data.streaming.CellSource`), never
        read whole.

        Networks and noise scales train with Adam at ``learning_rate``, the global
        variational parameters (lag-graph and target logits, the domains' mean shifts, linear
        transition weights) at ``global_learning_rate`` (default ten times
        ``learning_rate``), see :func:`global_params_adam`. The domains' log noise-scale
        shift factors train at ``learning_rate`` by default (their names start with
        ``log_``, which :func:`causalzoo.inference.two_speed_adam` gives the network rate);
        ``log_scale_shift_rate="global"`` gives them ``global_learning_rate`` (better latent
        recovery on the LEAP generator, a worse fit of the myoblast example; measured in
        ``docs/models/dynamical_measurements.md``).
        ``schedule="constant"`` (default) keeps both rates fixed; ``"cosine"`` decays both to
        3 % of their value over ``max_steps`` (as :meth:`causalzoo.IVAE.fit`). The
        default budget is a starting point, not a recovery recipe: the recovery measured in
        ``docs/models/dynamical.md`` for snapshot mode on LEAP's linear process and for
        CaRiNG's process with changing noise used ``max_steps=20000, schedule="cosine"`` and
        ``restarts=3``; with 5,000 steps at a constant rate the kept snapshot fit crossed the
        recovery line on none of 5 seeds (4 of 5 with them).
        Calling it again continues from the current parameters (a cosine schedule starts
        again from ``learning_rate``). Returns ``self``; the loss history (the negative ELBO
        per step) is in ``self.history["loss"]``.

        ``checkpoint_dir``, ``resume``, ``checkpoint_every`` and ``on_nonfinite`` are those
        of :func:`causalzoo.inference.fit_svi` (periodic atomic checkpoints, exact resume,
        Ctrl-C checkpoint, non-finite diagnosis); see the reliability guide.

        ``restarts=R`` fits from scratch with seeds ``seed, ..., seed + R - 1`` and keeps the
        fit with the lowest final loss (the mean over its last tenth of steps, at most 500);
        ``fit_info["restart_seeds"]`` and ``fit_info["restart_final_losses"]`` record them.
        It needs an unfitted model and does not combine with ``checkpoint_dir``/``resume``.
        The kept fit is bit-identical to ``fit(seed=<its seed>)`` with the other arguments.
        ``restart_criterion="marginal_ll"`` ranks the fits by :meth:`get_marginal_ll`
        (highest; ``fit_info["restart_marginal_lls"]``) instead of the final loss: the
        ELBO also rewards a fit for how well its per-step guide fits its own posterior,
        which can rank an entangled fit first (``docs/models/dynamical_measurements.md``).
        """
        check_restart_criterion(restart_criterion)
        if isinstance(restarts, bool) or restarts != 1:
            return self._fit_restarts(
                restarts, restart_criterion=restart_criterion, max_steps=max_steps,
                batch_size=batch_size, seed=seed,
                learning_rate=learning_rate, global_learning_rate=global_learning_rate,
                schedule=schedule, log_scale_shift_rate=log_scale_shift_rate,
                early_stopping=early_stopping, progress=progress,
                steps_per_call=steps_per_call, checkpoint_dir=checkpoint_dir, resume=resume,
                on_nonfinite=on_nonfinite, devices=devices,
            )
        data = self._fit_data()
        n_units = data.n_cells if isinstance(data, CellSource) else len(data["u"])
        batch_size = min(256, n_units) if batch_size is None else batch_size
        global_learning_rate = check_learning_rates(learning_rate, global_learning_rate)
        if schedule == "cosine":
            check_int("max_steps", max_steps)
            optimizer = global_params_adam(
                optax.cosine_decay_schedule(float(learning_rate), int(max_steps), alpha=0.03),
                optax.cosine_decay_schedule(global_learning_rate, int(max_steps), alpha=0.03),
                log_scale_shift_rate=log_scale_shift_rate,
            )
        elif schedule == "constant":
            optimizer = global_params_adam(learning_rate, global_learning_rate,
                                           log_scale_shift_rate=log_scale_shift_rate)
        else:
            raise CausalZooError(f"schedule={schedule!r} is unknown; use 'constant' or 'cosine'.")
        settings = {"learning_rate": float(learning_rate),
                    "global_learning_rate": global_learning_rate}
        if schedule != "constant":  # recorded only when used: old checkpoints still resume
            settings["schedule"] = schedule
        if log_scale_shift_rate != "network":  # likewise; a checkpoint of the other grouping
            settings["log_scale_shift_rate"] = log_scale_shift_rate  # is refused, not misread
        model, guide = self._program()
        self._run_svi(
            model,
            guide,
            data,
            batch_size=batch_size,
            max_steps=max_steps,
            seed=seed,
            optimizer=optimizer,
            # The mean-field ELBO: analytic KL for the graph, targets, shifts and z_inv.
            loss=AlignedELBO(0.0),
            static_kwargs=self._static_kwargs(),
            description="DynamicalCausalVAE",
            settings=settings,
            steps_per_call=steps_per_call,
            early_stopping=early_stopping,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
            on_nonfinite=on_nonfinite,
            devices=devices,
        )
        return self

    train = fit

    # ------------------------------------------------------------------ posterior
    def _encoder(self):
        cache = self.__dict__.setdefault("_compiled_fns", {})
        if "encode" not in cache:
            kwargs = self._static_kwargs()

            def encode(params, x, u):
                guide = handlers.substitute(handlers.seed(dynamical_guide, 0), params)
                tr = handlers.trace(guide).get_trace(x=x, u=u, **kwargs)
                z = tr["z"]["fn"].mean
                z_inv = tr["z_inv"]["fn"].base_dist.loc if "z_inv" in tr else z[:, 0, :0]
                return z, z_inv

            cache["encode"] = jax.jit(encode)
        return cache["encode"]

    def get_latent_representation(
        self,
        x: ArrayLike | None = None,
        *,
        block: str = "dynamic",
    ) -> np.ndarray:
        """Posterior means of the latents.

        Parameters
        ----------
        x : array_like (n_units, n_steps, n_features), optional
            Sequences to embed (default: the training data). Units are encoded one by one
            (with ``encoder="recurrent"`` each from its whole sequence), so any number of
            units works; the number of steps must be the training one.
        block : {"dynamic", "invariant"}
            ``"dynamic"``: ``z_t``, shape ``(n_units, n_steps, n_latent)``;
            ``"invariant"``: ``z_inv``, shape ``(n_units, n_latent_invariant)``.
        """
        self._require_fit()
        if block not in ("dynamic", "invariant"):
            raise CausalZooError(f"block={block!r}: use 'dynamic' or 'invariant'.")
        if x is None:
            if self.x is None:
                raise CausalZooError(
                    "This model was loaded without its training data: pass the sequences to "
                    "embed, get_latent_representation(x=...)."
                )
            x = self.x
        else:
            x = self._check_x(x)
            if x.shape[1:] != (self.n_steps, self.n_features):
                raise CausalZooError(
                    f"x has shape {x.shape}; the model was fitted on (units, {self.n_steps}, "
                    f"{self.n_features})."
                )
        encode = self._encoder()
        n = x.shape[0]
        chunk = min(_CHUNK, n)
        outs = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            batch = np.pad(x[start:stop], ((0, chunk - (stop - start)), (0, 0), (0, 0)))
            # The guide's z does not depend on u; zeros keep one compiled shape.
            z, z_inv = encode(self.params, jnp.asarray(batch), jnp.zeros(chunk, jnp.int32))
            outs.append(np.asarray(z if block == "dynamic" else z_inv)[: stop - start])
        return np.concatenate(outs)

    def _label_codes(self, u) -> np.ndarray:
        """Codes of known domain labels (strings or codes; any shape, a scalar too)."""
        u = np.asarray(u)
        return _encode_labels(u.reshape(-1), self.domain_names)[0].reshape(u.shape)

    def predict(
        self,
        u: ArrayLike | None = None,
        *,
        x: ArrayLike | None = None,
        n_steps: int | None = None,
        n_samples: int = 100,
        seed: int = 0,
        library_size: ArrayLike | None = None,
    ) -> dict[str, np.ndarray]:
        """Sample whole sequences under domain labels ``u``, from scratch or continuing
        observed histories: what the units would do in a domain, or if a perturbation were
        switched on at some step.

        Each sample draws the global latents from the posterior (lag graph, targets, mean
        and noise-scale shifts, lag-weight changes), the paths from the learned transition
        under ``u`` and the observations from the likelihood
        (:func:`causalzoo.models.dynamical.forecast`).

        Parameters
        ----------
        u : label, or array_like (units,) or (units, steps)
            Known domain labels (or codes): one for all units, one per unit, or one per unit
            and step (e.g. ``"ctrl"`` for the first steps and ``"drug"`` after). May be
            omitted for a single-domain model.
        x : array_like (units, s, features), optional
            Observed histories (``s >= n_lags`` steps). Steps ``0..s-1`` of the paths are
            held at the posterior means the encoder gives for them (the invariant block
            too) and steps ``s..`` are drawn; without ``x`` the paths start from the
            model's initial law.
        n_steps : int, optional
            Length of the sampled sequences (default: the labels' steps for per-step
            labels, else the training length); longer than the training sequences
            extrapolates the dynamics.
        n_samples : int
            Draws per unit.
        seed : int
            Seed of the draws.
        library_size : float or array_like (units,) or (units, steps), optional
            Library sizes of count likelihoods (default: each unit's mean over the steps of
            ``x``, or the median over the training sequences).

        Returns
        -------
        dict
            ``"x"``: ``(n_samples, units, n_steps, features)`` sampled observations;
            ``"z"``: ``(n_samples, units, n_steps, n_latent)`` the paths (with ``x``, the
            first ``s`` steps are the encoded history).

        Examples
        --------
        >>> out = m.predict("drug", n_samples=200)  # doctest: +SKIP
        >>> u = np.where(np.arange(10) >= 4, "drug", "ctrl")[None]  # switch on at step 4
        >>> out = m.predict(u.repeat(len(x), 0), x=x[:, :4])  # doctest: +SKIP
        """
        self._require_fit()
        check_int("n_samples", n_samples)
        if u is None:
            if self.n_domains != 1:
                raise CausalZooError(
                    f"Pass `u`, the domain label(s) to predict under; the model knows "
                    f"{self.domain_names}."
                )
            u = 0
        codes = self._label_codes(u)
        lags, k = self.config.n_lags, self.config.n_latent
        prefix = z_inv = None
        if x is not None:
            x = np.asarray(x)
            if x.ndim != 3 or x.shape[2] != self.n_features or not lags <= x.shape[1]:
                raise CausalZooError(
                    f"x must be the observed histories, shape (units, s, {self.n_features}) "
                    f"with s >= n_lags = {lags}; got {x.shape}."
                )
            lik = self.config.likelihood_block
            # a history needs n_lags steps (not n_lags + 1): the shape was checked above
            x = check_sequence_array(x, n_lags=lags - 1, count_data=lik.count_data,
                                     likelihood=lik.name)
        n_units = (x.shape[0] if x is not None else codes.shape[0] if codes.ndim else 1)
        if codes.ndim == 0:
            codes = np.full(n_units, codes, np.int32)
        if codes.ndim > 2 or codes.shape[0] != n_units:
            raise CausalZooError(
                f"u must hold one label, one per unit ({n_units},) or one per unit and step "
                f"({n_units}, steps); got shape {codes.shape}."
            )
        default_steps = codes.shape[1] if codes.ndim == 2 else self.n_steps
        n_steps = default_steps if n_steps is None else n_steps
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or (
                n_steps <= lags):
            raise CausalZooError(f"n_steps must be an integer > n_lags = {lags}; got "
                                 f"{n_steps!r}.")
        if codes.ndim == 2 and codes.shape[1] != n_steps:
            raise CausalZooError(
                f"Per-step labels have {codes.shape[1]} steps but n_steps={n_steps}."
            )
        if x is not None:
            if x.shape[1] > n_steps:
                raise CausalZooError(
                    f"x has {x.shape[1]} steps, more than the n_steps={n_steps} to predict."
                )
            prefix, z_inv = self._encoder()(self.params, jnp.asarray(x, jnp.float32),
                                            jnp.zeros(n_units, jnp.int32))
            if not self.config.n_latent_invariant:
                z_inv = None
        library = self._predict_library(library_size, x, n_units, n_steps)

        per_draw = n_units * int(n_steps) * (self.n_features + k)
        chunk = int(max(1, min(n_samples, 2 ** 24 // max(per_draw, 1))))
        sampler = self._forecaster()
        keys = jax.random.split(jax.random.key(seed), n_samples)
        zs, xs = [], []
        for start in range(0, n_samples, chunk):
            batch = keys[start:start + chunk]
            if batch.shape[0] < chunk:  # one compiled shape: pad the last chunk
                batch = jnp.concatenate([batch, keys[:chunk - batch.shape[0]]])
            z, x_new = sampler(self.params, batch, jnp.asarray(codes), prefix, z_inv, library,
                               n_steps=int(n_steps))
            stop = min(chunk, n_samples - start)
            zs.append(np.asarray(z)[:stop])
            xs.append(np.asarray(x_new)[:stop])
        return {"x": np.concatenate(xs), "z": np.concatenate(zs)}

    def _forecaster(self):
        """``(params, keys, codes, prefix, z_inv, library, n_steps) -> (z, x)``, one draw of
        :func:`causalzoo.models.dynamical.forecast` per key, compiled once per shape."""
        from ..models.dynamical import forecast

        cache = self.__dict__.setdefault("_compiled_fns", {})
        if "forecast" not in cache:
            static = dict(n_features=self.n_features, n_domains=self.n_domains,
                          config=self.config)

            def sample(params, keys, codes, prefix, z_inv, library, n_steps):
                def draw(key):
                    return forecast(params, key, codes, prefix=prefix, z_inv=z_inv,
                                    n_steps=n_steps, library_size=library, **static)

                return jax.vmap(draw)(keys)

            cache["forecast"] = jax.jit(sample, static_argnames="n_steps")
        return cache["forecast"]

    def _predict_library(self, library_size, x, n_units, n_steps):
        if not self.config.likelihood_block.uses_library:
            return None
        if library_size is None:
            if x is not None:
                library_size = np.maximum(x.sum(-1), 1.0).mean(axis=1)
            elif self.x is not None:
                library_size = float(np.median(np.maximum(self.x.sum(-1), 1.0)))
            else:
                raise CausalZooError(
                    "This model was loaded without its sequences: pass library_size= (the "
                    "counts per unit and step) to predict counts."
                )
        lib = np.asarray(library_size, np.float32)
        if lib.ndim == 1:
            lib = lib[:, None]
        try:
            lib = np.broadcast_to(lib, (n_units, n_steps))
        except ValueError:
            raise CausalZooError(
                f"library_size must be a number, (units,) or (units, steps) = ({n_units}, "
                f"{n_steps}); got shape {np.shape(library_size)}."
            ) from None
        if not (np.isfinite(lib).all() and (lib > 0).all()):
            raise CausalZooError("library_size must be finite and > 0.")
        return jnp.asarray(lib)

    def lag_graph(self) -> np.ndarray:
        """Posterior edge probabilities of the lag graph, shape ``(n_lags, n_latent,
        n_latent)``: entry ``[l, j, i]`` is ``P(z_{t-l-1, j} -> z_{t, i})`` (parents in rows,
        children in columns)."""
        self._require_fit()
        probs = jax.nn.sigmoid(jnp.asarray(self.params["lag_graph_logits"]))  # (child, lag, parent)
        return np.asarray(jnp.transpose(probs, (1, 2, 0)))

    def lag_weight_changes(self) -> np.ndarray:
        """Posterior mean of each domain's change of the lag weights, shape ``(n_domains,
        n_lags, n_latent, n_latent)``: entry ``[u, l, j, i]`` is the change domain ``u``
        makes to the weight of ``z_{t-l-1, j} -> z_{t, i}`` (parents in rows, children in
        columns, as :meth:`lag_graph`). It is the change that acts, gated by the target and
        the edge: ``P(target) * E[change] * P(edge)``, the mean of the product under the
        guide, whose three factors are independent. Needs ``weight_shift_scale``.

        The entries whose change spreads most across the domains are those the domains'
        dynamics differ on (TDRL's changing causal dynamics; tested on
        ``generators.tdrl_changing`` in
        ``tests/identifiability/test_dynamical_tdrl_recovery.py``)."""
        self._require_fit()
        if "weight_shift_loc" not in self.params:
            raise CausalZooError(
                "this model's domains do not change lag weights (weight_shift_scale=None); "
                "build it with weight_shift_scale=... (e.g. 0.5) to learn the changes."
            )
        target = self.perturbation_targets().to_numpy()  # (dom, child)
        change = np.transpose(np.asarray(self.params["weight_shift_loc"]), (0, 2, 3, 1))
        return target[:, None, None, :] * change * self.lag_graph()[None]  # (dom, lag, par, child)

    def perturbation_targets(self) -> pd.DataFrame:
        """Posterior probability that each domain changes the mechanism of each latent."""
        self._require_fit()
        probs = np.asarray(jax.nn.sigmoid(jnp.asarray(self.params["target_logits"])))
        return pd.DataFrame(
            probs, index=self.domain_names,
            columns=[f"z_{i}" for i in range(self.config.n_latent)],
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save configuration, vocabularies and parameters as plain data (JSON + npz; no
        pickle). The training sequences are not saved."""
        return self._write_saved(
            path, overwrite=overwrite, mode="sequence", config=self.config.to_dict(),
            domain_names=self.domain_names, feature_names=self.feature_names,
            n_steps=int(self.n_steps),
        )

    @classmethod
    def _from_saved(cls, meta, arrays, adata=None, networks=None) -> DynamicalCausalVAE:
        if meta.get("mode") == "snapshot":
            from .dynamical_snapshot import SnapshotDynamicalCausalVAE

            return SnapshotDynamicalCausalVAE._from_saved(meta, arrays, adata, networks)
        if adata is not None:
            raise CausalZooError(
                "A sequence-mode DynamicalCausalVAE takes no AnnData: load it without adata "
                "and pass sequences to get_latent_representation(x=...)."
            )
        self = cls.__new__(cls)
        self.config = DynamicalConfig.from_dict(meta["config"], networks=networks)
        self.domain_names = [str(n) for n in meta["domain_names"]]
        self.feature_names = [str(n) for n in meta["feature_names"]]
        self.n_steps, self.n_features = int(meta["n_steps"]), len(self.feature_names)
        self.x, self.u = None, None
        self._restore_fit_state(meta, arrays)
        return self

    def __repr__(self) -> str:
        c = self.config
        state = self._state_text()
        return (
            f"DynamicalCausalVAE(n_latent={c.n_latent}, n_latent_invariant="
            f"{c.n_latent_invariant}, n_lags={c.n_lags}, transition={c.transition!r}, "
            f"prior={c.prior!r}, likelihood={c.likelihood_block.name!r}, "
            f"domains={self.n_domains}, steps={self.n_steps}, features={self.n_features}; {state})"
        )


register_user_class(MODEL_NAME, DynamicalCausalVAE)
