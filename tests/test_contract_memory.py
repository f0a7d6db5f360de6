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
