"""Text every store can keep.

Two kinds of character no store takes: NUL (PostgreSQL refuses it in text
and JSONB) and lone surrogates (valid in JSON, ``"\\ud800"``, but not
encodable as UTF-8, so every SQL driver, the recovery log and JSON sinks
fail on them). Input a store cannot keep is refused where it is input
(:func:`check_storable`: login identifiers, tenant ids) and replaced where
it is only recorded (:func:`storable`: audit events), never left to fail in
the store, where it would look like an outage.
"""

from __future__ import annotations

import re
from typing import Final

#: Replaces what no store can keep.
REPLACEMENT_CHAR: Final = "\ufffd"
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT_CHAR) if "\x00" in text else text
    return _UNSTORABLE.sub(REPLACEMENT_CHAR, text)


def check_storable(text: str, what: str) -> None:
    """Raises ValueError, naming ``what``, when ``text`` holds a NUL or a
    lone surrogate."""
    if _UNSTORABLE.search(text) is not None:
        raise ValueError(f"{what} holds a NUL or is not valid Unicode text")
