"""Bounded memos for pure, deterministic computations on the hot path.

Every memo of the request path is a :class:`Memo`: one pure function whose
results are remembered, with a bound on both how many entries it holds and
how large each key may be, so its memory has a worst case whatever clients
send (the per-memo figures are in the book's "Memos" section of the sessions
chapter; why each one is safe is in the Internals chapter).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
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


#: What :func:`key_bytes` counts for a key part whose size it cannot tell:
#: over every bound, so such a key is computed each time, never remembered.
UNKNOWN_KEY_BYTES: Final = sys.maxsize


def key_bytes(key: object) -> int:
    """How much text a memo key holds: the length of each ``bytes`` and ASCII
    ``str`` in it (tuples are walked), the in-memory size of other strings,
    the byte length of any other buffer (``memoryview``: a store may hand a
    payload out as one). Numbers and ``None`` count nothing; a part of any
    other type counts :data:`UNKNOWN_KEY_BYTES`, so a key whose size cannot
    be told is never remembered rather than taken for empty.

    O(1) per part (no hashing, no scan): it runs on every memo insert.
    """
    if isinstance(key, bytes):
        return len(key)
    if isinstance(key, str):
        return len(key) if key.isascii() else sys.getsizeof(key) - _STR_HEAD
    if isinstance(key, tuple):
        return sum(map(key_bytes, key))
    if key is None or isinstance(key, int | float | complex):
        return 0
    try:
        with memoryview(key) as view:  # type: ignore[arg-type]
            return view.nbytes
    except TypeError:
        return UNKNOWN_KEY_BYTES


class BoundedDict(dict[K, V]):
    """A dict with a worst-case memory: at most ``capacity`` entries (evicted
    first in, first out) and no key holding more than ``max_key_bytes`` of
    text (:func:`key_bytes`; such keys are not stored at all). ``None`` lifts
    the key bound, only for keys that are not client input.

    Read with the plain dict methods; write with :meth:`put` (or
    ``d[key] = value``), which enforces both bounds. Used directly for
    bounded *state* (e.g. per-key counters); a remembered computation is a
    :class:`Memo`.
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
        """Store ``value`` for ``key`` unless the key is too large; returns
        ``value`` (so ``return d.put(key, compute())`` reads naturally)."""
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
        # ``d[key] = value`` is held to the same bounds as put().
        self.put(key, value)


class Memo(BoundedDict[K, V]):
    """``compute`` remembered: ``memo[key]`` is ``compute(key)``, computed on
    the first lookup of ``key`` and answered from memory while it is held.

    The key is the computation's whole input and the value its output, built
    by one function, so no cache key is ever a hand copy of what it stands
    for. ``compute`` must be pure: it may read only ``key`` and state fixed
    for the memo's life (a keyring, a policy), so a hit is indistinguishable
    from recomputing. An exception from ``compute`` propagates and nothing
    is remembered. Both bounds of :class:`BoundedDict` apply: a key over the
    key bound is computed on every lookup, never stored.

    A hit costs one dict lookup (the subscript runs in C; only a miss calls
    :meth:`__missing__`).
    """

    __slots__ = ("compute",)

    def __init__(
        self,
        compute: Callable[[K], V],
        capacity: int,
        *,
        max_key_bytes: int | None = DEFAULT_MAX_KEY_BYTES,
    ) -> None:
        super().__init__(capacity, max_key_bytes=max_key_bytes)
        self.compute = compute

    def __missing__(self, key: K) -> V:
        return self.put(key, self.compute(key))
