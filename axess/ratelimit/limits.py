"""Limit strings and rules.

A *limit* is written ``"<count>/<period>"`` with an optional burst:
``"10/minute"``, ``"100/hour;burst=20"``, ``"5/30s"``, ``"1000 / 1 day"``.
Periods: ``s``/``sec``/``second``, ``m``/``min``/``minute``, ``h``/``hr``/
``hour``, ``d``/``day`` (plural forms too), optionally preceded by a whole
multiplier. The burst (how many requests may arrive at once) defaults to
the count. Several limits are separated by commas:
``"10/minute, 100/hour"``. Bad strings raise :class:`ValueError` with the
reason.

A :class:`RateLimit` is a *rule*: a name (the policy name in headers,
metrics and events), one or more limits, a key, and which requests it
applies to (path patterns and methods).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from axess.errors import ConfigurationError
from axess.login_fields import DEFAULT_LOGIN_FIELDS, LoginFields
from axess.ratelimit import gcra
from axess.ratelimit.keys import Key, KeySpec, LoginIdentifierKey, as_key

_UNITS: Final = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_LIMIT_RE: Final = re.compile(r"(\d{1,10})\s*/\s*(\d{0,10})\s*([a-z]+)", re.ASCII)
_PARAM_RE: Final = re.compile(r"([a-z]+)\s*=\s*(\d{1,10})", re.ASCII)
#: Longest period, and the longest a bucket may stay non-full (keeps every
#: time value far below 2**53 microseconds, exact in Lua's doubles).
MAX_PERIOD: Final = 366 * 86400
MAX_COUNT: Final = 1_000_000_000
MAX_TEXT: Final = 200
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}", re.ASCII)

OnStoreError = Literal["open", "closed"]


@dataclass(frozen=True, slots=True)
class Limit:
    """One parsed limit: ``count`` per ``period`` seconds, ``burst`` at once."""

    count: int
    period: int
    burst: int
    emission_us: int = field(init=False, repr=False, compare=False)
    capacity_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise ConfigurationError(f"count must be between 1 and {MAX_COUNT}")
        if not 1 <= self.period <= MAX_PERIOD:
            raise ConfigurationError(
                f"period must be between 1 second and {MAX_PERIOD // 86400} days"
            )
        if not 1 <= self.burst <= MAX_COUNT:
            raise ConfigurationError(f"burst must be between 1 and {MAX_COUNT}")
        emission = gcra.emission_us(self.count, self.period)
        if self.burst * emission > MAX_PERIOD * gcra.US:
            raise ConfigurationError(
                f"burst {self.burst} at {self.count}/{self.period}s takes longer than "
                f"{MAX_PERIOD // 86400} days to refill"
            )
        object.__setattr__(self, "emission_us", emission)
        object.__setattr__(self, "capacity_us", self.burst * emission)

    @classmethod
    def parse(cls, text: str) -> Limit:
        """Parse one limit string; :class:`ValueError` says what is wrong."""
        if not isinstance(text, str):
            raise ConfigurationError(
                f"a limit must be a string like '10/minute', not {type(text).__name__}"
            )
        if len(text) > MAX_TEXT:
            raise ConfigurationError(f"limit string too long ({len(text)} characters)")
        main, *params = text.strip().lower().split(";")
        match = _LIMIT_RE.fullmatch(main.strip())
        if match is None:
            raise ConfigurationError(
                f"invalid limit {text!r}: expected '<count>/<period>', e.g. '10/minute', "
                "'100/hour;burst=20', '5/30s'"
            )
        count_s, mult_s, unit = match.groups()
        seconds = _UNITS.get(unit)
        if seconds is None:
            raise ConfigurationError(
                f"invalid limit {text!r}: unknown period {unit!r} (use second, minute, hour, day)"
            )
        mult = int(mult_s) if mult_s else 1
        if mult < 1:
            raise ConfigurationError(f"invalid limit {text!r}: the period multiplier must be >= 1")
        count = int(count_s)
        burst = count
        seen: set[str] = set()
        for raw in params:
            param = _PARAM_RE.fullmatch(raw.strip())
            if param is None:
                raise ConfigurationError(f"invalid limit {text!r}: bad parameter {raw.strip()!r}")
            name, value = param.groups()
            if name != "burst":
                raise ConfigurationError(
                    f"invalid limit {text!r}: unknown parameter {name!r} (burst=N)"
                )
            if name in seen:
                raise ConfigurationError(f"invalid limit {text!r}: {name} given twice")
            seen.add(name)
            burst = int(value)
        try:
            return cls(count=count, period=mult * seconds, burst=burst)
        except ValueError as exc:
            raise ConfigurationError(f"invalid limit {text!r}: {exc}") from None

    @property
    def window_label(self) -> str:
        """``1m``, ``1h``, ``30s``, ``2d``: the period, short."""
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.period % seconds == 0:
                return f"{self.period // seconds}{unit}"
        return f"{self.period}s"

    @property
    def signature(self) -> str:
        """Identifies the bucket of this limit within a policy (count/period)."""
        return f"{self.count}/{self.period}"

    def __str__(self) -> str:
        text = f"{self.count}/{self.window_label}"
        return text if self.burst == self.count else f"{text};burst={self.burst}"


def parse_limits(*specs: str | Limit) -> tuple[Limit, ...]:
    """Parse limit strings (each may hold several, comma-separated)."""
    out: list[Limit] = []
    for spec in specs:
        if isinstance(spec, Limit):
            out.append(spec)
            continue
        if not isinstance(spec, str):
            raise ConfigurationError(
                f"a limit must be a string like '10/minute', not {type(spec).__name__}"
            )
        parts = [p for p in spec.split(",") if p.strip()]
        if not parts:
            raise ConfigurationError("empty limit string")
        out.extend(Limit.parse(p) for p in parts)
    if not out:
        raise ConfigurationError("at least one limit is required")
    seen: set[str] = set()
    for limit in out:
        if limit.signature in seen:
            raise ConfigurationError(f"limit {limit.signature} given twice in one rule")
        seen.add(limit.signature)
    return tuple(out)


def _path_regex(pattern: str) -> re.Pattern[str] | _Glob | str:
    """An exact path (returned as a string), a compiled pattern, or a
    :class:`_Glob` for a pattern with two wildcards or more.

    ``*`` matches within one segment, ``**`` across segments, and a pattern
    ending in ``/`` matches everything below it.
    """
    if not pattern.startswith("/"):
        raise ConfigurationError(f"path pattern {pattern!r} must start with '/'")
    if pattern.endswith("/") and pattern != "/":
        pattern = pattern + "**"
    elif pattern == "/":
        pattern = "/**"
    if "*" not in pattern:
        return pattern
    below = pattern.endswith("/**")  # the path itself, or anything under it
    body = pattern[:-3] if below else pattern
    tokens: list[str] = []  # "*", "**" or one literal character
    i = 0
    while i < len(body):
        step = 2 if body.startswith("**", i) else 1
        tokens.append(body[i : i + step])
        i += step
    if sum(t in ("*", "**") for t in tokens) + below >= 2:
        return _Glob(tokens, below)
    regex = "".join(".*" if t == "**" else "[^/]*" if t == "*" else re.escape(t) for t in tokens)
    # DOTALL: a path segment may hold any character, a newline included
    # (``/items/1%0Ax`` reaches a ``/items/{id}`` route).
    return re.compile(regex + ("(?:/.*)?" if below else ""), re.DOTALL)


#: Longer paths are not matched against a :class:`_Glob`: its rule applies
#: to them (fails closed), so one request costs at most this many steps.
GLOB_MAX_PATH: Final = 8192


class _Glob:
    """A path pattern with two wildcards or more, matched in one pass.

    Python's regular expressions backtrack on such a pattern (``.*`` twice
    makes a miss quadratic in the path, three times cubic: seconds for one
    long path). This runs the pattern as a set of positions instead, a bit
    each, so a path costs one step per character whatever the pattern.
    Paths over :data:`GLOB_MAX_PATH` characters match: the rule applies.
    """

    __slots__ = ("_accept", "_any", "_below", "_literal", "_segment")

    def __init__(self, tokens: list[str], below: bool) -> None:
        self._literal: dict[str, int] = {}
        self._segment = self._any = 0  # positions of "*" / "**"
        for i, part in enumerate(tokens):
            if part == "*":
                self._segment |= 1 << i
            elif part == "**":
                self._any |= 1 << i
            else:
                self._literal[part] = self._literal.get(part, 0) | 1 << i
        self._accept = 1 << len(tokens)
        self._below = below

    def _skip(self, states: int) -> int:
        """``states`` plus the positions after wildcards that match nothing."""
        wild = self._segment | self._any
        while True:
            more = states | ((states & wild) << 1)
            if more == states:
                return states
            states = more

    def fullmatch(self, path: str) -> bool:
        if len(path) > GLOB_MAX_PATH:
            return True
        literal, segment, any_, accept = self._literal, self._segment, self._any, self._accept
        states = self._skip(1)
        for ch in path:
            if ch == "/":
                if self._below and states & accept:
                    return True  # below the pattern's path: anything goes
                states = ((states & literal.get(ch, 0)) << 1) | (states & any_)
            else:
                states = ((states & literal.get(ch, 0)) << 1) | (states & (any_ | segment))
            if not states:
                return False
            if states & (any_ | segment):
                states = self._skip(states)
        return bool(states & accept)


def _methods(methods: str | Iterable[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    names = {m.strip().upper() for m in ([methods] if isinstance(methods, str) else methods)}
    if not names or "" in names:
        raise ConfigurationError("methods must name methods (None: every method)")
    if "GET" in names:
        names.add("HEAD")  # Starlette answers HEAD with the GET handler
    return frozenset(names)


def _policy_item(name: str, limit: Limit) -> str:
    item = f'"{name}";q={limit.count};w={limit.period}'
    return item if limit.burst == limit.count else f"{item};axess-burst={limit.burst}"


def _slug(paths: tuple[str, ...]) -> str:
    if not paths:
        return "all"
    words = re.findall(r"[A-Za-z0-9]+", paths[0])
    return "-".join(words[-2:]).lower() or "all"


def default_name(base: str, kind: str) -> str:
    """The policy name ``<base>-<key kind>`` a rule gets without ``name=``,
    made valid: characters a name cannot hold (a composite key's ``+``, a
    custom kind's spaces) become ``-``, and it is cut to 64."""
    return re.sub(r"[^A-Za-z0-9_.:-]+", "-", f"{base}-{kind}")[:64]


class RateLimit:
    """A rate-limit rule.

    ``RateLimit("10/minute", "100/hour", key="ip", paths=["/login"],
    methods=["POST"], name="login-ip")``

    * ``limits``: limit strings (or :class:`Limit`); a request must conform
      to every one of them.
    * ``key``: ``"ip"`` (default), ``"user"``, ``"tenant"``, ``"login"``,
      ``"header:<name>"``, a :mod:`axess.ratelimit.keys` key or a callable
      ``(conn) -> str | None``. A missing value falls back to the IP.
    * ``paths``: exact paths, prefixes ending in ``/``, or patterns with
      ``*`` (one segment) and ``**`` (any depth); empty = every path.
      Matched against the path as the app's router sees it
      (:func:`~axess.stack.route_path`: without the ``root_path``); a
      trailing slash on the request path is ignored.
    * ``methods``: e.g. ``["POST"]``; ``None`` = every method (websocket
      handshakes count as method ``WEBSOCKET``). ``GET`` includes ``HEAD``,
      which Starlette serves with the ``GET`` handler.
    * ``on_store_error``: ``"closed"`` (default) answers 503 with
      ``Retry-After`` while the bucket store is unreachable; ``"open"``
      lets the request through, logs and counts ``store_error``.
    * ``cost``: units each request takes (default 1).
    * ``name``: the policy name (``[A-Za-z0-9_.:-]``, at most 64); by
      default derived from the first path and the key, e.g. ``login-ip``.
    """

    __slots__ = (
        "_exact",
        "_patterns",
        "cost",
        "item_names",
        "key",
        "limits",
        "methods",
        "name",
        "on_store_error",
        "params",
        "paths",
        "policy_items",
        "prefix",
        "signatures",
    )

    def __init__(
        self,
        *limits: str | Limit,
        key: KeySpec = "ip",
        paths: str | Iterable[str] = (),
        methods: str | Iterable[str] | None = None,
        on_store_error: OnStoreError = "closed",
        cost: int = 1,
        name: str | None = None,
    ) -> None:
        try:
            self.limits = parse_limits(*limits)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.key: Key = as_key(key)
        self.paths = (paths,) if isinstance(paths, str) else tuple(paths)
        exact: set[str] = set()
        patterns: list[re.Pattern[str] | _Glob] = []
        for path in self.paths:
            compiled = _path_regex(path)
            if isinstance(compiled, str):
                exact.add(compiled.rstrip("/") or "/")
            else:
                patterns.append(compiled)
        self._exact = frozenset(exact)
        self._patterns = tuple(patterns)
        self.methods = _methods(methods)
        if on_store_error not in ("open", "closed"):
            raise ConfigurationError("on_store_error must be 'open' or 'closed'")
        self.on_store_error: OnStoreError = on_store_error
        if not isinstance(cost, int) or cost < 1:
            raise ConfigurationError("cost must be a positive integer")
        if any(cost > limit.burst for limit in self.limits):
            raise ConfigurationError(f"cost {cost} exceeds a burst: no request could ever pass")
        self.cost = cost
        self.name = name if name is not None else default_name(_slug(self.paths), self.key.kind)
        if not _NAME_RE.fullmatch(self.name):
            raise ConfigurationError(
                f"invalid rate-limit name {self.name!r}: 1-64 of A-Z a-z 0-9 _ . : -"
            )
        #: Bucket keys of this rule start with it: ``"<name>:"``.
        self.prefix = self.name + ":"
        #: ``(emission_us, capacity_us, cost)`` per limit, for the stores.
        self.params = tuple((lim.emission_us, lim.capacity_us, cost) for lim in self.limits)
        #: Per limit: what tells its bucket apart within the policy.
        self.signatures = tuple(lim.signature for lim in self.limits)
        #: Per limit: its item name in the RateLimit fields, and its
        #: ``RateLimit-Policy`` item (draft-ietf-httpapi-ratelimit-headers).
        self.item_names = self.policy_names()
        self.policy_items = tuple(
            _policy_item(name, lim) for name, lim in zip(self.item_names, self.limits, strict=True)
        )

    def matches_path(self, path: str) -> bool:
        if not self.paths:
            return True
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        if path in self._exact:
            return True
        return any(p.fullmatch(path) for p in self._patterns)

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.matches_path(path)

    def policy_names(self) -> tuple[str, ...]:
        """The header item name of each limit: the rule name, suffixed with
        the window (``login-ip-1m``) when the rule has several limits."""
        if len(self.limits) == 1:
            return (self.name,)
        names: list[str] = []
        for i, limit in enumerate(self.limits):
            candidate = f"{self.name}-{limit.window_label}"
            names.append(candidate if candidate not in names else f"{candidate}-{i}")
        return tuple(names)

    def weakenings(self) -> list[str]:
        if self.on_store_error == "open":
            return [f"rate limit {self.name!r} lets requests through while its store is down"]
        return []

    def __repr__(self) -> str:
        limits = ", ".join(str(lim) for lim in self.limits)
        return f"RateLimit({limits!r}, name={self.name!r}, key={self.key!r}, paths={self.paths!r})"


LOGIN_PATHS: Final = ("/login", "/auth/login", "/api/login", "/token")
SIGNUP_PATHS: Final = ("/signup", "/register", "/auth/signup", "/auth/register", "/api/signup")
RESET_PATHS: Final = (
    "/password-reset",
    "/password/reset",
    "/forgot-password",
    "/auth/password-reset",
    "/auth/forgot-password",
    "/api/password-reset",
)


def auth_rules(
    *,
    login_paths: Iterable[str] = LOGIN_PATHS,
    signup_paths: Iterable[str] = SIGNUP_PATHS,
    reset_paths: Iterable[str] = RESET_PATHS,
    login_fields: LoginFields | Iterable[str] = DEFAULT_LOGIN_FIELDS,
    on_store_error: OnStoreError = "closed",
) -> list[RateLimit]:
    """Starting-point limits for the authentication endpoints (``POST`` only).

    ========== ========== =================== =============================
    policy     key        limits              what it stops
    ========== ========== =================== =============================
    login-ip   client IP  10/minute, 100/hour password spraying from one IP
    login-id   identifier 5/minute, 30/hour   guessing one account's password
                                              from many IPs (lockout is the
                                              second line)
    signup-ip  client IP  5/minute, 20/hour   bulk account creation
    reset-ip   client IP  5/minute, 20/hour   reset-mail flooding from one IP
    reset-id   identifier 3/hour              mail-bombing one address
    ========== ========== =================== =============================

    Tune them to your legitimate traffic (offices and mobile carriers put
    many users behind one IP). A path list of ``()`` drops that group.

    ``login_fields``: where the identifier is in a login or reset body — pass
    the :class:`~axess.login_fields.LoginFields` your login handler reads
    with (``await fields.read(request)``), so both see the same identifier.
    An ambiguous body is counted on the client's IP and refused with 400.
    """
    ident = LoginIdentifierKey(login_fields)

    def rule(name: str, paths: Iterable[str], key: KeySpec, *limits: str) -> RateLimit:
        return RateLimit(
            *limits,
            key=key,
            paths=paths,
            methods=("POST",),
            on_store_error=on_store_error,
            name=name,
        )

    login, signup, reset = tuple(login_paths), tuple(signup_paths), tuple(reset_paths)
    rules: list[RateLimit] = []
    if login:
        rules.append(rule("login-ip", login, "ip", "10/minute", "100/hour"))
        rules.append(rule("login-id", login, ident, "5/minute", "30/hour"))
    if signup:
        rules.append(rule("signup-ip", signup, "ip", "5/minute", "20/hour"))
    if reset:
        rules.append(rule("reset-ip", reset, "ip", "5/minute", "20/hour"))
        rules.append(rule("reset-id", reset, ident, "3/hour"))
    return rules
