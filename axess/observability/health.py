"""Health checks: a protocol every backend implements, and a composite that
runs them concurrently for ``/healthz``."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from axess.errors import ConfigurationError

logger = logging.getLogger(__name__)


class HealthState(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """Outcome of a check. Build with :meth:`healthy`, :meth:`degraded`, :meth:`unhealthy`."""

    state: HealthState
    reason: str | None = None

    @classmethod
    def healthy(cls) -> HealthStatus:
        return _HEALTHY

    @classmethod
    def degraded(cls, reason: str) -> HealthStatus:
        return cls(HealthState.DEGRADED, reason)

    @classmethod
    def unhealthy(cls, reason: str) -> HealthStatus:
        return cls(HealthState.UNHEALTHY, reason)

    @property
    def ok(self) -> bool:
        """True unless unhealthy (degraded still serves traffic)."""
        return self.state is not HealthState.UNHEALTHY


_HEALTHY = HealthStatus(HealthState.HEALTHY)


@runtime_checkable
class HealthCheck(Protocol):
    async def check_health(self) -> HealthStatus: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    check: HealthCheck
    critical: bool
    timeout: float


@dataclass(frozen=True, slots=True)
class CompositeReport:
    status: HealthStatus
    components: dict[str, HealthStatus]


class CompositeHealthCheck:
    """Runs named checks concurrently, each bounded by its own timeout.

    A failing *critical* check makes the whole unhealthy; a failing
    non-critical one makes it degraded. A check that raises or times out
    counts as unhealthy with a reason that names the check, never a secret.
    """

    def __init__(self, *, timeout: float = 2.0) -> None:
        self._entries: list[_Entry] = []
        self._timeout = timeout

    def add(
        self, name: str, check: HealthCheck, *, critical: bool = True, timeout: float | None = None
    ) -> CompositeHealthCheck:
        if any(e.name == name for e in self._entries):
            raise ConfigurationError(f"health check {name!r} is already registered")
        self._entries.append(
            _Entry(name, check, critical, self._timeout if timeout is None else timeout)
        )
        return self

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    async def _run(self, entry: _Entry) -> HealthStatus:
        try:
            return await asyncio.wait_for(entry.check.check_health(), entry.timeout)
        except TimeoutError:
            return HealthStatus.unhealthy(f"{entry.name}: no answer within {entry.timeout:g}s")
        except Exception as exc:  # a broken check must not break /healthz
            logger.warning("health check %s raised %s", entry.name, type(exc).__name__)
            return HealthStatus.unhealthy(f"{entry.name}: {type(exc).__name__}")

    async def report(self) -> CompositeReport:
        results = await asyncio.gather(*(self._run(e) for e in self._entries))
        components = {e.name: r for e, r in zip(self._entries, results, strict=True)}
        worst = _HEALTHY
        for entry, status in zip(self._entries, results, strict=True):
            if status.state is HealthState.HEALTHY:
                continue
            if entry.critical and status.state is HealthState.UNHEALTHY:
                worst = HealthStatus.unhealthy(f"{entry.name} is unhealthy")
                break
            if worst.state is HealthState.HEALTHY:
                worst = HealthStatus.degraded(f"{entry.name} is {status.state.value}")
        return CompositeReport(worst, components)

    async def check_health(self) -> HealthStatus:
        return (await self.report()).status


def healthz_endpoint(
    composite: CompositeHealthCheck, *, details: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint: 200 when healthy or degraded, 503 when unhealthy.

    The body lists each component's state; reasons only with ``details=True``.
    """

    async def healthz(request: Request) -> Response:
        report = await composite.report()
        body: dict[str, object] = {"status": report.status.state.value}
        comps: dict[str, object] = {}
        for name, st in report.components.items():
            comps[name] = (
                {"status": st.state.value, "reason": st.reason} if details else st.state.value
            )
        body["components"] = comps
        if details and report.status.reason:
            body["reason"] = report.status.reason
        code = 503 if report.status.state is HealthState.UNHEALTHY else 200
        headers = {"Cache-Control": "no-store"}
        if code == 503:
            headers["Retry-After"] = "5"
        return JSONResponse(body, status_code=code, headers=headers)

    return healthz
