"""Griffe extension: show Sphinx roles in docstrings as inline code.

causalzoo's docstrings are numpydoc, and numpydoc text often names other objects with
Sphinx roles (:func:`mcc`, :class:`~causalzoo.models.ModelSpec`). mkdocstrings renders
docstrings as Markdown, where a role would show up verbatim (":func:" followed by code), so
this extension rewrites each role to plain inline code (``mcc``, ``ModelSpec``) while the
docstrings are loaded. It only changes what the docs show, never the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|term|ref):`(~?)([^`]+)`"
)


def _replace(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    # ":func:`label <target>`" shows the label.
    explicit = re.fullmatch(r"(.+?)\s*<[^>]+>", target)
    if explicit:
        target = explicit.group(1)
    elif tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class SphinxRolesToCode(griffe.Extension):
    """Rewrite Sphinx roles in every docstring to inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(_replace, obj.docstring.value)
