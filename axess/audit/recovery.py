"""The audit recovery log: events not delivered yet, safe on disk.

Format: JSONL, one event per line, each line a JSON object
``{"sinks": ["<sink name>", ...], "event": {<AuthEvent.to_dict()>}}`` naming
the sinks that still need the event. Lines are appended with ``fsync``
(events past a hard limit: fsync'd in a thread right after, see
:meth:`RecoverySpill.overflow`);
before appending, a last line left without its newline (a write torn by a
crash) is terminated, so a torn line never swallows the next one. Reading
skips a line that does not parse, with a WARNING, and replays the rest.

Life cycle of the files (book: Audit, "The recovery log"). Nothing is ever
copied from one file into another, so a nearly full disk needs room for
what is written, never for a second copy of the log:

1. A running pipeline appends to ``path`` the events of a sink past its
   hard limit (and every later one of that sink), a stopped one the events
   emitted after ``stop()``.
2. At start, :meth:`RecoveryLog.take` renames ``path`` (and a
   ``path.requeue`` a crash left before its rename) into *replay segments*:
   ``path.replaying`` if there is none yet, else ``path.replaying.<n>``
   after the last one (older segments are what an unfinished replay or a
   requeue left). Replayed in that order, the segments are one file whose
   byte offsets run across them. :meth:`take` counts their events; new
   spills go to a fresh ``path``. Each sink then reads its events a chunk
   at a time (:meth:`RecoveryLog.read`, from its own offset), as it
   delivers them, so memory stays bounded however long the files are.
3. Once every sink read them all and delivered what it read,
   :meth:`RecoveryLog.commit` deletes the segments. If the process stops
   first, :meth:`RecoveryLog.requeue` writes the lines (and sinks) of the
   segments not delivered yet, then the events still buffered, to
   ``path.requeue``, fsyncs it, renames it to a new segment (to ``path``
   if there is no ``path``: no spill came after them) and deletes the old
   segments. A crash before that replays them again at the next start:
   delivery is at least once, and the SQL sink is idempotent. If the
   write fails (a full disk), the partial file is deleted, the segments
   stay whole and only the buffered events are written, alone.

Lines that do not parse are copied to ``path + ".rejected"`` by
:meth:`RecoveryLog.take`, so nothing is silently destroyed (if that copy
fails, they stay in their segment until it is deleted, with an ERROR).

:class:`RecoverySpill` is the pipeline's side of it: events past a buffer's
hard limit, events emitted after ``stop()``, the leftovers of the drain, and
the replay at start, each counted in the sink buffers' ``recovered`` (or
``dropped`` when there is no log or it cannot be written).
"""

from __future__ import annotations

import asyncio
import fcntl
import heapq
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from axess.audit.buffer import SinkBuffer
from axess.audit.events import AuthEvent
from axess.errors import ConfigurationError
from axess.observability.metrics import AuthnMetrics

logger = logging.getLogger(__name__)

#: File mode of files axess creates for audit data (it names users and IPs).
FILE_MODE: Final = 0o600
_REPORT_LINES: Final = 10
_REJECTED_BATCH: Final = 1000


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


#: A sink's chunk from the replayed file: (event, byte offset of its line).
Chunk = list[tuple[AuthEvent, int]]


def parse_line(raw: bytes) -> tuple[AuthEvent, list[str]]:
    """One recovery-log line: the event and the sinks that still need it.
    Raises ValueError (or TypeError, UnicodeDecodeError) if it does not parse."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    sinks = data.get("sinks")
    if not isinstance(sinks, list) or not all(isinstance(s, str) for s in sinks):
        raise ValueError("sinks must be a list of names")
    return AuthEvent.from_dict(data.get("event")), sinks  # type: ignore[arg-type]


_UNPARSEABLE: Final = (ValueError, TypeError, UnicodeDecodeError, RecursionError)


def encode_entry(event: AuthEvent, sinks: Sequence[str]) -> str:
    """One recovery-log line (without the newline)."""
    return json.dumps(
        {"sinks": list(sinks), "event": event.to_dict()},
        separators=(",", ":"),
        ensure_ascii=False,
    )


@dataclass(slots=True)
class Taken:
    """What :meth:`RecoveryLog.take` found in the file to replay."""

    events: int = 0
    #: The sink names its lines use.
    sinks: set[str] = field(default_factory=set)
    #: Lines that do not parse (kept in ``<path>.rejected``), the first few by number.
    skipped: int = 0
    first_skipped: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReadChunk:
    """One sink's next events from the replayed file (:meth:`RecoveryLog.read`)."""

    events: Chunk
    #: Byte offset to read on from.
    offset: int
    #: The file is read to its end.
    end: bool


def _unlink_quietly(path: Path) -> None:
    """Delete ``path`` if it is there (a failed write's partial file)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.error("audit recovery log: could not delete %s (%s)", path, type(exc).__name__)


class RecoveryLog:
    """The recovery log at ``path`` (see the module docstring for the protocol).

    Methods do blocking file I/O; the pipeline runs the slow ones in a
    worker thread. A lock serializes them, so spills from the event loop and
    a replay in a thread never interleave.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        #: The first replay segment (later ones are ``path.replaying.<n>``).
        self.replaying = self.path.with_name(self.path.name + ".replaying")
        self.rejected = self.path.with_name(self.path.name + ".rejected")
        self.lockfile = self.path.with_name(self.path.name + ".lock")
        #: Where :meth:`requeue` writes before renaming it into place.
        self.aside = self.path.with_name(self.path.name + ".requeue")
        self._lock = threading.Lock()
        self._held: int | None = None
        #: The segments :meth:`take` found, oldest first, with their sizes:
        #: the replayed file is their concatenation (offsets run across them).
        self._taken: list[tuple[Path, int]] = []

    def __repr__(self) -> str:
        return f"RecoveryLog({str(self.path)!r})"

    def acquire(self) -> None:
        """Take the exclusive lock on the log (held until :meth:`release`).

        Two pipelines on one file (two instances sharing a volume) would
        each take, requeue and rename the other's files and lose events, so
        a second one is refused with :class:`ConfigurationError`.
        """
        if self._held is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ConfigurationError(
                f"audit recovery log {self.path} is in use by another running audit "
                f"pipeline ({type(exc).__name__} locking {self.lockfile.name}); give each "
                "instance its own recovery_log"
            ) from None
        self._held = fd

    def release(self) -> None:
        """Let go of the lock :meth:`acquire` took (the lock file stays)."""
        fd, self._held = self._held, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

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
        """fsync the log (after appends made with ``fsync=False``).

        The lock is held only to open the file: an fsync in a thread must not
        hold up an append on the event loop (it flushes the inode, whatever
        was appended through which descriptor, also once renamed).
        """
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def segments(self) -> list[Path]:
        """The replay segments on disk, oldest first: ``path.replaying``, then
        ``path.replaying.<n>`` by ``n``."""
        prefix = self.replaying.name + "."
        numbered: list[tuple[int, Path]] = []
        try:
            entries = list(self.path.parent.iterdir())
        except FileNotFoundError:
            return []
        for entry in entries:
            suffix = entry.name[len(prefix) :]
            if entry.name.startswith(prefix) and suffix.isdigit():
                numbered.append((int(suffix), entry))
        first = [self.replaying] if self.replaying.exists() else []
        return first + [entry for _, entry in sorted(numbered)]

    def _next_segment(self) -> Path:
        """A name for a new segment, after every one on disk."""
        existing = self.segments()
        if not existing:
            return self.replaying
        last = existing[-1]
        number = 0 if last == self.replaying else int(last.name.rsplit(".", 1)[1])
        return self.path.with_name(f"{self.replaying.name}.{number + 1}")

    def pending(self) -> bool:
        """True if any of the files exists (there may be events to replay)."""
        return self.path.exists() or self.aside.exists() or bool(self.segments())

    def take(self) -> Taken:
        """Rename ``path`` into a replay segment, after what an unfinished
        replay or requeue left, and check them all: how many events they hold,
        and the sink names they use. Lines that do not parse are copied to
        ``path.rejected`` with a WARNING. Renames only, never copies a file:
        a full disk cannot make the start fail. Reads line by line: memory
        does not grow with the files.
        """
        with self._lock:
            # First a requeue cut short by a crash before its rename: it may
            # hold leftovers found nowhere else, and goes between the older
            # segments (whose lines it may repeat: at least once, each sink's
            # order kept) and ``path``. Then ``path``.
            for source in (self.aside, self.path):
                if source.exists():
                    os.replace(source, self._next_segment())
                    _fsync_dir(self.path.parent)
            self._taken = [(seg, seg.stat().st_size) for seg in self.segments()]
            taken = Taken()
            rejected: list[str] = []
            number = 0
            for segment, _ in self._taken:
                with open(segment, "rb") as fh:
                    for raw in fh:
                        number += 1
                        if not raw.strip():
                            continue
                        try:
                            _, sinks = parse_line(raw)
                        except _UNPARSEABLE:
                            taken.skipped += 1
                            if len(taken.first_skipped) < _REPORT_LINES:
                                taken.first_skipped.append(number)
                            rejected.append(raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))
                            if len(rejected) >= _REJECTED_BATCH:
                                self._reject(rejected)
                            continue
                        taken.events += 1
                        taken.sinks.update(sinks)
            self._reject(rejected)
        if taken.skipped:
            shown = ", ".join(map(str, taken.first_skipped))
            more = "…" if taken.skipped > _REPORT_LINES else ""
            logger.warning(
                "audit recovery log %s: skipped %d line(s) that do not parse (line %s%s), "
                "kept in %s; a torn last line is expected after a crash",
                self.replaying,
                taken.skipped,
                shown,
                more,
                self.rejected,
            )
        return taken

    def _reject(self, lines: list[str]) -> None:
        """Copy unparseable ``lines`` to ``path.rejected`` (and forget them).

        A full disk must not keep the app from starting: the lines stay in
        their segment until it is deleted, so this is logged, not raised.
        """
        if not lines:
            return
        try:
            append_lines(self.rejected, lines, fsync=True)
        except OSError as exc:
            logger.error(
                "audit recovery log: could not copy %d unparseable line(s) to %s (%s)",
                len(lines),
                self.rejected,
                type(exc).__name__,
            )
        lines.clear()

    def _lines(self, offset: int) -> Iterator[tuple[int, bytes]]:
        """The lines of the taken segments from byte ``offset`` of their
        concatenation on, each with its own offset."""
        base = 0
        for segment, size in self._taken:
            if offset < base + size:
                with open(segment, "rb") as fh:
                    fh.seek(max(offset - base, 0))
                    position = base + fh.tell()
                    end = base + size
                    while position < end:
                        raw = fh.readline(end - position)
                        if not raw:
                            break
                        yield position, raw
                        position += len(raw)
            base += size

    def read(self, offset: int, wanted: Callable[[list[str]], bool], limit: int) -> ReadChunk:
        """Up to ``limit`` events of the replayed segments from byte ``offset``
        on whose sink list ``wanted`` accepts (lines that do not parse are
        skipped: :meth:`take` reported them)."""
        chunk: Chunk = []
        with self._lock:
            for start, raw in self._lines(offset):
                if len(chunk) >= limit:
                    return ReadChunk(chunk, start, end=False)
                offset = start + len(raw)
                try:
                    event, sinks = parse_line(raw)
                except _UNPARSEABLE:
                    continue
                if wanted(sinks):
                    chunk.append((event, start))
        return ReadChunk(chunk, offset, end=True)

    def requeue(
        self,
        leftovers: Iterable[tuple[AuthEvent, Sequence[str]]],
        starts: Mapping[str, int] | None = None,
        targets: Callable[[list[str]], list[str]] | None = None,
    ) -> int:
        """Put undelivered events back ahead of what ``path`` holds; how many
        lines of the replayed segments were kept.

        Writes, with ``starts`` (a replay stops unfinished), the lines of the
        replayed segments not delivered yet, then ``leftovers`` (the buffered
        events, each with the sinks that still need it). A line at byte
        offset ``p`` of the replayed segments is kept for each sink ``s`` (of
        ``targets(line sinks)``) with ``p >= starts[s]``.

        It is written aside, fsync'd and renamed to a new segment, replayed
        after the older segments and before ``path`` (spilled events, newer
        than every buffered one of their sink); to ``path`` itself if there
        is none. Then, with ``starts``, the replayed segments go: a crash in
        between replays some events twice, never none. ``path`` is never
        copied, so this needs free space for what it writes only. If the
        write fails (a full disk) the partial file is deleted and the
        OSError raised, the replayed segments kept whole.
        """
        tmp = self.aside
        kept = 0
        lines = [encode_entry(event, sinks) for event, sinks in leftovers]
        with self._lock:
            if starts is None and not lines:
                return 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
                with open(fd, "wb") as out:
                    if starts is not None:
                        kept = self._unfinished(out, starts, targets or list)
                    for line in lines:
                        out.write(line.encode("utf-8") + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
            except OSError:
                _unlink_quietly(tmp)
                raise
            if kept or lines:
                os.replace(tmp, self._next_segment() if self.path.exists() else self.path)
                _fsync_dir(self.path.parent)
            else:
                tmp.unlink()
            if starts is not None:
                self._drop_taken()
        return kept

    def _unfinished(
        self, out: BinaryIO, starts: Mapping[str, int], targets: Callable[[list[str]], list[str]]
    ) -> int:
        """Write the lines of the replayed segments some sink still lacks to ``out``."""
        kept = 0
        for start, raw in self._lines(min(starts.values(), default=0)):
            try:
                event, sinks = parse_line(raw)
            except _UNPARSEABLE:
                continue
            need = [n for n in targets(sinks) if n in starts and start >= starts[n]]
            if need:
                out.write(encode_entry(event, need).encode("utf-8") + b"\n")
                kept += 1
        return kept

    def _drop_taken(self) -> None:
        taken, self._taken = self._taken, []
        for segment, _ in taken:
            try:
                segment.unlink()
            except FileNotFoundError:
                pass
        if taken:
            _fsync_dir(self.path.parent)

    def commit(self) -> None:
        """Forget the replayed segments: everything in them is delivered or re-logged."""
        with self._lock:
            self._drop_taken()


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
        #: The background fsync of spilled events (see :meth:`overflow`).
        self._syncing: asyncio.Task[None] | None = None
        #: Events in the file :meth:`replay` took.
        self.replayed = 0
        # The replay in progress, per sink: byte offset in the replayed file to
        # read on from (absent: no replay), whether it reached the end, and the
        # file offsets of the replayed events it holds (to know, at stop, from
        # where on a sink still needs the file).
        self._cursors: dict[str, int] = {}
        self._ended: set[str] = set()
        self._positions: dict[str, dict[str, int]] = {}
        self._fallback: tuple[str, ...] = ()
        #: The replayed file could not be read: it is kept whole for the next start.
        self._broken = False

    # -- while running ----------------------------------------------------------------------
    def overflow(self, name: str, event: AuthEvent) -> None:
        """Sink ``name``'s buffer is past its hard limit: write ``event`` to the
        log instead of memory, fsync'd in a thread right after (one fsync for
        every event appended meanwhile): an fsync per event on the event loop
        would cost every ``emit()`` milliseconds for as long as the sink
        spills, i.e. until restart (book: Audit, "When a buffer is full")."""
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
        # From now on every event of this sink goes to the log: delivered
        # once the buffer drained, a later one would overtake this one.
        buf.spilling = True
        buf.recovered += 1
        self.unsynced = True
        self._sync_soon()
        metrics.audit_recovered(1)
        if buf.recovered == 1 or buf.recovered % 1000 == 0:
            logger.warning(
                "audit buffer of sink %r is over its hard limit (%d): its events go to the "
                "recovery log %s until the pipeline stops (%d so far), in order, and are "
                "delivered at the next start",
                name,
                buf.hard_limit,
                self.log.path,
                buf.recovered,
            )

    def _sync_soon(self) -> None:
        """Have what :meth:`overflow` appended fsync'd in a thread, unless an
        fsync is under way already (it loops while events keep coming);
        without an event loop (an emit before start), at once."""
        if self._syncing is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.sync()
            return
        self._syncing = loop.create_task(self._sync_loop(), name="axess-audit-recovery-fsync")

    async def _sync_loop(self) -> None:
        try:
            while self.unsynced:
                await self.sync_in_thread()
        except OSError as exc:
            logger.error("audit recovery log: fsync failed (%s)", type(exc).__name__)
        finally:
            self._syncing = None

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
        """Take the log and put its first events ahead of every buffer (events
        naming a sink that no longer exists go to ``fallback``); the sinks
        that got some. The rest is read as the sinks deliver (:meth:`refill`)."""
        if self.log is None or not self.log.pending():
            return []
        taken = await asyncio.to_thread(self.log.take)
        self._fallback = tuple(fallback)
        unknown = taken.sinks - set(self.buffers)
        if unknown:
            logger.warning(
                "audit recovery log names unknown sink(s) %s; their events go to %s",
                sorted(unknown),
                list(fallback),
            )
        if taken.events:
            logger.info(
                "replaying %d audit event(s) from the recovery log %s",
                taken.events,
                self.log.replaying,
            )
        self.replayed += taken.events
        self._cursors = dict.fromkeys(self.buffers, 0)
        woken = [name for name in self.buffers if await self.refill(name)]
        self.replay_done()
        return woken

    def targets(self, sinks: list[str]) -> list[str]:
        """The sinks an event of the log goes to (unknown names: the fallback)."""
        known = [n for n in sinks if n in self.buffers]
        if len(known) == len(sinks):
            return known
        return list(dict.fromkeys([*known, *self._fallback]))

    def wants_refill(self, name: str) -> bool:
        """Sink ``name`` is about to run out of replayed events while the file
        still holds some for it (checked after each of its batches)."""
        return (
            name in self._cursors
            and name not in self._ended
            and self.buffers[name].replay_left < self.buffers[name].batch_size
        )

    async def refill(self, name: str) -> int:
        """Read sink ``name``'s next events from the replayed file and queue
        them after its replayed events still waiting, ahead of new ones; how
        many.

        At most what brings the replayed events waiting to half of
        ``max_buffer``, and at least one batch: memory stays bounded (the
        replayed events count toward the hard limit, not toward a full
        buffer), and a sink never gets a new event before an older one from
        the file.
        """
        offset = self._cursors.get(name)
        if offset is None or name in self._ended or self.log is None:
            return 0
        buf = self.buffers[name]
        # Called with fewer than a batch of replayed events waiting (and none
        # in flight), so this tops them up to at least a full batch.
        limit = max(buf.batch_size, buf.max_buffer // 2) - buf.replay_left

        def wanted(sinks: list[str]) -> bool:
            return name in self.targets(sinks)

        try:
            chunk = await asyncio.to_thread(self.log.read, offset, wanted, limit)
        except OSError as exc:
            self._broken = True
            self._ended.add(name)
            logger.error(
                "audit recovery log %s unreadable (%s): the replay for sink %r stops; the "
                "file is kept and replayed whole at the next start",
                self.log.replaying,
                type(exc).__name__,
                name,
            )
            return 0
        if name not in self._cursors:  # stop() ended the replay meanwhile
            return 0
        self._cursors[name] = chunk.offset
        if chunk.end:
            self._ended.add(name)
        waiting = {e.id for e in buf.replayed_pending()}
        positions = {i: p for i, p in self._positions.get(name, {}).items() if i in waiting}
        for event, position in chunk.events:
            positions.setdefault(event.id, position)  # the first line of a duplicate
        self._positions[name] = positions
        return buf.prepend(event for event, _ in chunk.events)

    def reading(self, name: str) -> bool:
        """Sink ``name`` has not read all of its part of the replayed file yet
        (its buffer may be empty meanwhile, while the next chunk is read)."""
        return name in self._cursors and name not in self._ended

    def replay_done(self) -> None:
        """Forget the replayed file once every sink read all of it and no
        buffer holds a replayed event."""
        if self.log is None or not self._cursors or self._broken:
            return
        if len(self._ended) < len(self._cursors):
            return
        if any(buf.replaying for buf in self.buffers.values()):
            return
        self._end_replay()
        self.log.commit()

    def _end_replay(self) -> None:
        self._cursors.clear()
        self._ended.clear()
        self._positions.clear()

    def _starts(self) -> dict[str, int]:
        """At stop, during a replay: per sink, the offset in the replayed file
        from which on it still needs the file's lines."""
        starts: dict[str, int] = {}
        for name, buf in self.buffers.items():
            first = buf.replayed_pending()[:1]
            starts[name] = self._positions[name][first[0].id] if first else self._cursors[name]
        return starts

    # -- stop -------------------------------------------------------------------------------
    def leftovers(self) -> dict[str, tuple[AuthEvent, list[str]]]:
        """Every undelivered event (in-flight batch first, then the buffer), with
        the sinks that still need it, in an order that keeps every sink's.

        One line per event, so the sinks' sequences are merged: taken one
        sink after the other, an event a fast sink still had (late in its
        sequence) would come before the older ones a slow sink still had.
        """
        found: dict[str, tuple[AuthEvent, list[str]]] = {}
        after: dict[str, list[str]] = {}
        before: dict[str, int] = {}
        for name, buf in self.buffers.items():
            previous: str | None = None
            for event in buf.pending():
                entry = found.get(event.id)
                if entry is None:
                    found[event.id] = (event, [name])
                    after[event.id] = []
                    before[event.id] = 0
                elif name in entry[1]:
                    continue  # twice in one buffer: its first place counts
                else:
                    entry[1].append(name)
                if previous is not None:
                    after[previous].append(event.id)
                    before[event.id] += 1
                previous = event.id
        # Every sink got its events in emission order, so the sequences agree
        # and a topological order exists; ties go by first appearance.
        rank = {key: i for i, key in enumerate(found)}
        ready = [rank[key] for key, n in before.items() if n == 0]
        heapq.heapify(ready)
        keys = list(found)
        ordered: dict[str, tuple[AuthEvent, list[str]]] = {}
        while ready:
            key = keys[heapq.heappop(ready)]
            ordered[key] = found[key]
            for nxt in after[key]:
                before[nxt] -= 1
                if before[nxt] == 0:
                    heapq.heappush(ready, rank[nxt])
        for key, entry in found.items():  # sequences that disagree: keep the rest
            ordered.setdefault(key, entry)
        return ordered

    def save_leftovers(self, *, timed_out: bool, drain_timeout: float) -> bool:
        """Write every undelivered event to the log (fsync) and empty the
        buffers; False if there was nothing to save.

        The buffered events go *ahead of* what the log holds already: events
        past a hard limit (a sink's later events all went there too) and
        events emitted while ``stop()`` waited are newer than them. During an
        unfinished replay, what each sink lacks of the replayed file goes
        ahead of both (see :meth:`RecoveryLog.requeue`).
        """
        log = self.log
        starts: dict[str, int] | None = None
        if self._cursors and not self._broken and log is not None:
            starts = self._starts()
            # The replayed events still buffered are in the replayed file:
            # requeue() keeps them from there (or, if it fails, the whole file
            # is kept for the next start).
            for buf in self.buffers.values():
                buf.recovered += buf.drop_replayed()
        self._end_replay()
        leftovers = self.leftovers()
        if not leftovers and starts is None:
            return False
        metrics = self._metrics()
        counts = {name: buf.depth for name, buf in self.buffers.items()}
        if log is not None:
            saved = False
            if starts is not None:
                try:
                    kept = log.requeue(leftovers.values(), starts, self.targets)
                except OSError as exc:
                    logger.error(
                        "audit recovery log %s: could not requeue the unfinished replay (%s); "
                        "the file is kept and replayed whole at the next start",
                        log.replaying,
                        type(exc).__name__,
                    )
                else:
                    saved = True
                    logger.warning(
                        "audit replay unfinished at stop: %d event(s) of it are back in the "
                        "recovery log %s",
                        kept,
                        log.path,
                    )
            if not saved:
                try:
                    log.requeue(leftovers.values())
                except OSError as exc:
                    logger.error(
                        "audit recovery log %s unwritable (%s): %d event(s) lost",
                        log.path,
                        type(exc).__name__,
                        len(leftovers),
                    )
                else:
                    saved = True
            if saved:
                for buf in self.buffers.values():
                    buf.clear()
                if not leftovers:
                    return True
                for name, buf in self.buffers.items():
                    buf.recovered += counts[name]
                metrics.audit_recovered(len(leftovers))
                logger.warning(
                    "audit drain %s: %d event(s) written to the recovery log %s (per sink: %s)",
                    f"timed out after {drain_timeout:g}s" if timed_out else "incomplete",
                    len(leftovers),
                    log.path,
                    ", ".join(f"{n}={c}" for n, c in counts.items() if c),
                )
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
