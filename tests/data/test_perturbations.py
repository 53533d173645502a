"""Parsing of condition labels ("A+B", GEARS "A+ctrl", controls) and the design matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from causalzoo import CausalZooError
from causalzoo.data import (
    build_vocabulary,
    canonical_condition,
    design_matrix,
    normalize_control,
    parse_perturbation,
)
from causalzoo.testing import examples


def test_order_does_not_matter():
    assert parse_perturbation("B+A") == parse_perturbation("A+B") == ("A", "B")
    assert canonical_condition("MAP2K6+KLF1") == "KLF1+MAP2K6"
    assert parse_perturbation("C+A+B") == ("A", "B", "C")


@pytest.mark.parametrize("control", ["ctrl", "control", ("control", "non-targeting")])
def test_gears_control_slots_are_dropped(control):
    assert parse_perturbation("A+ctrl", control=control) == ("A",)
    assert parse_perturbation("ctrl+A", control=control) == ("A",)
    assert canonical_condition("ctrl+A", control=control) == "A"


def test_ctrl_is_a_perturbation_name_when_no_control_token_is_a_control():
    # With an unrelated control label, "ctrl" is not special and stays in the set.
    assert parse_perturbation("A+ctrl", control="non-targeting") == ("A", "ctrl")


def test_controls_parse_to_empty_and_canonicalise_to_the_first_label():
    assert parse_perturbation("control") == ()
    assert parse_perturbation("ctrl", control="ctrl") == ()
    assert parse_perturbation("non-targeting", control=("control", "non-targeting")) == ()
    assert canonical_condition("non-targeting", control=("control", "non-targeting")) == "control"


@pytest.mark.parametrize(
    ("label", "fragment"),
    [
        ("", "empty"),
        ("A++B", "empty part"),
        ("+A", "empty part"),
        ("A+", "empty part"),
        ("A+A", "more than once"),
        (" A", "whitespace"),
        ("A ", "whitespace"),
        ("A +B", "whitespace"),
        ("A+ B", "whitespace"),
    ],
)
def test_malformed_labels_raise_with_the_label(label, fragment):
    with pytest.raises(CausalZooError, match=fragment) as info:
        parse_perturbation(label)
    assert repr(label) in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), None, 3, np.nan, ("A",)])
def test_non_string_labels_raise(value):
    with pytest.raises(CausalZooError, match="not a string"):
        parse_perturbation(value)  # type: ignore[arg-type]


def test_bad_label_in_a_column_reports_its_row():
    with pytest.raises(CausalZooError, match=r"'A\+\+B'.*row 2") as info:
        design_matrix(["A", "control", "A++B", "A++B"], ["A", "B"])
    assert "2 row(s)" in str(info.value)
    with pytest.raises(CausalZooError, match="row 1"):
        build_vocabulary(pd.Series(["A", np.nan, "B"], dtype=object))


@pytest.mark.parametrize("control", [(), "", " ctrl", ("a", "a"), 5, ["ok", 1]])
def test_bad_control_argument_raises(control):
    with pytest.raises(CausalZooError, match="control"):
        normalize_control(control)  # type: ignore[arg-type]


def test_vocabulary_excludes_controls_and_is_sorted():
    labels = ["control", "B+A", "A", "C+ctrl", "ctrl"]
    assert build_vocabulary(labels, control=("control", "ctrl")) == ["A", "B", "C"]


def test_unused_categories_are_ignored():
    labels = pd.Categorical(["A", "control"], categories=["A", "control", "Z", "bad++"])
    assert build_vocabulary(pd.Series(labels)) == ["A"]
    np.testing.assert_array_equal(design_matrix(pd.Series(labels), ["A"]), [[1.0], [0.0]])


def test_design_matrix_multi_hot():
    d = design_matrix(["A+B", "control", "B", "ctrl+C"], ["A", "B", "C"], control="control")
    expected = [[1, 1, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]]
    np.testing.assert_array_equal(d, expected)
    assert d.dtype == np.float32
    assert design_matrix(["A"], ["A"], dtype=np.int8).dtype == np.int8


def test_design_matrix_same_for_list_array_series_and_categorical():
    labels = ["B+A", "control", "B", "A", "B+A"]
    vocab = ["A", "B"]
    ref = design_matrix(labels, vocab)
    for form in (
        np.array(labels),
        pd.Series(labels),
        pd.Series(labels, dtype="category"),
        pd.Categorical(labels),
        pd.Index(labels),
    ):
        np.testing.assert_array_equal(design_matrix(form, vocab), ref)


def test_unknown_perturbation_names_it_and_the_known_ones():
    with pytest.raises(CausalZooError) as info:
        design_matrix(["A", "C+A"], ["A", "B"])
    msg = str(info.value)
    assert "'C'" in msg and "'A'" in msg and "'B'" in msg and "training" in msg


def test_a_bare_string_is_not_taken_as_a_list_of_labels():
    with pytest.raises(CausalZooError, match=r"single string 'A\+B'.*\['A\+B'\]"):
        build_vocabulary("A+B")


def test_duplicate_vocabulary_raises():
    with pytest.raises(CausalZooError, match="more than once"):
        design_matrix(["A"], ["A", "A"])


def test_many_repeated_labels_parse_fast():
    # One parse per distinct label: 200k rows of a categorical cost about as much as 3 labels.
    rng = np.random.default_rng(0)
    cats = ["control", "A", "A+B"]
    labels = pd.Series(pd.Categorical.from_codes(rng.integers(0, 3, 200_000), categories=cats))
    d = design_matrix(labels, ["A", "B"])
    assert d.shape == (200_000, 2)
    np.testing.assert_array_equal(d.sum(1), labels.map({"control": 0, "A": 1, "A+B": 2}).to_numpy())


gene = st.from_regex(r"[A-Z][A-Z0-9]{0,6}", fullmatch=True).filter(lambda s: s != "CTRL")


@settings(max_examples=examples(60), deadline=None)
@given(genes=st.sets(gene, min_size=1, max_size=5), data=st.data())
def test_any_join_order_parses_to_the_same_sorted_set(genes, data):
    order = data.draw(st.permutations(sorted(genes)))
    label = "+".join(order)
    assert parse_perturbation(label) == tuple(sorted(genes))
    with_ctrl = "+".join([*order, "ctrl"]) if data.draw(st.booleans()) else label
    assert parse_perturbation(with_ctrl, control="ctrl") == tuple(sorted(genes))
    vocab = build_vocabulary([label, "control"])
    assert vocab == sorted(genes)
    d = design_matrix([label, "control", with_ctrl], vocab, control=("control", "ctrl"))
    np.testing.assert_array_equal(d.sum(1), [len(genes), 0, len(genes)])
