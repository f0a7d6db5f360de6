"""``SessionConfig``: cookie attributes, lifetimes and limits, validated up front."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from axess.clock import check_duration
from axess.errors import ConfigurationError
from axess.session.cookie import MAX_COOKIE_BYTES, check_cookie_prefix, default_cookie_name

OnStoreError = Literal["unavailable", "guest"]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Session settings. Defaults are the secure ones (book: Sessions).

    Raises :class:`ConfigurationError` for inconsistent values, e.g. a
    ``__Host-`` cookie that is not Secure, or ``SameSite=None`` without Secure.
    """

    #: The cookie's name; ``""`` (the default): ``__Host-axess.sid`` when the
    #: cookie can carry the prefix (Secure, ``path="/"``, no domain), else
    #: ``axess.sid`` (book: Sessions, "Cookie tossing"). The name in use is
    #: :attr:`resolved_cookie_name`.
    cookie_name: str = ""
    #: Absolute lifetime in seconds (from creation; never extended).
    max_age: float = 24 * 3600
    #: Optional inactivity lifetime in seconds (``None`` = off).
    idle_timeout: float | None = None
    #: With an idle timeout, ``last_seen_at`` is refreshed at most this often.
    touch_interval: float = 60.0
    secure: bool = True
    http_only: bool = True
    same_site: Literal["lax", "strict", "none"] = "lax"
    path: str = "/"
    domain: str | None = None
    #: Cap on the custom data's JSON size in bytes (0 = no cap).
    max_custom_bytes: int = 64 * 1024
    #: What a request with a valid cookie gets when the store cannot load it:
    #: ``"unavailable"`` = 503 + Retry-After (default), ``"guest"`` = a fresh guest.
    on_store_error: OnStoreError = "unavailable"
    #: Seconds announced in ``Retry-After`` on 503.
    retry_after: int = 5
    #: Evict the oldest sessions of a user beyond this many at login (None = no cap).
    max_sessions_per_user: int | None = None
    #: The cookie name in use: ``cookie_name``, or axess's default for these
    #: attributes when it is ``""`` (resolved at construction, so
    #: ``dataclasses.replace`` resolves it anew).
    resolved_cookie_name: str = field(init=False)

    def __post_init__(self) -> None:
        name = self.cookie_name or default_cookie_name(
            "axess.sid", secure=self.secure, path=self.path, domain=self.domain
        )
        object.__setattr__(self, "resolved_cookie_name", name)
        if not name or any(c in name for c in ' ;,=\t\r\n"') or not name.isascii():
            raise ConfigurationError(f"invalid cookie name {name!r}")
        check_duration(self.max_age, "max_age")
        retry = self.retry_after
        if isinstance(retry, bool) or not isinstance(retry, int) or not 1 <= retry <= 86_400:
            # A header value: whole seconds, and 0 would invite clients to
            # retry at once during the outage it announces.
            raise ConfigurationError("retry_after must be a whole number of seconds, 1 to 86400")
        check_duration(self.touch_interval, "touch_interval", zero=True)
        if self.idle_timeout is not None:
            check_duration(self.idle_timeout, "idle_timeout")
            if not 0 <= self.touch_interval < self.idle_timeout:
                raise ConfigurationError("touch_interval must be >= 0 and below idle_timeout")
        if self.same_site not in ("lax", "strict", "none"):
            raise ConfigurationError("same_site must be 'lax', 'strict' or 'none'")
        if self.same_site == "none" and not self.secure:
            raise ConfigurationError("SameSite=None requires secure=True")
        check_cookie_prefix(name, secure=self.secure, path=self.path, domain=self.domain)
        if not self.path.startswith("/") or any(c in self.path for c in ";\r\n"):
            raise ConfigurationError(f"invalid cookie path {self.path!r}")
        if self.domain is not None and any(c in self.domain for c in " ;,\r\n"):
            raise ConfigurationError(f"invalid cookie domain {self.domain!r}")
        if self.max_custom_bytes < 0:
            raise ConfigurationError("max_custom_bytes must be >= 0")
        if self.on_store_error not in ("unavailable", "guest"):
            raise ConfigurationError("on_store_error must be 'unavailable' or 'guest'")
        if self.max_sessions_per_user is not None and self.max_sessions_per_user < 1:
            raise ConfigurationError("max_sessions_per_user must be >= 1 or None")
        if len(name) + 100 > MAX_COOKIE_BYTES:
            raise ConfigurationError("cookie name too long")

    def weakenings(self) -> list[str]:
        """Human-readable list of settings weaker than the defaults."""
        out = []
        if not self.secure:
            out.append("session cookie without Secure (secure=False)")
        elif (
            not self.resolved_cookie_name.startswith("__Host-")
            and self.path == "/"
            and self.domain is None
        ):
            out.append(
                f"session cookie named {self.resolved_cookie_name!r} without the __Host- "
                "prefix: a sibling subdomain can plant one (cookie tossing)"
            )
        if not self.http_only:
            out.append("session cookie readable by scripts (http_only=False)")
        if self.same_site == "none":
            out.append("session cookie sent cross-site (same_site='none')")
        if self.max_custom_bytes == 0:
            out.append("no cap on session custom data (max_custom_bytes=0)")
        if self.on_store_error == "guest":
            out.append("store outages degrade to guest sessions (on_store_error='guest')")
        return out
