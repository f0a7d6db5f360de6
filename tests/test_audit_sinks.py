"""The sinks (JSONL file, logging, callable/SIEM, OpenTelemetry logs, store),
the tenant rail of ``query_events``, and session events from a real app
flowing into the audit table."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ROUTES
from starlette.applications import Starlette
from test_audit_support import VirtualTime

from axess import Axess, Keyring, MockClock
from axess.audit import AuditPipeline, AuditQuery, AuthEvent, CallableSink, JSONLSink
from axess.audit.sinks import LoggingSink, OTelLogsSink, StoreSink, query_events
from axess.stores import MemoryStore
from axess.testing import SeededRandom
from axess.testing.contract import make_event


def _events(n: int) -> list[AuthEvent]:
    return [make_event(i, extras={"i": i}) for i in range(n)]


async def test_jsonl_sink_appends_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    sink = JSONLSink(path, fsync=True)
    assert not sink.regulatory and sink.name == "jsonl"
    evs = _events(3)
    await sink.write(evs[:2])
    await sink.write(evs[2:])
    lines = path.read_text().splitlines()
    assert [AuthEvent.from_json(line) for line in lines] == evs
    assert path.stat().st_mode & 0o777 == 0o600


async def test_logging_sink_logs_json_with_attributes(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggingSink()
    with caplog.at_level(logging.INFO, "axess.audit.events"):
        await sink.write(_events(2))
    records = [r for r in caplog.records if r.name == "axess.audit.events"]
    assert len(records) == 2
    assert json.loads(records[0].getMessage())["id"] == "e0000000"
    assert records[0].audit_event["extras"] == {"i": 0}  # type: ignore[attr-defined]
    assert getattr(records[1], "audit.type") == "authenticated"
    quiet = LoggingSink(level=logging.DEBUG)
    caplog.clear()
    with caplog.at_level(logging.INFO, "axess.audit.events"):
        await quiet.write(_events(1))  # level disabled: nothing formatted
    assert caplog.records == []


async def test_callable_sink_sync_async_and_failures() -> None:
    got: list[list[str]] = []

    def sync_fn(events: Sequence[AuthEvent]) -> None:
        got.append([e.id for e in events])

    async def async_fn(events: Sequence[AuthEvent]) -> None:
        got.append([e.to_dict()["id"] for e in events])

    class Connector:
        async def __call__(self, events: Sequence[AuthEvent]) -> None:
            got.append(["obj", *(e.id for e in events)])

    evs = _events(2)
    await CallableSink(sync_fn).write(evs)
    await CallableSink(sync_fn, in_thread=False).write(evs[:1])
    await CallableSink(async_fn, name="siem").write(evs)
    await CallableSink(Connector()).write(evs[1:])
    assert got == [
        ["e0000000", "e0000001"],
        ["e0000000"],
        ["e0000000", "e0000001"],
        ["obj", "e0000001"],
    ]

    def broken(events: Sequence[AuthEvent]) -> None:
        raise ConnectionError("SIEM down")

    with pytest.raises(ConnectionError):
        await CallableSink(broken).write(evs)


async def test_otel_logs_sink_emits_log_records() -> None:
    class FakeLogger:
        def __init__(self) -> None:
            self.records: list[Any] = []

        def emit(self, record: Any = None, **kw: Any) -> None:
            self.records.append(record)

    class FakeProvider:
        def __init__(self) -> None:
            self.logger = FakeLogger()

        def get_logger(self, name: str, *args: Any, **kw: Any) -> FakeLogger:
            assert name == "axess.audit"
            return self.logger

    provider = FakeProvider()
    sink = OTelLogsSink(provider)
    ev = make_event(1, type="factor_failed", extras={"attempt": 2})
    await sink.write([ev])
    (record,) = provider.logger.records
    assert record.body == "factor_failed"
    assert record.timestamp == ev.time * 1000
    assert record.attributes["axess.audit.id"] == ev.id
    assert record.attributes["axess.audit.tenant"] == "t1"
    assert json.loads(record.attributes["axess.audit.extras"]) == {"attempt": 2}
    assert record.severity_text == "WARN"
    await OTelLogsSink().write([ev])  # the global (no-op) provider


def test_store_sink_needs_an_audit_store() -> None:
    with pytest.raises(TypeError, match="audit store"):
        StoreSink(object())  # type: ignore[arg-type]
    assert StoreSink(MemoryStore()).regulatory


async def test_query_events_never_returns_another_tenants_rows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class LeakyStore(MemoryStore):
        async def query_audit_events(
            self, tenant_id: str | None, query: AuditQuery | None = None
        ) -> list[AuthEvent]:
            return [e.event for e in self._audit.values()]  # ignores the tenant

    store = LeakyStore()
    await store.insert_audit_events([make_event(1, tenant="a"), make_event(2, tenant="b")])
    with caplog.at_level(logging.ERROR, "axess.audit"):
        rows = await query_events(store, "a")
    assert [e.tenant for e in rows] == ["a"]
    assert "returned 1 event(s) of another tenant" in caplog.text
    with pytest.raises(TypeError):
        await query_events(store, 1)  # type: ignore[arg-type]
    assert [e.tenant for e in await StoreSink(store).query_events(None)] == []


# -- session events from a real app ------------------------------------------------------
async def test_session_lifecycle_events_reach_the_audit_table() -> None:
    store = MemoryStore()
    vt = VirtualTime(MockClock())
    pipeline = AuditPipeline(
        sinks=[StoreSink(store)],
        recovery_log=None,
        flush_interval=0.0,
        clock=vt.clock,
        random=SeededRandom(5),
        sleep=vt.sleep,
    )
    auth = Axess(
        store=store,
        keys=Keyring.generate(),
        clock=vt.clock,
        random=SeededRandom(1),
        debug=True,
        cleanup_interval=None,
        csrf=False,
        on_session_event=pipeline.session_event_hook(),
    )
    app = Starlette(routes=ROUTES)
    auth.install(app)
    await pipeline.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://testserver"
    ) as client:
        ua = {"user-agent": "Browser/1.0 (test)"}
        await client.post("/write", headers=ua)  # a guest session is created
        await client.post("/login", params={"user": "alice", "tenant": "acme"}, headers=ua)
        await client.post("/logout", headers=ua)  # invalidated
    async with vt.autojump():
        await pipeline.flush()
    rows = await pipeline.query_events("acme", AuditQuery(order="asc"))
    assert [e.type for e in rows] == ["session_rotated", "session_invalidated"]
    assert all(e.user == "alice" and e.session and len(e.session) == 12 for e in rows)
    # A row says where the request that caused it came from (a plain
    # session.invalidate() does not know its request; invalidate_for does).
    rotated, logout = rows
    assert (rotated.ip, rotated.user_agent) == ("127.0.0.1", "Browser/1.0 (test)")
    assert (logout.ip, logout.user_agent) == (None, None)
    guest = await pipeline.query_events(None, AuditQuery(order="asc"))
    assert [e.type for e in guest] == ["session_created"]
    assert (guest[0].ip, guest[0].user_agent) == ("127.0.0.1", "Browser/1.0 (test)")
    sids = [c.value for c in client.cookies.jar]
    dumped = json.dumps([e.to_dict() for e in rows + guest])
    assert not any(sid and sid.split(".")[0] in dumped for sid in sids)
    await pipeline.stop()
