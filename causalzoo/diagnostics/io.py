"""Saving and reading DataTrees: netCDF (``.nc``) or zarr (``.zarr``), chosen by suffix."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from .._errors import CausalZooError

__all__ = ["save_datatree", "open_datatree"]


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".nc", ".nc4", ".netcdf"):
        return "netcdf"
    if suffix == ".zarr":
        return "zarr"
    raise CausalZooError(
        f"Cannot tell the format of {str(path)!r} from its suffix {suffix!r}: use '.nc' "
        "(netCDF) or '.zarr'."
    )


def save_datatree(dt: xr.DataTree, path: str | Path) -> Path:
    """Write a DataTree to ``path``: netCDF for ``.nc``, zarr for ``.zarr``.

    Zarr stores are written without consolidated metadata (not part of the zarr v3
    format), so they open with any zarr v3 reader.

    Examples
    --------
    >>> save_datatree(dt, "fit/posterior.nc")  # doctest: +SKIP
    >>> dt2 = open_datatree("fit/posterior.nc")  # doctest: +SKIP
    """
    path = Path(path)
    if _kind(path) == "netcdf":
        dt.to_netcdf(path)
    else:
        dt.to_zarr(path, consolidated=False, mode="w")
    return path


def open_datatree(path: str | Path) -> xr.DataTree:
    """Read a DataTree written by :func:`save_datatree` (or by ArviZ) fully into memory."""
    path = Path(path)
    if not path.exists():
        raise CausalZooError(f"{str(path)!r} does not exist.")
    if _kind(path) == "netcdf":
        with xr.open_datatree(path) as dt:
            return dt.load()
    with xr.open_datatree(path, engine="zarr", consolidated=False) as dt:
        return dt.load()
