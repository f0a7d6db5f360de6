"""Backup, restore and the restore guard: the recovery drill on SQLite, the
guard on PostgreSQL and MySQL, and the documented procedure for servers."""

from __future__ import annotations

import asyncio
import base64
import shutil
import sqlite3
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from authn_app import Env, make_env
from backend_policy import POSTGRES_DSN

from axess.authn.totp import PERIOD, time_step, totp
from axess.cli import main
from axess.stores.base import UserRecord
from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore, SQLStore
from axess.testing.contract import NOW, make_record


async def cli(*args: str) -> int:
    """``axess ARGS`` in-process (``main`` runs its own event loop: off this one)."""
    return await asyncio.to_thread(main, list(args))


def _restore_file(backup: Path, db: Path) -> None:
    """What an operator does with the app stopped: the file back, stale WAL files gone."""
    shutil.copyfile(backup, db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _secret(uri: str) -> bytes:
    b32 = parse_qs(urlsplit(uri).query)["secret"][0]
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


async def _login(env: Env, **factor: str) -> int:
    """Password, then the second factor; the final status code."""
    async with env.client() as c:
        r = await c.post("/login", json={"identifier": "alice", "password": "correct horse"})
        assert r.status_code in (200, 401), r.text
        r = await c.post("/factor", json=factor)
        return r.status_code


async def test_recovery_drill_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, bak = tmp_path / "axess.db", tmp_path / "backup.db"
    store = SQLiteStore(db)
    await store.open()
    env = make_env(store)  # type: ignore[arg-type]
    env.clock.set(time.time())  # the guard reads the real clock
    assert env.auth.users is not None
    uid = await env.add_user("alice")
    secret = _secret(await env.auth.users.enrol_totp(uid))
    codes = await env.auth.users.regenerate_recovery_codes(uid)

    # 1. back up
    assert await cli("backup", f"sqlite:///{db}", str(bak)) == 0
    assert "integrity ok" in capsys.readouterr().out

    # 2. change state: a TOTP code and a recovery code are used
    used_totp = totp(secret, env.clock.time())
    assert await _login(env, totp=used_totp) == 200
    env.clock.advance(PERIOD)
    assert await _login(env, recovery=codes[0]) == 200
    before = await store.get_factors(uid)
    assert before.recovery_codes == len(codes) - 1

    # 3. restore the file (app stopped: the store is closed, WAL files dropped)
    await store.close()
    _restore_file(bak, db)
    restored = sqlite3.connect(db)
    assert restored.execute("SELECT totp_last_step FROM axess_factors").fetchone()[0] is None
    assert restored.execute("SELECT COUNT(*) FROM axess_recovery_codes").fetchone()[0] == len(codes)
    restored.close()

    # 4. the guard, before any traffic
    assert await cli("restore-guard", f"sqlite:///{db}") == 0
    out = capsys.readouterr().out
    assert "TOTP: 1 user(s) raised" in out and f"{len(codes)} revoked" in out

    # 5. consistent, and nothing used before the restore is accepted again
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    await store.open()
    factors = await store.get_factors(uid)
    assert factors.recovery_codes == 0
    assert factors.totp_last_step is not None
    assert factors.totp_last_step >= time_step(time.time()) + 1
    assert factors.password_hash is not None and await store.get_user(uid) is not None
    used_at = env.clock.time() - PERIOD
    env.clock.set(used_at)  # the moment the code was used, as a replay would be
    assert await _login(env, totp=used_totp) == 401
    assert await _login(env, recovery=codes[0]) == 401  # the spent code
    # (codes[1] and the others are revoked too: recovery_codes == 0 above)
    env.clock.advance(20 * 60)  # past the lockout the two refusals triggered
    assert await _login(env, totp=totp(secret, env.clock.time())) == 200
    await store.close()


async def test_guard_for_listed_users_only_and_keep_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "axess.db"
    store = SQLiteStore(db)
    await store.open()
    for uid in ("u1", "u2"):
        await store.create_user(UserRecord(uid, "default", uid, created_at=0.0))
        await store.replace_recovery_codes(
            uid, [f"{uid}a".ljust(64, "0"), f"{uid}b".ljust(64, "0")]
        )
    assert await store.create_session(make_record("s1"))
    await store.close()
    users = tmp_path / "users.txt"
    # An id no user has (a login identifier, a typo): refused, nothing changed.
    users.write_text("u1\ncarol@example.com\n")
    assert await cli("restore-guard", str(db), "--recovery-codes-of", str(users)) == 1
    err = capsys.readouterr().err
    assert "1 user id(s) no user has: 'carol@example.com'" in err and "nothing was changed" in err
    await store.open()
    assert (await store.get_factors("u1")).recovery_codes == 2
    assert await store.load_session(make_record("s1").key, NOW) is not None
    await store.close()
    users.write_text("# from the audit archive\nu1\n")
    assert await cli("restore-guard", str(db), "--recovery-codes-of", str(users)) == 0
    out = capsys.readouterr().out
    assert "2 revoked for the 1 listed user(s)" in out and "sessions: 1 deleted" in out
    await store.open()
    assert (await store.get_factors("u1")).recovery_codes == 0
    assert (await store.get_factors("u2")).recovery_codes == 2
    await store.close()
    assert await cli("restore-guard", str(db), "--keep-recovery-codes", "--keep-sessions") == 0
    assert "0 kept" in capsys.readouterr().out
    # a guard on a schema behind this axess refuses: migrate first
    old = tmp_path / "old.db"
    sqlite3.connect(old).close()
    assert await cli("restore-guard", str(old)) == 1
    assert "axess migrate" in capsys.readouterr().err


def test_backup_verifies_and_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, bak = tmp_path / "a.db", tmp_path / "b.db"
    assert main(["backup", str(db), str(bak)]) == 1  # missing source: never created
    assert "no SQLite database" in capsys.readouterr().err and not db.exists()
    assert main(["migrate", str(db)]) == 0
    assert main(["backup", str(db), str(bak)]) == 0
    assert "schema version" in capsys.readouterr().out
    assert main(["backup", str(db), str(bak)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["backup", str(db), str(bak), "--force"]) == 0
    assert main(["backup", str(db), str(db), "--force"]) == 1
    capsys.readouterr()
    # A target folder that does not exist is named as the problem, not the source.
    assert main(["backup", str(db), str(tmp_path / "missing" / "x.db")]) == 1
    err = capsys.readouterr().err
    assert "cannot write the backup" in err and "is not a directory" in err
    assert "not a readable axess database" not in err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert main(["backup", str(junk), str(tmp_path / "c.db")]) == 1
    assert "not a readable axess database" in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists() and not (tmp_path / "c.db.partial").exists()


@pytest.mark.parametrize("name", ["we#ird", "what?mode=rw", "100%25", "a%b"])
def test_backup_of_a_path_with_uri_characters_leaves_no_stray_file(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``#``, ``?`` and ``%`` are plain characters of a file name, not URI syntax."""
    where = tmp_path / name
    where.mkdir()
    db, bak = where / f"{name}.db", where / f"{name}-backup.db"
    assert main(["migrate", str(db)]) == 0
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE marker (x TEXT)")
    con.execute("INSERT INTO marker VALUES ('t')")
    con.commit()
    con.close()
    before = {p.name for p in where.iterdir()}
    capsys.readouterr()
    assert main(["backup", str(db), str(bak)]) == 0, capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} == {name}  # nothing created beside it
    own = {f"{db.name}-wal", f"{db.name}-shm"}  # the source's, as any reader of a WAL file
    assert {p.name for p in where.iterdir()} - own == before | {bak.name}  # no .partial*
    copy = sqlite3.connect(bak)
    assert copy.execute("SELECT x FROM marker").fetchall() == [("t",)]
    copy.close()


def test_server_backup_prints_the_procedure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup", "postgresql://app:hunter2@db/axess", "out.dump"]) == 0
    out = capsys.readouterr().out
    assert "pg_dump" in out and "--table=axess_factors" in out and "hunter2" not in out
    assert "axess restore-guard" in out and "axess_sessions" in out
    assert main(["backup", "mysql://root:pw@db/axess", "out.sql"]) == 0
    out = capsys.readouterr().out
    assert "mysqldump --single-transaction" in out and "axess_recovery_codes" in out
    assert main(["backup", "valkeys://:pw@cache:6379/0", "x"]) == 0
    assert "nothing to back up" in capsys.readouterr().out
    assert not Path("out.dump").exists()


async def _guard_on(store: SQLStore, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await store.create_user(UserRecord("u", "default", "u", created_at=0.0))
    await store.set_totp_secret("u", b"sealed")
    assert await store.totp_accept_step("u", 5)
    await store.replace_recovery_codes("u", ["a" * 64])
    assert await store.create_session(make_record("s"))
    started = time.time()
    assert await cli("restore-guard", url) == 0
    assert "TOTP: 1 user(s) raised" in capsys.readouterr().out
    factors = await store.get_factors("u")
    assert factors.totp_secret == b"sealed" and factors.recovery_codes == 0
    assert time_step(started) + 1 <= (factors.totp_last_step or 0) <= time_step(time.time()) + 1
    assert not await store.totp_accept_step("u", time_step(time.time()))
    assert await store.load_session(make_record("s").key, time.time()) is None


async def test_guard_on_postgres(
    postgres_store: PostgresStore, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{POSTGRES_DSN}{'&' if '?' in POSTGRES_DSN else '?'}search_path={quote(pg_schema)}"
    await _guard_on(postgres_store, url, capsys)


async def test_guard_on_mysql(
    mysql_store: MySQLStore, mysql_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await _guard_on(mysql_store, mysql_dsn, capsys)
