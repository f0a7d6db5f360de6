"""Testing helpers: deterministic clock/randomness and the store contract suite.

Third-party stores can run the same contract axess runs on its own backends::

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
