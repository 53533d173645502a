"""ModelSpec and the zoo's registry.

A :class:`ModelSpec` records what a zoo entry is: its raw NumPyro ``model`` and ``guide``
(plain functions that work under ``seed``, ``trace``, ``condition``, ``do`` and
``Predictive``), its configuration class, the names of its plates, the identifiability class
it claims, its ground-truth generator, and the user class that wraps it for AnnData.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .._errors import CausalZooError

__all__ = ["ModelSpec", "register_model", "get_model", "list_models"]


@dataclass(frozen=True)
class ModelSpec:
    """Description of one zoo entry.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"sparse_perturbation"``.
    model, guide : callable
        The NumPyro model and its default guide.
    config_class : type
        The hyper-parameter dataclass the model takes as ``config=``.
    summary : str
        One line for listings.
    identifiability : str
        The class of transformations the latents are identified up to, and its assumptions.
    plates : dict
        Plate name to what it indexes (``cells``, ``perturbations``, ...).
    generator : str
        Dotted path of the seeded ground-truth generator.
    user_class : str
        Dotted path of the AnnData user class.
    references : tuple of str
        Papers.
    """

    name: str
    model: Callable
    guide: Callable
    config_class: type
    summary: str
    identifiability: str
    plates: dict[str, str] = field(default_factory=dict)
    generator: str = ""
    user_class: str = ""
    references: tuple[str, ...] = ()

    def load_generator(self) -> Callable:
        """Import and return the ground-truth generator."""
        return _import(self.generator)

    def load_user_class(self) -> type:
        """Import and return the AnnData user class."""
        return _import(self.user_class)


def _import(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the zoo (replacing an entry of the same name) and return it."""
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Names of the zoo's entries, sorted.

    Examples
    --------
    >>> import causalzoo as cz
    >>> "sparse_perturbation" in cz.models.list_models()
    True
    """
    return sorted(_REGISTRY)


def get_model(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CausalZooError(
            f"No zoo model named {name!r}; available: {list_models()}."
        ) from None
