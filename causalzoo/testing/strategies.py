"""Hypothesis strategies: generator configurations and latent transformations.

A model identified "up to an equivalence class" maps the true latents to any member of that
class equally well, so a correct metric must score every member as perfect. The strategies
here draw such members (:func:`equivalence_transforms`) and seeded generator configurations
(:func:`ivae_configs`, :func:`sparse_perturbation_configs`) for property-based tests.

>>> import numpy as np
>>> from hypothesis import given
>>> import causalzoo as cz
>>> from causalzoo.testing import equivalence_transforms
>>> @given(t=equivalence_transforms(3, kind="componentwise"))
... def test_spearman_mcc_is_one(t):
...     z = np.random.default_rng(0).normal(size=(300, 3))
...     assert cz.identifiability.mcc(z, t(z), method="spearman") > 1 - 1e-9
>>> test_spearman_mcc_is_one()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st

from .._errors import CausalZooError, check_int

__all__ = [
    "ComponentMap",
    "LatentTransform",
    "monotone_maps",
    "permutations",
    "equivalence_transforms",
    "ivae_configs",
    "sparse_perturbation_configs",
]

Kind = Literal["componentwise", "scaling", "affine"]
_KINDS = ("componentwise", "scaling", "affine")


def _cubic(h, a):
    return h**3 + a * h


def _xtanh(h, a):
    return np.tanh(h) + a * h


def _exp(h, a):
    return np.exp(a * h)


def _arcsinh(h, a):
    return np.arcsinh(a * h)


def _affine(h, a):
    return a * h + 1.0


def _sinh(h, a):
    return np.sinh(a * h)


# Each family is strictly increasing on the standardised input for every parameter drawn.
_FAMILIES = {
    "affine": (_affine, (0.1, 5.0)),
    "cubic": (_cubic, (0.05, 2.0)),
    "xtanh": (_xtanh, (0.1, 1.0)),
    "exp": (_exp, (0.2, 2.0)),
    "arcsinh": (_arcsinh, (0.5, 5.0)),
    "sinh": (_sinh, (0.2, 1.5)),
}


@dataclass(frozen=True)
class ComponentMap:
    """A strictly monotone scalar map, applied to a standardised column.

    ``y = sign * g((h - mean) / std; parameter)`` with ``g`` strictly increasing; the
    standardisation keeps every family finite in float64 for any input scale.

    Attributes
    ----------
    family : str
        ``"affine"``, ``"cubic"``, ``"xtanh"``, ``"exp"``, ``"arcsinh"`` or ``"sinh"``.
    parameter : float
        The family's shape parameter.
    sign : float
        +1 (increasing) or -1 (decreasing).
    """

    family: str
    parameter: float
    sign: float = 1.0

    @property
    def is_affine(self) -> bool:
        return self.family == "affine"

    def __call__(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, dtype=np.float64)
        std = h.std()
        standard = (h - h.mean()) / (std if std > 0 else 1.0)
        fn, _ = _FAMILIES[self.family]
        return self.sign * fn(standard, self.parameter)


@dataclass(frozen=True)
class LatentTransform:
    """A member of a latent equivalence class: ``z -> (maps applied to z[:, permutation]) A + b``.

    Built by :func:`equivalence_transforms`; ``repr`` shows every parameter, so a failing
    hypothesis example can be read and replayed.

    Attributes
    ----------
    kind : str
        ``"componentwise"`` (permutation and strictly monotone maps), ``"scaling"``
        (permutation, non-zero scales and offsets) or ``"affine"`` (an invertible matrix and
        an offset).
    permutation : tuple of int
        Output column ``j`` is built from input column ``permutation[j]``.
    maps : tuple of ComponentMap
        One per output column (empty for ``"affine"``).
    matrix : tuple of tuple of float
        The mixing matrix of ``"affine"`` (empty otherwise).
    offset : tuple of float
        Added at the end.
    """

    kind: str
    permutation: tuple[int, ...]
    maps: tuple[ComponentMap, ...] = ()
    matrix: tuple[tuple[float, ...], ...] = field(default=(), repr=True)
    offset: tuple[float, ...] = ()

    @property
    def n_latent(self) -> int:
        return len(self.permutation)

    def __call__(self, z: Any) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.n_latent:
            raise CausalZooError(
                f"This transform acts on (n, {self.n_latent}) arrays; got shape {z.shape}."
            )
        h = z[:, list(self.permutation)]
        if self.kind == "affine":
            h = h @ np.asarray(self.matrix)
        else:
            h = np.stack([m(h[:, j]) for j, m in enumerate(self.maps)], axis=1)
        if self.offset:
            h = h + np.asarray(self.offset)
        return h


def permutations(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Permutations of ``range(n)`` as tuples."""
    return st.permutations(list(range(n))).map(tuple)


@st.composite
def monotone_maps(draw, *, affine_only: bool = False) -> ComponentMap:
    """Strictly monotone scalar maps (increasing or decreasing), as :class:`ComponentMap`.

    Parameters
    ----------
    affine_only : bool
        Draw only affine maps ``a h + b`` with ``a != 0`` (the Pearson-invariant ones).
    """
    family = "affine" if affine_only else draw(st.sampled_from(sorted(_FAMILIES)))
    low, high = _FAMILIES[family][1]
    parameter = draw(st.floats(low, high, allow_nan=False, allow_infinity=False))
    sign = draw(st.sampled_from([1.0, -1.0]))
    return ComponentMap(family, parameter, sign)


@st.composite
def _condition_bounded_matrix(draw, n: int, max_condition: float) -> tuple[tuple[float, ...], ...]:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    while True:
        a = rng.uniform(-1.0, 1.0, size=(n, n))
        if np.linalg.cond(a) < max_condition:
            return tuple(tuple(float(v) for v in row) for row in a)


def equivalence_transforms(
    n_latent: int,
    kind: Kind = "componentwise",
    *,
    max_condition: float = 20.0,
) -> st.SearchStrategy[LatentTransform]:
    """Transformations of latents within an identifiability class.

    Parameters
    ----------
    n_latent : int
        Number of latent dimensions.
    kind : {"componentwise", "scaling", "affine"}
        ``"componentwise"``: a permutation and a strictly monotone map per component (the
        class of the dynamical and iVAE-type models; Spearman MCC is exactly 1).
        ``"scaling"``: a permutation, non-zero scales (with signs) and offsets (Pearson MCC
        is exactly 1). ``"affine"``: an invertible matrix with condition number below
        ``max_condition`` and an offset (block identifiability: linear R² is 1, MCC is not).
    max_condition : float
        Bound on the condition number of the ``"affine"`` matrices.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of LatentTransform
    """
    if kind not in _KINDS:
        raise CausalZooError(f"kind={kind!r} is unknown; use one of {list(_KINDS)}.")
    n = check_int("n_latent", n_latent)
    offsets = st.tuples(*[st.floats(-5.0, 5.0, allow_nan=False)] * n)
    if kind == "affine":
        return st.builds(
            LatentTransform,
            kind=st.just("affine"),
            permutation=permutations(n),
            matrix=_condition_bounded_matrix(n, max_condition),
            offset=offsets,
        )
    maps = st.tuples(*[monotone_maps(affine_only=kind == "scaling")] * n)
    return st.builds(
        LatentTransform, kind=st.just(kind), permutation=permutations(n), maps=maps,
        offset=offsets,
    )


@st.composite
def ivae_configs(
    draw,
    *,
    max_latent: int = 5,
    max_segments: int = 12,
    max_per_segment: int = 100,
    max_layers: int = 3,
    sufficient_variability: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for :func:`causalzoo.identifiability.generators.ivae`.

    Parameters
    ----------
    max_latent, max_segments, max_per_segment, max_layers : int
        Upper bounds of the drawn sizes.
    sufficient_variability : bool
        Draw at least ``2 * n_latent + 1`` segments (iVAE's condition for mean and variance
        modulation); ``max_segments`` is raised to allow it.
    """
    n_latent = draw(st.integers(1, max_latent))
    low = 2 * n_latent + 1 if sufficient_variability else 1
    return {
        "n_latent": n_latent,
        "n_observed": n_latent + draw(st.integers(0, 3)),
        "n_segments": draw(st.integers(low, max(low, max_segments))),
        "n_per_segment": draw(st.integers(5, max_per_segment)),
        "n_layers": draw(st.integers(1, max_layers)),
        "activation": draw(st.sampled_from(["xtanh", "leaky_relu"])),
        "slope": draw(st.floats(0.05, 0.5)),
        "n_condition": 200,
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@st.composite
def sparse_perturbation_configs(
    draw,
    *,
    max_perturbations: int = 6,
    max_latent: int = 4,
    max_genes: int = 60,
) -> dict[str, Any]:
    """Keyword arguments for :func:`causalzoo.identifiability.generators.sparse_perturbation`."""
    return {
        "n_perturbations": draw(st.integers(1, max_perturbations)),
        "n_cells_per_condition": draw(st.integers(5, 40)),
        "n_latent_invariant": draw(st.integers(1, max_latent)),
        "n_latent_response": draw(st.integers(1, max_latent)),
        "n_genes": draw(st.integers(5, max_genes)),
        "mask_density": draw(st.floats(0.1, 1.0)),
        "n_hidden": 16,
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
