"""Stages and the stack that runs them (book: Internals, "The stage contract").

Each axess middleware (client IP, session, CSRF, …) is a *stage*: ``enter``
runs before the app, ``on_response_start`` when the response starts. Used
alone, a stage is an ordinary pure-ASGI middleware. ``Axess.install`` runs
all of them in one :class:`Stack`, which costs one call frame and one send
wrapper per request instead of one per layer.

The contract is the same fused or nested, message for message:

* ``enter`` runs outermost first; a stage that answers early stops the
  request there, and its answer goes through the response hooks of the
  stages outside it (so a CSRF 403 still carries the rate limiter's
  headers and the session's cookie decisions), not its own or inner ones;
* response hooks run **outermost first** (CSRF sees the committed session).
  Plain ASGI nesting would run the innermost first, so a stack running
  inside another one hands its hooks to the outermost stack, which runs
  them after its own;
* headers queued with :func:`queue_response_headers` are added once, after
  every hook, by the outermost stack; a response hook that sends its own
  answer instead (the session's 503 when the store fails at commit) gets
  them on that answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Final

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axess.refusals import Refusal, RefusalPage, send_refusal

#: ``scope["state"]`` entry: the request headers as a dict (see
#: :func:`request_headers`). A :class:`Stack` sets it before any stage runs,
#: so stage code may read ``scope["state"][HEADERS_KEY]`` directly.
HEADERS_KEY: Final = "axess.headers"
#: ``scope["state"]`` entry: header lines queued for the response (``None``
#: when there are none). Present while a stack runs the request.
_QUEUED_KEY: Final = "axess.response_headers"
#: ``scope["state"]`` entry: response hooks handed to the outermost stack by
#: stacks running inside it (a list of hook tuples, innermost first), or
#: ``None``. Present while a stack runs an HTTP request.
_DEFERRED_KEY: Final = "axess.deferred_hooks"


def join_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Request headers as a dict: repeated ``cookie`` lines joined with ``; ``,
    other repeated headers with ``,`` (RFC 9110 list semantics), in order."""
    out: dict[bytes, bytes] = {}
    # Joined once per name at the end: appending to the value line by line
    # copies it each time, quadratic in a flood of one repeated header.
    repeated: dict[bytes, list[bytes]] = {}
    for k, v in headers:
        if k not in out:
            out[k] = v
        elif (parts := repeated.get(k)) is not None:
            parts.append(v)
        else:
            repeated[k] = [out[k], v]
    for k, parts in repeated.items():
        out[k] = (b"; " if k == b"cookie" else b",").join(parts)
    return out


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers as a dict, built once per request and shared by
    every stage (each would otherwise rescan the header list)."""
    state = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    else:
        found = state.get(HEADERS_KEY)
        if found is not None:
            return found  # type: ignore[no-any-return]
    state[HEADERS_KEY] = found = _header_dict(scope["headers"])
    return found


def _header_dict(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    found = dict(raw)  # C fast path; falls back when a name repeats
    return found if len(found) == len(raw) else join_headers(raw)


def route_path(scope: Scope) -> str:
    """The request's path as the app's router matches it, for rules that
    name paths (rate limits, exempt paths).

    That is the path without the ``root_path`` the app runs under (a
    Starlette ``Mount``, uvicorn's ``--root-path``), as Starlette routes it,
    and without one trailing newline: a route pattern's ``$`` matches before
    it, so ``/login%0A`` reaches the ``/login`` handler and must meet its rules.
    """
    path: str = scope["path"]
    root = scope.get("root_path")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        path = path[len(root) :] or "/"
    if path.endswith("\n"):
        path = path[:-1]
    return path


def queue_response_headers(scope: Scope, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Have the axess stack running this request add ``headers`` to its
    response when it starts (whatever the app answers).

    Returns False, queueing nothing, when no stack runs the request (or the
    response has already started): the caller must add them itself.
    """
    state = scope.get("state")
    if not isinstance(state, dict) or _QUEUED_KEY not in state:
        return False
    queued = state[_QUEUED_KEY]
    if queued is None:
        state[_QUEUED_KEY] = list(headers)
    else:
        queued.extend(headers)
    return True


def mutable_headers(message: Message) -> list[tuple[bytes, bytes]]:
    """The response message's header list, made a mutable list in place if needed."""
    headers = message.setdefault("headers", [])
    if not isinstance(headers, list):
        headers = message["headers"] = list(headers)
    return headers


_VARY: Final = (b"vary", b"Cookie")


def vary_cookie(message: Message) -> None:
    """Add ``Cookie`` to the ``Vary`` header of a response-start ``message`` (once).

    Header names are matched lowercase, as ASGI requires; a differently
    spelled ``Vary`` gets a second ``vary`` line, which means the same.
    """
    headers = message.get("headers")
    if type(headers) is not list:
        headers = message["headers"] = list(headers or ())
    for item in headers:
        if item[0] == b"vary":
            break
    else:
        headers.append(_VARY)
        return
    value = item[1]
    if b"cookie" not in value.lower() and value.strip() != b"*":
        headers[headers.index(item)] = (b"vary", value + b", Cookie")


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` for the rest of the app after a stage read the whole
    body: it hands out ``body`` once, then defers to ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def request_with_body(scope: Scope, body: bytes) -> Request:
    """A one-off ``Request`` whose body is ``body`` (bytes a stage already read
    from the client), e.g. to parse a multipart form; the app's own request
    keeps its own copy."""
    sent = False

    async def once() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, once)


async def send_json(
    send: Send,
    status: int,
    body: dict[str, object],
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with a small JSON body, never cached; ``headers`` are added as
    given. (Refusals go through :meth:`Stage.refuse`, which negotiates.)"""
    raw = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class Stage:
    """Base class of axess middleware.

    ``enter`` returns the ``receive`` callable for the rest of the stack
    (a stage that read the body hands on a replaying one), or ``None`` when
    it has already answered the request itself (403, 429, 503…).
    ``on_response_start`` may edit ``message`` (add headers); returning
    ``False`` means the stage sent its own response instead and the app's
    remaining messages are dropped. Response hooks run outermost first, so an
    inner stage sees what outer ones decided (CSRF sees the committed session).

    Both hooks have a synchronous twin (``enter_now``,
    ``on_response_start_now``) that a stage overrides when its usual path
    never awaits: a plain call costs far less than a coroutine on every
    request, and the stack skips twins a stage does not override. Whether a
    stage has a response hook at all is read from the class (it overrides
    one of the two), not declared.

    A stage refuses with :meth:`refuse` (JSON or the HTML page by
    ``Accept``, or the app's ``refusal_page``; ``Axess`` sets it on the
    stages it builds).
    """

    #: The app's refusal page hook (see :mod:`axess.refusals`); ``None``:
    #: the one the app carries in ``app.state``, else the default.
    refusal_page: RefusalPage | None = None

    def __init__(self, app: ASGIApp | None = None) -> None:
        self.app = app
        self._solo: Stack | None = None

    def enter_now(self, scope: Scope) -> bool:
        """Synchronous part of ``enter``: True when it handled the request
        completely (``enter`` is then skipped), False to await ``enter``."""
        return False

    async def enter(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        return receive

    def on_response_start_now(self, scope: Scope, message: Message) -> bool:
        """Synchronous part of ``on_response_start``: True when it handled the
        message completely, False to await ``on_response_start``."""
        return False

    async def on_response_start(self, scope: Scope, message: Message, send: Send) -> bool:
        return True

    async def refuse(self, scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
        """Answer the request with ``refusal`` (an early answer: ``enter``
        then returns ``None``)."""
        await send_refusal(scope, receive, send, refusal, page=self.refusal_page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        solo = self._solo
        if solo is None or solo.app is not self.app:  # (built once; again if app changed)
            if self.app is None:
                raise RuntimeError(f"{type(self).__name__} was built without an app to wrap")
            solo = self._solo = Stack(self.app, (self,))
        await solo(scope, receive, send)


def _overridden(stage: Stage, name: str) -> bool:
    return getattr(type(stage), name) is not getattr(Stage, name)


def has_response_hook(stage: Stage) -> bool:
    """Whether ``stage`` does anything when the response starts."""
    return _overridden(stage, "on_response_start") or _overridden(stage, "on_response_start_now")


_Hook = tuple[object, Stage]  # (sync twin or None, stage)


def _own_answer(state: dict[str, object], send: Send) -> Send:
    """The ``send`` a response hook answers with when it replaces the app's
    response: the queued headers go on that answer's start, as on every
    other answer. (Only the awaited hooks get it: the synchronous twins
    never answer, and the common request never builds it.)"""

    async def send_own(message: Message) -> None:
        if message["type"] == "http.response.start":
            queued = state.pop(_QUEUED_KEY, None)
            if queued:
                mutable_headers(message).extend(queued)  # type: ignore[arg-type]
        await send(message)

    return send_own


async def _run_hooks(hooks: Sequence[_Hook], scope: Scope, message: Message, send: Send) -> bool:
    """Run ``hooks`` in order; False when one sent its own response (through
    ``send``)."""
    for now, stage in hooks:
        if now is not None and now(scope, message):  # type: ignore[operator]
            continue
        if not await stage.on_response_start(scope, message, send):
            return False
    return True


class Stack:
    """Runs ``stages`` (outermost first) around ``app`` as one ASGI app."""

    def __init__(self, app: ASGIApp, stages: Sequence[Stage]) -> None:
        self.app = app
        self.stages = tuple(stages)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    @stages.setter
    def stages(self, stages: Sequence[Stage]) -> None:
        self._stages = tuple(stages)
        # (sync twin or None, stage): the twin is looked up once, not per request.
        self._enter = tuple(
            (s.enter_now if _overridden(s, "enter_now") else None, s) for s in self._stages
        )
        self._hooks: tuple[_Hook, ...] = tuple(
            (s.on_response_start_now if _overridden(s, "on_response_start_now") else None, s)
            for s in self._stages
            if has_response_hook(s)
        )
        # For each stage, the hooks of the stages outside it: those its early
        # answer goes through.
        outer: list[tuple[_Hook, ...]] = []
        count = 0
        for s in self._stages:
            outer.append(self._hooks[:count])
            count += has_response_hook(s)
        self._enter_hooks = tuple(
            (now, stage, hooks) for (now, stage), hooks in zip(self._enter, outer, strict=True)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        if HEADERS_KEY not in state:  # every stage reads them: build them once, here
            state[HEADERS_KEY] = _header_dict(scope["headers"])
        if kind != "http":  # a websocket sets no cookies: no response hooks
            for enter_now, stage in self._enter:
                if enter_now is not None and enter_now(scope):
                    continue
                next_receive = await stage.enter(scope, receive, send)
                if next_receive is None:
                    return
                receive = next_receive
            await self.app(scope, receive, send)
            return
        state.setdefault(_QUEUED_KEY, None)  # an outer stack may have queued some
        # The outermost stack runs every hook; a stack inside it hands its on.
        outermost = _DEFERRED_KEY not in state
        if outermost:
            state[_DEFERRED_KEY] = None
        hooks = self._hooks
        applies = hooks  # the hooks that apply: those of the stages entered
        suppressed = False

        async def send_wrapper(message: Message) -> None:
            nonlocal suppressed
            if suppressed:
                return
            if message["type"] == "http.response.start":
                mine = applies
                if not outermost:
                    if mine:
                        deferred = state[_DEFERRED_KEY]
                        if deferred is None:
                            state[_DEFERRED_KEY] = [mine]
                        else:
                            deferred.append(mine)
                    await send(message)
                    return
                ok = True
                for now, stage in mine:  # (inline: this runs on every request)
                    if now is not None and now(scope, message):  # type: ignore[operator]
                        continue
                    own = _own_answer(state, send)
                    if not await stage.on_response_start(scope, message, own):
                        ok = False
                        break
                inner = state[_DEFERRED_KEY]
                if ok and inner:
                    state[_DEFERRED_KEY] = None
                    own = _own_answer(state, send)
                    for more in reversed(inner):  # handed on innermost first
                        if not (ok := await _run_hooks(more, scope, message, own)):
                            break
                if not ok:
                    suppressed = True
                    return
                queued = state.pop(_QUEUED_KEY, None)
                if queued:
                    mutable_headers(message).extend(queued)
            await send(message)

        for enter_now, stage, outer_hooks in self._enter_hooks:
            if enter_now is not None and enter_now(scope):
                continue
            applies = outer_hooks
            next_receive = await stage.enter(scope, receive, send_wrapper)
            if next_receive is None:
                return
            receive = next_receive
        applies = hooks
        await self.app(scope, receive, send_wrapper)
