"""Text every store can keep.

Two kinds of character no store takes: NUL (PostgreSQL refuses it in text
and JSONB) and lone surrogates (valid in JSON, ``"\\ud800"``, but not
encodable as UTF-8, so every SQL driver, the recovery log and JSON sinks
fail on them). Input a store cannot keep is refused where it is input
(:func:`check_storable`: login identifiers, tenant ids) and replaced where
it is only recorded (:func:`storable`: audit events), never left to fail in
the store, where it would look like an outage.

Login identifiers have one normalization, :func:`normalize_identifier`,
used wherever one names an account: the login, the lockout's keys, the
users' lookup and the rate limiter's per-identifier buckets, so no
spelling of an account can reach a bucket or a lever of its own.

Ids (tenant, user, slug) follow one more rule, :func:`check_id`: no
trailing space. MySQL and MariaDB compare ``'acme '`` equal to ``'acme'``
(their collations pad with spaces), every other store does not; an id
with a trailing space would name someone else's rows on one backend only
(book: Storage).
"""

from __future__ import annotations

import re
import unicodedata
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


#: The widest id column of the session table (user and tenant ids).
MAX_SESSION_ID_CHARS: Final = 255


def check_id(text: str, what: str, max_chars: int) -> None:
    """Raises ValueError, naming ``what``, unless ``text`` is 1 to
    ``max_chars`` characters a store can keep and does not end with a space
    (TypeError for a non-str)."""
    if not isinstance(text, str):
        raise TypeError(f"a {what} must be a str")
    if not 0 < len(text) <= max_chars:
        raise ValueError(f"a {what} has 1 to {max_chars} characters")
    if text[-1] == " ":
        raise ValueError(f"a {what} cannot end with a space")
    check_storable(text, what)


#: Longest identifier taken as input (longer is refused before anything).
MAX_IDENTIFIER_INPUT: Final = 1024
#: The identity stores' columns: a normalized identifier.
MAX_STORED_IDENTIFIER: Final = 320


def normalize_identifier(identifier: str) -> str:
    """The one normalization of login identifiers: NFKC, casefold, NFKC, strip.

    Raises ValueError when nothing is left, the input is absurdly long (over
    1024 characters, or over the stores' 320 once normalized: NFKC can
    lengthen text) or is no text a store can hold (a lone surrogate, a NUL);
    TypeError for a non-str.
    """
    if not isinstance(identifier, str):
        raise TypeError("an identifier must be a str")
    if len(identifier) > MAX_IDENTIFIER_INPUT:
        raise ValueError("identifier too long")
    check_storable(identifier, "identifier")
    # NFKC again after casefolding makes the function idempotent.
    folded = unicodedata.normalize("NFKC", identifier).casefold()
    normalized = unicodedata.normalize("NFKC", folded).strip()
    if not normalized:
        raise ValueError("empty identifier")
    if len(normalized) > MAX_STORED_IDENTIFIER:
        raise ValueError("identifier too long")
    return normalized
