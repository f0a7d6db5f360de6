"""A griffe extension for the API reference (book/docs/api.md): axess's
docstrings are written for reading in the source, with reST roles
(``:class:`Keyring```) and ``::`` literal blocks; this renders them as
Markdown code spans and plain code blocks."""

from __future__ import annotations

import re
from typing import Any

import griffe

#: ``:class:`~axess.keys.Keyring``` and friends; ``~`` keeps the last part only.
ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
#: ``::`` ending a paragraph, or alone on a line, introduces an indented
#: literal block (a Markdown code block as it is).
LITERAL_ALONE = re.compile(r"^[ \t]*::[ \t]*$", re.MULTILINE)
LITERAL_INTRO = re.compile(r"::[ \t]*$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def markdown(text: str) -> str:
    """``text`` with roles as code spans and ``::`` block intros as ``:``."""
    text = ROLE.sub(_role, text)
    return LITERAL_INTRO.sub(":", LITERAL_ALONE.sub("", text))


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
