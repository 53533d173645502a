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
PACKAGE_DIR = REPO_ROOT / "causalzoo"
REFERENCE_DIR = REPO_ROOT / "docs" / "reference"
# Public modules with no Python API to document: the command line and what it runs.
UNDOCUMENTED = {"cli", "demo"}
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


def _defines_all(path: Path) -> bool:
    return "__all__" in path.read_text(encoding="utf-8")


def test_every_public_module_has_an_api_page():
    """Each public subpackage with an ``__all__`` has docs/reference/<name>.md, and that page
    has a ``::: causalzoo.<name>.<module>`` directive for each of its public modules."""
    problems = []
    for entry in sorted(PACKAGE_DIR.iterdir()):
        name = entry.stem
        if name.startswith("_") or name in UNDOCUMENTED:
            continue
        if entry.is_dir():
            init = entry / "__init__.py"
            if not init.is_file():
                continue
            modules = sorted(
                p.stem for p in entry.glob("*.py") if not p.name.startswith("_")
            )
            if not (_defines_all(init) or any(_defines_all(entry / f"{m}.py") for m in modules)):
                continue  # an empty placeholder package
        elif entry.suffix == ".py":
            modules = []
            if not _defines_all(entry):
                continue
        else:
            continue
        page = REFERENCE_DIR / f"{name}.md"
        if not page.is_file():
            problems.append(
                f"causalzoo.{name} has no API page: create docs/reference/{name}.md "
                f"with '::: causalzoo.{name}' and add it to the nav in mkdocs.yml"
            )
            continue
        text = page.read_text(encoding="utf-8")
        for module in modules:
            directive = f"::: causalzoo.{name}.{module}"
            if directive not in text:
                problems.append(
                    f"docs/reference/{name}.md does not document causalzoo.{name}.{module}: "
                    f"add a line '{directive}' (see the other directives on that page)"
                )
    assert not problems, "\n".join(problems)
