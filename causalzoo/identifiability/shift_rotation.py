r"""Resolve the rotation left in linearly identified latents by the sparsity of their shifts.

A sparse-perturbation model whose fit identifies the response latents only up to an
invertible linear map ``z_hat = A z + b`` (the ELBO is nearly flat along rotations of the
latent space when the exogenous noise is Gaussian) can still be identified up to permutation
and scaling by the assumption the model rests on: each perturbation shifts few latents.

With exogenous noise ``eps ~ N(0, diag(sigma^2))`` the control cells of the truth have a
diagonal covariance, so after whitening by the control cells' covariance the estimate is
``Q D z + c`` with ``Q`` orthogonal and ``D`` diagonal. The per-condition mean shifts are then
``S_true D Q^T``: the rotation ``R`` that makes the shifts ``S R`` sparsest undoes ``Q`` up to
a signed permutation when the shift pattern varies enough (every latent is targeted by a
different set of perturbations). :func:`sparse_shift_rotation` finds it by minimising a
smoothed L1 norm of the whitened shifts over orthogonal matrices, from several starts.

Measured on the sparse-perturbation generator (10 perturbations, 3 response latents, 10,000
steps; ``benchmarks/recovery_sparse_perturbation.py``): see
``docs/models/sparse_perturbation.md``.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> shifts = np.array([[3., 0, 0], [0, -3, 0], [0, 0, 3], [3, 3, 0]])
>>> labels = np.repeat(["control", "a", "b", "c", "d"], 200)
>>> z = rng.normal(size=(1000, 3)) + np.vstack([np.zeros((1, 3)), shifts]).repeat(200, 0)
>>> mixed = z @ rng.normal(size=(3, 3)) + 1.0
>>> rot = sparse_shift_rotation(mixed, labels, control="control")
>>> from causalzoo.identifiability import mcc
>>> bool(mcc(z, rot.transform(mixed)) > 0.99)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import CausalZooError, check_int

__all__ = ["ShiftRotation", "sparse_shift_rotation"]


@dataclass(frozen=True)
class ShiftRotation:
    """The map ``z -> (z - offset) @ whitening @ rotation`` found by
    :func:`sparse_shift_rotation`.

    Attributes
    ----------
    offset : ndarray (K,)
        Mean of the control cells.
    whitening : ndarray (K, K)
        Makes the control cells' covariance the identity.
    rotation : ndarray (K, K)
        Orthogonal; makes the whitened condition shifts sparsest.
    shifts : ndarray (n_conditions, K)
        The condition mean shifts after the map (rows in ``conditions`` order).
    conditions : list of str
        The perturbed conditions whose shifts were used.
    objective : float
        The smoothed L1 norm of ``shifts`` reached (lower is sparser).
    n_starts, seed : int or None
        The search settings that found it (``None`` when unknown: a rotation saved by an
        older version).
    """

    offset: np.ndarray
    whitening: np.ndarray
    rotation: np.ndarray
    shifts: np.ndarray
    conditions: list[str]
    objective: float
    n_starts: int | None = None
    seed: int | None = None

    @property
    def matrix(self) -> np.ndarray:
        """The linear part ``whitening @ rotation``."""
        return self.whitening @ self.rotation

    def transform(self, z: Any) -> np.ndarray:
        """Apply the map to latents ``z`` of shape ``(n, K)``."""
        z = np.asarray(z, np.float64)
        if z.ndim != 2 or z.shape[1] != self.offset.shape[0]:
            raise CausalZooError(
                f"z must have shape (n, {self.offset.shape[0]}) to be rotated; got {z.shape}."
            )
        return (z - self.offset) @ self.matrix

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON), for saving with a model."""
        return {
            "offset": self.offset.tolist(),
            "whitening": self.whitening.tolist(),
            "rotation": self.rotation.tolist(),
            "shifts": self.shifts.tolist(),
            "conditions": list(self.conditions),
            "objective": float(self.objective),
            "n_starts": None if self.n_starts is None else int(self.n_starts),
            "seed": None if self.seed is None else int(self.seed),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShiftRotation:
        k = len(d["offset"])
        return cls(
            offset=np.asarray(d["offset"], np.float64).reshape(k),
            whitening=np.asarray(d["whitening"], np.float64).reshape(k, k),
            rotation=np.asarray(d["rotation"], np.float64).reshape(k, k),
            shifts=np.asarray(d["shifts"], np.float64).reshape(-1, k),
            conditions=[str(c) for c in d["conditions"]],
            objective=float(d["objective"]),
            n_starts=None if d.get("n_starts") is None else int(d["n_starts"]),
            seed=None if d.get("seed") is None else int(d["seed"]),
        )


def _smooth_l1(m: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
    root = np.sqrt(m * m + eps * eps)
    return float(root.sum()), m / root


def _polar(m: np.ndarray) -> np.ndarray:
    """The orthogonal factor of ``m`` (nearest orthogonal matrix)."""
    u, _, vt = np.linalg.svd(m)
    return u @ vt


def _descend(shifts: np.ndarray, rotation: np.ndarray, eps: float, max_iter: int,
             tol: float) -> tuple[np.ndarray, float]:
    """Riemannian gradient descent on the orthogonal group with a polar retraction and a
    backtracking step; returns the rotation and its objective."""
    value, dvalue = _smooth_l1(shifts @ rotation, eps)
    step = 1.0
    for _ in range(max_iter):
        grad = shifts.T @ dvalue
        # project the Euclidean gradient on the tangent space at `rotation`
        riem = grad - rotation @ grad.T @ rotation
        norm2 = float((riem * riem).sum())
        if norm2 < tol * tol:
            break
        while True:
            candidate = _polar(rotation - step * riem)
            new_value, new_d = _smooth_l1(shifts @ candidate, eps)
            if new_value <= value - 1e-4 * step * norm2 or step < 1e-12:
                break
            step *= 0.5
        if value - new_value < tol * max(1.0, abs(value)):
            rotation, value, dvalue = candidate, new_value, new_d
            break
        rotation, value, dvalue = candidate, new_value, new_d
        step *= 2.0
    return rotation, value


def sparse_shift_rotation(
    z: Any,
    conditions: Any,
    control: str,
    *,
    n_starts: int = 32,
    seed: int = 0,
    smoothing: float = 1e-3,
    max_iter: int = 2000,
) -> ShiftRotation:
    """Find the whitening and rotation of ``z`` that make the condition shifts sparsest.

    Parameters
    ----------
    z : array_like (n, K)
        Latents of cells (e.g. a model's posterior means of ``z_resp``).
    conditions : array_like (n,)
        Each cell's condition label (``"A"``, ``"A+B"``, the control label, ...).
    control : str
        The control label; its cells define the origin and the whitening.
    n_starts : int
        Random orthogonal starting points (plus the identity); the sparsest end wins.
    seed : int
        Seed of the starting points.
    smoothing : float
        The L1 norm is smoothed as ``sqrt(s^2 + (smoothing * rms)^2)``, ``rms`` the root mean
        square of the whitened shifts.
    max_iter : int
        Descent iterations per start.

    Returns
    -------
    ShiftRotation
        ``.transform(z)`` gives the rotated latents.

    Raises
    ------
    CausalZooError
        On mismatched shapes, non-finite values, an absent control label, fewer control
        cells than ``K + 1`` or a singular control covariance, or no perturbed condition.
    """
    z = np.asarray(z, np.float64)
    labels = np.asarray(conditions).astype(str)
    if z.ndim != 2 or z.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise CausalZooError(
            f"z must be (n, K) with one condition label per row; got z {z.shape} and "
            f"conditions {labels.shape}."
        )
    if not np.isfinite(z).all():
        raise CausalZooError("z holds NaN or infinite values; the shifts cannot be rotated.")
    check_int("n_starts", n_starts, 0)
    k = z.shape[1]
    is_control = labels == str(control)
    n_control = int(is_control.sum())
    if n_control == 0:
        raise CausalZooError(
            f"control={control!r} labels no cell; labels present: {sorted(set(labels))[:10]}."
        )
    if n_control <= k:
        raise CausalZooError(
            f"{n_control} control cells cannot whiten {k} latents: need at least {k + 1}."
        )
    offset = z[is_control].mean(0)
    cov = np.atleast_2d(np.cov(z[is_control], rowvar=False))
    try:
        whitening = np.linalg.cholesky(np.linalg.inv(cov))
    except np.linalg.LinAlgError as err:
        raise CausalZooError(
            "The control cells' latents have a singular covariance (a latent is constant on "
            "them); drop that latent or use more control cells."
        ) from err
    names = sorted(set(labels[~is_control]))
    if not names:
        raise CausalZooError("No perturbed condition besides the control: nothing to rotate.")
    white = (z - offset) @ whitening
    shifts = np.stack([white[labels == c].mean(0) for c in names])
    eps = smoothing * float(np.sqrt(np.mean(shifts * shifts))) + 1e-12

    rng = np.random.default_rng(seed)
    starts = [np.eye(k)] + [_polar(rng.normal(size=(k, k))) for _ in range(n_starts)]
    best_rotation, best_value = None, np.inf
    for start in starts:
        rotation, value = _descend(shifts, start, eps, max_iter, tol=1e-9)
        if value < best_value:
            best_rotation, best_value = rotation, value
    # a canonical sign per column: the largest shift is positive
    signs = np.sign((shifts @ best_rotation)[np.abs(shifts @ best_rotation).argmax(0),
                                             np.arange(k)])
    best_rotation = best_rotation * np.where(signs == 0, 1.0, signs)
    return ShiftRotation(
        offset=offset,
        whitening=whitening,
        rotation=best_rotation,
        shifts=shifts @ best_rotation,
        conditions=names,
        objective=float(best_value),
        n_starts=int(n_starts),
        seed=int(seed),
    )
