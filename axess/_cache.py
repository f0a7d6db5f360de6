"""A tiny bounded memo for pure, deterministic computations on the hot path."""

from __future__ import annotations

from typing import Final, TypeVar

#: Entries per memo of the request path: how many returning clients each
#: remembers (``Axess(memo_size=...)``).
DEFAULT_MEMO_SIZE: Final = 8192

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(dict[K, V]):
    """Maps inputs to results of a deterministic, side-effect-free computation
    (e.g. "this exact cookie value verified to this id").

    Only ever store results that are a pure function of the key: a hit must
    be indistinguishable from recomputing. Read with ``get`` (the plain dict
    method, so a hit costs no Python call); write with :meth:`put`, which
    evicts first-in first-out so memory stays bounded by ``capacity`` entries.
    """

    __slots__ = ("_capacity",)

    def __init__(self, capacity: int) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity

    def put(self, key: K, value: V) -> None:
        if len(self) >= self._capacity and key not in self:
            del self[next(iter(self))]
        self[key] = value
