"""``axess user``: an operator looks at one account and acts on it from a
shell, through the app's own ``Axess`` object, on every SQL dialect; the
audit events of each action land in the app's audit sinks."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from backend_policy import POSTGRES_DSN

from axess.audit.events import AuditQuery
from axess.authn.lockout import Lockout, lockout_keys
from axess.cli import main
from axess.stores.base import ACTIVE, DEFAULT_TENANT, UserRecord
from axess.testing.contract import make_record

IP = "203.0.113.7"

APP = """
from axess import Axess, Keyring
from axess.audit import AuditPipeline, StoreSink
{imports}

store = {store}


class Refusing:
    name = "siem"
    regulatory = False

    async def write(self, events):
        raise ConnectionError("siem unreachable")


sinks = [StoreSink(store)] + ([Refusing()] if {refusing} else [])
auth = Axess(
    store=store,
    keys=Keyring.generate(),
    debug=True,
    cleanup_interval=None,
    audit=AuditPipeline(sinks=sinks, recovery_log={log!r}),
)
"""


@pytest.fixture(params=("sqlite", "postgres", "mysql"))
def backend(request: pytest.FixtureRequest) -> tuple[Any, str, str]:
    """An opened SQL store, and how an app module builds one on the same
    database: (store, import line, constructor)."""
    name = request.param
    store = request.getfixturevalue(f"{name}_store")
    if name == "sqlite":
        path = str(request.getfixturevalue("sqlite_path"))
        return store, "from axess.stores.sql import SQLiteStore", f"SQLiteStore({path!r})"
    if name == "postgres":
        schema = request.getfixturevalue("pg_schema")
        built = f"PostgresStore({POSTGRES_DSN!r}, schema={schema!r})"
        return store, "from axess.stores.sql import PostgresStore", built
    dsn = request.getfixturevalue("mysql_dsn")
    return store, "from axess.stores.sql import MySQLStore", f"MySQLStore({dsn!r})"


def _app(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: tuple[Any, str, str],
    *,
    refusing: bool = False,
) -> str:
    """A module holding an Axess object on the backend's database; returns
    its ``module:auth`` spec."""
    _, imports, built = backend
    module = f"usercmd_{secrets.token_hex(4)}"
    log = str(tmp_path / "recovery.jsonl")
    (tmp_path / f"{module}.py").write_text(
        APP.format(imports=imports, store=built, refusing=refusing, log=log)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:auth"


@pytest.fixture
def sqlite_backend(request: pytest.FixtureRequest) -> tuple[Any, str, str]:
    store = request.getfixturevalue("sqlite_store")
    path = str(request.getfixturevalue("sqlite_path"))
    return store, "from axess.stores.sql import SQLiteStore", f"SQLiteStore({path!r})"


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def _alice(store: Any) -> str:
    assert await store.create_user(UserRecord("u-alice", DEFAULT_TENANT, "alice", created_at=1.0))
    await store.set_password_hash("u-alice", "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA")
    now = time.time()
    for label in ("a", "b"):
        assert await store.create_session(make_record(label, user="u-alice", created=now))
    return "u-alice"


async def test_show_unlock_suspend_activate_logout(
    backend: tuple[Any, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sql_store = backend[0]
    spec = _app(tmp_path, monkeypatch, backend)
    uid = await _alice(sql_store)
    lockout = Lockout(sql_store)
    keys = lockout_keys(DEFAULT_TENANT, "alice", IP)
    for _ in range(5):
        await lockout.record_failure(keys)

    assert await cli("user", "show", spec, "Alice", "--ip", IP) == 0
    out = capsys.readouterr().out
    assert "user        u-alice (tenant default, identifier alice)" in out
    assert "status      active" in out and "password    set" in out
    assert "totp        off, 0 recovery code(s) left" in out
    assert "lockout     LOCKED until" in out
    assert f"ip {IP}" in out and "5 failure(s)" in out
    assert "sessions    2 live" in out

    assert await cli("user", "unlock", spec, "alice", "--ip", IP, "--actor", "ops:kim") == 0
    assert "cleared 3 counter(s) of alice" in capsys.readouterr().out
    now = time.time()
    for key in (keys.user, keys.ip, keys.tenant):
        assert await sql_store.lockout_state(key, now) is None

    assert await cli("user", "suspend", spec, "alice", "--actor", "ops:kim") == 0
    assert "suspended alice; ended 2 session(s)" in capsys.readouterr().out
    user = await sql_store.get_user(uid)
    assert user is not None and user.status != ACTIVE
    assert await sql_store.list_user_sessions(uid, time.time()) == []

    assert await cli("user", "activate", spec, "alice", "--actor", "ops:kim") == 0
    user = await sql_store.get_user(uid)
    assert user is not None and user.status == ACTIVE

    await sql_store.create_session(make_record("c", user=uid, created=time.time()))
    # The same user id in another tenant is another account: left alone.
    other = make_record("d", user=uid, tenant="acme", created=time.time())
    await sql_store.create_session(other)
    assert await cli("user", "show", spec, "alice") == 0
    assert "sessions    1 live" in capsys.readouterr().out
    assert await cli("user", "logout", spec, "alice") == 0
    assert "ended 1 session(s) of alice" in capsys.readouterr().out
    left = await sql_store.list_user_sessions(uid, time.time())
    assert [r.key for r in left] == [other.key]

    events = await sql_store.query_audit_events(DEFAULT_TENANT, AuditQuery())
    by_type = {e.type: e for e in events}
    assert {"lockout_cleared", "account_suspended", "account_activated"} <= set(by_type)
    assert all(by_type[t].actor == "ops:kim" for t in ("lockout_cleared", "account_suspended"))
    assert by_type["account_suspended"].user == uid


async def test_an_address_alone_is_unlocked_and_audited(
    sqlite_backend: tuple[Any, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sqlite_store = sqlite_backend[0]
    spec = _app(tmp_path, monkeypatch, sqlite_backend)
    keys = lockout_keys(DEFAULT_TENANT, "someone", IP)
    await Lockout(sqlite_store).record_failure(keys)
    assert await cli("user", "unlock", spec, "--ip", IP, "--actor", "ops:kim") == 0
    assert f"cleared 1 counter(s) of {IP}" in capsys.readouterr().out
    assert await sqlite_store.lockout_state(keys.ip, time.time()) is None
    assert await sqlite_store.lockout_state(keys.user, time.time()) is not None  # untouched
    (event,) = await sqlite_store.query_audit_events(DEFAULT_TENANT, AuditQuery())
    assert (event.type, event.ip, event.actor) == ("lockout_cleared", IP, "ops:kim")


async def test_bad_requests_are_one_line_errors(
    sqlite_backend: tuple[Any, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sqlite_store = sqlite_backend[0]
    spec = _app(tmp_path, monkeypatch, sqlite_backend)
    await _alice(sqlite_store)
    cases = [
        (("user", "show", spec, "nobody"), "no user 'nobody'"),
        (("user", "show", spec, "alice", "--tenant", "acme"), "no user 'alice' in tenant 'acme'"),
        (("user", "show", "nomodule_here:auth", "alice"), "cannot import nomodule_here"),
    ]
    for args, message in cases:
        assert await cli(*args) == 1, args
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err, args
    usage = [
        (("user", "suspend", spec), "suspend needs an IDENTIFIER"),
        (("user", "unlock", spec, "alice", "--ip", "not-an-ip"), "not an IP address"),
        (("user", "show", spec, "   "), "not a login identifier"),
        (("user", "show", "no_attribute", "alice"), "not MODULE:ATTR"),
    ]
    for args, message in usage:  # usage errors: exit status 2, nothing imported
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        assert exc.value.code == 2, args
        assert message in capsys.readouterr().err, args
    user = await sqlite_store.get_user("u-alice")
    assert user is not None and user.status == ACTIVE  # nothing was done
    with pytest.raises(SystemExit) as exc:
        main(["user", "frobnicate", spec, "alice"])
    assert exc.value.code == 2


async def test_a_memory_store_app_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "usercmd_memory.py").write_text(
        "from axess import Axess, Keyring\nfrom axess.stores import MemoryStore\n"
        "auth = Axess(store=MemoryStore(), keys=Keyring.generate(), debug=True,"
        " cleanup_interval=None)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert await cli("user", "show", "usercmd_memory:auth", "alice") == 1
    assert "in memory, inside its own process" in capsys.readouterr().err


async def test_a_refusing_audit_sink_prints_the_events_to_keep(
    sqlite_backend: tuple[Any, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The action is done; the sink that refused gets nothing, so the
    command exits 1 and prints its events, whole, for the operator to keep.
    The sinks that took them still have them."""
    sqlite_store = sqlite_backend[0]
    spec = _app(tmp_path, monkeypatch, sqlite_backend, refusing=True)
    uid = await _alice(sqlite_store)
    assert await cli("user", "suspend", spec, "alice", "--actor", "ops:kim") == 1
    captured = capsys.readouterr()
    assert "suspended alice" in captured.out
    assert "audit sink 'siem' refused the event(s): ConnectionError: siem unreachable" in (
        captured.err
    )
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("{")]
    kept = [json.loads(ln) for ln in lines]
    assert sorted(e["type"] for e in kept) == ["account_suspended", "session_invalidated"]
    suspended = next(e for e in kept if e["type"] == "account_suspended")
    assert suspended["user"] == uid and suspended["actor"] == "ops:kim"
    stored = await sqlite_store.query_audit_events(DEFAULT_TENANT, AuditQuery())
    stored += await sqlite_store.query_audit_events(None, AuditQuery())
    assert sorted(e.id for e in stored) == sorted(e["id"] for e in kept)
