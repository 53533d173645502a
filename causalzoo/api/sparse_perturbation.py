"""``SparsePerturbationVAE``: the user class of the sparse perturbation model.

The class is thin plumbing over :mod:`causalzoo.models`: it maps AnnData fields to model
arguments (through :mod:`causalzoo.data`), run the engine of :mod:`causalzoo.inference`, and
keeps what a fitted model needs to predict, save and load. The probabilistic program itself is
the plain NumPyro function in ``models/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike
from numpyro import handlers
from numpyro.infer import Predictive

from .._errors import CausalZooError, check_int
from ..blocks import _host_sampling
from ..data import (
    AnnDataRegistry,
    canonical_condition,
    design_matrix,
    encode_covariates,
    extract_arrays,
    get_registry,
    setup_anndata,
)
from ..data.anndata import _one_hot as covariate_one_hot
from ..data.streaming import anndata_source, control_batch_fn, control_pools, is_backed
from ..identifiability.shift_rotation import ShiftRotation, sparse_shift_rotation
from ..inference import EarlyStopping, two_speed_adam
from ..inference.nuts_fit import fit_by_method
from ..models.sparse_perturbation import (
    SparsePerturbationConfig,
    SparsePerturbationELBO,
    global_guide,
    sparse_perturbation_guide,
    sparse_perturbation_model,
)
from ._common import (
    FittedState,
    check_learning_rates,
    check_restart_criterion,
    register_user_class,
)

__all__ = ["SparsePerturbationVAE"]

MODEL_NAME = "sparse_perturbation"
_CHUNK = 2048
# predict pads its cells to a multiple of this (one compilation for similar sizes); each
# block of cells draws its counts from its own NumPy stream
_PREDICT_BLOCK = 256


# Jitted encoders/simulators shared across instances, keyed by (name, configuration, genes);
# oldest dropped first. The functions take the parameters as an argument, so an entry depends
# on nothing but its key.
_SHARED_PROGRAMS: dict[tuple, Any] = {}
_SHARED_MAX = 16


def _program_key(config: SparsePerturbationConfig, n_genes: int) -> tuple | None:
    """A hashable key that determines the traced programs of ``config``, or ``None`` when
    the configuration holds objects (custom networks, likelihood or prior instances) whose
    identity, not a name, defines the program; those are compiled per instance."""
    items = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "networks":
            if value:
                return None
            continue
        if isinstance(value, list):
            value = tuple(value)
        if value is not None and not isinstance(value, (str, int, float, bool, tuple)):
            return None
        items.append((f.name, value))
    return (tuple(items), int(n_genes))


def _context_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer id of each cell's covariate context (its row of covariate codes)."""
    if codes.shape[1] == 0:
        return np.zeros(codes.shape[0], np.int32), np.zeros((1, 0), np.int32)
    contexts, ids = np.unique(codes, axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int32), contexts


class SparsePerturbationVAE(FittedState):
    """PerturbedVAE-style sparse perturbation model on AnnData (SAMS-VAE as a special case).

    The generative story, identifiability class and references are in
    :mod:`causalzoo.models.sparse_perturbation`.

    Parameters
    ----------
    adata : anndata.AnnData
        Data registered with :meth:`setup_anndata`.
    **config_kwargs
        Hyper-parameters: ``n_latent_invariant``, ``n_latent_response``, ``n_hidden``,
        ``n_layers``, ``likelihood``, ``sparsity``, ``mask_probability``, ``effect_scale``,
        ``scm_graph``, ``couple_invariant``, ``alignment``, ``invariance``, ``learn_noise``,
        ``activation``, ``networks``; see
        :class:`~causalzoo.models.sparse_perturbation.SparsePerturbationConfig`.

    Examples
    --------
    >>> import causalzoo as cz
    >>> adata = cz.datasets.norman2019_subset()
    >>> cz.SparsePerturbationVAE.setup_anndata(adata, perturbation_key="perturbation",
    ...                                        control="control")
    >>> m = cz.SparsePerturbationVAE(adata, n_latent_invariant=4, n_latent_response=4)
    >>> m.fit(max_steps=20, progress=False)  # doctest: +SKIP
    >>> pred = m.predict(["KLF1+MAP2K6"], n_cells=100)  # doctest: +SKIP
    """

    spec_name = MODEL_NAME

    def __init__(self, adata, **config_kwargs):
        registry = get_registry(adata)
        self.config = SparsePerturbationConfig(**config_kwargs)
        self._check_likelihood(registry)
        self.adata = adata
        self.registry: AnnDataRegistry = registry
        self.response_rotation_: ShiftRotation | None = None
        self._init_fit_state()
        self.reference: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(
        cls,
        adata,
        *,
        perturbation_key: str = "perturbation",
        control: str | Sequence[str] = "control",
        layer: str | None = None,
        covariate_keys: Sequence[str] = (),
        count_data: bool = True,
    ) -> None:
        """Register ``adata``: where the values are, the perturbation column and its control
        label, and the covariates. See :func:`causalzoo.data.setup_anndata`.

        ``"A+B"`` labels set both perturbations (order-insensitive); ``count_data=False``
        for log-normalised values with ``likelihood="gaussian"``.
        """
        setup_anndata(
            adata,
            perturbation_key=perturbation_key,
            control=control,
            layer=layer,
            covariate_keys=covariate_keys,
            count_data=count_data,
        )

    @classmethod
    def from_arrays(
        cls,
        x: ArrayLike,
        u: ArrayLike,
        *,
        covariates: Mapping[str, Sequence[str]] | None = None,
        perturbation_names: Sequence[str] | None = None,
        gene_names: Sequence[str] | None = None,
        count_data: bool = True,
        **config_kwargs,
    ) -> SparsePerturbationVAE:
        """Build a model from arrays: ``x`` (cells, genes) and ``u``, either condition labels
        (``"control"``, ``"A"``, ``"A+B"``) or a (cells, T) multi-hot design.

        ``covariates`` maps covariate names to per-cell labels.
        """
        import anndata

        x = np.asarray(x)
        u = np.asarray(u)
        if x.ndim != 2:
            raise CausalZooError(f"x must be 2-D (cells, genes); got shape {x.shape}.")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise CausalZooError(
                f"x must hold numbers (integer or float counts); got dtype {x.dtype}. Convert "
                "it first, e.g. x.astype(np.float32), after checking that it holds no text."
            )
        if u.ndim == 2:
            if u.shape[0] != x.shape[0]:
                raise CausalZooError(
                    f"u has {u.shape[0]} rows but x has {x.shape[0]} cells."
                )
            names = list(perturbation_names or [f"P{i}" for i in range(u.shape[1])])
            if len(names) != u.shape[1]:
                raise CausalZooError(
                    f"{len(names)} perturbation_names for {u.shape[1]} design columns."
                )
            if not np.isin(u, (0, 1)).all():
                raise CausalZooError("A design matrix u must be multi-hot (0/1 entries).")
            labels = ["+".join(n for n, on in zip(names, row, strict=True) if on) or "control"
                      for row in u]
        elif u.ndim == 1:
            labels = [str(v) for v in u]
        else:
            raise CausalZooError(f"u must be 1-D labels or a 2-D design; got shape {u.shape}.")
        if len(labels) != x.shape[0]:
            raise CausalZooError(f"u has {len(labels)} entries but x has {x.shape[0]} cells.")
        obs = pd.DataFrame({"perturbation": pd.Categorical(labels)})
        for key, values in (covariates or {}).items():
            obs[key] = pd.Categorical([str(v) for v in values])
        obs.index = [f"cell{i}" for i in range(x.shape[0])]
        var = pd.DataFrame(index=list(gene_names or [f"gene{j}" for j in range(x.shape[1])]))
        var["gene_name"] = var.index
        adata = anndata.AnnData(X=x.astype(np.float32), obs=obs, var=var)
        cls.setup_anndata(
            adata,
            covariate_keys=tuple(covariates or ()),
            count_data=count_data,
        )
        return cls(adata, **config_kwargs)

    def _check_likelihood(self, registry: AnnDataRegistry) -> None:
        lik = self.config.likelihood_block
        if lik.count_data and not registry.count_data:
            raise CausalZooError(
                f"likelihood={lik.name!r} models counts but the data were set up with "
                "count_data=False. Use likelihood='gaussian' for log-normalised values, or set "
                "up the raw counts (layer='counts')."
            )

    # ------------------------------------------------------------------ fitting
    def _model_kwargs(self, n_genes: int | None = None) -> dict[str, Any]:
        return {"config": self.config, "n_genes": n_genes or self.registry.n_genes}

    def _arrays(self, adata=None) -> dict[str, np.ndarray]:
        return extract_arrays(self.adata if adata is None else adata, self.registry)

    def _arrays_to_encode(self, adata) -> dict[str, Any]:
        """The arrays of ``adata`` for encoding; a backed AnnData's matrix stays on disk
        (validated, then read a chunk of cells at a time, :mod:`causalzoo.data.streaming`)."""
        if is_backed(adata):
            _, arrays = anndata_source(adata, self.registry, prefetch=False)
            return arrays
        return self._arrays(adata)

    def fit(
        self,
        max_steps: int = 5000,
        batch_size: int | None = None,
        seed: int = 0,
        *,
        learning_rate: float = 1e-3,
        global_learning_rate: float | None = None,
        early_stopping: EarlyStopping | bool = True,
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
    ) -> SparsePerturbationVAE:
        """Fit by SVI on minibatches of ``batch_size`` cells (default ``min(256, n_cells)``).

        Networks train with Adam at ``learning_rate``; the global variational parameters
        (masks, effects, SCM weights) at ``global_learning_rate`` (default ten times
        ``learning_rate``), see :func:`causalzoo.inference.two_speed_adam`. Early stopping on
        a plateau of the training loss is on by default
        (:class:`~causalzoo.inference.EarlyStopping`).

        Continues from the current parameters when called again. Returns ``self``; the loss
        history is in ``self.history["loss"]`` (negative ELBO per step, plus the alignment
        and invariance terms when their weights are > 0, see
        :class:`~causalzoo.models.sparse_perturbation.SparsePerturbationELBO`).

        With ``checkpoint_dir`` the fit writes a checkpoint every ``checkpoint_every`` steps,
        at the end and on Ctrl-C (which returns the model as it stands); ``resume=True``
        continues the checkpointed fit, on a new model object too, to the same parameters as
        an uninterrupted fit with the same data and arguments. ``on_nonfinite="backoff"``
        halves the learning rate instead of stopping when the loss becomes non-finite; the
        diagnosis of a non-finite stop is in ``self.fit_info["diagnosis"]``. See
        :func:`causalzoo.inference.fit_svi` and the reliability guide.

        ``devices`` splits each minibatch over several devices (see ``fit_svi``). On an
        AnnData opened with ``backed="r"`` the counts are streamed from disk in shuffled
        chunks (:mod:`causalzoo.data.streaming`); with ``alignment > 0`` every chunk carries a
        pool of control cells of each covariate context, drawn from the whole file.

        ``method="nuts"`` samples the effects and SCM weights with NUTS, the networks fixed at
        the SVI fit, into ``self.nuts_result``; ``nuts_options`` are those of
        :func:`causalzoo.inference.nuts_fit.sparse_perturbation_nuts`.

        ``restarts=R`` fits from scratch with seeds ``seed, ..., seed + R - 1`` and keeps the
        fit with the lowest final loss (the mean over its last tenth of steps, at most 500);
        ``fit_info["restart_seeds"]`` and ``fit_info["restart_final_losses"]`` record them.
        Why: the ELBO is nearly flat along mixings of the latent space and a fit can settle
        in a worse arrangement; on the generator, of three fits the one with the lowest final
        loss recovered the response latents above the entangled floor on 5 of 5 draws, one
        fit on 2 or 3 of 5 (``docs/models/sparse_perturbation.md``).
        ``restart_criterion="marginal_ll"`` ranks them by :meth:`get_marginal_ll` instead
        (highest; ``fit_info["restart_marginal_lls"]``); untested on that generator.
        """
        if method != "svi" or nuts_options:  # NUTS with the networks fixed
            return fit_by_method(self, method, seed=seed, **nuts_options)
        check_restart_criterion(restart_criterion)
        if isinstance(restarts, bool) or restarts != 1:
            return self._fit_restarts(
                restarts, restart_criterion=restart_criterion, max_steps=max_steps,
                batch_size=batch_size, seed=seed,
                learning_rate=learning_rate, global_learning_rate=global_learning_rate,
                early_stopping=early_stopping, progress=progress,
                steps_per_call=steps_per_call, checkpoint_dir=checkpoint_dir, resume=resume,
                on_nonfinite=on_nonfinite, devices=devices,
                extra_state=("reference", "response_rotation_"),
            )
        if is_backed(self.adata):
            source, arrays = anndata_source(self.adata, self.registry)
        else:
            source, arrays = None, self._arrays()
        n_cells = arrays["x"].shape[0]
        batch_size = min(256, n_cells) if batch_size is None else batch_size
        data = source or {k: arrays[k] for k in ("x", "design", "covariates", "library_size")}
        batch_fn = None
        if self.config.alignment > 0:
            context, _ = _context_ids(arrays["covariate_codes"])
            if source is not None:  # each streamed chunk carries a pool of control cells
                data = source.with_controls(arrays["is_control"], context)
                batch_fn = control_batch_fn()
            else:
                data["context"] = context
                batch_fn = self._alignment_batch_fn(arrays["is_control"], context)

        global_learning_rate = check_learning_rates(learning_rate, global_learning_rate)
        try:
            config_record = self.config.to_dict()
        except CausalZooError:  # custom networks: a resume checks them by parameter shapes
            config_record = None
        self._run_svi(
            sparse_perturbation_model,
            sparse_perturbation_guide,
            data,
            batch_size=batch_size,
            max_steps=max_steps,
            seed=seed,
            optimizer=two_speed_adam(learning_rate, global_learning_rate),
            loss=SparsePerturbationELBO(self.config.alignment, self.config.invariance),
            static_kwargs=self._model_kwargs(),
            batch_fn=batch_fn,
            description="SparsePerturbationVAE",
            settings={"learning_rate": float(learning_rate),
                      "global_learning_rate": global_learning_rate},
            checkpoint_meta={"config": config_record},
            steps_per_call=steps_per_call,
            early_stopping=early_stopping,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
            on_nonfinite=on_nonfinite,
            devices=devices,
        )
        self.reference = self._reference_cells(arrays)
        self.response_rotation_ = None  # belongs to the parameters it was found for
        return self

    train = fit

    @staticmethod
    def _alignment_batch_fn(is_control, context):
        """Pair each minibatch cell with a random control cell of the same covariate context
        (``data["context"]``, one id per cell)."""
        pools = control_pools(is_control, context)
        width = max(p.size for p in pools)
        table = jnp.asarray(np.stack([np.resize(p, width) for p in pools]))
        counts = jnp.asarray([p.size for p in pools])

        def batch_fn(key, idx, data):
            batch = {k: data[k][idx] for k in ("x", "design", "covariates", "library_size")}
            ctx = data["context"][idx]
            pick = jax.random.randint(key, idx.shape, 0, counts[ctx])
            batch["x_control"] = data["x"][table[ctx, pick]]
            return batch

        return batch_fn

    # ------------------------------------------------------------------ posterior
    def _compiled(self, name: str, build):
        """A jitted function built once per model instance (parameters are an argument, so a
        refit or a new call reuses the compiled code), and shared with every other instance
        of the same configuration and gene count: a protocol that fits many models
        (``cz.evaluate`` over seeds) compiles its encoder and simulator once, not per model."""
        cache = self.__dict__.setdefault("_compiled_fns", {})
        if name not in cache:
            key = _program_key(self.config, self.registry.n_genes)
            fn = _SHARED_PROGRAMS.get((name, key)) if key is not None else None
            if fn is None:
                fn = jax.jit(build())
                if key is not None:
                    _SHARED_PROGRAMS[(name, key)] = fn
                    while len(_SHARED_PROGRAMS) > _SHARED_MAX:
                        _SHARED_PROGRAMS.pop(next(iter(_SHARED_PROGRAMS)))
            cache[name] = fn
        return cache[name]

    def _build_encoder(self):
        kwargs = self._model_kwargs()

        def encode(params, x, design):
            guide = handlers.substitute(handlers.seed(sparse_perturbation_guide, 0), params)
            tr = handlers.trace(guide).get_trace(x=x, design=design, **kwargs)
            inv, resp = tr["z_inv"]["fn"].base_dist, tr["z_resp"]["fn"].base_dist
            return inv.loc, inv.scale, resp.loc, resp.scale

        return encode

    def _encode(self, arrays) -> dict[str, np.ndarray]:
        """Posterior means and scales of ``z_inv`` and ``z_resp`` for every cell, in chunks of
        one fixed size (the last one padded), so one compilation serves any number of cells."""
        encode = self._compiled("encode", self._build_encoder)
        n = arrays["x"].shape[0]
        chunk = min(_CHUNK, n)
        outs = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            pad = chunk - (stop - start)
            x = np.pad(arrays["x"][start:stop], ((0, pad), (0, 0)))
            d = np.pad(arrays["design"][start:stop], ((0, pad), (0, 0)))
            outs.append([np.asarray(o)[: stop - start] for o in encode(self.params, x, d)])
        names = ("z_inv_loc", "z_inv_scale", "z_resp_loc", "z_resp_scale")
        return {name: np.concatenate([o[i] for o in outs]) for i, name in enumerate(names)}

    def _reference_cells(self, arrays) -> dict[str, np.ndarray]:
        """What prediction needs of the training data: the control cells' posterior over
        ``z_inv``, their library sizes and covariate contexts (kept with a saved model)."""
        idx = np.flatnonzero(arrays["is_control"])
        if idx.size == 0:
            return {}
        sub = {k: arrays[k][idx] for k in ("x", "design")}
        enc = self._encode(sub)
        return {
            "z_inv_loc": enc["z_inv_loc"],
            "z_inv_scale": enc["z_inv_scale"],
            "library_size": arrays["library_size"][idx],
            "covariate_codes": arrays["covariate_codes"][idx],
            "obs_names": np.asarray(self.adata.obs_names[idx], dtype=str),
        }

    def get_latent_representation(
        self,
        adata=None,
        *,
        block: str = "both",
        rotate_response: bool = False,
        write_obsm: bool | str = False,
    ) -> np.ndarray:
        """Posterior means of the latents, ``(n_cells, n_latent)``.

        Parameters
        ----------
        adata : anndata.AnnData, optional
            Cells to embed (default: the training data); must match the set-up genes.
        block : {"both", "invariant", "response"}
            ``"both"`` gives ``[z_inv, z_resp]``.
        rotate_response : bool
            Return the response block after :meth:`response_rotation` (whitened by the
            control cells and rotated so that the perturbations' shifts are sparsest), the
            estimate the identifiability claim is about when the fit left the response
            latents rotated.
        write_obsm : bool or str
            Also write the result to ``adata.obsm["X_causalzoo"]`` (or the given key).
        """
        self._require_fit()
        if block not in ("both", "invariant", "response"):
            raise CausalZooError(
                f"block={block!r}: use 'both', 'invariant' or 'response'."
            )
        target = self.adata if adata is None else adata
        arrays = self._arrays_to_encode(target)
        enc = self._encode(arrays)
        z_resp = enc["z_resp_loc"]
        if rotate_response:
            # the training cells' encodings serve both the rotation and the result
            own = (arrays, z_resp) if target is self.adata else None
            z_resp = self.response_rotation(_encoded=own).transform(z_resp).astype(z_resp.dtype)
        parts = {
            "both": [enc["z_inv_loc"], z_resp],
            "invariant": [enc["z_inv_loc"]],
            "response": [z_resp],
        }[block]
        z = np.concatenate(parts, axis=1)
        if write_obsm:
            key = write_obsm if isinstance(write_obsm, str) else "X_causalzoo"
            target.obsm[key] = z
        return z

    def response_rotation(self, *, n_starts: int = 32, seed: int = 0,
                          _encoded=None) -> ShiftRotation:
        """The whitening and rotation of the response latents that make the perturbations'
        mean shifts sparsest (:func:`causalzoo.identifiability.shift_rotation.
        sparse_shift_rotation`), found on the training cells and kept with the model.

        Why: the ELBO is nearly flat along rotations of the response space (Gaussian
        exogenous noise), so a fit can identify ``z_resp`` only up to a linear map; the
        sparsity of the shifts, the assumption the identifiability claim rests on, picks the
        rotation back. Measured on the generator in ``docs/models/sparse_perturbation.md``.
        Computed once per fit (``fit`` forgets it; calling with other ``n_starts`` or
        ``seed`` recomputes it) and saved with the model, with its ``n_starts`` and ``seed``.
        """
        self._require_fit()
        cached = self.response_rotation_
        settings = {"n_starts": int(n_starts), "seed": int(seed)}
        if cached is not None and (
            cached.n_starts is None  # saved by an older version: settings unknown, keep it
            or {"n_starts": cached.n_starts, "seed": cached.seed} == settings
        ):
            return cached
        if self.adata is None:
            raise CausalZooError(
                "response_rotation() needs the training cells: load the model with "
                "cz.load(path, adata=...)."
            )
        if _encoded is None:
            arrays = self._arrays_to_encode(self.adata)
            z_resp = self._encode({k: arrays[k] for k in ("x", "design")})["z_resp_loc"]
        else:
            arrays, z_resp = _encoded
        control = "\x00control"  # no condition string can be this
        labels = np.where(arrays["is_control"], control, np.asarray(arrays["condition"], str))
        self.response_rotation_ = sparse_shift_rotation(z_resp, labels, control, **settings)
        return self.response_rotation_

    @property
    def perturbation_names(self) -> list[str]:
        return list(self.registry.perturbation_vocabulary)

    def _latent_frame(self, values) -> pd.DataFrame:
        columns = [f"z_resp_{k}" for k in range(self.config.n_latent_response)]
        return pd.DataFrame(np.asarray(values), index=self.perturbation_names, columns=columns)

    def mask_probability(self) -> pd.DataFrame:
        """Posterior probability that perturbation ``t`` targets response latent ``k``.

        In the model's own (unrotated) axes, those of
        ``get_latent_representation(rotate_response=False)``. A mask does not carry over to
        the axes of :meth:`response_rotation` (a rotated shift is a mix of the latents'
        masked effects); there, read which latents a perturbation moves from
        ``shift(rotate_response=True)`` or from ``response_rotation().shifts`` (per
        condition).
        """
        self._require_fit()
        return self._latent_frame(self.config.sparsity_block.mask_probability(self.params))

    def shift(self, *, rotate_response: bool = False) -> pd.DataFrame:
        """Posterior mean shift of each perturbation on the response latents
        (mask probability times effect mean).

        In the model's own axes by default; ``rotate_response=True`` maps the shifts into
        the axes of :meth:`response_rotation` (the linear part of its map: a shift has no
        offset), matching ``get_latent_representation(rotate_response=True)``.
        """
        self._require_fit()
        block = self.config.sparsity_block
        shifts = np.asarray(block.mask_probability(self.params)) * np.asarray(
            block.effect_mean(self.params)
        )
        if rotate_response:
            shifts = shifts @ self.response_rotation().matrix
        return self._latent_frame(shifts)

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        conditions: Sequence[str] | str,
        n_cells: int = 100,
        *,
        covariates: Mapping[str, str] | None = None,
        seed: int = 0,
    ):
        """Predict cells under perturbation conditions, seen or unseen.

        For each condition (``"A"``, ``"A+B"``; any combination of known single
        perturbations), ``n_cells`` control cells of the covariate context are drawn (with
        replacement when there are fewer), their ``z_inv`` drawn from ``q(z_inv | x_ctrl)``, the
        design set to the condition, ``z_resp`` drawn from the SCM with a posterior draw of the
        shifts per cell, and counts sampled from the likelihood (for NB, ZINB and Poisson by
        NumPy's exact samplers on the host, from the parameters the compiled program returns;
        other likelihoods by their own ``sample``).

        Parameters
        ----------
        conditions : str or sequence of str
            Condition labels.
        n_cells : int
            Cells per condition.
        covariates : mapping, optional
            A covariate context, e.g. ``{"cell_type": "NK"}``; default: control cells of every
            context, each keeping its own covariates.
        seed : int
            Seed of the draws.

        Returns
        -------
        anndata.AnnData
            ``X`` and ``layers["counts"]`` hold the predicted values (counts for count
            likelihoods); ``obs`` has ``condition``, ``library_size``, ``source_cell`` and the
            covariates; ``obsm`` has ``z_inv`` and ``z_resp``.
        """
        import anndata

        self._require_fit()
        if isinstance(conditions, str):
            conditions = [conditions]
        conditions = list(conditions)
        if not conditions:
            raise CausalZooError("predict needs at least one condition, e.g. ['A+B'].")
        n_cells = check_int("n_cells", n_cells)
        if not self.reference:
            raise CausalZooError(
                "Prediction needs control cells to take z_inv from, and the training data had "
                "none."
            )
        reg = self.registry
        labels = [canonical_condition(c, reg.control) for c in conditions]
        design = design_matrix(labels, reg.perturbation_vocabulary, reg.control)
        ref = self.reference
        pool = np.arange(ref["z_inv_loc"].shape[0])
        if covariates is not None:
            target = encode_covariates(covariates, reg)[0]
            ref_onehot = self._one_hot(ref["covariate_codes"])
            pool = np.flatnonzero((ref_onehot == target).all(axis=1))
            if pool.size == 0:
                raise CausalZooError(
                    f"No control cells in the context {dict(covariates)}: prediction takes z_inv "
                    "from that context's control cells. Contexts with controls: "
                    f"{self._control_contexts()}."
                )
        rng = np.random.default_rng(seed)
        picks, eps_all = [], []
        for _ in labels:
            picks.append(rng.choice(pool, size=n_cells, replace=n_cells > pool.size))
            eps_all.append(rng.standard_normal((n_cells, self.config.n_latent_invariant)))
        pick = np.concatenate(picks)
        z_inv = ref["z_inv_loc"][pick] + ref["z_inv_scale"][pick] * np.concatenate(eps_all)
        lib = ref["library_size"][pick]
        values, z_resp = self._simulate(
            jax.random.key(seed), z_inv, lib, np.repeat(design, n_cells, axis=0),
            self._one_hot(ref["covariate_codes"][pick]),
        )
        obs = pd.DataFrame(
            {"condition": np.repeat(labels, n_cells), "library_size": lib,
             "source_cell": ref["obs_names"][pick]}
        )
        for j, k in enumerate(reg.covariate_keys):
            cats = np.asarray(reg.covariate_categories[k])
            obs[k] = cats[ref["covariate_codes"][pick, j]]
        values = values.astype(np.float32)
        for col in ["condition", *reg.covariate_keys]:
            obs[col] = pd.Categorical(obs[col])
        obs.index = [f"pred{i}" for i in range(len(obs))]
        var = pd.DataFrame({"gene": list(reg.gene_names)}, index=list(reg.gene_names))
        matrix = sp.csr_matrix(values) if self.config.likelihood_block.count_data else values
        out = anndata.AnnData(X=matrix, obs=obs, var=var)
        if self.config.likelihood_block.count_data:
            out.layers["counts"] = matrix.copy()
        out.obsm["z_inv"] = z_inv.astype(np.float32)
        out.obsm["z_resp"] = z_resp.astype(np.float32)
        out.uns["causalzoo"] = {"model": MODEL_NAME, "seed": int(seed)}
        return out

    def _one_hot(self, codes):
        return covariate_one_hot(codes, self.registry, np.float32)

    def _control_contexts(self) -> list[dict[str, str]]:
        reg = self.registry
        _, contexts = _context_ids(self.reference["covariate_codes"])
        return [
            {k: reg.covariate_categories[k][c]
             for k, c in zip(reg.covariate_keys, row, strict=True)}
            for row in contexts
        ]

    def _build_simulator(self):
        """The compiled part of :meth:`predict`: per cell, one posterior draw of the global
        latents, ``z_resp`` from the SCM, and the observation distribution of ``x``.

        It returns ``(x, z_resp)``, where ``x`` is the parameters of a built-in count
        likelihood (NB, ZINB, Poisson; a dict of ``(cells, genes)`` arrays, sampled on the
        host by :meth:`_simulate`, :mod:`causalzoo.blocks._host_sampling`), or for any other
        likelihood the values its own ``sample`` draws.
        """
        config, kwargs = self.config, self._model_kwargs()
        # a stand-in observation: the site is conditioned so that the program draws no
        # counts (JAX's exact count samplers loop per element)
        x_stand_in = np.zeros((1, kwargs["n_genes"]), np.float32)

        def simulate(params, key, z_inv, library_size, design, covariates):
            key_globals, key_cells = jax.random.split(key)
            draws = Predictive(
                partial(global_guide, design.shape[1], config=config),
                params=params,
                num_samples=z_inv.shape[0],
            )(key_globals)

            def one(key, draw, z, lib, d, c):
                def trace(conditioned):
                    model = handlers.substitute(
                        handlers.condition(sparse_perturbation_model, {**conditioned, **draw}),
                        params,
                    )
                    return handlers.trace(handlers.seed(model, key)).get_trace(
                        design=d[None], covariates=c[None], library_size=lib[None], **kwargs
                    )

                tr = trace({"z_inv": z[None], "x": x_stand_in})
                host = _host_sampling.device_params(tr["x"]["fn"])
                if host is None:
                    # the likelihood's own sampler, with the key the site always had (the
                    # conditioned trace above is dead code in the compiled program)
                    tr = trace({"z_inv": z[None]})
                    x = tr["x"]["value"][0]
                else:
                    shape = tr["x"]["fn"].shape()
                    x = {k: jnp.broadcast_to(v, shape)[0] for k, v in host.items()}
                return x, tr["z_resp"]["value"][0]

            keys = jax.random.split(key_cells, z_inv.shape[0])
            return jax.vmap(one)(keys, draws, z_inv, library_size, design, covariates)

        return simulate

    def _simulate(self, key, z_inv, library_size, design, covariates):
        """Draw cells from the model with ``z_inv`` given and one posterior draw of the global
        latents per cell; the cell count is padded to a multiple of 256 so that predictions of
        similar sizes share one compilation.

        Counts of the built-in count likelihoods are drawn on the host from the parameters
        the compiled program returns, each block of 256 cells with its own NumPy stream
        seeded by ``key`` (:func:`causalzoo.blocks._host_sampling.draw_cells`).
        """
        simulate = self._compiled("simulate", self._build_simulator)
        n = z_inv.shape[0]
        pad = -n % _PREDICT_BLOCK

        def padded(a):
            return np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), mode="edge")

        x, z_resp = simulate(
            self.params, key, padded(z_inv), padded(library_size), padded(design),
            padded(covariates),
        )
        if isinstance(x, dict):
            # NumPy streams seeded by the bits of a key derived from ``key`` (SeedSequence
            # hashes them: unrelated to JAX's threefry use of ``key`` on the device)
            seed_bits = np.asarray(jax.random.key_data(jax.random.fold_in(key, 1))).tolist()
            x = _host_sampling.draw_cells(
                jax.device_get(x), seed_bits, block=_PREDICT_BLOCK
            )
        return np.asarray(x)[:n], np.asarray(z_resp)[:n]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save configuration, vocabularies, genes and parameters as plain data (no pickle).

        The directory holds ``causalzoo.json`` and ``.npz`` files; it is written to a
        temporary directory first and renamed, so a failed save never leaves half a model.
        """
        reference = {k: np.asarray(v) for k, v in (self.reference or {}).items()}
        rotation = self.response_rotation_
        return self._write_saved(
            path, overwrite=overwrite, groups={"reference": reference},
            config=self.config.to_dict(), registry=self.registry.to_dict(),
            response_rotation=None if rotation is None else rotation.to_dict(),
        )

    @classmethod
    def _from_saved(cls, meta, arrays, adata=None, networks=None) -> SparsePerturbationVAE:
        config = SparsePerturbationConfig.from_dict(meta["config"], networks=networks)
        registry = AnnDataRegistry.from_dict(meta["registry"])
        self = cls.__new__(cls)
        self.config = config
        self.registry = registry
        self._check_likelihood(registry)
        if adata is not None:
            extract_arrays(adata[:1], registry)  # validates genes, keys and vocabularies
        self.adata = adata
        self._restore_fit_state(meta, arrays)
        self.reference = dict(arrays["reference"])
        rotation = meta.get("response_rotation")
        self.response_rotation_ = None if rotation is None else ShiftRotation.from_dict(rotation)
        return self

    def __repr__(self) -> str:
        c = self.config
        state = self._state_text()
        return (
            f"SparsePerturbationVAE(n_latent_invariant={c.n_latent_invariant}, "
            f"n_latent_response={c.n_latent_response}, likelihood={c.likelihood_block.name!r}, "
            f"perturbations={self.registry.n_perturbations}, genes={self.registry.n_genes}; "
            f"{state})"
        )


register_user_class(MODEL_NAME, SparsePerturbationVAE)
