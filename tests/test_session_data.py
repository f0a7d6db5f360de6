"""Pure auth-state transitions and the session data format (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from axess.session import data as d


def test_password_then_totp_flow() -> None:
    s: d.AuthState = d.GUEST
    s = d.identify(s, "alice", "acme")
    s = d.require_factors(s, ("password", "totp"))
    s = d.complete_factor(s, "password", now=10.0)
    assert isinstance(s, d.Authenticating) and s.remaining == ("totp",)
    s = d.complete_factor(s, "totp", now=11.0)
    assert s == d.Authenticated("alice", "acme", 11.0, ("password", "totp"))


@pytest.mark.parametrize(
    ("fn", "state"),
    [
        (lambda s: d.identify(s, "bob"), d.Authenticated("a", None, 1.0)),
        (lambda s: d.require_factors(s, ("password",)), d.GUEST),
        (lambda s: d.complete_factor(s, "totp", 1.0), d.GUEST),
        (lambda s: d.complete_factor(s, "totp", 1.0), d.Authenticating("a", None, ("password",))),
        (lambda s: d.step_up(s, ("totp",)), d.GUEST),
        (lambda s: d.authenticate(s, "bob", None, (), 1.0), d.Authenticated("a", None, 1.0)),
        (lambda s: d.begin_workflow(s, "pw", "1"), d.GUEST),
        (lambda s: d.identify(s, ""), d.GUEST),
        # Ids every store keeps alike: MySQL would match "bob " to "bob".
        (lambda s: d.identify(s, "bob "), d.GUEST),
        (lambda s: d.authenticate(s, "bob", "acme ", (), 1.0), d.GUEST),
        (lambda s: d.authenticate(s, "b" * 256, None, (), 1.0), d.GUEST),
        (lambda s: d.authenticate(s, "bob\x00", None, (), 1.0), d.GUEST),
        (lambda s: d.require_factors(s, ()), d.Identifying("a")),
    ],
)
def test_invalid_transitions_raise(fn: object, state: d.AuthState) -> None:
    with pytest.raises(d.InvalidTransition):
        fn(state)  # type: ignore[operator]


def test_the_longest_ids_the_session_table_keeps_are_accepted() -> None:
    s = d.authenticate(d.GUEST, "u" * 255, "t" * 255, (), 1.0)
    assert (s.user, s.tenant) == ("u" * 255, "t" * 255)
    assert d.identify(d.GUEST, " bob").user == " bob"  # only a trailing space is refused


def test_step_up_and_logout() -> None:
    s = d.step_up(d.Authenticated("a", "t", 1.0, ("password",)), ("totp",))
    assert s == d.Authenticating("a", "t", ("totp",), (), "step_up")
    assert d.logout(s) is d.GUEST
    assert d.user_of(s) == "a" and d.tenant_of(s) == "t"
    assert d.user_of(d.GUEST) is None


states = st.one_of(
    st.just(d.GUEST),
    st.builds(d.Identifying, st.text(min_size=1), st.none() | st.text(min_size=1)),
    st.builds(
        d.Authenticating,
        st.text(min_size=1),
        st.none() | st.text(min_size=1),
        st.lists(st.text(min_size=1), min_size=1).map(tuple),
        st.lists(st.text(min_size=1)).map(tuple),
        st.text(min_size=1),
    ),
    st.builds(
        d.Authenticated,
        st.text(min_size=1),
        st.none() | st.text(min_size=1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.text(min_size=1)).map(tuple),
    ),
    st.builds(
        d.PendingWorkflow,
        st.text(min_size=1),
        st.none() | st.text(min_size=1),
        st.text(min_size=1),
        st.text(min_size=1),
    ),
)


@given(states, st.dictionaries(st.text(), st.integers() | st.text()))
def test_encode_decode_roundtrip(state: d.AuthState, custom: dict[str, object]) -> None:
    data = d.SessionData(
        created_at=1.5, last_seen_at=2.5, auth_state=state, tenant_id="t", user_agent="ua"
    )
    raw = d.encode(data, d.dump_custom(custom))
    back, custom_json = d.decode(raw)
    assert back.auth_state == state
    assert (back.created_at, back.last_seen_at, back.tenant_id, back.user_agent) == (
        1.5,
        2.5,
        "t",
        "ua",
    )
    assert d.load_custom(custom_json) == custom


@given(st.binary(max_size=400))
def test_decode_garbage_only_raises_value_error(raw: bytes) -> None:
    try:
        d.decode(raw)
    except ValueError:
        pass


def test_newer_data_version_refused() -> None:
    raw = d.encode(d.SessionData(1.0, 1.0), b"{}").replace(b"[1,", b"[2,", 1)
    with pytest.raises(ValueError, match="version"):
        d.decode(raw)
