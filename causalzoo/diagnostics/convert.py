"""Fitted models to ArviZ 1.x ``xarray.DataTree``: posterior, predictive and likelihood draws.

ArviZ 1.x has no ``InferenceData``: it reads ``xarray.DataTree`` objects whose groups hold
variables with ``(chain, draw, ...)`` dims. NumPyro's own SVI converter gives a single
``sample`` dim, on which ``az.summary``, ``az.loo`` and ``az.plot_ppc_dist`` fail, and it
materialises every draw of every cell on the device at once. :func:`to_datatree` instead

* lays the ``S`` variational draws out as ``(chain=1, draw=S)``;
* draws the global latents once per draw, then walks the cells in fixed-size chunks (one
  compilation), conditioning the guide on those globals so that every chunk of draw ``s``
  sees the same global values; each chunk goes to host memory while the device computes
  the next one, so device memory is bounded by two chunks, not by the number of cells;
* draws the replicated counts of the built-in count likelihoods on the host with NumPy
  (:mod:`causalzoo.diagnostics._predictive`), not with JAX's per-element rejection loops;
* names dims after the model's plates (``cells``, ``perturbations``) and the user's labels
  (``genes``, latent names), with gene and perturbation names as coordinates.

Each user class plugs in through a small hook, registered with :func:`register_converter`,
that returns a :class:`PosteriorSource`: the model and guide functions, fitted parameters,
per-cell arrays, dim names and the extra groups. Everything else is generic.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import xarray as xr
from jax.scipy.special import logsumexp
from numpyro import handlers

from .._errors import CausalZooError, check_int
from . import _predictive

__all__ = [
    "PosteriorSource",
    "register_converter",
    "posterior_source",
    "to_datatree",
    "draws_to_datatree",
]

_CONVERTERS: dict[str, Callable[..., PosteriorSource]] = {}
# Host/device bytes one chunk may hold for the largest per-cell output (the predictive counts).
_CHUNK_BYTES = 2**27


@dataclass
class PosteriorSource:
    """What :func:`to_datatree` needs to know about one fitted model.

    Parameters
    ----------
    model, guide : callable
        The NumPyro model and guide; both are called with ``**cell_data`` (one chunk of
        cells) and ``**static_kwargs``. The guide must not draw the global latents
        differently per chunk in a way conditioning cannot fix: every non-cell site it
        samples is conditioned on one draw.
    params : dict
        Fitted parameters (``numpyro.param`` values and network weights).
    cell_data : dict of numpy arrays
        Model arguments with a leading cells axis (``x``, ``design``, …), sliced per chunk.
    static_kwargs : dict
        Keyword arguments that do not depend on the cells (configuration, sizes).
    observed : str
        The observed site (default ``"x"``); also the variable name in ``observed_data``,
        ``posterior_predictive`` and ``log_likelihood``.
    cell_plate : str
        The plate over cells (default ``"cells"``; ``"units"`` for sequences); also the
        name of that dim in every group.
    event_dims : dict
        Site name to the names of its event dims (``{"z_inv": ["latents_invariant"]}``);
        batch dims are named after the plates. Unnamed dims become ``{site}_dim_{i}``.
    coords : dict
        Coordinates of the named dims (``{"genes": [...], "perturbations": [...]}``).
    cell_names : sequence of str, optional
        Coordinate of the ``cells`` dim.
    constant_data : dict
        Name to ``(dims, array)``: the ``constant_data`` group (design, covariates).
    sample_stats : dict
        Name to ``(dims, array)``: extra ``sample_stats`` (e.g. the ELBO history on dim
        ``step``).
    derived : callable, optional
        ``derived(posterior) -> {name: (dims, array)}`` with arrays of leading dims
        ``(chain, draw)``: deterministic functions of the draws (e.g. ``shift = mask *
        effect``), added to ``posterior``.
    attrs : dict
        Attributes of the root node (model name, configuration summary).
    cell_floats : int, optional
        Floats per cell and draw held by the largest intermediate of one draw, when that is
        more than the observed features (e.g. a mixture prior over many components); the
        default chunk size keeps ``num_samples * chunk * max(features, cell_floats)`` floats
        under the chunk budget.
    """

    model: Callable
    guide: Callable
    params: dict[str, Any]
    cell_data: dict[str, np.ndarray]
    static_kwargs: dict[str, Any] = field(default_factory=dict)
    observed: str = "x"
    cell_plate: str = "cells"
    event_dims: dict[str, Sequence[str]] = field(default_factory=dict)
    coords: dict[str, Sequence] = field(default_factory=dict)
    cell_names: Sequence[str] | None = None
    constant_data: dict[str, tuple[Sequence[str], np.ndarray]] = field(default_factory=dict)
    sample_stats: dict[str, tuple[Sequence[str], np.ndarray]] = field(default_factory=dict)
    derived: (
        Callable[[dict[str, np.ndarray]], dict[str, tuple[Sequence[str], np.ndarray]]] | None
    ) = None
    attrs: dict[str, Any] = field(default_factory=dict)
    cell_floats: int | None = None

    @property
    def n_cells(self) -> int:
        return int(next(iter(self.cell_data.values())).shape[0])


def register_converter(model_name: str, hook: Callable[..., PosteriorSource]) -> None:
    """Teach :func:`to_datatree` a user class.

    Parameters
    ----------
    model_name : str
        The class's ``spec_name`` (``"sparse_perturbation"``, ``"ivae"``, …).
    hook : callable
        ``hook(fitted_model, adata) -> PosteriorSource``; ``adata`` is ``None`` for the data
        the model was fitted on, or other cells set up like them (held-out cells).
    """
    _CONVERTERS[model_name] = hook


def posterior_source(model, adata=None) -> PosteriorSource:
    """The :class:`PosteriorSource` of a fitted user class (through its registered hook)."""
    from . import _hooks  # noqa: F401  (registers the built-in hooks)

    if isinstance(model, PosteriorSource):
        return model
    name = getattr(model, "spec_name", None)
    if name not in _CONVERTERS:
        raise CausalZooError(
            f"to_datatree does not know {type(model).__name__!r} (spec_name={name!r}); known "
            f"models: {sorted(_CONVERTERS)}. Register one with "
            "causalzoo.diagnostics.register_converter(spec_name, hook)."
        )
    if getattr(model, "params", None) is None:
        raise CausalZooError("The model is not fitted yet: call .fit() before to_datatree().")
    return _CONVERTERS[name](model, adata)


def _in_plate(site, plate: str) -> bool:
    return any(frame.name == plate for frame in site["cond_indep_stack"])


def _per_cell(site, plate: str) -> jnp.ndarray:
    """A cell site's log-density summed over everything but the dim of the cell plate (the
    rightmost batch dim for ``cells``; ``units`` of a sequence model sits left of ``steps``)."""
    lp = site["fn"].log_prob(site["value"])
    dim = next((f.dim for f in site["cond_indep_stack"] if f.name == plate), -1)
    if lp.ndim < 2:
        return lp
    lp = jnp.moveaxis(lp, dim, 0)
    return lp.reshape(lp.shape[0], -1).sum(-1)


def _pointwise(site) -> jnp.ndarray:
    """An observed site's log-density per element (cells, features): the event dims that
    ``to_event`` declared are peeled off so that every count has its own term."""
    fn = site["fn"]
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn.log_prob(site["value"])


def _build_sampler(
    src: PosteriorSource, n_inner: int, predictive: bool, pointwise: bool = True
):
    model, guide, static = src.model, src.guide, src.static_kwargs
    obs, plate = src.observed, src.cell_plate

    def draw_globals(params, key, chunk):
        tr = handlers.trace(handlers.seed(handlers.substitute(guide, params), key)).get_trace(
            **chunk, **static
        )
        return {
            name: site["value"]
            for name, site in tr.items()
            if site["type"] == "sample" and not _in_plate(site, plate)
        }

    def one_sample(params, key, globals_, chunk):
        key_guide, key_model, key_pred = jax.random.split(key, 3)
        g = handlers.condition(handlers.substitute(guide, params), globals_)
        gtr = handlers.trace(handlers.seed(g, key_guide)).get_trace(**chunk, **static)
        values = {
            name: site["value"]
            for name, site in gtr.items()
            if site["type"] == "sample" and name != obs
        }
        m = handlers.condition(handlers.substitute(model, params), values)
        mtr = handlers.trace(handlers.seed(m, key_model)).get_trace(**chunk, **static)
        log_w, log_w_global = 0.0, 0.0
        for site in mtr.values():
            if site["type"] != "sample":
                continue
            if _in_plate(site, plate):
                log_w = log_w + _per_cell(site, plate)
            else:
                log_w_global = log_w_global + jnp.sum(site["fn"].log_prob(site["value"]))
        local = {}
        for name, site in gtr.items():
            if site["type"] != "sample":
                continue
            if _in_plate(site, plate):
                log_w = log_w - _per_cell(site, plate)
                local[name] = site["value"]
            else:
                log_w_global = log_w_global - jnp.sum(site["fn"].log_prob(site["value"]))
        out = {"local": local, "log_w": log_w, "log_w_global": log_w_global}
        if pointwise:
            out["log_lik"] = _pointwise(mtr[obs])
        if predictive:
            # the built-in count likelihoods are sampled on the host (_predictive)
            host = _predictive.device_params(mtr[obs]["fn"])
            if host is None:
                out["predictive"] = mtr[obs]["fn"].sample(key_pred)
            else:
                out["predictive_params"] = host
        return out

    def per_draw(params, key, globals_, chunk):
        keys = jax.random.split(key, n_inner)
        if n_inner == 1:
            first = one_sample(params, keys[0], globals_, chunk)
            first["log_marginal"] = first["log_w"]
            return first
        if not (predictive or pointwise):
            # One vmapped copy of the model and guide for all inner samples (half the
            # program to compile); the first inner sample is the stored one. Without
            # per-feature outputs the extra memory is the inner samples' cell latents.
            inner = jax.vmap(lambda k: one_sample(params, k, globals_, chunk))(keys)
            first = jax.tree_util.tree_map(lambda a: a[0], inner)
            log_ws = inner["log_w"]
        else:
            first = one_sample(params, keys[0], globals_, chunk)
            rest = jax.vmap(lambda k: one_sample(params, k, globals_, chunk)["log_w"])(keys[1:])
            log_ws = jnp.concatenate([first["log_w"][None], rest])
        first["log_marginal"] = logsumexp(log_ws, axis=0) - math.log(n_inner)
        return first

    def chunk_fn(params, keys, globals_, chunk):
        return jax.vmap(per_draw, in_axes=(None, 0, 0, None))(params, keys, globals_, chunk)

    def globals_fn(params, keys, chunk):
        return jax.vmap(draw_globals, in_axes=(None, 0, None))(params, keys, chunk)

    return jax.jit(globals_fn), jax.jit(chunk_fn)


_SAMPLERS: dict[Any, tuple] = {}


def _cached_sampler(
    src: PosteriorSource, n_inner: int, predictive: bool, pointwise: bool = True
):
    """The compiled samplers, shared by calls with the same model, guide and static
    arguments (parameters and data are arguments, so a second call does not recompile)."""
    try:
        key = (src.model, src.guide, src.observed, src.cell_plate, n_inner, predictive,
               pointwise, tuple(sorted(src.static_kwargs.items())))
        hash(key)
    except TypeError:  # unhashable static arguments: build afresh
        return _build_sampler(src, n_inner, predictive, pointwise)
    if key not in _SAMPLERS:
        if len(_SAMPLERS) > 16:
            _SAMPLERS.clear()
        _SAMPLERS[key] = _build_sampler(src, n_inner, predictive, pointwise)
    return _SAMPLERS[key]


def _dims_of(site_name, value_shape, batch_plates, src, leading=("chain", "draw")):
    event = list(src.event_dims.get(site_name, []))
    n_extra = len(value_shape) - len(event)
    names = list(batch_plates)[-n_extra:] if n_extra > 0 else []
    names = [None] * (n_extra - len(names)) + names
    dims = [n if n else f"{site_name}_dim_{i}" for i, n in enumerate(names)] + event
    return list(leading) + dims


def _site_plates(model_or_guide, src, params, chunk) -> dict[str, list[str]]:
    out = {}

    def plates(params, chunk):
        tr = handlers.trace(
            handlers.seed(handlers.substitute(model_or_guide, params), 0)
        ).get_trace(**chunk, **src.static_kwargs)
        for name, site in tr.items():
            if site["type"] == "sample":
                # plates are listed innermost first; dims read left to right, outermost first
                frames = sorted(site["cond_indep_stack"], key=lambda f: f.dim)
                out[name] = [f.name for f in frames]
        return 0

    # Only the plate structure is needed: trace abstractly (run op by op, every operation
    # of the guide would be compiled on its own).
    jax.eval_shape(plates, params, chunk)
    return out


def to_datatree(
    model,
    adata=None,
    *,
    num_samples: int = 100,
    seed: int = 0,
    chunk_size: int | None = None,
    posterior_predictive: bool = True,
    log_likelihood: str = "conditional",
    n_inner: int = 1,
    include_local: bool = True,
    observed_data: bool = True,
) -> xr.DataTree:
    """Posterior analysis of a fitted model as an ArviZ 1.x ``xarray.DataTree``.

    Parameters
    ----------
    model : fitted user class or PosteriorSource
        E.g. a fitted :class:`causalzoo.SparsePerturbationVAE`.
    adata : anndata.AnnData, optional
        Cells to analyse (default: the training data); held-out cells must be set up like
        the training data (same genes, keys and vocabularies). One opened with
        ``backed="r"`` (or training cells set up that way) is read a chunk of cells at a
        time by the built-in hooks of the sparse perturbation model, the iVAE and the
        dynamical model's snapshot mode.
    num_samples : int
        Variational draws ``S``, laid out as ``(chain=1, draw=S)``.
    seed : int
        Seed of the draws.
    chunk_size : int, optional
        Cells per compiled call (default: as many as keep one chunk's predictive draws, or
        the entry's larger per-cell intermediates such as the snapshot model's particle
        mixture, times ``n_inner`` for ``"marginal"``, under 128 MiB). Device memory scales
        with it (two chunks are in flight: the device computes the next while the host
        stores this one), not with the number of cells. The cell latents' draws depend on
        it: the same seed and chunk size give the same draws.
    posterior_predictive : bool
        Draw replicated data ``x_rep ~ p(x | z, globals)`` for every draw and cell (host
        memory ``S * cells * genes`` floats). The built-in count likelihoods (NB, ZINB,
        Poisson) are sampled on the host by NumPy's exact samplers, from the parameters
        the compiled program returns (JAX's exact samplers loop per element and dominated
        the run time); other observation models by their own ``sample`` on the device.
    log_likelihood : {"conditional", "marginal"}
        ``"conditional"``: ``log p(x_n | z_n, globals)`` at the drawn cell latents.
        ``"marginal"``: ``log p(x_n | globals)``, the cell latents integrated out by
        importance sampling with ``n_inner`` draws from the amortised guide; use this for
        LOO / model comparison, where the per-cell latents are not parameters.
    n_inner : int
        Inner importance samples per draw and cell for ``"marginal"``.
    include_local : bool
        Keep the per-cell latents (``cells`` dim) in ``posterior``.
    observed_data : bool
        Keep the ``observed_data`` group: the cells' features as a dense ``(cells, genes)``
        array in host memory. An AnnData opened with ``backed="r"`` is read a chunk of cells
        at a time (never whole, and never twice), but this group is still the dense matrix;
        ``False`` leaves it out (LOO and ``az.compare`` do not read it; the count PPCs do).

    Returns
    -------
    xarray.DataTree
        Groups ``posterior``, ``posterior_predictive``, ``log_likelihood``,
        ``observed_data``, ``constant_data`` and ``sample_stats`` (``elbo`` per step;
        per-draw ``log_weight`` (chain, draw, cells) ``= log p(x_n, z_n | g) - log q(z_n |
        x_n)`` and ``log_weight_joint`` (chain, draw) over all cells and globals, the
        importance weights of :func:`causalzoo.diagnostics.pareto_k`).

    Examples
    --------
    >>> import arviz as az
    >>> dt = to_datatree(fitted_model, num_samples=200)  # doctest: +SKIP
    >>> az.summary(dt, var_names=["shift"], kind="stats")  # doctest: +SKIP
    """
    check_int("num_samples", num_samples, 4)
    if log_likelihood not in ("conditional", "marginal"):
        raise CausalZooError(
            f"log_likelihood={log_likelihood!r}: use 'conditional' or 'marginal'."
        )
    check_int("n_inner", n_inner)
    from ..inference.nuts import NUTSResult

    if isinstance(model, NUTSResult):
        return model.to_datatree()
    src = posterior_source(model, adata)
    return draws_to_datatree(
        src,
        num_samples=int(num_samples),
        seed=seed,
        chunk_size=chunk_size,
        posterior_predictive=posterior_predictive,
        log_likelihood=log_likelihood,
        n_inner=int(n_inner) if log_likelihood == "marginal" else 1,
        include_local=include_local,
        observed_data=observed_data,
    )


def _default_chunk_size(src: PosteriorSource, num_samples: int, n_inner: int = 1) -> int:
    """Cells per compiled call that keep the largest per-cell intermediate of a chunk, the
    ``num_samples x n_inner`` draws of the features (or of ``src.cell_floats``), under
    ``_CHUNK_BYTES``: the ``n_inner`` importance samples of the marginal likelihood are
    evaluated together, so they count as draws."""
    n_features = int(np.prod(np.shape(src.cell_data[src.observed])[1:])) or 1
    width = max(n_features, int(src.cell_floats or 0))
    return max(1, min(src.n_cells, _CHUNK_BYTES // (4 * num_samples * n_inner * width)))


def draws_to_datatree(
    src: PosteriorSource,
    *,
    num_samples: int = 100,
    seed: int = 0,
    chunk_size: int | None = None,
    posterior_predictive: bool = True,
    log_likelihood: str = "conditional",
    n_inner: int = 1,
    include_local: bool = True,
    observed_data: bool = True,
) -> xr.DataTree:
    """:func:`to_datatree` on a :class:`PosteriorSource` (the generic part)."""
    n = src.n_cells
    obs = src.observed
    # a backed matrix (causalzoo.data.streaming.BackedRows) is read per chunk below
    x_src = src.cell_data[obs]
    x_obs = x_src if isinstance(x_src, np.ndarray) else None
    if chunk_size is None:
        chunk_size = _default_chunk_size(src, num_samples, n_inner)
    chunk_size = int(min(chunk_size, n))
    if chunk_size < 1:
        raise CausalZooError(f"chunk_size must be >= 1; got {chunk_size!r}.")
    params = src.params
    globals_fn, chunk_fn = _cached_sampler(
        src, n_inner, posterior_predictive, pointwise=log_likelihood == "conditional"
    )

    def chunk_at(start):
        stop = min(start + chunk_size, n)
        pad = chunk_size - (stop - start)
        out = {}
        for k, v in src.cell_data.items():
            v = np.asarray(v[start:stop])  # slice first: a backed matrix reads these rows only
            out[k] = np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1), mode="edge")
        return out, stop - start

    key_globals, key_cells = jax.random.split(jax.random.key(seed))
    first, first_valid = chunk_at(0)
    globals_ = globals_fn(params, jax.random.split(key_globals, num_samples), first)

    # Each output is allocated once, (chain=1, draw, cells, ...), and filled chunk by chunk:
    # no per-chunk lists to concatenate (which would hold every draw twice at the end).
    cat: dict[str, np.ndarray] = {}

    def store(name, value, start, valid):
        value = np.asarray(value)[:, :valid]
        if name not in cat:
            cat[name] = np.empty((1, value.shape[0], n, *value.shape[2:]), value.dtype)
        cat[name][0, :, start:start + valid] = value

    def launch(i):
        """Start chunk ``i`` on the device (dispatch is asynchronous)."""
        chunk, valid = (first, first_valid) if i == 0 else chunk_at(i * chunk_size)
        key_chunk = jax.random.fold_in(key_cells, i)
        keys = jax.random.split(key_chunk, num_samples)
        return chunk_fn(params, keys, globals_, chunk), valid, key_chunk, chunk[obs]

    n_chunks = -(-n // chunk_size)
    pool = (ThreadPoolExecutor(min(4, os.cpu_count() or 1))
            if posterior_predictive and (os.cpu_count() or 1) > 1 else None)
    log_w_global = None
    try:
        pending = launch(0)
        for i in range(n_chunks):
            start = i * chunk_size
            out, valid, key_chunk, x_chunk = pending
            res = jax.device_get(out)
            del out
            if observed_data and not isinstance(x_src, np.ndarray):
                if x_obs is None:
                    x_obs = np.empty((n, *x_chunk.shape[1:]), x_chunk.dtype)
                x_obs[start:start + valid] = x_chunk[:valid]
            if i + 1 < n_chunks:
                # the device computes the next chunk while the host stores (and samples)
                # this one: two chunks are in flight, not one
                pending = launch(i + 1)
            if log_w_global is None:
                log_w_global = np.asarray(res["log_w_global"])
            for name in ("log_lik", "log_w", "log_marginal", "predictive"):
                if name in res:
                    store(name, res[name], start, valid)
            if "predictive_params" in res:
                pp = res["predictive_params"]
                if "predictive" not in cat:
                    cat["predictive"] = np.empty(
                        (1, num_samples, n, *_predictive.event_shape(pp)), np.float32)
                # NumPy streams seeded by the bits of the chunk's key (SeedSequence hashes
                # them: unrelated to JAX's threefry use of that key)
                _predictive.draw_into(
                    pp, np.asarray(jax.random.key_data(key_chunk)).tolist(), valid,
                    cat["predictive"][0, :, start:start + valid], pool,
                )
            if include_local:
                for name, value in res["local"].items():
                    store(f"local:{name}", value, start, valid)
            del res
    finally:
        if pool is not None:
            pool.shutdown()

    plates = _site_plates(src.guide, src, params, first)
    cells = src.cell_plate  # the dim of the cell axis, named after the plate
    coords = {k: list(v) for k, v in src.coords.items()}
    coords[cells] = list(src.cell_names) if src.cell_names is not None else list(range(n))

    posterior = {}
    for name, value in jax.device_get(globals_).items():
        value = np.asarray(value)[None]
        posterior[name] = (_dims_of(name, value.shape[2:], plates.get(name, []), src), value)
    if include_local:
        for key, value in cat.items():
            if key.startswith("local:"):
                name = key.split(":", 1)[1]
                dims = _dims_of(name, value.shape[2:], plates.get(name, []), src)
                posterior[name] = (dims, value)
    if src.derived is not None:
        arrays = {k: v[1] for k, v in posterior.items()}
        for name, (dims, value) in src.derived(arrays).items():
            posterior[name] = (["chain", "draw", *dims], np.asarray(value))

    default_dims = [f"{obs}_dim_{i}" for i in range(first[obs].ndim - 1)]
    obs_dims = [cells, *src.event_dims.get(obs, default_dims)]
    if log_likelihood == "conditional":
        ll = (["chain", "draw", *obs_dims], cat["log_lik"])
    else:
        ll = (["chain", "draw", cells], cat["log_marginal"])
    groups: dict[str, xr.Dataset] = {}

    def dataset(variables):
        data_vars = {k: (list(d), np.asarray(v)) for k, (d, v) in variables.items()}
        ds = xr.Dataset(data_vars)
        used = {d for var in ds.data_vars.values() for d in var.dims}
        ds = ds.assign_coords({d: c for d, c in coords.items() if d in used})
        for d in ("chain", "draw"):
            if d in used:
                ds = ds.assign_coords({d: np.arange(ds.sizes[d])})
        return ds

    groups["posterior"] = dataset(posterior)
    if posterior_predictive:
        pred = cat["predictive"].astype(first[obs].dtype, copy=False)
        groups["posterior_predictive"] = dataset({obs: (["chain", "draw", *obs_dims], pred)})
    groups["log_likelihood"] = dataset({obs: ll})
    if observed_data:
        groups["observed_data"] = dataset({obs: (obs_dims, x_obs)})
    if src.constant_data:
        groups["constant_data"] = dataset(dict(src.constant_data))
    stats = {
        "log_weight": (["chain", "draw", cells], cat["log_w"]),
        "log_weight_joint": (
            ["chain", "draw"],
            (cat["log_w"].sum(-1) + log_w_global[None]).astype(np.float64),
        ),
        **src.sample_stats,
    }
    groups["sample_stats"] = dataset(stats)
    for ds in groups.values():
        ds.attrs.update({"inference_library": "numpyro", "inference_method": "svi"})
    tree = xr.DataTree.from_dict(groups)
    # netCDF attributes take numbers and strings only (no bools, no None)
    tree.attrs.update(
        {
            k: int(v) if isinstance(v, bool) else v if isinstance(v, (int, float, str)) else str(v)
            for k, v in src.attrs.items()
        }
    )
    tree.attrs["log_likelihood"] = log_likelihood
    tree.attrs["num_samples"] = num_samples
    return tree

