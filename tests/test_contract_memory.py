from collections.abc import AsyncIterator

import pytest

from axess.stores import MemoryStore
from axess.testing.contract import SessionStoreContract


class TestMemorySessionStore(SessionStoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        s = MemoryStore()
        await s.open()
        yield s
        await s.close()


def test_an_empty_store_is_still_truthy() -> None:
    # It counts its sessions with len(), but ``store or default`` must never
    # swap an empty store for another one.
    store = MemoryStore()
    assert len(store) == 0
    assert store
    assert (store or MemoryStore()) is store
