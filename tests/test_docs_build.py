"""The documentation site builds with ``mkdocs build --strict`` (any warning fails it).

This catches broken links and anchors, API pages that point at modules that do not exist,
and docstrings that mkdocstrings cannot parse (e.g. a documented parameter that is not in
the signature).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(
            f"docs dependencies not installed ({', '.join(missing)}); "
            "install them with: pip install -e '.[docs]'"
        )
    config = REPO_ROOT / "mkdocs.yml"
    assert config.is_file(), f"no mkdocs.yml at {config}"
    site_dir = tmp_path / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config),
            "--site-dir",
            str(site_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed (exit {result.returncode}):\n"
        f"{result.stdout}\n{result.stderr}"
    )
    assert (site_dir / "index.html").is_file()
