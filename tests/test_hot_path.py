"""The per-process memos and shared templates of the request path.

Every other test file builds a fresh app (fresh memos) per request; these
keep one app alive so later requests really take the warm path, and check
that a warm answer never outlives a change of what it was computed from.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from helpers import SESSION_COOKIE, CountingStore, client, cookie_of, make_bound_auth
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from axess import (
    Axess,
    ConfigurationError,
    MockClock,
    SessionConfig,
    get_session,
)
from axess._cache import Memo
from axess.session.binding import BindingPolicy
from axess.session.cookie import find_cookie
from axess.stores.base import SessionRecord

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"
HOME = {"x-forwarded-for": "198.51.100.10", "user-agent": UA, "accept-language": "en-GB,en"}


class StaleReadStore(CountingStore):
    """Answers every load with the first record it ever returned for that key,
    like a lagging replica: the same sealed payload comes back after a write."""

    def __init__(self) -> None:
        super().__init__()
        self.first: dict[str, SessionRecord] = {}
        self.stale = False

    def _load(self, key: str, now: float) -> SessionRecord | None:
        record = super()._load(key, now)
        if record is not None and self.stale:
            return self.first.setdefault(key, record)
        return record


async def whoami(request: Request) -> JSONResponse:
    s = get_session(request)
    return JSONResponse({"user": s.user_id, "ua": s.data.user_agent})


async def tamper(request: Request) -> JSONResponse:
    # Changing the metadata object directly is not an API, but it must stay
    # local to this request (it must not leak through the shared template).
    get_session(request).data.user_agent = "tampered"
    return JSONResponse({})


async def login(request: Request) -> JSONResponse:
    get_session(request).authenticate("alice", "acme")
    return JSONResponse({})


def make(
    store: CountingStore | None = None,
    policy: BindingPolicy | None = None,
    memo_size: int = 8192,
    **session: Any,
) -> tuple[Axess, Starlette]:
    auth = make_bound_auth(
        store,
        seed=5,
        session=SessionConfig(**session),
        binding=policy,
        memo_size=memo_size,
    )
    app = Starlette(
        routes=[
            Route("/read", whoami),
            Route("/tamper", tamper),
            Route("/login", login, methods=["POST"]),
        ]
    )
    auth.install(app)
    return auth, app


async def signed_in(c: httpx.AsyncClient, headers: dict[str, str] = HOME) -> str:
    r = await c.post("/login", headers=headers)
    cookie = cookie_of(r)
    assert cookie
    c.cookies.set(SESSION_COOKIE, cookie)
    # Warm every memo on the path: the next requests are pure hits.
    for _ in range(2):
        assert (await c.get("/read", headers=headers)).json()["user"] == "alice"
    return cookie


@pytest.mark.parametrize(
    "change",
    [
        {"user-agent": "curl/8.0"},
        {"x-forwarded-for": "203.0.113.10"},  # another /24
        {"accept-language": "fr-FR"},
    ],
)
async def test_a_warm_binding_verdict_never_covers_a_changed_client(change: dict[str, str]) -> None:
    auth, app = make(policy=BindingPolicy(accept_language=True))
    async with client(app) as c:
        await signed_in(c)
        r = await c.get("/read", headers={**HOME, **change})
    assert r.json()["user"] is None and cookie_of(r) == ""  # revoked
    assert await auth.list_sessions("alice") == []


async def test_a_warm_binding_verdict_survives_a_harmless_change() -> None:
    _, app = make(policy=BindingPolicy(accept_language=True))
    async with client(app) as c:
        await signed_in(c)
        moved = {**HOME, "x-forwarded-for": "198.51.100.77", "accept-language": "en-US"}
        assert (await c.get("/read", headers=moved)).json()["user"] == "alice"


async def test_changing_the_metadata_object_stays_inside_the_request() -> None:
    _, app = make()
    async with client(app) as c:
        await signed_in(c)
        await c.get("/tamper", headers=HOME)
        assert (await c.get("/read", headers=HOME)).json()["ua"] == UA


async def test_an_idle_touch_never_changes_the_shared_template() -> None:
    store = StaleReadStore()
    auth, app = make(store, idle_timeout=3600, touch_interval=60)
    async with client(app) as c:
        await signed_in(c)
        store.stale = True
        await c.get("/read", headers=HOME)  # records the payload every later load returns
        saves = store.calls["save_session"]
        assert isinstance(auth.clock, MockClock)
        auth.clock.advance(120)
        await c.get("/read", headers=HOME)  # touches: last_seen_at moves, row saved
        assert store.calls["save_session"] == saves + 1
        # The same stale payload again: had the touch changed the memoized
        # template in place, this request would see a fresh last_seen_at and
        # not touch; it must touch (and save) again.
        await c.get("/read", headers=HOME)
        assert store.calls["save_session"] == saves + 2


async def test_a_pepper_rebind_never_changes_the_shared_template() -> None:
    store = StaleReadStore()
    auth, app = make(store)
    async with client(app) as c:
        await signed_in(c)
        store.stale = True
        await c.get("/read", headers=HOME)
        await auth.rotate_fingerprint_pepper("acme")
        saves = store.calls["save_session"]
        assert (await c.get("/read", headers=HOME)).json()["user"] == "alice"
        assert store.calls["save_session"] == saves + 1  # re-bound
        assert (await c.get("/read", headers=HOME)).json()["user"] == "alice"
        assert store.calls["save_session"] == saves + 2  # the stale payload re-binds again


def test_memo_size_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="memo_size"):
        make(memo_size=0)


async def test_tiny_memos_bound_memory_and_change_no_answer() -> None:
    auth, app = make(memo_size=1)
    clients = [{"x-forwarded-for": f"198.51.{i}.10", "user-agent": f"{UA} #{i}"} for i in range(4)]
    cookies = []
    async with client(app) as c:
        for headers in clients:
            c.cookies.clear()  # each login is a different browser
            r = await c.post("/login", headers=headers)
            cookies.append(cookie_of(r))
        for _ in range(2):  # every lookup misses, every insert evicts another client
            for cookie, headers in zip(cookies, clients, strict=True):
                c.cookies.clear()
                c.cookies.set(SESSION_COOKIE, cookie or "")
                assert (await c.get("/read", headers=headers)).json()["user"] == "alice"
        # A thief is still caught with a one-entry verdict memo.
        c.cookies.clear()
        c.cookies.set(SESSION_COOKIE, cookies[0] or "")
        r = await c.get("/read", headers={**clients[0], "user-agent": "curl/8.0"})
        assert r.json()["user"] is None
    session_stage = app.middleware_stack
    while not hasattr(session_stage, "stages"):
        session_stage = session_stage.app
    memos = [
        m for stage in session_stage.stages for m in vars(stage).values() if isinstance(m, Memo)
    ]
    assert memos and all(len(m) <= 1 for m in memos)
    assert len(auth.binding._verdicts) <= 1


_names = st.sampled_from(["axess.sid", "axess.csrf", "xaxess.sid", "sid", "a"])
_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_pairs = st.lists(st.tuples(_names, _values), max_size=6)
_separators = st.sampled_from(["; ", ";", " ; ", ";\t"])


@given(
    headers=st.lists(st.tuples(_pairs, _separators, st.integers(0, 2000)), max_size=8),
    capacity=st.integers(1, 4),
)
def test_memo_answers_like_its_function(
    headers: list[tuple[list[tuple[str, str]], str, int]], capacity: int
) -> None:
    """A memo hit is indistinguishable from recomputing, whatever the order
    of inputs, evictions, and keys over the key bound (never stored)."""
    memo: Memo[bytes | None, bytes | None] = Memo(
        lambda h: find_cookie(h, b"axess.sid"), capacity, max_key_bytes=1024
    )
    seen: list[bytes | None] = [None]
    for pairs, sep, pad in headers:
        header = sep.join(f"{k}={v}" for k, v in pairs).encode("latin-1")
        if pad:  # beyond the key bound too
            header += f"{sep}filler={'f' * pad}".encode("latin-1")
        seen.append(header)
    for header in seen + seen[::-1]:
        assert memo[header] == find_cookie(header, b"axess.sid")
        assert len(memo) <= capacity
        assert all(k is None or len(k) <= 1024 for k in memo)


# -- custom data: shared parsed template, copy on write ----------------------------
async def prefs(request: Request) -> JSONResponse:
    s = get_session(request)
    if request.method == "POST":
        s["theme"] = "dark"
        s["cart"] = [1]
        return JSONResponse({})
    return JSONResponse({"theme": s.get("theme"), "missing": s.get("nope"), "in": "theme" in s})


async def add_to_cart(request: Request) -> JSONResponse:
    get_session(request)["cart"].append(int(request.query_params["n"]))  # in place
    return JSONResponse({})


async def cart(request: Request) -> JSONResponse:
    return JSONResponse({"cart": get_session(request).get("cart")})


def make_prefs(store: CountingStore, **session: Any) -> Starlette:
    auth = make_bound_auth(store, seed=5, session=SessionConfig(**session))
    app = Starlette(
        routes=[
            Route("/prefs", prefs, methods=["GET", "POST"]),
            Route("/add", add_to_cart, methods=["POST"]),
            Route("/cart", cart),
            Route("/login", login, methods=["POST"]),
        ]
    )
    auth.install(app)
    return app


async def test_reading_small_custom_scalars_parses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from axess.session import data as session_data

    store = CountingStore()
    app = make_prefs(store)
    parses: list[bytes] = []
    real = session_data.load_custom

    def counting(raw: bytes) -> dict[str, Any]:
        parses.append(raw)
        return real(raw)

    monkeypatch.setattr(session_data, "load_custom", counting)
    async with client(app) as c:
        await signed_in_prefs(c)
        await c.get("/prefs", headers=HOME)  # opens the new payload (parses it once)
        parses.clear()
        writes = store.writes
        for _ in range(3):
            r = await c.get("/prefs", headers=HOME)
            assert r.json() == {"theme": "dark", "missing": None, "in": True}
            assert cookie_of(r) is None and "cookie" in r.headers["vary"].lower()
    assert parses == []  # warm reads of a scalar: no JSON parse
    assert store.writes == writes  # and nothing written


async def signed_in_prefs(c: httpx.AsyncClient) -> None:
    r = await c.post("/login", headers=HOME)
    c.cookies.set(SESSION_COOKIE, cookie_of(r) or "")
    r = await c.post("/prefs", headers=HOME)
    assert r.status_code == 200


async def test_in_place_changes_of_a_read_list_are_saved_and_stay_private() -> None:
    store = CountingStore()
    app = make_prefs(store)
    async with client(app) as c:
        await signed_in_prefs(c)
        assert (await c.get("/cart", headers=HOME)).json() == {"cart": [1]}
        await c.post("/add?n=2", headers=HOME)  # nested mutation: detected, saved
        assert (await c.get("/cart", headers=HOME)).json() == {"cart": [1, 2]}


async def test_a_refused_in_place_change_never_reaches_the_shared_template() -> None:
    store = CountingStore()
    app = make_prefs(store, max_custom_bytes=64)
    async with client(app) as c:
        await signed_in_prefs(c)
        assert (await c.get("/cart", headers=HOME)).json() == {"cart": [1]}  # warm
        writes = store.writes
        # Over the size cap: the change is refused and the stored version kept.
        await c.post("/add?n=" + "9" * 80, headers=HOME)
        assert store.writes == writes
        assert (await c.get("/cart", headers=HOME)).json() == {"cart": [1]}
