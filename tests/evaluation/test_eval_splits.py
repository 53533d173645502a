"""Protocol splits: invariants, determinism, canonical names, frozen JSON with a data hash."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from causalzoo import CausalZooError
from causalzoo.data import parse_perturbation
from causalzoo.evaluation import (
    PROTOCOLS,
    Split,
    cell_units,
    combination_split,
    covariate_transfer_split,
    data_hash,
    gears_split,
    make_split,
    singles_to_doubles_split,
)

ALL = {"control", "A", "B", "C", "D", "E", "F", "A+B", "C+D", "A+C", "E+F", "A+G", "G+H"}


def parts(c):
    return parse_perturbation(c, "control")


def check_partition(split: Split, conditions=ALL):
    train, test, excl = set(split.train), set(split.test), set(split.excluded)
    assert not (train & test) and not (train & excl) and not (test & excl)
    assert train | test | excl == set(conditions)
    assert "control" in train
    assert set(split.groups) == test


def test_units_are_canonical(norman_like):
    units = cell_units(norman_like, "perturbation", "control")
    assert set(units) == ALL  # "B+A" -> "A+B", "E+ctrl" -> "E"
    assert (units == "E").sum() == 30 and (units == "A+B").sum() == 30


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gears_split_groups_match_train_genes(norman_like, seed):
    s = gears_split(norman_like, seed=seed)
    check_partition(s)
    train_genes = {g for c in s.train for g in parts(c)}
    genes = {g for c in ALL for g in parts(c)}
    assert len(train_genes) <= round(0.75 * len(genes))
    for c in s.test:
        k = sum(g in train_genes for g in parts(c))
        group = s.groups[c]
        if len(parts(c)) == 1:
            assert group == "unseen_single" and k == 0
        elif group == "combo_seen2":
            assert k == 2
        else:
            assert group == f"combo_seen{k}" and k < 2
    # Every train combination has both genes among the train genes.
    assert all(len(parts(c)) < 2 or set(parts(c)) <= train_genes for c in s.train)


def test_gears_split_is_deterministic_by_seed(norman_like):
    a, b = gears_split(norman_like, seed=1), gears_split(norman_like, seed=1)
    assert a == b and a.to_dict() == b.to_dict()
    tests = {gears_split(norman_like, seed=s).test for s in range(6)}
    assert len(tests) > 1, "different seeds should give different splits"


def test_combination_split(norman_like):
    s = combination_split(norman_like, seed=0, test_fraction=0.5)
    check_partition(s)
    singles = {c for c in s.train if len(parts(c)) == 1}
    assert singles == {"A", "B", "C", "D", "E", "F"}
    for c in s.test:  # held-out combos are composable from trained singles
        assert len(parts(c)) == 2 and set(parts(c)) <= singles
    assert len(s.test) == 2  # half of the 4 candidates (A+B, A+C, C+D, E+F)
    assert s == combination_split(norman_like, seed=0, test_fraction=0.5)
    none = combination_split(norman_like, seed=0, test_fraction=0.5, train_fraction=0.0)
    check_partition(none)
    assert not [c for c in none.train if len(parts(c)) > 1]
    assert set(none.excluded) == ALL - set(none.train) - set(none.test)
    loose = combination_split(norman_like, seed=0, test_fraction=1.0, observed_singles_only=False)
    assert set(loose.test) == {"A+B", "C+D", "A+C", "E+F", "A+G", "G+H"}


def test_singles_to_doubles_split(norman_like):
    s = singles_to_doubles_split(norman_like)
    check_partition(s)
    assert set(s.train) == {"control", "A", "B", "C", "D", "E", "F"}
    assert set(s.test) == {"A+B", "C+D", "A+C", "E+F"}
    assert set(s.excluded) == {"A+G", "G+H"}  # G has no single


def test_covariate_transfer_split(contexts_like):
    s = covariate_transfer_split(contexts_like, perturbation_key="perturbation",
                                 context_key="cell_type", held_out="NK")
    assert s.test == ("stim@NK",) and s.groups == {"stim@NK": "held_out"}
    assert set(s.train) == {"control@NK", "control@T", "control@B", "stim@T", "stim@B"}
    masks = s.masks(contexts_like)
    assert masks["test"].sum() == 40 and masks["train"].sum() == 200
    with pytest.raises(CausalZooError, match="held_out='Mono'"):
        covariate_transfer_split(contexts_like, perturbation_key="perturbation",
                                 context_key="cell_type", held_out="Mono")


def test_split_json_round_trip_and_hash_check(norman_like, contexts_like, tmp_path):
    s = make_split("gears", norman_like, seed=2)
    path = s.save(tmp_path / "split.json")
    loaded = Split.load(path, norman_like)
    assert loaded == s
    assert json.loads(path.read_text())["test"] == list(s.test)
    with pytest.raises(CausalZooError, match="other data"):
        Split.load(path, contexts_like)
    changed = norman_like.copy()
    x = changed.X.toarray()
    x[0, 0] += 1
    changed.X = sp.csr_matrix(x)
    with pytest.raises(CausalZooError, match="other data"):
        s.check(changed)
    # The hash depends on values, not on the storage format.
    dense = norman_like.copy()
    dense.X = norman_like.X.toarray()
    assert data_hash(dense, "perturbation") == data_hash(norman_like, "perturbation")
    relabelled = norman_like.copy()
    relabelled.obs["perturbation"] = relabelled.obs["perturbation"].astype(str)
    relabelled.obs.iloc[0, 0] = "A"
    assert data_hash(relabelled, "perturbation") != data_hash(norman_like, "perturbation")


def test_split_rejects_overlap_and_bad_records(tmp_path):
    base = dict(protocol="m", excluded=(), perturbation_key="p", control="control",
                data_hash="0" * 64)
    with pytest.raises(CausalZooError, match="both train and test"):
        Split(train=("control", "A"), test=("A",), groups={"A": "x"}, **base)
    with pytest.raises(CausalZooError, match="no test condition"):
        Split(train=("control",), test=(), groups={}, **base)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CausalZooError, match="not a JSON split"):
        Split.load(bad)
    bad.write_text(json.dumps({"protocol": "x"}))
    with pytest.raises(CausalZooError, match="lacks"):
        Split.load(bad)
    with pytest.raises(CausalZooError, match="No split file"):
        Split.load(tmp_path / "missing.json")


def test_make_split_errors(norman_like):
    assert sorted(PROTOCOLS) == ["combinations", "covariate_transfer", "gears",
                                 "singles_to_doubles"]
    with pytest.raises(CausalZooError, match="Unknown protocol 'sams'"):
        make_split("sams", norman_like)
    with pytest.raises(CausalZooError, match="train_gene_fraction"):
        gears_split(norman_like, train_gene_fraction=1.5)
    with pytest.raises(CausalZooError, match="No control cells"):
        gears_split(norman_like, control="ctrl_missing")
    assert np.all(np.isin(["A+B"], cell_units(norman_like, "perturbation")))


def test_several_control_labels_survive_the_json_round_trip(norman_like, tmp_path):
    adata = norman_like.copy()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    ctrl_rows = np.flatnonzero(labels == "control")
    labels[ctrl_rows[:10]] = "non-targeting"
    adata.obs["perturbation"] = labels
    s = singles_to_doubles_split(adata, control=("control", "non-targeting"))
    assert s.control == "control" and s.control_labels == ("control", "non-targeting")
    assert "non-targeting" not in s.train  # merged into control
    loaded = Split.load(s.save(tmp_path / "s.json"), adata)
    assert loaded == s
    assert loaded.masks(adata)["train"][ctrl_rows].all()
