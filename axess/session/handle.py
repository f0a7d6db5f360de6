"""``Session``: what a handler sees as ``request.state.session``.

Custom data behaves like a dict (``session["k"] = v``). Authentication state
changes go through the pure transitions in :mod:`axess.session.data`. The
handle only records intent; :class:`~axess.session.middleware.SessionMiddleware`
persists it when the response starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection
from starlette.types import Scope

from axess.session import data as d
from axess.session.cookie import new_session_id, storage_key
from axess.session.data import AuthState, SessionData

if TYPE_CHECKING:
    from axess.session.middleware import SessionMiddleware

logger = logging.getLogger(__name__)

_EMPTY_JSON = b"{}"
#: Values a read may hand out straight from the shared, parsed template:
#: nobody can change them in place.
_IMMUTABLE: frozenset[type] = frozenset({str, int, float, bool, type(None)})


class Session(MutableMapping[str, Any]):
    """The current request's session.

    Custom data parsed from the store is a template shared by the requests
    that load the same payload (book: Sessions, "Memos"): reading a key whose
    value is a string, number, boolean or null costs a dict lookup and
    parses nothing. The first access that could change the data (setting or
    deleting a key, or reading a list or dict, which the handler might
    change in place) gives this request its own copy, and the commit
    compares its serialized bytes with the stored ones, so nested mutation
    (``session["cart"].append(x)``) is detected.
    """

    # Slots, every one set in __init__: this object is built on every request,
    # and a fixed layout keeps attribute stores cheap whatever order the
    # request sets them in (instance dicts lose key sharing when the order
    # varies, which costs far more than the stores themselves).
    __slots__ = (
        "_arrived_auth",
        "_closed",
        "_custom",
        "_custom_json",
        "_data",
        "_invalidated",
        "_meta_dirty",
        "_next_sid",
        "_owner",
        "_rotate",
        "_shared",
        "_shared_custom",
        "accessed",
        "committed_key",
        "had_cookie",
        "loaded_key",
        "persisted_sid",
        "resign",
        "stand_in",
    )

    def __init__(
        self,
        owner: SessionMiddleware,
        data: SessionData,
        custom_json: bytes = _EMPTY_JSON,
        persisted_sid: str | None = None,
        loaded_key: str | None = None,
        shared: bool = False,
        shared_custom: dict[str, Any] | None = None,
    ) -> None:
        self._owner = owner
        self._data = data
        self._arrived_auth = data.auth_state  # immutable: a snapshot, not a copy
        self._custom_json = custom_json
        #: ``custom_json`` parsed, read-only (never changed, by anyone).
        self._shared_custom = shared_custom
        #: Id of the row this session was loaded from (None for a new guest).
        self.persisted_sid = persisted_sid
        #: Storage key of that row.
        self.loaded_key = loaded_key
        #: True while ``_data`` is a template shared with other requests (the
        #: middleware's memo of opened payloads): :meth:`own_data` copies it
        #: before anything changes it, so read-only requests never copy.
        self._shared = shared
        self._custom: dict[str, Any] | None = None
        self._meta_dirty = False
        self._rotate = False
        self._invalidated = False
        #: True when the cookie verified only with a previous signing key.
        self.resign = False
        #: True once the handler read anything from the session (adds ``Vary: Cookie``).
        self.accessed = False
        #: Storage key after the commit (None: no stored session). Set by the middleware.
        self.committed_key: str | None = None
        #: Whether the request carried a session cookie (set by the middleware).
        self.had_cookie = False
        #: True for the guest standing in for a session the store could not
        #: read (``on_store_error="guest"``): its cookies are left as they are.
        self.stand_in = False
        #: Id the session will get when it is next created or rotated, chosen
        #: early so a CSRF token rendered during this request already fits it.
        self._next_sid: str | None = None
        #: Why a change can no longer be saved ("the response started", "a
        #: websocket session is read-only"); ``None`` while it can.
        self._closed: str | None = None

    def close(self, why: str) -> None:
        """Mark the session as past its commit: a later change is not saved
        and logs a warning instead of vanishing silently (the middleware
        calls this when the response starts, and for websockets)."""
        self._closed = why

    def _changing(self) -> None:
        """Called by every method that records a change."""
        if self._closed:
            logger.warning(
                "session change not saved: %s (change the session before the "
                "response starts, not in a streaming body or a background task; "
                'book: Sessions, "Commit")',
                self._closed,
            )
            self._closed = ""  # still closed; warned once per request (the first is the clue)

    def own_data(self) -> SessionData:
        """The metadata for changing it: copied first when it is shared.

        Everything that assigns to a field of the session's ``SessionData``
        must go through this (reading ``_data`` directly is fine).
        """
        if self._shared:
            self._data = self._data.clone()
            self._shared = False
        return self._data

    # -- custom data (mapping) ------------------------------------------------
    def _c(self) -> dict[str, Any]:
        self.accessed = True
        if self._custom is None:
            try:
                self._custom = d.load_custom(self._custom_json)
            except ValueError:
                self._custom = {}
        return self._custom

    def __getitem__(self, key: str) -> Any:
        custom = self._custom
        if custom is None:
            template = self._shared_custom
            if template is not None:
                self.accessed = True
                value = template[key]
                if type(value) in _IMMUTABLE:
                    return value
            custom = self._c()
        return custom[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError("session keys must be strings")
        self._changing()
        self._c()[key] = value

    def __delitem__(self, key: str) -> None:
        self._changing()
        del self._c()[key]

    def _read(self) -> dict[str, Any]:
        """The custom data for reading keys: the shared template until this
        request owns a copy."""
        if self._custom is None and self._shared_custom is not None:
            self.accessed = True
            return self._shared_custom
        return self._c()

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        if self._custom is None and self._custom_json == _EMPTY_JSON:
            self.accessed = True
            return 0  # `if session:` on an empty session costs no parse
        return len(self._read())

    def __contains__(self, key: object) -> bool:
        return key in self._read()

    def size(self) -> int:
        """Bytes the custom data takes as JSON (what the size cap measures).

        Raises ``ValueError`` (or ``TypeError``) when the data is not JSON,
        e.g. a float infinity or a lone surrogate from a parsed request body;
        such a change would be discarded at commit.
        """
        return len(d.dump_custom(self._c()))

    @property
    def stored_custom_json(self) -> bytes:
        """Custom data as loaded from the store (bytes)."""
        return self._custom_json

    @property
    def loaded_custom(self) -> dict[str, Any] | None:
        """The custom dict if a handler touched it during this request, else None."""
        return self._custom

    def revert_custom(self) -> None:
        """Drop unsaved custom changes (used when they exceed the size cap)."""
        self._custom = None

    # -- authentication state --------------------------------------------------
    @property
    def data(self) -> SessionData:
        """The session's metadata (read-only by convention; use the methods to
        change it). Changing it directly affects this request only."""
        self.accessed = True
        return self.own_data()

    @property
    def arrived_auth(self) -> AuthState:
        """The auth state the request arrived with, whatever it changed since."""
        return self._arrived_auth

    @property
    def data_for_commit(self) -> SessionData:
        """The metadata without marking the session as read (for the middleware)."""
        return self._data

    @property
    def auth_state(self) -> AuthState:
        self.accessed = True
        return self._data.auth_state

    @property
    def user_id(self) -> str | None:
        self.accessed = True
        return self._data.auth_state.user

    @property
    def tenant_id(self) -> str | None:
        self.accessed = True
        return self._data.auth_state.tenant

    @property
    def is_authenticated(self) -> bool:
        return isinstance(self.auth_state, d.Authenticated)

    @property
    def is_new(self) -> bool:
        """True when no stored row backs this session (yet)."""
        return self.persisted_sid is None

    @property
    def untouched(self) -> bool:
        """A stored session this request neither changed nor needs to re-sign."""
        return (
            self.persisted_sid is not None
            and (self._custom is None or (not self._custom and self._custom_json == _EMPTY_JSON))
            and not self._meta_dirty
            and not self._rotate
            and not self.resign
        )

    def unchanged_since_load(self) -> bool:
        """Nothing to write and no cookie to send: a stored session whose state
        and flags are untouched and whose custom data was never parsed (or is
        still empty). The commit's fast path; cheaper than comparing JSON."""
        if self.persisted_sid is None or self._meta_dirty or self._rotate or self.resign:
            return False
        custom = self._custom
        return custom is None or (not custom and self._custom_json == _EMPTY_JSON)

    @property
    def meta_dirty(self) -> bool:
        return self._meta_dirty

    @property
    def rotate_pending(self) -> bool:
        return self._rotate

    @property
    def invalidated(self) -> bool:
        return self._invalidated

    def set_auth_state(self, state: AuthState) -> None:
        """Replace the auth state (a value from the pure transitions).

        Entering ``Authenticated`` (or changing who is authenticated) rotates
        the session id. A state of another account than the session held
        (any state naming a user) starts with no custom data: nothing of the
        previous account's is handed to the next. The tenant recorded on the
        session follows the state.
        """
        self._changing()
        data = self.own_data()
        before = data.auth_state
        if (
            before.user is not None
            and not isinstance(state, d.Guest)
            and (before.user, before.tenant) != (state.user, state.tenant)
        ):
            # Another account on this session (a login over a half-finished
            # or stepped-down one): none of the previous account's data goes
            # with it (book: Sessions, "Signing in as another account").
            self._custom = {}
            self._shared_custom = None
        if isinstance(state, d.Authenticated) and before != state:
            # A login starts a new session: new id, new absolute lifetime.
            self._rotate = True
            now = self._owner.clock.time()
            data.created_at = now
            data.last_seen_at = now
        data.auth_state = state
        if not isinstance(state, d.Guest):
            data.tenant_id = state.tenant
        self._meta_dirty = True
        self.accessed = True

    def authenticate(
        self,
        user_id: str,
        tenant_id: str | None = None,
        factors: tuple[str, ...] = ("external",),
    ) -> None:
        """Mark the session authenticated for credentials the app verified itself
        (e.g. an external IdP). Rotates the session id."""
        now = self._owner.clock.time()
        self.set_auth_state(d.authenticate(self._data.auth_state, user_id, tenant_id, factors, now))

    def regenerate(self) -> None:
        """Rotate the session id at the next commit (e.g. on privilege change)."""
        self._changing()
        self._rotate = True
        self.accessed = True

    def mark_dirty(self) -> None:
        """Force a save at the end of the request."""
        self._changing()
        self._meta_dirty = True

    async def invalidate(self) -> None:
        """Log out: delete the stored row now and clear the cookie.

        The handle becomes a fresh guest; data written after this call starts
        a new session. Raises :class:`axess.errors.StoreError` if the store is
        down (the logout did not happen).
        """
        await self.invalidate_for(None)

    async def invalidate_for(self, scope: Scope | None, reason: str = "logout") -> None:
        """:meth:`invalidate`, naming the request that caused it (its client
        IP and User-Agent go into the ``session_invalidated`` event) and why
        (the event's ``reason``)."""
        await self._owner.invalidate_handle(self, scope, reason)
        now = self._owner.clock.time()
        self._data = SessionData(created_at=now, last_seen_at=now)
        self._shared = False
        self._custom_json = _EMPTY_JSON
        self._custom = None
        self._shared_custom = None  # the old session's parsed data: never read again
        self._invalidated = True
        self._rotate = False
        self._meta_dirty = False
        self.persisted_sid = None
        self.resign = False

    def next_session_id(self) -> str:
        """The id the next create/rotation will use (chosen once per request)."""
        if self._next_sid is None:
            self._next_sid = new_session_id(self._owner.random)
        return self._next_sid

    def take_next_session_id(self) -> str:
        """Use up :meth:`next_session_id` (the commit calls this)."""
        sid = self.next_session_id()
        self._next_sid = None
        return sid

    @property
    def csrf_binding(self) -> str | None:
        """What CSRF tokens rendered now must be bound to: the storage key the
        session will have after this response when it is signed in, ``None``
        (anonymous) for guests. Guests writing data keep their tokens valid;
        logging in or out changes the binding."""
        if isinstance(self._data.auth_state, d.Guest):
            return None
        if self._rotate or self.persisted_sid is None:
            return storage_key(self.next_session_id())
        return self.loaded_key

    @property
    def arrival_csrf_binding(self) -> str | None:
        """The CSRF binding of the session the request arrived with: its
        storage key if it was signed in (or signing in), else ``None``."""
        if isinstance(self._arrived_auth, d.Guest):
            return None
        return self.loaded_key

    @property
    def storage_key(self) -> str | None:
        """Storage key of the row this request loaded (None for a new guest)."""
        return self.loaded_key

    def __repr__(self) -> str:
        prefix = self.loaded_key[:8] if self.loaded_key else "new"
        return f"<Session {prefix} {self._data.auth_state.kind}>"


def get_session(conn: HTTPConnection) -> Session:
    """The current session. Usable as a FastAPI dependency (``Depends(get_session)``).

    Raises :class:`RuntimeError` if ``SessionMiddleware`` is not installed.
    """
    state = conn.scope.get("state")
    session = state.get("session") if state is not None else None
    if type(session) is Session:
        return session
    if session is None:
        raise RuntimeError(
            "no session on this request: install axess (Axess.install(app)) "
            "or add SessionMiddleware"
        )
    if not isinstance(session, Session):
        raise RuntimeError("request.state.session is not an axess Session")
    return session
