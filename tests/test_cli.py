from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from backend_policy import POSTGRES_DSN

import axess.cli
from axess import Keyring
from axess.authn.totp import TOTPSecretSealer
from axess.cli import keygen, main, parse_duration
from axess.keys import ENV_VARS, Key
from axess.session.envelope import SessionCrypto
from axess.stores.base import UserRecord
from axess.stores.sql import PostgresStore, SQLiteStore, maintenance
from axess.testing.contract import make_record


def test_keygen_output_loads_with_from_env() -> None:
    out = io.StringIO()
    keygen(out)
    env = dict(
        line.split("=", 1)
        for line in out.getvalue().splitlines()
        if "=" in line and not line.startswith("#")
    )
    ring = Keyring.from_env(env)
    assert not ring.ephemeral
    out2 = io.StringIO()
    keygen(out2)
    assert out2.getvalue() != out.getvalue()


def test_migrate_twice_and_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "a.db")
    assert main(["migrate", "--store", db]) == 0
    assert "from version 0 to" in capsys.readouterr().out
    assert main(["migrate", "--store", f"sqlite:///{db}"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["purge", "--store", db, "--only", "sessions"]) == 0
    assert "sessions: 0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["purge", "--store", db, "--only", "bogus"])
    assert exc.value.code == 2
    assert "unknown purge target" in capsys.readouterr().err


def test_bad_store_url_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--store", "ftp://user:hunter2@host/x"]) == 1
    err = capsys.readouterr().err
    assert "unsupported store URL" in err and "hunter2" not in err


def test_console_script_runs() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "axess.cli", "keygen"], capture_output=True, text=True, check=True
    )
    assert "AXESS_SIGNING_KEYS=" in r.stdout


# -- purge ----------------------------------------------------------------------------
def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "10m", "1h", "500ms", "0")] == [
        90.0,
        90.0,
        600.0,
        3600.0,
        0.5,
        0.0,
    ]
    for bad in ("", "10x", "-5", "m"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_purge_missing_sqlite_file_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "missing.db"
    assert main(["purge", f"sqlite:///{db}"]) == 1
    err = capsys.readouterr().err
    assert "no SQLite database" in err and "axess migrate" in err
    assert not db.exists()


def test_purge_only_aliases_and_timeouts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "a.db")
    assert main(["migrate", db]) == 0
    capsys.readouterr()
    assert main(["purge", db, "--only", "sessions,lockouts,audit", "--timeout", "0"]) == 0
    out = capsys.readouterr().out
    assert "lockout: 0" in out and "sessions: 0" in out and "audit: 0" in out
    assert main(["purge", "--store", db, "--timeout", "90s"]) == 0
    assert "identity: 0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["purge", db, "--timeout", "10x"])
    assert exc.value.code == 2
    assert "invalid duration" in capsys.readouterr().err


def test_purge_deadline_reports_what_was_not_purged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "a.db")
    assert main(["migrate", db]) == 0
    ticks = itertools.count(0, 400)  # each look at the clock: 400 s later
    monkeypatch.setattr(axess.cli, "_monotonic", lambda: float(next(ticks)))
    assert main(["purge", db]) == 1
    captured = capsys.readouterr()
    assert "audit: 0" in captured.out
    lines = captured.err.strip().splitlines()
    assert "timed out after 10m" in lines[0] and "not purged: factors, identity" in lines[0]


def test_purge_continues_past_a_failing_target_and_prints_each_error_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "a.db"
    assert main(["migrate", str(db)]) == 0
    con = sqlite3.connect(db)
    con.execute("DROP TABLE axess_audit_events")
    con.close()
    capsys.readouterr()
    assert main(["purge", str(db)]) == 1
    captured = capsys.readouterr()
    assert "sessions: 0" in captured.out and "lockout: 0" in captured.out  # after audit
    assert captured.err.count("no such table") == 1
    assert captured.err.splitlines()[-1] == "axess purge: failed for audit"


def test_help_lists_store_urls(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--help"],
        ["purge", "--help"],
        ["migrate", "--help"],
        ["backup", "--help"],
        ["restore-guard", "--help"],
        ["rotate-envelope", "--help"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        for text in ("sqlite:///", "postgresql://", "mysql://", "valkeys://", "AXESS_STORE_URL"):
            assert text in out, (argv, text)
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_a_store_error_is_printed_once_without_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://axess:hunter2@127.0.0.1:1/nowhere"
    assert main(["migrate", url]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "hunter2" not in err
    assert err.startswith("axess migrate: postgres store:")


# -- check ----------------------------------------------------------------------------
WEAK_APP = """
from axess import Axess, Keyring, SessionConfig
from axess.stores import MemoryStore

auth = Axess(store=MemoryStore(), keys=Keyring.generate(), debug=True,
             session=SessionConfig(secure=False), cleanup_interval=None)
"""

GOOD_APP = """
import os
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.responses import PlainTextResponse

from axess import AuditPipeline, Axess, Keyring, TrustedProxies
from axess.audit import StoreSink
from axess.observability.prometheus import PrometheusMetrics
from axess.ratelimit import auth_rules
from axess.stores.sql import SQLiteStore

store = SQLiteStore(os.environ["CHECK_DB"], auto_migrate=False)
auth = Axess(
    store=store,
    keys=Keyring.from_env(),
    trusted_proxies=TrustedProxies(["10.0.0.0/8"]),
    rate_limits=auth_rules(login_paths=["/login"]),
    audit=AuditPipeline(sinks=[StoreSink(store)], recovery_log=os.environ["CHECK_LOG"]),
    metrics=PrometheusMetrics(),
)

async def login(request):
    return PlainTextResponse("")

app = Starlette(routes=[Route("/login", login, methods=["POST"]),
                        Route("/healthz", auth.healthz)])
"""


def _keys_env(monkeypatch: pytest.MonkeyPatch, ring: Keyring | None = None) -> Keyring:
    ring = ring or Keyring.from_env(_generated())
    for line in ring.env_lines():
        name, value = line.split("=", 1)
        monkeypatch.setenv(name, value)
    return ring


def _generated() -> dict[str, str]:
    out = io.StringIO()
    keygen(out)
    return dict(
        line.split("=", 1) for line in out.getvalue().splitlines() if line and line[0] != "#"
    )


def test_check_fails_a_weak_app(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "weak_app_mod.py").write_text(WEAK_APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "weak_app_mod:auth", "--workers", "4"]) == 1
    out = capsys.readouterr().out
    for name in ("keys", "cookies", "workers", "rate limits", "audit", "metrics"):
        assert any(ln.startswith("FAIL") and f" {name} " in ln for ln in out.splitlines()), name
    assert "WARN  proxies" in out.replace("  ", " ").replace("WARN ", "WARN  ")
    assert main(["check", "weak_app_mod:nothing"]) == 1
    assert "no attribute" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["check", "weak_app_mod"])  # no :attr: a usage error
    assert usage.value.code == 2 and "not MODULE:ATTR" in capsys.readouterr().err


def test_check_passes_a_good_app_and_reads_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("prometheus_client")
    db = tmp_path / "good.db"
    monkeypatch.setenv("CHECK_DB", str(db))
    monkeypatch.setenv("CHECK_LOG", str(tmp_path / "recovery.jsonl"))
    _keys_env(monkeypatch)
    (tmp_path / "good_app_mod.py").write_text(GOOD_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["migrate", str(db)]) == 0
    capsys.readouterr()
    assert main(["check", "good_app_mod:auth"]) == 0
    out = capsys.readouterr().out
    assert "schema current (version" in out and "1 warn, 0 fail" in out
    assert "WARN  workers      MemoryBucketStore" in out  # one worker: fine, but said
    assert main(["check", "good_app_mod:auth", "--strict"]) == 1
    assert main(["check", "good_app_mod:auth", "--workers", "2"]) == 1
    capsys.readouterr()
    # the same app on an unmigrated database fails the schema check
    db.unlink()
    sqlite3.connect(db).close()
    sys.modules.pop("good_app_mod", None)
    assert main(["check", "good_app_mod:auth"]) == 1
    assert "run `axess migrate`" in capsys.readouterr().out


# -- rotate-envelope ----------------------------------------------------------------------
async def _seed(db: Path, old: Keyring, sessions: int, users: int) -> None:
    store = SQLiteStore(db)
    await store.open()
    crypto = SessionCrypto(old)
    sealer = TOTPSecretSealer(old)
    now = time.time()
    for i in range(sessions):
        rec = make_record(f"s{i}", created=now)
        rec = dataclasses.replace(rec, payload=crypto.seal(b"payload-%d" % i, rec.key))
        assert await store.create_session(rec)
    for i in range(users):
        uid = f"user-{i:03d}"
        await store.create_user(UserRecord(uid, "default", uid, created_at=0.0))
        await store.set_totp_secret(uid, sealer.seal(b"secret-%d" % i, uid))
        assert await store.totp_accept_step(uid, 7)
    await store.close()


def _rotated_ring(old: Keyring) -> Keyring:
    return Keyring(
        signing=old.keys("signing"),
        envelope=[Key.generate("e-new"), *old.keys("envelope")],
        fingerprint=old.keys("fingerprint"),
        csrf=old.keys("csrf"),
        device=old.keys("device"),
    )


async def _check_all_current(db: Path, ring: Keyring, sessions: int, users: int) -> None:
    only_new = Keyring(
        signing=ring.keys("signing"),
        envelope=[ring.active("envelope")],
        fingerprint=ring.keys("fingerprint"),
        csrf=ring.keys("csrf"),
        device=ring.keys("device"),
    )
    store = SQLiteStore(db)
    await store.open()
    crypto, sealer = SessionCrypto(only_new), TOTPSecretSealer(only_new)
    now = time.time()
    for i in range(sessions):
        rec = await store.load_session(make_record(f"s{i}", created=now).key, now)
        assert rec is not None and crypto.open(rec.payload, rec.key) == b"payload-%d" % i
    for i in range(users):
        factors = await store.get_factors(f"user-{i:03d}")
        assert factors.totp_last_step == 7  # the replay guard is untouched
        assert factors.totp_secret is not None
        assert sealer.open(factors.totp_secret, f"user-{i:03d}") == b"secret-%d" % i
    await store.close()


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_rotate_envelope_reseals_in_batches_and_reruns_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "r.db"
    old = Keyring.from_env(_generated())
    await _seed(db, old, sessions=7, users=3)
    ring = _keys_env(monkeypatch, _rotated_ring(old))
    assert await cli("rotate-envelope", str(db), "--batch", "3", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "sessions: 7 examined, 7 re-sealed" in out and "totp: 3 examined, 3 re-sealed" in out
    assert await cli("rotate-envelope", str(db), "--batch", "3") == 0
    captured = capsys.readouterr()
    assert "active envelope key: e-new" in captured.out
    assert "sessions: 7 examined, 7 re-sealed, 0 already current, 0 unreadable" in captured.out
    assert "rotate-envelope: sessions:" in captured.err  # progress
    await _check_all_current(db, ring, 7, 3)
    assert await cli("rotate-envelope", str(db), "--only", "sessions") == 0
    out = capsys.readouterr().out
    assert "sessions: 7 examined, 0 re-sealed, 7 already current" in out and "totp" not in out


async def test_rotate_envelope_reports_unreadable_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "u.db"
    lost = Keyring.from_env(_generated())
    await _seed(db, lost, sessions=2, users=0)
    _keys_env(monkeypatch, Keyring.from_env(_generated()))  # the old key is gone
    assert await cli("rotate-envelope", str(db)) == 0
    captured = capsys.readouterr()
    assert "sessions: 2 examined, 0 re-sealed, 0 already current, 2 unreadable" in captured.out
    assert "already logged out" in captured.err
    db2 = tmp_path / "t.db"
    await _seed(db2, lost, sessions=0, users=1)
    assert await cli("rotate-envelope", str(db2)) == 1
    assert "TOTP secret(s) open under no configured" in capsys.readouterr().err


async def test_rotate_envelope_needs_keys_and_sql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    db = tmp_path / "k.db"
    assert await cli("migrate", str(db)) == 0
    assert await cli("rotate-envelope", str(db)) == 1
    assert "AXESS_SIGNING_KEYS is not set" in capsys.readouterr().err
    _keys_env(monkeypatch)
    assert await cli("rotate-envelope", "valkey://cache/0") == 1  # plaintext, no AUTH
    err = capsys.readouterr().err
    assert "pass --allow-insecure to accept it" in err and "allow_insecure" not in err
    with pytest.raises(SystemExit) as exc:
        await cli("rotate-envelope", str(db), "--batch", "0")
    assert exc.value.code == 2


def test_rotate_envelope_stops_after_a_batch_on_sigint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "i.db"
    old = Keyring.from_env(_generated())
    asyncio.run(_seed(db, old, sessions=10, users=0))
    ring = _keys_env(monkeypatch, _rotated_ring(old))
    original = maintenance.reseal_batch

    async def then_interrupt(*args: Any, **kwargs: Any) -> maintenance.BatchResult:
        result = await original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # as if the operator pressed Ctrl-C
        return result

    monkeypatch.setattr(maintenance, "reseal_batch", then_interrupt)
    # in the main thread: only there can the command install its signal handlers
    assert main(["rotate-envelope", str(db), "--batch", "2"]) == 130
    captured = capsys.readouterr()
    assert "interrupted after a complete batch" in captured.err
    done = int(captured.out.split("sessions: ")[1].split(" examined")[0])
    assert 2 <= done < 10 and done % 2 == 0  # whole batches only
    monkeypatch.setattr(maintenance, "reseal_batch", original)
    assert main(["rotate-envelope", str(db), "--batch", "2"]) == 0  # a rerun continues
    out = capsys.readouterr().out
    assert f"{10 - done} re-sealed, {done} already current" in out
    asyncio.run(_check_all_current(db, ring, 10, 0))


async def test_rotate_envelope_on_postgres(
    postgres_store: PostgresStore,
    pg_schema: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = Keyring.from_env(_generated())
    crypto = SessionCrypto(old)
    for i in range(5):
        rec = make_record(f"s{i}", created=time.time())
        rec = dataclasses.replace(rec, payload=crypto.seal(b"p", rec.key))
        assert await postgres_store.create_session(rec)
    ring = _keys_env(monkeypatch, _rotated_ring(old))
    url = f"{POSTGRES_DSN}{'&' if '?' in POSTGRES_DSN else '?'}search_path={quote(pg_schema)}"
    assert await cli("rotate-envelope", url, "--batch", "2") == 0
    assert "sessions: 5 examined, 5 re-sealed" in capsys.readouterr().out
    rec = await postgres_store.load_session(make_record("s0").key, time.time())
    assert rec is not None and SessionCrypto(ring).kid_of(rec.payload) == "e-new"


# -- demo -------------------------------------------------------------------------------
def test_demo_runs_the_demo_app_under_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setenv("AXESS_DEMO_DB", str(tmp_path / "demo.db"))
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["demo", "--port", "8123"]) == 0
    assert seen["port"] == 8123 and seen["host"] == "127.0.0.1"
    assert seen["app"] is sys.modules["examples.demo"].app


async def test_rotate_envelope_on_valkey(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    valkey_target: Any,
    valkey_prefix: str,
) -> None:
    from axess.stores.valkey import ValkeyStore

    old = Keyring.from_env(_generated())
    store = ValkeyStore(valkey_target.url, prefix=valkey_prefix, allow_insecure=True)
    await store.open()
    crypto = SessionCrypto(old)
    now = time.time()
    records = []
    for i in range(7):
        rec = make_record(f"v{i}", created=now)
        rec = dataclasses.replace(rec, payload=crypto.seal(b"payload-%d" % i, rec.key))
        assert await store.create_session(rec)
        records.append(rec)
    ring = _keys_env(monkeypatch, _rotated_ring(old))
    args = ("rotate-envelope", valkey_target.url, "--prefix", valkey_prefix, "--allow-insecure")
    assert await cli(*args, "--batch", "3", "--dry-run") == 0
    assert "sessions: 7 examined, 7 re-sealed" in capsys.readouterr().out
    assert await cli(*args, "--batch", "3") == 0
    out = capsys.readouterr().out
    assert "sessions: 7 examined, 7 re-sealed, 0 already current, 0 unreadable" in out
    assert "totp" not in out  # Valkey holds no second factors
    new = SessionCrypto(ring)
    for i, rec in enumerate(records):
        loaded = await store.load_session(rec.key, time.time())
        assert loaded is not None and not new.needs_reseal(loaded.payload)
        assert new.open(loaded.payload, rec.key) == b"payload-%d" % i
        assert loaded.expires_at == rec.expires_at  # only the payload changed
    assert await cli(*args) == 0
    assert "sessions: 7 examined, 0 re-sealed, 7 already current" in capsys.readouterr().out
    # A session the app saves between the read and the write keeps the app's bytes.
    stale = crypto.seal(b"stale", records[0].key)

    def reseal(key: str, sealed: bytes) -> bytes:
        return new.seal(b"resealed", key)

    await store.save_session(dataclasses.replace(records[0], payload=stale), time.time())
    real_call = store._call

    async def app_saves_first(op: str, *a: Any, **kw: Any) -> Any:
        got = await real_call(op, *a, **kw)
        if a[:1] == ("HGET",):
            fresh = new.seal(b"written by the app", records[0].key)
            await store.save_session(dataclasses.replace(records[0], payload=fresh), time.time())
        return got

    store._call = app_saves_first  # type: ignore[method-assign]
    result = await store.reseal_sessions(0, 1, time.time(), reseal)
    store._call = real_call  # type: ignore[method-assign]
    assert result.raced == 1 and result.resealed == 0
    loaded = await store.load_session(records[0].key, time.time())
    assert loaded is not None and new.open(loaded.payload, records[0].key) == b"written by the app"
    await store.close()


def test_check_reads_every_backend_of_a_composite_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "composite_app_mod.py").write_text(
        "from axess import Axess, Keyring\n"
        "from axess.stores import CompositeStore, MemoryStore\n"
        "auth = Axess(store=CompositeStore(default=MemoryStore(), sessions=MemoryStore()),\n"
        "             keys=Keyring.generate(), debug=True, cleanup_interval=None)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "composite_app_mod:auth"]) == 1  # generated keys: a failure
    captured = capsys.readouterr()
    assert "FAIL  keys" in captured.out.replace("FAIL ", "FAIL  ").replace("   ", "  ")
    assert "memory" in captured.out.lower() and not captured.err


def test_check_sees_routes_under_a_mount_by_their_full_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A login mounted under /auth is /auth/login to the stack: a rule
    written for /login does not cover it, and check says so."""
    pytest.importorskip("prometheus_client")
    db = tmp_path / "mounted.db"
    monkeypatch.setenv("CHECK_DB", str(db))
    monkeypatch.setenv("CHECK_LOG", str(tmp_path / "recovery.jsonl"))
    _keys_env(monkeypatch)
    mounted = GOOD_APP.replace(
        'app = Starlette(routes=[Route("/login", login, methods=["POST"]),',
        "from starlette.routing import Mount\n"
        'login_route = Route("/login", login, methods=["POST"])\n'
        'app = Starlette(routes=[Mount("/auth", routes=[login_route]),',
    )
    assert mounted != GOOD_APP
    (tmp_path / "mounted_app_mod.py").write_text(mounted)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["migrate", str(db)]) == 0
    capsys.readouterr()
    assert main(["check", "mounted_app_mod:auth"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  rate limits  no rule covers POST /auth/login" in out.replace("   ", "  ")
