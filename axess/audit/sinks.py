"""Where audit events go.

A sink receives batches of events through ``await sink.write(events)`` and
raises on failure (the pipeline then retries the same batch with backoff).
``regulatory`` sinks get at-least-once delivery and are never dropped from;
the others (analytics) are best effort.

* :class:`StoreSink` — the regulatory SQL audit table of the store
  (any :class:`~axess.stores.base.AuditStore`), idempotent on event id.
* :class:`JSONLSink` — one JSON object per line, appended to a file.
* :class:`LoggingSink` — one log record per event.
* :class:`CallableSink` — hands each batch to your function (a SIEM connector).
* :class:`OTelLogsSink` — OpenTelemetry log records (``opentelemetry-api``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from axess.audit.events import AuditQuery, AuthEvent
from axess.audit.recovery import append_lines
from axess.stores.base import AuditStore

logger = logging.getLogger(__name__)


@runtime_checkable
class AuditSink(Protocol):
    """A destination for audit events.

    ``name`` is unique within a pipeline and recorded in the recovery log;
    keep it stable across deployments. ``write`` gets at most ``batch_size``
    events, in emission order, and raises to have the batch retried (all of
    it: make writes idempotent or accept duplicates). A sink may also define
    ``async close()``, called when the pipeline stops.
    """

    name: str
    regulatory: bool

    async def write(self, events: Sequence[AuthEvent]) -> None: ...


async def query_events(
    store: AuditStore, tenant: str | None, filters: AuditQuery | None = None
) -> list[AuthEvent]:
    """Events of ``tenant`` matching ``filters``, from ``store``.

    The tenant rail: ``tenant`` is mandatory (``None`` means events without
    a tenant, never "every tenant"), and rows of another tenant are never
    returned, even from a store that would hand them out.
    """
    if tenant is not None and not isinstance(tenant, str):
        raise TypeError("tenant must be a string or None")
    rows = await store.query_audit_events(tenant, filters)
    foreign = [e for e in rows if e.tenant != tenant]
    if foreign:  # a broken third-party store: never let its rows through
        logger.error(
            "audit store %s returned %d event(s) of another tenant; dropped from the result",
            type(store).__name__,
            len(foreign),
        )
        rows = [e for e in rows if e.tenant == tenant]
    return rows


class StoreSink:
    """The regulatory sink: the store's audit table (insert-if-absent by id).

    The store's lifecycle (open/close) belongs to whoever owns the store
    (``Axess``); this sink only writes to it.
    """

    regulatory = True

    def __init__(self, store: AuditStore, *, name: str = "store") -> None:
        if not isinstance(store, AuditStore):
            raise TypeError(f"{type(store).__name__} does not implement the audit store")
        self.store = store
        self.name = name

    def __repr__(self) -> str:
        return f"StoreSink({type(self.store).__name__}, name={self.name!r})"

    async def write(self, events: Sequence[AuthEvent]) -> None:
        await self.store.insert_audit_events(events)

    async def query_events(
        self, tenant: str | None, filters: AuditQuery | None = None
    ) -> list[AuthEvent]:
        """See :func:`query_events`."""
        return await query_events(self.store, tenant, filters)


class JSONLSink:
    """Appends each event as one JSON line to ``path`` (file mode 0600).

    Writes run in a worker thread; ``fsync=True`` makes each batch durable
    before it counts as delivered. Set ``regulatory=True`` only if the file
    is your system of record.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "jsonl",
        fsync: bool = False,
        regulatory: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.fsync = fsync
        self.regulatory = regulatory

    def __repr__(self) -> str:
        return f"JSONLSink({str(self.path)!r}, name={self.name!r})"

    def _write(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_lines(self.path, lines, fsync=self.fsync)

    async def write(self, events: Sequence[AuthEvent]) -> None:
        await asyncio.to_thread(self._write, [e.to_json() for e in events])


class LoggingSink:
    """One log record per event on ``logger`` (default ``axess.audit.events``).

    The message is the event's JSON; the record also carries the event as a
    dict in ``record.audit_event`` and its fields as ``audit.*`` attributes,
    which OpenTelemetry's logging handler exports as log attributes.
    """

    regulatory = False

    def __init__(
        self,
        logger: str | logging.Logger = "axess.audit.events",
        *,
        level: int = logging.INFO,
        name: str = "log",
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self.name = name

    async def write(self, events: Sequence[AuthEvent]) -> None:
        log = self.logger
        if not log.isEnabledFor(self.level):
            return
        for event in events:
            data = event.to_dict()
            extra: dict[str, Any] = {"audit_event": data}
            extra.update(
                {f"audit.{k}": v for k, v in data.items() if v is not None and k != "extras"}
            )
            log.log(self.level, "%s", event.to_json(), extra=extra)


class CallableSink:
    """Hands each batch to ``fn(events)`` — sync or async — e.g. a SIEM connector.

    ``fn`` receives the :class:`AuthEvent` objects (``event.to_dict()`` /
    ``event.to_json()`` give the wire form) and raises to have the batch
    retried. A sync ``fn`` runs in a worker thread so it may block on I/O.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[AuthEvent]], Awaitable[None] | None],
        *,
        name: str = "callable",
        regulatory: bool = False,
        in_thread: bool = True,
    ) -> None:
        self.fn = fn
        self.name = name
        self.regulatory = regulatory
        self._async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self._in_thread = in_thread

    def __repr__(self) -> str:
        return f"CallableSink({getattr(self.fn, '__qualname__', self.fn)!r}, name={self.name!r})"

    async def write(self, events: Sequence[AuthEvent]) -> None:
        batch = list(events)
        if self._async:
            result = self.fn(batch)
        elif self._in_thread:
            result = await asyncio.to_thread(self.fn, batch)
        else:
            result = self.fn(batch)
        if inspect.isawaitable(result):
            await result


class OTelLogsSink:
    """Each event as an OpenTelemetry log record (needs ``opentelemetry-api``).

    The body is the event type; attributes are the event's fields under
    ``axess.audit.*`` (``extras`` as one JSON string); the timestamp is the
    event time. With no ``logger_provider`` the global one is used, so the
    records go wherever the app's OpenTelemetry SDK exports logs.
    """

    regulatory = False

    def __init__(self, logger_provider: Any = None, *, name: str = "otel") -> None:
        try:
            from opentelemetry import _logs
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "OTelLogsSink needs opentelemetry-api: install axess with the 'otel' extra "
                "(pip install '/path/to/axess[otel]') or pip install opentelemetry-api"
            ) from exc
        self._api = _logs
        provider = logger_provider or _logs.get_logger_provider()
        self._logger = provider.get_logger("axess.audit")
        self.name = name

    async def write(self, events: Sequence[AuthEvent]) -> None:
        api = self._api
        for event in events:
            data = event.to_dict()
            attributes: dict[str, Any] = {
                f"axess.audit.{k}": v
                for k, v in data.items()
                if v is not None and k not in ("extras", "v")
            }
            if event.extras:
                attributes["axess.audit.extras"] = json.dumps(
                    data["extras"], separators=(",", ":"), ensure_ascii=False
                )
            severity = (
                api.SeverityNumber.WARN if event.status == "failure" else api.SeverityNumber.INFO
            )
            self._logger.emit(
                api.LogRecord(
                    timestamp=event.time * 1000,
                    severity_number=severity,
                    severity_text=severity.name,
                    body=event.type,
                    attributes=attributes,
                )
            )
