"""Every ``>>>`` example in the package's docstrings runs and prints what it shows.

The API reference (mkdocstrings) renders these examples, so a user copies them; this runs
each one as a test (``doctest``, with ``...`` matching any text), one test per documented
object. An example that needs more than a small CPU run says ``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest

import causalzoo


def _docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found = []
    for info in pkgutil.walk_packages(causalzoo.__path__, "causalzoo."):
        module = importlib.import_module(info.name)
        found.extend(t for t in finder.find(module) if t.examples)
    return sorted(found, key=lambda t: t.name)


EXAMPLES = _docstring_examples()


def test_the_package_documents_examples():
    # the walk found the modules: a broken walk would make the test below vacuous
    assert len(EXAMPLES) > 100
    assert any(t.name.startswith("causalzoo.models.dynamical.") for t in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[t.name for t in EXAMPLES])
def test_docstring_example_runs(example):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out = io.StringIO()
    result = runner.run(example, out=out.write, clear_globs=True)
    assert result.failed == 0, out.getvalue()
