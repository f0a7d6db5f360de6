"""The ``axess`` command: keys, schema, cleanup, backups, key rotation and the pre-launch check.

Exit status of every command: 0 done, 1 failed (the reason is printed once,
on stderr), 2 usage error, 130 interrupted (SIGINT/SIGTERM). The book's
Operations chapter documents each command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from axess.authn.totp import WINDOW, time_step
from axess.errors import AxessError, ConfigurationError, StoreError
from axess.keys import PURPOSES, Key, Keyring
from axess.stores.base import LOCKOUT, RoutedStore, purge_targets
from axess.stores.sql.engine import SQLStore, redact_dsn
from axess.user_command import ACTIONS as USER_ACTIONS
from axess.user_command import (
    UserCommandError,
    UserRequest,
    check_request,
    default_actor,
    run_user_command,
)

if TYPE_CHECKING:
    from axess.stores.valkey import ValkeyStore

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

STORE_URLS: Final = """\
store URLs (default: the AXESS_STORE_URL environment variable):
  sqlite:////srv/app/axess.db    SQLite file at an absolute path (4 slashes)
  sqlite:///axess.db             SQLite file relative to the current directory
                                 (a plain path ending in .db, .sqlite or
                                 .sqlite3 works too)
  postgresql://user:pw@host/db   PostgreSQL (also postgres://)
  mysql://user:pw@host/db        MySQL / MariaDB
  valkeys://:pw@host:6379/0      Valkey (valkey://, redis://, rediss://):
                                 sessions, lockout and buckets only, which a
                                 restore may discard; backup and restore-guard
                                 explain, the other commands need SQL
exit status: 0 done, 1 failed, 2 usage error, 130 interrupted"""

_VALKEY_SCHEMES: Final = ("valkey://", "valkeys://", "redis://", "rediss://", "unix://")
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Spellings accepted by ``purge --only`` besides the substore names.
_PURGE_ALIASES: Final = {"lockouts": LOCKOUT, "session": "sessions"}


#: The clock of purge deadlines (a module attribute so tests can move it).
_monotonic: Callable[[], float] = time.monotonic


class CommandError(Exception):
    """A failure the command reports in one line and exits 1 for."""


# -- store URLs ---------------------------------------------------------------
def is_valkey_url(url: str) -> bool:
    return url.startswith(_VALKEY_SCHEMES)


_SQLITE_FORMS: Final = "sqlite:////absolute/path.db or sqlite:///relative/path.db"


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL, as SQLAlchemy reads them: what follows
    ``sqlite:///``, so ``sqlite:///app.db`` is relative to the current
    directory and ``sqlite:////var/lib/app.db`` absolute."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        if path == url or not path:
            raise ValueError(f"{url!r} names no SQLite file: use {_SQLITE_FORMS}")
        return path
    if "://" not in url and url.endswith((".db", ".sqlite", ".sqlite3")):
        return url
    return None


def store_from_url(url: str, *, must_exist: bool = False) -> SQLStore:
    """An SQL store for ``url`` (migrations are never applied implicitly).

    Raises ValueError for an unsupported scheme and FileNotFoundError when
    ``must_exist`` and the SQLite file is missing (it is never created then).
    """
    from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore

    path = _sqlite_path(url)
    if path is not None:
        if must_exist and not os.path.isfile(path):
            raise FileNotFoundError(
                f"no SQLite database at {path} (create it with `axess migrate {url}`)"
            )
        return SQLiteStore(path, auto_migrate=False)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("mysql://"):
        return MySQLStore(url)
    if is_valkey_url(url):
        raise ValueError(
            f"{redact_dsn(url)!r} is a Valkey URL: this command needs an SQL store "
            f"({_SQLITE_FORMS}, postgresql://… or mysql://…)"
        )
    raise ValueError(
        f"unsupported store URL {redact_dsn(url)!r}: use {_SQLITE_FORMS}, postgresql://… "
        "or mysql://…"
    )


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"10m"``, ``"1h"``, ``"1d"``, ``"500ms"``."""
    m = _DURATION.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use seconds or a number with ms, s, m, h or d (e.g. 10m)"
        )
    return float(m[1]) * _UNITS[m[2] or "s"]


def _describe(seconds: float) -> str:
    for unit in ("h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


# -- keygen, migrate, purge ---------------------------------------------------
def keygen(out: TextIO) -> None:
    """Print fresh keys for every purpose as environment lines."""
    stamp = time.strftime("%Y%m%d", time.gmtime())
    keys = {p: [Key.generate(f"{p[0]}{stamp}-{secrets.token_hex(2)}")] for p in PURPOSES}
    ring = Keyring(**keys)  # type: ignore[arg-type]
    out.write("# axess keys generated " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    out.write(
        "# Keep these secret. To rotate, put a new key FIRST and keep the old one after it.\n"
    )
    for line in ring.env_lines():
        out.write(line + "\n")


def _new_sqlite_file(url: str) -> str | None:
    """The absolute path of the SQLite file ``url`` names if it does not exist yet."""
    path = _sqlite_path(url)
    return None if path is None or os.path.exists(path) else os.path.abspath(path)


async def _migrate(url: str, out: TextIO, new_file: str | None = None) -> int:
    store = store_from_url(url)
    try:
        before = await store.schema_version()
        after = await store.migrate()
    finally:
        await store.close()
    if new_file is not None:
        # Named in full: sqlite:///var/… is relative (sqlite:////var/… is
        # absolute), and a new file in the wrong place must not go unnoticed.
        out.write(f"created a new SQLite database at {new_file}\n")
    if after == before:
        out.write(f"schema is up to date (version {after})\n")
    else:
        out.write(f"migrated schema from version {before} to {after}\n")
    return EXIT_OK


def purge_target_names(only: str | None) -> list[str] | None:
    """``--only`` as substore names (``lockouts`` is accepted for ``lockout``),
    ``None`` without ``--only``. Raises ValueError when it names no target or
    an unknown one (checked before the store is opened)."""
    if only is None:
        return None
    names = [t.strip().lower() for t in only.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--only {only!r} names no target")
    targets = list(dict.fromkeys(_PURGE_ALIASES.get(n, n) for n in names))
    purge_targets(targets, SQLStore.substores)
    return targets


async def _purge(url: str, only: list[str] | None, seconds: float, out: TextIO, err: TextIO) -> int:
    """Purge each target in turn; a failing target does not stop the others,
    and the command fails at the end. ``seconds`` (0: none) bounds the whole run."""
    store = store_from_url(url, must_exist=True)
    names = purge_targets(only, dict.fromkeys(store.substores))
    failed: list[str] = []
    deadline = None if seconds <= 0 else _monotonic() + seconds
    try:
        # The deadline covers connecting too: a server that accepts and never
        # answers must not hold a cron job past its --timeout.
        bound = asyncio.timeout(seconds if seconds > 0 else None)
        try:
            async with bound:
                await store.open()
        except TimeoutError:
            if not bound.expired():
                raise
            err.write(
                f"axess purge: timed out after {_describe(seconds)} (--timeout; 0 disables "
                "it) opening the store, nothing purged\n"
            )
            return EXIT_FAILED
        for i, name in enumerate(names):
            left = None if deadline is None else deadline - _monotonic()
            try:
                if left is not None and left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(left):
                    counts = await store.purge_expired(time.time(), only=[name])
            except TimeoutError:
                failed.extend(names[i:])
                err.write(
                    f"axess purge: timed out after {_describe(seconds)} (--timeout; 0 disables "
                    f"it) at {name}, not purged: {', '.join(names[i:])}; rows deleted so far "
                    "stay deleted, a rerun continues\n"
                )
                break
            except (StoreError, OSError) as exc:
                failed.append(name)
                err.write(f"axess purge: {name}: {_cause(exc)}\n")
                continue
            out.write(f"{name}: {counts.get(name, 0)} expired row(s) deleted\n")
    finally:
        await store.close()
    if failed:
        err.write(f"axess purge: failed for {', '.join(failed)}\n")
        return EXIT_FAILED
    return EXIT_OK


def _cause(exc: BaseException) -> str:
    """One line naming the error and, when it adds something, its cause."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError | TimeoutError) and not isinstance(exc, FileNotFoundError):
        text = f"{type(exc).__name__}: {text}"
    cause = exc.__cause__
    # A StoreError's message names its cause already, with secrets scrubbed.
    if cause is not None and not isinstance(exc, StoreError) and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text


# -- backup and restore-guard ---------------------------------------------------
_AXESS_TABLES: Final = {
    "keep": ("axess_schema_version", "axess_tenants", "axess_users", "axess_tenant_peppers"),
    "factors": ("axess_factors", "axess_recovery_codes"),
    "audit": ("axess_audit_events",),
    "discardable": ("axess_sessions", "axess_lockouts"),
}


def backup_procedure(url: str) -> str:
    """The documented backup commands for a server database (nothing is run)."""
    tables = [t for k in ("keep", "factors", "audit") for t in _AXESS_TABLES[k]]
    shown = redact_dsn(url)
    if url.startswith("mysql://"):
        cmd = (
            "mysqldump --single-transaction --quick --no-tablespaces "
            "-h HOST -u USER -p DATABASE " + " ".join(tables) + " > axess-$(date +%F).sql"
        )
        restore = "mysql -h HOST -u USER -p DATABASE < axess-DATE.sql"
    else:
        cmd = (
            f"pg_dump --format=custom --dbname='{shown}' "
            + " ".join(f"--table={t}" for t in tables)
            + " --file=axess-$(date +%F).dump"
        )
        restore = f"pg_restore --clean --if-exists --dbname='{shown}' axess-DATE.dump"
    return (
        f"axess does not back up {url.split('://', 1)[0]} itself; use the database's own tool.\n"
        "Back up (identity, factors, audit; consistent snapshot):\n"
        f"  {cmd}\n"
        "Not needed (a restore may discard them): "
        + ", ".join(_AXESS_TABLES["discardable"])
        + " and Valkey buckets.\n"
        "Restore, then BEFORE the app takes traffic:\n"
        f"  {restore}\n"
        f"  axess migrate {shown}\n"
        f"  axess restore-guard {shown}\n"
        "(book: Operations, backup and restore)\n"
    )


def _backup(url: str, target: str, force: bool, out: TextIO) -> int:
    from axess.stores.sql.maintenance import sqlite_backup

    if is_valkey_url(url):
        out.write(
            "Valkey holds sessions, lockout counters and rate-limit buckets: nothing to back "
            "up (a restore may discard them; users sign in again).\n"
        )
        return EXIT_OK
    path = _sqlite_path(url)
    if path is None:
        store_from_url(url)  # unsupported schemes fail here
        out.write(backup_procedure(url))
        return EXIT_OK
    if os.path.exists(target) and not force:
        raise CommandError(f"{target} exists; pass --force to overwrite it")
    if os.path.abspath(target) == os.path.abspath(path):
        raise CommandError("the backup file must not be the database itself")
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise CommandError(f"cannot write the backup {target}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write the backup {target}: {folder} is not writable")
    started = time.monotonic()
    result = sqlite_backup(path, target)
    out.write(
        f"backed up {path} to {result.path}: {result.bytes} bytes, integrity ok, "
        f"schema version {result.schema_version} ({time.monotonic() - started:.2f}s)\n"
    )
    return EXIT_OK


def _read_users(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        users = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    if not users:
        raise CommandError(f"{path} names no user (one user id per line)")
    return users


async def _restore_guard(
    url: str,
    users_file: str | None,
    keep_codes: bool,
    keep_sessions: bool,
    out: TextIO,
) -> int:
    from axess.stores.sql.maintenance import restore_guard

    if is_valkey_url(url):
        out.write(
            "Valkey holds no second factors: nothing to guard. Flush its sessions "
            "(the axess prefix) if it was restored from a snapshot.\n"
        )
        return EXIT_OK
    users = _read_users(users_file) if users_file else None
    store = store_from_url(url, must_exist=True)
    try:
        await store.open()  # refuses a schema behind this axess: migrate first
        if users is not None:
            # Before anything changes: an id that names nobody (an e-mail
            # address, a typo) would leave that user's spent codes valid.
            unknown = [u for u in users if await store.get_user(u) is None]
            if unknown:
                shown = ", ".join(repr(u) for u in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                raise CommandError(
                    f"{users_file} names {len(unknown)} user id(s) no user has: {shown}{more} "
                    "(one user id per line, as the audit archive records them, not "
                    "login identifiers); nothing was changed"
                )
        result = await restore_guard(
            store,
            time_step(time.time()) + WINDOW,
            recovery_users=users,
            revoke_recovery_codes=not keep_codes,
            delete_sessions=not keep_sessions,
        )
    finally:
        await store.close()
    scope = "kept (--keep-recovery-codes)" if keep_codes else "revoked"
    if users is not None and not keep_codes:
        scope += f" for the {len(users)} listed user(s)"
    out.write(
        f"TOTP: {result.totp_raised} user(s) raised to step {result.totp_step}: codes up to "
        "now are refused, TOTP works again within a minute\n"
        f"recovery codes: {result.recovery_codes_revoked} {scope}\n"
        f"sessions: {result.sessions_deleted} deleted"
        + (" (kept: --keep-sessions)" if keep_sessions else "")
        + "\n"
    )
    if not keep_codes and result.recovery_codes_revoked:
        out.write("users who relied on recovery codes must be issued new ones\n")
    return EXIT_OK


# -- rotate-envelope --------------------------------------------------------------
@dataclass(slots=True)
class RotationCounts:
    examined: int = 0
    resealed: int = 0
    current: int = 0
    unreadable: int = 0
    raced: int = 0

    def line(self) -> str:
        return (
            f"{self.examined} examined, {self.resealed} re-sealed, {self.current} already "
            f"current, {self.unreadable} unreadable, {self.raced} rewritten by the app meanwhile"
        )


@dataclass(slots=True)
class RotationReport:
    active_kid: str
    counts: dict[str, RotationCounts] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def examined(self) -> int:
        return sum(c.examined for c in self.counts.values())

    @property
    def rate(self) -> float:
        return self.examined / self.seconds if self.seconds > 0 else 0.0


ROTATE_TARGETS: Final = ("sessions", "totp")


async def rotate_envelope(
    store: SQLStore | ValkeyStore,
    keys: Keyring,
    *,
    batch: int = 1000,
    dry_run: bool = False,
    targets: Sequence[str] = ROTATE_TARGETS,
    stop: asyncio.Event | None = None,
    progress: Callable[[str, RotationCounts], None] | None = None,
) -> RotationReport:
    """Re-seal every live session payload and every TOTP secret not sealed
    under the active envelope key, ``batch`` rows per transaction, in key
    order (on Valkey: the sessions only, in the order of the expiry index,
    each row written by compare-and-set). Stops after the current batch
    once ``stop`` is set."""
    from axess.authn.totp import TOTPSecretSealer
    from axess.session.envelope import SessionCrypto
    from axess.stores.sql.maintenance import Target, reseal_batch

    crypto = SessionCrypto(keys)
    sealer = TOTPSecretSealer(keys)

    def session(key: str, sealed: bytes) -> bytes | None:
        if not crypto.needs_reseal(sealed):
            return None
        return crypto.seal(crypto.open(sealed, key), key)

    def totp(user: str, sealed: bytes) -> bytes | None:
        if not sealer.needs_reseal(sealed):
            return None
        return sealer.seal(sealer.open(sealed, user), user)

    resealers: dict[str, Callable[[str, bytes], bytes | None]] = {
        "sessions": session,
        "totp": totp,
    }
    report = RotationReport(crypto.active_kid)
    started = time.monotonic()
    now = time.time()
    if not isinstance(store, SQLStore):
        targets = [t for t in targets if t == "sessions"]  # Valkey holds no factors
    try:
        for target in targets:
            counts = report.counts[target] = RotationCounts()
            after = ""
            while not (stop is not None and stop.is_set()):
                name: Target = "sessions" if target == "sessions" else "totp"
                if not isinstance(store, SQLStore):
                    got = await store.reseal_sessions(
                        counts.examined, batch, now, resealers[target], dry_run=dry_run
                    )
                else:
                    got = await reseal_batch(
                        store, name, after, batch, now, resealers[target], dry_run=dry_run
                    )
                for attr in ("examined", "resealed", "current", "unreadable", "raced"):
                    setattr(counts, attr, getattr(counts, attr) + getattr(got, attr))
                if progress is not None:
                    progress(target, counts)
                if got.last_key is None or got.examined < batch:
                    break
                after = got.last_key
            if stop is not None and stop.is_set():
                report.interrupted = True
                break
    finally:
        report.seconds = time.monotonic() - started
    return report


async def _rotate(
    url: str,
    batch: int,
    dry_run: bool,
    targets: Sequence[str],
    out: TextIO,
    err: TextIO,
    *,
    allow_insecure: bool = False,
    prefix: str = "axess:",
) -> int:
    keys = Keyring.from_env()
    if keys.ephemeral:  # pragma: no cover - from_env never is
        raise ConfigurationError("ephemeral keys")
    store: SQLStore | ValkeyStore
    if is_valkey_url(url):
        from axess.stores.valkey import ValkeyStore as _Valkey

        try:
            store = _Valkey(url, prefix=prefix, allow_insecure=allow_insecure)
        except ConfigurationError as exc:
            # The store names its keyword argument; here the switch is a flag.
            text = str(exc).replace("allow_insecure=True", "--allow-insecure")
            raise ConfigurationError(text) from None
    else:
        store = store_from_url(url, must_exist=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    shown = [0.0]

    def progress(target: str, counts: RotationCounts) -> None:
        now = time.monotonic()
        if now - shown[0] >= 1.0:
            shown[0] = now
            rate = counts.examined / max(now - started, 1e-9)
            err.write(f"rotate-envelope: {target}: {counts.line()} ({rate:.0f} rows/s)\n")
            err.flush()

    try:
        await store.open()
        report = await rotate_envelope(
            store, keys, batch=batch, dry_run=dry_run, targets=targets, stop=stop, progress=progress
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await store.close()
    verb = "would re-seal (dry run)" if dry_run else "re-sealed"
    out.write(f"active envelope key: {report.active_kid}; {verb} rows not sealed under it\n")
    for target, counts in report.counts.items():
        out.write(f"{target}: {counts.line()}\n")
    out.write(f"{report.examined} row(s) in {report.seconds:.2f}s ({report.rate:.0f} rows/s)\n")
    if report.interrupted:
        err.write(
            "axess rotate-envelope: interrupted after a complete batch; run it again to "
            "continue (rows re-sealed so far are current and skipped)\n"
        )
        return EXIT_INTERRUPTED
    sessions = report.counts.get("sessions")
    if sessions is not None and sessions.unreadable:
        err.write(
            f"axess rotate-envelope: {sessions.unreadable} session(s) sealed under no configured "
            "key: already logged out, left for `axess purge` once expired\n"
        )
    totp = report.counts.get("totp")
    if totp is not None and totp.unreadable:
        err.write(
            f"axess rotate-envelope: {totp.unreadable} TOTP secret(s) open under no configured "
            "envelope key: put the old key back after the active one and rerun, or re-enrol "
            "those users\n"
        )
        return EXIT_FAILED
    return EXIT_OK


# -- check ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Check:
    status: str  # "pass" | "warn" | "fail"
    name: str
    reason: str


def load_object(spec: str) -> tuple[Any, Any]:
    """``module:attr`` (dotted attr allowed) → (object, module). The current
    directory is importable, as for uvicorn."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"{spec!r} is not 'module:attribute' (e.g. myapp.main:auth)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name}: {exc}") from None
    except (Exception, SystemExit) as exc:
        # The app's own code ran and failed (a syntax error, a missing
        # setting, sys.exit at import): name the module and the error, as
        # for every other failure, without a traceback through the CLI.
        raise CommandError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{module_name} has no attribute {attr!r}") from None
        except Exception as exc:
            raise CommandError(
                f"reading {module_name}:{attr} failed: {type(exc).__name__}: {exc}"
            ) from None
    return obj, module


def _backends(auth: Any) -> list[Any]:
    store = auth.store
    found = list(store.backends) if isinstance(store, RoutedStore) else [store]
    bucket = auth.rate_limiter.store
    inner = getattr(bucket, "store", None)
    for extra in (bucket, inner):
        if extra is not None and all(extra is not b for b in found):
            found.append(extra)
    return found


def _missing_sqlite_file(store: SQLStore) -> str | None:
    """The absolute path of a SQLite store's file when it does not exist."""
    if store.name != "sqlite":
        return None
    path = str(getattr(store._driver, "target", ""))
    if path in ("", ":memory:") or path.startswith("file:") or os.path.exists(path):
        return None
    return os.path.abspath(path)


def _is_memory(obj: Any) -> bool:
    return type(obj).__name__.startswith("Memory") or getattr(obj, "local", False) is True


def _find_app(module: Any) -> Any:
    for name in ("app", "application", "api"):
        app = getattr(module, name, None)
        if app is not None and hasattr(app, "routes"):
            return app
    return None


def _route_endpoints(app: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full path, endpoint) of every route, a ``Mount``'s prefix joined on:
    the stack sees ``/auth/login`` for a ``/login`` mounted under ``/auth``."""
    for route in getattr(app, "routes", ()):
        path = prefix + getattr(route, "path", "")
        yield path, getattr(route, "endpoint", None)
        sub = getattr(route, "app", None)
        if sub is not None and sub is not app and hasattr(sub, "routes"):
            yield from _route_endpoints(sub, path)


async def run_checks(auth: Any, module: Any, workers: int) -> list[Check]:
    """The pre-launch checklist (book: Operations) against an ``Axess`` object."""
    from axess.observability.metrics import NoopMetrics

    checks: list[Check] = []

    def add(status: str, name: str, reason: str) -> None:
        checks.append(Check(status, name, reason))

    if auth.keys.ephemeral:
        add("fail", "keys", "generated (ephemeral) keys: load real ones with Keyring.from_env()")
    elif auth.debug:
        add("fail", "keys", "Axess(debug=True): debug mode must be off in production")
    else:
        add("pass", "keys", f"real keys loaded (envelope key {auth.keys.active('envelope').kid})")

    insecure = []
    if not auth.session_config.secure:
        insecure.append("session cookie (SessionConfig(secure=False))")
    if auth.csrf_config is not None and not auth.csrf_config.secure:
        insecure.append("CSRF cookie (CSRFConfig(secure=False))")
    if auth.csrf_config is None:
        add("fail", "cookies", "CSRF protection is off (csrf=False)")
    elif insecure:
        add("fail", "cookies", "without Secure: " + ", ".join(insecure))
    else:
        add("pass", "cookies", "session and CSRF cookies are Secure")

    proxies = auth.trusted_proxies
    if proxies.networks or proxies.unix:
        nets = [str(n) for n in proxies.networks] + (["unix"] if proxies.unix else [])
        add("pass", "proxies", f"trusted proxies: {', '.join(nets)} ({proxies.header})")
    else:
        add(
            "warn",
            "proxies",
            "no trusted proxies: right only if clients connect directly; behind a proxy "
            "every client shares its address (TrustedProxies)",
        )

    backends = _backends(auth)
    valkeys = [b for b in backends if type(b).__name__ == "ValkeyStore"]
    if not valkeys:
        add("pass", "valkey", "no Valkey backend")
    elif bad := [r for b in valkeys for r in getattr(b, "insecure", ())]:
        add("fail", "valkey", "insecure connection: " + "; ".join(bad))
    else:
        add("pass", "valkey", "TLS and AUTH (or a Unix socket with AUTH)")

    sql = [b for b in backends if isinstance(b, SQLStore)]
    if not sql:
        add("pass", "schema", "no SQL backend")
    for store in sql:
        if (missing := _missing_sqlite_file(store)) is not None:
            # Reading the version would create the file (and the check
            # would then report an empty schema): a check changes nothing.
            add("fail", "schema", f"sqlite: no database at {missing} (run `axess migrate`)")
            continue
        try:
            version = await store.schema_version()
        except StoreError as exc:
            add("fail", "schema", f"{store.name}: unreachable: {_cause(exc)}")
            continue
        finally:
            await store.close()
        known = store.known_schema_version
        if version < known:
            add(
                "fail",
                "schema",
                f"{store.name} at version {version}, needs {known}: run `axess migrate`",
            )
        elif version > known:
            add(
                "fail",
                "schema",
                f"{store.name} at version {version}, newer than this axess "
                f"({known}): upgrade axess",
            )
        else:
            add("pass", "schema", f"{store.name} schema current (version {version})")

    memory = sorted({type(b).__name__ for b in backends if _is_memory(b)})
    if not memory:
        add("pass", "workers", "no per-process store")
    elif workers > 1:
        add(
            "fail",
            "workers",
            f"{', '.join(memory)} with {workers} workers: each worker has its "
            "own state (sessions, lockout, buckets); use SQL or Valkey",
        )
    else:
        add(
            "warn",
            "workers",
            f"{', '.join(memory)}: per-process state, right for one worker "
            "only (--workers / WEB_CONCURRENCY)",
        )

    rules = list(getattr(auth.rate_limiter, "rules", ()))
    app = _find_app(module)
    login_paths = [p for p, _ in _route_endpoints(app) if "login" in p] if app else []
    uncovered = [p for p in login_paths if not any(r.matches("POST", p) for r in rules)]
    if not rules:
        add("fail", "rate limits", "no rate-limit rule (see axess.ratelimit.auth_rules)")
    elif uncovered:
        add("fail", "rate limits", f"no rule covers POST {', '.join(uncovered)}")
    else:
        where = f" covering {', '.join(login_paths)}" if login_paths else ""
        add("pass", "rate limits", f"{len(rules)} rule(s){where}")

    if auth.authn is None:
        add("warn", "lockout", "no login service (the store has no identity substore)")
    else:
        policy = auth.authn.lockout.policy
        weak = []
        if policy.on_store_error == "open":
            weak.append("on_store_error='open'")
        if policy.trust_ip_prefix:
            weak.append("trust_ip_prefix=True")
        if weak:
            add("warn", "lockout", "weakened: " + ", ".join(weak))
        else:
            add("pass", "lockout", "lockout policy active, fails closed")

    if auth.audit is None:
        add("fail", "audit", "no audit pipeline (Axess(audit=AuditPipeline(...)))")
    else:
        add("pass", "audit", "audit pipeline wired")

    if app is None:
        add("warn", "health", f"no app found in {module.__name__} to look for auth.healthz")
    elif any(e == auth.healthz for _, e in _route_endpoints(app)):
        add("pass", "health", "auth.healthz is routed")
    else:
        add(
            "fail", "health", "auth.healthz is not routed (app.add_route('/healthz', auth.healthz))"
        )

    if isinstance(auth.metrics, NoopMetrics):
        add("fail", "metrics", "NoopMetrics: pass metrics= (Prometheus or OpenTelemetry)")
    else:
        add("pass", "metrics", f"{type(auth.metrics).__name__}")

    if auth.cleanup_interval is not None:
        add("pass", "cleanup", f"expired rows purged every {_describe(auth.cleanup_interval)}")
    else:
        add("warn", "cleanup", "cleanup_interval=None: schedule `axess purge` (cron, timer)")
    return checks


async def _check(spec: str, workers: int, strict: bool, out: TextIO) -> int:
    from axess.app import Axess

    auth, module = load_object(spec)
    if not isinstance(auth, Axess):
        raise CommandError(f"{spec} is a {type(auth).__name__}, not an Axess object")
    checks = await run_checks(auth, module, workers)
    width = max(len(c.name) for c in checks)
    for c in checks:
        out.write(f"{c.status.upper():4}  {c.name:{width}}  {c.reason}\n")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    out.write(
        f"{len(checks)} checks: {len(checks) - fails - warns} pass, {warns} warn, {fails} fail\n"
    )
    return EXIT_FAILED if fails or (strict and warns) else EXIT_OK


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"workers must be >= 1, got {workers}")
    return workers


def _default_workers(parser: argparse.ArgumentParser) -> int:
    """WEB_CONCURRENCY, read only when ``check`` runs: a bad value must not
    break ``axess --help`` or the other commands."""
    text = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not text:
        return 1
    try:
        return _workers(text)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"WEB_CONCURRENCY: {exc} (or pass --workers)")


# -- user -------------------------------------------------------------------------------
async def _user(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from axess.app import Axess

    request: UserRequest = args.request  # checked by main(): usage errors exit 2
    auth, _ = load_object(args.target)
    if not isinstance(auth, Axess):
        raise CommandError(f"{args.target} is a {type(auth).__name__}, not an Axess object")
    store = auth.store
    held = list(store.backends) if isinstance(store, RoutedStore) else [store]
    if any(_is_memory(b) for b in held):
        raise CommandError(
            "the app keeps accounts or sessions in memory, inside its own process: "
            "nothing to act on from here"
        )
    open_ = getattr(store, "open", None)
    if open_ is not None:
        await open_()
    try:
        delivered = await run_user_command(auth, request, out, err)
    except UserCommandError as exc:
        raise CommandError(str(exc)) from None
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            await close()
    return EXIT_OK if delivered else EXIT_FAILED


# -- demo -------------------------------------------------------------------------------
def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def _demo(host: str, port: int) -> int:
    try:
        import uvicorn
    except ImportError:
        raise CommandError("uvicorn is not installed: pip install uvicorn") from None
    root = Path(__file__).resolve().parent.parent
    for where in (os.getcwd(), str(root)):
        if (Path(where) / "examples" / "demo.py").is_file():
            if where not in sys.path:
                sys.path.insert(0, where)
            break
    else:
        raise CommandError("examples/demo.py not found: run from the axess source tree")
    demo = importlib.import_module("examples.demo")
    uvicorn.run(demo.app, host=host, port=port)
    return EXIT_OK


# -- plumbing -----------------------------------------------------------------------------
async def _run_cancellable(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` and cancel it on SIGINT/SIGTERM (exit status 130)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        print("axess: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextlib.contextmanager
def _store_logs_quiet(verbose: bool) -> Iterator[None]:
    """The command prints every failure itself, once: the stores' own
    warnings about the same failure are silenced unless ``--verbose``."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        yield
        return
    loggers = [logging.getLogger(n) for n in ("axess.stores", "axess")]
    levels = [lg.level for lg in loggers]
    loggers[0].setLevel(logging.CRITICAL)
    loggers[1].setLevel(max(levels[1], logging.ERROR) if levels[1] else logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="axess", description=__doc__.splitlines()[0], epilog=STORE_URLS, formatter_class=fmt
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the stores do")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            epilog=STORE_URLS,
            formatter_class=fmt,
        )

    def store_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("store", nargs="?", metavar="STORE_URL", help="store URL (see below)")
        p.add_argument("--store", dest="store_opt", metavar="URL", help="store URL (same)")

    sub.add_parser("keygen", help="print fresh keys for every purpose (env lines)")
    store_args(command("migrate", "apply pending schema migrations (forward-only, idempotent)"))
    p = command(
        "purge",
        "delete expired rows",
        "Delete expired rows, target by target. A failing target does not stop the "
        "others; the command then exits 1.",
    )
    store_args(p)
    p.add_argument(
        "--only",
        metavar="TARGETS",
        help="comma-separated: sessions, lockout (or lockouts), audit, identity, factors "
        "(default: all)",
    )
    p.add_argument(
        "--timeout",
        type=parse_duration,
        default=600.0,
        metavar="DURATION",
        help="deadline for the whole run: 90, 90s, 10m, 1h; 0 disables (default 10m)",
    )
    p = command(
        "check",
        "the pre-launch checklist against an app's Axess object",
        "Import an Axess object (module:attribute, e.g. myapp.main:auth) and check it "
        "against the pre-launch checklist: one line per check, PASS/WARN/FAIL with the "
        "reason. Exit 0 when nothing fails (with --strict: nothing warns either), 1 "
        "otherwise. SQL schemas are read (not changed).",
    )
    p.add_argument("target", metavar="MODULE:ATTR", help="the Axess object, e.g. myapp.main:auth")
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="worker processes the app runs with (default: WEB_CONCURRENCY or 1)",
    )
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p = sub.add_parser(
        "user",
        help="look at or act on one account: " + ", ".join(USER_ACTIONS),
        formatter_class=fmt,
        epilog="exit status: 0 done, 1 failed (or done, but an audit sink refused its "
        "events), 2 usage error, 130 interrupted",
        description="Import the app's Axess object (module:attribute, as for check) and "
        "act on one account through its stores: "
        + "; ".join(f"{name}: {what}" for name, what in USER_ACTIONS.items())
        + ". The audit events of the action go straight to the app's audit sinks (the "
        "running app keeps its recovery log); a sink that refuses them makes the command "
        "print them as JSON lines on stderr and exit 1.",
    )
    p.add_argument("action", choices=USER_ACTIONS, metavar="ACTION", help="one of: %(choices)s")
    p.add_argument("target", metavar="MODULE:ATTR", help="the Axess object, e.g. myapp.main:auth")
    p.add_argument(
        "identifier", nargs="?", metavar="IDENTIFIER", help="the login identifier (e-mail, name)"
    )
    p.add_argument("--tenant", help="the account's tenant id (default: the default tenant)")
    p.add_argument(
        "--ip",
        metavar="ADDRESS",
        help="show or unlock this client address's lever too (unlock: alone, without "
        "IDENTIFIER, only that address)",
    )
    p.add_argument("--actor", help="who the audit events name (default cli:<login name>)")
    p = command(
        "backup",
        "back up a SQLite store (prints the procedure for PostgreSQL/MySQL)",
        "SQLite: an online copy with the sqlite3 backup API, verified (integrity check, "
        "schema version) before it replaces FILE. PostgreSQL/MySQL: prints the pg_dump / "
        "mysqldump commands for the axess tables and exits 0 without running them.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[STORE_URL] FILE",
        help="store URL (default AXESS_STORE_URL) and backup file",
    )
    p.add_argument("--store", dest="store_opt", metavar="URL", help="store URL")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p = command(
        "restore-guard",
        "after a restore: make replayed second factors useless",
        "Run after restoring a backup, before the app takes traffic. Raises every TOTP "
        "last-accepted step to the current step + 1 (a code used before the restore is "
        "refused; TOTP works again within a minute), revokes recovery codes (a used "
        "code is a deleted row, so the restored table cannot tell spent codes apart) and "
        "deletes the restored sessions (a session revoked after the backup would come back).",
    )
    store_args(p)
    codes = p.add_mutually_exclusive_group()
    codes.add_argument(
        "--recovery-codes-of",
        metavar="FILE",
        help="revoke only these users' recovery codes (one user id per line, e.g. from "
        "the audit archive: recovery-code logins after the backup time)",
    )
    codes.add_argument(
        "--keep-recovery-codes",
        action="store_true",
        help="revoke none (only if no recovery code can have been used since the backup)",
    )
    p.add_argument(
        "--keep-sessions", action="store_true", help="keep sessions (they were not restored)"
    )
    p = command(
        "rotate-envelope",
        "re-seal stored sessions and TOTP secrets under the active envelope key",
        "Re-seal every live session payload and every TOTP secret not sealed under the "
        "active envelope key (the first of AXESS_ENVELOPE_KEYS; the old keys must still "
        "be listed after it). Batches of --batch rows, one transaction each, in key order; "
        "progress on stderr. SIGINT/SIGTERM finish the current batch, report and exit 130; "
        "a rerun continues (current rows are skipped). Exit 1 when a TOTP secret opens "
        "under no configured key. On a Valkey URL: the sessions stored there.",
    )
    store_args(p)
    p.add_argument("--batch", type=int, default=1000, help="rows per transaction (default 1000)")
    p.add_argument("--dry-run", action="store_true", help="count what would change, write nothing")
    p.add_argument(
        "--only", choices=ROTATE_TARGETS, help="only sessions or only TOTP secrets (default both)"
    )
    p.add_argument(
        "--allow-insecure",
        action="store_true",
        help="Valkey only: accept a connection without TLS or without AUTH (logged)",
    )
    p.add_argument(
        "--prefix", default="axess:", help="Valkey only: the key prefix (default axess:)"
    )
    p = sub.add_parser(
        "demo",
        help="run the demo app (examples/demo.py) under uvicorn",
        formatter_class=fmt,
        description="Run the demo app (examples/demo.py) under uvicorn, on the SQLite\n"
        "file AXESS_DEMO_DB (default demo.db) with development keys in the file\n"
        "AXESS_DEMO_KEYS (default: next to the database, created on first start).\n"
        "The book's `mkdocs serve` defaults to port 8000 too: give it\n"
        "-a 127.0.0.1:8001, or give the demo another --port.",
    )
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--port", type=_port, default=8000, help="1-65535, default 8000")
    return parser


def _store_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    url = getattr(args, "store", None) or args.store_opt or os.environ.get("AXESS_STORE_URL")
    if not url:
        parser.error("a store URL is required (argument, --store or AXESS_STORE_URL)")
    return str(url)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = args.command
    if cmd == "check" and args.workers is None:
        args.workers = _default_workers(parser)
    if cmd in ("check", "user"):
        module_name, sep, attr = args.target.partition(":")
        if not (module_name and sep and attr):
            parser.error(f"{args.target!r} is not MODULE:ATTR (e.g. myapp.main:auth)")
    if cmd == "user":
        request = UserRequest(
            args.action, args.identifier, args.tenant, args.ip, args.actor or default_actor()
        )
        try:
            check_request(request)
        except UserCommandError as exc:
            parser.error(str(exc))
        args.request = request
    if cmd == "backup":
        if len(args.paths) > 2:
            parser.error("backup takes [STORE_URL] FILE")
        if len(args.paths) == 2:
            args.store, args.backup_file = args.paths
        else:
            args.store, args.backup_file = None, args.paths[0]
    if cmd == "rotate-envelope" and args.batch < 1:
        parser.error("--batch must be >= 1")
    if cmd == "purge":
        try:
            args.only = purge_target_names(args.only)
        except ValueError as exc:
            parser.error(str(exc))
    if cmd == "demo":
        # Not under _store_logs_quiet: the demo's warnings (development keys,
        # weakened cookie settings) are meant to be read at start.
        return _demo(args.host, args.port)
    out, err = sys.stdout, sys.stderr
    try:
        status = _run(parser, args, out, err)
        # Output still buffered would fail at interpreter exit (a full disk,
        # a closed pipe) with a traceback and exit 0 after the fact.
        out.flush()
        return status
    except KeyboardInterrupt:
        err.write("axess: interrupted\n")
        return EXIT_INTERRUPTED
    except (AxessError, CommandError, ValueError, OSError, TimeoutError) as exc:
        if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
            _discard_stdout()
        err.write(f"axess {cmd}: {_cause(exc)}\n")
        return EXIT_FAILED


#: Errors writing the output (the disk is full, the reader has gone).
_OUTPUT_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EDQUOT})


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what is left in its buffer cannot be
    written, and flushing it again at exit would print a traceback."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _run(
    parser: argparse.ArgumentParser, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    cmd = args.command
    if cmd == "keygen":
        keygen(out)
        return EXIT_OK
    with _store_logs_quiet(args.verbose):
        if cmd == "check":
            return asyncio.run(
                _run_cancellable(_check(args.target, args.workers, args.strict, out))
            )
        if cmd == "user":
            return asyncio.run(_run_cancellable(_user(args, out, err)))
        url = _store_url(parser, args)
        if cmd == "migrate":
            new_file = _new_sqlite_file(url)
            return asyncio.run(_run_cancellable(_migrate(url, out, new_file)))
        if cmd == "purge":
            return asyncio.run(_run_cancellable(_purge(url, args.only, args.timeout, out, err)))
        if cmd == "backup":
            return _backup(url, args.backup_file, args.force, out)
        if cmd == "restore-guard":
            return asyncio.run(
                _run_cancellable(
                    _restore_guard(
                        url,
                        args.recovery_codes_of,
                        args.keep_recovery_codes,
                        args.keep_sessions,
                        out,
                    )
                )
            )
        if cmd == "rotate-envelope":
            targets = (args.only,) if args.only else ROTATE_TARGETS
            return asyncio.run(
                _rotate(
                    url,
                    args.batch,
                    args.dry_run,
                    targets,
                    out,
                    err,
                    allow_insecure=args.allow_insecure,
                    prefix=args.prefix,
                )
            )
    raise AssertionError(f"unhandled command {cmd}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
