"""``axess user``: look at one account and act on it from a shell (book:
Users, "From the command line").

It imports the app's ``Axess`` object, as ``axess check`` does, so it acts
through the same stores, lockout policy and audit sinks as the app; it
never starts the app's audit pipeline (the running app holds its recovery
log) but writes the events of the action straight to its sinks at the end.
"""

from __future__ import annotations

import getpass
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

from axess.authn.lockout import lockout_keys, normalize_identifier
from axess.authn.users import UserAdmin
from axess.stores.base import DEFAULT_TENANT, UserRecord

#: ``axess user ACTION``: what each one does (the command's help).
ACTIONS: Final = {
    "show": "the account: status, factors, lockout counters, live sessions",
    "unlock": "clear the account's lockout levers (with --ip, that address's too)",
    "suspend": "suspend the account and end its sessions",
    "activate": "let a suspended account log in again",
    "logout": "end every session of the account",
}


class UserCommandError(Exception):
    """A failure to print as one line (unknown user, unusable app object)."""


@dataclass(frozen=True, slots=True)
class UserRequest:
    """One ``axess user`` invocation, parsed."""

    action: str
    identifier: str | None
    tenant: str | None
    ip: str | None
    actor: str | None


def default_actor() -> str:
    """``cli:<login name>``: who an audit event says did it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container)
        return "cli"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


async def _find(users: UserAdmin, request: UserRequest) -> UserRecord:
    assert request.identifier is not None
    try:
        user = await users.find_user(request.identifier, tenant=request.tenant)
    except ValueError as exc:
        raise UserCommandError(f"not a login identifier: {exc}") from None
    if user is None:
        where = f" in tenant {request.tenant!r}" if request.tenant else ""
        raise UserCommandError(f"no user {request.identifier!r}{where}")
    return user


async def _show(auth: Any, request: UserRequest, out: TextIO) -> None:
    users: UserAdmin = auth.users
    user = await _find(users, request)
    factors = await users.store.get_factors(user.id)
    now = auth.clock.time()
    out.write(f"user        {user.id} (tenant {user.tenant_id}, identifier {user.identifier})\n")
    out.write(f"status      {user.status}\n")
    out.write(f"created     {_when(user.created_at)}\n")
    out.write(f"last login  {_when(user.last_login_at)}\n")
    out.write(f"password    {'set' if factors.password_hash else 'none'}\n")
    totp = "on" if factors.totp_secret is not None else "off"
    out.write(f"totp        {totp}, {factors.recovery_codes} recovery code(s) left\n")
    keys = lockout_keys(user.tenant_id, user.identifier, request.ip)
    levers = [("user", keys.user)] + ([("ip", keys.ip)] if keys.ip else [])
    for name, key in levers:
        state = await auth.authn.lockout.store.lockout_state(key, now)
        if state is None:
            text = "no failures"
        elif state.locked_until > now:
            text = f"LOCKED until {_when(state.locked_until)} (lockout #{state.lockouts})"
        else:
            text = f"{state.failures} failure(s) since {_when(state.window_start)}"
        label = "lockout" if name == "user" else f"ip {request.ip}"
        out.write(f"{label:<11} {text}\n")
    sessions = await auth.users.list_sessions(user.id)  # in the user's tenant
    newest = max((s.created_at for s in sessions), default=None)
    suffix = f", newest created {_when(newest)}" if sessions else ""
    out.write(f"sessions    {len(sessions)} live{suffix}\n")


async def _unlock(auth: Any, request: UserRequest, out: TextIO) -> None:
    users: UserAdmin = auth.users
    if request.identifier is None:
        # An address alone: its IP lever (an office NAT locked by one user's typos).
        assert request.ip is not None
        keys = lockout_keys(request.tenant or DEFAULT_TENANT, "-", request.ip)
        cleared = await auth.authn.lockout.unlock(keys, levers=("ip",))
        if auth.audit is not None:
            auth.audit.record(
                "lockout_cleared",
                status="success",
                tenant=request.tenant or DEFAULT_TENANT,
                ip=request.ip,
                actor=request.actor,
                reason="ip",
            )
        out.write(f"cleared {cleared} counter(s) of {request.ip}\n")
        return
    user = await _find(users, request)
    cleared = await users.unlock(user.id, ip=request.ip, actor=request.actor)
    out.write(f"cleared {cleared} counter(s) of {user.identifier}\n")


async def _suspend(auth: Any, request: UserRequest, out: TextIO) -> None:
    user = await _find(auth.users, request)
    ended = await auth.users.suspend(user.id, actor=request.actor)
    out.write(f"suspended {user.identifier}; ended {ended} session(s)\n")


async def _activate(auth: Any, request: UserRequest, out: TextIO) -> None:
    user = await _find(auth.users, request)
    await auth.users.activate(user.id, actor=request.actor)
    out.write(f"activated {user.identifier}\n")


async def _logout(auth: Any, request: UserRequest, out: TextIO) -> None:
    user = await _find(auth.users, request)
    ended = await auth.users.logout_everywhere(user.id)  # in the user's tenant
    out.write(f"ended {ended} session(s) of {user.identifier}\n")


_RUN: Final[dict[str, Callable[[Any, UserRequest, TextIO], Awaitable[None]]]] = {
    "show": _show,
    "unlock": _unlock,
    "suspend": _suspend,
    "activate": _activate,
    "logout": _logout,
}


def check_request(request: UserRequest) -> None:
    """Raise :class:`UserCommandError` for a request no action can run."""
    if request.action not in _RUN:
        raise UserCommandError(f"unknown action {request.action!r}")
    if request.identifier is None and not (request.action == "unlock" and request.ip):
        raise UserCommandError(f"{request.action} needs an IDENTIFIER")
    if request.identifier is not None:
        try:
            normalize_identifier(request.identifier)
        except ValueError as exc:
            raise UserCommandError(f"not a login identifier: {exc}") from None
    if request.ip is not None:
        try:
            ipaddress.ip_address(request.ip)
        except ValueError:
            raise UserCommandError(f"--ip: not an IP address: {request.ip!r}") from None


async def run_user_command(auth: Any, request: UserRequest, out: TextIO, err: TextIO) -> bool:
    """Run ``request`` against ``auth`` (an ``Axess`` object whose stores
    are open) and deliver its audit events; False when an audit sink
    refused them (they are printed to ``err`` as JSON lines, to keep)."""
    if auth.authn is None or auth.users is None:
        raise UserCommandError("this Axess object has no login service (no identity store)")
    try:
        await _RUN[request.action](auth, request, out)
    finally:
        delivered = True
        if auth.audit is not None:
            failed = await auth.audit.deliver_once()
            for name, exc in failed.items():
                cause = f"{type(exc).__name__}: {exc}"
                err.write(f"audit sink {name!r} refused the event(s): {cause}\n")
                delivered = False
            for name, events in auth.audit.undelivered().items():
                err.write(f"undelivered audit events of sink {name!r} (JSON lines):\n")
                for event in events:
                    err.write(event.to_json() + "\n")
    return delivered
