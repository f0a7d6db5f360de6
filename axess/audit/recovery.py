"""The audit recovery log: events not delivered yet, safe on disk.

Format: JSONL, one event per line, each line a JSON object
``{"sinks": ["<sink name>", ...], "event": {<AuthEvent.to_dict()>}}`` naming
the sinks that still need the event. Lines are appended with ``fsync``;
before appending, a last line left without its newline (a write torn by a
crash) is terminated, so a torn line never swallows the next one. Reading
skips a line that does not parse, with a WARNING, and replays the rest.

Life cycle of the files (``path`` and ``path + ".replaying"``):

1. A pipeline appends leftovers (drain timeout, overflow spill) to ``path``.
2. At start, :meth:`RecoveryLog.take` atomically renames ``path`` to
   ``path.replaying`` (merging it into an existing ``.replaying`` left by a
   crash) and returns its events; new leftovers go to a fresh ``path``.
3. Once every replayed event is delivered (or, at shutdown, written to the
   fresh ``path`` again), :meth:`RecoveryLog.commit` deletes
   ``path.replaying``. A crash before that replays it again at the next
   start: delivery is at least once, and the SQL sink is idempotent.

Lines that do not parse are copied to ``path + ".rejected"`` before the
replayed file is deleted, so nothing is silently destroyed.

:class:`RecoverySpill` is the pipeline's side of it: events past a buffer's
hard limit, events emitted after ``stop()``, the leftovers of the drain, and
the replay at start, each counted in the sink buffers' ``recovered`` (or
``dropped`` when there is no log or it cannot be written).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from axess.audit.buffer import SinkBuffer
from axess.audit.events import AuthEvent
from axess.observability.metrics import AuthnMetrics

logger = logging.getLogger(__name__)

#: File mode of files axess creates for audit data (it names users and IPs).
FILE_MODE: Final = 0o600
_REPORT_LINES: Final = 10


def _fsync_dir(directory: Path) -> None:
    """Make a create/rename/unlink in ``directory`` durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def append_lines(path: Path, lines: Iterable[str], *, fsync: bool = True) -> int:
    """Append ``lines`` (without newlines) to ``path``; the number of bytes written.

    Creates the file (mode 0600) if needed. If the file's last line has no
    newline (a torn write), one is added first so the torn line stays a
    separate, skippable line.
    """
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    if not data:
        return 0
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if created and fsync:
        _fsync_dir(path.parent)
    return len(data)


@dataclass(frozen=True, slots=True)
class Recovered:
    """One replayed event and the sinks that still need it."""

    event: AuthEvent
    sinks: tuple[str, ...]


@dataclass(slots=True)
class ReadResult:
    entries: list[Recovered] = field(default_factory=list)
    #: 1-based line numbers that did not parse (torn or corrupt).
    skipped: list[int] = field(default_factory=list)
    #: Their raw bytes (kept aside in ``<path>.rejected`` for inspection).
    rejected: list[bytes] = field(default_factory=list)


def encode_entry(event: AuthEvent, sinks: Sequence[str]) -> str:
    """One recovery-log line (without the newline)."""
    return json.dumps(
        {"sinks": list(sinks), "event": event.to_dict()},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def read_entries(path: Path) -> ReadResult:
    """Parse a recovery log; duplicate event ids merge their sink lists."""
    result = ReadResult()
    merged: dict[str, tuple[AuthEvent, dict[str, None]]] = {}
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                sinks = data.get("sinks")
                if not isinstance(sinks, list) or not all(isinstance(s, str) for s in sinks):
                    raise ValueError("sinks must be a list of names")
                event = AuthEvent.from_dict(data.get("event"))  # type: ignore[arg-type]
            except (ValueError, TypeError, UnicodeDecodeError):
                result.skipped.append(number)
                result.rejected.append(raw.rstrip(b"\r\n"))
                continue
            if event.id in merged:
                merged[event.id][1].update(dict.fromkeys(sinks))
            else:
                merged[event.id] = (event, dict.fromkeys(sinks))
    result.entries = [Recovered(e, tuple(s)) for e, s in merged.values()]
    return result


class RecoveryLog:
    """The recovery log at ``path`` (see the module docstring for the protocol).

    Methods do blocking file I/O; the pipeline runs the slow ones in a
    worker thread. A lock serializes them, so spills from the event loop and
    a replay in a thread never interleave.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.replaying = self.path.with_name(self.path.name + ".replaying")
        self.rejected = self.path.with_name(self.path.name + ".rejected")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RecoveryLog({str(self.path)!r})"

    def append(
        self, entries: Iterable[tuple[AuthEvent, Sequence[str]]], *, fsync: bool = True
    ) -> int:
        """Append events (each with the sinks that still need it); how many."""
        lines = [encode_entry(event, sinks) for event, sinks in entries]
        if lines:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                append_lines(self.path, lines, fsync=fsync)
        return len(lines)

    def sync(self) -> None:
        """fsync the log (after appends made with ``fsync=False``)."""
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def pending(self) -> bool:
        """True if either file exists (there may be events to replay)."""
        return self.path.exists() or self.replaying.exists()

    def take(self) -> ReadResult:
        """Move ``path`` into ``path.replaying`` and read everything to replay.

        Logs a WARNING naming the lines skipped because they do not parse.
        """
        with self._lock:
            if self.path.exists():
                if self.replaying.exists():
                    # A crash left a replay unfinished: merge, then drop the source.
                    with open(self.path, "rb") as fh:
                        tail = fh.read().decode("utf-8", errors="replace").splitlines()
                    append_lines(self.replaying, tail, fsync=True)
                    self.path.unlink()
                else:
                    os.replace(self.path, self.replaying)
                _fsync_dir(self.path.parent)
            if not self.replaying.exists():
                return ReadResult()
            result = read_entries(self.replaying)
            if result.rejected:
                lines = [r.decode("utf-8", errors="replace") for r in result.rejected]
                append_lines(self.rejected, lines, fsync=True)
        if result.skipped:
            shown = ", ".join(map(str, result.skipped[:_REPORT_LINES]))
            more = "…" if len(result.skipped) > _REPORT_LINES else ""
            logger.warning(
                "audit recovery log %s: skipped %d line(s) that do not parse (line %s%s), "
                "kept in %s; a torn last line is expected after a crash",
                self.replaying,
                len(result.skipped),
                shown,
                more,
                self.rejected,
            )
        return result

    def commit(self) -> None:
        """Forget the replayed file: everything in it is delivered or re-logged."""
        with self._lock:
            try:
                self.replaying.unlink()
            except FileNotFoundError:
                return
            _fsync_dir(self.replaying.parent)


class RecoverySpill:
    """What the pipeline writes to and reads back from the recovery log.

    ``buffers`` are the sink buffers by sink name (in pipeline order);
    ``log`` is ``None`` without a ``recovery_log`` (every spill is then a
    counted, logged drop). ``metrics`` is called for the current metrics
    (the app binds them after construction).
    """

    def __init__(
        self,
        log: RecoveryLog | None,
        buffers: Mapping[str, SinkBuffer],
        *,
        metrics: Callable[[], AuthnMetrics],
    ) -> None:
        self.log = log
        self.buffers = buffers
        self._metrics = metrics
        #: Events were appended without fsync (overflow): :meth:`sync` is due.
        self.unsynced = False
        #: Events read back by :meth:`replay`.
        self.replayed = 0

    # -- while running ----------------------------------------------------------------------
    def overflow(self, name: str, event: AuthEvent) -> None:
        """Sink ``name``'s buffer is past its hard limit: write ``event`` to the
        log (no fsync; :meth:`sync` after the next batch) instead of memory."""
        buf = self.buffers[name]
        metrics = self._metrics()
        if self.log is None:
            buf.dropped += 1
            metrics.audit_dropped(1)
            logger.error(
                "audit buffer of sink %r is over its hard limit (%d) and there is no "
                "recovery_log: event dropped",
                name,
                buf.hard_limit,
            )
            return
        try:
            self.log.append([(event, (name,))], fsync=False)
        except OSError as exc:
            buf.dropped += 1
            metrics.audit_dropped(1)
            logger.error("audit recovery log unwritable (%s): event dropped", type(exc).__name__)
            return
        buf.recovered += 1
        self.unsynced = True
        metrics.audit_recovered(1)
        if buf.recovered == 1 or buf.recovered % 1000 == 0:
            logger.warning(
                "audit buffer of sink %r is over its hard limit (%d): events go to the "
                "recovery log %s until it drains (%d so far); they are delivered at the "
                "next start",
                name,
                buf.hard_limit,
                self.log.path,
                buf.recovered,
            )

    def sync(self) -> None:
        """fsync what :meth:`overflow` appended, if anything."""
        if self.unsynced and self.log is not None:
            self.unsynced = False
            self.log.sync()

    async def sync_in_thread(self) -> None:
        if self.unsynced and self.log is not None:
            self.unsynced = False
            await asyncio.to_thread(self.log.sync)

    def after_close(self, event: AuthEvent) -> None:
        """An event emitted after ``stop()``: to the log at once, for every sink."""
        metrics = self._metrics()
        if self.log is not None:
            try:
                self.log.append([(event, list(self.buffers))], fsync=True)
            except OSError as exc:
                logger.error("audit recovery log unwritable (%s)", type(exc).__name__)
            else:
                for buf in self.buffers.values():
                    buf.recovered += 1
                metrics.audit_recovered(1)
                logger.warning(
                    "audit event emitted after the pipeline stopped: written to the recovery log"
                )
                return
        for buf in self.buffers.values():
            buf.dropped += 1
        metrics.audit_dropped(1)
        logger.error("audit event emitted after the pipeline stopped and could not be saved")

    # -- start ------------------------------------------------------------------------------
    async def replay(self, fallback: Sequence[str]) -> list[str]:
        """Put the log's events ahead of every buffer (events naming a sink
        that no longer exists go to ``fallback``); the sinks that got some."""
        if self.log is None or not self.log.pending():
            return []
        result = await asyncio.to_thread(self.log.take)
        per_sink: dict[str, list[AuthEvent]] = {name: [] for name in self.buffers}
        unknown: set[str] = set()
        for entry in result.entries:
            targets = [n for n in entry.sinks if n in per_sink]
            missing = [n for n in entry.sinks if n not in per_sink]
            if missing:
                unknown.update(missing)
                targets = list(dict.fromkeys([*targets, *fallback]))
            for name in targets:
                per_sink[name].append(entry.event)
        if unknown:
            logger.warning(
                "audit recovery log names unknown sink(s) %s; their events go to %s",
                sorted(unknown),
                list(fallback),
            )
        woken = [name for name, buf in self.buffers.items() if buf.prepend(per_sink[name])]
        if result.entries:
            logger.info(
                "replaying %d audit event(s) from the recovery log %s",
                len(result.entries),
                self.log.replaying,
            )
        self.replayed += len(result.entries)
        self.replay_done()
        return woken

    def replay_done(self) -> None:
        """Forget the replayed file once no buffer holds a replayed event."""
        if self.log is not None and not any(buf.replaying for buf in self.buffers.values()):
            if self.log.replaying.exists():
                self.log.commit()

    # -- stop -------------------------------------------------------------------------------
    def leftovers(self) -> dict[str, tuple[AuthEvent, list[str]]]:
        """Every undelivered event (in-flight batch first, then the buffer), with
        the sinks that still need it."""
        found: dict[str, tuple[AuthEvent, list[str]]] = {}
        for name, buf in self.buffers.items():
            for event in buf.pending():
                entry = found.get(event.id)
                if entry is None:
                    found[event.id] = (event, [name])
                elif name not in entry[1]:
                    entry[1].append(name)
        return found

    def save_leftovers(self, *, timed_out: bool, drain_timeout: float) -> bool:
        """Write every undelivered event to the log (fsync) and empty the
        buffers; False if there was nothing to save."""
        leftovers = self.leftovers()
        if not leftovers:
            return False
        metrics = self._metrics()
        counts = {name: buf.depth for name, buf in self.buffers.items()}
        if self.log is not None:
            try:
                self.log.append(leftovers.values(), fsync=True)
            except OSError as exc:
                logger.error(
                    "audit recovery log %s unwritable (%s): %d event(s) lost",
                    self.log.path,
                    type(exc).__name__,
                    len(leftovers),
                )
            else:
                for name, buf in self.buffers.items():
                    buf.recovered += counts[name]
                    buf.clear()
                metrics.audit_recovered(len(leftovers))
                logger.warning(
                    "audit drain %s: %d event(s) written to the recovery log %s (per sink: %s)",
                    f"timed out after {drain_timeout:g}s" if timed_out else "incomplete",
                    len(leftovers),
                    self.log.path,
                    ", ".join(f"{n}={c}" for n, c in counts.items() if c),
                )
                self.log.commit()  # the replayed file's remainder is in the log now
                return True
        else:
            logger.error(
                "audit drain timed out: %d event(s) lost (no recovery_log configured)",
                len(leftovers),
            )
        for name, buf in self.buffers.items():
            buf.dropped += counts[name]
            buf.clear()
        metrics.audit_dropped(len(leftovers))
        return True
