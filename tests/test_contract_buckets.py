"""The rate-limit bucket store contract on memory and Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fixtures_valkey import ValkeyTarget

from axess.clock import MockClock
from axess.ratelimit import MemoryBucketStore, ValkeyBucketStore
from axess.testing.contract import BucketStoreContract


class TestMemoryBucketStore(BucketStoreContract):
    @pytest.fixture
    def store(self) -> MemoryBucketStore:
        return MemoryBucketStore(clock=MockClock())


class TestValkeyBucketStore(BucketStoreContract):
    @pytest.fixture
    async def store(
        self, valkey_target: ValkeyTarget, valkey_prefix: str
    ) -> AsyncIterator[ValkeyBucketStore]:
        store = ValkeyBucketStore(valkey_target.url, prefix=valkey_prefix, allow_insecure=True)
        await store.open()
        try:
            yield store
        finally:
            await store.close()
