"""Frozen train/test splits of perturbation conditions for the published protocols.

A :class:`Split` lists, by name, the conditions of each part (``train``, ``test`` and
``excluded``: conditions no cell of which is used), the test group of every test condition
(e.g. GEARS' ``combo_seen1``) and a hash of the data it was made from. Written to JSON with
:meth:`Split.save`, it pins an evaluation: the GEARS issue tracker shows the same seed giving
different test sets across versions, so the split itself, not the code that drew it, is the
record. Applying a split to other data (different cells, counts or genes) raises.

Condition names are canonical (``"B+A"`` is ``"A+B"``, ``"A+ctrl"`` is ``"A"``, every control
label is the first control label). When a split is per context (covariate transfer), a unit
is ``"condition@context"``, e.g. ``"stimulated@NK"``.

Protocols (``anchors_sparse_perturbation.md`` section 5):

- :func:`gears_split`: GEARS "simulation" split (unseen singles; combinations with 0, 1 or 2
  seen genes);
- :func:`combination_split`: SAMS-VAE out-of-distribution combinations;
- :func:`singles_to_doubles_split`: Discrepancy-VAE / PerturbedVAE, train on control and
  singles, test on doubles;
- :func:`covariate_transfer_split`: scGen / CPA, hold out one context's perturbed cells.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .._errors import CausalZooError
from ..data import canonical_condition, normalize_control, parse_perturbation

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "PROTOCOLS",
    "Split",
    "cell_units",
    "combination_split",
    "covariate_transfer_split",
    "data_hash",
    "gears_split",
    "make_split",
    "singles_to_doubles_split",
]

_SCHEMA = 1
_CONTEXT_SEP = "@"


def _matrix(adata: anndata.AnnData, layer: str | None) -> Any:
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise CausalZooError(
            f"layer={layer!r} is not in adata.layers ({list(adata.layers)}); use layer=None "
            "for X."
        )
    return adata.layers[layer]


def cell_units(
    adata: anndata.AnnData,
    perturbation_key: str,
    control: str | Sequence[str] = "control",
    context_key: str | None = None,
) -> np.ndarray:
    """The canonical unit of every cell: its condition, or ``"condition@context"``.

    Parameters
    ----------
    adata : anndata.AnnData
    perturbation_key : str
        ``obs`` column of condition labels.
    control : str or sequence of str
        Control label(s).
    context_key : str, optional
        ``obs`` column of the context (e.g. ``"cell_type"``) for per-context units.

    Returns
    -------
    numpy.ndarray of str, shape (n_cells,)

    Examples
    --------
    >>> import anndata as ad, pandas as pd
    >>> obs = pd.DataFrame({"p": ["B+A", "A+ctrl"]}, index=["0", "1"])
    >>> a = ad.AnnData(np.zeros((2, 1)), obs=obs)
    >>> cell_units(a, "p", control="ctrl").tolist()
    ['A+B', 'A']
    """
    controls = normalize_control(control)
    for key in [perturbation_key] + ([context_key] if context_key else []):
        if key not in adata.obs.columns:
            raise CausalZooError(
                f"{key!r} is not an obs column; available: {list(adata.obs.columns)}."
            )
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    distinct, inverse = np.unique(labels, return_inverse=True)
    canon = np.array([canonical_condition(c, controls) for c in distinct], dtype=object)
    units = canon[inverse]
    if context_key:
        contexts = adata.obs[context_key].astype(str).to_numpy()
        bad = sorted({c for c in np.unique(contexts) if _CONTEXT_SEP in c})
        if bad:
            raise CausalZooError(
                f"context values {bad[:5]} contain {_CONTEXT_SEP!r}, which separates condition "
                "and context in a unit name; rename those categories."
            )
        units = np.char.add(np.char.add(units.astype(str), _CONTEXT_SEP), contexts)
    return np.asarray(units, dtype=str)


def split_unit(unit: str) -> tuple[str, str | None]:
    """``"stimulated@NK"`` -> ``("stimulated", "NK")``; ``"A+B"`` -> ``("A+B", None)``."""
    if _CONTEXT_SEP in unit:
        condition, context = unit.rsplit(_CONTEXT_SEP, 1)
        return condition, context
    return unit, None


def data_hash(
    adata: anndata.AnnData,
    perturbation_key: str,
    control: str | Sequence[str] = "control",
    layer: str | None = None,
    context_key: str | None = None,
) -> str:
    """SHA-256 of what a split depends on: units and their cell counts, genes and values.

    The hash covers the sorted ``(unit, n_cells)`` pairs, the gene names and the expression
    matrix (``X`` or ``layers[layer]``; CSR with sorted indices, or dense float64 bytes in
    cell order), so it changes when any cell, count, gene or label changes.

    Returns
    -------
    str
        64 hex digits.

    Examples
    --------
    >>> import anndata as ad, pandas as pd
    >>> obs = pd.DataFrame({"p": ["control", "A"]}, index=["0", "1"])
    >>> a = ad.AnnData(np.ones((2, 1)), obs=obs)
    >>> len(data_hash(a, "p"))
    64
    """
    units = cell_units(adata, perturbation_key, control, context_key)
    names, counts = np.unique(units, return_counts=True)
    h = hashlib.sha256()
    h.update(json.dumps([[str(n), int(c)] for n, c in zip(names, counts, strict=True)]).encode())
    h.update(json.dumps([str(g) for g in adata.var_names]).encode())
    x = _matrix(adata, layer)
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64)
        x.sum_duplicates()
        x.sort_indices()
        x.eliminate_zeros()
        h.update(np.asarray(x.shape, np.int64).tobytes())
        for part in (x.indptr, x.indices):
            h.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(x.data, dtype=np.float64).tobytes())
    else:
        # Dense and sparse copies of the same values hash alike.
        x = sp.csr_matrix(np.asarray(x, dtype=np.float64))
        x.sort_indices()
        h.update(np.asarray(x.shape, np.int64).tobytes())
        for part in (x.indptr, x.indices):
            h.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(x.data, dtype=np.float64).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Split:
    """A frozen split of conditions (or ``condition@context`` units) into train and test.

    Parameters
    ----------
    protocol : str
        Name of the protocol that made it.
    train, test : tuple of str
        Units whose cells are trained on / held out and predicted.
    excluded : tuple of str
        Units none of whose cells is used (e.g. doubles whose singles are missing).
    groups : mapping of str to str
        Test unit -> group (``"unseen_single"``, ``"combo_seen0"``, ``"held_out"``, ...).
    perturbation_key, control, context_key, layer
        How units were read from the data.
    data_hash : str
        :func:`data_hash` of the data the split was made from.
    params : mapping
        The protocol's arguments (seed, fractions), for the record.
    control_labels : tuple of str
        Every label read as control (default: ``(control,)``).

    Examples
    --------
    >>> s = Split("manual", train=("control", "A"), test=("A+B",), excluded=(),
    ...           groups={"A+B": "combo"}, perturbation_key="p", control="control",
    ...           data_hash="0" * 64)
    >>> Split.from_dict(s.to_dict()) == s
    True
    """

    protocol: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    excluded: tuple[str, ...]
    groups: Mapping[str, str]
    perturbation_key: str
    control: str
    data_hash: str
    context_key: str | None = None
    layer: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    control_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        labels = tuple(str(c) for c in self.control_labels) or (str(self.control),)
        if labels[0] != self.control:
            raise CausalZooError(
                f"Split: control {self.control!r} must be the first of control_labels {labels}."
            )
        set_(self, "control_labels", labels)
        for name in ("train", "test", "excluded"):
            set_(self, name, tuple(str(u) for u in getattr(self, name)))
        set_(self, "groups", {str(k): str(v) for k, v in dict(self.groups).items()})
        set_(self, "params", dict(self.params))
        parts = {"train": self.train, "test": self.test, "excluded": self.excluded}
        seen: dict[str, str] = {}
        for name, units in parts.items():
            if len(set(units)) != len(units):
                dup = next(u for u in units if units.count(u) > 1)
                raise CausalZooError(f"Split: {dup!r} is listed twice in {name}.")
            for u in units:
                if u in seen:
                    raise CausalZooError(
                        f"Split: {u!r} is in both {seen[u]} and {name}; a condition belongs to "
                        "one part only."
                    )
                seen[u] = name
        if not self.test:
            raise CausalZooError(
                f"Split {self.protocol!r} has no test condition; the protocol's arguments "
                f"{self.params} hold nothing out for this data."
            )
        missing = sorted(set(self.test) - set(self.groups))
        if missing:
            raise CausalZooError(f"Split: test units {missing[:5]} have no group.")

    __hash__ = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain lists and strings)."""
        return {
            "schema_version": _SCHEMA,
            "protocol": self.protocol,
            "train": list(self.train),
            "test": list(self.test),
            "excluded": list(self.excluded),
            "groups": dict(self.groups),
            "perturbation_key": self.perturbation_key,
            "control": self.control,
            "context_key": self.context_key,
            "layer": self.layer,
            "data_hash": self.data_hash,
            "params": dict(self.params),
            "control_labels": list(self.control_labels),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Split:
        """Rebuild a split from :meth:`to_dict` output."""
        required = ["protocol", "train", "test", "excluded", "groups", "perturbation_key",
                    "control", "data_hash"]
        missing = [k for k in required if k not in d]
        if missing:
            raise CausalZooError(
                f"The split record lacks {missing}; it was not written by Split.save or was "
                "edited."
            )
        if int(d.get("schema_version", _SCHEMA)) > _SCHEMA:
            raise CausalZooError(
                f"The split has schema_version={d['schema_version']}, newer than this causalzoo "
                f"reads ({_SCHEMA}); upgrade causalzoo."
            )
        return cls(
            protocol=str(d["protocol"]), train=d["train"], test=d["test"],
            excluded=d["excluded"], groups=d["groups"],
            perturbation_key=str(d["perturbation_key"]), control=str(d["control"]),
            data_hash=str(d["data_hash"]), context_key=d.get("context_key"),
            layer=d.get("layer"), params=d.get("params", {}),
            control_labels=tuple(d.get("control_labels", ())),
        )

    def save(self, path: str | Path) -> Path:
        """Write the split as JSON (sorted keys, one stable text for one split)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, adata: anndata.AnnData | None = None) -> Split:
        """Read a split written by :meth:`save`; with ``adata``, also :meth:`check` it."""
        path = Path(path)
        if not path.is_file():
            raise CausalZooError(f"No split file at {str(path)!r}; write one with Split.save.")
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CausalZooError(f"{str(path)!r} is not a JSON split file ({err}).") from None
        split = cls.from_dict(record)
        if adata is not None:
            split.check(adata)
        return split

    # ---------------------------------------------------------------- use
    def units(self, adata: anndata.AnnData) -> np.ndarray:
        """The unit of every cell of ``adata`` (see :func:`cell_units`)."""
        return cell_units(adata, self.perturbation_key, self.control_labels, self.context_key)

    def check(self, adata: anndata.AnnData) -> None:
        """Raise :class:`~causalzoo.CausalZooError` unless ``adata`` is the data of the split."""
        found = data_hash(adata, self.perturbation_key, self.control_labels, self.layer,
                          self.context_key)
        if found != self.data_hash:
            raise CausalZooError(
                f"This {self.protocol!r} split was made from other data: its data hash is "
                f"{self.data_hash[:12]}..., this AnnData hashes to {found[:12]}... (cells, "
                "counts, genes or labels differ). Use the data the split was made from, or make "
                "a new split for this data with make_split."
            )

    def masks(self, adata: anndata.AnnData) -> dict[str, np.ndarray]:
        """Boolean cell masks ``{"train", "test"}``, after :meth:`check`."""
        self.check(adata)
        units = self.units(adata)
        return {"train": np.isin(units, self.train), "test": np.isin(units, self.test)}


# ---------------------------------------------------------------------- protocols
def _condition_table(adata, perturbation_key, control) -> tuple[list[str], dict[str, tuple]]:
    units = cell_units(adata, perturbation_key, control)
    controls = normalize_control(control)
    conditions = sorted(set(units.tolist()))
    if controls[0] not in conditions:
        raise CausalZooError(
            f"No control cells ({controls[0]!r}) in obs[{perturbation_key!r}]; every protocol "
            "trains on control cells. Check the control label."
        )
    return conditions, {c: parse_perturbation(c, controls) for c in conditions}


def _finish(protocol, adata, perturbation_key, control, train, test, excluded, groups,
            params, context_key=None, layer=None) -> Split:
    controls = normalize_control(control)
    return Split(
        protocol=protocol, train=tuple(sorted(train)), test=tuple(sorted(test)),
        excluded=tuple(sorted(excluded)), groups=groups, perturbation_key=perturbation_key,
        control=controls[0], control_labels=controls, context_key=context_key, layer=layer,
        data_hash=data_hash(adata, perturbation_key, controls, layer, context_key),
        params=params,
    )


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise CausalZooError(f"{name}={value!r} must be a fraction in [0, 1].")
    return value


def gears_split(
    adata: anndata.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str | Sequence[str] = "control",
    seed: int = 1,
    train_gene_fraction: float = 0.75,
    seen2_train_fraction: float = 0.75,
    layer: str | None = None,
) -> Split:
    """GEARS "simulation" split (protocol A).

    A seeded ``train_gene_fraction`` of the perturbed genes (every gene named in any
    condition) are train genes. Singles of the other genes are test (``unseen_single``);
    combinations with 0 or 1 train genes are test (``combo_seen0`` / ``combo_seen1``); of the
    combinations whose genes are all train genes, a seeded ``seen2_train_fraction`` is trained
    on and the rest are test (``combo_seen2``). Control is always in train. GEARS' validation
    split is not made (nothing here selects models on it).

    Parameters
    ----------
    adata : anndata.AnnData
    perturbation_key : str
    control : str or sequence of str
    seed : int
        GEARS uses seeds 1-5.
    train_gene_fraction, seen2_train_fraction : float
    layer : str, optional
        Where the counts are (only for the data hash).

    Returns
    -------
    Split

    Examples
    --------
    >>> s = gears_split(cz.datasets.norman2019_subset(), seed=1)  # doctest: +SKIP
    """
    f_genes = _check_fraction("train_gene_fraction", train_gene_fraction)
    f_seen2 = _check_fraction("seen2_train_fraction", seen2_train_fraction)
    conditions, parts = _condition_table(adata, perturbation_key, control)
    rng = np.random.default_rng(int(seed))
    genes = sorted({g for p in parts.values() for g in p})
    n_train_genes = round(f_genes * len(genes))
    train_genes = set(rng.permutation(genes)[:n_train_genes].tolist())
    train, test, groups = [], [], {}
    seen2 = []
    for c in conditions:
        p = parts[c]
        if not p:
            train.append(c)
        elif len(p) == 1:
            if p[0] in train_genes:
                train.append(c)
            else:
                test.append(c)
                groups[c] = "unseen_single"
        else:
            k = sum(g in train_genes for g in p)
            if k == len(p):
                seen2.append(c)
            else:
                test.append(c)
                groups[c] = f"combo_seen{k}"
    order = rng.permutation(len(seen2))
    n_seen2_train = round(f_seen2 * len(seen2))
    for rank, i in enumerate(order):
        if rank < n_seen2_train:
            train.append(seen2[i])
        else:
            test.append(seen2[i])
            groups[seen2[i]] = "combo_seen2"
    return _finish("gears", adata, perturbation_key, control, train, test, [], groups,
                   {"seed": int(seed), "train_gene_fraction": f_genes,
                    "seen2_train_fraction": f_seen2}, layer=layer)


def combination_split(
    adata: anndata.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str | Sequence[str] = "control",
    seed: int = 0,
    test_fraction: float = 0.25,
    train_fraction: float = 1.0,
    observed_singles_only: bool = True,
    layer: str | None = None,
) -> Split:
    """SAMS-VAE out-of-distribution combinations (protocol B).

    The candidate combinations are shuffled with ``seed``; the last ``test_fraction`` of them
    (at least one) are test (group ``combo``), and the first ``train_fraction`` of the others
    are trained on; the remaining combinations are excluded. Control and every single are in
    train. With ``observed_singles_only`` (default) only combinations all of whose singles
    have cells are candidates for test (so the additive baseline can score them); the other
    combinations go to train with the ``train_fraction`` draw.

    Returns
    -------
    Split
    """
    f_test = _check_fraction("test_fraction", test_fraction)
    f_train = _check_fraction("train_fraction", train_fraction)
    conditions, parts = _condition_table(adata, perturbation_key, control)
    singles = {p[0] for p in parts.values() if len(p) == 1}
    combos = [c for c in conditions if len(parts[c]) > 1]
    candidates = [c for c in combos if not observed_singles_only or set(parts[c]) <= singles]
    if not candidates:
        raise CausalZooError(
            "combination_split found no combination to hold out"
            + (" whose singles all have cells; pass observed_singles_only=False."
               if observed_singles_only else "; the data has no 'A+B' conditions.")
        )
    rng = np.random.default_rng(int(seed))
    shuffled = [candidates[i] for i in rng.permutation(len(candidates))]
    n_test = max(1, round(f_test * len(shuffled)))
    test = shuffled[len(shuffled) - n_test:]
    rest = shuffled[: len(shuffled) - n_test] + [c for c in combos if c not in candidates]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    n_train = round(f_train * len(rest))
    train = [c for c in conditions if len(parts[c]) <= 1] + rest[:n_train]
    return _finish("combinations", adata, perturbation_key, control, train, test,
                   rest[n_train:], dict.fromkeys(test, "combo"),
                   {"seed": int(seed), "test_fraction": f_test, "train_fraction": f_train,
                    "observed_singles_only": bool(observed_singles_only)}, layer=layer)


def singles_to_doubles_split(
    adata: anndata.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str | Sequence[str] = "control",
    layer: str | None = None,
) -> Split:
    """Discrepancy-VAE / PerturbedVAE protocol (C): train on control and singles, test doubles.

    Combinations all of whose singles have cells are test (group ``double``); the others
    cannot be composed from what was trained on and are excluded (listed in the split).

    Returns
    -------
    Split
    """
    conditions, parts = _condition_table(adata, perturbation_key, control)
    singles = {p[0] for p in parts.values() if len(p) == 1}
    train = [c for c in conditions if len(parts[c]) <= 1]
    combos = [c for c in conditions if len(parts[c]) > 1]
    test = [c for c in combos if set(parts[c]) <= singles]
    excluded = [c for c in combos if c not in test]
    return _finish("singles_to_doubles", adata, perturbation_key, control, train, test,
                   excluded, dict.fromkeys(test, "double"), {}, layer=layer)


def covariate_transfer_split(
    adata: anndata.AnnData,
    *,
    perturbation_key: str = "condition",
    control: str | Sequence[str] = "control",
    context_key: str = "cell_type",
    held_out: str | None = None,
    layer: str | None = None,
) -> Split:
    """Covariate transfer (scGen / CPA, protocol 4): hold out one context's perturbed cells.

    Units are ``"condition@context"``. Every perturbed unit of the ``held_out`` context is
    test (group ``held_out``); everything else, including that context's control cells, is
    train.

    Parameters
    ----------
    adata : anndata.AnnData
    perturbation_key, control
    context_key : str
        ``obs`` column of the context, e.g. ``"cell_type"``.
    held_out : str
        The context to hold out, e.g. ``"CD4T"`` (required).
    layer : str, optional

    Returns
    -------
    Split
    """
    controls = normalize_control(control)
    units = cell_units(adata, perturbation_key, controls, context_key)
    contexts = sorted(set(adata.obs[context_key].astype(str)))
    if held_out is None or str(held_out) not in contexts:
        raise CausalZooError(
            f"held_out={held_out!r} is not a value of obs[{context_key!r}]; pick one of "
            f"{contexts}."
        )
    held_out = str(held_out)
    distinct = sorted(set(units.tolist()))
    test = [u for u in distinct
            if split_unit(u)[1] == held_out and split_unit(u)[0] != controls[0]]
    if f"{controls[0]}{_CONTEXT_SEP}{held_out}" not in distinct:
        raise CausalZooError(
            f"Context {held_out!r} has no control cells; covariate transfer predicts from that "
            "context's control cells. Pick another context."
        )
    train = [u for u in distinct if u not in test]
    return _finish("covariate_transfer", adata, perturbation_key, controls, train, test, [],
                   dict.fromkeys(test, "held_out"), {"held_out": held_out},
                   context_key=context_key, layer=layer)


PROTOCOLS: dict[str, Callable[..., Split]] = {
    "gears": gears_split,
    "combinations": combination_split,
    "singles_to_doubles": singles_to_doubles_split,
    "covariate_transfer": covariate_transfer_split,
}


def make_split(protocol: str, adata: anndata.AnnData, **kwargs: Any) -> Split:
    """Make the split of a named protocol (a key of :data:`PROTOCOLS`).

    Examples
    --------
    >>> sorted(PROTOCOLS)
    ['combinations', 'covariate_transfer', 'gears', 'singles_to_doubles']
    """
    if protocol not in PROTOCOLS:
        raise CausalZooError(
            f"Unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)} or pass a Split."
        )
    return PROTOCOLS[protocol](adata, **kwargs)
