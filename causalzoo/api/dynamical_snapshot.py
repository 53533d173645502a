"""Snapshot mode of ``DynamicalCausalVAE``: single-cell time courses, each cell seen once.

Plumbing over :mod:`causalzoo.models.dynamical_snapshot`. :meth:`SnapshotDynamicalCausalVAE.
setup_anndata` (also reachable as ``cz.DynamicalCausalVAE.setup_anndata``) validates the time
and perturbation columns and fixes the time grid; ``cz.DynamicalCausalVAE(adata, **config)``
then builds a :class:`SnapshotDynamicalCausalVAE`. It fits with cells as the minibatch axis (a
backed AnnData's streamed from disk in shuffled chunks of cells), embeds cells (their latent
state at their time point), predicts the expression of any perturbation at any grid time
point, and saves as plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from numpyro import handlers
from numpyro.infer import Predictive

from .._errors import CausalZooError, check_int
from ..data.anndata import densify, get_counts
from ..data.streaming import BackedRows, CellSource, checked_on_disk, is_backed
from ..data.validation import (
    check_count_matrix,
    check_nonempty,
    check_obs_keys,
    check_perturbation_column,
    check_time_column,
)
from ..models.dynamical import DynamicalConfig, global_guide
from ..models.dynamical_snapshot import (
    N_PARTICLES,
    _refuse_weight_shift,
    path_length,
    snapshot_guide,
    snapshot_model,
)
from .dynamical import MODEL_NAME, DynamicalCausalVAE

PARTICLES_MEANING = "particle paths per perturbation"

__all__ = ["SnapshotDynamicalCausalVAE", "SnapshotRegistry"]

_SETUP_KEY = "setup_dynamical_snapshot"
_CHUNK = 1024
_PAD = 256
_MAX_GRID = 1000
_SINGLE_DOMAIN = "all"


@dataclass(frozen=True)
class SnapshotRegistry:
    """Where :meth:`SnapshotDynamicalCausalVAE.setup_anndata` found the data (JSON-able).

    Attributes
    ----------
    layer : str or None
        Layer with the expression values (``None``: ``adata.X``).
    time_key : str
        ``obs`` column of time points.
    perturbation_key : str or None
        ``obs`` column of perturbation / domain labels (``None``: one domain).
    domain_names : list of str
        The perturbation vocabulary, in code order.
    control : str or None
        The label whose mechanisms are the base ones (no shifts).
    time_origin : float
        Time of step 0.
    time_step : float or None
        Time between grid steps; ``None``: the distinct training times, in order, are the steps.
    time_values : list of float
        Time of each grid step seen in training (the grid is ``0..len(time_values)-1``).
    feature_names : list of str
        ``var_names`` at set-up.
    count_data : bool
        Whether the values are counts (for count likelihoods).
    """

    layer: str | None
    time_key: str
    perturbation_key: str | None
    domain_names: list[str]
    control: str | None
    time_origin: float
    time_step: float | None
    time_values: list[float]
    feature_names: list[str]
    count_data: bool

    @property
    def n_times(self) -> int:
        return len(self.time_values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> SnapshotRegistry:
        def opt(v, kind):
            return None if v in (None, "") else kind(v)

        return cls(
            layer=opt(d["layer"], str),
            time_key=str(d["time_key"]),
            perturbation_key=opt(d["perturbation_key"], str),
            domain_names=[str(c) for c in d["domain_names"]],
            control=opt(d["control"], str),
            time_origin=float(d["time_origin"]),
            time_step=opt(d["time_step"], float),
            time_values=[float(t) for t in d["time_values"]],
            feature_names=[str(f) for f in d["feature_names"]],
            count_data=bool(d["count_data"]),
        )

    def steps_of(self, times: np.ndarray, *, extrapolate: bool = False) -> np.ndarray:
        """Grid steps of time points; a time off the grid is a :class:`CausalZooError`."""
        times = np.asarray(times, np.float64)
        if self.time_step is None:
            grid = np.asarray(self.time_values)
            steps = np.searchsorted(grid, times).clip(0, len(grid) - 1)
            off = ~np.isclose(grid[steps], times)
            fix = ("set up with time_step=<the time between grid steps> to allow other time "
                   "points (e.g. extrapolation)")
        else:
            raw = (times - self.time_origin) / self.time_step
            steps = np.rint(raw).astype(np.int64)
            off = ~np.isclose(raw, steps, atol=1e-6) | (steps < 0)
            fix = (f"time points are {self.time_origin:g} + k * {self.time_step:g} for integers "
                   "k >= 0")
            past = ~off & (steps >= self.n_times)
            if not extrapolate and past.any():
                # On the grid, but after the last training time: only predict() extrapolates.
                bad = times[np.flatnonzero(past)[0]]
                last = self.time_values[-1]
                raise CausalZooError(
                    f"Time point {bad:g} is on the time grid ({fix}) but after the last "
                    f"training time point {last:g}: cells can only be embedded or scored at "
                    f"the training time points {self._grid_text()}. To predict the population "
                    f"at {bad:g}, use predict(perturbation, time={bad:g}), which extrapolates "
                    "the learned dynamics."
                )
        if off.any():
            bad = times[np.flatnonzero(off)[0]]
            raise CausalZooError(
                f"Time point {bad:g} is not on the model's time grid {self._grid_text()}; {fix}."
            )
        return steps.astype(np.int32)

    def time_of(self, steps: np.ndarray) -> np.ndarray:
        """Time points of grid steps (steps past the training grid need ``time_step``)."""
        steps = np.asarray(steps)
        if self.time_step is not None:
            return self.time_origin + steps * self.time_step
        return np.asarray(self.time_values, np.float64)[steps]

    def _grid_text(self) -> str:
        shown = ", ".join(f"{t:g}" for t in self.time_values[:8])
        return f"[{shown}{', ...' if self.n_times > 8 else ''}]"

    def codes_of(self, labels) -> np.ndarray:
        """Integer codes of perturbation labels; unknown labels are a CausalZooError."""
        labels = np.asarray([str(v) for v in labels], dtype=object)
        lookup = {n: i for i, n in enumerate(self.domain_names)}
        unknown = sorted({v for v in labels if v not in lookup})
        if unknown:
            where = (f"adata.obs[{self.perturbation_key!r}]" if self.perturbation_key
                     else "the perturbation")
            raise CausalZooError(
                f"Unknown perturbation value(s) {unknown[:5]} in {where}; the model knows "
                f"{self.domain_names[:20]}. A perturbation never seen in training has no "
                "learned mechanism: predict one of the known values."
            )
        return np.fromiter((lookup[v] for v in labels), np.int32, count=labels.size)


def _time_grid(times: np.ndarray, time_step) -> tuple[float, float | None, list[float]]:
    origin = float(times.min())
    if time_step is None:
        return origin, None, [float(t) for t in np.unique(times)]
    if isinstance(time_step, bool) or not isinstance(time_step, (int, float)) or not (
        np.isfinite(time_step) and time_step > 0
    ):
        raise CausalZooError(f"time_step must be a positive number; got {time_step!r}.")
    raw = (times - origin) / time_step
    off = ~np.isclose(raw, np.rint(raw), atol=1e-6)
    if off.any():
        raise CausalZooError(
            f"Time point {times[np.flatnonzero(off)[0]]:g} is not {origin:g} + k * "
            f"{time_step:g} for an integer k; pick a time_step that divides every gap between "
            "time points, or leave time_step=None (each distinct time point is one step)."
        )
    n = int(np.rint(raw).max()) + 1
    if n > _MAX_GRID:
        raise CausalZooError(
            f"time_step={time_step:g} makes a grid of {n} steps (more than {_MAX_GRID}); use "
            "a coarser time_step."
        )
    return origin, float(time_step), [origin + i * float(time_step) for i in range(n)]


def _check_features(adata, registry: SnapshotRegistry) -> str:
    """Checks the genes; returns how the user names the expression matrix."""
    names = [str(v) for v in adata.var_names]
    if names != registry.feature_names:
        missing = sorted(set(registry.feature_names) - set(names))
        raise CausalZooError(
            "The AnnData's var_names differ from the ones the model was set up with "
            f"(missing: {missing[:5]}); subset and order it as the training data "
            "(adata[:, model.registry.feature_names])."
        )
    return "adata.X" if registry.layer is None else f"adata.layers[{registry.layer!r}]"


def _check_finite(x: np.ndarray, where: str, obs_names, offset: int = 0) -> None:
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise CausalZooError(
            f"{where} contains NaN or infinite values (first in cell {offset + row}, "
            f"{obs_names[offset + row]!r}); expression values must be finite."
        )


def _expression(adata, registry: SnapshotRegistry) -> np.ndarray:
    """The expression of an AnnData in memory, dense (:func:`_cells_expression` keeps a
    backed one on disk)."""
    where = _check_features(adata, registry)
    matrix = get_counts(adata, registry.layer)
    if registry.count_data:
        check_count_matrix(matrix, count_data=True, where=where,
                           available_layers=list(adata.layers.keys()),
                           obs_names=adata.obs_names, var_names=adata.var_names)
    x = densify(matrix, np.float32)
    _check_finite(x, where, adata.obs_names)
    return x


def _expression_on_disk(adata, registry: SnapshotRegistry) -> tuple[BackedRows, np.ndarray]:
    """The expression of a backed AnnData, left on disk (:class:`BackedRows`: read when
    sliced), validated a block of rows at a time as :func:`_expression` validates it all;
    and the rows' sums (``float32``, summed in the same pass as a dense ``x.sum(-1)``)."""
    where = _check_features(adata, registry)

    def check_block(a, b, stored, dense):
        if registry.count_data:
            check_count_matrix(stored, count_data=True, where=f"{where} (rows {a}:{b})",
                               available_layers=list(adata.layers.keys()),
                               obs_names=adata.obs_names[a:b], var_names=adata.var_names)
        _check_finite(dense, where, adata.obs_names, a)

    return checked_on_disk(get_counts(adata, registry.layer), check_block)


def _cells_expression(adata, registry: SnapshotRegistry) -> tuple[Any, np.ndarray]:
    """Expression and library sizes (row sums, at least 1) of cells: a dense array, or for
    a backed AnnData a :class:`BackedRows` view that is read a chunk of cells at a time."""
    if is_backed(adata):
        x, sums = _expression_on_disk(adata, registry)
    else:
        x = _expression(adata, registry)
        sums = x.sum(-1)
    return x, np.maximum(sums, 1.0)


class SnapshotDynamicalCausalVAE(DynamicalCausalVAE):
    """The dynamical latent causal model on a single-cell time course (snapshot mode).

    Each cell is measured once, at its own time point, as a draw from the population of its
    perturbation at that time; the population's latent trajectory is what is inferred. The
    generative story is in :mod:`causalzoo.models.dynamical_snapshot`. Build it with
    ``cz.DynamicalCausalVAE(adata, **config)`` after :meth:`setup_anndata`; the lag graph
    and perturbation targets are read as in sequence mode (:meth:`lag_graph`,
    :meth:`perturbation_targets`).

    On an AnnData opened with ``anndata.read_h5ad(path, backed="r")`` the expression stays
    on disk: set-up validates it a block of rows at a time, ``fit`` streams it in shuffled
    chunks of cells (:class:`causalzoo.data.CellSource`; default chunk: about 64 MiB of
    ``float32`` rows, at least 1,024 cells or all of them), and
    :meth:`get_latent_representation` and :meth:`to_datatree` read it a chunk of cells at a
    time. With one chunk covering every cell and the same ``steps_per_call`` (whose default
    is one pass over a chunk when streaming, at least 50 steps in memory) the fit is the
    in-memory fit, bit for bit.

    Parameters
    ----------
    adata : anndata.AnnData
        Data registered with :meth:`setup_anndata`.
    n_particles : int
        Particle paths per perturbation that represent its population law (default 256;
        the cost of a training step grows with it, see
        :mod:`causalzoo.models.dynamical_snapshot`). With ``transition="linear"`` and the
        Gaussian prior the law is computed exactly (a Gaussian per perturbation and step)
        and the particles only fill the ``population`` site.
    **config_kwargs
        Hyper-parameters of :class:`~causalzoo.models.dynamical.DynamicalConfig`.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd, causalzoo as cz
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"hours": np.repeat([0, 24, 48], 20),
    ...                     "medium": np.repeat(["GM", "DM", "DM"], 20)},
    ...                    index=[f"c{i}" for i in range(60)])
    >>> adata = anndata.AnnData(rng.random((60, 8)).astype(np.float32), obs=obs)
    >>> _ = cz.DynamicalCausalVAE.setup_anndata(adata, time_key="hours",
    ...                                         perturbation_key="medium", control="GM")
    >>> m = cz.DynamicalCausalVAE(adata, n_latent=2)
    >>> type(m).__name__, m.n_times
    ('SnapshotDynamicalCausalVAE', 3)
    >>> m.fit(max_steps=50, batch_size=30, progress=False)  # doctest: +SKIP
    >>> m.predict("GM", time=48, n_samples=10)  # doctest: +SKIP
    """

    def __init__(self, adata, *, n_particles: int = N_PARTICLES, **config_kwargs):
        registry = self._registry_of(adata)
        self.n_particles = check_int("n_particles", n_particles, meaning=PARTICLES_MEANING)
        self.config = DynamicalConfig(**config_kwargs)
        _refuse_weight_shift(self.config)
        lik = self.config.likelihood_block
        if lik.count_data and not registry.count_data:
            raise CausalZooError(
                f"likelihood={lik.name!r} models counts but the data were set up with "
                "count_data=False; use likelihood='gaussian' (e.g. on log1p values), or set "
                "up raw counts with count_data=True."
            )
        self.registry = registry
        self._attach(adata)
        self._init_fit_state()

    def _attach(self, adata) -> None:
        reg = self.registry
        self.adata = adata
        # a backed AnnData's expression stays on disk (BackedRows): embedding and to_datatree
        # read it a chunk of cells at a time, and a fit streams it in chunks (_fit_data)
        self.x, self._library_size = _cells_expression(adata, reg)
        self.time = check_time_column(adata, reg.time_key)
        self.time_index = reg.steps_of(self.time)
        if reg.perturbation_key is None:
            self.u = np.zeros(adata.n_obs, np.int32)
        else:
            check_obs_keys(adata, [reg.perturbation_key], role="perturbation_key")
            check_perturbation_column(adata, reg.perturbation_key)
            self.u = reg.codes_of(adata.obs[reg.perturbation_key].to_numpy())

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(
        cls,
        adata,
        *,
        time_key: str = "time",
        perturbation_key: str | None = None,
        layer: str | None = None,
        control: str | None = None,
        time_step: float | None = None,
        count_data: bool = False,
    ) -> SnapshotRegistry:
        """Register a single-cell time course: time points, perturbations, expression.

        Every check runs here, before any compilation.

        Parameters
        ----------
        adata : anndata.AnnData
            Cells x genes, one measurement per cell. Only ``adata.uns["causalzoo"]`` is
            written. One opened with ``backed="r"`` is validated a block of rows at a time;
            the model built on it keeps the expression on disk: ``fit`` streams it in
            shuffled chunks of cells, embedding and ``to_datatree`` read it a chunk of cells
            at a time.
        time_key : str
            ``obs`` column of time points: numbers >= 0 (e.g. hours), no missing values.
        perturbation_key : str, optional
            ``obs`` column of perturbation / environment labels; each acts on the mechanisms
            of the cell's whole path. ``None``: one domain.
        layer : str, optional
            Layer with the expression values (default ``adata.X``). For FPKM/TPM-like data,
            store ``log1p`` values and use the Gaussian likelihood.
        control : str, optional
            The label whose mechanisms are the base ones (no shifts), e.g. the untreated
            medium. Without one every label has its own (sparse) shifts.
        time_step : float, optional
            Time between grid steps (every time point must be ``min + k * time_step``);
            allows predicting at grid times beyond the training ones. Default: each distinct
            time point is one step.
        count_data : bool
            The values are raw counts (for ``likelihood="nb"``, ``"zinb"``, ``"poisson"``).

        Returns
        -------
        SnapshotRegistry
        """
        if getattr(adata, "is_view", False):
            raise CausalZooError(
                "setup_anndata writes adata.uns, which a view cannot hold; pass adata.copy()."
            )
        check_nonempty(adata)
        times = check_time_column(adata, time_key)
        origin, step, values = _time_grid(times, time_step)
        if perturbation_key is None:
            domains = [_SINGLE_DOMAIN]
        else:
            if not isinstance(perturbation_key, str):
                raise CausalZooError(
                    f"perturbation_key={perturbation_key!r} must be a string (an obs column)."
                )
            check_obs_keys(adata, [perturbation_key], role="perturbation_key")
            check_perturbation_column(adata, perturbation_key)
            column = adata.obs[perturbation_key]
            if isinstance(column.dtype, pd.CategoricalDtype):
                domains = [str(c) for c in column.cat.categories if (column == c).any()]
            else:
                domains = sorted({str(v) for v in column})
        if control is not None and str(control) not in domains:
            raise CausalZooError(
                f"control={control!r} is not a value of "
                f"{'the perturbation column' if perturbation_key else 'any cell'}; values: "
                f"{domains[:20]}. Pass the label of the untreated condition, or control=None."
            )
        registry = SnapshotRegistry(
            layer=layer,
            time_key=time_key,
            perturbation_key=perturbation_key,
            domain_names=domains,
            control=None if control is None else str(control),
            time_origin=origin,
            time_step=step,
            time_values=values,
            feature_names=[str(v) for v in adata.var_names],
            count_data=bool(count_data),
        )
        # validates the values (a backed AnnData's a block of rows at a time)
        _cells_expression(adata, registry)
        store = dict(adata.uns.get("causalzoo", {}))
        store[_SETUP_KEY] = registry.to_dict()
        adata.uns["causalzoo"] = store
        return registry

    @staticmethod
    def _registry_of(adata) -> SnapshotRegistry:
        store = adata.uns.get("causalzoo", {}) if hasattr(adata, "uns") else {}
        if _SETUP_KEY not in store:
            raise CausalZooError(
                "This AnnData has not been set up for the dynamical model's snapshot mode: "
                "call cz.DynamicalCausalVAE.setup_anndata(adata, time_key=..., "
                "perturbation_key=...) first."
            )
        return SnapshotRegistry.from_dict(store[_SETUP_KEY])

    # ------------------------------------------------------------------ fitting
    @property
    def domain_names(self) -> list[str]:
        return self.registry.domain_names

    @property
    def feature_names(self) -> list[str]:
        return self.registry.feature_names

    @property
    def n_times(self) -> int:
        return self.registry.n_times

    @property
    def control_domain(self) -> int | None:
        reg = self.registry
        return None if reg.control is None else reg.domain_names.index(reg.control)

    def _static_kwargs(self) -> dict[str, Any]:
        return {"config": self.config, "n_domains": self.n_domains, "n_times": self.n_times,
                "control_domain": self.control_domain, "n_particles": self.n_particles}

    def _program(self):
        return snapshot_model, snapshot_guide

    def _fit_data(self) -> dict[str, np.ndarray] | CellSource:
        """The cells ``fit_svi`` minibatches: arrays in memory, or for a backed AnnData a
        :class:`~causalzoo.data.streaming.CellSource` that streams the expression from disk
        in shuffled chunks of cells (the per-cell labels, time steps and library sizes stay
        in memory)."""
        if self.x is None:
            raise CausalZooError(
                "This model was loaded without data: load it with cz.load(path, adata=...) to "
                "fit it further."
            )
        cells = {"u": self.u, "time_index": self.time_index}
        if self.config.likelihood_block.uses_library:
            cells["library_size"] = self._library_size
        if isinstance(self.x, BackedRows):
            # never read whole; with one chunk of all cells (the default up to 1,024 cells or
            # about 64 MiB of float32 rows) and the same steps_per_call, the in-memory fit
            return CellSource(self.x.matrix, cells)
        return {"x": self.x, **cells}

    # ------------------------------------------------------------------ posterior
    def _encoder(self):
        cache = self.__dict__.setdefault("_compiled_fns", {})
        if "encode_snapshot" not in cache:
            kwargs = self._static_kwargs()

            def encode(params, x, time_index):
                guide = handlers.substitute(handlers.seed(snapshot_guide, 0), params)
                u = jnp.zeros(x.shape[0], jnp.int32)  # the guide's z does not depend on u
                tr = handlers.trace(guide).get_trace(x=x, u=u, time_index=time_index, **kwargs)
                z = tr["z"]["fn"].mean
                z_inv = tr["z_inv"]["fn"].base_dist.loc if "z_inv" in tr else z[:, :0]
                return z, z_inv

            cache["encode_snapshot"] = jax.jit(encode)
        return cache["encode_snapshot"]

    def get_latent_representation(
        self,
        adata=None,
        *,
        block: str = "dynamic",
    ) -> np.ndarray:
        """Posterior means of the latents of cells.

        The encoder sees the expression only, so the time column is checked but not used.

        Parameters
        ----------
        adata : anndata.AnnData, optional
            Cells to embed (default: the training cells); needs the set-up genes and a time
            column with grid time points. One opened with ``backed="r"`` (or training cells
            set up that way) is read a chunk of cells at a time, never whole.
        block : {"dynamic", "invariant"}
            ``"dynamic"``: the causal latents at the cell's time point ``(cells, n_latent)``;
            ``"invariant"``: ``z_inv`` ``(cells, n_latent_invariant)``.
        """
        self._require_fit()
        if block not in ("dynamic", "invariant"):
            raise CausalZooError(f"block={block!r}: use 'dynamic' or 'invariant'.")
        if adata is None:
            if self.x is None:
                raise CausalZooError(
                    "This model was loaded without data: pass the cells to embed, "
                    "get_latent_representation(adata)."
                )
            x, steps = self.x, self.time_index
        else:
            x, _ = _cells_expression(adata, self.registry)
            steps = self.registry.steps_of(check_time_column(adata, self.registry.time_key))
        encode = self._encoder()
        n = x.shape[0]
        chunk = min(_CHUNK, n)
        outs = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            pad = chunk - (stop - start)
            z, z_inv = encode(self.params, jnp.asarray(np.pad(x[start:stop], ((0, pad), (0, 0)))),
                              jnp.asarray(np.pad(steps[start:stop], (0, pad))))
            outs.append(np.asarray(z if block == "dynamic" else z_inv)[: stop - start])
        return np.concatenate(outs)

    def perturbation_targets(self) -> pd.DataFrame:
        """Posterior probability that each perturbation changes the mechanism of each latent
        (0 for the control, whose mechanisms are the base ones)."""
        out = super().perturbation_targets()
        if self.registry.control is not None:
            out.loc[self.registry.control] = 0.0
        return out

    # ------------------------------------------------------------------ prediction
    def _simulator(self, n_times: int):
        cache = self.__dict__.setdefault("_compiled_fns", {})
        name = f"simulate_{n_times}"
        if name not in cache:
            config, n_domains = self.config, self.n_domains
            kwargs = {**self._static_kwargs(), "n_times": n_times,
                      "n_features": len(self.feature_names)}

            def simulate(params, key, u, time_index, library_size):
                key_globals, key_cells = jax.random.split(key)
                draws = Predictive(
                    partial(global_guide, n_domains, config=config), params=params,
                    num_samples=u.shape[0],
                )(key_globals)

                def one(key, draw, u, t, lib):
                    model = handlers.substitute(handlers.condition(snapshot_model, draw), params)
                    tr = handlers.trace(handlers.seed(model, key)).get_trace(
                        u=u[None], time_index=t[None], library_size=lib[None], **kwargs
                    )
                    return tr["x"]["value"][0], tr["z"]["value"][0]

                keys = jax.random.split(key_cells, u.shape[0])
                return jax.vmap(one)(keys, draws, u, time_index, library_size)

            cache[name] = jax.jit(simulate)
        return cache[name]

    def predict(
        self,
        perturbation: str | list[str],
        time: float | list[float],
        n_samples: int = 100,
        *,
        seed: int = 0,
    ):
        """Sample the expression distribution of perturbations at time points.

        Every pair of ``perturbation`` and ``time`` is predicted, seen together in training
        or not: each sample draws the global latents from the posterior (lag graph, targets,
        shifts), ``z_inv`` from its prior, ``z`` from the population law of that
        perturbation at the time's grid step (the particle paths propagated through its
        mechanisms), and the expression from the likelihood.

        Parameters
        ----------
        perturbation : str or list of str
            Known perturbation labels (``"all"`` when set up without a perturbation key).
        time : float or list of float
            Time points on the grid; with ``time_step`` set up, grid times beyond the training
            ones extrapolate the dynamics.
        n_samples : int
            Cells per (perturbation, time) pair.
        seed : int
            Seed of the draws.

        Returns
        -------
        anndata.AnnData
            ``X``: the sampled expression; ``obs``: ``perturbation``, ``time``, ``step``;
            ``obsm["z"]``: the latent state at the time point.
        """
        import anndata

        self._require_fit()
        perts = [perturbation] if isinstance(perturbation, str) else list(perturbation)
        times = np.atleast_1d(np.asarray(time, dtype=object))
        if not perts or times.size == 0:
            raise CausalZooError("predict needs at least one perturbation and one time point.")
        check_int("n_samples", n_samples)
        if not all(isinstance(v, (int, float, np.integer, np.floating))
                   and not isinstance(v, (bool, np.bool_)) for v in times):
            raise CausalZooError(
                f"time must be a number or a list of numbers (e.g. hours); got {time!r}."
            )
        times = times.astype(np.float64)
        if not np.isfinite(times).all():
            raise CausalZooError(f"time points must be finite; got {time!r}.")
        codes = self.registry.codes_of(perts)
        steps = self.registry.steps_of(times, extrapolate=True)
        u = np.repeat(np.repeat(codes, times.size), n_samples)
        t = np.tile(np.repeat(steps, n_samples), len(perts))
        rng = np.random.default_rng(seed)
        if self.config.likelihood_block.uses_library:
            if self.x is None:
                raise CausalZooError(
                    "Count predictions draw library sizes from the training cells: load the "
                    "model with cz.load(path, adata=...)."
                )
            lib = rng.choice(self._library_size, size=u.size).astype(np.float32)
        else:
            lib = np.ones(u.size, np.float32)
        n_grid = path_length(max(self.n_times, int(steps.max()) + 1), self.config.n_lags)
        pad = -u.size % _PAD

        def padded(a):
            return np.pad(a, (0, pad), mode="edge")

        x, z = self._simulator(n_grid)(self.params, jax.random.key(seed), padded(u),
                                       padded(t), padded(lib))
        x, z_now = np.asarray(x)[: u.size], np.asarray(z)[: u.size]
        grid = self.registry.time_of(t)
        obs = pd.DataFrame(
            {"perturbation": pd.Categorical(np.asarray(self.domain_names)[u],
                                            categories=self.domain_names),
             "time": grid.astype(np.float64), "step": t.astype(np.int64)},
            index=[f"pred{i}" for i in range(u.size)],
        )
        var = pd.DataFrame(index=list(self.feature_names))
        out = anndata.AnnData(X=x.astype(np.float32), obs=obs, var=var)
        out.obsm["z"] = z_now.astype(np.float32)
        out.uns["causalzoo"] = {"model": MODEL_NAME, "mode": "snapshot", "seed": int(seed)}
        return out

    def to_datatree(self, adata=None, **kwargs):
        """The posterior as an ArviZ 1.x DataTree, ``(chain=1, draw=S)``.

        Groups: ``posterior`` (``z (cells, latents)``, ``z_inv``, ``lag_graph``, ``target``,
        ``mean_shift``, ``log_scale_shift`` and the shifts that act, ``domain_shift`` and
        ``domain_log_scale_shift`` (``domains, latents``; zero for the control)),
        ``posterior_predictive`` and ``log_likelihood`` (``x (cells, features)``),
        ``observed_data``, ``constant_data`` (each cell's ``perturbation``, ``time`` and
        grid step ``time_index``) and ``sample_stats`` (``elbo`` per step). ``adata``: other
        cells set up like the training ones, at time points of the fitted grid. The keyword
        arguments are those of :func:`causalzoo.diagnostics.to_datatree`.
        """
        from ..diagnostics import to_datatree

        return to_datatree(self, adata, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save configuration, registry and parameters as plain data (JSON + npz; no
        pickle). The cells are not saved."""
        return self._write_saved(
            path, overwrite=overwrite, mode="snapshot", config=self.config.to_dict(),
            registry=self.registry.to_dict(), n_particles=self.n_particles,
        )

    @classmethod
    def _from_saved(cls, meta, arrays, adata=None, networks=None) -> SnapshotDynamicalCausalVAE:
        self = object.__new__(cls)
        self.config = DynamicalConfig.from_dict(meta["config"], networks=networks)
        self.registry = SnapshotRegistry.from_dict(meta["registry"])
        # saved before n_particles was an option: the default then
        self.n_particles = check_int(
            "n_particles", meta.get("n_particles", N_PARTICLES), meaning=PARTICLES_MEANING)
        self.adata, self.x, self.u, self.time, self.time_index = None, None, None, None, None
        self._library_size = None
        if adata is not None:
            self._attach(adata)
        self._restore_fit_state(meta, arrays)
        return self

    def __repr__(self) -> str:
        c = self.config
        state = self._state_text()
        times = ", ".join(f"{t:g}" for t in self.registry.time_values[:6])
        return (
            f"DynamicalCausalVAE(snapshot, n_latent={c.n_latent}, n_latent_invariant="
            f"{c.n_latent_invariant}, n_lags={c.n_lags}, transition={c.transition!r}, "
            f"prior={c.prior!r}, likelihood={c.likelihood_block.name!r}, "
            f"domains={self.n_domains}, times=[{times}], n_particles={self.n_particles}, "
            f"features={len(self.feature_names)}; {state})"
        )
