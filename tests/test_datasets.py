"""The bundled Norman 2019 subset and the loaders of the shared (not bundled) data sets."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import causalzoo.datasets as ds
from causalzoo import CausalZooError
from causalzoo.data import extract_arrays, setup_anndata

COMBOS_WITH_BOTH_SINGLES = [
    "KLF1+MAP2K6",
    "KLF1+TGFBR2",
    "MAP2K3+MAP2K6",
    "MAP2K3+SLC38A2",
    "MAPK1+TGFBR2",
]
SINGLES = [
    "FOXO4",
    "HK2",
    "IER5L",
    "KLF1",
    "KMT2A",
    "MAP2K3",
    "MAP2K6",
    "MAP3K21",
    "MAP4K3",
    "MAP4K5",
    "MAPK1",
    "MIDN",
    "NIT1",
    "PLK4",
    "SGK1",
    "SLC38A2",
    "TGFBR2",
    "TMSB4X",
]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset loader tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_norman2019_subset_is_the_real_bundled_data(no_network):
    adata = ds.norman2019_subset()
    assert adata.shape == (3375, 500)
    conditions = adata.obs["perturbation"]
    assert conditions.nunique() == 34
    assert set(COMBOS_WITH_BOTH_SINGLES) <= set(conditions.cat.categories)
    assert list(conditions.cat.categories) == sorted(set(conditions))  # no unused categories
    assert (conditions == "control").sum() == 100
    assert sp.issparse(adata.X)
    values = adata.X.data
    assert values.size and np.array_equal(values, np.round(values)) and values.min() > 0
    assert set(adata.obs.columns) >= {
        "perturbation",
        "condition",
        "cell_type",
        "n_perturbed_genes",
        "is_control",
        "ncounts",
        "ngenes",
    }
    assert "perturbench" in adata.uns["source"] and "BSD-3-Clause" in adata.uns["license"]


def test_norman2019_subset_sets_up_with_18_singles_and_15_combos():
    adata = ds.norman2019_subset()
    reg = setup_anndata(adata, perturbation_key="perturbation", control="control")
    singles = [
        c for c in adata.obs["perturbation"].cat.categories if "+" not in c and c != "control"
    ]
    assert sorted(singles) == SINGLES
    assert set(SINGLES) <= set(reg.perturbation_vocabulary)
    # The 15 combos bring 13 genes never seen alone: 31 design columns in all.
    assert reg.n_perturbations == 31
    out = extract_arrays(adata, reg)
    n_perturbed = adata.obs["n_perturbed_genes"].to_numpy()
    np.testing.assert_array_equal(out["design"].sum(1), n_perturbed)
    np.testing.assert_array_equal(out["is_control"], adata.obs["is_control"].to_numpy())
    assert (np.unique(out["condition"][n_perturbed == 2]).size) == 15


def test_norman2019_subset_returns_a_fresh_copy():
    a = ds.norman2019_subset()
    a.obs["perturbation"] = "changed"
    a.X.data[:] = 0
    b = ds.norman2019_subset()
    assert (b.obs["perturbation"] != "changed").all() and b.X.data.max() > 0


def test_bundled_notice_names_the_license_and_holder():
    notice = (Path(ds.__file__).parent / "data" / "NOTICE.md").read_text()
    assert "Copyright (c) 2024, Altos Labs" in notice
    assert "GSE133344" in notice and "Redistribution and use in source and binary forms" in notice


SHARED = ds.data_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None or not (SHARED / "kang2018_pbmc_ifnb_scgen_valid.h5ad").is_file(),
    reason="shared data folder not found (set CAUSALZOO_DATA to the folder with the .h5ad files)",
)


@needs_shared
def test_kang2018_loads_and_sets_up_with_a_cell_type_covariate(no_network):
    adata = ds.kang2018()
    assert adata.shape == (1975, 6998)
    reg = setup_anndata(
        adata, perturbation_key="condition", control="control", covariate_keys=("cell_type",)
    )
    assert reg.perturbation_vocabulary == ("stimulated",) and reg.n_covariates == 7


@needs_shared
def test_datlinger2021_loads_with_stimulation_as_covariate(no_network):
    adata = ds.datlinger2021()
    assert adata.shape == (7500, 2000)
    reg = setup_anndata(adata, perturbation_key="target_gene", covariate_keys=("perturbation_2",))
    assert reg.n_perturbations == 20 and reg.covariate_categories["perturbation_2"] == (
        "stimulated",
        "unstimulated",
    )


@needs_shared
def test_myoblast_timecourse_is_fpkm_not_counts(no_network):
    adata = ds.myoblast_timecourse()
    assert adata.shape == (271, 21532)
    with pytest.raises(CausalZooError, match="non-integer"):
        setup_anndata(adata, perturbation_key="Media", control="GM")
    assert (
        setup_anndata(
            adata, perturbation_key="Media", control="GM", count_data=False
        ).n_perturbations
        == 1
    )


@needs_shared
def test_norman2019_scx_tiny_gears_labels_parse(no_network):
    adata = ds.norman2019_scx_tiny()
    with pytest.raises(CausalZooError, match='layer="counts"'):
        setup_anndata(adata, perturbation_key="condition", control="ctrl")
    reg = setup_anndata(adata, perturbation_key="condition", control="ctrl", layer="counts")
    assert "ctrl" not in reg.perturbation_vocabulary
    out = extract_arrays(adata, reg)
    gears_single = adata.obs["condition"].astype(str).str.contains("ctrl+", regex=False).to_numpy()
    assert gears_single.any() and (out["design"][gears_single].sum(1) == 1).all()


@needs_shared
def test_loader_accepts_an_explicit_path_and_a_folder(tmp_path):
    assert ds.kang2018(SHARED / "kang2018_pbmc_ifnb_scgen_valid.h5ad").n_obs == 1975
    assert ds.kang2018(SHARED).n_obs == 1975
    with pytest.raises(CausalZooError, match="no file at"):
        ds.kang2018(tmp_path / "nope.h5ad")


def test_missing_shared_data_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("CAUSALZOO_DATA", str(tmp_path / "nowhere"))
    assert ds.data_dir() is None
    with pytest.raises(CausalZooError, match=r"nowhere.*CAUSALZOO_DATA") as info:
        ds.datlinger2021()
    assert "datlinger2021_jurkat_scperturb_testdata.h5ad" in str(info.value)


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CAUSALZOO_DATA", str(tmp_path))
    assert ds.data_dir() == tmp_path.resolve()
