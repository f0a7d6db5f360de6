"""Audit retention: archive old events, then purge them from the table.

Every ``interval`` seconds the loop:

1. takes rows older than ``archive_after`` (default 90 days) that are not
   archived yet, oldest first, in batches;
2. hands each batch to the archiver (default :class:`JSONLArchiver`: one
   JSONL file per UTC day of the event time, fsync'd) and, only once the
   archiver returned, stamps the rows archived with
   ``purge_at = now + purge_after`` (default 7 days);
3. deletes archived rows whose ``purge_at`` has passed.

A row is therefore never deleted before it was archived and kept for
``purge_after`` more. A crash between steps 2 and 3 archives the batch again
on the next run: archive files can hold an event twice (deduplicate by
``id``), never zero times.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from axess.audit.events import AuthEvent, to_us
from axess.audit.recovery import append_lines
from axess.clock import Clock, SystemClock
from axess.errors import ConfigurationError
from axess.stores.base import AuditStore

logger = logging.getLogger(__name__)

DAY: Final = 86_400.0
_SYSTEM_CLOCK: Final = SystemClock()


@runtime_checkable
class Archiver(Protocol):
    """Stores events durably before they are purged; raises on failure."""

    async def archive(self, events: Sequence[AuthEvent]) -> None: ...


class JSONLArchiver:
    """``<directory>/audit-YYYY-MM-DD.jsonl``: one file per UTC day of the event
    time, one :meth:`AuthEvent.to_json` line per event, appended with fsync
    (file mode 0600). Ship the closed days to cold storage as you like."""

    def __init__(
        self, directory: str | os.PathLike[str], *, prefix: str = "audit-", fsync: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"JSONLArchiver({str(self.directory)!r})"

    def path_for(self, time_us: int) -> Path:
        day = dt.datetime.fromtimestamp(time_us / 1_000_000, tz=dt.UTC).date()
        return self.directory / f"{self.prefix}{day.isoformat()}.jsonl"

    def _write(self, events: Sequence[AuthEvent]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        by_day: dict[Path, list[str]] = {}
        for event in events:
            by_day.setdefault(self.path_for(event.time), []).append(event.to_json())
        for path, lines in sorted(by_day.items()):
            append_lines(path, lines, fsync=self.fsync)

    async def archive(self, events: Sequence[AuthEvent]) -> None:
        await asyncio.to_thread(self._write, list(events))


@dataclass(frozen=True, slots=True)
class RetentionReport:
    archived: int
    purged: int


class AuditRetention:
    """The retention loop over an :class:`~axess.stores.base.AuditStore`.

    Start/stop it yourself, or pass it as ``AuditPipeline(retention=...)``
    and the pipeline does. Run it on one instance only if you mind duplicate
    archive lines (several instances are safe otherwise). ``clock`` defaults
    to the pipeline's; ``sleep`` is injectable for tests.
    """

    def __init__(
        self,
        store: AuditStore,
        archiver: Archiver,
        *,
        archive_after: float = 90 * DAY,
        purge_after: float = 7 * DAY,
        interval: float = 3600.0,
        batch_size: int = 1000,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if archive_after < 0 or purge_after < 0:
            raise ConfigurationError("archive_after and purge_after must not be negative")
        if interval <= 0 or batch_size < 1:
            raise ConfigurationError("interval must be positive and batch_size at least 1")
        self.store = store
        self.archiver = archiver
        self.archive_after = archive_after
        self.purge_after = purge_after
        self.interval = interval
        self.batch_size = batch_size
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._task: asyncio.Task[None] | None = None

    def bind(self, *, clock: Clock | None = None) -> None:
        """Use ``clock`` unless one was given to the constructor."""
        self._clock = self._clock or clock

    @property
    def clock(self) -> Clock:
        return self._clock or _SYSTEM_CLOCK

    async def run_once(self) -> RetentionReport:
        """One archive-then-purge pass now; raises on a store or archiver failure."""
        now = self.clock.time()
        now_us = to_us(now)
        cutoff = now_us - to_us(self.archive_after)
        purge_at = now_us + to_us(self.purge_after)
        archived = 0
        while True:
            batch = await self.store.audit_events_to_archive(cutoff, self.batch_size)
            if not batch:
                break
            await self.archiver.archive(batch)
            marked = await self.store.mark_audit_events_archived(
                [e.id for e in batch], archived_at_us=now_us, purge_at_us=purge_at
            )
            archived += marked
            if len(batch) < self.batch_size or marked == 0:
                break
        purged = await self.store.purge_archived_audit_events(now)
        return RetentionReport(archived, purged)

    async def _loop(self) -> None:
        while True:
            await self._sleep(self.interval)
            try:
                report = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried next tick
                logger.warning(
                    "audit retention pass failed (%s); retrying next tick", type(exc).__name__
                )
                continue
            if report.archived or report.purged:
                logger.info(
                    "audit retention: archived %d event(s), purged %d",
                    report.archived,
                    report.purged,
                )

    async def start(self) -> None:
        """Start the loop (first pass one ``interval`` from now). Idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="axess-audit-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
