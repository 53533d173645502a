"""``IVAE``: the user class of the identifiable VAE.

Thin plumbing over :mod:`causalzoo.models.ivae`: it maps an AnnData (or plain arrays) to the
model's ``x`` and ``u``, runs :func:`causalzoo.inference.fit_svi`, and keeps what a fitted
model needs to embed new data and to be saved as plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike
from numpyro import handlers
from numpyro.infer import TraceMeanField_ELBO

from .._errors import CausalZooError, check_int
from ..data.anndata import get_counts
from ..data.streaming import BackedRows, CellSource, checked_on_disk, is_backed
from ..inference import EarlyStopping
from ..inference.nuts_fit import fit_by_method
from ..models.ivae import IVAEConfig, ivae_encode, ivae_guide, ivae_model
from ._common import (
    FittedState,
    check_learning_rates,
    check_restart_criterion,
    register_user_class,
)

__all__ = ["IVAE", "IVAERegistry"]

MODEL_NAME = "ivae"
_SETUP_KEY = "setup_ivae"
_CHUNK = 2048


@dataclass(frozen=True)
class IVAERegistry:
    """Where :meth:`IVAE.setup_anndata` found the data (plain JSON-able values).

    Attributes
    ----------
    layer : str or None
        Layer with the observations (``None``: ``adata.X``).
    aux_key : str
        The ``obs`` column (labels, one-hot encoded) or ``obsm`` key (a matrix used as is)
        holding the auxiliary variable.
    aux_kind : str
        ``"labels"`` (an ``obs`` column) or ``"matrix"`` (an ``obsm`` entry).
    categories : list of str
        The label vocabulary, in one-hot order (empty for a matrix).
    n_aux : int
        Width of ``u``.
    feature_names : list of str
        ``var_names`` at set-up.
    count_data : bool
        Whether the values are counts (for count likelihoods).
    """

    layer: str | None
    aux_key: str
    aux_kind: str
    categories: list[str]
    n_aux: int
    feature_names: list[str]
    count_data: bool

    @property
    def n_observed(self) -> int:
        return len(self.feature_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> IVAERegistry:
        return cls(
            layer=None if d["layer"] in (None, "") else str(d["layer"]),
            aux_key=str(d["aux_key"]),
            aux_kind=str(d["aux_kind"]),
            categories=[str(c) for c in d["categories"]],
            n_aux=int(d["n_aux"]),
            feature_names=[str(f) for f in d["feature_names"]],
            count_data=bool(d["count_data"]),
        )


def _dense(matrix) -> np.ndarray:
    if sp.issparse(matrix):
        matrix = matrix.toarray()
    return np.asarray(matrix, dtype=np.float32)


def _aux_kind(adata, aux_key: str) -> str:
    if not isinstance(aux_key, str):
        raise CausalZooError(f"aux_key={aux_key!r} must be a string (an obs column or obsm key).")
    in_obs, in_obsm = aux_key in adata.obs.columns, aux_key in adata.obsm
    if in_obs and in_obsm:
        raise CausalZooError(
            f"aux_key={aux_key!r} is both an obs column and an obsm key; rename one of them."
        )
    if not (in_obs or in_obsm):
        raise CausalZooError(
            f"aux_key={aux_key!r} is neither an obs column ({list(adata.obs.columns)}) nor an "
            f"obsm key ({list(adata.obsm)}). Pass the key that holds the auxiliary variable "
            "(segment, domain or environment labels, or a covariate matrix)."
        )
    return "labels" if in_obs else "matrix"


def _aux_matrix(adata, registry: IVAERegistry) -> np.ndarray:
    """The auxiliary variable of ``adata`` as a float32 ``(cells, n_aux)`` matrix."""
    key = registry.aux_key
    if registry.aux_kind == "labels":
        if key not in adata.obs.columns:
            raise CausalZooError(
                f"obs has no column {key!r} with the auxiliary labels the model was set up with."
            )
        labels = adata.obs[key].astype(str).to_numpy()
        index = {c: i for i, c in enumerate(registry.categories)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise CausalZooError(
                f"obs[{key!r}] has labels {unknown[:5]} the model was not set up with; known "
                f"labels: {registry.categories[:10]}."
            )
        codes = np.fromiter((index[v] for v in labels), dtype=np.int64, count=labels.size)
        return np.eye(registry.n_aux, dtype=np.float32)[codes]
    if key not in adata.obsm:
        raise CausalZooError(
            f"obsm has no entry {key!r} with the auxiliary matrix the model was set up with."
        )
    u = _dense(adata.obsm[key])
    if u.ndim == 1:
        u = u[:, None]
    if u.ndim != 2 or u.shape[1] != registry.n_aux:
        raise CausalZooError(
            f"obsm[{key!r}] has shape {u.shape}; the model was set up with {registry.n_aux} "
            "auxiliary columns."
        )
    if not np.all(np.isfinite(u)):
        raise CausalZooError(f"obsm[{key!r}] contains NaN or infinite values.")
    return u


def _check_features(adata, registry: IVAERegistry) -> None:
    names = [str(v) for v in adata.var_names]
    if names != registry.feature_names:
        missing = sorted(set(registry.feature_names) - set(names))
        raise CausalZooError(
            "The AnnData's var_names differ from the ones the model was set up with "
            f"(missing: {missing[:5]}); subset and order it as the training data "
            "(adata[:, model.registry.feature_names])."
        )


def _check_values(x: np.ndarray, registry: IVAERegistry, rows: str = "") -> None:
    """Checks of dense observations (all of them, or the block of ``rows``)."""
    if not np.all(np.isfinite(x)):
        raise CausalZooError(f"The observations{rows} contain NaN or infinite values.")
    if registry.count_data and (np.any(x < 0) or np.any(x != np.round(x))):
        raise CausalZooError(
            f"count_data=True but the observations{rows} are not non-negative integers; set "
            "up with count_data=False for continuous values."
        )


def _observations(adata, registry: IVAERegistry) -> np.ndarray:
    """The observations of ``adata``, dense in memory (a backed AnnData's too: read in
    blocks, then held whole; :func:`_observations_on_disk` keeps them on disk)."""
    if is_backed(adata):
        x, _ = _observations_on_disk(adata, registry)
        return x[0:x.shape[0]]
    _check_features(adata, registry)
    x = _dense(get_counts(adata, registry.layer))
    _check_values(x, registry)
    return x


def _observations_on_disk(adata, registry: IVAERegistry) -> tuple[BackedRows, np.ndarray]:
    """The observations of a backed AnnData, left on disk (:class:`BackedRows`: read when
    sliced), validated a block of rows at a time; and the rows' sums (``float32``), summed
    in the same pass as a dense ``x.sum(-1)`` would."""
    _check_features(adata, registry)
    return checked_on_disk(
        get_counts(adata, registry.layer),
        lambda a, b, _, dense: _check_values(dense, registry, f" (rows {a}:{b})"),
    )


class IVAE(FittedState):
    """Identifiable VAE (iVAE) on AnnData or arrays.

    The generative story, identifiability class and references are in
    :mod:`causalzoo.models.ivae`.

    Parameters
    ----------
    adata : anndata.AnnData
        Data registered with :meth:`setup_anndata`.
    **config_kwargs
        Hyper-parameters: ``n_latent``, ``n_hidden``, ``n_layers``, ``activation``,
        ``layer_norm``, ``likelihood``, ``observation_scale``, ``prior_mean``; see
        :class:`~causalzoo.models.ivae.IVAEConfig`.

    Examples
    --------
    >>> import causalzoo as cz
    >>> data = cz.identifiability.generators.ivae(n_segments=10, n_per_segment=100,
    ...                                           n_latent=2, seed=0)
    >>> m = cz.IVAE.from_arrays(x=data.x, u=data.segment, n_latent=2)
    >>> m.fit(max_steps=100, batch_size=64, progress=False)  # doctest: +SKIP
    >>> z = m.get_latent_representation()  # doctest: +SKIP
    """

    spec_name = MODEL_NAME
    _saved_groups = ("params", "history")

    def __init__(self, adata, **config_kwargs):
        registry = self._registry_of(adata)
        self.config = IVAEConfig(**config_kwargs)
        self._check_likelihood(registry)
        self.adata = adata
        self.registry = registry
        self._init_fit_state()

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(
        cls,
        adata,
        *,
        aux_key: str = "u",
        layer: str | None = None,
        count_data: bool = False,
    ) -> IVAERegistry:
        """Register ``adata``: where the observations and the auxiliary variable are.

        Parameters
        ----------
        adata : anndata.AnnData
            Cells (points) x features. Only ``adata.uns["causalzoo"]`` is written. One
            opened with ``backed="r"`` is validated a block of rows at a time, not loaded.
        aux_key : str
            An ``obs`` column of labels (segment, domain, environment, perturbation; one-hot
            encoded) or an ``obsm`` key holding a ``(cells, n_aux)`` matrix used as is.
        layer : str, optional
            Layer with the observations (default ``adata.X``).
        count_data : bool
            The observations are counts (for ``likelihood="nb"``, ``"zinb"``,
            ``"poisson"``).

        Returns
        -------
        IVAERegistry
        """
        if getattr(adata, "is_view", False):
            raise CausalZooError(
                "setup_anndata writes adata.uns, which a view cannot hold; pass adata.copy()."
            )
        kind = _aux_kind(adata, aux_key)
        if kind == "labels":
            column = adata.obs[aux_key]
            if column.isna().any():
                raise CausalZooError(
                    f"obs[{aux_key!r}] has missing labels; fill or drop those cells first."
                )
            if isinstance(column.dtype, pd.CategoricalDtype):
                categories = [str(c) for c in column.cat.categories if (column == c).any()]
            else:
                categories = sorted({str(v) for v in column})
            n_aux = len(categories)
        else:
            categories = []
            matrix = adata.obsm[aux_key]
            shape = np.shape(matrix)
            n_aux = 1 if len(shape) == 1 else int(shape[1])
        registry = IVAERegistry(
            layer=layer,
            aux_key=aux_key,
            aux_kind=kind,
            categories=categories,
            n_aux=n_aux,
            feature_names=[str(v) for v in adata.var_names],
            count_data=bool(count_data),
        )
        _aux_matrix(adata, registry)  # validates labels / matrix
        if is_backed(adata):  # validates the values, a block of rows at a time
            _observations_on_disk(adata, registry)
        else:
            _observations(adata, registry)
        store = dict(adata.uns.get("causalzoo", {}))
        store[_SETUP_KEY] = registry.to_dict()
        adata.uns["causalzoo"] = store
        return registry

    @staticmethod
    def _registry_of(adata) -> IVAERegistry:
        store = adata.uns.get("causalzoo", {}) if hasattr(adata, "uns") else {}
        if _SETUP_KEY not in store:
            raise CausalZooError(
                "This AnnData has not been set up for the iVAE: call "
                "cz.IVAE.setup_anndata(adata, aux_key=...) first."
            )
        return IVAERegistry.from_dict(store[_SETUP_KEY])

    @classmethod
    def from_arrays(
        cls,
        x: ArrayLike,
        u: ArrayLike,
        *,
        feature_names: Sequence[str] | None = None,
        count_data: bool = False,
        **config_kwargs,
    ) -> IVAE:
        """Build a model from arrays: ``x`` (points, features) and ``u``, either 1-D labels
        (segments, domains; one-hot encoded) or a 2-D ``(points, n_aux)`` matrix used as is.
        """
        import anndata

        x = np.asarray(x)
        u = np.asarray(u)
        if x.ndim != 2:
            raise CausalZooError(f"x must be 2-D (points, features); got shape {x.shape}.")
        if u.ndim not in (1, 2):
            raise CausalZooError(
                f"u must be 1-D labels or a 2-D (points, n_aux) matrix; got shape {u.shape}."
            )
        if u.shape[0] != x.shape[0]:
            raise CausalZooError(f"u has {u.shape[0]} rows but x has {x.shape[0]} points.")
        names = list(feature_names or [f"x{j}" for j in range(x.shape[1])])
        if len(names) != x.shape[1]:
            raise CausalZooError(f"{len(names)} feature_names for {x.shape[1]} columns of x.")
        obs = pd.DataFrame(index=[f"cell{i}" for i in range(x.shape[0])])
        adata = anndata.AnnData(
            X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=names)
        )
        if u.ndim == 1:
            adata.obs["u"] = pd.Categorical([str(v) for v in u])
        else:
            adata.obsm["u"] = u.astype(np.float32)
        cls.setup_anndata(adata, aux_key="u", count_data=count_data)
        return cls(adata, **config_kwargs)

    def _check_likelihood(self, registry: IVAERegistry) -> None:
        lik = self.config.likelihood_block
        if lik.count_data and not registry.count_data:
            raise CausalZooError(
                f"likelihood={lik.name!r} models counts but the data were set up with "
                "count_data=False; use likelihood='gaussian', or set up counts with "
                "count_data=True."
            )

    # ------------------------------------------------------------------ fitting
    def _arrays(self, adata=None, *, on_disk: bool = False) -> dict[str, Any]:
        """Observations, auxiliary matrix and library sizes; with ``on_disk`` a backed
        AnnData's observations stay on disk (:class:`~causalzoo.data.streaming.BackedRows`,
        validated a block at a time and read a chunk of points at a time by whoever slices
        them), otherwise they are dense in memory."""
        adata = self.adata if adata is None else adata
        if adata is None:
            raise CausalZooError(
                "This model has no data attached: pass adata (cz.load(path, adata=...))."
            )
        if on_disk and is_backed(adata):
            x, sums = _observations_on_disk(adata, self.registry)
        else:
            x = _observations(adata, self.registry)
            sums = x.sum(-1)
        out = {"x": x, "u": _aux_matrix(adata, self.registry)}
        if self.config.likelihood_block.uses_library:
            out["library_size"] = np.maximum(sums, 1.0)
        return out

    def _arrays_to_encode(self, adata=None) -> dict[str, Any]:
        """:meth:`_arrays` with a backed AnnData's observations left on disk (the name the
        sparse perturbation model uses for the same thing)."""
        return self._arrays(adata, on_disk=True)

    def _static_kwargs(self) -> dict[str, Any]:
        return {"config": self.config, "n_observed": self.registry.n_observed}

    def fit(
        self,
        max_steps: int = 5000,
        batch_size: int | None = None,
        seed: int = 0,
        *,
        learning_rate: float = 3e-3,
        schedule: str = "cosine",
        early_stopping: EarlyStopping | bool = False,
        progress: bool = True,
        steps_per_call: int | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        checkpoint_every: int = 1000,
        on_nonfinite: str = "stop",
        devices=None,
        method: str = "svi",
        restarts: int = 1,
        restart_criterion: str = "loss",
        **nuts_options: Any,
    ) -> IVAE:
        """Fit by SVI (mean-field ELBO, analytic KL) on minibatches.

        Parameters
        ----------
        max_steps : int
            SVI steps.
        batch_size : int, optional
            Points per step (default ``min(128, n_points)``).
        seed : int
            Seed of initialisation, minibatch order and ELBO noise.
        learning_rate : float
            Adam's (initial) learning rate.
        schedule : {"cosine", "constant"}
            ``"cosine"`` decays the rate to 3 % of ``learning_rate`` over ``max_steps``
            (measured: the sources separate late, at small rates); ``"constant"`` keeps it.
        early_stopping : EarlyStopping or bool
            Off by default (a fixed step budget, so fits of different data are comparable;
            whether stopping on an ELBO plateau costs recovery has not been measured).
        progress : bool
            Show a progress bar.
        steps_per_call : int, optional
            SVI steps per compiled call (see :func:`causalzoo.inference.fit_svi`).
        checkpoint_dir, resume, checkpoint_every, on_nonfinite
            Periodic atomic checkpoints, exact resume, Ctrl-C checkpoint and the non-finite
            policy of :func:`causalzoo.inference.fit_svi` (see the reliability guide).
        method : {"svi", "nuts"}
            ``"nuts"`` samples the posterior with NUTS with the networks fixed at the SVI fit
            (``self.nuts_result``); ``nuts_options`` as in
            :func:`causalzoo.inference.nuts_fit.ivae_nuts` (``num_samples``, ``subsample``, ...).
        restarts : int
            ``R > 1`` fits from scratch with seeds ``seed, ..., seed + R - 1`` and keeps the
            fit with the lowest final loss (the mean over its last tenth of steps, at most
            500); ``fit_info["restart_seeds"]`` and ``fit_info["restart_final_losses"]``
            record them. The kept fit is bit-identical to ``fit(seed=<its seed>)``. Needs an
            unfitted model; does not combine with ``checkpoint_dir``/``resume``.
        restart_criterion : {"loss", "marginal_ll"}
            How the restarts are ranked: the lowest final loss (default), or the highest
            importance-weighted marginal likelihood of the training data
            (:meth:`get_marginal_ll`, recorded in ``fit_info["restart_marginal_lls"]``),
            which does not reward a fit for how well its guide fits its own posterior.

        Returns
        -------
        IVAE
            ``self``; calling ``fit`` again continues from the current parameters.

        Notes
        -----
        On an AnnData opened with ``backed="r"`` the observations stay on disk: they are
        validated a block at a time and streamed in shuffled chunks of points
        (:class:`causalzoo.data.CellSource`, default chunk: about 64 MiB of ``float32``
        rows). With one chunk covering every point and the same ``steps_per_call`` (whose
        default is one pass over a chunk when streaming, at least 50 steps in memory) the
        fit is the in-memory fit, bit for bit. ``method="nuts"`` loads them.
        """
        if method != "svi" or nuts_options:  # NUTS with the networks fixed
            return fit_by_method(self, method, seed=seed, **nuts_options)
        check_restart_criterion(restart_criterion)
        if isinstance(restarts, bool) or restarts != 1:
            return self._fit_restarts(
                restarts, restart_criterion=restart_criterion, max_steps=max_steps,
                batch_size=batch_size, seed=seed,
                learning_rate=learning_rate, schedule=schedule, early_stopping=early_stopping,
                progress=progress, steps_per_call=steps_per_call,
                checkpoint_dir=checkpoint_dir, resume=resume, on_nonfinite=on_nonfinite,
                devices=devices,
            )
        if self.adata is not None and is_backed(self.adata):
            # the points stream from disk in shuffled chunks (causalzoo.data.streaming); with
            # one chunk of all points this is the in-memory fit
            arrays = self._arrays_to_encode()
            data = CellSource(arrays["x"].matrix, {k: v for k, v in arrays.items() if k != "x"})
        else:
            data = arrays = self._arrays()
        n = arrays["x"].shape[0]
        batch_size = min(128, n) if batch_size is None else batch_size
        check_learning_rates(learning_rate)
        if schedule == "cosine":
            check_int("max_steps", max_steps)
            rate = optax.cosine_decay_schedule(float(learning_rate), int(max_steps), alpha=0.03)
        elif schedule == "constant":
            rate = float(learning_rate)
        else:
            raise CausalZooError(f"schedule={schedule!r} is unknown; use 'cosine' or 'constant'.")
        self._run_svi(
            ivae_model,
            ivae_guide,
            data,
            batch_size=batch_size,
            max_steps=max_steps,
            seed=seed,
            optimizer=optax.adam(rate),
            loss=TraceMeanField_ELBO(),
            static_kwargs=self._static_kwargs(),
            description="IVAE",
            settings={"learning_rate": float(learning_rate), "schedule": schedule},
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
        fn = self.__dict__.get("_encode_fn")
        if fn is None:
            config = self.config

            def encode(params, x, u):
                run = handlers.substitute(handlers.seed(ivae_encode, 0), params)
                return run(x, u, config)

            fn = self.__dict__["_encode_fn"] = jax.jit(encode)
        return fn

    def _posterior(self, arrays) -> tuple[np.ndarray, np.ndarray]:
        """Means and marginal standard deviations of ``q(z | x, u)``, in chunks of one size
        (one compilation for any number of points)."""
        encode = self._encoder()
        n = arrays["x"].shape[0]
        chunk = min(_CHUNK, n)
        locs, scales = [], []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            pad = ((0, chunk - (stop - start)), (0, 0))
            loc, scale_tril = encode(
                self.params, np.pad(arrays["x"][start:stop], pad),
                np.pad(arrays["u"][start:stop], pad),
            )
            tril = np.asarray(scale_tril)[: stop - start]
            locs.append(np.asarray(loc)[: stop - start])
            # marginal standard deviations: square roots of the diagonal of L L^T
            scales.append(np.sqrt((tril**2).sum(-1)))
        return np.concatenate(locs), np.concatenate(scales)

    def get_latent_representation(
        self,
        adata=None,
        *,
        give_scale: bool = False,
        write_obsm: bool | str = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Posterior means of the sources, ``(n_points, n_latent)``.

        Parameters
        ----------
        adata : anndata.AnnData, optional
            Points to embed (default: the training data); needs the set-up features and
            auxiliary key. One opened with ``backed="r"`` is read a chunk of points at a time,
            never whole.
        give_scale : bool
            Also return the posterior marginal standard deviations.
        write_obsm : bool or str
            Also write the means to ``adata.obsm["X_causalzoo"]`` (or the given key).
        """
        self._require_fit()
        target = self.adata if adata is None else adata
        # a backed AnnData is read a chunk of points at a time (_posterior slices it)
        loc, scale = self._posterior(self._arrays_to_encode(target))
        if write_obsm:
            key = write_obsm if isinstance(write_obsm, str) else "X_causalzoo"
            target.obsm[key] = loc
        return (loc, scale) if give_scale else loc

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save configuration, set-up and parameters as plain data (JSON + npz, no pickle)."""
        return self._write_saved(
            path, overwrite=overwrite, config=self.config.to_dict(),
            registry=self.registry.to_dict(),
        )

    @classmethod
    def _from_saved(cls, meta, arrays, adata=None, networks=None) -> IVAE:
        if networks:
            raise CausalZooError("The iVAE has no replaceable networks; load without networks=.")
        self = cls.__new__(cls)
        self.config = IVAEConfig.from_dict(meta["config"])
        self.registry = IVAERegistry.from_dict(meta["registry"])
        self._check_likelihood(self.registry)
        if adata is not None:
            _aux_matrix(adata[:1], self.registry)
            _observations(adata[:1], self.registry)
        self.adata = adata
        self._restore_fit_state(meta, arrays)
        return self

    def __repr__(self) -> str:
        c = self.config
        state = self._state_text()
        return (
            f"IVAE(n_latent={c.n_latent}, likelihood={c.likelihood_block.name!r}, "
            f"features={self.registry.n_observed}, n_aux={self.registry.n_aux}; {state})"
        )


register_user_class(MODEL_NAME, IVAE)
