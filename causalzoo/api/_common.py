"""What every user class shares: the package version stamp, the class registry, ``load``,
and :class:`FittedState`, the base that runs ``fit_svi`` and saves/restores a fit."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import _io
from .._errors import CausalZooError, check_int
from ..inference.svi import fit_svi

__all__ = [
    "FittedState",
    "check_learning_rates",
    "check_restart_criterion",
    "load",
    "package_version",
    "record_fit",
    "register_user_class",
    "restart_final_loss",
]

_CLASSES: dict[str, Any] = {}
# get_marginal_ll's settings when fit(restarts=R, restart_criterion="marginal_ll") ranks fits
_RESTART_MARGINAL_LL = {"n_inner": 32, "n_samples": 4, "seed": 0}
_GROUPS = ("params", "reference", "history")


def package_version() -> str:
    """The installed causalzoo version, written into every saved model."""
    try:
        return importlib.metadata.version("causalzoo")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def record_fit(model: Any, result: Any, **settings: Any) -> None:
    """Store a :class:`~causalzoo.inference.FitResult` on a user class after ``fit``.

    Sets ``model.params``, appends the losses to ``model.history["loss"]`` (a resumed result
    already carries the checkpointed fit's whole history, so it replaces it) and writes
    ``model.fit_info``: steps so far, stop reason, diagnosis, timings, plus ``settings``
    (batch size, seed, learning rates, ...).
    """
    previous = model.history.get("loss", np.zeros(0, np.float32))
    earlier_steps = int(model.fit_info.get("n_steps", 0))
    if result.resumed_from:
        previous, earlier_steps = np.zeros(0, np.float32), 0
    model.history = {"loss": np.concatenate([previous, result.losses])}
    model.fit_info = {
        "n_steps": earlier_steps + result.n_steps,
        "stop_reason": result.stop_reason,
        "diagnosis": result.diagnosis,
        **settings,
        "compile_seconds": result.compile_seconds,
        "run_seconds": result.run_seconds,
    }
    model.params = result.params


def restart_final_loss(losses) -> float:
    """The final loss by which ``fit(restarts=R)`` ranks its fits: the mean of the last tenth
    of the loss history (at most 500 steps, at least one); infinite when that tail holds a
    non-finite value or the history is empty."""
    losses = np.asarray(losses, np.float64)
    tail = losses[-max(1, min(500, len(losses) // 10)):]
    return float(tail.mean()) if tail.size and np.isfinite(tail).all() else np.inf


def check_restart_criterion(criterion) -> str:
    """``criterion`` if it is ``"loss"`` or ``"marginal_ll"``, else a :class:`CausalZooError`."""
    if criterion not in ("loss", "marginal_ll"):
        raise CausalZooError(
            f"restart_criterion={criterion!r} is unknown; use 'loss' (lowest final loss) or "
            "'marginal_ll' (highest importance-weighted marginal likelihood, "
            "get_marginal_ll)."
        )
    return criterion


def check_learning_rates(learning_rate, global_learning_rate=None) -> float:
    """Refuse learning rates that are not finite numbers > 0 (booleans included), before any
    compilation. Returns the rate of the global parameters for two-speed Adam:
    ``global_learning_rate``, or ten times ``learning_rate`` when it is ``None``."""

    def bad(rate):
        number = isinstance(rate, (int, float, np.integer, np.floating))
        return isinstance(rate, bool) or not number or not 0 < rate < np.inf

    if bad(learning_rate) or (global_learning_rate is not None and bad(global_learning_rate)):
        got = f"learning_rate={learning_rate!r}"
        if global_learning_rate is not None:
            got += f", global_learning_rate={global_learning_rate!r}"
        raise CausalZooError(
            f"learning rates must be finite numbers > 0 (e.g. 1e-3); got {got}."
        )
    return float(global_learning_rate or 10 * learning_rate)


class FittedState:
    """Base of the user classes: the fit state (``params``, ``history``, ``fit_info``), the
    one call into :func:`causalzoo.inference.fit_svi`, and the saved-directory plumbing.

    A subclass sets ``spec_name`` (its zoo entry, the name saved models and checkpoints
    carry) and, for ``save``, has a
    ``config`` with ``to_dict()``. It calls :meth:`_run_svi` from its ``fit`` with what is
    its own (program, data, optimiser, loss, settings to record) and passes the options that
    every ``fit`` shares straight through.
    """

    spec_name: str = ""
    params: dict[str, Any] | None
    history: dict[str, np.ndarray]
    fit_info: dict[str, Any]

    def _init_fit_state(self) -> None:
        self.params = None
        self.history = {}
        self.fit_info = {}

    @property
    def is_fitted(self) -> bool:
        return self.params is not None

    def _require_fit(self) -> None:
        if not self.is_fitted:
            raise CausalZooError("The model is not fitted yet: call .fit() first.")

    def _state_text(self) -> str:
        """``"fitted, N steps"`` or ``"not fitted"``, for ``__repr__``."""
        if self.is_fitted:
            return f"fitted, {self.fit_info.get('n_steps', 0)} steps"
        return "not fitted"

    def _run_svi(
        self,
        model,
        guide,
        data,
        *,
        batch_size: int,
        max_steps: int,
        seed: int,
        optimizer,
        loss,
        static_kwargs: dict[str, Any],
        description: str,
        settings: dict[str, Any],
        checkpoint_meta: dict[str, Any] | None = None,
        batch_fn=None,
        **fit_options: Any,
    ):
        """Run ``fit_svi`` from the current parameters and record the result on ``self``.

        ``settings`` (learning rates, schedule, ...) go into ``fit_info`` and, with the model
        name, into the checkpoint metadata that a resume compares; ``checkpoint_meta`` adds
        what only the checkpoint needs (e.g. the configuration). ``fit_options`` are the
        options every ``fit`` passes through unchanged (``steps_per_call``,
        ``early_stopping``, ``progress``, ``checkpoint_dir``, ``checkpoint_every``,
        ``resume``, ``on_nonfinite``, ``devices``).
        """
        result = fit_svi(
            model,
            guide,
            data,
            batch_size=batch_size,
            max_steps=max_steps,
            seed=seed,
            optimizer=optimizer,
            loss=loss,
            static_kwargs=static_kwargs,
            batch_fn=batch_fn,
            init_params=self.params,
            description=description,
            checkpoint_meta={"model": self.spec_name, **(checkpoint_meta or {}), **settings},
            **fit_options,
        )
        record_fit(self, result, batch_size=int(batch_size), seed=int(seed), **settings)
        return result

    def _fit_restarts(
        self, restarts, *, seed, checkpoint_dir=None, resume=False,
        extra_state: tuple[str, ...] = (), restart_criterion: str = "loss", **options: Any,
    ):
        """``fit(restarts=R)``: R fits from scratch with seeds ``seed, ..., seed + R - 1``,
        keeping the best by ``restart_criterion``: ``"loss"`` (default), the lowest final
        loss (:func:`restart_final_loss`: the mean over its last tenth of steps, at most
        500); ``"marginal_ll"``, the highest :meth:`get_marginal_ll` on the training data
        (importance-weighted, so a loose guide does not decide; ``n_inner=32``,
        ``n_samples=4``, seed 0). Ties go to the earlier seed.

        Calls ``self.fit(seed=..., **options)`` once per seed on a cleared fit state and
        keeps the chosen fit's ``params``, ``history`` and ``fit_info`` plus the attributes
        named in ``extra_state`` (state a fit sets that belongs to its parameters, e.g. the
        sparse model's ``reference``). ``fit_info`` gains ``restart_seeds``,
        ``restart_final_losses`` and ``restart_criterion`` (and ``restart_marginal_lls``).
        Refuses ``checkpoint_dir``/``resume``, an unknown criterion and a model that is
        already fitted, before any fit. A fit stopped by Ctrl-C ends the restarts: the fits
        run so far are compared and ``fit_info["restarts_interrupted"]`` is set.
        """
        check_int("restarts", restarts)
        check_restart_criterion(restart_criterion)
        if checkpoint_dir is not None or resume:
            raise CausalZooError(
                "restarts > 1 fits several models from scratch and does not combine with "
                "checkpoint_dir/resume; fit each seed with its own checkpoint_dir instead."
            )
        if self.is_fitted:
            raise CausalZooError(
                "restarts > 1 starts every fit from scratch, and this model is already "
                "fitted; create a new model (or call fit without restarts to continue)."
            )
        names = ("params", "history", "fit_info", *extra_state)
        fits = []
        interrupted = False
        for r in range(int(restarts)):
            self._init_fit_state()
            self.fit(seed=seed + r, **options)
            final = restart_final_loss(self.history["loss"])
            marginal = None
            if restart_criterion == "marginal_ll":
                marginal = self.get_marginal_ll(**_RESTART_MARGINAL_LL)
                marginal = marginal if np.isfinite(marginal) else -np.inf
            fits.append((final, marginal, {name: getattr(self, name) for name in names}))
            if self.fit_info.get("stop_reason") == "interrupted":
                # Ctrl-C stops the restarts too; the fits so far are compared as they stand
                interrupted = True
                break
        finals, marginals, states = zip(*fits, strict=True)
        rank = finals if restart_criterion == "loss" else [-m for m in marginals]
        best = min(range(len(fits)), key=lambda r: (rank[r], r))  # ties: the earlier seed
        for name, value in states[best].items():
            setattr(self, name, value)
        self.fit_info = {
            **self.fit_info,
            "restart_seeds": [seed + r for r in range(len(fits))],
            "restart_final_losses": list(finals),
            "restart_criterion": restart_criterion,
        }
        if restart_criterion == "marginal_ll":
            self.fit_info["restart_marginal_lls"] = list(marginals)
        if interrupted:
            self.fit_info["restarts_interrupted"] = True
        return self

    def get_marginal_ll(
        self, data=None, *, n_inner: int = 32, n_samples: int = 4, seed: int = 0
    ) -> float:
        """Estimated log marginal likelihood of the data (higher is better), for comparing
        fits of the same data.

        Each cell's (or unit's) latents are integrated out by importance sampling from the
        amortised guide with ``n_inner`` draws, at each of ``n_samples`` draws of the global
        factors from their guide, and the cells' estimates are summed:
        ``sum_n log( mean_s mean_k p(x_n, z_nsk | g_s) / q(z_nsk | x_n) )``. Unlike the
        ELBO, the bound tightens as ``n_inner`` grows, so a fit is not ranked by how well
        its guide fits its own posterior. The per-cell terms are the ``"marginal"``
        log-likelihood of :meth:`to_datatree` (``log_likelihood="marginal"``).

        Parameters
        ----------
        data : optional
            Other cells or units set up like the training data (default: the training
            data), as for :meth:`to_datatree`.
        n_inner : int
            Importance samples per cell and draw of the globals.
        n_samples : int
            Draws of the global factors (at least 4).
        seed : int

        Returns
        -------
        float
        """
        self._require_fit()
        check_int("n_inner", n_inner)
        check_int("n_samples", n_samples, 4, meaning="draws of the global factors")
        dt = self.to_datatree(
            data, num_samples=n_samples, seed=seed, log_likelihood="marginal",
            n_inner=n_inner, posterior_predictive=False, include_local=False,
            observed_data=False,
        )
        from ..diagnostics.compare import heldout_lpd

        (name,) = dt["log_likelihood"].to_dataset().data_vars
        return heldout_lpd(dt, name)["lpd"]

    def _write_saved(
        self, path: str | Path, *, overwrite: bool, groups: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Path:
        """Save a fitted model as plain data (JSON + npz, no pickle): the parameters, the
        loss history, extra array ``groups`` and the metadata ``fields``. Written to a
        temporary directory and renamed, so a failed save never leaves half a model."""
        self._require_fit()
        arrays, paths = _io.flatten_params(self.params)
        meta = {
            "format_version": _io.FORMAT_VERSION,
            "causalzoo_version": package_version(),
            "model": self.spec_name,
            **fields,
            "param_paths": paths,
            "fit_info": self.fit_info,
        }
        all_groups = {"params": arrays, **(groups or {}), "history": dict(self.history)}
        return _io.write_model_dir(path, meta, all_groups, overwrite=overwrite)

    def _restore_fit_state(self, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
        """Set ``params``, ``history`` and ``fit_info`` from a saved directory's contents."""
        self.params = _io.unflatten_params(arrays["params"], meta["param_paths"])
        self.history = dict(arrays["history"])
        self.fit_info = dict(meta.get("fit_info", {}))

    def to_datatree(self, data=None, **kwargs):
        """The posterior as an ArviZ 1.x ``xarray.DataTree`` (variational draws as
        ``(chain=1, draw=S)``); see :func:`causalzoo.diagnostics.to_datatree` for the groups
        and the keyword arguments (``num_samples``, ``seed``, ``chunk_size``,
        ``log_likelihood``, ...). ``data``: other cells or units set up like the training
        data (an AnnData, or for sequence mode ``{"x": ..., "u": ...}``)."""
        from ..diagnostics import to_datatree

        return to_datatree(self, data, **kwargs)


def register_user_class(model_name: str, cls: Any) -> None:
    """Make ``cz.load`` rebuild saved models whose ``model`` field is ``model_name``.

    ``cls`` needs a classmethod ``_from_saved(meta, arrays, adata=None, networks=None)``;
    ``cls._saved_groups`` (optional) names the ``.npz`` groups it saved (default: params,
    reference, history).
    """
    _CLASSES[model_name] = cls


def load(path: str | Path, adata=None, *, networks=None):
    """Load a model saved with ``.save(path)``.

    Parameters
    ----------
    path : str or Path
        The saved directory.
    adata : anndata.AnnData, optional
        Data to attach (for latent representations); must have the saved genes, keys and
        vocabularies. Prediction works without it.
    networks : mapping, optional
        The custom network factories the model was built with, if any.
    """
    meta, _ = _io.read_model_dir(path, ())
    name = meta.get("model")
    if name not in _CLASSES:
        raise CausalZooError(
            f"{str(path)!r} holds a model {name!r} that this causalzoo does not know; known: "
            f"{sorted(_CLASSES)}."
        )
    cls = _CLASSES[name]
    meta, arrays = _io.read_model_dir(path, getattr(cls, "_saved_groups", _GROUPS))
    try:
        return cls._from_saved(meta, arrays, adata=adata, networks=networks)
    except CausalZooError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        # A field missing or malformed in causalzoo.json: say so rather than show the bare
        # traceback of the rebuild.
        raise CausalZooError(
            f"{str(path)!r} could not be rebuilt as a {name!r} model ({type(err).__name__}: "
            f"{err}). Its {_io.CONFIG_FILE} is incomplete or was edited, or it was saved by "
            f"an incompatible causalzoo ({meta.get('causalzoo_version', '?')}; this is "
            f"{package_version()}). Save the model again with this version."
        ) from err
