"""The tree passes ``ruff check`` under the ``[tool.ruff]`` configuration in pyproject.toml
(ruff comes with the ``test`` extra, pinned to a minor version so that new upstream rules
cannot turn CI red overnight)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["causalzoo", "tests", "benchmarks", "examples"]


def _ruff_command() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:  # the PyPI wheel: python -m ruff
        return [sys.executable, "-m", "ruff"]
    exe = shutil.which("ruff")
    return None if exe is None else [exe]


def test_ruff_check_passes():
    cmd = _ruff_command()
    if cmd is None:
        pytest.skip("ruff is not installed; pip install -e '.[test]' brings it")
    proc = subprocess.run(
        [*cmd, "check", "--no-cache", "--output-format", "concise", *PATHS],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, (
        "ruff check found problems (fix them, or justify an ignore in pyproject.toml):\n"
        f"{proc.stdout}{proc.stderr}"
    )
