"""setup_anndata / extract_arrays / validation on small synthetic AnnData."""

from __future__ import annotations

import json
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from causalzoo import CausalZooError
from causalzoo.data import (
    AnnDataRegistry,
    densify,
    encode_covariates,
    extract_arrays,
    get_counts,
    get_registry,
    setup_anndata,
)
from causalzoo.data.validation import check_count_matrix

LABELS = ["control", "A", "B+A", "B", "control", "ctrl+C", "A+B", "C"]
CELL_TYPES = ["T", "NK", "T", "B", "NK", "T", "B", "NK"]
COUNTS = np.array(
    [
        [1, 0, 2, 0],
        [0, 3, 0, 1],
        [5, 0, 0, 0],
        [0, 0, 1, 1],
        [2, 2, 2, 2],
        [0, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 7],
    ],
    dtype=np.int64,
)
GENES = ["g0", "g1", "g2", "g3"]


def make_adata(x=None, labels=LABELS, cell_types=CELL_TYPES, genes=GENES, categorical=True):
    x = COUNTS.astype(np.float32) if x is None else x
    n = x.shape[0]
    obs = pd.DataFrame(
        {"perturbation": list(labels)[:n], "cell_type": list(cell_types)[:n]},
        index=[f"cell{i}" for i in range(n)],
    )
    if categorical:
        obs = obs.astype("category")
    # A non-empty var keeps anndata 0.13 off a pandas-3-deprecated option (a warning).
    var = pd.DataFrame({"symbol": list(genes)}, index=list(genes))
    return anndata.AnnData(X=x, obs=obs, var=var)


def setup(adata, **kw):
    kw.setdefault("control", ("control", "ctrl"))
    kw.setdefault("covariate_keys", ("cell_type",))
    return setup_anndata(adata, **kw)


def test_design_covariates_library_and_conditions():
    adata = make_adata()
    reg = setup(adata)
    assert reg.perturbation_vocabulary == ("A", "B", "C")
    assert reg.covariate_categories["cell_type"] == ("B", "NK", "T")
    out = extract_arrays(adata, reg)
    np.testing.assert_array_equal(
        out["design"],
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 1]],
    )
    np.testing.assert_array_equal(
        out["condition"], ["control", "A", "A+B", "B", "control", "C", "A+B", "C"]
    )
    np.testing.assert_array_equal(out["is_control"], [1, 0, 0, 0, 1, 0, 0, 0])
    codes = np.array([["B", "NK", "T"].index(c) for c in CELL_TYPES])
    np.testing.assert_array_equal(out["covariate_codes"][:, 0], codes)
    np.testing.assert_array_equal(out["covariates"], np.eye(3, dtype=np.float32)[codes])
    np.testing.assert_array_equal(out["library_size"], COUNTS.sum(1))
    np.testing.assert_array_equal(out["x"], COUNTS)
    assert out["x"].dtype == out["design"].dtype == out["covariates"].dtype == np.float32
    assert out["covariate_codes"].dtype == np.int32
    np.testing.assert_array_equal(encode_covariates({"cell_type": "NK"}, reg, n=2), [[0, 1, 0]] * 2)


def test_no_covariates_gives_zero_width():
    adata = make_adata()
    reg = setup(adata, covariate_keys=())
    out = extract_arrays(adata, reg, dtype=np.float64)
    assert out["covariates"].shape == (8, 0) and out["covariate_codes"].shape == (8, 0)
    assert out["x"].dtype == np.float64 and reg.n_covariates == 0
    assert encode_covariates({}, reg, n=3).shape == (3, 0)


FORMATS = [sp.csr_matrix, sp.csc_matrix, sp.csr_array, sp.csc_array]


@pytest.mark.parametrize("fmt", [np.asarray, *FORMATS], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_every_anndata_matrix_type_gives_identical_arrays(fmt, dtype):
    ref_adata = make_adata()
    ref = extract_arrays(ref_adata, setup(ref_adata))
    adata = make_adata(fmt(COUNTS.astype(dtype)))
    out = extract_arrays(adata, setup(adata))
    for key, value in ref.items():
        np.testing.assert_array_equal(out[key], value, err_msg=key)
        assert out[key].dtype == value.dtype


ALL_SPARSE = [
    getattr(sp, f"{name}_{kind}")
    for name in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia")
    for kind in ("matrix", "array")
]


@pytest.mark.parametrize("fmt", ALL_SPARSE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_every_scipy_sparse_format_is_validated_and_densified(fmt, dtype):
    # anndata itself stores only CSR/CSC; the other formats reach causalzoo through arrays.
    matrix = fmt(COUNTS.astype(dtype))
    check_count_matrix(matrix, count_data=True)
    x = densify(matrix)
    np.testing.assert_array_equal(x, COUNTS)
    assert x.dtype == np.float32
    bad = COUNTS.astype(np.float64)
    bad[3, 2] = -1
    with pytest.raises(CausalZooError, match=r"negative.*cell 3, gene 2"):
        check_count_matrix(fmt(bad), count_data=True)


def test_extracted_x_does_not_alias_adata_x():
    adata = make_adata(COUNTS.astype(np.float32))
    out = extract_arrays(adata, setup(adata))
    out["x"][:] = -1
    np.testing.assert_array_equal(adata.X, COUNTS)


def test_registry_json_round_trip_and_uns_storage():
    adata = make_adata()
    adata.uns["causalzoo"] = {"other": 1}
    reg = setup(adata, layer=None)
    stored = adata.uns["causalzoo"]["setup"]
    assert adata.uns["causalzoo"]["other"] == 1
    assert stored == reg.to_dict()
    again = AnnDataRegistry.from_dict(json.loads(json.dumps(reg.to_dict())))
    assert again == reg
    assert get_registry(adata) == reg
    assert (reg.n_perturbations, reg.n_covariates, reg.n_genes, reg.n_cells) == (3, 3, 4, 8)
    with pytest.raises(TypeError):
        reg.covariate_categories["x"] = ("y",)  # type: ignore[index]


def test_registry_survives_an_h5ad_round_trip(tmp_path):
    adata = make_adata(sp.csr_matrix(COUNTS.astype(np.float32)))
    reg = setup(adata)
    path = tmp_path / "a.h5ad"
    with warnings.catch_warnings():
        # anndata 0.13 reads a pandas option that pandas 3 deprecated when writing: not ours.
        warnings.filterwarnings(
            "ignore", message=r"The '.*' option is deprecated", category=DeprecationWarning
        )
        adata.write_h5ad(path)
        back = anndata.read_h5ad(path)
    assert get_registry(back) == reg
    np.testing.assert_array_equal(
        extract_arrays(back, get_registry(back))["design"], extract_arrays(adata, reg)["design"]
    )


def test_new_data_with_the_same_genes_is_extracted_with_the_training_registry():
    train = make_adata()
    reg = setup(train)
    new = make_adata(COUNTS[:3].astype(np.float32), labels=["B", "A+B", "control"])
    out = extract_arrays(new, reg)
    np.testing.assert_array_equal(out["design"], [[0, 1, 0], [1, 1, 0], [0, 0, 0]])
    assert out["covariates"].shape == (3, 3)


def test_missing_registry_tells_how_to_set_up():
    with pytest.raises(CausalZooError, match=r"setup_anndata\(adata"):
        get_registry(make_adata())


def test_get_counts_missing_layer_lists_layers():
    adata = make_adata()
    adata.layers["counts"] = COUNTS.astype(np.float32)
    assert get_counts(adata, "counts") is adata.layers["counts"]
    assert get_counts(adata, None) is adata.X
    with pytest.raises(CausalZooError, match=r"'raw'.*\['counts'\]"):
        get_counts(adata, "raw")


# ---- validation errors -------------------------------------------------------------------


def _with(value, row=2, col=1, dtype=np.float32):
    x = COUNTS.astype(dtype)
    x[row, col] = value
    return make_adata(x)


@pytest.mark.parametrize("fmt", [np.asarray, sp.csr_matrix, sp.csc_array], ids=lambda f: f.__name__)
def test_negative_values_raise_with_location(fmt):
    adata = make_adata(fmt(_with(-2).X))
    with pytest.raises(CausalZooError, match=r"negative.*cell 2 \('cell2'\), gene 1 \('g1'\)"):
        setup(adata)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_raise_with_location(value):
    with pytest.raises(CausalZooError, match=r"NaN or infinite.*cell 2.*gene 1"):
        setup(make_adata(sp.csr_matrix(_with(value).X)))


def test_non_integer_counts_suggest_the_counts_layer():
    adata = make_adata(np.log1p(COUNTS).astype(np.float32))
    adata.layers["counts"] = COUNTS.astype(np.float32)
    with pytest.raises(CausalZooError, match=r'normalised.*layer="counts".*likelihood="gaussian"'):
        setup(adata)
    assert setup(adata, layer="counts").layer == "counts"
    assert not setup(adata, count_data=False).count_data  # log values are fine as non-counts


def test_zero_library_cells_raise_with_count_and_fix():
    x = COUNTS.astype(np.float32)
    x[[1, 5]] = 0
    with pytest.raises(CausalZooError, match=r"2 of 8 cells.*zero total.*filter_cells"):
        setup(make_adata(sp.csr_matrix(x)))
    setup(make_adata(x), count_data=False)  # only a count likelihood needs a library size


def test_empty_anndata_raises():
    with pytest.raises(CausalZooError, match="empty"):
        setup(make_adata(np.zeros((0, 4), dtype=np.float32)))
    with pytest.raises(CausalZooError, match="empty"):
        setup(make_adata(np.zeros((8, 0), dtype=np.float32), genes=[]))


def test_missing_keys_list_obs_columns():
    with pytest.raises(CausalZooError, match=r"'guide'.*'perturbation', 'cell_type'"):
        setup(make_adata(), perturbation_key="guide")
    with pytest.raises(CausalZooError, match=r"'batch'.*Available columns"):
        setup(make_adata(), covariate_keys=("batch",))
    with pytest.raises(CausalZooError, match=r"covariate_keys=\('cell_type',\)"):
        setup(make_adata(), covariate_keys="cell_type")


def test_absent_control_lists_frequent_values():
    with pytest.raises(CausalZooError, match=r"'non-targeting'.*'control' \(2 cells\)"):
        setup_anndata(make_adata(), control="non-targeting")


def test_nan_in_perturbation_or_covariate_column():
    labels = list(LABELS)
    labels[4] = None
    with pytest.raises(CausalZooError, match=r"'perturbation'.*1 missing.*row 4 \('cell4'\)"):
        setup(make_adata(labels=labels))
    types = list(CELL_TYPES)
    types[6] = np.nan
    with pytest.raises(CausalZooError, match=r"'cell_type'.*1 missing.*row 6"):
        setup(make_adata(cell_types=types, categorical=False))


def test_malformed_label_in_obs_names_the_cell():
    labels = list(LABELS)
    labels[3] = "A++B"
    with pytest.raises(CausalZooError, match=r"'A\+\+B'.*row 3 \(cell 'cell3'\)"):
        setup(make_adata(labels=labels))


def test_unknown_perturbation_or_covariate_at_extract_time():
    reg = setup(make_adata())
    new = make_adata(COUNTS[:2].astype(np.float32), labels=["D+A", "control"])
    with pytest.raises(CausalZooError, match=r"Unknown perturbation 'D'.*'D\+A'.*training"):
        extract_arrays(new, reg)
    new = make_adata(COUNTS[:2].astype(np.float32), cell_types=["T", "Mono"])
    with pytest.raises(CausalZooError, match=r"'Mono'.*valid values.*'B', 'NK', 'T'"):
        extract_arrays(new, reg)
    with pytest.raises(CausalZooError, match=r"'Mono'.*'B', 'NK', 'T'"):
        encode_covariates({"cell_type": "Mono"}, reg)
    with pytest.raises(CausalZooError, match=r"No value given for covariate 'cell_type'"):
        encode_covariates({}, reg)
    with pytest.raises(CausalZooError, match=r"\['batch'\] were not set up"):
        encode_covariates({"cell_type": "T", "batch": "1"}, reg)


def test_gene_mismatch_says_how_many_differ_and_how_to_fix():
    reg = setup(make_adata())
    other = make_adata(genes=["g0", "g1", "x2", "x3"])
    with pytest.raises(
        CausalZooError, match=r"2 of the model's 4 genes are missing.*'g2', 'g3'.*adata\[:, "
    ):
        extract_arrays(other, reg)
    swapped = make_adata(genes=["g1", "g0", "g2", "g3"])
    with pytest.raises(CausalZooError, match="different order"):
        extract_arrays(swapped, reg)


def test_duplicate_gene_names_and_views_are_refused():
    with pytest.warns(UserWarning, match="not unique"):  # anndata's own warning
        dup = make_adata(genes=["g0", "g0", "g2", "g3"])
    with pytest.raises(CausalZooError, match="var_names_make_unique"):
        setup(dup)
    view = make_adata(categorical=False)[:4]
    with pytest.raises(CausalZooError, match=r"view.*\.copy\(\)"):
        setup(view)


def test_float_covariate_is_refused():
    adata = make_adata()
    adata.obs["dose"] = np.linspace(0, 1, 8)
    with pytest.raises(CausalZooError, match=r"'dose'.*floating-point.*astype\(str\)"):
        setup(adata, covariate_keys=("dose",))
