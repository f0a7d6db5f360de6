"""A batch of big audit events on MySQL/MariaDB: each INSERT stays far below
``max_allowed_packet`` (16 MiB by default), else the batch fails on every
retry and the SQL sink never advances (book: Audit, "Storage")."""

from __future__ import annotations

import pytest

from axess.audit import AuditPipeline, AuditQuery, StoreSink
from axess.clock import MockClock, SeededRandom
from axess.stores import MemoryStore
from axess.stores.sql import MySQLStore, engine

MY = pytest.mark.backend("mysql")
#: Four bytes of UTF-8 a character: the widest a valid event can get.
WIDE = "\U0001f600"


@MY
async def test_a_batch_of_the_widest_events_fits_mariadbs_packet(mysql_store: MySQLStore) -> None:
    p = AuditPipeline(sinks=[StoreSink(MemoryStore())], clock=MockClock(), random=SeededRandom(3))
    evs = [
        p.event(
            "app.profile_updated",
            tenant="acme",
            user=WIDE * 250 + f"{i:05d}",
            user_agent=WIDE * 512,
            reason=WIDE * 255,
            actor=WIDE * 255,
            extras={**{f"f{k}": WIDE * 1024 for k in range(7)}, "g": WIDE * 900},
        )
        for i in range(engine.AUDIT_CHUNK)
    ]
    await mysql_store.insert_audit_events(evs)  # one INSERT of them all: ~18 MiB
    stored = await mysql_store.query_audit_events("acme", AuditQuery(limit=1000))
    assert {e.id for e in stored} == {e.id for e in evs}
