"""Testing helpers: deterministic clock/randomness and the store contract suite.

Third-party stores can run the same contracts axess runs on its own backends
(:mod:`axess.testing.contract`: ``SessionStoreContract``,
``LockoutStoreContract``, ``IdentityStoreContract``, ``AuditStoreContract``,
``BucketStoreContract``; book: Storage, "The contract suite")::

    from axess.testing.contract import SessionStoreContract

    class TestMyStore(SessionStoreContract):
        @pytest.fixture
        async def store(self):
            s = MyStore(...)
            await s.open()
            yield s
            await s.close()
"""

from axess.clock import MockClock, SeededRandom

__all__ = ["MockClock", "SeededRandom"]
