"""Every fenced ``python`` block of README.md and docs/ runs: the snippets a user copies first.

``tests/test_docstring_examples.py`` runs the docstrings' ``>>>`` examples; this runs the
pages. A page's ``python`` blocks run in order in one namespace (the blocks of a page build
on each other), in a temporary working directory (files the snippets write land there), and
a failure names the page, the block's number and line, and the traceback. One test per page,
except that pages which continue one another or fit the same model share a test (``GROUPS``)
and with it JAX's compilation cache. The data come from the package (the bundled Norman 2019
subset) or are simulated; nothing is downloaded.

A block that should not run here carries a marker, an HTML comment that the site and GitHub
do not render, on the line(s) right before its fence:

``<!-- snippet: skip: REASON -->``
    Runnable, but too slow for the suite (REASON says how slow and what covers it instead).
``<!-- snippet: fragment: REASON -->``
    Not runnable by design: a placeholder (``...``), the reader's own data or objects.
``<!-- snippet: setup NAME -->``
    Runs after the set-up ``NAME`` of ``SETUPS`` below: objects the page's text assumes but
    does not build (e.g. "on a fitted ``m``").
``<!-- snippet: ci `OLD` -> `NEW`, ... -->``
    Runs with each ``OLD`` replaced by ``NEW`` (smaller sizes: fewer steps, seeds or draws),
    so the page keeps its real sizes and the calls are still checked. ``OLD`` must occur in
    the block.

Skipped and fragment blocks must give a reason (``test_markers_are_well_formed``).
"""

from __future__ import annotations

import linecache
import re
import textwrap
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[\w+-]*)[^`]*$")
_MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<body>.*?)\s*-->\s*$")
_MARKER_START = re.compile(r"<!--\s*snippet\b")
_REPLACEMENT = re.compile(r"`([^`]+)`\s*->\s*`([^`]*)`")


@dataclass
class Block:
    page: str
    number: int  # 1-based, among the page's python blocks
    line: int  # line of the opening fence
    source: str
    markers: list[str] = field(default_factory=list)
    skip: str | None = None
    fragment: str | None = None
    setups: list[str] = field(default_factory=list)
    replacements: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}, python block {self.number} (line {self.line})"

    @property
    def runs(self) -> bool:
        return self.skip is None and self.fragment is None

    def ci_source(self) -> str:
        source = self.source
        for old, new in self.replacements:
            source = source.replace(old, new)
        return source


def _parse_marker(block: Block, body: str) -> None:
    kind, rest = re.match(r"(\w*)\s*:?\s*(.*)", body).groups()
    if kind == "skip":
        block.skip = rest
        if not rest:
            block.problems.append("a `skip` marker without a reason")
    elif kind == "fragment":
        block.fragment = rest
        if not rest:
            block.problems.append("a `fragment` marker without a reason")
    elif kind == "setup":
        name = rest.split(":", 1)[0].strip()
        block.setups.append(name)
        if name not in SETUPS:
            block.problems.append(f"unknown setup {name!r} (known: {sorted(SETUPS)})")
    elif kind == "ci":
        pairs = _REPLACEMENT.findall(rest)
        if not pairs:
            block.problems.append(f"a `ci` marker without `OLD` -> `NEW` pairs: {body!r}")
        for old, new in pairs:
            if old not in block.source:
                block.problems.append(f"`ci` replaces {old!r}, which is not in the block")
            block.replacements.append((old, new))
    else:
        block.problems.append(
            f"unknown marker {body!r}: use skip: / fragment: / setup NAME / ci `OLD` -> `NEW`")


def page_blocks(path: Path, page: str | None = None) -> tuple[list[Block], list[str]]:
    """The page's python blocks with their markers, and the problems outside any block
    (a marker that no python block follows, an unclosed fence)."""
    page = page or str(path.relative_to(REPO_ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    stray: list[str] = []
    pending: list[tuple[int, str]] = []  # markers waiting for their block
    i = 0
    while i < len(lines):
        text = lines[i]
        fence = _FENCE.match(text)
        if fence:
            indent = fence.group("indent")
            close = next((j for j in range(i + 1, len(lines))
                          if lines[j].strip() == "```" and lines[j].startswith(indent)), None)
            if close is None:
                stray.append(f"{page}: the fence on line {i + 1} is never closed")
                break
            if fence.group("info") == "python":
                block = Block(page, len(blocks) + 1, i + 1,
                              textwrap.dedent("\n".join(lines[i + 1:close])) + "\n")
                for _, body in pending:
                    block.markers.append(body)
                    _parse_marker(block, body)
                blocks.append(block)
            else:
                stray.extend(f"{page}: the marker on line {n} precedes a "
                             f"{fence.group('info') or 'plain'} block, not python"
                             for n, _ in pending)
            pending = []
            i = close + 1
            continue
        marker = _MARKER.match(text)
        if marker:
            pending.append((i + 1, marker.group("body")))
        elif _MARKER_START.search(text):
            stray.append(f"{page}: line {i + 1} looks like a snippet marker but is not "
                         "one (write it on one line: <!-- snippet: ... -->)")
        elif text.strip():
            stray.extend(f"{page}: the marker on line {n} is not right before a python block"
                         for n, _ in pending)
            pending = []
        i += 1
    stray.extend(f"{page}: the marker on line {n} is not right before a python block"
                 for n, _ in pending)
    return blocks, stray


def _pages() -> list[str]:
    paths = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    return [str(p.relative_to(REPO_ROOT)) for p in paths
            if re.search(r"^[ \t]*```python[ \t]*$", p.read_text(encoding="utf-8"), re.M)]


_PAGE_NAMESPACES: dict[str, dict] = {}  # page -> its namespace after a clean run


def _page_namespace(page: str) -> dict:
    """The namespace a page's runnable blocks leave (for a page that continues another)."""
    if page not in _PAGE_NAMESPACES:
        failures = run_page(REPO_ROOT / page)
        if failures:
            raise RuntimeError(f"{page} does not run:\n" + "\n".join(failures))
    return _PAGE_NAMESPACES[page]


# Objects a page's text assumes ("a fitted `m`", "the quickstart's `adata`"), built small.
# Each is Python source, run once per process in a namespace of its own; the names it
# defines are copied into the page's namespace before the marked block.
_SEQUENCES = """
import numpy as np
import causalzoo as cz
n_units, T = 24, 10
x = np.random.default_rng(0).normal(size=(n_units, T, 6)).astype(np.float32)
"""
SETUPS: dict[str, object] = {
    # The bundled Norman 2019 subset, set up as in the quickstart.
    "norman": textwrap.dedent("""
        import causalzoo as cz
        adata = cz.datasets.norman2019_subset()
        cz.SparsePerturbationVAE.setup_anndata(
            adata, perturbation_key="perturbation", control="control")
    """),
    # What guides/custom_models.md builds: its model, data and SVI fit (at its CI sizes).
    "custom_model": lambda: _page_namespace("docs/guides/custom_models.md"),
    # Your sequences: x (n_units, T, features).
    "sequences": _SEQUENCES,
    # A dynamical model fitted (a few steps) to those sequences, with labels per step
    # (domains ["ctrl", "drug"], the drug from step 4 on), linear mechanisms and lag-weight
    # changes (`weight_shift_scale`).
    "dynamical_ctrl_drug": _SEQUENCES + textwrap.dedent("""
        import jax.numpy as jnp
        u = np.where(np.arange(T) >= 4, "drug", "ctrl")[None].repeat(n_units, 0)
        m = cz.DynamicalCausalVAE.from_arrays(x=x, u=u, n_latent=3, n_lags=1,
                                              transition="linear", weight_shift_scale=0.5)
        m.fit(max_steps=4, batch_size=8, progress=False)
    """),
}
_SETUP_CACHE: dict[str, dict] = {}  # setup name -> the names it defined, once per process


def _setup_names(name: str) -> dict:
    if name not in _SETUP_CACHE:
        value = SETUPS[name]
        if callable(value):
            namespace = value()
        else:
            namespace = {"__name__": "__main__"}
            exec(_compile(value, f"<setup {name}>"), namespace)
        _SETUP_CACHE[name] = {k: v for k, v in namespace.items()
                              if k not in ("__builtins__", "__name__")}
    return _SETUP_CACHE[name]


PAGES = _pages()


def test_the_pages_are_found():
    # a broken search would make the tests below vacuous
    assert "README.md" in PAGES and "docs/quickstart.md" in PAGES
    assert sum(len(page_blocks(REPO_ROOT / p)[0]) for p in PAGES) > 40


def test_markers_are_well_formed():
    problems = []
    for page in PAGES:
        blocks, stray = page_blocks(REPO_ROOT / page)
        problems.extend(stray)
        problems.extend(f"{b.where}: {p}" for b in blocks for p in b.problems)
        problems.extend(f"{b.where}: both skip and fragment" for b in blocks
                        if b.skip is not None and b.fragment is not None)
    assert not problems, "\n".join(problems)


def _compile(source: str, filename: str):
    # Registered so that tracebacks show the snippet's lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return compile(source, filename, "exec")


def run_page(path: Path, page: str | None = None) -> list[str]:
    """Run a page's runnable blocks in order in one namespace; return the failures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks, _ = page_blocks(path, page)
    namespace: dict = {"__name__": "__main__"}
    failures = []
    with warnings.catch_warnings():
        # Advice a reader would see at the small CI sizes (ArviZ's Pareto-k warning after a
        # 50-step fit, "num_samples is larger than the number of predictive samples") is not
        # a failure; deprecations and other warnings still fail (pyproject.toml).
        warnings.filterwarnings("ignore", category=UserWarning)
        _run_blocks(blocks, namespace, failures, plt)
    if not failures:
        _PAGE_NAMESPACES[page or str(path.relative_to(REPO_ROOT))] = namespace
    return failures


def _run_blocks(blocks: list[Block], namespace: dict, failures: list[str], plt) -> None:
    for block in blocks:
        if not block.runs:
            continue
        step = block.where
        try:
            for name in block.setups:
                step = f"setup {name!r} (for {block.where})"
                namespace.update(_setup_names(name))
            step = block.where
            exec(_compile(block.ci_source(), f"<{block.where}>"), namespace)
        except Exception:
            failures.append(f"{step} failed:\n{traceback.format_exc()}")
            break  # later blocks build on this one
        finally:
            plt.close("all")


# Pages run in one test, in this order, so that they share compiled programs (JAX's
# persistent cache, tests/conftest.py) and set-ups: the README's snippet is the quickstart's
# and the reliability guide fits the same model; the interventions guide continues the
# custom-model guide, and the dynamical page uses the same fitted model.
GROUPS = [
    ("README.md", "docs/quickstart.md", "docs/guides/reliability.md"),
    ("docs/guides/custom_models.md", "docs/guides/interventions.md", "docs/models/dynamical.md"),
]
_GROUPED = {page for group in GROUPS for page in group}


def _runs_any(page: str) -> bool:
    return any(b.runs for b in page_blocks(REPO_ROOT / page)[0])


# A page whose blocks are all skips or fragments gets no test of its own (its markers are
# still checked above, and each names what covers the block instead).
TESTS = [*GROUPS, *((page,) for page in PAGES if page not in _GROUPED and _runs_any(page))]


def test_the_groups_name_pages_with_snippets():
    assert _GROUPED <= set(PAGES), sorted(_GROUPED - set(PAGES))


@pytest.mark.parametrize("pages", TESTS, ids=["+".join(g) for g in TESTS])
def test_page_snippets_run(pages, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert any(_runs_any(page) for page in pages), f"nothing runs in {pages}"
    failures = []
    for page in pages:
        failures.extend(run_page(REPO_ROOT / page))
    assert not failures, "\n".join(failures)
