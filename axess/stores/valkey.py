"""Valkey session store (valkey-py, ``valkey.asyncio``).

Data layout, under the configurable ``prefix`` (default ``"axess:"``):

``<prefix>s:<storage key>``
    A hash: ``p`` payload (binary), ``e`` expires_at, ``c`` created_at (both
    as the shortest exact decimal of the float), ``u`` user_id and ``t``
    tenant_id (absent when ``None``). It carries a native TTL.
``<prefix>u:<user_id>``
    A sorted set of the user's storage keys (every tenant), scored by
    expires_at, for "log out everywhere" and session listing. It expires
    with its longest-lived session.
``<prefix>x``
    A sorted set of every storage key scored by expires_at, so that
    :meth:`ValkeyStore.purge_expired_sessions` finds exactly the expired
    sessions without scanning the keyspace.

Every write is one Lua script (atomic, one round trip); ``load_session`` is
one ``HGETALL``. Scripts run with ``EVALSHA`` and are re-loaded
transparently after ``NOSCRIPT`` (a server restart or ``SCRIPT FLUSH``).

**Expiry.** Whether a row is alive is always decided by the caller's ``now``
against the stored ``expires_at`` (so an injected clock works, and a clock
ahead of the server's still sees the row as dead). The native TTL is only a
safety net that frees memory; it is *relative*: ``expires_at - now`` for
``save_session``/``cycle_session`` and ``expires_at - created_at`` for
``create_session`` (which has no ``now``; a session is created at its
``created_at``). A relative TTL does not depend on the app and the server
clocks agreeing, and it keeps working with a mock clock far from real time.

**Deployment.** The scripts touch the session hash and the index sets
together, and ``delete_user_sessions`` discovers the session keys from the
index inside the script (so it is atomic against concurrent saves and
cycles). That needs a standalone server or a primary/replica setup: Valkey
Cluster is not supported.

**Safety floor.** Plaintext TCP (``valkey://``, ``redis://``) and a
connection without a password (no ``AUTH``) are refused unless
``allow_insecure=True``, which logs one WARNING naming what is insecure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

from axess._throttle import ThrottledWarning
from axess.errors import ConfigurationError, EnvelopeError, StoreError
from axess.observability.health import HealthStatus
from axess.observability.metrics import AuthnMetrics
from axess.stores.base import LOCKOUT, SESSIONS, BatchResult, SessionRecord
from axess.stores.valkey_lockout import ValkeyLockoutMixin

try:
    import valkey.asyncio as valkey_asyncio
    from valkey.asyncio.connection import SSLConnection, UnixDomainSocketConnection
    from valkey.exceptions import NoScriptError, ValkeyError
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "ValkeyStore needs the valkey client: install axess with the 'valkey' extra "
        "(pip install '/path/to/axess[valkey]') or pip install valkey"
    ) from _exc

logger = logging.getLogger(__name__)

_PLAINTEXT_SCHEMES: Final = frozenset({"valkey", "redis"})
_TLS_SCHEMES: Final = frozenset({"valkeys", "rediss"})
_UNIX_SCHEMES: Final = frozenset({"unix"})
#: How valkey-py spells false in a URL query.
_FALSE_STRINGS: Final = frozenset({"0", "F", "FALSE", "N", "NO", "OFF", "DISABLED"})
_SCRIPT_NAMES: Final = ("create", "save", "cycle", "delete", "delete_user", "list_user", "purge")
_PURGE_BATCH: Final = 500
#: Below the health endpoint's own 2 s per check, so its reason names the backend.
_HEALTH_TIMEOUT: Final = 1.5

_Exec = Callable[..., Awaitable[Any]]


#: Replaces a session's payload only if it is still the one that was read
#: (a compare-and-set, so a save by the app in between wins); ``HSET`` keeps
#: the hash's TTL. KEYS[1] the session hash; ARGV: prefix, old, new.
_RESEAL = b"""
if redis.call('HGET', KEYS[1], 'p') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'p', ARGV[3])
  return 1
end
return 0
"""


def _load_script_sources() -> dict[str, bytes]:
    folder = resources.files("axess.stores").joinpath("lua")
    common = folder.joinpath("common.lua").read_bytes()
    return {
        name: common + b"\n" + folder.joinpath(f"{name}.lua").read_bytes() for name in _SCRIPT_NAMES
    }


class _Script:
    __slots__ = ("body", "name", "sha")

    def __init__(self, name: str, body: bytes) -> None:
        self.name = name
        self.body = body
        self.sha = hashlib.sha1(body, usedforsecurity=False).hexdigest()


def _opt(value: str | None) -> str:
    """Optional string argument for the scripts: '' is None, '=' marks a value."""
    return "" if value is None else "=" + value


def _time(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        raise ValueError("session times must not be NaN")
    return repr(value)


def _ttl_ms(expires_at: float, reference: float) -> int:
    """Native TTL in ms (0 = none) from the remaining lifetime at ``reference``."""
    if math.isinf(expires_at) and expires_at > 0:
        return 0
    remaining = math.ceil((expires_at - reference) * 1000)
    return max(1, remaining)


def _record_args(record: SessionRecord, reference: float) -> list[str | bytes]:
    return [
        str(_ttl_ms(record.expires_at, reference)),
        _time(record.expires_at),
        _time(record.created_at),
        record.payload,
        _opt(record.user_id),
        _opt(record.tenant_id),
    ]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


class ValkeyStore(ValkeyLockoutMixin):
    """Implements the session substore on Valkey (or Redis-protocol servers)."""

    # Plain (not Final) so the class matches Backend's settable protocol members.
    name: str = "valkey"
    substores: frozenset[str] = frozenset({SESSIONS, LOCKOUT})
    #: Receives ``store_latency(substore, operation, seconds)`` for every
    #: command and script once set (``Axess(metrics=...)`` sets it, also for a
    #: ``ValkeyBucketStore`` on this store; book: "Health and metrics").
    metrics: AuthnMetrics | None = None

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "axess:",
        allow_insecure: bool = False,
        client: valkey_asyncio.Valkey | None = None,
        socket_timeout: float = 2.0,
        **pool_kwargs: Any,
    ) -> None:
        if pool_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "ValkeyStore needs decode_responses=False (payloads are binary)"
            )
        if client is not None and client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "ValkeyStore needs a client with decode_responses=False (payloads are binary)"
            )
        insecure, self._secrets = _inspect_connection(url, client, pool_kwargs)
        #: What makes the connection insecure (no TLS, no AUTH); empty when
        #: it is not. ``axess check`` reports it.
        self.insecure: tuple[str, ...] = tuple(insecure)
        if insecure:
            if not allow_insecure:
                raise ConfigurationError(
                    "refusing an insecure Valkey connection ("
                    + " and ".join(insecure)
                    + "): use valkeys:// (TLS) or unix:// with a password,"
                    " or pass allow_insecure=True to accept it"
                )
            logger.warning(
                "ValkeyStore: insecure Valkey connection accepted (allow_insecure=True): %s",
                "; ".join(insecure),
            )
        self._url = url
        self._tls = client is None and urlsplit(url).scheme.lower() in _TLS_SCHEMES
        self._prefix = prefix
        self._socket_timeout = socket_timeout
        self._pool_kwargs = pool_kwargs
        self._client: valkey_asyncio.Valkey | None = client
        self._owns_client = client is None
        #: Set while open; every operation goes through it.
        self._exec: _Exec | None = None
        #: True once opened: a store closed after use does not reopen behind
        #: its owner's back; one never opened opens on first use.
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        self._scripts = {n: _Script(n, b) for n, b in _load_script_sources().items()}
        # Maintenance only: loaded on first use (run_script re-loads on NOSCRIPT).
        self._reseal = _Script("reseal", _RESEAL)
        self._warn = ThrottledWarning(logger)

    def __repr__(self) -> str:
        return f"ValkeyStore(prefix={self._prefix!r})"

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> None:
        """Create the client (if none was given) and load the scripts. Idempotent."""
        if self._exec is not None:
            return
        if self._client is None:
            # TLS checks that the certificate names the host (valkey-py's
            # default does not); a URL or keyword saying otherwise wins, and
            # was refused as insecure unless allowed.
            tls = {"ssl_check_hostname": True} if self._tls else {}
            self._client = valkey_asyncio.Valkey.from_url(
                self._url,
                **{
                    "socket_timeout": self._socket_timeout,
                    "socket_connect_timeout": self._socket_timeout,
                    **tls,
                    **self._pool_kwargs,
                    "decode_responses": False,
                },
            )
        execute = _executor(self._client)
        try:
            for script in self._scripts.values():
                await execute("SCRIPT LOAD", script.body)
        except (ValkeyError, OSError) as exc:
            raise self._error("open", exc) from exc
        self._exec = execute
        self._opened = True

    async def _executor(self) -> _Exec:
        """The open executor; a store never opened (an app without the Axess
        lifespan) is opened here, once, by the first operation. A failure is
        a :class:`StoreError` (a 503), and the next operation tries again."""
        if self._exec is not None:
            return self._exec
        if self._opened:
            raise RuntimeError("ValkeyStore is not open: await store.open() first")
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._exec is None:
                logger.info("ValkeyStore opened by its first operation (no lifespan opened it)")
                await self.open()
        return await self._executor()

    async def close(self) -> None:
        """Close the client if this store created it (a given client stays the
        caller's to close). Idempotent; the store can be opened again."""
        self._exec = None
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def check_health(self) -> HealthStatus:
        """``PING`` within 1.5 s. Never raises; the reason never contains secrets."""
        if self._exec is None:
            return HealthStatus.unhealthy("valkey: store is not open")
        try:
            await asyncio.wait_for(self._exec("PING"), _HEALTH_TIMEOUT)
        except TimeoutError:
            return HealthStatus.unhealthy(f"valkey: no answer within {_HEALTH_TIMEOUT:g}s")
        except (ValkeyError, OSError) as exc:
            return HealthStatus.unhealthy(f"valkey: {type(exc).__name__}")
        except Exception as exc:  # a health check must never raise
            return HealthStatus.unhealthy(f"valkey: {type(exc).__name__}")
        return HealthStatus.healthy()

    # -- plumbing -------------------------------------------------------------
    def _error(self, op: str, exc: BaseException, substore: str = SESSIONS) -> StoreError:
        detail = str(exc)
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        message = f"valkey {op} failed: {type(exc).__name__}: {detail}"
        self._warn.warning(op, "%s", message)
        return StoreError(message, backend="valkey", substore=substore)

    async def _call(self, op: str, *args: Any, substore: str = SESSIONS) -> Any:
        execute = await self._executor()
        metrics = self.metrics
        start = time.perf_counter()
        try:
            return await execute(*args)
        except (ValkeyError, OSError) as exc:
            raise self._error(op, exc, substore) from exc
        finally:
            if metrics is not None:
                metrics.store_latency(substore, op, time.perf_counter() - start)

    async def _run(self, name: str, keys: Sequence[str], args: Iterable[str | bytes]) -> Any:
        return await self.run_script(self._scripts[name], keys, args)

    # -- shared with other Valkey-backed stores (rate-limit buckets) -------------
    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def is_open(self) -> bool:
        return self._exec is not None

    async def load_script(self, script: _Script, *, substore: str = SESSIONS) -> None:
        """``SCRIPT LOAD`` a script of another store sharing this connection."""
        await self._call(script.name, "SCRIPT LOAD", script.body, substore=substore)

    async def run_script(
        self,
        script: _Script,
        keys: Sequence[str],
        args: Iterable[str | bytes],
        *,
        substore: str = SESSIONS,
    ) -> Any:
        """One ``EVALSHA`` of ``script`` (re-loaded after ``NOSCRIPT``), with
        this store's prefix as ``ARGV[1]``. Failures raise :class:`StoreError`
        naming ``substore``."""
        execute = await self._executor()
        argv = (self._prefix, *args)
        metrics = self.metrics
        start = time.perf_counter()
        try:
            try:
                return await execute("EVALSHA", script.sha, len(keys), *keys, *argv)
            except NoScriptError:
                # The server lost its script cache (restart, SCRIPT FLUSH).
                await execute("SCRIPT LOAD", script.body)
                return await execute("EVALSHA", script.sha, len(keys), *keys, *argv)
        except (ValkeyError, OSError) as exc:
            raise self._error(script.name, exc, substore) from exc
        finally:
            if metrics is not None:
                metrics.store_latency(substore, script.name, time.perf_counter() - start)

    def _skey(self, key: str) -> str:
        return f"{self._prefix}s:{key}"

    def _ukey(self, user_id: str) -> str:
        return f"{self._prefix}u:{user_id}"

    @property
    def _xkey(self) -> str:
        return f"{self._prefix}x"

    def _decode(self, key: str, raw: Mapping[bytes, bytes]) -> SessionRecord:
        try:
            return SessionRecord(
                key=key,
                payload=bytes(raw[b"p"]),
                expires_at=float(raw[b"e"]),
                created_at=float(raw[b"c"]),
                user_id=_text(raw.get(b"u")),
                tenant_id=_text(raw.get(b"t")),
            )
        except (KeyError, ValueError) as exc:
            raise self._error("decode", exc) from exc

    # -- session substore -----------------------------------------------------
    async def load_session(self, key: str, now: float) -> SessionRecord | None:
        raw = await self._call("load", "HGETALL", self._skey(key))
        if not raw:
            return None
        record = self._decode(key, cast(Mapping[bytes, bytes], raw))
        return record if record.expires_at > now else None

    async def create_session(self, record: SessionRecord) -> bool:
        args = [record.key, *_record_args(record, record.created_at)]
        return bool(await self._run("create", [self._skey(record.key), self._xkey], args))

    async def save_session(self, record: SessionRecord, now: float) -> bool:
        args = [record.key, _time(now), *_record_args(record, now)]
        return bool(await self._run("save", [self._skey(record.key), self._xkey], args))

    async def cycle_session(self, old_key: str, record: SessionRecord, now: float) -> bool:
        keys = [self._skey(old_key), self._skey(record.key), self._xkey]
        args = [old_key, record.key, _time(now), *_record_args(record, now)]
        return bool(await self._run("cycle", keys, args))

    async def delete_session(self, key: str) -> bool:
        return bool(await self._run("delete", [self._skey(key), self._xkey], [key]))

    async def delete_user_sessions(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int:
        keys = [self._ukey(user_id), self._xkey]
        args = [user_id, _opt(tenant_id), _opt(except_key)]
        return int(await self._run("delete_user", keys, args))

    async def list_user_sessions(
        self, user_id: str, now: float, *, tenant_id: str | None = None
    ) -> list[SessionRecord]:
        args = [user_id, _opt(tenant_id), _time(now)]
        rows = cast(list[list[bytes]], await self._run("list_user", [self._ukey(user_id)], args))
        out: list[SessionRecord] = []
        for key, payload, expires, created, tenant in rows:
            try:
                out.append(
                    SessionRecord(
                        key=key.decode("utf-8"),
                        payload=bytes(payload),
                        expires_at=float(expires),
                        created_at=float(created),
                        user_id=user_id,
                        tenant_id=tenant[1:].decode("utf-8") if tenant else None,
                    )
                )
            except (UnicodeDecodeError, ValueError) as exc:
                raise self._error("list", exc) from exc
        out.sort(key=lambda r: (r.created_at, r.key))
        return out

    async def reseal_sessions(
        self,
        start: int,
        limit: int,
        now: float,
        reseal: Callable[[str, bytes], bytes | None],
        *,
        dry_run: bool = False,
    ) -> BatchResult:
        """``axess rotate-envelope`` on Valkey: examine up to ``limit`` sessions
        alive at ``now``, from position ``start`` of the expiry index.

        ``reseal(key, sealed)`` returns the payload re-sealed under the active
        key, ``None`` when it is current, or raises
        :class:`~axess.errors.EnvelopeError` (counted ``unreadable``). Each
        write is a compare-and-set: a session the app saved in the meantime
        is left as the app wrote it (``raced``). ``last_key`` is ``None``
        when the index had no session left.
        """
        members = cast(
            list[bytes],
            await self._call(
                "reseal",
                "ZRANGE",
                self._xkey,
                "(" + _time(now),
                "+inf",
                "BYSCORE",
                "LIMIT",
                str(start),
                str(limit),
            ),
        )
        result = BatchResult()
        for member in members:
            key = member.decode("ascii")
            result.last_key = key
            result.examined += 1
            old = await self._call("reseal", "HGET", self._skey(key), "p")
            if old is None:  # gone since the index was read
                result.current += 1
                continue
            try:
                new = reseal(key, bytes(old))
            except EnvelopeError:
                result.unreadable += 1
                continue
            if new is None:
                result.current += 1
            elif dry_run:
                result.resealed += 1
            elif await self.run_script(self._reseal, [self._skey(key)], [bytes(old), new]):
                result.resealed += 1
            else:
                result.raced += 1
        return result

    async def purge_expired_sessions(self, now: float) -> int:
        """Remove every session dead at ``now``; return how many.

        Valkey already deletes most dead session hashes by their native TTL;
        what this removes is each one's entry in the expiry index (and the
        hash itself when the caller's clock is ahead of the server's). The
        count is the number of those stale session references removed, i.e.
        the number of sessions that had expired by ``now`` since the last
        purge.
        """
        total = 0
        while True:
            removed, examined = cast(
                list[int], await self._run("purge", [self._xkey], [_time(now), str(_PURGE_BATCH)])
            )
            total += int(removed)
            if int(examined) < _PURGE_BATCH:
                return total

    async def purge_expired(
        self, now: float, *, only: Iterable[str] | None = None
    ) -> dict[str, int]:
        """Purge the given substores (default: all this store implements)."""
        targets = _purge_targets(self.substores, only)
        out: dict[str, int] = {}
        if SESSIONS in targets:
            out[SESSIONS] = await self.purge_expired_sessions(now)
        if LOCKOUT in targets:
            out[LOCKOUT] = await self.purge_expired_lockouts(now)
        return out


def _purge_targets(supported: frozenset[str], only: Iterable[str] | None) -> frozenset[str]:
    if only is None:
        return supported
    wanted = frozenset([only] if isinstance(only, str) else only)
    unknown = wanted - supported
    if unknown:
        raise ValueError(f"unknown purge target(s): {', '.join(sorted(unknown))}")
    return wanted


def _secrets(*values: object) -> tuple[str, ...]:
    found: set[str] = set()
    for value in values:
        if isinstance(value, str) and value:
            found.update({value, unquote(value)})
    return tuple(sorted(found, key=len, reverse=True))


def _executor(client: valkey_asyncio.Valkey) -> _Exec:
    # valkey-py's command methods are typed as "Awaitable or value" (shared
    # with the sync client); execute_command is the one async entry point.
    return cast(_Exec, client.execute_command)


def _tls_problems(cert_reqs: Any, check_hostname: Any) -> list[str]:
    """What a TLS connection leaves unverified (the server's certificate, or
    that it names the host): either lets anyone on the path pose as the server."""
    problems = []
    if cert_reqs == ssl.CERT_NONE or str(cert_reqs).lower() == "none":
        problems.append("TLS without certificate verification")
    if check_hostname is False or str(check_hostname).upper() in _FALSE_STRINGS:
        problems.append("TLS without host name verification")
    return problems


def _inspect_connection(
    url: str, client: valkey_asyncio.Valkey | None, pool_kwargs: Mapping[str, Any]
) -> tuple[list[str], tuple[str, ...]]:
    """What is insecure about the connection, and the secrets to scrub from messages."""
    if client is not None:
        kwargs: Mapping[str, Any] = client.connection_pool.connection_kwargs
        connection_class: Any = client.connection_pool.connection_class
        password = kwargs.get("password")
        has_auth = bool(password) or kwargs.get("credential_provider") is not None
        encrypted = isinstance(connection_class, type) and issubclass(
            connection_class, (SSLConnection, UnixDomainSocketConnection)
        )
        problems = [] if encrypted else ["plaintext TCP (no TLS)"]
        if isinstance(connection_class, type) and issubclass(connection_class, SSLConnection):
            # valkey-py's own default leaves the host name unchecked.
            problems += _tls_problems(
                kwargs.get("ssl_cert_reqs", "required"), kwargs.get("ssl_check_hostname", False)
            )
        if not has_auth:
            problems.append("no AUTH password")
        return problems, _secrets(password)
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        url_password = parts.password
    except ValueError:
        raise ConfigurationError("the Valkey URL cannot be parsed") from None
    if scheme not in _PLAINTEXT_SCHEMES | _TLS_SCHEMES | _UNIX_SCHEMES:
        raise ConfigurationError(
            f"unsupported Valkey URL scheme {scheme!r}: use valkeys://, rediss:// or unix://"
        )
    query_password = next(iter(parse_qs(parts.query).get("password", [])), None)
    password = url_password or query_password or pool_kwargs.get("password")
    has_auth = bool(password) or pool_kwargs.get("credential_provider") is not None
    connection_class = pool_kwargs.get("connection_class")
    if isinstance(connection_class, type):
        encrypted = issubclass(connection_class, (SSLConnection, UnixDomainSocketConnection))
    else:
        encrypted = scheme not in _PLAINTEXT_SCHEMES
    problems = [] if encrypted else ["plaintext TCP (no TLS)"]
    if scheme in _TLS_SCHEMES:
        query = parse_qs(parts.query)
        problems += _tls_problems(
            next(
                iter(query.get("ssl_cert_reqs", [])), pool_kwargs.get("ssl_cert_reqs", "required")
            ),
            # axess checks the host name unless told not to (see open()).
            next(iter(query.get("ssl_check_hostname", [])), pool_kwargs.get("ssl_check_hostname")),
        )
    if not has_auth:
        problems.append("no AUTH password")
    return problems, _secrets(password, url_password)
