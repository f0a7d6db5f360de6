"""Outage WARNINGs are throttled: one line per interval, with a count."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from axess import StoreError
from axess._throttle import ThrottledWarning


def test_first_is_logged_then_suppressed_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warn = ThrottledWarning(logging.getLogger("axess.test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="axess.test"):
        assert warn.warning("load", "load failed: %s", "boom")
        for _ in range(5):
            now[0] += 1
            assert not warn.warning("load", "load failed: %s", "boom")
        assert warn.warning("save", "save failed")  # another key is independent
        now[0] = 10.5
        assert warn.warning("load", "load failed: %s", "boom")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "load failed: boom",
        "save failed",
        "load failed: boom (5 similar suppressed)",
    ]


async def test_sqlite_outage_logs_once_per_interval(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from axess.stores import SQLiteStore

    store = SQLiteStore(str(tmp_path / "x.db"))
    await store.open()
    store._driver.errors = lambda: (RuntimeError,)  # type: ignore[method-assign]

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk gone (test)")

    store._connected = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="axess"):
        for _ in range(50):
            with pytest.raises(StoreError):
                await store.load_session("k" * 64, 0.0)
    await store.close()
    assert sum("load" in r.getMessage() for r in caplog.records) == 1
