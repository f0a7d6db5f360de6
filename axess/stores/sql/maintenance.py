"""Operator tasks on an SQL store, run by the ``axess`` command (book: Operations).

* :func:`reseal_batch`: one batch of the envelope-key rotation — rows read in
  key order after a given key, every row not sealed under the active key
  re-sealed, all in one transaction. Each update is a compare-and-set on the
  old bytes, so a row the app rewrote meanwhile is left alone (the app wrote
  it under the active key already).
* :func:`restore_guard`: after a restore, make replayed second factors
  useless: every TOTP last-accepted step is raised to the current step plus
  the verification window, recovery codes are revoked (all, or those of the
  users named), and the restored sessions are deleted.
* :func:`sqlite_backup`: an online copy of a SQLite file (the ``sqlite3``
  backup API), verified before it replaces the target.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote

from axess.errors import EnvelopeError
from axess.stores.base import FACTORS, SESSIONS, BatchResult
from axess.stores.sql.engine import Connection, SQLStore
from axess.stores.sql.params import ms, placeholders

logger = logging.getLogger(__name__)

Target = Literal["sessions", "totp"]
#: table, key column, sealed column, extra condition of the rows to examine
_TARGETS: Final[dict[str, tuple[str, str, str, str]]] = {
    "sessions": ("axess_sessions", "skey", "payload", "expires_at > ?"),
    "totp": ("axess_factors", "user_id", "totp_secret", "totp_secret IS NOT NULL"),
}
#: Ids per statement when revoking the recovery codes of listed users.
_CHUNK: Final = 500


async def reseal_batch(
    store: SQLStore,
    target: Target,
    after: str,
    limit: int,
    now: float,
    reseal: Callable[[str, bytes], bytes | None],
    *,
    dry_run: bool = False,
) -> BatchResult:
    """Examine up to ``limit`` rows of ``target`` whose key sorts after ``after``.

    ``reseal(key, sealed)`` returns the bytes re-sealed under the active key,
    ``None`` when ``sealed`` is current already, or raises
    :class:`~axess.errors.EnvelopeError` when no configured key opens it
    (the row is counted ``unreadable`` and left alone). Sessions already
    expired at ``now`` are skipped (the purge deletes them).
    """
    table, key_col, col, cond = _TARGETS[target]
    d = store._dialect
    select = placeholders(
        f"SELECT {key_col}, {col} FROM {table} WHERE {key_col} > ? AND {cond} "  # noqa: S608
        f"ORDER BY {key_col} LIMIT ?",
        d.paramstyle,
    )
    update = placeholders(
        f"UPDATE {table} SET {col} = ? WHERE {key_col} = ? AND {col} = ?",  # noqa: S608
        d.paramstyle,
    )
    args: tuple[object, ...] = (after, ms(now), limit) if target == "sessions" else (after, limit)
    substore = SESSIONS if target == "sessions" else FACTORS

    async def steps(conn: Connection) -> BatchResult:
        result = BatchResult()
        for key, raw in (await conn.run(select, args, fetch=True)).rows:
            key, old = str(key), bytes(raw)
            result.last_key = key
            result.examined += 1
            try:
                new = reseal(key, old)
            except EnvelopeError:
                result.unreadable += 1
                continue
            if new is None:
                result.current += 1
            elif dry_run:
                result.resealed += 1
            elif (await conn.run(update, (new, key, old))).rowcount == 1:
                result.resealed += 1
            else:
                result.raced += 1
        return result

    async def body(conn: Connection) -> BatchResult:
        if dry_run:
            return await steps(conn)
        return await store._transaction(conn, d.begin, lambda: steps(conn))

    return await store._op(f"rotate-envelope ({target})", body, substore=substore, log=False)


@dataclass(slots=True)
class GuardResult:
    totp_step: int
    totp_raised: int
    recovery_codes_revoked: int
    sessions_deleted: int


async def restore_guard(
    store: SQLStore,
    totp_step: int,
    *,
    recovery_users: Collection[str] | None = None,
    revoke_recovery_codes: bool = True,
    delete_sessions: bool = True,
) -> GuardResult:
    """After a restore, in one transaction (book: Operations, backup and restore):

    * every TOTP ``totp_last_step`` below ``totp_step`` (the caller passes
      the current step plus the verification window) is raised to it, so no
      code valid up to now — in particular one used before the
      restore — is accepted again (TOTP works again one window later);
    * recovery codes are revoked: all of them, or only those of
      ``recovery_users`` (users known from the audit archive to have used one
      after the backup); a used code is a deleted row, so the restored table
      cannot tell which codes were spent;
    * the restored sessions are deleted (a session revoked after the backup
      would otherwise come back).
    """
    d = store._dialect
    step = totp_step
    raise_steps = placeholders(
        "UPDATE axess_factors SET totp_last_step = ? WHERE totp_secret IS NOT NULL "
        "AND (totp_last_step IS NULL OR totp_last_step < ?)",
        d.paramstyle,
    )
    users = sorted(set(recovery_users)) if recovery_users is not None else None
    chunks: Sequence[Sequence[str]] = (
        [users[i : i + _CHUNK] for i in range(0, len(users), _CHUNK)] if users else []
    )

    async def steps(conn: Connection) -> GuardResult:
        raised = (await conn.run(raise_steps, (step, step))).rowcount
        revoked = 0
        if revoke_recovery_codes and users is None:
            revoked = (await conn.run("DELETE FROM axess_recovery_codes")).rowcount
        elif revoke_recovery_codes:
            for chunk in chunks:
                marks = ", ".join("?" * len(chunk))
                sql = placeholders(
                    f"DELETE FROM axess_recovery_codes WHERE user_id IN ({marks})",  # noqa: S608
                    d.paramstyle,
                )
                revoked += (await conn.run(sql, chunk)).rowcount
        deleted = 0
        if delete_sessions:
            deleted = (await conn.run("DELETE FROM axess_sessions")).rowcount
        return GuardResult(step, raised, revoked, deleted)

    async def body(conn: Connection) -> GuardResult:
        return await store._transaction(conn, d.begin, lambda: steps(conn))

    return await store._op("restore-guard", body, substore=FACTORS, log=False)


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: str
    bytes: int
    schema_version: int


def sqlite_backup(source: str, target: str, *, pages: int = 1024) -> BackupResult:
    """Copy the SQLite database ``source`` to ``target`` while it is in use.

    Uses the ``sqlite3`` online backup API (``pages`` per step, so writers
    are not blocked for the whole copy), writes to ``target + ".partial"``,
    verifies the copy (``PRAGMA integrity_check``, the axess schema version)
    and only then renames it over ``target``. Raises :class:`FileNotFoundError`
    for a missing source (never creates one) and :class:`ValueError` when
    the copy does not verify.
    """
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no SQLite database at {source}")
    partial = target + ".partial"
    if os.path.exists(partial):
        os.remove(partial)
    try:
        src = sqlite3.connect(_read_only_uri(source), uri=True)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst, pages=pages)
                # The copy inherits the source's WAL mode, and a read-only
                # open of a WAL file (the verification below) leaves -wal and
                # -shm files beside it that the rename would strand. A
                # rollback-journal copy is one self-contained file; the store
                # switches a restored file back to WAL when it opens it.
                dst.execute("PRAGMA journal_mode = DELETE")
            finally:
                dst.close()
        finally:
            src.close()
        version = verify_sqlite(partial)
    except sqlite3.DatabaseError as exc:
        _remove(partial)
        raise ValueError(f"not a readable axess database: {exc}") from None
    except BaseException:
        _remove(partial)
        raise
    os.replace(partial, target)
    return BackupResult(target, os.path.getsize(target), version)


def _read_only_uri(path: str) -> str:
    """A ``file:`` URI opening ``path`` read-only. The path is percent-quoted:
    a ``#``, ``?`` or ``%`` in it would otherwise end the path or start the
    query, and SQLite would open (and create) another file."""
    return f"file:{quote(path)}?mode=ro"


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def verify_sqlite(path: str) -> int:
    """The axess schema version of the SQLite file at ``path``, after
    ``PRAGMA integrity_check``. Raises :class:`ValueError` if it is damaged
    or not an axess database."""
    con = sqlite3.connect(_read_only_uri(path), uri=True)
    try:
        try:
            check = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
            if check != ["ok"]:
                raise ValueError(f"integrity check failed: {'; '.join(check[:3])}")
            rows = con.execute("SELECT MAX(version) FROM axess_schema_version").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"not a readable axess database: {exc}") from None
    finally:
        con.close()
    return int(rows[0][0] or 0)
