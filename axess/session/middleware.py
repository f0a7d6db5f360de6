"""``SessionMiddleware``: a pure ASGI middleware that loads the session with one
store call, exposes it as ``request.state.session`` and persists it when the
response starts."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Final, NamedTuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axess._cache import DEFAULT_MEMO_SIZE, Memo
from axess._throttle import ThrottledWarning
from axess.clock import Clock, Random, SystemClock, SystemRandom
from axess.errors import EnvelopeError, StoreError
from axess.keys import Keyring
from axess.net import ip_prefix, scope_ip
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.refusals import Refusal, disconnected
from axess.session import data as d
from axess.session.binding import FingerprintBinding
from axess.session.config import SessionConfig
from axess.session.cookie import (
    MAX_MEMO_HEADER_BYTES,
    STORAGE_KEY_CHARS,
    SessionCookieSigner,
    VerifiedCookie,
    cookie_values,
    storage_key,
)
from axess.session.envelope import SessionCrypto
from axess.session.events import KEY_PREFIX_CHARS, SessionEvent, SessionEventHook
from axess.session.handle import Session
from axess.stack import (
    HEADERS_KEY,
    Stage,
    mutable_headers,
    request_headers,
    vary_cookie,
)
from axess.stores.base import ImmediateSessionRead, NotNow, SessionRecord, SessionStore

#: Custom data up to this many bytes of JSON is kept parsed with the opened
#: payload, so reading it parses nothing; larger custom data is parsed on
#: the request that reads it (this bounds the memo's memory: book, Sessions,
#: "Memos").
MAX_TEMPLATE_JSON: Final = 512
#: ... and holding at most this many objects and arrays (the outer one
#: included; brackets inside strings count too): a container costs 56 bytes
#: and more for the 2 bytes of "[]", so 512 bytes of nested empty arrays
#: would parse to 22 KiB. Ordinary session data (a few scalars, a cart list,
#: a preferences object) stays well under it.
MAX_TEMPLATE_CONTAINERS: Final = 8
logger = logging.getLogger(__name__)

#: Why a websocket's session takes no changes: nothing commits them (a
#: websocket cannot set cookies).
_READ_ONLY: Final = "a websocket's session is read-only"
#: Why a change made after the commit is not saved.
_STARTED: Final = "the response had started"
#: Larger payloads are opened every time rather than memoized (an entry, with
#: the data it opens to, then stays below about 16 KiB; see the book's
#: sessions chapter, "Memos").
_MEMO_MAX_PAYLOAD: Final = 4096
#: Key bound of the opened-payload memo: (storage key, payload).
_OPENED_MAX_KEY: Final = STORAGE_KEY_CHARS + _MEMO_MAX_PAYLOAD
#: An opened payload: its session data, custom-data JSON and, when at most
#: MAX_TEMPLATE_JSON bytes, that JSON parsed (shared, copied on write).
_Opened = tuple[d.SessionData, bytes, dict[str, Any] | None]


class _CapEvicted(Exception):
    """The session this request wrote lost its place to newer sessions of
    the user under ``max_sessions_per_user`` (raised by the commit)."""


class _Expired(NamedTuple):
    """What :meth:`SessionMiddleware._open` found instead of a live session."""

    key: str
    auth_state: d.AuthState


class SessionMiddleware(Stage):
    """Server-side sessions behind an HMAC-signed cookie, sealed with AES-256-GCM.

    One ``load_session`` per request that carries a valid cookie; no store
    write and no ``Set-Cookie`` when nothing changed; guests are persisted
    only once they write. The book's Sessions chapter has the full contract.
    """

    def __init__(
        self,
        app: ASGIApp | None = None,
        *,
        store: SessionStore,
        keys: Keyring,
        config: SessionConfig | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
        metrics: AuthnMetrics | None = None,
        on_event: SessionEventHook | None = None,
        binding: FingerprintBinding | None = None,
        memo_size: int = DEFAULT_MEMO_SIZE,
        crypto: SessionCrypto | None = None,
    ) -> None:
        super().__init__(app)
        self.store = store
        self.config = config or SessionConfig()
        self.clock: Clock = clock or SystemClock()
        self.random: Random = random or SystemRandom()
        self.metrics: AuthnMetrics = metrics or NoopMetrics()
        self.on_event = on_event
        self.binding = binding if binding is not None and binding.policy.enabled else None
        # The store's immediate read, if it has one (see enter_now).
        self._load_now = store.load_session_now if isinstance(store, ImmediateSessionRead) else None
        self.signer = SessionCookieSigner(keys)
        # ``crypto``: the facade's, shared with its session registry.
        self.crypto = crypto or SessionCrypto(
            keys,
            random=self.random,
            on_previous_key=self.metrics.session_decrypted_with_previous_key,
        )
        self._cookie_name = self.config.resolved_cookie_name.encode("ascii")
        # Cookie header -> (the session cookie in it if verified, had one?):
        # a returning browser sends the same header on every request, and
        # the answer is a pure function of the header bytes and the keyring.
        self._cookies: Memo[bytes | None, tuple[VerifiedCookie | None, bool]] = Memo(
            self._read_cookie, memo_size, max_key_bytes=MAX_MEMO_HEADER_BYTES
        )
        self._cookie_attrs = self._attributes()
        self._envelope_warned: set[str] = set()
        self._warn = ThrottledWarning(logger)
        # Opening is a pure function of (storage key, sealed bytes) for a fixed
        # keyring, so a payload that opened once maps to the same data again:
        # unchanged sessions skip AES-GCM and JSON on repeat requests. Entries
        # are immutable templates, shared until a request changes its copy.
        self._opened: Memo[tuple[str, bytes], _Opened | None] = Memo(
            self._open_payload, memo_size, max_key_bytes=_OPENED_MAX_KEY
        )

    # -- stage ------------------------------------------------------------------
    def enter_now(self, scope: Scope) -> bool:
        """The returning browser's request, answered without an ``await``: the
        store read it now (``ImmediateSessionRead``), the session is live and
        the binding matches. False, with nothing changed, for everything else
        (a store that must wait, an expiry to delete, a binding to settle, a
        store error): :meth:`enter` then does the whole work."""
        load_now = self._load_now
        if load_now is None:
            return False
        state = scope["state"]  # the stack made sure it exists, with the headers
        verified, had_cookie = self._cookies[state[HEADERS_KEY].get(b"cookie")]
        now = self.clock.time()
        record = None
        if verified is not None:
            try:
                found = load_now(verified.storage_key, now)
            except StoreError:
                return False
            if isinstance(found, NotNow):
                return False
            if found is None and verified.has_others:
                return False  # another cookie of the name may name a live session
            record = found
        session = self._session_for(verified, had_cookie, record, now)
        if isinstance(session, _Expired):
            return False
        binding = self.binding
        if (
            binding is not None
            and session.persisted_sid is not None
            and binding.check(scope, session._data, True, now) != 0
        ):
            return False
        # Also where Starlette's ``request.session`` looks (book: Sessions).
        state["session"] = scope["session"] = session
        if scope["type"] != "http":
            session.close(_READ_ONLY)
        return True

    async def enter(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        state = scope["state"]
        header = state[HEADERS_KEY].get(b"cookie")
        verified, had_cookie = self._cookies[header]
        now = self.clock.time()
        record = None
        try:
            if verified is not None:
                record = await self.store.load_session(verified.storage_key, now)
            session = self._session_for(verified, had_cookie, record, now)
            if verified is not None and verified.has_others and not _is_stored(session):
                other = await self._other_session(header, verified, now)
                if other is not None:  # (not "or": an empty Session is falsy)
                    session = other
        except StoreError:
            if self.config.on_store_error != "guest":
                await self._unavailable(scope, send)
                return None
            # A guest stands in; the cookie still names a session that
            # may be fine once the store is back: it is not cleared.
            stand_in = self._new_guest(now)
            stand_in.stand_in = stand_in.had_cookie = True
            state["session"] = scope["session"] = stand_in
            return receive
        if isinstance(session, _Expired):  # delete the row, start a guest
            try:
                await self._expire(session, scope)
            except StoreError:
                if self.config.on_store_error != "guest":
                    await self._unavailable(scope, send)
                    return None
            session = self._new_guest(now)
            session.had_cookie = True
        state["session"] = scope["session"] = session
        binding = self.binding
        if (
            binding is not None
            and session.persisted_sid is not None
            and binding.check(scope, session._data, True, now) != 0
        ):
            # Not a plain match: mismatch, re-bind or pepper reload.
            try:
                await self._settle_binding(scope, session, now)
            except StoreError:
                await self._unavailable(scope, send)
                return None
        if scope["type"] != "http":
            session.close(_READ_ONLY)
        return receive

    def _session_for(
        self,
        verified: VerifiedCookie | None,
        had_cookie: bool,
        record: SessionRecord | None,
        now: float,
    ) -> Session | _Expired:
        """The request's session, given its cookie and the row the cookie
        names (``None``: no live row): the stored session, or a new guest
        when there is none or it cannot be opened; :class:`_Expired` when the
        row outlived its lifetime (the caller deletes it)."""
        if record is not None and verified is not None:
            opened = self._open(verified, record, now)
            if opened is not None:
                if type(opened) is Session:
                    opened.had_cookie = True
                return opened
        session = self._new_guest(now)
        session.had_cookie = had_cookie
        return session

    def on_response_start_now(self, scope: Scope, message: Message) -> bool:
        """The common read-only request: nothing to write, nothing to tell."""
        session: Session = scope["state"]["session"]
        session._closed = _STARTED  # later changes warn (Session.close, inline: every request)
        if not session.unchanged_since_load():
            return False
        session.committed_key = session.loaded_key
        if session.accessed or session.had_cookie:
            vary_cookie(message)
        return True

    async def on_response_start(self, scope: Scope, message: Message, send: Send) -> bool:
        if self.on_response_start_now(scope, message):
            return True
        session: Session = scope["state"]["session"]
        try:
            cookie = await self.commit(scope, session, session.had_cookie)
        except _CapEvicted:
            await self._evicted(scope, send)
            return False
        except StoreError:
            await self._unavailable(scope, send)
            return False
        if cookie is not None:
            mutable_headers(message).append((b"set-cookie", cookie))
        if cookie is not None or session.accessed or session.had_cookie:
            vary_cookie(message)
        return True

    # -- load ---------------------------------------------------------------------
    def _new_guest(self, now: float | None = None) -> Session:
        if now is None:
            now = self.clock.time()
        return Session(self, d.SessionData(created_at=now, last_seen_at=now))

    def _read_cookie(self, header: bytes | None) -> tuple[VerifiedCookie | None, bool]:
        """(the first session cookie in ``header`` whose signature verifies,
        whether ``header`` holds a session cookie at all).

        Not simply the first one sent: a sibling subdomain can plant a cookie
        of the same name for the parent domain that the browser sends ahead
        of ours. Taking it would make the user a guest, and clearing "their"
        cookie would delete the real one (book: Sessions, "Cookie tossing").
        """
        had_cookie = False
        first = None
        for raw in cookie_values(header, self._cookie_name):
            had_cookie = True
            verified = self.signer.verify(raw)
            if verified is None:
                continue
            if first is None:
                first = verified
            elif verified.storage_key != first.storage_key:
                return dataclasses.replace(first, has_others=True), True
        if first is None and had_cookie:
            logger.debug("session cookie rejected (format or signature)")
        return first, had_cookie

    async def _other_session(
        self, header: bytes | None, first: VerifiedCookie, now: float
    ) -> Session | None:
        """The live session of the first *other* cookie of the name in
        ``header`` that verifies, when ``first`` (the first that verified)
        names none: a planted cookie that once was valid (the attacker's own,
        logged out since) must not hide the user's cookie sent after it, nor
        have the response clear it (book: Sessions, "Cookie tossing")."""
        for raw in cookie_values(header, self._cookie_name):
            verified = self.signer.verify(raw)
            if verified is None or verified.storage_key == first.storage_key:
                continue
            record = await self.store.load_session(verified.storage_key, now)
            if record is not None:
                session = self._session_for(verified, True, record, now)
                if _is_stored(session):
                    assert isinstance(session, Session)
                    return session
        return None

    def _open_payload(self, key: tuple[str, bytes]) -> _Opened | None:
        """The session data sealed in ``key``'s payload, its custom-data JSON
        and, when small, that JSON parsed; ``None`` when it cannot be opened
        (a pure function of the storage key and the bytes, so a payload that
        fails fails the same way again and is remembered as such)."""
        storage_key, payload = key
        try:
            data, custom_json = d.decode(self.crypto.open(payload, storage_key))
        except EnvelopeError as exc:
            self._warn_envelope(str(exc))
            return None
        except ValueError:
            self._warn_envelope("undecodable session data")
            return None
        template: dict[str, Any] | None = None
        if (
            len(custom_json) <= MAX_TEMPLATE_JSON
            and custom_json.count(b"[") + custom_json.count(b"{") <= MAX_TEMPLATE_CONTAINERS
        ):
            try:
                template = d.load_custom(custom_json)
            except ValueError:
                template = {}
        return data, custom_json, template

    def _open(
        self, verified: VerifiedCookie, record: SessionRecord, now: float
    ) -> Session | _Expired | None:
        """The session stored in ``record``: ``None`` when it cannot be opened,
        :class:`_Expired` when it outlived its lifetime or idle timeout."""
        key = verified.storage_key
        opened = self._opened[(key, record.payload)]
        if opened is None:
            return None
        # The opened data and parsed custom data are immutable templates,
        # possibly shared with other requests: the Session copies them before
        # the first change (Session.own_data, and its custom-data access).
        data, custom_json, template = opened
        cfg = self.config
        idle = cfg.idle_timeout
        if now >= data.created_at + cfg.max_age or (
            idle is not None and now >= data.last_seen_at + idle
        ):
            return _Expired(key, data.auth_state)
        session = Session(self, data, custom_json, verified.session_id, key, True, template)
        if verified.needs_resign:
            session.resign = True
        if idle is not None and now - data.last_seen_at >= cfg.touch_interval:
            session.own_data().last_seen_at = now
            session.mark_dirty()
        return session

    async def _expire(self, expired: _Expired, scope: Scope) -> None:
        await self.store.delete_session(expired.key)
        self._emit("session_expired", expired.key, expired.auth_state, scope=scope)

    async def _settle_binding(self, scope: Scope, session: Session, now: float) -> None:
        """A bound session whose fingerprint check did not simply match: reload
        the tenant's pepper state if due, re-bind after a pepper or
        fingerprint-key rotation (no logout), apply the policy on a mismatch.

        Raises :class:`StoreError` when the pepper state cannot be loaded.
        """
        binding = self.binding
        assert binding is not None
        verdict = binding.check(scope, session._data, True, now)
        if verdict is None:  # the tenant's pepper state is due for a reload
            await binding.peppers.refresh(session._data.tenant_id)
            verdict = binding.check(scope, session._data, False, now)
        if verdict is None or verdict < 0:  # (None: still unknown; fail closed)
            await self._on_binding_mismatch(session, scope)
        elif verdict > 0:  # pepper or fingerprint key rotated: re-bind, no logout
            binding.rebind(scope, session.own_data())
            session.mark_dirty()

    async def _on_binding_mismatch(self, session: Session, scope: Scope) -> None:
        binding = self.binding
        assert binding is not None
        state = session._data.auth_state
        binding.mismatch(d.user_of(state), session._data.tenant_id)
        policy = binding.policy.on_mismatch
        self._emit("session_binding_mismatch", session.loaded_key or "", state, policy, scope)
        if policy == "warn":
            return
        if policy == "reauth":
            if isinstance(state, d.Authenticated):
                session.set_auth_state(d.step_up(state, binding.policy.reauth_factors))
                return
            if isinstance(state, d.Authenticating) and state.method == "step_up":
                return  # already waiting for the step-up
        # Revoked as a probable stolen cookie: the trail must not call it a logout.
        await session.invalidate_for(scope, "binding_mismatch")

    def _warn_envelope(self, what: str) -> None:
        if what not in self._envelope_warned:
            self._envelope_warned.add(what)
            logger.warning(
                "stored session could not be opened (%s); starting a guest session", what
            )

    # -- commit ---------------------------------------------------------------------
    async def commit(self, scope: Scope, session: Session, had_cookie: bool) -> bytes | None:
        """Persist what the request changed. Returns the Set-Cookie value, if any.

        Raises :class:`StoreError` when a write the response depends on failed.
        """
        if session.unchanged_since_load():
            session.committed_key = session.loaded_key
            return None
        now = self.clock.time()
        data = session.own_data()  # _bind and _describe_client may change it
        new_custom = self._custom_json_within_cap(session)
        custom_changed = new_custom is not None
        custom_json = new_custom if new_custom is not None else session.stored_custom_json
        is_guest = isinstance(data.auth_state, d.Guest)
        await self._bind(scope, session, data)
        session.committed_key = None

        if session.persisted_sid is None:
            if is_guest and custom_json == b"{}" and not session.rotate_pending:
                # Nothing worth storing: never persist an empty guest.
                return self._clear_cookie() if had_cookie and not session.stand_in else None
            if session.stand_in:
                # Storing it would replace the cookie of the session the
                # store could not read (signing that client out): refused.
                raise StoreError("session store unavailable", substore="sessions")
            sid = session.take_next_session_id()
            key = storage_key(sid)
            _describe_client(scope, data)
            record = self._record(key, data, custom_json, now)
            if not await self.store.create_session(record):
                raise StoreError("session id collision", substore="sessions")
            session.committed_key = key
            self.metrics.session_created()
            self._emit("session_created", key, data.auth_state, scope=scope)
            await self._within_session_cap(session, key, now, scope)
            return self._set_cookie(sid, data, now)

        old_sid = session.persisted_sid
        old_key = session.loaded_key or storage_key(old_sid)
        if session.rotate_pending:
            sid = session.take_next_session_id()
            key = storage_key(sid)
            _describe_client(scope, data)
            record = self._record(key, data, custom_json, now)
            if not await self.store.cycle_session(old_key, record, now):
                # The row vanished (revoked or expired mid-request): fail closed
                # to a guest rather than recreating it.
                logger.info("session %s revoked during the request; not rotated", old_key[:8])
                return self._clear_cookie()
            session.committed_key = key
            self._emit("session_rotated", key, data.auth_state, scope=scope)
            await self._within_session_cap(session, key, now, scope)
            return self._set_cookie(sid, data, now)

        if session.meta_dirty or custom_changed:
            record = self._record(old_key, data, custom_json, now)
            if not await self.store.save_session(record, now):
                logger.info("session %s revoked during the request; not saved", old_key[:8])
                return self._clear_cookie()
        session.committed_key = old_key
        if session.resign:
            return self._set_cookie(old_sid, data, now)
        return None

    async def _bind(self, scope: Scope, session: Session, data: d.SessionData) -> None:
        """Bind at the first non-guest transition and on every (re)authentication."""
        if self.binding is None or isinstance(data.auth_state, d.Guest):
            return
        entering = session.rotate_pending and isinstance(data.auth_state, d.Authenticated)
        if data.fingerprint is None or entering:
            data.fingerprint, data.pepper_version = await self.binding.bind(scope, data.tenant_id)

    def _custom_json_within_cap(self, session: Session) -> bytes | None:
        """New custom JSON if the request changed it and it fits; else None."""
        custom = session.loaded_custom
        if custom is None:
            return None
        try:
            new = d.dump_custom(custom)
        except (TypeError, ValueError):
            logger.warning("session custom data is not JSON-serializable; change discarded")
            session.revert_custom()
            return None
        if new == session.stored_custom_json:
            return None
        cap = self.config.max_custom_bytes
        if cap and len(new) > cap:
            logger.warning(
                "session custom data exceeds size limit (%d > %d bytes); change discarded",
                len(new),
                cap,
            )
            self.metrics.session_size_exceeded()
            session.revert_custom()
            return None
        return new

    def _record(
        self, key: str, data: d.SessionData, custom_json: bytes, now: float
    ) -> SessionRecord:
        plaintext = d.encode(data, custom_json)
        return SessionRecord(
            key=key,
            payload=self.crypto.seal(plaintext, key),
            expires_at=self._expires_at(data),
            created_at=data.created_at,
            user_id=d.user_of(data.auth_state),
            tenant_id=d.tenant_of(data.auth_state),
        )

    def _expires_at(self, data: d.SessionData) -> float:
        cfg = self.config
        end = data.created_at + cfg.max_age
        if cfg.idle_timeout is not None:
            end = min(end, data.last_seen_at + cfg.idle_timeout)
        return end

    async def _enforce_session_cap(
        self, state: d.AuthState, keep: str, now: float, scope: Scope
    ) -> bool:
        """Keep the user's newest ``max_sessions_per_user`` sessions in the
        tenant, by (creation time, storage key), and delete the others; False
        when ``keep``, the row this request just wrote, is not among the
        survivors (deleted here or by a concurrent login).

        Every login orders the rows the same way, even against its own row:
        two logins at once that each spared their own and deleted the other's
        would leave the user none (book: Sessions, "Revocation and log out
        everywhere")."""
        cap = self.config.max_sessions_per_user
        user = d.user_of(state)
        if cap is None or user is None or not isinstance(state, d.Authenticated):
            return True
        tenant = state.tenant
        # The stores read tenant None as "any tenant"; the default tenant's
        # cap counts the default tenant's rows only.
        rows = sorted(
            (
                row
                for row in await self.store.list_user_sessions(user, now, tenant_id=tenant)
                if row.tenant_id == tenant
            ),
            key=lambda row: (row.created_at, row.key),
        )
        survivors = rows[-cap:]
        for row in rows[:-cap]:
            if await self.store.delete_session(row.key):
                self.metrics.session_invalidated()
                self._emit("session_invalidated", row.key, state, "max_sessions_per_user", scope)
        return any(row.key == keep for row in survivors)

    async def _within_session_cap(
        self, session: Session, key: str, now: float, scope: Scope
    ) -> None:
        """Apply ``max_sessions_per_user`` after ``key`` was written.

        Raises :class:`_CapEvicted` when ``key`` itself did not survive.
        """
        if not await self._enforce_session_cap(session.data_for_commit.auth_state, key, now, scope):
            session.committed_key = None
            raise _CapEvicted

    async def invalidate_handle(
        self, session: Session, scope: Scope | None = None, reason: str = "logout"
    ) -> None:
        if session.loaded_key is not None and session.persisted_sid is not None:
            if not await self.store.delete_session(session.loaded_key):
                await self._delete_successor(session)
            self.metrics.session_invalidated()
            self._emit(
                "session_invalidated",
                session.loaded_key,
                session.data_for_commit.auth_state,
                reason,
                scope,
            )

    async def _delete_successor(self, session: Session) -> None:
        """The logout found its row gone. If another request of this session
        rotated it meanwhile (``regenerate()`` keeps the creation time), the
        row it rotated to is this session under a new id, its cookie already
        sent: it goes too, or the logout would be undone. Found through the
        user's index, by the creation time sealed in the payload."""
        user = session.arrived_auth.user
        if user is None:
            return  # a guest row is in no index (and signs nobody in)
        created_at = session.data_for_commit.created_at
        rows = await self.store.list_user_sessions(
            user, self.clock.time(), tenant_id=session.arrived_auth.tenant
        )
        for row in rows:
            opened = self._opened[(row.key, row.payload)]
            if opened is not None and opened[0].created_at == created_at:
                logger.info("session %s rotated during the logout; deleted too", row.key[:8])
                await self.store.delete_session(row.key)

    # -- cookies ----------------------------------------------------------------------
    def _attributes(self) -> str:
        cfg = self.config
        parts = [f"Path={cfg.path}"]
        if cfg.domain:
            parts.append(f"Domain={cfg.domain}")
        if cfg.http_only:
            parts.append("HttpOnly")
        if cfg.secure:
            parts.append("Secure")
        parts.append("SameSite=" + cfg.same_site.capitalize())
        return "; ".join(parts)

    def _set_cookie(self, sid: str, data: d.SessionData, now: float) -> bytes:
        # Max-Age follows the absolute lifetime only: the idle timeout is
        # enforced server-side, and touches do not re-send the cookie.
        remaining = max(0, math.floor(data.created_at + self.config.max_age - now))
        value = self.signer.sign(sid)
        return (
            f"{self.config.resolved_cookie_name}={value}; Max-Age={remaining}; {self._cookie_attrs}"
        ).encode()

    def _clear_cookie(self) -> bytes:
        return (
            f"{self.config.resolved_cookie_name}=; Max-Age=0; "
            f"Expires=Thu, 01 Jan 1970 00:00:00 GMT; {self._cookie_attrs}"
        ).encode()

    # -- misc ---------------------------------------------------------------------------
    def _emit(
        self,
        kind: Any,
        key: str,
        state: d.AuthState,
        reason: str | None = None,
        scope: Scope | None = None,
    ) -> None:
        """Hand a session event to the hook, with the client (IP, User-Agent)
        of ``scope``, the request that caused it, when there is one."""
        hook = self.on_event
        if hook is None:
            return
        try:
            ip = user_agent = None
            if scope is not None:
                ip, ua = _client(scope)
                if ua is not None:
                    user_agent = ua[:_UA_EVENT_CHARS].decode("latin-1")
            hook(
                SessionEvent(
                    kind,
                    key[:KEY_PREFIX_CHARS],
                    d.user_of(state),
                    d.tenant_of(state),
                    reason,
                    ip,
                    user_agent,
                )
            )
        except Exception:
            logger.exception("session event hook failed")

    async def _evicted(self, scope: Scope, send: Send) -> None:
        """Answer a request whose session the cap ended as it was stored: the
        app's answer (a login's "authenticated") would claim a session that
        no longer exists, so it is replaced by a 401 that clears the cookie.
        The client is a guest again and may log in anew (book: Sessions,
        "Revocation and log out everywhere")."""
        clear = (b"set-cookie", self._clear_cookie())

        async def send_clearing(message: Message) -> None:
            if message["type"] == "http.response.start":
                mutable_headers(message).append(clear)
                vary_cookie(message)
            await send(message)

        refusal = Refusal(
            401,
            "unauthenticated",
            "newer sessions of this account took this one's place (max_sessions_per_user)",
        )
        await self.refuse(scope, disconnected, send_clearing, refusal)

    async def _unavailable(self, scope: Scope, send: Send) -> None:
        self.metrics.store_error("sessions")
        self._warn.warning("unavailable", "session store unavailable; answering 503")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})
            return
        refusal = Refusal(
            503, "service_unavailable", "session store unavailable", self.config.retry_after
        )
        await self.refuse(scope, disconnected, send, refusal)


_UA_SUMMARY_CHARS: Final = 120


#: Longest User-Agent passed on in session events (the audit field's cap).
_UA_EVENT_CHARS: Final = 512


def _is_stored(session: Session | _Expired) -> bool:
    """Whether ``session`` is a live stored session (not expired, not a guest
    standing in for a cookie that names nothing)."""
    return isinstance(session, Session) and session.persisted_sid is not None


def _client(scope: Scope) -> tuple[str | None, bytes | None]:
    """The request's client IP (resolved, else the peer) and raw User-Agent."""
    return scope_ip(scope), request_headers(scope).get(b"user-agent")


def _describe_client(scope: Scope, data: d.SessionData) -> None:
    """Record a coarse client description for "your sessions" pages."""
    ip, ua = _client(scope)
    data.ip_prefix = ip_prefix(ip) if ip is not None else None
    if ua is not None:
        data.user_agent = ua[:_UA_SUMMARY_CHARS].decode("latin-1")
