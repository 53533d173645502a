"""What every user class shares: the package version stamp, the class registry, ``load``."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import _io
from .._errors import CausalZooError

__all__ = ["load", "package_version", "record_fit", "register_user_class"]

_CLASSES: dict[str, Any] = {}
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
