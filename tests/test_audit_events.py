"""AuthEvent: the catalogue's wire strings, construction with the injected
clock, the JSON form, and that no secret ever reaches it."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from axess.audit import AuditPipeline, StoreSink
from axess.audit.events import (
    DEFAULT_STATUS,
    EVENT_TYPES,
    FIELD_LIMITS,
    REDACTED,
    AuthEvent,
    EventStatus,
    EventType,
    is_secret_name,
    new_event_id,
    sanitize_extras,
)
from axess.clock import MockClock, SeededRandom
from axess.session.events import SessionEvent
from axess.stores import MemoryStore

#: The wire strings are a public contract: this list only ever grows.
WIRE = {
    "login_attempt",
    "authenticated",
    "factor_verified",
    "factor_failed",
    "logout",
    "session_created",
    "session_rotated",
    "session_invalidated",
    "session_expired",
    "session_binding_mismatch",
    "lockout_triggered",
    "lockout_cleared",
    "rate_limited",
    "password_changed",
    "totp_enrolled",
    "totp_disabled",
    "recovery_code_used",
    "recovery_codes_regenerated",
    "account_suspended",
    "account_activated",
    "authz_denied",
}
JSON_KEYS = (
    "v id type status time tenant user session ip user_agent request_id factor lever reason actor "
    "extras"
).split()


def test_wire_strings_are_stable() -> None:
    assert EVENT_TYPES == WIRE
    assert {s.value for s in EventStatus} == {"success", "failure", "info"}
    assert set(DEFAULT_STATUS) == WIRE
    assert EventType.SESSION_BINDING_MISMATCH == "session_binding_mismatch"
    assert DEFAULT_STATUS["factor_failed"] == "failure"
    assert DEFAULT_STATUS["authenticated"] == "success"


def test_create_uses_the_injected_clock_and_randomness() -> None:
    clock = MockClock(1_767_225_600.25)
    a = AuthEvent.create("authenticated", clock=clock, random=SeededRandom(3), user="alice")
    b = AuthEvent.create("authenticated", clock=clock, random=SeededRandom(3), user="alice")
    assert a.time == 1_767_225_600_250_000 and a.status == "success"
    assert a.id == b.id  # deterministic under a seeded Random
    u = uuid.UUID(a.id)
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert int(a.id.replace("-", "")[:12], 16) == a.time // 1000  # time-ordered prefix
    clock.advance(0.002)
    later = AuthEvent.create("logout", clock=clock, random=SeededRandom(0))
    assert later.id > a.id
    custom = AuthEvent.create("app.export", clock=clock, random=SeededRandom(0))
    assert custom.status == "info"


def test_event_ids_are_unique() -> None:
    rnd = SeededRandom(9)
    ids = {new_event_id(1_767_225_600_000_000, rnd) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_json_form_has_every_field_in_a_fixed_order_and_roundtrips() -> None:
    event = AuthEvent.create(
        "factor_failed",
        clock=MockClock(),
        random=SeededRandom(1),
        tenant="acme",
        user="zoë",
        session="0123456789abcdef" * 4,
        ip="192.0.2.7",
        user_agent="UA",
        request_id="r1",
        factor="totp",
        lever="user",
        reason="bad code",
        actor="admin",
        extras={"attempt": 2, "nested": {"x": [1, 2.5, None, True]}},
    )
    data = json.loads(event.to_json())
    assert list(data) == JSON_KEYS
    assert data["v"] == 1 and data["session"] == "0123456789ab"
    assert "\n" not in event.to_json()
    assert AuthEvent.from_json(event.to_json()) == event
    assert AuthEvent.from_dict(event.to_dict()) == event
    bare = AuthEvent(id="e1", type="logout", status="success", time=1)
    assert json.loads(bare.to_json())["tenant"] is None


def test_fields_are_cut_to_their_limits() -> None:
    long = "x" * 2000
    e = AuthEvent(
        id="e1", type="logout", status="info", time=0, user_agent=long, reason=long, session=long
    )
    assert len(e.user_agent or "") == FIELD_LIMITS["user_agent"]
    assert len(e.reason or "") == FIELD_LIMITS["reason"]
    assert e.session == "x" * 12


def test_nul_and_lone_surrogates_are_replaced_everywhere() -> None:
    from axess.audit.recovery import encode_entry

    text = "a\x00b\ud800c\udfffé"
    clean = "a\ufffdb\ufffdc\ufffdé"
    event = AuthEvent.create(
        "logout",
        clock=MockClock(),
        random=SeededRandom(1),
        user_agent=text,
        tenant=text,
        extras={text: text, "list": [text]},
    )
    assert event.user_agent == event.tenant == clean
    assert event.extras == {clean: clean, "list": [clean]}
    # Every sink and the recovery log can encode it now.
    encode_entry(event, ["sql"]).encode("utf-8")
    assert AuthEvent.from_json(event.to_json().encode("utf-8")) == event
    # Replayed or hand-built events are normalized the same way.
    assert AuthEvent.from_dict({**event.to_dict(), "user": text}).user == clean
    ok = AuthEvent.create("logout", clock=MockClock(), random=SeededRandom(1), user="ü-42")
    assert ok.user == "ü-42"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": ""}, "id"),
        ({"id": "a b"}, "id"),
        ({"type": "Bad Type"}, "type"),
        ({"status": "maybe"}, "status"),
        ({"time": -1}, "time"),
        ({"time": 1.5}, "time"),
        ({"time": True}, "time"),
    ],
)
def test_invalid_events_are_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"id": "e1", "type": "logout", "status": "info", "time": 0}
    with pytest.raises(ValueError, match=message):
        AuthEvent(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"v": 2, "id": "e", "type": "logout", "status": "info", "time": 0}',
        '{"id": "e", "type": "logout", "status": "info", "time": "0"}',
        '{"id": "e", "type": "logout", "status": "info", "time": 0, "extras": []}',
        '{"id": "e", "type": "logout", "status": "info", "time": 0, "user": 5}',
        "\xff",
    ],
)
def test_malformed_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        AuthEvent.from_json(text)


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "new_password",
        "otp_code",
        "totpCode",
        "recovery_codes",
        "api_key",
        "apiKey",
        "session_id",
        "sid",
        "Authorization",
        "csrf-token",
        "client_secret",
        "password_hash",
        "cookie",
    ],
)
def test_secret_names_are_redacted(name: str) -> None:
    assert is_secret_name(name)
    e = AuthEvent(id="e1", type="logout", status="info", time=0, extras={name: "hunter2"})
    assert e.extras == {name: REDACTED}
    assert "hunter2" not in e.to_json()


@pytest.mark.parametrize("name", ["attempt", "kid", "method", "count", "path", "policy"])
def test_ordinary_names_are_kept(name: str) -> None:
    assert not is_secret_name(name)


def test_extras_are_sanitized() -> None:
    class Secretive:
        def __repr__(self) -> str:
            return "hunter2"

    cleaned = sanitize_extras(
        {
            "obj": Secretive(),
            "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}},
            "nan": float("nan"),
            "tuple": (1, 2),
            "inner": {"password": "hunter2", "ok": 1},
            "long": "y" * 5000,
        }
    )
    text = json.dumps(cleaned)
    assert "hunter2" not in text
    assert cleaned["obj"] == "<Secretive>"
    assert cleaned["nan"] is None and cleaned["tuple"] == [1, 2]
    assert cleaned["inner"] == {"password": REDACTED, "ok": 1}
    assert "[too deep]" in text and len(cleaned["long"]) == 1024  # type: ignore[arg-type]
    assert sanitize_extras({f"k{i}": "z" * 1000 for i in range(20)}) == {"_truncated": True}


_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789 é", max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)
_names = st.sampled_from(["password", "otp", "token", "api_key", "sessionId", "pin"])


@given(
    extras=st.dictionaries(_text, _json, max_size=6),
    name=_names,
    secret=st.text(min_size=4, max_size=20).map(lambda t: "#!" + t),
)
def test_no_secret_value_under_a_secret_name_ever_reaches_the_json(
    extras: dict[str, object], name: str, secret: str
) -> None:
    extras = {**extras, name: secret, "nested": {name: secret, "list": [{name: [secret]}]}}
    e = AuthEvent(id="e1", type="login_attempt", status="info", time=0, extras=extras)
    text = e.to_json()
    data = json.loads(text)  # always valid JSON
    assert secret not in text and json.dumps(secret) not in text
    assert data["extras"][name] == REDACTED
    for key in data["extras"]:
        if is_secret_name(key):
            assert data["extras"][key] == REDACTED


def test_session_events_map_to_audit_events() -> None:
    clock, rnd = MockClock(), SeededRandom(0)
    for kind, status in [
        ("session_created", "success"),
        ("session_rotated", "success"),
        ("session_invalidated", "info"),
        ("session_expired", "info"),
        ("session_binding_mismatch", "failure"),
    ]:
        e = AuthEvent.from_session_event(
            SessionEvent(kind, "abcdef0123456789", "alice", "t1", "why"),  # type: ignore[arg-type]
            clock=clock,
            random=rnd,
        )
        expected = (kind, status, "alice", "t1", "why")
        assert (e.type, e.status, e.user, e.tenant, e.reason) == expected
        assert e.session == "abcdef012345"
    star = AuthEvent.from_session_event(
        SessionEvent("session_invalidated", "*", "alice"), clock=clock, random=rnd
    )
    assert star.session is None


def test_the_json_of_a_session_event_never_holds_a_session_id() -> None:
    sid = "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg"  # 43 chars, like a real id
    e = AuthEvent.create(
        "session_created",
        clock=MockClock(),
        random=SeededRandom(0),
        session=sid,
        extras={"sid": sid},
    )
    assert sid not in e.to_json()
    assert re.search(sid[:13], e.to_json()) is None


def test_an_int_too_long_to_write_becomes_its_type_name() -> None:
    # Past the interpreter's int-to-str limit str() and json.dumps() raise:
    # record() must not, the book promises "<TypeName>" instead.
    pipeline = AuditPipeline(sinks=[StoreSink(MemoryStore())], clock=MockClock())
    event = pipeline.record("app.import_done", tenant="t", extras={"rows": 10**5000, "ok": 10**30})
    assert event.extras == {"rows": "<int>", "ok": 10**30}
    assert json.loads(event.to_json())["extras"]["rows"] == "<int>"
