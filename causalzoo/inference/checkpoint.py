"""Checkpoints of a running fit: written atomically, plain data, read back exactly.

A checkpoint directory holds

* ``state-<step>-<token>.npz``: every array of the SVI state (parameters and optimiser
  state, the RNG key as its raw ``uint32`` data) and the loss history;
* ``checkpoint.json``: the step, the early-stopping and back-off bookkeeping, a description
  of the fit it belongs to (data shapes, batch size, seed, ...), the name of the state file
  and its SHA-256.

Each file is written to a temporary name, flushed to disk and renamed into place
(``os.replace`` is atomic on POSIX and Windows), the ``.npz`` first and the JSON pointer
last. A fit killed at any moment therefore leaves either the previous checkpoint or the new
one, never a mixture; a state file the pointer does not name is an orphan and is removed by
the next write. Nothing is pickled: reading a checkpoint someone sent cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CausalZooError

__all__ = ["CHECKPOINT_FORMAT", "POINTER_FILE", "has_checkpoint", "read_checkpoint",
           "write_checkpoint"]

CHECKPOINT_FORMAT = 1
POINTER_FILE = "checkpoint.json"
_STATE_PREFIX = "state-"
_TMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    # Makes the renames themselves durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{secrets.token_hex(6)}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def has_checkpoint(directory: str | os.PathLike | None) -> bool:
    """Whether ``directory`` holds a checkpoint pointer (``checkpoint.json``).

    Examples
    --------
    >>> has_checkpoint("/nonexistent")
    False
    """
    return directory is not None and (Path(directory) / POINTER_FILE).is_file()


def write_checkpoint(
    directory: str | os.PathLike, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> Path:
    """Write one checkpoint atomically and remove the files of the previous one.

    Parameters
    ----------
    directory : str or Path
        Created if needed.
    meta : mapping
        JSON-serialisable description; ``format``, ``state_file`` and ``sha256`` are added.
    arrays : mapping of str to numpy.ndarray
        Saved with :func:`numpy.savez` (no object arrays).

    Returns
    -------
    Path
        The state file written.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> _ = write_checkpoint(d, {"step": 3}, {"w": np.ones(2)})
    >>> meta, arrays = read_checkpoint(d)
    >>> meta["step"], arrays["w"].tolist()
    (3, [1.0, 1.0])
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    payload = buffer.getvalue()
    step = int(meta.get("step", 0))
    name = f"{_STATE_PREFIX}{step:012d}-{secrets.token_hex(4)}.npz"
    _atomic_write(directory / name, payload)
    pointer = {
        **meta,
        "format": CHECKPOINT_FORMAT,
        "state_file": name,
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    _atomic_write(directory / POINTER_FILE,
                  json.dumps(pointer, indent=1, sort_keys=True).encode())
    _fsync_dir(directory)
    for old in directory.iterdir():
        stale_state = old.name.startswith(_STATE_PREFIX) and old.name != name
        if stale_state or old.name.startswith(_TMP_PREFIX):
            old.unlink(missing_ok=True)
    return directory / name


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]] | None:
    """Read the checkpoint in ``directory``; ``None`` if there is none.

    Raises
    ------
    CausalZooError
        If the pointer or the state file is unreadable, missing, from another format version
        or does not match its recorded SHA-256 (a corrupted or hand-edited checkpoint).
    """
    directory = Path(directory)
    pointer = directory / POINTER_FILE
    if not pointer.is_file():
        return None
    fix = (f"Delete {str(directory)!r} (or pass another checkpoint_dir) to start the fit "
           "afresh.")
    try:
        meta = json.loads(pointer.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CausalZooError(f"The checkpoint pointer {str(pointer)!r} is corrupted ({err}). "
                             f"{fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CausalZooError(
            f"{str(pointer)!r} is a checkpoint in format {found!r}; this causalzoo reads format "
            f"{CHECKPOINT_FORMAT}. Resume with the causalzoo version that wrote it, or: {fix}"
        )
    state = directory / str(meta.get("state_file", ""))
    if not meta.get("state_file") or not state.is_file():
        raise CausalZooError(
            f"The checkpoint in {str(directory)!r} names the state file "
            f"{meta.get('state_file')!r}, which is missing: the checkpoint is incomplete. {fix}"
        )
    payload = state.read_bytes()
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise CausalZooError(
            f"The checkpoint state file {str(state)!r} does not match the checksum recorded in "
            f"{POINTER_FILE}: it is corrupted or was modified. {fix}"
        )
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as err:  # pragma: no cover - caught by the checksum
        raise CausalZooError(f"{str(state)!r} is corrupted ({err}). {fix}") from None
    return meta, arrays
