"""Real single-cell perturbation data sets: one bundled, the others read from a local folder.

:func:`norman2019_subset` ships inside the package (BSD-3-Clause, see ``data/NOTICE.md``).
The other loaders read the files of the project's shared data folder, found through
``$CAUSALZOO_DATA`` (see :func:`data_dir`); their licenses (GPL-3.0, MIT, Artistic-2.0) do
not allow bundling them here. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata

from .._errors import CausalZooError

__all__ = [
    "data_dir",
    "datlinger2021",
    "kang2018",
    "myoblast_timecourse",
    "norman2019_scx_tiny",
    "norman2019_subset",
]

_BUNDLED = Path(__file__).parent / "data"
_ENV = "CAUSALZOO_DATA"

_FILES = {
    "kang2018": "kang2018_pbmc_ifnb_scgen_valid.h5ad",
    "datlinger2021": "datlinger2021_jurkat_scperturb_testdata.h5ad",
    "myoblast_timecourse": "hsmm_trapnell2014_myoblast_timecourse.h5ad",
    "norman2019_scx_tiny": "norman2019_scx_tiny_50x50.h5ad",
}


@contextmanager
def _quiet_read() -> Iterator[None]:
    # anndata 0.13 reads pandas options that pandas 3 deprecated, which warns on files whose
    # obs/var frames have no columns. It is upstream noise the user cannot act on.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"The '(future\.infer_string|mode\.chained_assignment)' option is deprecated",
            category=DeprecationWarning,
        )
        yield


def _read(path: Path) -> anndata.AnnData:
    with _quiet_read():
        return anndata.read_h5ad(path)


def _candidates() -> list[Path]:
    """The folders searched for the shared data, in order."""
    env = os.environ.get(_ENV)
    if env:
        # An explicit setting wins: silently falling back elsewhere would hide a typo.
        return [Path(env).expanduser()]
    import causalzoo

    package = Path(causalzoo.__file__).resolve()
    return [
        Path.cwd() / ".." / "shared" / "data",
        Path.cwd() / "shared" / "data",
        package.parents[2] / "shared" / "data",
        package.parents[1] / ".." / "shared" / "data",
    ]


def data_dir() -> Path | None:
    """Return the shared data folder: ``$CAUSALZOO_DATA`` if set, else the first one found.

    Without ``$CAUSALZOO_DATA`` it looks for ``../shared/data`` and ``shared/data`` relative to
    the current directory, then ``shared/data`` beside the repository that holds the package.

    Returns
    -------
    pathlib.Path or None
        The resolved folder, or ``None`` when none exists.

    Examples
    --------
    >>> d = data_dir()
    >>> d is None or d.is_dir()
    True
    """
    for folder in _candidates():
        if folder.is_dir():
            return folder.resolve()
    return None


def _resolve(name: str, path: str | os.PathLike[str] | None) -> Path:
    file = _FILES[name]
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / file
        if not p.is_file():
            raise CausalZooError(
                f"{name}: no file at {str(p)!r}. Pass the path of {file!r}, or leave path=None "
                f"and set {_ENV} to the folder that holds it."
            )
        return p
    tried = []
    for folder in _candidates():
        candidate = folder / file
        tried.append(str(candidate.resolve()) if folder.is_dir() else str(folder))
        if candidate.is_file():
            return candidate.resolve()
    env = os.environ.get(_ENV)
    setting = (
        f"{_ENV}={env!r} is set, so only that folder was searched" if env else f"{_ENV} is not set"
    )
    raise CausalZooError(
        f"{name}: could not find {file!r} (looked in: {', '.join(tried)}; {setting}). This data "
        f"set is not bundled with causalzoo: point {_ENV} at the folder holding it, e.g. "
        f"export {_ENV}=/path/to/shared/data, or pass path=... ."
    )


def norman2019_subset() -> anndata.AnnData:
    """Load the bundled Norman et al. 2019 (K562 CRISPRa Perturb-seq) subset.

    3375 cells x 500 highly variable genes; ``X`` holds integer UMI counts (float32 CSR).
    ``obs["perturbation"]`` is ``"control"`` (100 cells), one of 18 single genes or one of 15
    two-gene combinations (``"KLF1+MAP2K6"``); five combinations have both singles present
    (KLF1+MAP2K6, KLF1+TGFBR2, MAP2K3+MAP2K6, MAP2K3+SLC38A2, MAPK1+TGFBR2), the natural
    held-out set for combination prediction. Other obs: ``condition``, ``cell_type``,
    ``n_perturbed_genes``, ``is_control``, ``ncounts``, ``ngenes`` (full-transcriptome totals).
    ``layers["log1p_norm"]`` holds the upstream log1p(normalize_total) values.

    Source: altoslabs/perturbench (BSD-3-Clause, Copyright (c) 2024, Altos Labs), curated
    from GEO GSE133344; see ``causalzoo/datasets/data/NOTICE.md``. Read from the package, never
    downloaded; each call returns a fresh object.

    Returns
    -------
    anndata.AnnData

    Examples
    --------
    >>> adata = norman2019_subset()
    >>> adata.shape
    (3375, 500)
    """
    path = _BUNDLED / "norman2019_subset.h5ad"
    if not path.is_file():
        raise CausalZooError(
            f"The bundled file {str(path)!r} is missing: this causalzoo installation is "
            "incomplete. Reinstall it (pip install --force-reinstall causalzoo)."
        )
    return _read(path)


def kang2018(path: str | os.PathLike[str] | None = None) -> anndata.AnnData:
    """Load Kang et al. 2018 PBMCs, IFN-beta stimulated vs control (scGen validation split).

    1975 cells x 6998 genes, integer UMI counts in ``X``. ``obs["condition"]`` is ``"control"``
    or ``"stimulated"``; ``obs["cell_type"]`` has 7 PBMC types. Set up with
    ``perturbation_key="condition", control="control", covariate_keys=("cell_type",)``.
    GPL-3.0 (theislab/scgen); GEO GSE96583.

    Parameters
    ----------
    path
        The h5ad file (or its folder); default: found via :func:`data_dir`.

    Examples
    --------
    >>> adata = kang2018()  # doctest: +SKIP
    """
    return _read(_resolve("kang2018", path))


def datlinger2021(path: str | os.PathLike[str] | None = None) -> anndata.AnnData:
    """Load the scPerturb test subset of Datlinger et al. 2021 (Jurkat CRISPR KO x TCR stimulation).

    7500 cells x 2000 genes, integer UMI counts. ``obs["perturbation"]`` is guide-level
    (``"ZAP70_1"``), ``obs["target_gene"]`` the gene (or ``"control"``) and
    ``obs["perturbation_2"]`` ``"stimulated"``/``"unstimulated"``. Set up with e.g.
    ``perturbation_key="target_gene", covariate_keys=("perturbation_2",)``.
    MIT (sanderlab/scPerturb).

    Parameters
    ----------
    path
        The h5ad file (or its folder); default: found via :func:`data_dir`.

    Examples
    --------
    >>> adata = datlinger2021()  # doctest: +SKIP
    """
    return _read(_resolve("datlinger2021", path))


def myoblast_timecourse(path: str | os.PathLike[str] | None = None) -> anndata.AnnData:
    """Load the Trapnell et al. 2014 human myoblast differentiation time course (HSMM).

    271 cells x 21532 genes. ``X`` is FPKM, **not counts**: use ``count_data=False`` (e.g. on
    log1p values with a Gaussian likelihood). ``obs["Hours"]`` is 0, 24, 48 or 72 and
    ``obs["Media"]`` GM/DM. Artistic-2.0 (Bioconductor HSMMSingleCell).

    Parameters
    ----------
    path
        The h5ad file (or its folder); default: found via :func:`data_dir`.

    Examples
    --------
    >>> adata = myoblast_timecourse()  # doctest: +SKIP
    """
    return _read(_resolve("myoblast_timecourse", path))


def norman2019_scx_tiny(path: str | os.PathLike[str] | None = None) -> anndata.AnnData:
    """Load a 50-cell x 50-gene Norman 2019 fixture in GEARS/CPA label format.

    ``obs["condition"]`` uses ``"ctrl"``, ``"A+ctrl"``, ``"ctrl+A"`` and ``"A+B"``; ``X`` is
    log-normalised and ``layers["counts"]`` raw counts, so set up with
    ``perturbation_key="condition", control="ctrl", layer="counts"``. For format and parsing
    tests only (random genes). GPL-3.0 (btraven00/scx).

    Parameters
    ----------
    path
        The h5ad file (or its folder); default: found via :func:`data_dir`.

    Examples
    --------
    >>> adata = norman2019_scx_tiny()  # doctest: +SKIP
    """
    return _read(_resolve("norman2019_scx_tiny", path))
