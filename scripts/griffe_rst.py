"""A griffe extension for the API reference (mkdocs.yml loads it): encoderkit's docstrings are
written in reStructuredText habits, while mkdocstrings renders Markdown. Two habits would read
badly there, so they are rewritten as the docstrings are loaded:

* Sphinx roles become code spans: :class:`Encoder` becomes `Encoder`, and with a tilde only the
  last name is kept: :func:`~encoderkit.fit` becomes `fit`;
* doctest lines (``>>> ...`` and the output below them, up to a blank line), which Markdown reads
  as nested block quotes, become a fenced ``pycon`` block.

Double-backquoted literals already are Markdown code spans, and ``*`` bullets are Markdown lists.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _code_span(role: re.Match[str]) -> str:
    tilde, target = role.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"  # ~ shows the last name only


def markdown_docstring(text: str) -> str:
    """``text`` with its reStructuredText roles and doctest lines rewritten as Markdown."""
    lines: list[str] = []
    indent: str | None = None  # the open fence's indentation, inside a doctest block
    for line in ROLE.sub(_code_span, text).splitlines():
        if indent is None and line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(f"{indent}```pycon")
        elif indent is not None and not line.strip():
            lines.append(f"{indent}```")
            indent = None
        lines.append(line)
    if indent is not None:
        lines.append(f"{indent}```")
    return "\n".join(lines)


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring with :func:`markdown_docstring` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
