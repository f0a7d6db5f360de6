"""Small helpers every SQL substore module shares: parameter placeholders
and the epoch-millisecond time columns."""

from __future__ import annotations

import itertools
import re


def ms(seconds: float) -> int:
    """Epoch seconds (float) as the integer milliseconds stored in time columns."""
    return round(seconds * 1000)


def placeholders(sql: str, style: str) -> str:
    """Rewrite ``?`` placeholders for the driver's ``paramstyle``
    (``format`` → ``%s``, ``numeric`` → ``$1, $2, …``; ``qmark`` unchanged)."""
    if style == "format":
        return sql.replace("?", "%s")
    if style == "numeric":
        n = itertools.count(1)
        return re.sub(r"\?", lambda _: f"${next(n)}", sql)
    return sql
