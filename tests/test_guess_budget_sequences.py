"""The guess budget against any sequence of login calls (hypothesis).

An attacker who knows the victim's password but not their second factor
drives one or more sessions through any mix of one-call logins, two-step
logins, password and code steps, for the victim and for decoy identifiers,
within one lock window. Whatever the order, at most the user lever's
threshold of the victim's credentials are ever checked (right or wrong):
decoy identifiers, new sessions and restarted logins buy no extra guesses
at the victim's codes. The IP and tenant levers are set out of reach, so the
user lever alone has to hold.
"""

from __future__ import annotations

import asyncio

import httpx
from authn_app import Env, enrol_totp, make_env, wrong_codes
from hypothesis import given, settings
from hypothesis import strategies as st

from axess.authn import Lever, Lockout, LockoutPolicy
from axess.stores import MemoryStore

THRESHOLD = 5
PASSWORD = "correct horse"

#: (route, JSON body); "new" starts a fresh session (a client with no cookies).
Step = tuple[str, dict[str, str]]
_STEPS: list[Step] = [
    ("/login", {"identifier": "victim", "password": PASSWORD}),
    ("/login", {"identifier": "victim", "password": "wrong"}),
    ("/login", {"identifier": "decoy-1", "password": "x"}),
    ("/login", {"identifier": "decoy-2", "password": "x"}),
    ("/begin", {"identifier": "victim"}),
    ("/begin", {"identifier": "decoy-1"}),
    ("/factor", {"password": PASSWORD}),
    ("/factor", {"password": "wrong"}),
    ("/factor", {"totp": "guess"}),  # replaced by a wrong code for the moment
    ("/factor", {"recovery": "AAAAA-BBBBB"}),
    ("new", {}),
]


def _victim_checks(env: Env, uid: str) -> int:
    """The victim's credentials checked so far: each check (a hash of their
    password, a test of one of their codes) leaves one of these events."""
    return sum(
        e.user == uid
        and (
            (e.type == "factor_failed" and e.reason in ("wrong_password", "wrong_code"))
            or e.type == "factor_verified"
        )
        for e in env.events
    )


async def _run(steps: list[Step]) -> None:
    store = MemoryStore()
    reach = Lever(100_000, 900, 900)
    policy = LockoutPolicy(user=Lever(THRESHOLD, 900, 900), ip=reach, tenant=reach)
    env = make_env(store, lockout=Lockout(store, policy))
    env.authn.lockout._clock = env.clock
    uid = await env.add_user("victim")
    wrong = wrong_codes(await enrol_totp(env, uid), env.clock.time())
    client: httpx.AsyncClient | None = None
    try:
        for route, body in steps:
            if route == "new" or client is None:
                if client is not None:
                    await client.aclose()
                client = env.client()
                if route == "new":
                    continue
            if body.get("totp") == "guess":
                body = {"totp": next(wrong)}
            r = await client.post(route, json=body)
            assert r.status_code in (200, 401, 429), r.text
            assert r.json().get("authenticated") is not True  # no code is right
            assert _victim_checks(env, uid) <= THRESHOLD, steps
    finally:
        if client is not None:
            await client.aclose()


#: Code guesses drawn more often: they are what the budget is about.
_WEIGHTED = _STEPS + [("/factor", {"totp": "guess"})] * 5 + [_STEPS[9]]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_WEIGHTED), min_size=1, max_size=40))
def test_no_sequence_of_login_calls_checks_more_than_the_budget(steps: list[Step]) -> None:
    asyncio.run(_run(steps))


def test_decoy_logins_between_code_guesses_buy_nothing() -> None:
    """The sequence that broke the budget before: the password step, then a
    login for a new decoy (one-call or begun) before every few code guesses."""
    steps: list[Step] = [_STEPS[0]]
    for i in range(8):
        decoy = f"decoy-{i}"
        start: Step = (
            ("/login", {"identifier": decoy, "password": "x"})
            if i % 2
            else ("/begin", {"identifier": decoy})
        )
        steps += [start, *[("/factor", {"totp": "guess"})] * 4]
    asyncio.run(_run(steps))
