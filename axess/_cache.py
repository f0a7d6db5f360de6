"""Bounded memos for pure, deterministic computations on the hot path.

Every memo of the request path is a :class:`BoundedMemo`, which bounds both
how many entries it holds and how large each key may be, so its memory has a
worst case whatever clients send (the per-memo figures are in the book's
"Memos" section of the sessions chapter).
"""

from __future__ import annotations

import sys
from typing import Any, Final, TypeVar

from axess.errors import ConfigurationError

#: Entries per memo of the request path: how many returning clients each
#: remembers (``Axess(memo_size=...)``).
DEFAULT_MEMO_SIZE: Final = 8192

#: The most key text a memo remembers by default (see :func:`key_bytes`): a
#: realistic User-Agent, Cookie header or path fits; a larger key is simply
#: not remembered, and its computation runs every time.
DEFAULT_MAX_KEY_BYTES: Final = 1024

K = TypeVar("K")
V = TypeVar("V")

_STR_HEAD: Final = sys.getsizeof("")


def key_bytes(key: object) -> int:
    """How much text a memo key holds: the length of each ``bytes`` and ASCII
    ``str`` in it (tuples are walked), the in-memory size of other strings.
    Numbers, ``None`` and other fixed-size parts count nothing.

    O(1) per part (no hashing, no scan): it runs on every memo insert.
    """
    if isinstance(key, bytes):
        return len(key)
    if isinstance(key, str):
        return len(key) if key.isascii() else sys.getsizeof(key) - _STR_HEAD
    if isinstance(key, tuple):
        return sum(map(key_bytes, key))
    return 0


class BoundedMemo(dict[K, V]):
    """Maps inputs to results of a deterministic, side-effect-free computation
    (e.g. "this exact cookie value verified to this id").

    Only ever store results that are a pure function of the key: a hit must
    be indistinguishable from recomputing. Read with ``get`` (the plain dict
    method, so a hit costs no Python call); write with :meth:`put`, which
    enforces both bounds, so memory stays below about ``capacity`` x (the
    largest key + the largest value):

    - at most ``capacity`` entries, evicted first in, first out;
    - keys holding more than ``max_key_bytes`` of text (:func:`key_bytes`)
      are not stored at all: such inputs are recomputed on every request
      instead of hashed, so no digest is ever trusted in place of the input.
      ``None`` lifts the bound, only for keys that are not client input.
    """

    __slots__ = ("capacity", "max_key_bytes")

    def __init__(self, capacity: int, *, max_key_bytes: int | None = DEFAULT_MAX_KEY_BYTES) -> None:
        super().__init__()
        if capacity < 1:
            raise ConfigurationError("capacity must be >= 1")
        if max_key_bytes is not None and max_key_bytes < 0:
            raise ConfigurationError("max_key_bytes must be >= 0 (or None)")
        self.capacity = capacity
        self.max_key_bytes = max_key_bytes

    def put(self, key: K, value: V) -> V:
        """Remember ``value`` for ``key`` unless the key is too large; returns
        ``value`` (so ``return memo.put(key, compute())`` reads naturally)."""
        limit = self.max_key_bytes
        if limit is not None:
            # key_bytes(key), inlined for the usual keys: every miss pays it.
            probe: Any = key
            kind = type(probe)
            if kind is bytes:
                size = len(probe)
            elif kind is tuple:
                size = 0
                for part in probe:
                    kind = type(part)
                    if kind is bytes or (kind is str and part.isascii()):
                        size += len(part)
                    elif kind is not int and part is not None:
                        size += key_bytes(part)
            else:
                size = key_bytes(probe)
            if size > limit:
                return value
        if len(self) >= self.capacity and key not in self:
            del self[next(iter(self))]
        dict.__setitem__(self, key, value)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        # ``memo[key] = value`` is held to the same bounds as put().
        self.put(key, value)
