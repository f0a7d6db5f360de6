"""A small app for the real-process audit test (``tests/test_audit_process.py``).

Run under uvicorn with its settings in the environment: an SQLite store, an
audit pipeline whose SQL sink is slowed down (``AUDIT_APP_SINK_DELAY``
seconds per batch) so that a SIGTERM catches events still buffered, and a
recovery log. ``POST /event?n=<k>`` emits one audited login attempt. When
the lifespan ends, the pipeline's counters are written to
``AUDIT_APP_STATS`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess.audit import AuditPipeline, AuditUnavailable, AuthEvent, StoreSink
from axess.stores.sql import SQLiteStore

ENV = os.environ


class SlowStoreSink(StoreSink):
    """The SQL sink, slowed down like a database under pressure."""

    def __init__(self, store: SQLiteStore, delay: float) -> None:
        super().__init__(store, name="sql")
        self.delay = delay

    async def write(self, events: Sequence[AuthEvent]) -> None:
        await asyncio.sleep(self.delay)
        await super().write(events)


store = SQLiteStore(ENV.get("AUDIT_APP_DB", "audit-app.db"))
pipeline = AuditPipeline(
    sinks=[SlowStoreSink(store, float(ENV.get("AUDIT_APP_SINK_DELAY", "0")))],
    max_buffer=100_000,
    batch_size=int(ENV.get("AUDIT_APP_BATCH", "20")),
    flush_interval=0.02,
    drain_timeout=float(ENV.get("AUDIT_APP_DRAIN_TIMEOUT", "10")),
    recovery_log=ENV.get("AUDIT_APP_RECOVERY", "audit-recovery.jsonl"),
)


async def event(request: Request) -> Response:
    n = int(request.query_params["n"])
    try:
        pipeline.authn_gate()
    except AuditUnavailable as exc:
        return exc.response()
    pipeline.record(
        "login_attempt", tenant="t1", user=f"user{n}", request_id=f"req-{n}", extras={"n": n}
    )
    return JSONResponse({"n": n})


async def ready(request: Request) -> Response:
    return JSONResponse({"replayed": pipeline.replayed})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await store.open()
    await pipeline.start()
    try:
        yield
    finally:
        await pipeline.stop()
        await store.close()
        (sql,) = pipeline.stats()
        stats = {
            "emitted": pipeline.emitted,
            "replayed": pipeline.replayed,
            "delivered": sql.delivered,
            "recovered": sql.recovered,
            "dropped": sql.dropped,
        }
        path = ENV.get("AUDIT_APP_STATS")
        if path:
            Path(path).write_text(json.dumps(stats))  # noqa: ASYNC240 - once, at exit


app = Starlette(
    routes=[Route("/event", event, methods=["POST"]), Route("/ready", ready)],
    lifespan=lifespan,
)
