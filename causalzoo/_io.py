"""Saving and loading models as plain data: JSON for configuration, ``.npz`` for arrays.

Nothing is pickled (``numpy.load(..., allow_pickle=False)``), so loading a directory someone
sent cannot run code. A directory is written to a temporary sibling first and renamed into
place, so an interrupted save never leaves a half-written model where a good one was. The
JSON records the SHA-256 of every ``.npz`` file, so a truncated, corrupted or swapped array
file is reported as such instead of loading wrong numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._errors import CausalZooError

__all__ = ["FORMAT_VERSION", "flatten_params", "unflatten_params", "write_model_dir",
           "read_model_dir"]

FORMAT_VERSION = 1
CONFIG_FILE = "causalzoo.json"


def flatten_params(params: dict[str, Any]) -> tuple[dict[str, np.ndarray], list]:
    """Flatten a (nested) parameter pytree into named arrays and a JSON description of paths.

    Paths keep the key types (NNX uses integer keys for layer lists), so
    :func:`unflatten_params` rebuilds the exact tree.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    arrays, paths = {}, []
    for i, (path, leaf) in enumerate(leaves):
        keys = []
        for entry in path:
            key = entry.key
            keys.append(["int", int(key)] if isinstance(key, (int, np.integer))
                        else ["str", str(key)])
        arrays[f"p{i}"] = np.asarray(leaf)
        paths.append(keys)
    return arrays, paths


def unflatten_params(arrays: dict[str, np.ndarray], paths: list) -> dict[str, Any]:
    """Inverse of :func:`flatten_params`."""
    expected = {f"p{i}" for i in range(len(paths))}
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise CausalZooError(
            f"The saved parameters do not match their description: {len(arrays)} arrays for "
            f"{len(paths)} parameters (missing {missing[:5]}, unexpected {extra[:5]}). The "
            "directory is partial or was edited; save the model again."
        )
    tree: dict[Any, Any] = {}
    for i, keys in enumerate(paths):
        node = tree
        parsed = [int(k) if kind == "int" else k for kind, k in keys]
        for key in parsed[:-1]:
            node = node.setdefault(key, {})
        node[parsed[-1]] = arrays[f"p{i}"]
    return tree


def write_model_dir(path: str | os.PathLike, meta: dict, arrays: dict[str, dict[str, np.ndarray]],
                    *, overwrite: bool = False) -> Path:
    """Write ``meta`` as JSON and each group of ``arrays`` as ``<group>.npz``, atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CausalZooError(
            f"{str(path)!r} already exists; pass overwrite=True to replace it, or choose "
            "another directory."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        checksums = {}
        for group, named in arrays.items():
            buffer = io.BytesIO()
            np.savez(buffer, **named)
            payload = buffer.getvalue()
            checksums[f"{group}.npz"] = hashlib.sha256(payload).hexdigest()
            (tmp / f"{group}.npz").write_bytes(payload)
        meta = {**meta, "checksums": checksums}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            path.rename(backup)
            tmp.rename(path)
            shutil.rmtree(backup)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_model_dir(path: str | os.PathLike, groups: tuple[str, ...]):
    """Read what :func:`write_model_dir` wrote; clear errors for missing or broken files."""
    path = Path(path)
    config = path / CONFIG_FILE
    if not path.is_dir():
        raise CausalZooError(f"{str(path)!r} is not a directory saved by causalzoo.")
    if not config.is_file():
        raise CausalZooError(
            f"{str(path)!r} has no {CONFIG_FILE}: it is not a saved causalzoo model, or the save "
            "did not finish."
        )
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CausalZooError(f"{str(config)!r} is corrupted ({err}).") from None
    if not isinstance(meta, dict):
        raise CausalZooError(
            f"{str(config)!r} is corrupted: it holds a JSON {type(meta).__name__}, not the "
            "model description."
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CausalZooError(
            f"{str(path)!r} was saved in format {version!r} by causalzoo "
            f"{meta.get('causalzoo_version', '?')}; this causalzoo reads format "
            f"{FORMAT_VERSION}. Load it with the version that saved it."
        )
    arrays = {}
    for group in groups:
        file = path / f"{group}.npz"
        if not file.is_file():
            raise CausalZooError(f"{str(path)!r} is missing {file.name}: the save is incomplete.")
        payload = file.read_bytes()
        expected = (meta.get("checksums") or {}).get(file.name)
        if expected is not None and hashlib.sha256(payload).hexdigest() != expected:
            raise CausalZooError(
                f"{str(file)!r} is corrupted: its checksum differs from the one recorded at "
                f"save time in {CONFIG_FILE} (truncated, damaged or replaced). Save the model "
                "again, or copy the whole directory anew."
            )
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
                arrays[group] = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError, KeyError) as err:
            raise CausalZooError(f"{str(file)!r} is corrupted ({err}).") from None
    return meta, arrays
