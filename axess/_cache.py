"""A tiny bounded memo for pure, deterministic computations on the hot path."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    """Maps inputs to results of a deterministic, side-effect-free computation
    (e.g. "this exact cookie value verified to this id").

    Only ever store results that are a pure function of the key: a hit must
    be indistinguishable from recomputing. Evicts first-in first-out when
    full, so memory is bounded by ``capacity`` entries.
    """

    __slots__ = ("_capacity", "_data")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._data: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        data = self._data
        if len(data) >= self._capacity and key not in data:
            del data[next(iter(data))]
        data[key] = value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
