"""Bad input: one test per item of the reliability issue's list, through the user-facing
entry points. Each error is a ``CausalZooError`` naming the problem, where it is and the fix,
and is raised before the model compiles (checked with JAX's compile log)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil

import jax
import numpy as np
import pytest
import scipy.sparse as sp
from reliability_helpers import GENES, LABELS, SMALL, TYPES, counts, make_adata, setup

import causalzoo as cz
from causalzoo import CausalZooError, SparsePerturbationVAE
from causalzoo.data import extract_arrays, setup_anndata


@contextlib.contextmanager
def raises_before_compiling(match):
    """The call raises a CausalZooError matching ``match`` and compiles no model code."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True), pytest.raises(CausalZooError, match=match):
            yield
    finally:
        logger.removeHandler(handler)
    model_code = ("init", "run_call", "encode", "simulate", "_site_counts")
    compiled = [m for m in records if m.startswith("Compiling") and any(c in m for c in model_code)]
    assert not compiled, compiled


# ---------------------------------------------------------------- the data


def test_negative_counts():
    x = counts()
    x[3, 2] = -2
    with raises_before_compiling(r"negative.*cell 3 \('cell3'\), gene 2 \('g2'\).*raw counts"):
        setup(make_adata(x))


def test_log_normalised_values_for_a_count_likelihood():
    adata = make_adata(np.log1p(counts()))
    adata.layers["counts"] = counts()
    with raises_before_compiling(r'non-integer.*normalised.*layer="counts".*likelihood="gaussian"'):
        setup(adata)
    setup(adata, layer="counts")  # the suggested fix works
    # log-normalised values set up as such cannot feed a count likelihood
    setup(adata, count_data=False)
    with raises_before_compiling(r"count_data=False.*likelihood='gaussian'"):
        SparsePerturbationVAE(adata, likelihood="nb", **SMALL)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", [np.asarray, sp.csr_matrix, sp.csc_array])
def test_nan_or_inf_in_the_matrix(value, fmt):
    x = counts()
    x[5, 1] = value
    with raises_before_compiling(r"NaN or infinite.*cell 5 \('cell5'\), gene 1"):
        setup(make_adata(fmt(x)))


def test_nan_in_labels_covariates_and_arrays():
    labels = list(LABELS)
    labels[4] = None
    with raises_before_compiling(r"'perturbation'.*1 missing.*row 4"):
        setup(make_adata(labels=labels))
    types = list(TYPES)
    types[7] = np.nan
    with raises_before_compiling(r"'cell_type'.*1 missing.*row 7.*'unknown'"):
        setup(make_adata(cell_types=types))
    x = counts()
    x[0, 0] = np.nan
    with raises_before_compiling("NaN or infinite"):
        SparsePerturbationVAE.from_arrays(x, LABELS, **SMALL)


def test_values_beyond_float32():
    x = counts().astype(np.float64)
    x[2, 3] = 1e300  # finite in float64, infinite once the model casts to float32
    with raises_before_compiling(r"float32 range.*cell 2"):
        setup(make_adata(x))


def test_empty_anndata():
    with raises_before_compiling("empty.*0 cells"):
        setup(make_adata(counts()[:0], labels=[], cell_types=[]))
    with raises_before_compiling("empty.*0 genes"):
        setup(make_adata(counts()[:, :0], genes=[]))


def test_cells_with_zero_library_size():
    x = counts()
    x[[2, 9]] = 0
    with raises_before_compiling(r"2 of 24 cells.*zero total counts.*cell 2.*filter_cells"):
        setup(make_adata(x))


def test_missing_perturbation_or_covariate_key():
    with raises_before_compiling(r"perturbation_key='guide'.*Available columns.*'perturbation'"):
        setup(make_adata(), perturbation_key="guide")
    with raises_before_compiling(r"'batch' is not a column"):
        setup(make_adata(), covariate_keys=("batch",))
    # new data at predict time without a set-up column
    adata = setup(make_adata())
    del adata.obs["cell_type"]
    with raises_before_compiling("'cell_type' is not a column"):
        extract_arrays(adata, cz.data.get_registry(adata))


def test_absent_control_label():
    with raises_before_compiling(r"control label \['non-targeting'\].*'control' \(6 cells\)"):
        setup(make_adata(), control="non-targeting")


@pytest.mark.parametrize(
    "label,match",
    [
        ("", "empty"),
        ("A++B", "empty part"),
        ("+A", "empty part"),
        ("A+A", "more than once"),
        (" A", "stray whitespace"),
        ("A +B", "stray whitespace"),
    ],
)
def test_malformed_perturbation_strings(label, match):
    labels = list(LABELS)
    labels[9] = label
    with raises_before_compiling(match + r".*row 9 \(cell 'cell9'\)"):
        setup(make_adata(labels=labels))


def test_unknown_perturbation_or_covariate_value_at_predict(fitted):
    with raises_before_compiling(r"Unknown perturbation 'C'.*\['A', 'B'\]"):
        fitted.predict(["A+C"], n_cells=5)
    with raises_before_compiling(r"Unknown value 'B cell' for covariate 'cell_type'.*'NK', 'T'"):
        fitted.predict(["A"], n_cells=5, covariates={"cell_type": "B cell"})
    with raises_before_compiling(r"Covariate key\(s\) \['donor'\]"):
        fitted.predict(["A"], n_cells=5, covariates={"cell_type": "T", "donor": "d1"})
    new = make_adata(labels=["control", "D"] * 12)
    with raises_before_compiling("Unknown perturbation 'D'"):
        fitted.get_latent_representation(new)
    new = make_adata(cell_types=["T", "B cell"] * 12)
    with raises_before_compiling("'B cell'.*not set up with"):
        fitted.get_latent_representation(new)


def test_gene_set_differs_at_predict_and_load(fitted, tmp_path):
    other = make_adata(genes=["g0", "g1", "g2", "g3", "MT-X"])
    with raises_before_compiling(r"genes do not match.*'g4'.*'MT-X'"):
        fitted.get_latent_representation(other)
    reordered = make_adata(genes=GENES[::-1])
    with raises_before_compiling("different order"):
        fitted.get_latent_representation(reordered)
    path = fitted.save(tmp_path / "m")
    with raises_before_compiling("genes do not match"):
        cz.load(path, adata=other)


# ---------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(batch_size=-8), "batch_size must be a positive integer"),
        (dict(batch_size=True), "batch_size must be a positive integer"),
        (dict(batch_size=8.0), "batch_size must be a positive integer"),
        (dict(batch_size=25), r"batch_size=25 is larger than the 24 cells"),
        (dict(max_steps=0), "max_steps"),
        (dict(max_steps=10.5), "max_steps"),
        (dict(learning_rate=0.0), "learning rates must be finite numbers > 0"),
        (dict(learning_rate=-1e-3), "learning rate"),
        (dict(learning_rate=float("nan")), "learning rate"),
        (dict(learning_rate=float("inf")), "learning rate"),
        (dict(learning_rate="1e-3"), "learning rate"),
        (dict(global_learning_rate=0.0), "learning rate"),
        (dict(steps_per_call=0), "steps_per_call"),
        (dict(checkpoint_every=0), "checkpoint_every"),
        (dict(on_nonfinite="ignore"), "on_nonfinite"),
        (dict(resume=True), "checkpoint_dir"),
        (dict(resume=1), "resume must be True or False; got 1"),
        (dict(seed="zero"), "seed"),
    ],
)
def test_invalid_fit_arguments(kwargs, match):
    model = SparsePerturbationVAE(setup(make_adata()), **SMALL)
    with raises_before_compiling(match):
        model.fit(**{"max_steps": 5, "batch_size": 8, "progress": False, **kwargs})
    assert not model.is_fitted


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(n_latent_invariant=0), "n_latent_invariant must be a positive integer; got 0"),
     (dict(n_latent_response=-1), "n_latent_response must be a positive integer; got -1"),
     (dict(n_hidden=0), "n_hidden must be a positive integer"),
     (dict(n_latent_response=2.5), "n_latent_response must be a positive integer; got 2.5"),
     (dict(n_layers=-1), "n_layers must be an integer >= 0"),
     (dict(alignment=-1.0), "alignment must be a number >= 0"),
     (dict(likelihood="negbin"), "negbin"),
     (dict(networks={"no_such_net": None}), "no_such_net")],
)
def test_invalid_model_hyper_parameters(kwargs, match):
    with raises_before_compiling(match):
        SparsePerturbationVAE(setup(make_adata()), **{**SMALL, **kwargs})


def test_numpy_integer_sizes_are_accepted_and_saved_as_int(tmp_path):
    m = SparsePerturbationVAE(setup(make_adata()), **{**SMALL, "n_hidden": np.int64(8),
                                                      "n_layers": np.int32(1)})
    assert type(m.config.n_hidden) is int and type(m.config.n_layers) is int
    assert m.config.n_hidden == 8 and m.config.n_layers == 1
    dyn = cz.models.dynamical.DynamicalConfig(n_latent=np.int64(2), encoder_context=np.int8(1))
    assert type(dyn.n_latent) is int and type(dyn.encoder_context) is int
    assert dyn.to_dict()["n_latent"] == 2


@pytest.mark.parametrize("field", ["shift_scale", "log_scale_shift_scale",
                                   "weight_shift_scale", "observation_scale"])
def test_dynamical_scales_refuse_booleans(field):
    with pytest.raises(CausalZooError, match=field):
        cz.models.dynamical.DynamicalConfig(**{field: True})


@pytest.mark.parametrize(
    "call,match",
    # entry points that used to accept a boolean or truncate a float
    [(lambda: cz.inference.fit_nuts(lambda: None, num_chains=True),
      "num_chains must be a positive integer; got True"),
     (lambda: cz.identifiability.entangled_floor(np.eye(3), n_rotations=2.5),
      "n_rotations must be a positive integer; got 2.5"),
     (lambda: cz.identifiability.null_mcc(100, 2, n_hat=True),
      "n_hat must be an integer >= 2"),
     (lambda: cz.blocks.dag.power_series(np.zeros((2, 2)), order=1.0),
      "order must be a positive integer"),
     (lambda: cz.testing.strategies.equivalence_transforms(np.True_),
      "n_latent must be a positive integer")],
)
def test_sizes_refuse_booleans_and_floats(call, match):
    with pytest.raises(CausalZooError, match=match):
        call()


# ---------------------------------------------------------------- saved models


def test_save_load_round_trips_exactly(fitted, tmp_path):
    path = fitted.save(tmp_path / "m")
    meta = json.loads((path / "causalzoo.json").read_text())
    assert meta["causalzoo_version"] == cz.__version__ != ""
    loaded = cz.load(path)
    flat_a, tree_a = jax.tree_util.tree_flatten(fitted.params)
    flat_b, tree_b = jax.tree_util.tree_flatten(loaded.params)
    assert tree_a == tree_b
    for a, b in zip(flat_a, flat_b, strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)
    assert loaded.config == fitted.config and loaded.registry == fitted.registry
    assert loaded.registry.gene_names == tuple(GENES)
    assert loaded.registry.perturbation_vocabulary == ("A", "B")
    assert loaded.fit_info == fitted.fit_info


def test_corrupted_partial_or_incompatible_directory(fitted, tmp_path):
    good = fitted.save(tmp_path / "good")

    def variant(name):
        return shutil.copytree(good, tmp_path / name)

    bad = variant("flipped")  # still a valid zip? no matter: the checksum says it changed
    payload = bytearray((bad / "params.npz").read_bytes())
    payload[len(payload) // 3] ^= 0x01
    (bad / "params.npz").write_bytes(bytes(payload))
    with raises_before_compiling("params.npz.*corrupted.*checksum"):
        cz.load(bad)

    bad = variant("truncated")
    (bad / "reference.npz").write_bytes((bad / "reference.npz").read_bytes()[:100])
    with raises_before_compiling("reference.npz.*corrupted"):
        cz.load(bad)

    bad = variant("partial")  # an array missing, with a consistent checksum (an edited save)
    with np.load(bad / "params.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "p0"}
    np.savez(bad / "params.npz", **arrays)
    meta = json.loads((bad / "causalzoo.json").read_text())
    del meta["checksums"]
    (bad / "causalzoo.json").write_text(json.dumps(meta))
    with raises_before_compiling("missing.*'p0'.*partial or was edited"):
        cz.load(bad)

    bad = variant("no_config_field")
    meta = json.loads((bad / "causalzoo.json").read_text())
    del meta["config"]
    (bad / "causalzoo.json").write_text(json.dumps(meta))
    with raises_before_compiling(r"could not be rebuilt.*KeyError.*'config'.*incompatible"):
        cz.load(bad)

    bad = variant("newer_format")
    meta = json.loads((bad / "causalzoo.json").read_text())
    meta["format_version"], meta["causalzoo_version"] = 2, "9.0.0"
    (bad / "causalzoo.json").write_text(json.dumps(meta))
    with raises_before_compiling(r"format 2 by causalzoo 9.0.0.*reads format 1"):
        cz.load(bad)

    bad = variant("not_json_object")
    (bad / "causalzoo.json").write_text("[1, 2]")
    with raises_before_compiling("corrupted.*list"):
        cz.load(bad)

    bad = variant("half_saved")
    (bad / "causalzoo.json").unlink()
    with raises_before_compiling("did not finish"):
        cz.load(bad)


# ---------------------------------------------------------------- accepted input

ALL_SPARSE = [getattr(sp, f"{name}_{kind}")
              for name in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia")
              for kind in ("matrix", "array")]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.float32, np.float64])
def test_every_sparse_format_and_dtype_is_accepted(dtype):
    x = counts()
    ref = extract_arrays(make_adata(x), setup_anndata(make_adata(x)))
    for fmt in ALL_SPARSE:
        out = cz.data.densify(fmt(x.astype(dtype)))
        np.testing.assert_array_equal(out, ref["x"], err_msg=fmt.__name__)
        cz.data.validation.check_count_matrix(fmt(x.astype(dtype)), count_data=True)
    for fmt in (sp.csr_matrix, sp.csc_matrix, sp.csr_array, sp.csc_array):
        adata = make_adata(fmt(x.astype(dtype)))
        arrays = extract_arrays(adata, setup_anndata(adata))
        np.testing.assert_array_equal(arrays["x"], ref["x"])
        np.testing.assert_array_equal(arrays["library_size"], ref["library_size"])


def test_check_bool_refuses_what_is_not_true_or_false():
    from causalzoo._errors import check_bool

    assert check_bool("flag", True) is True
    out = check_bool("flag", np.bool_(False))
    assert out is False and type(out) is bool  # a NumPy boolean comes back as a bool
    for bad in (1, 0, "yes", None, 1.0):
        with pytest.raises(CausalZooError, match=rf"flag must be True or False; got {bad!r}"):
            check_bool("flag", bad)
    with pytest.raises(CausalZooError, match=r"flag must be True or False \(what it is\)"):
        check_bool("flag", 1, meaning="what it is")


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: setup(make_adata(), count_data="yes"), "count_data"),
        (lambda: cz.data.streaming.CellSource(np.zeros((4, 3)), prefetch=1), "prefetch"),
        (lambda: cz.identifiability.generators.leap_nonstationary(self_lags_only=1),
         "self_lags_only"),
        (lambda: cz.models.dynamical.DynamicalConfig(transition="linear", prior="flow",
                                                history_scale="no"),
         "history_scale"),
    ],
)
def test_flags_share_one_check(call, name):
    with pytest.raises(CausalZooError, match=rf"{name} must be True or False"):
        call()
